//! The image configuration a stage produces, in Docker's and OCI's JSON shape, and how
//! metadata instructions change it.
//!
//! Our own types rather than `oci-spec`'s: Docker's extensions (`Healthcheck`, `Shell`,
//! `OnBuild`, `ArgsEscaped`) matter to users and oci-spec's `Config` drops them. Unknown
//! fields of a base image's config are kept as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stagecoach_plan::instruction::{Command, Healthcheck, Instruction, Kind};
use stagecoach_plan::scope::Scope;
use stagecoach_plan::shell::Lexer;

/// Base image configs are small; a bigger one is not an image config.
pub const CONFIG_LIMIT: u64 = 16 << 20;

/// Default PATH when the base image sets none (BuildKit and Docker use the same).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{keyword}: {source}")]
    Expand {
        keyword: &'static str,
        #[source]
        source: stagecoach_plan::shell::ExpandError,
    },
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields this code does not interpret, kept verbatim.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The `config` object, with Docker's capitalised field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Docker's `Healthcheck` object (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry, as `docker history` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// A base without PATH gets the default one at FROM (`FROM scratch` included), as
    /// BuildKit and buildah do: RUN finds its programs and the image config says so.
    pub fn ensure_path(&mut self) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
    }

    /// The environment as ordered pairs (`KEY=value` entries split at the first `=`).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .flatten()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// The shell RUN and shell-form CMD use: SHELL, else `/bin/sh -c`.
    pub fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The working directory, `/` when unset.
    pub fn working_dir(&self) -> String {
        match self.config.working_dir.as_deref() {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => "/".to_string(),
        }
    }
}

/// A stage's config and variable scope while its instructions run.
#[derive(Debug, Clone)]
pub struct StageConfig {
    pub config: ImageConfig,
    pub scope: Scope,
    lexer: Lexer,
    /// Whether this stage set CMD; ENTRYPOINT only resets an inherited CMD.
    cmd_set: bool,
}

impl StageConfig {
    /// Starts from the base image's config (or a parent stage's), with its environment
    /// and the ARGs the parent stage declared in scope.
    pub fn new(config: ImageConfig, inherited: Scope, lexer: Lexer) -> StageConfig {
        StageConfig {
            config,
            scope: inherited,
            lexer,
            cmd_set: false,
        }
    }

    /// Expands a word with the variables in scope.
    pub fn expand(&self, keyword: &'static str, word: &str) -> Result<String> {
        self.scope
            .expand(self.lexer, word)
            .map(|e| e.value)
            .map_err(|source| Error::Expand { keyword, source })
    }

