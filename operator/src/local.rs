//! `stagecoach local build`: the operator's own core and pod renderers, with podman in
//! place of a cluster. Each rendered pod runs under `podman kube play`, the workspace
//! claim is a podman volume, and what podman shows of the pods is fed back into
//! [`core::decide`] until the build ends.
//!
//! Podman keeps no termination messages, so pods also write their outcome into the
//! workspace (`STAGECOACH_OUTCOME_FILE`), where the runner reads it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{EnvVar, HostPathVolumeSource, Pod, Volume, VolumeMount};
use k8s_openapi::jiff::Timestamp;
use stagecoach_plan::contract::PodOutcome;
use std::os::unix::fs::PermissionsExt as _;

use crate::api::{ImageBuild, ImageBuildStatus, Phase, StagePhase};
use crate::core::{self, Action, ObservedPod, PodState};
use crate::render::{self, OperatorConfig, Role};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid ImageBuild: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the pods need Secret {name:?}: give it with --secret {name}=DIR")]
    MissingSecret { name: String },
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
    /// Registries (`host:port`) the pods reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Kubernetes Secrets the build names, each a directory holding one file per key
    /// (as `kubectl create secret generic --from-file` reads them).
    pub secrets: BTreeMap<String, PathBuf>,
    /// The project's containers.conf and registries.conf, given to podman.
    pub containers_conf: Option<PathBuf>,
    pub registries_conf: Option<PathBuf>,
}

/// The outcome of a local build.
#[derive(Debug, Clone)]
pub struct LocalResult {
    pub status: ImageBuildStatus,
    /// Each stage pod's (name, start, end) as seen by the runner, for reports.
    pub timings: Vec<(String, Duration, Duration)>,
}

/// A container as `podman ps --format json` lists it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    names: Vec<String>,
    /// `created`, `running`, `exited`, ...
    state: String,
    exit_code: i32,
}

/// Where a pod's outcome lands on the workspace volume.
fn outcome_path(pod: &str) -> String {
    format!("{}/outcomes/{pod}.json", render::WORKSPACE)
}

/// A rendered pod as podman runs it: its outcome written to the workspace (podman keeps
/// no termination messages), a `file://` repository mounted read-only into the source
/// pod, and emptyDir names made unique (podman names those volumes globally).
pub fn podman_manifest(mut pod: Pod, repository: Option<&str>) -> Result<String, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        for c in &mut spec.containers {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "STAGECOACH_OUTCOME_FILE".into(),
                value: Some(outcome_path(&name)),
                value_from: None,
            });
        }
        if let Some(repo) = repository {
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: format!("{name}-repository"),
                host_path: Some(HostPathVolumeSource {
                    path: repo.to_string(),
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            });
            for c in &mut spec.containers {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name: format!("{name}-repository"),
                        mount_path: repo.to_string(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    });
            }
        }
        for v in spec
            .volumes
            .iter_mut()
            .flatten()
            .filter(|v| v.empty_dir.is_some())
        {
            let unique = format!("{name}-{}", v.name);
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                for m in c
                    .volume_mounts
                    .iter_mut()
                    .flatten()
                    .filter(|m| m.name == v.name)
                {
                    m.name = unique.clone();
                }
            }
            v.name = unique;
        }
    }
    serde_saphyr::to_string(&pod).map_err(|e| e.to_string())
}

/// Reads an ImageBuild manifest and runs it to the end.
pub fn build(manifest: &Path, opts: &LocalOptions) -> Result<LocalResult> {
    let text = std::fs::read_to_string(manifest).map_err(|source| Error::Read {
        path: manifest.to_path_buf(),
        source,
    })?;
    let mut build: ImageBuild = serde_saphyr::from_str(&text).map_err(|e| Error::Invalid {
        path: manifest.to_path_buf(),
        message: e.to_string(),
    })?;
    build
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    build.metadata.generation = Some(1);
    build.metadata.uid = Some(format!("local-{}", std::process::id()));
    Runner::new(build, opts).run()
}

