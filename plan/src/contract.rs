//! The plan contract: what the source pod writes to `/workspace/plan.json` and what the
//! operator, every stage pod and the assemble pod read. Versioned: a reader refuses a
//! plan whose `version` it does not know instead of misreading it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::instruction::Instruction;

/// The contract version this crate writes and reads.
pub const PLAN_VERSION: &str = "stagecoach.dev/plan/v1";

/// Everything a build needs to know about the Dockerfile, after planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub version: String,
    /// The Dockerfile's name as error messages show it (`Dockerfile`, `build/Dockerfile.prod`).
    pub dockerfile: String,
    /// The escape character in force (`# escape=`), needed to expand words later.
    pub escape: char,
    /// The `# syntax=` directive, if any (recorded; Stagecoach has one front end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    pub platform: Platform,
    /// Build arguments the user passed.
    pub build_args: BTreeMap<String, String>,
    /// ARGs in the global scope (before the first FROM) with their values after build
    /// args, plus the automatic platform args. Stages see them only when they re-declare them.
    pub global_args: Vec<Variable>,
    /// The id of the stage the build produces.
    pub target: String,
    /// Stages the target needs, in Dockerfile order, then image sources.
    pub stages: Vec<Stage>,
    /// Pods in start order: every pod of a wave can run at the same time once the
    /// previous waves are done. Each entry is the id of the stage whose pod it is.
    pub waves: Vec<Vec<String>>,
    /// Stages of the Dockerfile the target does not need; never run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// What is legal but probably not meant (the build goes on): lines in order, then
    /// warnings about the options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// Something in the Dockerfile or the build options that is allowed but most likely a
/// mistake; the build goes on, and people are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    /// What happened and what to do, ready to show: it starts with `<dockerfile>:<line>: `
    /// when the warning has a line.
    pub message: String,
    /// The Dockerfile line the warning is about, if it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// The stable CamelCase word for a kind of warning, for machines to tell kinds apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarningKind {
    /// Build args that no ARG of the target's stages or of the global scope declares.
    BuildArgUnused,
    /// `FROM x`, `COPY --from=x` or `RUN --mount=from=x` where `x` is no stage but is
    /// close to a stage name, so it is pulled as an image (likely a typo).
    FromLooksLikeStage,
    /// The stage cache could not be read or written; the build goes on without it.
    CacheUnavailable,
    /// A kind this version does not know (from a newer writer), kept as written so
    /// reading a plan or summary never fails on it.
    #[serde(untagged)]
    Other(String),
}

