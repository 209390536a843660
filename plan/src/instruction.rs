//! Instruction semantics: typed instructions from syntax nodes, with each instruction's
//! flags and argument counts checked as BuildKit checks them. Words stay unexpanded here:
//! expansion needs the variables in scope, which only the stage walk knows.

use serde::{Deserialize, Serialize};

use crate::syntax::{Args, Dockerfile, Heredoc, KeyValue as RawKeyValue, Node};

/// An instruction failure with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct InstructionError {
    pub line: usize,
    pub message: String,
}

type Result<T, E = String> = std::result::Result<T, E>;

/// One instruction with its place in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub line: usize,
    pub end_line: usize,
    /// The logical line as written (continuations joined), for history and logs.
    pub text: String,
    #[serde(flatten)]
    pub kind: Kind,
}

/// What an instruction does, with its words as written (unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "instruction", rename_all = "lowercase")]
pub enum Kind {
    From(From),
    Run(Run),
    Copy(Copy),
    Add(Copy),
    Env { pairs: Vec<KeyValue> },
    Label { pairs: Vec<KeyValue> },
    Arg { args: Vec<ArgDecl> },
    Expose { ports: Vec<String> },
    Volume { paths: Vec<String> },
    User { user: String },
    Workdir { path: String },
    Cmd { command: Command },
    Entrypoint { command: Command },
    Shell { shell: Vec<String> },
    Stopsignal { signal: String },
    Healthcheck(Healthcheck),
    Onbuild { trigger: String },
    Maintainer { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    pub image: String,
    pub name: Option<String>,
    pub platform: Option<String>,
}

/// Shell form (run through the stage's SHELL) or exec form (run directly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub command: Command,
    /// `--mount` values as written (`type=cache,target=/root/.cache`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<HeredocBody>,
}

/// COPY and ADD share a shape; ADD-only flags stay empty for COPY.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Copy {
    pub sources: Vec<String>,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    /// Sources given inline as heredocs (`COPY <<EOF /dst`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<HeredocBody>,
}

/// A heredoc body as the instruction sees it (tabs already stripped for `<<-`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeredocBody {
    pub name: String,
    pub file_descriptor: u32,
    pub expand: bool,
    pub body: String,
}

/// ENV/LABEL pair, value unexpanded (quotes still present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG name[=default]`, default unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDecl {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// HEALTHCHECK, with durations in nanoseconds as the image config stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
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

impl Kind {
    /// The Dockerfile keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Kind::From(_) => "FROM",
            Kind::Run(_) => "RUN",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::Env { .. } => "ENV",
            Kind::Label { .. } => "LABEL",
            Kind::Arg { .. } => "ARG",
            Kind::Expose { .. } => "EXPOSE",
            Kind::Volume { .. } => "VOLUME",
            Kind::User { .. } => "USER",
            Kind::Workdir { .. } => "WORKDIR",
            Kind::Cmd { .. } => "CMD",
            Kind::Entrypoint { .. } => "ENTRYPOINT",
            Kind::Shell { .. } => "SHELL",
            Kind::Stopsignal { .. } => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Onbuild { .. } => "ONBUILD",
            Kind::Maintainer { .. } => "MAINTAINER",
        }
    }
}

/// Interprets every node of a parsed Dockerfile.
pub fn parse_all(df: &Dockerfile) -> Result<Vec<Instruction>, InstructionError> {
    df.instructions
        .iter()
        .map(|node| {
            parse_node(node).map_err(|message| InstructionError {
                line: node.start_line,
                message,
            })
        })
        .collect()
}

/// Interprets one syntax node.
pub fn parse_node(node: &Node) -> Result<Instruction> {
    Ok(Instruction {
        line: node.start_line,
        end_line: node.end_line,
        text: node.original.trim().to_string(),
        kind: parse_kind(node)?,
    })
}

