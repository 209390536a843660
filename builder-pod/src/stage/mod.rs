//! `stagecoach-builder stage <pod>`: runs the stages of one pod (a stage, or a fused
//! chain ending in it) on the pod's root filesystem through the shared executor, and
//! leaves on the workspace what later stages and the assemble pod need: one layer per
//! filesystem-changing instruction (found by snapshots of the root), the stage's image
//! config and scope, and its exports.
//!
//! What only a stage pod does lives here: RUN (with its mounts and the declared volumes
//! it must not change) and ADD (downloads and local archives).

pub mod fetch;
pub mod mounts;
pub mod run;
pub mod run_cache;
pub mod ssh_agent;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stagecoach_plan::contract::{Base, Execution, Plan, Stage};
use stagecoach_plan::instruction::{self, Run};

use crate::exec::copy::{self, Source};
use crate::exec::export;
use crate::exec::{self, Executor, Pod, ResolvedCopy, Sources, StageError, StageReport, Step};
use crate::fs::filetree::{self, FileTree};
use crate::fs::snapshot::{self, Snapshot};
use crate::fs::tree::DiskTree;
use crate::fs::{rootfs, users};
use crate::image_config::{self, DEFAULT_PATH, ImageConfig, StageConfig};
use crate::layer::{self, LayerInfo};
use crate::workspace::{self, LayerRecord, Workspace};
use mounts::{Mounted, SavedVolume};
use run::RunSpec;

/// The CA bundle `install` puts beside the builder in the tools directory.
pub const CA_BUNDLE: &str = "ca-certificates.crt";