impl WarningKind {
    /// The word as it is written in JSON.
    pub fn as_str(&self) -> &str {
        match self {
            WarningKind::BuildArgUnused => "BuildArgUnused",
            WarningKind::FromLooksLikeStage => "FromLooksLikeStage",
            WarningKind::CacheUnavailable => "CacheUnavailable",
            WarningKind::Other(kind) => kind,
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A name and value, in order (ARG and ENV scopes are ordered lists, last one wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub value: String,
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One stage of the build: a Dockerfile stage, or an image named by `COPY --from` /
/// `RUN --mount=from=` that must provide files (planned as a stage without instructions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Stable key for pods and workspace directories: the stage name, `stage-<index>`
    /// for unnamed stages, `image-<n>` for image sources.
    pub id: String,
    /// The `AS` name, lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Position among the Dockerfile's stages; none for image sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Line of the FROM (or of the first instruction naming the image source).
    pub line: usize,
    pub base: Base,
    /// `FROM --platform`, expanded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The instructions after FROM. Words that may depend on the base image's environment
    /// are left unexpanded; the stage pod expands them with [`crate::scope::Scope`].
    pub instructions: Vec<Instruction>,
    /// Stage ids whose results this stage reads (its base stage, COPY/mount sources).
    pub depends_on: Vec<String>,
    /// What each `COPY --from` / `RUN --mount=from=` of this stage reads, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Read>,
    /// Paths (glob patterns, expanded) that later stages copy from this stage; `/` when a
    /// reader's path depends on values only known at build time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,
    /// Whether a later stage builds on this stage's whole filesystem (`FROM <stage>`) or
    /// it is the target; if not, only its exports are needed.
    pub needs_filesystem: bool,
    pub execution: Execution,
    /// What the stage cache knows of this stage; filled by the source pod, none when
    /// the build's cache is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<StageCache>,
    /// Ids of the build secrets its RUN steps mount, sorted; the values are never here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Whether its RUN steps mount persistent caches (`--mount=type=cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_cache: bool,
    /// Ids of the ssh agents its RUN steps mount (`--mount=type=ssh`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
}

/// A stage's place in the stage cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCache {
    /// The stage's key (hex sha256): the same key always means the same result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its results were restored from the cache: nothing of it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hit: bool,
    /// Why the stage has no key (an `ADD <url>` without `--checksum`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncacheable: Option<String>,
}

/// A `--from` of one instruction, resolved to the stage (or image source) it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// Line of the instruction.
    pub line: usize,
    /// The `--from` value, expanded.
    pub from: String,
    /// The id of the stage whose export is read.
    pub stage: String,
}

impl Stage {
    /// The stage a `--from` of the instruction on `line` reads.
    pub fn read(&self, line: usize, from: &str) -> Option<&str> {
        self.reads
            .iter()
            .find(|r| r.line == line && r.from == from)
            .map(|r| r.stage.as_str())
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// A registry image, normalised the way Docker does; the source pod fills the digest.
    Image {
        reference: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// `FROM <stage>`: the result of an earlier stage.
    Stage { id: String },
}

/// Where a stage's instructions run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Execution {
    /// In a pod of its own; `runs` lists the stages that pod executes in order (fused
    /// ancestors first, this stage last).
    Pod { runs: Vec<String> },
    /// Inside the pod of a later stage that continues from it and is its only user.
    Fused { pod: String },
    /// The target stage only copies and sets metadata: the assemble pod builds its layers
    /// from the other stages' exports, no stage pod is needed.
    Assemble,
    /// No instructions and nothing to export: the stage is its base as it is (a named
    /// image that later stages build `FROM`), so there is nothing to run.
    Nothing,
}

impl Plan {
    /// The stage with this id.
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// Reads a plan from JSON, refusing versions this crate does not know.
    pub fn from_json(json: &str) -> Result<Plan, ContractError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: String,
        }
        let versioned: Versioned = serde_json::from_str(json).map_err(ContractError::Json)?;
        if versioned.version != PLAN_VERSION {
            return Err(ContractError::Version(versioned.version));
        }
        serde_json::from_str(json).map_err(ContractError::Json)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serialises")
    }
}

/// A plan that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("plan is not valid JSON for this version")]
    Json(#[source] serde_json::Error),
    #[error("plan version {0:?} is not {PLAN_VERSION:?}")]
    Version(String),
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// Parses `os/arch[/variant]`, lower-cased as containerd normalises it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("invalid platform {s:?}: want os/architecture[/variant]");
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(bad()),
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Plan {
    /// The plan for people: stages with their bases, what each waits for, and the waves.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "plan for {} (target {}, platform {})\n",
            self.dockerfile, self.target, self.platform
        );
        out.push_str("stages:\n");
        for s in &self.stages {
            let base = match &s.base {
                Base::Scratch => "scratch".to_string(),
                Base::Image { reference, digest } => match digest {
                    Some(d) => format!("{reference}@{d}"),
                    None => reference.clone(),
                },
                Base::Stage { id } => format!("stage {id}"),
            };
            let runs = match &s.execution {
                Execution::Pod { runs } if runs.len() > 1 => {
                    format!("pod running {}", runs.join(" → "))
                }
                Execution::Pod { .. } => "pod".to_string(),
                Execution::Fused { pod } => format!("fused into pod {pod}"),
                Execution::Assemble => "assembled, no pod".to_string(),
                Execution::Nothing => "nothing to run".to_string(),
            };
            out.push_str(&format!(
                "  {:<20} from {base} ({} instructions, {runs})\n",
                s.id,
                s.instructions.len()
            ));
            if !s.depends_on.is_empty() {
                out.push_str(&format!(
                    "  {:<20}   waits for {}\n",
                    "",
                    s.depends_on.join(", ")
                ));
            }
            if !s.exports.is_empty() {
                out.push_str(&format!("  {:<20}   exports {}\n", "", s.exports.join(" ")));
            }
        }
        out.push_str("waves:\n");
        for (n, wave) in self.waves.iter().enumerate() {
            out.push_str(&format!("  {}: {}\n", n + 1, wave.join(", ")));
        }
        if !self.pruned.is_empty() {
            out.push_str(&format!("pruned: {}\n", self.pruned.join(", ")));
        }
        if !self.warnings.is_empty() {
            out.push_str("warnings:\n");
            for w in &self.warnings {
                out.push_str(&format!("  {w}\n"));
            }
        }
        out
    }
}