/// Types one node: its flags checked against the instruction's, then its arguments, each
/// instruction by its own rules.
fn parse_kind(node: &Node) -> Result<Kind> {
    let keyword = node.keyword.to_ascii_uppercase();
    let mut flags = Flags::parse(&node.flags, allowed_flags(&node.keyword))?;
    let kind = match node.keyword.as_str() {
        "from" => parse_from(node, &flags)?,
        "run" => Kind::Run(Run {
            command: command(node).ok_or("RUN requires at least one argument")?,
            mounts: flags.strings("mount"),
            network: flags.string("network"),
            security: flags.string("security"),
            devices: flags.strings("device"),
            heredocs: heredoc_bodies(&node.heredocs),
        }),
        "copy" | "add" => parse_copy(node, &keyword, &flags)?,
        "env" | "label" => parse_pairs(node, &keyword)?,
        "arg" => parse_arg(node)?,
        "expose" => Kind::Expose {
            ports: non_empty(words(node), "EXPOSE")?,
        },
        "volume" => parse_volume(node)?,
        "user" => Kind::User {
            user: text(node, "USER")?,
        },
        "workdir" => Kind::Workdir {
            path: text(node, "WORKDIR")?,
        },
        "stopsignal" => Kind::Stopsignal {
            signal: text(node, "STOPSIGNAL")?,
        },
        "maintainer" => Kind::Maintainer {
            name: text(node, "MAINTAINER")?,
        },
        "cmd" => Kind::Cmd {
            command: command(node).unwrap_or(Command::Exec(Vec::new())),
        },
        "entrypoint" => Kind::Entrypoint {
            command: command(node).unwrap_or(Command::Exec(Vec::new())),
        },
        "shell" => parse_shell(node)?,
        "healthcheck" => Kind::Healthcheck(healthcheck(node, &mut flags)?),
        "onbuild" => parse_onbuild(node)?,
        _ => return Err(format!("unknown instruction: {}", node.keyword_as_written)),
    };
    Ok(kind)
}

/// `FROM image [AS name]`: one or three words, the name checked as BuildKit checks it.
fn parse_from(node: &Node, flags: &Flags) -> Result<Kind> {
    let words = words(node);
    let name = match words.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => Some(stage_name(name)?),
        _ => return Err("FROM requires either one or three arguments".into()),
    };
    Ok(Kind::From(From {
        image: words[0].clone(),
        name,
        platform: flags.string("platform"),
    }))
}

/// COPY and ADD: sources (heredoc markers left out, inline bodies kept apart) and a
/// destination; COPY refuses URL sources, which only ADD fetches.
fn parse_copy(node: &Node, keyword: &str, flags: &Flags) -> Result<Kind> {
    let mut words = words(node);
    if words.len() < 2 {
        return Err(format!(
            "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined."
        ));
    }
    let destination = words.pop().unwrap_or_default();
    let heredocs = heredoc_bodies(&node.heredocs);
    let sources: Vec<String> = words
        .into_iter()
        .filter(|w| !heredocs.iter().any(|h| is_heredoc_word(w, &h.name)))
        .collect();
    let copy = Copy {
        destination,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.boolean("link")?,
        parents: flags.boolean("parents")?,
        excludes: flags.strings("exclude"),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.boolean("keep-git-dir")?,
        unpack: flags.optional_boolean("unpack")?,
        sources,
        heredocs,
    };
    if node.keyword == "copy" {
        if copy.sources.iter().any(|s| is_url(s)) {
            return Err("source can't be a URL for COPY".into());
        }
        Ok(Kind::Copy(copy))
    } else {
        Ok(Kind::Add(copy))
    }
}

/// ENV and LABEL: at least one `key=value` pair, no key empty.
fn parse_pairs(node: &Node, keyword: &str) -> Result<Kind> {
    let Args::Pairs(pairs) = &node.args else {
        return Err(format!("{keyword} requires at least one argument"));
    };
    let pairs = pairs.iter().map(key_value).collect::<Result<Vec<_>>>()?;
    if node.keyword == "env" {
        Ok(Kind::Env { pairs })
    } else {
        Ok(Kind::Label { pairs })
    }
}

/// `ARG name[=default] ...`: at least one declaration, no name blank.
fn parse_arg(node: &Node) -> Result<Kind> {
    let words = words(node);
    if words.is_empty() {
        return Err("ARG requires at least one argument".into());
    }
    let args = words
        .iter()
        .map(|w| match w.split_once('=') {
            Some((name, default)) => ArgDecl {
                name: name.to_string(),
                default: Some(default.to_string()),
            },
            None => ArgDecl {
                name: w.clone(),
                default: None,
            },
        })
        .collect::<Vec<_>>();
    if let Some(bad) = args.iter().find(|a| a.name.is_empty()) {
        return Err(format!("ARG names can not be blank: {:?}", bad.name));
    }
    Ok(Kind::Arg { args })
}

