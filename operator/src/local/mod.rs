//! `stagecoach local build`: the operator's own core and pod renderers, with podman in
//! place of a cluster. Each rendered pod runs under `podman kube play`, the workspace
//! claim is a podman volume, and what podman shows of the pods is fed back into
//! [`core::decide`] until the build ends.
//!
//! Podman keeps no termination messages, so pods also write their outcome into the
//! workspace (`STAGECOACH_OUTCOME_FILE`), where the runner reads it.
//!
//! This module is the runner loop; `podman` is what it asks podman and how a pod is
//! adapted for it; [`crate::progress`] prints.

mod podman;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use stagecoach_plan::contract::PodOutcome;

use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::core::{self, Action, ObservedPod, PodState};
use crate::progress::Progress;
use crate::render::{self, OperatorConfig, Role, RunCacheConfig};
use podman::{Podman, outcome_path};

pub use crate::progress::{ProgressStream, ProgressStyle};
pub use podman::podman_manifest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("the pods need Secret {name:?}: give it with --secret {name}=DIR")]
    MissingSecret { name: String },
    #[error(
        "the pods need key {key:?} of Secret {name:?}, but {} has no file {key:?} (a Secret given as a directory holds one file per key)",
        dir.display()
    )]
    MissingSecretKey {
        name: String,
        key: String,
        dir: PathBuf,
    },
    #[error("podman {args}: {message}")]
    Podman { args: String, message: String },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// How the local runner runs a build.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub builder_image: String,
    /// Leave pods and the volume for inspection.
    pub keep: bool,
    /// Stream every pod's output with its stage as prefix.
    pub logs: bool,
    pub progress: ProgressStyle,
    pub progress_stream: ProgressStream,
    /// Registries (`host:port`) the pods reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Kubernetes Secrets the build names, each a directory holding one file per key
    /// (as `kubectl create secret generic --from-file` reads them).
    pub secrets: BTreeMap<String, PathBuf>,
    /// The project's containers.conf and registries.conf, given to podman.
    pub containers_conf: Option<PathBuf>,
    pub registries_conf: Option<PathBuf>,
    /// The stage cache repository of a manifest that names none (`--cache-repository`).
    pub cache_repository: Option<String>,
    /// The podman volume of persistent `RUN --mount=type=cache` directories (kept
    /// between builds); none: cache mounts start empty.
    pub run_cache_volume: Option<String>,
    /// Run every stage and store nothing (`--no-cache`: `spec.cache.mode: Disabled`).
    pub no_cache: bool,
}

/// The outcome of a local build.
#[derive(Debug, Clone)]
pub struct LocalResult {
    pub status: ImageBuildStatus,
    /// Each stage pod's (name, start, end) as seen by the runner, for reports.
    pub timings: Vec<(String, Duration, Duration)>,
    /// The layers each stage made (by stage name: digest and compressed size), read
    /// from the workspace before it goes: with its base, what a stage's image weighs.
    pub stage_layers: BTreeMap<String, Vec<(String, u64)>>,
}

/// Reads an ImageBuild manifest and runs it to the end.
/// How long a container that exited without an outcome may take to disappear with its
/// pod before it counts as failed: `podman pod rm` gives the other containers of the pod
/// podman's stop timeout (10 s) before it removes it.
const REMOVAL_GRACE: Duration = Duration::from_secs(15);

/// How long a failed build waits for its cache pod.
const CACHE_POD_WAIT: Duration = Duration::from_secs(600);

pub fn build(manifest: &Path, opts: &LocalOptions) -> Result<LocalResult> {
    let text = std::fs::read_to_string(manifest).map_err(|source| Error::Read {
        path: manifest.to_path_buf(),
        source,
    })?;
    // Strict, as the API server is: a misspelt field is an error, never ignored.
    let mut build = crate::manifest::read_image_build(&text, manifest)?;
    build
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    build.metadata.generation = Some(1);
    build.metadata.uid = Some(format!("local-{}", std::process::id()));
    if opts.no_cache {
        build.spec.cache = Some(crate::api::CacheSpec {
            mode: Some(crate::api::CacheMode::Disabled),
            ..build.spec.cache.unwrap_or_default()
        });
    }
    run(build, opts)
}

/// Runs an ImageBuild (`stagecoach build` makes one from its flags) to the end.
pub fn run(build: ImageBuild, opts: &LocalOptions) -> Result<LocalResult> {
    Runner::new(build, opts).run()
}