/// What went wrong in a step only a stage pod has.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot snapshot the filesystem")]
    Snapshot(#[source] snapshot::Error),
    #[error("cannot save the volume {path}")]
    SaveVolume {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot restore the volume {path}")]
    RestoreVolume {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error(transparent)]
    Download(#[from] fetch::Error),
    #[error("cannot write the exports")]
    Export(#[source] export::Error),
    #[error("applying layer {file} of stage {stage}")]
    Parent {
        stage: String,
        file: String,
        #[source]
        source: layer::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Plan(String),
}

/// How a stage pod is set up.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub workspace: Workspace,
    /// In a build for several platforms, the platform whose part of the workspace
    /// `workspace` is.
    pub part: Option<stagecoach_plan::Platform>,
    /// The id of the stage whose pod this is.
    pub pod: String,
    /// The filesystem the stage builds on: `/` in a pod.
    pub root: PathBuf,
    /// The build context (`/workspace/source/<contextDir>`).
    pub context: PathBuf,
    /// The pod's tools directory (the builder binary, mounted read-only); never snapshotted.
    pub tools: PathBuf,
    /// Clamp for layer and history times (`SOURCE_DATE_EPOCH`, the commit time).
    pub source_date_epoch: Option<i64>,
    pub compression: layer::Compression,
    /// The build secrets the pod was given: id → the file holding the value.
    pub secrets: BTreeMap<String, PathBuf>,
    /// The volume of persistent `RUN --mount=type=cache` directories; without it every
    /// cache mount starts empty.
    pub run_cache: Option<run_cache::RunCache>,
    /// The ssh agent sockets the pod was given: id → the socket of its key.
    pub ssh: BTreeMap<String, PathBuf>,
    /// The `known_hosts` files of ssh ids (absent files are none).
    pub ssh_known_hosts: BTreeMap<String, PathBuf>,
}

impl StageOptions {
    /// The pod's name on the workspace (its report and scratch directory).
    pub fn pod_name(&self) -> String {
        stagecoach_plan::layout::stage_pod(&self.pod)
    }
}

/// What one pod did, written to `pods/<pod>/report.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod: String,
    pub succeeded: bool,
    pub stages: Vec<StageReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StageError>,
    /// In a build for several platforms, the one the pod builds for (none for a pod
    /// they all share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub duration_ms: u64,
}

/// Runs the pod's stages; the report is also written to the workspace.
pub fn run_pod(opts: &StageOptions) -> PodReport {
    let started = Instant::now();
    let mut report = PodReport {
        pod: opts.pod.clone(),
        ..PodReport::default()
    };
    let result = run_all(opts, &mut report);
    if let Some(cache) = &opts.run_cache {
        match cache.evict() {
            Ok(0) => {}
            Ok(bytes) => println!("run cache: evicted {bytes} bytes of least recently used caches"),
            Err(e) => println!(
                "warning: run cache not evicted: {}",
                crate::error::chain(&e)
            ),
        }
    }
    report.succeeded = result.is_ok();
    report.error = result.err();
    report.platform = target_platform(opts);
    report.duration_ms = started.elapsed().as_millis() as u64;
    let _ = std::fs::remove_dir_all(opts.workspace.scratch(&opts.pod_name()));
    report
}

/// The platform a pod of a build for several builds for, to name in its failure: none
/// for a pod they all share.
fn target_platform(opts: &StageOptions) -> Option<String> {
    let part = opts.part.as_ref()?;
    let file: stagecoach_plan::PlatformsFile =
        crate::workspace::read_json(&opts.workspace.platforms()).ok()?;
    (!file.shared_stages.contains(&opts.pod)).then(|| part.to_string())
}

/// The termination message of a stage pod: success, or `StageFailed` with the place.
pub fn outcome(report: &PodReport) -> stagecoach_plan::contract::PodOutcome {
    stagecoach_plan::contract::PodOutcome {
        succeeded: report.succeeded,
        reason: report.error.as_ref().map(|_| "StageFailed".to_string()),
        message: report
            .error
            .as_ref()
            .map(|e| e.render(report.platform.as_deref())),
        stage: report.error.as_ref().and_then(|e| e.stage.clone()),
        line: report.error.as_ref().and_then(|e| e.line),
        ..Default::default()
    }
}

fn unplaced(stage: Option<&str>, e: Error) -> StageError {
    StageError::unplaced(stage, crate::error::chain(&e))
}

/// The pod's pipeline: read the plan → the starting config → the parents' layers onto
/// the root → a first snapshot → each stage of the pod through the executor, with its
/// exports after it.
fn run_all(opts: &StageOptions, report: &mut PodReport) -> Result<(), StageError> {
    let ws = &opts.workspace;
    let plan = read_plan(ws).map_err(|e| unplaced(None, e))?;
    let runs = pod_stages(&plan, &opts.pod).map_err(|e| unplaced(Some(&opts.pod), e))?;
    // A chain from scratch builds in a directory of the workspace, not on `/`.
    std::fs::create_dir_all(&opts.root)
        .map_err(|source| Error::Read {
            path: opts.root.clone(),
            source,
        })
        .map_err(|e| unplaced(None, e))?;
    let first = plan
        .stage(&runs[0])
        .ok_or_else(|| unplaced(None, Error::Plan(format!("no stage {:?}", runs[0]))))?;
    let base = base_config(ws, first).map_err(|e| unplaced(Some(&first.id), e))?;
    let (mut config, mut scope) = exec::starting_point(&plan, ws, first, base)?;
    if let Base::Stage { id } = &first.base {
        for ancestor in exec::from_chain(&plan, id)? {
            apply_layers_of(opts, &ancestor).map_err(|e| unplaced(Some(&first.id), e))?;
        }
    }
    let mut pod = StagePod::new(opts).map_err(|e| unplaced(Some(&first.id), e))?;
    let mut executor = Executor {
        plan: &plan,
        workspace: ws,
        sources: Sources::new(opts.context.clone(), ws.clone()),
        now: opts.source_date_epoch.unwrap_or_else(image_config::now),
        epoch: opts.source_date_epoch,
    };
    for id in &runs {
        let stage = plan
            .stage(id)
            .ok_or_else(|| unplaced(None, Error::Plan(format!("no stage {id:?}"))))?;
        let mut stage_report = StageReport {
            id: id.clone(),
            ..StageReport::default()
        };
        (config, scope) = executor.run_stage(&mut pod, stage, config, scope, &mut stage_report)?;
        if !stage.exports.is_empty() {
            let count = export::write(&opts.root, &stage.exports, &pod.skip, &ws.export(id))
                .map_err(|e| unplaced(Some(id), Error::Export(e)))?;
            stage_report.exported_entries = Some(count);
        }
        report.stages.push(stage_report);
    }
    Ok(())
}

fn read_plan(ws: &Workspace) -> Result<Plan, Error> {
    let text = std::fs::read_to_string(ws.plan()).map_err(|source| Error::Read {
        path: ws.plan(),
        source,
    })?;
    Plan::from_json(&text).map_err(|e| Error::Plan(crate::error::chain(&e)))
}

/// The stages this pod runs, in order.
fn pod_stages(plan: &Plan, pod: &str) -> Result<Vec<String>, Error> {
    let stage = plan
        .stage(pod)
        .ok_or_else(|| Error::Plan(format!("no stage {pod:?} in the plan")))?;
    match &stage.execution {
        Execution::Pod { runs } if !runs.is_empty() => Ok(runs.clone()),
        _ => Err(Error::Plan(format!(
            "stage {pod:?} does not run in a pod of its own"
        ))),
    }
}

/// The base image's config that the source pod fetched (none for scratch or a stage).
fn base_config(ws: &Workspace, stage: &Stage) -> Result<Option<ImageConfig>, Error> {
    if !matches!(stage.base, Base::Image { .. }) {
        return Ok(None);
    }
    let path = ws.base_config(&stage.id);
    match workspace::read_json(&path) {
        Ok(config) => Ok(Some(config)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && stage.instructions.is_empty() => {
            Ok(None)
        }
        Err(source) => Err(Error::Read { path, source }),
    }
}

fn apply_layers_of(opts: &StageOptions, stage: &str) -> Result<(), Error> {
    let ws = &opts.workspace;
    let index = ws.layer_index(stage);
    let records: Vec<LayerRecord> = workspace::read_json(&index).map_err(|source| Error::Read {
        path: index,
        source,
    })?;
    for record in records {
        let path = ws.layers_dir(stage).join(&record.file);
        layer::apply_layer(&path, &opts.root).map_err(|source| Error::Parent {
            stage: stage.to_string(),
            file: record.file.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The stage pod's side of the executor: its root on disk, snapshots for layers.
struct StagePod<'a> {
    opts: &'a StageOptions,
    tree: DiskTree,
    /// Everything the snapshot must not walk (mounts).
    skip: Vec<PathBuf>,
    /// The root as it was after the last layer.
    before: Snapshot,
    /// Exports of other stages, extracted once per pod for `RUN --mount=from=`.
    extracted: std::collections::HashMap<String, PathBuf>,
}

impl<'a> StagePod<'a> {
    fn new(opts: &'a StageOptions) -> Result<StagePod<'a>, Error> {
        let skip = skip_list(opts);
        let before = Snapshot::take(&opts.root, &skip).map_err(Error::Snapshot)?;
        Ok(StagePod {
            opts,
            tree: DiskTree::new(&opts.root),
            skip,
            before,
            extracted: std::collections::HashMap::new(),
        })
    }

    fn scratch(&self) -> PathBuf {
        self.opts.workspace.scratch(&self.opts.pod_name())
    }

    /// RUN's command: as the stage's user, in its working directory, with its
    /// environment and mounts.
    fn run_command(&mut self, step: &Step<'_>, r: &Run, sc: &StageConfig) -> exec::Result<()> {
        if self.opts.root != Path::new("/") {
            return Err(exec::Error::Refused(
                "RUN needs a base image to run in; this stage has none (FROM scratch)".into(),
            ));
        }
        // `--network=none` only takes something away, so running with the pod's network
        // builds the same result; host networking, insecure mode and devices would need
        // privileges a stage pod never has.
        if r.network
            .as_deref()
            .is_some_and(|n| n != "default" && n != "none")
            || r.security.as_deref().is_some_and(|s| s != "sandbox")
            || !r.devices.is_empty()
        {
            return Err(exec::Error::Refused(
                "RUN --network=host, --security=insecure and --device need privileges stage pods never have".into(),
            ));
        }
        let ids = exec::user_ids(&self.tree, sc)?.unwrap_or_default();
        let cwd = copy::make_dirs(&mut self.tree, &sc.config.working_dir(), None, step.now)?;
        let mut env = sc.scope.run_env().to_vec();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), users::home(&self.tree, ids.uid)?));
        }
        let (mounts, _caches) = self.mount(step, r, sc, &mut env)?;
        // Heredoc scripts go to the pod's scratch space on the workspace: never
        // snapshotted, and the tools directory stays read-only.
        let scripts = self.scratch().join("scripts");
        let argv = run::argv(r, &sc.config.shell(), &scripts, step.number)
            .map_err(|e| exec::Error::pod(Error::Run(e)))?;
        let result = run::run(&RunSpec {
            argv,
            env,
            cwd: self.tree.on_disk(&cwd),
            ids,
            prefix: step.prefix.to_string(),
        });
        let unmounted = mounts.into_iter().rev().try_for_each(Mounted::undo);
        // The agents go back to root alone, whatever this RUN's mounts lent them.
        for socket in self.opts.ssh.values() {
            let _ = lend_socket(socket, 0, 0, 0o600);
        }
        match result {
            Err(run::Error::Exit(code)) => Err(exec::Error::Exit(code)),
            Err(e) => Err(exec::Error::pod(Error::Run(e))),
            Ok(()) => unmounted.map_err(|e| exec::Error::pod(Error::Mount(e))),
        }
    }

    /// `RUN --mount`: pods cannot mount, so mounts are emulated in the filesystem (see
    /// [`mounts`]); bind sources come from the context or another stage's export. A
    /// secret mounted with `env=` sets its variable in `env`. The run cache directories
    /// come back held: their locks last as long as the RUN.
    fn mount(
        &mut self,
        step: &Step<'_>,
        r: &Run,
        sc: &StageConfig,
        env: &mut Vec<(String, String)>,
    ) -> exec::Result<(Vec<Mounted>, Vec<run_cache::Held>)> {
        let mount_err = |e| exec::Error::pod(Error::Mount(e));
        let mut mounted = Vec::new();
        let mut held = Vec::new();
        let mut ssh_mounts = 0;
        let mut known_hosts = Vec::new();
        for raw in &r.mounts {
            let value = sc.expand("RUN", raw)?;
            let spec = mounts::Spec::parse(&value, &sc.config.working_dir()).map_err(mount_err)?;
            let content = match &spec.kind {
                mounts::Kind::Empty => None,
                mounts::Kind::Ssh(ssh) => {
                    let Some(socket) = self.opts.ssh.get(&ssh.id) else {
                        if ssh.required {
                            return Err(mount_err(mounts::Error::SshMissing(ssh.id.clone())));
                        }
                        continue;
                    };
                    let target = spec
                        .target
                        .clone()
                        .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_mounts}"));
                    ssh_mounts += 1;
                    if let Some(hosts) = self.opts.ssh_known_hosts.get(&ssh.id)
                        && let Ok(text) = std::fs::read(hosts)
                    {
                        known_hosts.extend(text);
                        known_hosts.push(b'\n');
                    }
                    let lent = wait_for_socket(socket)
                        .and_then(|()| lend_socket(socket, ssh.uid, ssh.gid, ssh.mode));
                    lent.map_err(|source| {
                        mount_err(mounts::Error::SshSocket {
                            path: socket.clone(),
                            source,
                        })
                    })?;
                    // The first ssh mount is the RUN's agent (BuildKit).
                    if ssh_mounts == 1 {
                        env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
                        env.push(("SSH_AUTH_SOCK".into(), target.clone()));
                    }
                    let m = Mounted::link(&self.opts.root, &target, socket).map_err(mount_err)?;
                    mounted.push(m);
                    continue;
                }
                mounts::Kind::Cache(cache) => {
                    let target = spec.target.as_deref().unwrap_or_default();
                    let m = self.mount_cache(step, target, cache, &mut held)?;
                    mounted.push(m);
                    continue;
                }
                mounts::Kind::Bind { from, source } => {
                    let root = match from {
                        None => self.opts.context.clone(),
                        Some(from) => self.export_dir(step, from)?,
                    };
                    Some(rootfs::resolve(&root, source, true).map_err(filetree::Error::from)?)
                }
                mounts::Kind::Secret(secret) => {
                    // An absent secret that is not required mounts nothing (BuildKit).
                    let Some(file) = self.opts.secrets.get(&secret.id) else {
                        if secret.required {
                            return Err(mount_err(mounts::Error::SecretMissing(secret.id.clone())));
                        }
                        continue;
                    };
                    let value = mounts::read_secret(&secret.id, file).map_err(mount_err)?;
                    if let Some(name) = &secret.env {
                        let text = String::from_utf8(value.clone()).map_err(|_| {
                            mount_err(mounts::Error::Invalid {
                                mount: format!("type=secret,id={},env={name}", secret.id),
                                message: "the value is not UTF-8 text".into(),
                            })
                        })?;
                        env.retain(|(k, _)| k != name);
                        env.push((name.clone(), text));
                    }
                    if let Some(target) = &spec.target {
                        let m = Mounted::create_secret(&self.opts.root, target, &value, secret)
                            .map_err(mount_err)?;
                        mounted.push(m);
                    }
                    continue;
                }
            };
            let Some(target) = &spec.target else {
                continue;
            };
            let m =
                Mounted::create(&self.opts.root, target, content.as_deref()).map_err(mount_err)?;
            mounted.push(m);
        }
        // The ssh ids' known hosts, where OpenSSH looks for them system-wide.
        if !known_hosts.is_empty() {
            let file = self.scratch().join(format!("known_hosts-{}", step.number));
            std::fs::create_dir_all(self.scratch())
                .and_then(|()| std::fs::write(&file, &known_hosts))
                .map_err(|source| {
                    mount_err(mounts::Error::KnownHosts {
                        path: file.clone(),
                        source,
                    })
                })?;
            let target = "/etc/ssh/ssh_known_hosts";
            let m = Mounted::create(&self.opts.root, target, Some(&file)).map_err(mount_err)?;
            mounted.push(m);
        }
        Ok((mounted, held))
    }

    /// `type=cache`: a link to its directory in the run cache (seeded from `from` when
    /// new), or a copy of it when read-only; an empty directory (seeded) when the pod
    /// has no run cache or the cache fails, which never fails the RUN.
    fn mount_cache(
        &mut self,
        step: &Step<'_>,
        target: &str,
        cache: &run_cache::CacheMount,
        held: &mut Vec<run_cache::Held>,
    ) -> exec::Result<Mounted> {
        let mount_err = |e| exec::Error::pod(Error::Mount(e));
        let seed = match &cache.from {
            Some(from) => {
                let root = self.export_dir(step, from)?;
                Some(rootfs::resolve(&root, &cache.source, true).map_err(filetree::Error::from)?)
            }
            None => None,
        };
        let opened = self.opts.run_cache.as_ref().map(|c| c.open(cache));
        let dir = match opened {
            Some(Ok(h)) => {
                // A new directory gets the seed: a file keeps its name in it.
                let seeded = match (&seed, h.fresh) {
                    (Some(seed), true) => {
                        let name = seed.file_name().filter(|_| !seed.is_dir());
                        let on_disk = name.map_or(h.dir.clone(), |n| h.dir.join(n));
                        let dest = format!("/{}", name.unwrap_or_default().to_string_lossy());
                        let mut tree = DiskTree::new(&h.dir);
                        mounts::copy_content(&mut tree, seed, &dest, &on_disk)
                    }
                    _ => Ok(()),
                };
                match seeded {
                    Ok(()) => {
                        let dir = h.dir.clone();
                        held.push(h);
                        Some(dir)
                    }
                    Err(e) => {
                        println!(
                            "{} warning: cache {:?} not seeded, it starts empty: {e}",
                            step.prefix, cache.id
                        );
                        None
                    }
                }
            }
            Some(Err(e)) => {
                println!(
                    "{} warning: cache {:?} unavailable, it starts empty: {}",
                    step.prefix,
                    cache.id,
                    crate::error::chain(&e)
                );
                None
            }
            None => None,
        };
        let root = &self.opts.root;
        match dir {
            Some(dir) if cache.readonly => Mounted::create(root, target, Some(&dir)),
            Some(dir) => Mounted::link(root, target, &dir),
            None => Mounted::create(root, target, seed.as_deref()),
        }
        .map_err(mount_err)
    }

    /// The export of the stage a `--from` on this line reads, extracted (through the
    /// layer applier) into the pod's scratch space once.
    fn export_dir(&mut self, step: &Step<'_>, from: &str) -> exec::Result<PathBuf> {
        let source = Sources::stage_read(step.stage, step.line, from)?;
        if let Some(dir) = self.extracted.get(&source) {
            return Ok(dir.clone());
        }
        let dir = self.scratch().join("from").join(&source);
        let _ = std::fs::remove_dir_all(&dir);
        layer::extract_archive(&self.opts.workspace.export(&source), &dir)
            .map_err(exec::Error::Layer)?;
        self.extracted.insert(source, dir.clone());
        Ok(dir)
    }

    /// The declared volumes that exist, saved before a RUN: a tar of each in the pod's
    /// scratch space, and a snapshot of each to tell whether the RUN touched it. A volume
    /// that holds a mount (the workspace, the tools, the kubelet's files) or is the root
    /// itself cannot be put back and is left alone.
    fn save_volumes(&self, sc: &StageConfig, step: usize) -> Result<Vec<SavedVolume>, Error> {
        let mut saved = Vec::new();
        let volumes = sc.config.config.volumes.iter().flat_map(|v| v.keys());
        for (n, path) in volumes.enumerate() {
            let Ok(on_disk) = rootfs::resolve(&self.opts.root, path, true) else {
                continue;
            };
            let holds_mount = self.skip.iter().any(|s| s.starts_with(&on_disk));
            if on_disk == self.opts.root || holds_mount || !on_disk.is_dir() {
                continue;
            }
            let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::SaveVolume {
                path: path.clone(),
                source,
            };
            let snapshot = Snapshot::take(&on_disk, &self.skip).map_err(|e| failed(Box::new(e)))?;
            let tar = self.scratch().join(format!("volume-{step}-{n}.tar"));
            export::write(
                &self.opts.root,
                std::slice::from_ref(path),
                &self.skip,
                &tar,
            )
            .map_err(|e| failed(Box::new(e)))?;
            saved.push(SavedVolume {
                path: path.clone(),
                on_disk,
                snapshot,
                tar,
            });
        }
        Ok(saved)
    }

    /// Puts back the volumes a RUN changed, as [`Self::save_volumes`] saw them; the
    /// others stay untouched (putting them back would give every file a new inode, and
    /// the layer would carry them all again).
    fn restore_volumes(&self, saved: Vec<SavedVolume>) -> Result<(), Error> {
        for volume in saved {
            let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::RestoreVolume {
                path: volume.path.clone(),
                source,
            };
            let after =
                Snapshot::take(&volume.on_disk, &self.skip).map_err(|e| failed(Box::new(e)))?;
            if !snapshot::diff(&volume.snapshot, &after).is_empty() {
                std::fs::remove_dir_all(&volume.on_disk).map_err(|e| failed(Box::new(e)))?;
                layer::apply_layer(&volume.tar, &self.opts.root)
                    .map_err(|e| failed(Box::new(e)))?;
            }
            let _ = std::fs::remove_file(&volume.tar);
        }
        Ok(())
    }
}

impl Pod for StagePod<'_> {
    type Tree = DiskTree;

    fn tree(&mut self) -> &mut DiskTree {
        &mut self.tree
    }

    fn run(&mut self, step: &Step<'_>, r: &Run, sc: &StageConfig) -> exec::Result<()> {
        // What RUN does inside a declared volume is discarded, as the Dockerfile
        // reference says and buildah does: the volumes are put back afterwards.
        let saved = self
            .save_volumes(sc, step.number)
            .map_err(exec::Error::pod)?;
        let result = self.run_command(step, r, sc);
        self.restore_volumes(saved).map_err(exec::Error::pod)?;
        result
    }

    /// ADD: each URL downloaded into a directory of its own and copied from there
    /// (remote archives are not extracted, Docker's rule); local sources from the
    /// context, their tar archives extracted unless `--unpack=false`.
    fn add(
        &mut self,
        step: &Step<'_>,
        add: &ResolvedCopy,
        sources: &mut Sources,
    ) -> exec::Result<()> {
        let (urls, local): (Vec<String>, Vec<String>) = add
            .sources
            .iter()
            .cloned()
            .partition(|s| instruction::is_url(s));
        for (n, url) in urls.iter().enumerate() {
            let dir = self.scratch().join(format!("add-{}-{n}", step.line));
            let ca = self.opts.tools.join(CA_BUNDLE);
            let file = fetch::download(url, &dir, add.checksum.as_deref(), Some(&ca))
                .map_err(|e| exec::Error::pod(Error::Download(e)))?;
            let downloaded = FileTree::from_dir(&dir)?;
            let name = copy::file_name(&file);
            let source = Source {
                tree: &downloaded,
                keep_owner: false,
            };
            copy::copy(
                &mut self.tree,
                source,
                &[name],
                &add.dest,
                &add.flags,
                step.now,
                None,
            )?;
        }
        if local.is_empty() {
            return Ok(());
        }
        let source = Source {
            tree: sources.context()?,
            keep_owner: false,
        };
        let scratch = self.scratch();
        let mut extract = copy::extract_into(&self.opts.root, &scratch);
        let unpack: Option<copy::Unpack<'_>> = add.unpack.then_some(&mut extract);
        copy::copy(
            &mut self.tree,
            source,
            &local,
            &add.dest,
            &add.flags,
            step.now,
            unpack,
        )
        .map_err(|e| exec::missing_source(e, step, None))
    }

    fn layer(&mut self, out: &Path, epoch: Option<i64>) -> exec::Result<Option<LayerInfo>> {
        let after = Snapshot::take(&self.opts.root, &self.skip)
            .map_err(|e| exec::Error::pod(Error::Snapshot(e)))?;
        let changes = snapshot::diff(&self.before, &after);
        let info = if changes.is_empty() {
            None
        } else {
            Some(
                layer::write_layer(
                    &self.opts.root,
                    &changes,
                    &after,
                    out,
                    epoch,
                    self.opts.compression,
                )
                .map_err(exec::Error::Layer)?,
            )
        };
        self.before = after;
        Ok(info)
    }
}
/// Waits for the agent container (started beside this one) to serve the socket.
fn wait_for_socket(socket: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "the ssh agent container serves no such socket after 60 s (see its log)",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Gives the agent socket the owner and mode a RUN's ssh mount asks for.
fn lend_socket(socket: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(socket, Some(uid), Some(gid))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// Everything the snapshot must not walk: the pod's mounts (workspace, tools, the files
/// the kubelet injects), or in a test root just the workspace and tools directories.
fn skip_list(opts: &StageOptions) -> Vec<PathBuf> {
    let mut skip = vec![opts.workspace.root().to_path_buf(), opts.tools.clone()];
    if opts.root == Path::new("/")
        && let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo")
    {
        skip.extend(snapshot::mount_points(&text));
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_a_user_needs_them() {
        let e = StageError {
            stage: Some("build".into()),
            dockerfile: Some("Dockerfile".into()),
            line: Some(12),
            instruction: Some("RUN make".into()),
            message: "exit code 2".into(),
            exit_code: Some(2),
        };
        assert_eq!(
            e.to_string(),
            "stage build: Dockerfile:12: RUN make: exit code 2"
        );
    }
}