/// VOLUME: at least one path, none blank.
fn parse_volume(node: &Node) -> Result<Kind> {
    let paths = non_empty(words(node), "VOLUME")?;
    if paths.iter().any(|p| p.trim().is_empty()) {
        return Err("VOLUME specified can not be an empty string".into());
    }
    Ok(Kind::Volume { paths })
}

/// SHELL: a non-empty JSON array, never the shell form.
fn parse_shell(node: &Node) -> Result<Kind> {
    match &node.args {
        Args::Json(v) if v.is_empty() => Err("SHELL requires at least one argument".into()),
        Args::Json(v) => Ok(Kind::Shell { shell: v.clone() }),
        _ => Err("SHELL requires the arguments to be in JSON form".into()),
    }
}

/// ONBUILD: a trigger that is itself a valid instruction, but not ONBUILD, FROM or
/// MAINTAINER (BuildKit's rules); kept as written, for the images built FROM this one.
fn parse_onbuild(node: &Node) -> Result<Kind> {
    let Args::OnBuild(inner) = &node.args else {
        return Err("ONBUILD requires at least one argument".into());
    };
    match inner.keyword.as_str() {
        "onbuild" => {
            return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
        }
        "from" | "maintainer" => {
            return Err(format!(
                "{} isn't allowed as an ONBUILD trigger",
                inner.keyword.to_ascii_uppercase()
            ));
        }
        _ => {}
    }
    // The trigger must itself be a valid instruction.
    parse_kind(inner)?;
    Ok(Kind::Onbuild {
        trigger: inner.original.trim().to_string(),
    })
}

/// BuildKit's stage-name rule: lower case letter first, then letters, digits, `-_.`.
fn stage_name(name: &str) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    let mut chars = lower.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
        ))
    }
}

fn allowed_flags(keyword: &str) -> &'static [FlagSpec] {
    use FlagKind::{Bool, Multi, Single};
    match keyword {
        "from" => &[FlagSpec("platform", Single)],
        "run" => &[
            FlagSpec("mount", Multi),
            FlagSpec("network", Single),
            FlagSpec("security", Single),
            FlagSpec("device", Multi),
        ],
        "copy" => &[
            FlagSpec("from", Single),
            FlagSpec("chown", Single),
            FlagSpec("chmod", Single),
            FlagSpec("link", Bool),
            FlagSpec("parents", Bool),
            FlagSpec("exclude", Multi),
        ],
        "add" => &[
            FlagSpec("chown", Single),
            FlagSpec("chmod", Single),
            FlagSpec("link", Bool),
            FlagSpec("exclude", Multi),
            FlagSpec("checksum", Single),
            FlagSpec("keep-git-dir", Bool),
            FlagSpec("unpack", Bool),
        ],
        "healthcheck" => &[
            FlagSpec("interval", Single),
            FlagSpec("timeout", Single),
            FlagSpec("start-period", Single),
            FlagSpec("start-interval", Single),
            FlagSpec("retries", Single),
        ],
        _ => &[],
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Single,
    Multi,
}