    /// Applies one instruction's effect on the config and scope. RUN, COPY and ADD change
    /// nothing here (the caller records their layers). Returns whether the instruction
    /// was metadata-only (an empty-layer history entry).
    pub fn apply(
        &mut self,
        inst: &Instruction,
        global: &[stagecoach_plan::contract::Variable],
        build_args: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let keyword = inst.kind.keyword();
        match &inst.kind {
            Kind::Arg { args } => {
                for decl in args {
                    self.scope
                        .declare_arg(self.lexer, decl, global, build_args)
                        .map_err(|source| Error::Expand { keyword, source })?;
                }
            }
            Kind::Env { pairs } => {
                self.scope
                    .set_env(self.lexer, pairs)
                    .map_err(|source| Error::Expand { keyword, source })?;
                self.config.config.env = Some(
                    self.scope
                        .image_env()
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                );
            }
            Kind::Label { pairs } => {
                for kv in pairs {
                    let key = self.expand(keyword, &kv.key)?;
                    let value = self.expand(keyword, &kv.value)?;
                    self.config
                        .config
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
            }
            Kind::Maintainer { name } => self.config.author = Some(name.clone()),
            Kind::Expose { ports } => {
                for port in ports {
                    for p in self.expand(keyword, port)?.split_whitespace() {
                        self.config
                            .config
                            .exposed_ports
                            .get_or_insert_with(BTreeMap::new)
                            .insert(normalise_port(p)?, serde_json::json!({}));
                    }
                }
            }
            Kind::Volume { paths } => {
                for path in paths {
                    let path = self.expand(keyword, path)?;
                    if path.trim().is_empty() {
                        return Err(Error::Invalid(
                            "VOLUME specified can not be an empty string".into(),
                        ));
                    }
                    self.config
                        .config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(path, serde_json::json!({}));
                }
            }
            Kind::User { user } => self.config.config.user = Some(self.expand(keyword, user)?),
            Kind::Workdir { path } => {
                let path = self.expand(keyword, path)?;
                let dir = join_workdir(&self.config.working_dir(), &path);
                self.config.config.working_dir = Some(dir);
            }
            Kind::Cmd { command } => {
                self.config.config.cmd = Some(command_vector(command, &self.config.shell()));
                self.cmd_set = true;
            }
            Kind::Entrypoint { command } => {
                self.config.config.entrypoint = Some(command_vector(command, &self.config.shell()));
                // Docker: ENTRYPOINT resets a CMD inherited from the base image.
                if !self.cmd_set {
                    self.config.config.cmd = None;
                }
            }
            Kind::Shell { shell } => self.config.config.shell = Some(shell.clone()),
            Kind::Stopsignal { signal } => {
                self.config.config.stop_signal = Some(self.expand(keyword, signal)?)
            }
            Kind::Healthcheck(h) => self.config.config.healthcheck = Some(health_config(h)),
            Kind::Onbuild { trigger } => self
                .config
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone()),
            Kind::Run(_) | Kind::Copy(_) | Kind::Add(_) | Kind::From(_) => return Ok(false),
        }
        Ok(true)
    }
}

/// Shell form becomes `[shell..., command]`; exec form stays as written.
pub fn command_vector(command: &Command, shell: &[String]) -> Vec<String> {
    match command {
        Command::Exec(args) => args.clone(),
        Command::Shell(line) => shell.iter().cloned().chain([line.clone()]).collect(),
    }
}

fn health_config(h: &Healthcheck) -> HealthConfig {
    HealthConfig {
        test: h.test.clone(),
        interval: h.interval,
        timeout: h.timeout,
        start_period: h.start_period,
        start_interval: h.start_interval,
        retries: h.retries,
    }
}

/// `80` is `80/tcp`; protocol lower-cased; ranges kept (`8000-8010/udp`).
fn normalise_port(port: &str) -> Result<String> {
    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid = !number.is_empty()
        && number
            .split('-')
            .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if !valid {
        return Err(Error::Invalid(format!("EXPOSE: invalid port {port:?}")));
    }
    Ok(format!("{number}/{}", proto.to_ascii_lowercase()))
}