struct Runner<'a> {
    build: ImageBuild,
    opts: &'a LocalOptions,
    podman: Podman,
    config: OperatorConfig,
    /// Pods created so far: name → (role, generation, attempt, manifest file).
    pods: BTreeMap<String, (Role, i64, u32, PathBuf)>,
    claim: Option<PathBuf>,
    dir: tempfile::TempDir,
    started: Instant,
    timings: BTreeMap<String, (Duration, Option<Duration>)>,
    /// Pods prepared but not started yet.
    pending: Vec<String>,
    /// Pods this runner took down itself.
    deleted: BTreeSet<String>,
    /// When each pod's container was first seen exited without an outcome.
    killed_since: BTreeMap<String, Instant>,
    /// The images of each pod's containers (init containers too).
    images: BTreeMap<String, Vec<String>>,
    /// What `podman kube play` said of each pod it could not start.
    play_errors: BTreeMap<String, String>,
    progress: Progress,
}

impl<'a> Runner<'a> {
    fn new(build: ImageBuild, opts: &'a LocalOptions) -> Runner<'a> {
        Runner {
            build,
            opts,
            podman: Podman::new(opts),
            config: OperatorConfig {
                builder_image: opts.builder_image.clone(),
                default_workspace_size: "10Gi".into(),
                default_storage_class: None,
                insecure_registries: opts.insecure_registries.clone(),
                cache_repository: opts.cache_repository.clone(),
                run_cache: opts.run_cache_volume.clone().map(|claim| RunCacheConfig {
                    claim,
                    ..RunCacheConfig::default()
                }),
                build_platform: render::DEFAULT_BUILD_PLATFORM.into(),
                emulated_platforms: vec!["all".into()],
            },
            pods: BTreeMap::new(),
            claim: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
            started: Instant::now(),
            timings: BTreeMap::new(),
            pending: Vec::new(),
            deleted: BTreeSet::new(),
            killed_since: BTreeMap::new(),
            images: BTreeMap::new(),
            play_errors: BTreeMap::new(),
            progress: Progress::new(opts.progress, opts.progress_stream, opts.logs),
        }
    }

    fn stage_layers(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let Some(claim) = &self.claim else {
            return BTreeMap::new();
        };
        let workspace = stagecoach_builder::workspace::Workspace::new(claim);
        let stages = self.build.status.iter().flat_map(|s| &s.stages);
        stages
            .filter_map(|stage| {
                let part = match &stage.platform {
                    Some(platform) => workspace.for_platform(platform),
                    None => workspace.clone(),
                };
                let id = stagecoach_plan::contract::pod_stage(&stage.name);
                let index = std::fs::read(part.layer_index(id)).ok()?;
                let layers: Vec<stagecoach_builder::workspace::LayerRecord> =
                    serde_json::from_slice(&index).ok()?;
                let layers = layers.into_iter().map(|l| (l.digest, l.size)).collect();
                Some((stage.name.clone(), layers))
            })
            .collect()
    }

    /// Every pod's new output, prefixed with its stage.
    fn stream_logs(&mut self) {
        for (name, (role, ..)) in &self.pods {
            let container = format!("{name}-{}", role.label());
            let Ok(out) = self.podman.command().args(["logs", &container]).output() else {
                continue;
            };
            let label = match role {
                Role::Stage(s) => s.as_str(),
                other => other.label(),
            };
            // Each stream grows on its own: read apart, they never shift each other.
            for (stream, bytes) in [("out", &out.stdout), ("err", &out.stderr)] {
                let text = String::from_utf8_lossy(bytes);
                self.progress
                    .log_since(&format!("{name}/{stream}"), label, &text);
            }
        }
    }

    fn run(mut self) -> Result<LocalResult> {
        let result = self.drive().map(|mut status| {
            // As the operator does: the failed pod's last log lines go into the status.
            // A pod that never started has no log to show (podman would say so instead).
            if let Some(failure) = status.failure.as_mut()
                && !core::reason::START_FAILURES.contains(&failure.reason.as_str())
                && let Some(pod) = &failure.pod
                && let Some((role, ..)) = self.pods.get(pod)
            {
                let container = format!("{pod}-{}", role.label());
                failure.log_tail = self
                    .podman
                    .log_tail(&container)
                    .lines()
                    .map(String::from)
                    .collect();
            }
            status
        });
        let stage_layers = self.stage_layers();
        if !self.opts.keep {
            self.clean_up();
        }
        let status = result?;
        let timings = self
            .timings
            .iter()
            .map(|(name, (start, end))| (name.clone(), *start, end.unwrap_or(*start)))
            .collect();
        Ok(LocalResult {
            status,
            timings,
            stage_layers,
        })
    }

    fn drive(&mut self) -> Result<ImageBuildStatus> {
        let mut ended: Option<Instant> = None;
        loop {
            let observed = self.observe()?;
            let decision = core::decide(
                &core::Observed {
                    build: &self.build,
                    pods: &observed,
                    claim_exists: self.claim.is_some(),
                    now: Timestamp::now(),
                },
                &self.config,
            );
            self.build.status = Some(decision.status.clone());
            for action in decision.actions {
                self.apply(action)?;
            }
            self.play_pending();
            let name = self.build.metadata.name.clone().unwrap_or_default();
            self.progress
                .show(&name, &decision.status, &self.timings, self.started);
            if self.opts.logs {
                self.stream_logs();
            }
            if matches!(
                decision.status.phase,
                Some(Phase::Succeeded | Phase::Failed)
            ) {
                // A failed build's cache pod stores what succeeded before the volume goes
                // (for at most CACHE_POD_WAIT: the stage cache is best-effort).
                let ended = *ended.get_or_insert_with(Instant::now);
                let created = self.pods.values().any(|(role, ..)| *role == Role::Cache);
                let done = observed
                    .iter()
                    .any(|p| p.role == Role::Cache && !p.state.is_active());
                if !created || done || ended.elapsed() > CACHE_POD_WAIT {
                    return Ok(decision.status);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What podman shows of every pod created so far.
    fn observe(&mut self) -> Result<Vec<ObservedPod>> {
        let mut observed = Vec::new();
        let containers = self.podman.containers()?;
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            let (role, generation, attempt, _) = self.pods[&name].clone();
            let container = format!("{name}-{}", role.label());
            let outcome = self.read_outcome(&name);
            let state = match containers.get(&container) {
                Some(c) if c.state == "exited" && c.exit_code == 0 => PodState::Succeeded,
                // A failing builder writes its outcome; a container killed without one
                // may be a pod being removed (`podman pod rm` kills, then removes): give
                // it a moment to go before calling it failed.
                Some(c)
                    if c.state == "exited"
                        && outcome.is_none()
                        && !self.deleted.contains(&name) =>
                {
                    let first_seen = *self
                        .killed_since
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                    if !self.podman.pod_exists(&name) {
                        PodState::Lost
                    } else if first_seen.elapsed() < REMOVAL_GRACE {
                        PodState::Running
                    } else {
                        PodState::Failed
                    }
                }
                Some(c) if c.state == "exited" => PodState::Failed,
                Some(c) if c.state == "running" => PodState::Running,
                Some(_) => PodState::Pending,
                // Gone without this runner taking it down (`podman pod rm`, the podman
                // counterpart of a drained node; the pod itself may linger a while):
                // lost, as a deleted pod is to the operator.
                None if !self.play_errors.contains_key(&name) && !self.deleted.contains(&name) => {
                    PodState::Lost
                }
                // The main container never came: the init container failed.
                None => PodState::Failed,
            };
            if let Some(t) = self.timings.get_mut(&name)
                && t.1.is_none()
                && matches!(state, PodState::Succeeded | PodState::Failed)
            {
                t.1 = Some(self.started.elapsed());
            }
            let outcome = outcome.or_else(|| {
                (state == PodState::Failed).then(|| match self.play_errors.get(&name) {
                    // It never started: the pull or mount error podman gave.
                    Some(error) if !containers.contains_key(&container) => {
                        start_failure(&role, &self.images[&name], error)
                    }
                    _ => PodOutcome {
                        succeeded: false,
                        message: Some(self.podman.log_tail(&container)),
                        ..PodOutcome::default()
                    },
                })
            });
            observed.push(ObservedPod {
                name,
                role,
                generation,
                attempt,
                state,
                node: Some("local".into()),
                started: None,
                finished: None,
                outcome,
            });
        }
        Ok(observed)
    }

    fn read_outcome(&self, pod: &str) -> Option<PodOutcome> {
        let volume = self.claim.as_ref()?;
        let rel = outcome_path(pod);
        let path = volume.join(
            rel.trim_start_matches(render::WORKSPACE)
                .trim_start_matches('/'),
        );
        PodOutcome::from_message(&std::fs::read_to_string(path).ok()?)
    }

    fn apply(&mut self, action: Action) -> Result<()> {
        match action {
            // The run cache is a named volume that outlives builds: made once, kept.
            Action::CreateClaim(pvc) if pvc.labels().contains_key(render::LABEL_RUN_CACHE) => {
                let name = pvc.metadata.name.clone().unwrap_or_default();
                // Another build may make it at the same moment (podman 4 has no --ignore).
                if self.podman.ok(&["volume", "exists", &name]).is_err()
                    && let Err(e) = self.podman.ok(&["volume", "create", &name])
                    && self.podman.ok(&["volume", "exists", &name]).is_err()
                {
                    return Err(e);
                }
            }
            Action::CreateClaim(pvc) => {
                let name = pvc.metadata.name.clone().unwrap_or_default();
                let _ = self
                    .podman
                    .command()
                    .args(["volume", "rm", "-f", &name])
                    .output();
                self.podman.ok(&["volume", "create", &name])?;
                let path =
                    self.podman
                        .ok(&["volume", "inspect", &name, "--format", "{{.Mountpoint}}"])?;
                let path = PathBuf::from(path.trim());
                // A kubelet gives the claim to the pod's fsGroup; podman does not.
                let _ = Command::new("chown")
                    .arg(format!("{0}:{0}", render::BUILDER_UID))
                    .arg(&path)
                    .status();
                let _ = Command::new("chmod").arg("2775").arg(&path).status();
                self.claim = Some(path);
            }
            Action::CreatePod(pod) => self.prepare(*pod)?,
            Action::DeletePod(name) => {
                self.deleted.insert(name.clone());
                if let Some((_, _, _, file)) = self.pods.get(&name) {
                    let file = file.display().to_string();
                    let _ = self.podman.command().args(["kube", "down", &file]).output();
                }
            }
            Action::DeleteClaim(name) => {
                if !self.opts.keep {
                    let _ = self
                        .podman
                        .command()
                        .args(["volume", "rm", "-f", &name])
                        .output();
                    self.claim = None;
                }
            }
            Action::Event {
                warning,
                reason,
                message,
            } => {
                if warning {
                    eprintln!("warning: {reason}: {message}");
                }
            }
        }
        Ok(())
    }

    /// Writes a rendered pod's manifest for podman, with the local adjustments (Secrets
    /// and emptyDirs as host directories, the outcome file, a `file://` repository mounted read-only
    /// into the source pod); [`Runner::play_pending`] starts it.
    fn prepare(&mut self, mut pod: Pod) -> Result<()> {
        podman::mount_secrets(&mut pod, &self.opts.secrets, self.dir.path())?;
        podman::empty_dirs_on_host(&mut pod, self.dir.path())?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let stage_names: Vec<String> = self
            .build
            .status
            .iter()
            .flat_map(|s| s.stages.iter().map(|st| st.name.clone()))
            .collect();
        let role = Role::from_labels(&labels, &stage_names).ok_or_else(|| Error::Podman {
            args: "kube play".into(),
            message: format!("pod {name} has no Stagecoach role label"),
        })?;
        let generation = labels
            .get(render::LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let attempt = labels
            .get(render::LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let images = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .filter_map(|c| c.image.clone())
            .collect();
        self.images.insert(name.clone(), images);
        let repository = (role == Role::Source)
            .then_some(self.build.spec.source.git.as_ref())
            .flatten()
            .and_then(|git| git.url.strip_prefix("file://"));
        let claim = self.claim.clone().ok_or_else(|| Error::Podman {
            args: "kube play".into(),
            message: format!("pod {name} comes before the workspace volume"),
        })?;
        let yaml = podman_manifest(pod, repository, &claim).map_err(|message| Error::Podman {
            args: "kube play".into(),
            message,
        })?;
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).map_err(|source| Error::Read {
            path: file.clone(),
            source,
        })?;
        self.pending.push(name.clone());
        self.pods.insert(name, (role, generation, attempt, file));
        Ok(())
    }

    /// Starts the pods prepared since the last call, all at once: `podman kube play`
    /// returns only when a pod's init containers have run, so one after the other would
    /// hold back independent stages.
    fn play_pending(&mut self) {
        let pending: Vec<(String, String)> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|name| {
                let file = self.pods.get(&name)?.3.display().to_string();
                Some((name, file))
            })
            .collect();
        let started = self.started;
        let played: Vec<(String, Duration, Option<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = pending
                .iter()
                .map(|(name, file)| {
                    let mut down = self.podman.command();
                    let mut play = self.podman.command();
                    scope.spawn(move || {
                        let _ = down.args(["kube", "down", file]).output();
                        // A pull, a mount or an init container that fails makes kube
                        // play fail: observe() reports what it said.
                        let error = match play
                            .args([
                                "kube",
                                "play",
                                "--network",
                                "host",
                                "--tls-verify=false",
                                file,
                            ])
                            .output()
                        {
                            Ok(out) if out.status.success() => None,
                            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
                            Err(e) => Some(format!("Error: cannot run podman: {e}")),
                        };
                        (name.clone(), started.elapsed(), error)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (name, at, error) in played {
            self.timings.insert(name.clone(), (at, None));
            if let Some(error) = error {
                self.play_errors.insert(name, error);
            }
        }
    }

    fn clean_up(&mut self) {
        for (_, (_, _, _, file)) in std::mem::take(&mut self.pods) {
            let file = file.display().to_string();
            let _ = self.podman.command().args(["kube", "down", &file]).output();
        }
        if let Some(claim) = self
            .build
            .metadata
            .name
            .as_ref()
            .map(|_| render::claim_name(&self.build))
        {
            let _ = self
                .podman
                .command()
                .args(["volume", "rm", "-f", &claim])
                .output();
        }
    }
}

/// The outcome of a pod podman could not start, with the reasons the operator gives on a
/// cluster: the image it could not pull (`ImagePullFailed`), or why the pod could not be
/// made (`PodStartFailed`), in podman's own words.
fn start_failure(role: &Role, images: &[String], podman_error: &str) -> PodOutcome {
    let error = podman_error
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Error: "))
        .unwrap_or(podman_error.trim());
    let who = match role {
        Role::Stage(name) => format!("stage {name}"),
        other => format!("the {} pod", other.label()),
    };
    let (reason, message) = match images.iter().find(|image| error.contains(image.as_str())) {
        Some(image) => (
            core::reason::IMAGE_PULL_FAILED,
            format!(
                "{who}: cannot pull {image}: {error}; check the image reference and tag, that the \
                 registry is reachable, and that it needs no credentials the pod lacks"
            ),
        ),
        None => (
            core::reason::POD_START_FAILED,
            format!("{who}: the pod cannot start: {error}"),
        ),
    };
    PodOutcome {
        succeeded: false,
        reason: Some(reason.to_string()),
        message: Some(message),
        stage: match role {
            Role::Stage(name) => Some(name.clone()),
            _ => None,
        },
        ..PodOutcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_that_cannot_start_say_why() {
        let images = ["127.0.0.1:5000/stagecoach/buildr:dev".to_string()];
        let pull = start_failure(
            &Role::Stage("build".into()),
            &images,
            "Trying to pull 127.0.0.1:5000/stagecoach/buildr:dev...\nError: initializing source docker://127.0.0.1:5000/stagecoach/buildr:dev: reading manifest dev in 127.0.0.1:5000/stagecoach/buildr: manifest unknown\n",
        );
        assert_eq!(pull.reason.as_deref(), Some("ImagePullFailed"));
        assert_eq!(pull.stage.as_deref(), Some("build"));
        let message = pull.message.unwrap_or_default();
        assert!(
            message.starts_with(
                "stage build: cannot pull 127.0.0.1:5000/stagecoach/buildr:dev: initializing source"
            ) && message.contains("manifest unknown; check the image reference"),
            "{message}"
        );
        let mount = start_failure(
            &Role::Source,
            &images,
            "Error: failed to create volume \"repo\": in parsing HostPath in YAML: stat /nonexistent/repo: no such file or directory\n",
        );
        assert_eq!(mount.reason.as_deref(), Some("PodStartFailed"));
        assert_eq!(
            mount.message.as_deref(),
            Some(
                "the source pod: the pod cannot start: failed to create volume \"repo\": in parsing HostPath in YAML: stat /nonexistent/repo: no such file or directory"
            )
        );
    }
}