struct FlagSpec(&'static str, FlagKind);

/// Parsed `--name[=value]` flags of one instruction.
struct Flags {
    values: Vec<(&'static str, Option<String>)>,
}

impl Flags {
    fn parse(raw: &[String], allowed: &'static [FlagSpec]) -> Result<Self> {
        let mut values: Vec<(&'static str, Option<String>)> = Vec::new();
        for flag in raw {
            let body = flag.strip_prefix("--").unwrap_or(flag);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(spec) = allowed.iter().find(|s| s.0 == name) else {
                return Err(format!("unknown flag: --{name}"));
            };
            if spec.1 != FlagKind::Multi && values.iter().any(|(n, _)| *n == spec.0) {
                return Err(format!("duplicate flag specified: {name}"));
            }
            if spec.1 != FlagKind::Bool && value.is_none() {
                return Err(format!("missing a value on flag: {name}"));
            }
            values.push((spec.0, value));
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn optional_boolean(&self, name: &str) -> Result<Option<bool>> {
        let Some((_, value)) = self.values.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(other) => Err(format!(
                "expecting boolean value for flag {name}, not: {other}"
            )),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool> {
        Ok(self.optional_boolean(name)?.unwrap_or(false))
    }
}

fn words(node: &Node) -> Vec<String> {
    match &node.args {
        Args::Words(w) | Args::Json(w) => w.clone(),
        Args::Text(t) => vec![t.clone()],
        _ => Vec::new(),
    }
}

fn non_empty(words: Vec<String>, keyword: &str) -> Result<Vec<String>> {
    if words.is_empty() {
        Err(format!("{keyword} requires at least one argument"))
    } else {
        Ok(words)
    }
}

fn text(node: &Node, keyword: &str) -> Result<String> {
    match &node.args {
        Args::Text(t) if !t.is_empty() => Ok(t.clone()),
        _ => Err(format!("{keyword} requires exactly one argument")),
    }
}

fn command(node: &Node) -> Option<Command> {
    match &node.args {
        Args::Text(t) => Some(Command::Shell(t.clone())),
        Args::Json(v) => Some(Command::Exec(v.clone())),
        _ => None,
    }
}

fn key_value(raw: &RawKeyValue) -> Result<KeyValue> {
    if raw.key.is_empty() {
        return Err(format!(
            "Syntax error - empty name in {}={}",
            raw.key, raw.value
        ));
    }
    Ok(KeyValue {
        key: raw.key.clone(),
        value: raw.value.clone(),
    })
}

fn heredoc_bodies(heredocs: &[Heredoc]) -> Vec<HeredocBody> {
    heredocs
        .iter()
        .map(|h| HeredocBody {
            name: h.name.clone(),
            file_descriptor: h.file_descriptor,
            expand: h.expand,
            body: h.body(),
        })
        .collect()
}

/// Whether a COPY/ADD word is the `<<NAME` marker of the given heredoc.
fn is_heredoc_word(word: &str, name: &str) -> bool {
    let Some(rest) = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")
    else {
        return false;
    };
    rest.trim_start_matches('-').trim_matches(['"', '\'']) == name
}

/// BuildKit treats `http://`, `https://` and git URLs as remote sources.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

fn healthcheck(node: &Node, flags: &mut Flags) -> Result<Healthcheck> {
    let Args::Health { kind, command } = &node.args else {
        return Err("HEALTHCHECK requires at least one argument".into());
    };
    let test = match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !matches!(**command, Args::Empty) {
                return Err("HEALTHCHECK NONE takes no arguments".into());
            }
            if !flags.values.is_empty() {
                return Err("HEALTHCHECK NONE takes no flags".into());
            }
            vec!["NONE".to_string()]
        }
        "CMD" => match &**command {
            Args::Text(t) if !t.is_empty() => vec!["CMD-SHELL".to_string(), t.clone()],
            Args::Json(v) if !v.is_empty() => std::iter::once("CMD".to_string())
                .chain(v.iter().cloned())
                .collect(),
            _ => return Err("Missing command after HEALTHCHECK CMD".into()),
        },
        other => return Err(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
    };
    let duration = |name: &str| -> Result<Option<u64>> {
        flags
            .string(name)
            .map(|v| {
                let ns = parse_go_duration(&v)
                    .ok_or_else(|| format!("invalid duration {v:?} for HEALTHCHECK --{name}"))?;
                if ns != 0 && ns < 1_000_000 {
                    return Err(format!("{name} {v:?} cannot be less than 1ms"));
                }
                Ok(ns)
            })
            .transpose()
    };
    let retries = flags
        .string("retries")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| format!("invalid HEALTHCHECK --retries value {v:?}"))
        })
        .transpose()?;
    Ok(Healthcheck {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Parses Go's duration syntax (`1m30s`, `500ms`, `1.5h`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    fn one(src: &str) -> Result<Kind> {
        let df = parse(&format!("FROM scratch\n{src}\n")).map_err(|e| e.message)?;
        parse_all(&df)
            .map(|mut v| v.remove(1).kind)
            .map_err(|e| e.message)
    }

    fn error(src: &str) -> String {
        one(src).expect_err(src)
    }

    #[test]
    fn buildkit_instruction_error_cases() {
        let Some(corpora) = crate::corpora::root() else {
            return;
        };
        let path = corpora.join("buildkit-derived/cases.json");
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("cases")).expect("json");
        let list = cases["instruction_error_cases"]["cases"]
            .as_array()
            .expect("cases");
        assert!(!list.is_empty());
        for case in list {
            let src = case["dockerfile"].as_str().expect("dockerfile");
            let want = case["error_contains"].as_str().expect("error");
            let got = match parse(src) {
                Err(e) => e.message,
                Ok(df) => parse_all(&df).expect_err(src).message,
            };
            assert!(got.contains(want), "{src:?}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn flags_are_checked_per_instruction() {
        assert_eq!(error("RUN --boo=1 true"), "unknown flag: --boo");
        assert_eq!(error("COPY --from a b"), "missing a value on flag: from");
        assert_eq!(
            error("COPY --from=a --from=b x y"),
            "duplicate flag specified: from"
        );
        assert!(error("COPY --link=maybe a b").contains("expecting boolean"));
        assert_eq!(error("ENV --x=1 A=b"), "unknown flag: --x");
        assert!(error("COPY --checksum=sha256:0 a b").contains("unknown flag"));
        let Kind::Copy(copy) =
            one("COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /d/")
                .expect("copy")
        else {
            panic!("not a copy")
        };
        assert_eq!(copy.from.as_deref(), Some("build"));
        assert_eq!(copy.sources, ["a", "b"]);
        assert_eq!(copy.destination, "/d/");
        assert!(copy.link && copy.parents);
        assert_eq!(copy.excludes, ["*.md", "x"]);
        let Kind::Run(run) =
            one("RUN --mount=type=cache,target=/c --mount=from=x,target=/y --network=none make")
                .expect("run")
        else {
            panic!("not a run")
        };
        assert_eq!(run.mounts.len(), 2);
        assert_eq!(run.network.as_deref(), Some("none"));
    }

    #[test]
    fn argument_counts_and_forms() {
        assert!(error("COPY a").contains("COPY requires at least two arguments"));
        assert_eq!(
            error("SHELL /bin/sh -c"),
            "SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(error("USER"), "USER requires exactly one argument");
        assert_eq!(error("EXPOSE"), "EXPOSE requires at least one argument");
        assert_eq!(error("ENV"), "ENV requires at least one argument");
        assert_eq!(error("ARG"), "ARG requires at least one argument");
        assert_eq!(error("RUN"), "RUN requires at least one argument");
        assert_eq!(error("COPY http://x/y /"), "source can't be a URL for COPY");
        assert!(one("ADD http://x/y /").is_ok());
        assert!(error("FROM a AS 1x").contains("invalid name for build stage"));
        assert!(error("FROM a b").contains("one or three arguments"));
        assert_eq!(
            one("CMD [\"a\", \"b\"]").expect("cmd"),
            Kind::Cmd {
                command: Command::Exec(vec!["a".into(), "b".into()])
            }
        );
    }

    #[test]
    fn healthcheck_forms() {
        let Kind::Healthcheck(h) =
            one("HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://x/").expect("hc")
        else {
            panic!("not a healthcheck")
        };
        assert_eq!(h.test, ["CMD-SHELL", "curl -f http://x/"]);
        assert_eq!(h.interval, Some(90_000_000_000));
        assert_eq!(h.retries, Some(3));
        assert!(matches!(one("HEALTHCHECK NONE"), Ok(Kind::Healthcheck(h)) if h.test == ["NONE"]));
        assert!(error("HEALTHCHECK NONE x").contains("takes no arguments"));
        assert!(error("HEALTHCHECK FOO x").contains("Unknown type"));
        assert!(error("HEALTHCHECK").contains("requires at least one argument"));
        assert!(error("HEALTHCHECK --interval=1x CMD a").contains("invalid duration"));
    }

    #[test]
    fn onbuild_triggers() {
        assert_eq!(
            one("ONBUILD RUN echo hi").expect("onbuild"),
            Kind::Onbuild {
                trigger: "RUN echo hi".into()
            }
        );
        assert!(error("ONBUILD COPY a").contains("at least two"));
        assert!(error("ONBUILD MAINTAINER me").contains("isn't allowed"));
    }

    #[test]
    fn heredoc_sources_are_separated() {
        let df = parse("FROM scratch\nCOPY <<EOF a /dst/\nhello\nEOF\n").expect("parse");
        let Kind::Copy(copy) = parse_all(&df).expect("instructions").remove(1).kind else {
            panic!("not a copy")
        };
        assert_eq!(copy.sources, ["a"]);
        assert_eq!(copy.heredocs[0].body, "hello\n");
    }
}