/// What the operator needs to schedule a build's pods, small enough for a pod's
/// termination message: the source pod reports it, the operator decides from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// The commit the source pod checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit time (Unix seconds): the timestamp reproducible images are clamped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<i64>,
    pub target: String,
    /// The stage pods, in wave order.
    pub pods: Vec<PodSummary>,
    /// The plan's warnings, for the operator to pass on to people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// One stage pod of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    /// The id of the stage the pod is named after (the last it runs); in a build for
    /// several platforms, a pod that runs once per platform is [`platform_pod`]'s.
    pub id: String,
    /// The stages it runs, in order (fused ancestors first).
    pub stages: Vec<String>,
    /// The image the pod runs on (the root of the stage's FROM chain, pinned when the
    /// source pod resolved it); none for a chain that starts at `scratch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods that must have succeeded before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<String>,
    /// The stage cache's view of the pod's stage: a hit needs no pod at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<StageCache>,
    /// Ids of the build secrets the pod's stages mount: its Secrets, and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Whether the pod's stages mount persistent caches: it gets the run cache volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_cache: bool,
    /// Ids of the ssh agents the pod's stages mount: its keys, and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
    /// The target platform the pod builds for, in a build for several platforms when
    /// the pod runs once per platform; none for a pod they all share, or with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The platform of the image the pod runs on, so of the node it needs: its chain's
    /// `FROM --platform`, else the target's; the build platform for a chain from
    /// `scratch` (it runs on the builder image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
}

impl PodSummary {
    /// The id of the stage the pod is named after, in its platform's plan.
    pub fn stage_id(&self) -> &str {
        pod_stage(&self.id)
    }
}

/// The id of a pod that runs once per platform in a build for several: the stage's id,
/// then its platform after an `@`, which no stage name has (`build@linux/arm64`).
pub fn platform_pod(stage: &str, platform: &Platform) -> String {
    format!("{stage}@{platform}")
}

/// The stage a pod id ([`platform_pod`]'s or a stage's own) is named after.
pub fn pod_stage(pod: &str) -> &str {
    pod.split('@').next().unwrap_or(pod)
}

impl Plan {
    /// The stages that run in a pod of their own (each names its pod).
    pub fn pod_stages(&self) -> impl Iterator<Item = &str> {
        self.stages
            .iter()
            .filter(|s| matches!(s.execution, Execution::Pod { .. }))
            .map(|s| s.id.as_str())
    }

    /// The image a stage's pod runs on: the root of its FROM chain, by digest when known.
    pub fn root_image(&self, stage: &str) -> Option<String> {
        let mut current = self.stage(stage)?;
        loop {
            match &current.base {
                Base::Image { reference, digest } => {
                    return Some(match digest {
                        Some(d) => format!("{}@{d}", reference_without_digest(reference)),
                        None => reference.clone(),
                    });
                }
                Base::Stage { id } => current = self.stage(id)?,
                Base::Scratch => return None,
            }
        }
    }

    /// The platform a stage runs on: its chain's image's `FROM --platform` or, without
    /// one, the target platform; the build platform (`BUILDPLATFORM`) from `scratch`.
    pub fn runs_on(&self, stage: &str) -> Option<Platform> {
        let mut current = self.stage(stage)?;
        loop {
            match &current.base {
                Base::Image { .. } => {
                    return match &current.platform {
                        Some(p) => p.parse().ok(),
                        None => Some(self.platform.clone()),
                    };
                }
                Base::Stage { id } => current = self.stage(id)?,
                Base::Scratch => {
                    let build = self
                        .global_args
                        .iter()
                        .rev()
                        .find(|v| v.name == "BUILDPLATFORM");
                    return match build {
                        Some(v) => v.value.parse().ok(),
                        None => Some(self.platform.clone()),
                    };
                }
            }
        }
    }