struct Runner<'a> {
    build: ImageBuild,
    opts: &'a LocalOptions,
    config: OperatorConfig,
    /// Pods created so far: name → (role, generation, attempt, manifest file).
    pods: BTreeMap<String, (Role, i64, u32, PathBuf)>,
    claim: Option<PathBuf>,
    dir: tempfile::TempDir,
    started: Instant,
    timings: BTreeMap<String, (Duration, Option<Duration>)>,
    log_offsets: BTreeMap<String, usize>,
    printed: BTreeMap<String, String>,
    /// Pods prepared but not started yet.
    pending: Vec<String>,
    /// Progress redrawn in place (a terminal, no `--logs`), and how many lines it took.
    live: bool,
    drawn: usize,
}

impl<'a> Runner<'a> {
    fn new(build: ImageBuild, opts: &'a LocalOptions) -> Runner<'a> {
        Runner {
            build,
            opts,
            config: OperatorConfig {
                builder_image: opts.builder_image.clone(),
                default_workspace_size: "10Gi".into(),
                default_storage_class: None,
                insecure_registries: opts.insecure_registries.clone(),
            },
            pods: BTreeMap::new(),
            claim: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
            started: Instant::now(),
            timings: BTreeMap::new(),
            log_offsets: BTreeMap::new(),
            printed: BTreeMap::new(),
            pending: Vec::new(),
            live: std::io::IsTerminal::is_terminal(&std::io::stdout()) && !opts.logs,
            drawn: 0,
        }
    }

    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        if let Some(c) = &self.opts.containers_conf {
            cmd.env("CONTAINERS_CONF", c);
        }
        if let Some(r) = &self.opts.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", r);
        }
        cmd
    }

    fn podman_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .podman()
            .args(args)
            .output()
            .map_err(|e| Error::Podman {
                args: args.join(" "),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Podman {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(mut self) -> Result<LocalResult> {
        let result = self.drive().map(|mut status| {
            // As the operator does: the failed pod's last log lines go into the status.
            if let Some(failure) = status.failure.as_mut()
                && let Some(pod) = &failure.pod
                && let Some((role, ..)) = self.pods.get(pod)
            {
                let container = format!("{pod}-{}", role.label());
                failure.log_tail = self
                    .log_tail(&container)
                    .lines()
                    .map(String::from)
                    .collect();
            }
            status
        });
        if !self.opts.keep {
            self.clean_up();
        }
        let status = result?;
        let timings = self
            .timings
            .iter()
            .map(|(name, (start, end))| (name.clone(), *start, end.unwrap_or(*start)))
            .collect();
        Ok(LocalResult { status, timings })
    }

    fn drive(&mut self) -> Result<ImageBuildStatus> {
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
            self.show(&decision.status);
            if self.opts.logs {
                self.stream_logs();
            }
            if matches!(
                decision.status.phase,
                Some(Phase::Succeeded | Phase::Failed)
            ) {
                return Ok(decision.status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What podman shows of every pod created so far.
    fn observe(&mut self) -> Result<Vec<ObservedPod>> {
        let mut observed = Vec::new();
        let containers = self.containers()?;
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            let (role, generation, attempt, _) = self.pods[&name].clone();
            let container = format!("{name}-{}", role.label());
            let outcome = self.read_outcome(&name);
            let state = match containers.get(&container) {
                Some(c) if c.state == "exited" && c.exit_code == 0 => PodState::Succeeded,
                Some(c) if c.state == "exited" => PodState::Failed,
                Some(c) if c.state == "running" => PodState::Running,
                Some(_) => PodState::Pending,
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
                (state == PodState::Failed).then(|| PodOutcome {
                    succeeded: false,
                    message: Some(self.log_tail(&container)),
                    ..PodOutcome::default()
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

    /// Every container podman knows, by name: one `podman ps` for all pods.
    fn containers(&self) -> Result<BTreeMap<String, PsEntry>> {
        let json = self.podman_ok(&["ps", "--all", "--format", "json"])?;
        let entries: Vec<PsEntry> = serde_json::from_str(&json).map_err(|e| Error::Podman {
            args: "ps --all --format json".into(),
            message: e.to_string(),
        })?;
        Ok(entries
            .into_iter()
            .flat_map(|e| {
                e.names
                    .clone()
                    .into_iter()
                    .map(move |name| (name, e.clone()))
            })
            .collect())
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

    fn log_tail(&self, container: &str) -> String {
        let logs = self
            .podman()
            .args(["logs", "--tail", "20", container])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        logs.trim().to_string()
    }

    fn apply(&mut self, action: Action) -> Result<()> {
        match action {
            Action::CreateClaim(pvc) => {
                let name = pvc.metadata.name.clone().unwrap_or_default();
                let _ = self.podman().args(["volume", "rm", "-f", &name]).output();
                self.podman_ok(&["volume", "create", &name])?;
                let path =
                    self.podman_ok(&["volume", "inspect", &name, "--format", "{{.Mountpoint}}"])?;
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
                if let Some((_, _, _, file)) = self.pods.get(&name) {
                    let file = file.display().to_string();
                    let _ = self.podman().args(["kube", "down", &file]).output();
                }
            }
            Action::DeleteClaim(name) => {
                if !self.opts.keep {
                    let _ = self.podman().args(["volume", "rm", "-f", &name]).output();
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
    /// as host directories, the outcome file, a `file://` repository mounted read-only
    /// into the source pod); [`Runner::play_pending`] starts it.
    fn prepare(&mut self, mut pod: Pod) -> Result<()> {
        self.mount_secrets(&mut pod)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let role = match labels.get(render::LABEL_ROLE).map(String::as_str) {
            Some("source") => Role::Source,
            Some("assemble") => Role::Assemble,
            _ => Role::Stage(self.stage_of(&name)),
        };
        let generation = labels
            .get(render::LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let attempt = labels
            .get(render::LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let repository = (role == Role::Source)
            .then(|| self.build.spec.source.git.url.strip_prefix("file://"))
            .flatten();
        let yaml = podman_manifest(pod, repository).map_err(|message| Error::Podman {
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
        let played: Vec<(String, Duration)> = std::thread::scope(|scope| {
            let handles: Vec<_> = pending
                .iter()
                .map(|(name, file)| {
                    let mut down = self.podman();
                    let mut play = self.podman();
                    scope.spawn(move || {
                        let _ = down.args(["kube", "down", file]).output();
                        // An init container that fails makes kube play fail: observe()
                        // reports it.
                        let _ = play
                            .args([
                                "kube",
                                "play",
                                "--network",
                                "host",
                                "--tls-verify=false",
                                file,
                            ])
                            .output();
                        (name.clone(), started.elapsed())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (name, at) in played {
            self.timings.insert(name, (at, None));
        }
    }

    /// Secret volumes become read-only host directories holding the Secret's keys (from
    /// `--secret NAME=DIR`, with the volume's key-to-path items applied), owned by the
    /// builder user as a kubelet would give them to the pod's fsGroup.
    fn mount_secrets(&self, pod: &mut Pod) -> Result<()> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(spec) = pod.spec.as_mut() else {
            return Ok(());
        };
        for volume in spec.volumes.iter_mut().flatten() {
            let Some(secret) = volume.secret.take() else {
                continue;
            };
            let name = secret.secret_name.clone().unwrap_or_default();
            let source = self
                .opts
                .secrets
                .get(&name)
                .ok_or_else(|| Error::MissingSecret { name: name.clone() })?;
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| Error::Read { path, source }
            };
            let keys: Vec<(String, String)> = match &secret.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => std::fs::read_dir(source)
                    .map_err(io(source))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .map(|k| (k.clone(), k))
                    .collect(),
            };
            let dir = self
                .dir
                .path()
                .join("secrets")
                .join(format!("{pod_name}-{}", volume.name));
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            for (key, path) in keys {
                let target = dir.join(&path);
                std::fs::copy(source.join(&key), &target).map_err(io(&source.join(&key)))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o440))
                    .map_err(io(&target))?;
            }
            // The builder user must read them; without the right to chown (rootless
            // podman) the pod could not, so say so now rather than fail in the pod.
            let chowned = Command::new("chown")
                .arg("-R")
                .arg(format!("{0}:{0}", render::BUILDER_UID))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !chowned {
                return Err(Error::Podman {
                    args: format!("secret {name}"),
                    message: format!(
                        "cannot give {} to the pods' user {}",
                        dir.display(),
                        render::BUILDER_UID
                    ),
                });
            }
            volume.host_path = Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("Directory".into()),
            });
        }
        Ok(())
    }

    /// The stage a stage pod belongs to, from the status the core wrote.
    fn stage_of(&self, pod: &str) -> String {
        self.build
            .status
            .as_ref()
            .and_then(|s| s.stages.iter().find(|st| st.pod.as_deref() == Some(pod)))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// The build's progress: on a terminal, a table of the stages redrawn in place with
    /// running times; otherwise (or with `--logs`) one line per change.
    fn show(&mut self, status: &ImageBuildStatus) {
        let phase = format!("{:?}", status.phase.unwrap_or(Phase::Pending));
        let mut lines = vec![(
            "build".to_string(),
            format!(
                "{} {phase}",
                self.build.metadata.name.clone().unwrap_or_default()
            ),
        )];
        for stage in &status.stages {
            let secs = stage
                .pod
                .as_ref()
                .and_then(|p| self.timings.get(p))
                .map(|(s, e)| {
                    e.unwrap_or_else(|| self.started.elapsed())
                        .saturating_sub(*s)
                        .as_secs_f64()
                })
                .unwrap_or(0.0);
            let name = &stage.name;
            let line = match stage.phase {
                StagePhase::Waiting => {
                    format!(
                        "  stage {name:<20} waiting for {}",
                        stage.waits_for.join(", ")
                    )
                }
                StagePhase::Running if self.live => {
                    format!("  stage {name:<20} running {secs:.1}s")
                }
                StagePhase::Running => format!("  stage {name:<20} running"),
                StagePhase::Succeeded => format!("  stage {name:<20} done in {secs:.1}s"),
                StagePhase::Failed => format!("  stage {name:<20} FAILED after {secs:.1}s"),
                StagePhase::Skipped => format!("  stage {name:<20} skipped"),
            };
            lines.push((format!("stage/{name}"), line));
        }
        if self.live {
            self.redraw(lines.into_iter().map(|(_, line)| line).collect());
        } else {
            for (key, line) in lines {
                self.print_once(&key, line);
            }
        }
    }

    /// Moves the cursor up over the table drawn last time and draws it again.
    fn redraw(&mut self, lines: Vec<String>) {
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for line in &lines {
            let _ = writeln!(out, "\x1b[2K{line}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }

    fn print_once(&mut self, key: &str, line: String) {
        if self.printed.get(key) != Some(&line) {
            println!("{line}");
            let _ = std::io::stdout().flush();
            self.printed.insert(key.to_string(), line);
        }
    }

    /// New output of every pod since the last call, prefixed with the pod's role/stage.
    fn stream_logs(&mut self) {
        let pods: Vec<(String, Role)> = self
            .pods
            .iter()
            .map(|(n, (r, ..))| (n.clone(), r.clone()))
            .collect();
        for (name, role) in pods {
            let container = format!("{name}-{}", role.label());
            let Ok(out) = self.podman().args(["logs", &container]).output() else {
                continue;
            };
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let seen = self.log_offsets.get(&name).copied().unwrap_or(0);
            if text.len() > seen {
                let label = match &role {
                    Role::Stage(s) => s.clone(),
                    other => other.label().to_string(),
                };
                for line in text[seen..].lines() {
                    println!("{label} | {line}");
                }
                self.log_offsets.insert(name, text.len());
            }
        }
    }

    fn clean_up(&mut self) {
        for (_, (_, _, _, file)) in std::mem::take(&mut self.pods) {
            let file = file.display().to_string();
            let _ = self.podman().args(["kube", "down", &file]).output();
        }
        if let Some(claim) = self
            .build
            .metadata
            .name
            .as_ref()
            .map(|_| render::claim_name(&self.build))
        {
            let _ = self.podman().args(["volume", "rm", "-f", &claim]).output();
        }
    }
}