/// WORKDIR relative to the current one; the result is cleaned (`/a/./b/..` is `/a`).
pub fn join_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{current}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-26T17:00:00Z`); the epoch for a
/// time jiff cannot hold.
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_712_461), "2026-11-26T17:01:01Z");
    }
    use stagecoach_plan::syntax::parse;

    fn apply_all(base: ImageConfig, body: &str) -> (ImageConfig, Vec<bool>) {
        let df = parse(&format!("FROM x\n{body}")).expect("parses");
        let instructions = stagecoach_plan::instruction::parse_all(&df).expect("valid");
        let scope = Scope::from_image_env(&base.env_pairs());
        let mut stage = StageConfig::new(base, scope, Lexer::new('\\'));
        let empties = instructions[1..]
            .iter()
            .map(|i| stage.apply(i, &[], &BTreeMap::new()).expect("applies"))
            .collect();
        (stage.config, empties)
    }

    #[test]
    fn metadata_instructions_set_the_config() {
        let mut base = ImageConfig::default();
        base.config.env = Some(vec!["PATH=/bin".into()]);
        base.config.cmd = Some(vec!["sh".into()]);
        let (c, empty) = apply_all(
            base,
            "ENV PATH=/app:$PATH NAME=\"a b\"\nARG V=1\nLABEL version=$V \"k k\"=v\n\
             EXPOSE 80 53/UDP\nVOLUME /data\nVOLUME [\"/x\"]\nUSER app:app\nWORKDIR /srv\nWORKDIR sub/../www\n\
             ENTRYPOINT [\"/app\"]\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s CMD true\n\
             SHELL [\"/bin/bash\", \"-c\"]\nCMD run me\nONBUILD RUN echo hi\nRUN true\n",
        );
        let cfg = &c.config;
        assert_eq!(
            cfg.env.as_deref(),
            Some(&["PATH=/app:/bin".to_string(), "NAME=a b".to_string()][..])
        );
        assert_eq!(
            cfg.labels.as_ref().map(|l| l["version"].as_str()),
            Some("1")
        );
        assert_eq!(cfg.labels.as_ref().map(|l| l["k k"].as_str()), Some("v"));
        let ports: Vec<&String> = cfg.exposed_ports.as_ref().expect("ports").keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp"]);
        let volumes: Vec<&String> = cfg.volumes.as_ref().expect("volumes").keys().collect();
        assert_eq!(volumes, ["/data", "/x"]);
        assert_eq!(cfg.user.as_deref(), Some("app:app"));
        assert_eq!(cfg.working_dir.as_deref(), Some("/srv/www"));
        assert_eq!(cfg.entrypoint.as_deref(), Some(&["/app".to_string()][..]));
        assert_eq!(
            cfg.cmd.as_deref(),
            Some(&["/bin/bash".to_string(), "-c".into(), "run me".into()][..])
        );
        assert_eq!(cfg.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(
            cfg.healthcheck.as_ref().map(|h| h.interval),
            Some(Some(5_000_000_000))
        );
        assert_eq!(
            cfg.on_build.as_deref(),
            Some(&["RUN echo hi".to_string()][..])
        );
        assert_eq!(empty.last(), Some(&false), "RUN is not metadata");
        assert!(empty[1], "ARG is metadata-only");
    }

    #[test]
    fn entrypoint_resets_inherited_cmd_only() {
        let mut base = ImageConfig::default();
        base.config.cmd = Some(vec!["bash".into()]);
        let (c, _) = apply_all(base.clone(), "ENTRYPOINT [\"/e\"]\n");
        assert_eq!(c.config.cmd, None);
        let (c, _) = apply_all(base, "CMD [\"x\"]\nENTRYPOINT [\"/e\"]\n");
        assert_eq!(c.config.cmd, Some(vec!["x".to_string()]));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=b"],"Foo":1},"rootfs":{"type":"layers","diff_ids":[]},"bar":true}"#;
        let c: ImageConfig = serde_json::from_str(json).expect("parses");
        let back = serde_json::to_value(&c).expect("serialises");
        assert_eq!(back["config"]["Foo"], 1);
        assert_eq!(back["bar"], true);
    }

    #[test]
    fn bad_port_is_an_error() {
        let df = parse("FROM x\nEXPOSE 80/tcp abc\n").expect("parses");
        let inst = stagecoach_plan::instruction::parse_all(&df).expect("valid");
        let mut stage =
            StageConfig::new(ImageConfig::default(), Scope::default(), Lexer::new('\\'));
        assert!(stage.apply(&inst[1], &[], &BTreeMap::new()).is_err());
    }

    #[test]
    fn workdir_joins_and_cleans() {
        assert_eq!(join_workdir("/", "a"), "/a");
        assert_eq!(join_workdir("/a", "../b/./c"), "/b/c");
        assert_eq!(join_workdir("/a", "/x/"), "/x");
        assert_eq!(join_workdir("/", ".."), "/");
    }
}