    /// The summary the source pod reports to the operator.
    pub fn summary(&self, commit: Option<String>, commit_time: Option<i64>) -> PlanSummary {
        let pod_of = |id: &str| -> Option<String> {
            let mut current = self.stage(id)?;
            loop {
                match (&current.execution, &current.base) {
                    (Execution::Pod { .. }, _) => return Some(current.id.clone()),
                    (Execution::Fused { pod }, _) => return Some(pod.clone()),
                    (Execution::Nothing, Base::Stage { id }) => current = self.stage(id)?,
                    _ => return None,
                }
            }
        };
        let pods = self
            .waves
            .iter()
            .flatten()
            .filter_map(|id| {
                let stage = self.stage(id)?;
                let Execution::Pod { runs } = &stage.execution else {
                    return None;
                };
                let mut waits_for: Vec<String> = Vec::new();
                for run in runs {
                    for dep in &self.stage(run)?.depends_on {
                        if let Some(pod) = pod_of(dep)
                            && pod != *id
                            && !waits_for.contains(&pod)
                        {
                            waits_for.push(pod);
                        }
                    }
                }
                Some(PodSummary {
                    id: id.clone(),
                    stages: runs.clone(),
                    image: self.root_image(id),
                    waits_for,
                    cache: stage.cache.clone(),
                    secrets: stage.secrets.clone(),
                    run_cache: runs
                        .iter()
                        .any(|r| self.stage(r).is_some_and(|s| s.run_cache)),
                    ssh: stage.ssh.clone(),
                    platform: None,
                    runs_on: self.runs_on(id).map(|p| p.to_string()),
                })
            })
            .collect();
        PlanSummary {
            commit,
            commit_time,
            target: self.target.clone(),
            pods,
            // Advice must not push a summary past the termination message's limit: the
            // first few, each cut short (all of them stay in plan.json).
            warnings: self
                .warnings
                .iter()
                .take(SUMMARY_WARNINGS)
                .map(|w| Warning {
                    message: w.message.chars().take(SUMMARY_WARNING_CHARS).collect(),
                    ..w.clone()
                })
                .collect(),
        }
    }
}

/// The warnings a summary carries at most, and the characters of each.
const SUMMARY_WARNINGS: usize = 5;
const SUMMARY_WARNING_CHARS: usize = 300;

/// `repo:tag@sha256:...` without the digest part (a pinned reference keeps the tag for
/// people and the digest for the runtime).
fn reference_without_digest(reference: &str) -> &str {
    reference.split('@').next().unwrap_or(reference)
}

/// What every build pod leaves as its termination message (and the operator reads from
/// the pod status): success, or a stable reason with the place; plus the source pod's
/// plan summary or the assemble pod's image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodOutcome {
    pub succeeded: bool,
    /// A stable CamelCase reason on failure (`StageFailed`, `GitAuthFailed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PlanSummary>,
    /// The pushed image, `reference@digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// In a build for several platforms, each one's image in the pushed index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformImage>,
    /// What went wrong without failing the pod (the stage cache), for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// One platform's image in an image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformImage {
    pub platform: String,
    pub digest: String,
}

/// The most of a termination message Kubernetes keeps.
pub const MESSAGE_LIMIT: usize = 4096;

/// The marker of a compressed termination message.
pub const MESSAGE_ENCODING: &str = "gzip+base64";

impl PodOutcome {
    /// The termination message for this outcome: its JSON when that fits the 4 KiB
    /// Kubernetes keeps; otherwise `{"succeeded":…,"encoding":"gzip+base64","data":…}`
    /// with the JSON gzipped and base64-encoded (a reader that knows no encoding still
    /// sees `succeeded` and no summary). Err with the envelope's size when even that
    /// does not fit.
    pub fn to_message(&self) -> Result<String, usize> {
        use base64::Engine as _;
        use std::io::Write as _;
        let json = serde_json::to_string(self).expect("an outcome always serialises");
        if json.len() <= MESSAGE_LIMIT {
            return Ok(json);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(json.as_bytes()).expect("writing to memory");
        let compressed = gz.finish().expect("writing to memory");
        let envelope = serde_json::json!({
            "succeeded": self.succeeded,
            "encoding": MESSAGE_ENCODING,
            "data": base64::engine::general_purpose::STANDARD.encode(&compressed),
        })
        .to_string();
        if envelope.len() <= MESSAGE_LIMIT {
            Ok(envelope)
        } else {
            Err(envelope.len())
        }
    }

    /// Reads a termination message written by [`PodOutcome::to_message`], plain or
    /// compressed; None for anything else.
    pub fn from_message(message: &str) -> Option<PodOutcome> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        struct Envelope {
            encoding: String,
            data: String,
        }
        if let Ok(envelope) = serde_json::from_str::<Envelope>(message) {
            if envelope.encoding != MESSAGE_ENCODING {
                return None;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(envelope.data)
                .ok()?;
            let mut json = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut json)
                .ok()?;
            return serde_json::from_str(&json).ok();
        }
        serde_json::from_str(message).ok()
    }
}
