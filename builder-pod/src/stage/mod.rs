//! `stagecoach-builder stage <pod>`: runs the stages of one pod (a stage, or a fused
//! chain ending in it) on the pod's root filesystem, and leaves on the workspace what
//! later stages and the assemble pod need: one layer per filesystem-changing
//! instruction, the stage's image config and scope, and its exports.

pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stagecoach_plan::contract::{Base, Execution, Plan, Stage};
use stagecoach_plan::instruction::{self, Copy as CopyArgs, Instruction, Kind, Run};
use stagecoach_plan::scope::Scope;
use stagecoach_plan::shell::Lexer;

use crate::exec::disk_copy_old::{self, Chmod, CopyOptions, SourceRoot};
use crate::exec::{export, fetch};
use crate::fs::rootfs;
use crate::fs::snapshot::{self, Snapshot};
use crate::fs::users::{self, Ids};
use crate::image_config::{self, DEFAULT_PATH, History, ImageConfig, StageConfig};
use crate::layer;
use crate::workspace::{self, LayerRecord, Workspace};
use run::RunSpec;

/// The CA bundle `install` puts beside the builder in the tools directory.
pub const CA_BUNDLE: &str = "ca-certificates.crt";

/// A stage that could not run, with everything a user needs to find why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{}", self.render())]
pub struct StageError {
    /// The stage id, when the failure belongs to one.
    pub stage: Option<String>,
    /// The Dockerfile name and line of the instruction.
    pub dockerfile: Option<String>,
    pub line: Option<usize>,
    /// The instruction as written.
    pub instruction: Option<String>,
    pub message: String,
    /// The exit code of a failed RUN.
    pub exit_code: Option<i32>,
}

impl StageError {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(stage) = &self.stage {
            out.push_str(&format!("stage {stage}: "));
        }
        if let (Some(file), Some(line)) = (&self.dockerfile, self.line) {
            out.push_str(&format!("{file}:{line}: "));
        }
        if let Some(inst) = &self.instruction {
            out.push_str(&format!("{inst}: "));
        }
        out.push_str(&self.message);
        out
    }

    fn general(message: impl std::fmt::Display) -> StageError {
        StageError {
            stage: None,
            dockerfile: None,
            line: None,
            instruction: None,
            message: message.to_string(),
            exit_code: None,
        }
    }
}

/// How a stage pod is set up.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub workspace: Workspace,
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
}

/// What one pod did, written to `reports/<pod>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod: String,
    pub succeeded: bool,
    pub stages: Vec<StageReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StageError>,
    pub duration_ms: u64,
}

/// One stage's result inside a pod report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    pub id: String,
    pub layers: Vec<LayerRecord>,
    pub steps: Vec<StepReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_entries: Option<u64>,
}

/// Timing of one instruction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub line: usize,
    pub instruction: String,
    pub duration_ms: u64,
}

/// Runs the pod's stages; the report is also written to the workspace.
pub fn run_pod(opts: &StageOptions) -> PodReport {
    let started = Instant::now();
    let mut report = PodReport {
        pod: opts.pod.clone(),
        ..PodReport::default()
    };
    let result = StagePod::new(opts).and_then(|mut pod| pod.run_all(&mut report));
    report.succeeded = result.is_ok();
    report.error = result.err();
    report.duration_ms = started.elapsed().as_millis() as u64;
    let _ = std::fs::remove_dir_all(opts.workspace.scratch(&opts.pod));
    report
}

/// The termination message of a stage pod: success, or `StageFailed` with the place.
pub fn outcome(report: &PodReport) -> stagecoach_plan::contract::PodOutcome {
    stagecoach_plan::contract::PodOutcome {
        succeeded: report.succeeded,
        reason: report.error.as_ref().map(|_| "StageFailed".to_string()),
        message: report.error.as_ref().map(ToString::to_string),
        stage: report.error.as_ref().and_then(|e| e.stage.clone()),
        line: report.error.as_ref().and_then(|e| e.line),
        ..Default::default()
    }
}

struct StagePod<'a> {
    opts: &'a StageOptions,
    plan: Plan,
    lexer: Lexer,
    skip: Vec<PathBuf>,
    /// Exports of other stages, extracted once per pod.
    extracted: HashMap<String, PathBuf>,
}

impl<'a> StagePod<'a> {
    fn new(opts: &'a StageOptions) -> Result<StagePod<'a>, StageError> {
        let text = std::fs::read_to_string(opts.workspace.plan())
            .map_err(|e| StageError::general(format!("cannot read the plan: {e}")))?;
        let plan = Plan::from_json(&text).map_err(StageError::general)?;
        let lexer = Lexer::new(plan.escape);
        Ok(StagePod {
            skip: skip_list(opts),
            opts,
            plan,
            lexer,
            extracted: HashMap::new(),
        })
    }

    fn run_all(&mut self, report: &mut PodReport) -> Result<(), StageError> {
        // A chain from scratch builds in a directory of the workspace, not on `/`.
        std::fs::create_dir_all(&self.opts.root).map_err(StageError::general)?;
        let pod = self.plan.stage(&self.opts.pod).ok_or_else(|| {
            StageError::general(format!("no stage {:?} in the plan", self.opts.pod))
        })?;
        let Execution::Pod { runs } = &pod.execution else {
            return Err(StageError::general(format!(
                "stage {:?} does not run in a pod of its own",
                self.opts.pod
            )));
        };
        let runs = runs.clone();
        let first = self.stage(&runs[0])?.clone();
        let (mut config, mut scope) = self.starting_point(&first)?;
        if let Base::Stage { id } = &first.base {
            for ancestor in self.chain(id)? {
                self.apply_layers_of(&ancestor)?;
            }
        }
        let mut before = self.snapshot()?;
        for id in &runs {
            let stage = self.stage(id)?.clone();
            let mut stage_report = StageReport {
                id: id.clone(),
                ..StageReport::default()
            };
            let (c, s) = self
                .run_stage(&stage, config, scope, &mut before, &mut stage_report)
                .map_err(|mut e| {
                    e.stage.get_or_insert_with(|| id.clone());
                    e
                })?;
            config = c;
            scope = s;
            report.stages.push(stage_report);
        }
        Ok(())
    }

    fn stage(&self, id: &str) -> Result<&Stage, StageError> {
        self.plan
            .stage(id)
            .ok_or_else(|| StageError::general(format!("no stage {id:?} in the plan")))
    }

    /// The config and scope a stage starts with: its parent stage's results, or the
    /// base image's config that the source pod fetched.
    fn starting_point(&self, stage: &Stage) -> Result<(ImageConfig, Scope), StageError> {
        let ws = &self.opts.workspace;
        match &stage.base {
            Base::Stage { id } => {
                let config = workspace::read_json(&ws.config(id)).map_err(StageError::general)?;
                let scope = workspace::read_json(&ws.scope(id)).map_err(StageError::general)?;
                Ok((config, scope))
            }
            Base::Image { .. } | Base::Scratch => {
                let path = ws.base_config(&stage.id);
                let mut config: ImageConfig = match workspace::read_json(&path) {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if matches!(stage.base, Base::Image { .. })
                            && !stage.instructions.is_empty()
                        {
                            return Err(StageError::general(format!(
                                "the base image config {} is missing",
                                path.display()
                            )));
                        }
                        ImageConfig::default()
                    }
                    Err(e) => return Err(StageError::general(e)),
                };
                if config.os.is_empty() {
                    config.os = self.plan.platform.os.clone();
                    config.architecture = self.plan.platform.architecture.clone();
                    config.variant = self.plan.platform.variant.clone();
                }
                config.ensure_path();
                let scope = Scope::from_image_env(&config.env_pairs());
                Ok((config, scope))
            }
        }
    }

    /// The stages a `FROM <stage>` chain goes through, root first.
    fn chain(&self, id: &str) -> Result<Vec<String>, StageError> {
        let mut chain = vec![id.to_string()];
        let mut current = self.stage(id)?;
        while let Base::Stage { id } = &current.base {
            chain.push(id.clone());
            current = self.stage(id)?;
        }
        chain.reverse();
        Ok(chain)
    }

    fn apply_layers_of(&self, stage: &str) -> Result<(), StageError> {
        let ws = &self.opts.workspace;
        let records: Vec<LayerRecord> =
            workspace::read_json(&ws.layer_index(stage)).map_err(StageError::general)?;
        for record in records {
            let path = ws.layers_dir(stage).join(&record.file);
            layer::apply_layer(&path, &self.opts.root).map_err(|e| {
                StageError::general(format!(
                    "applying layer {} of stage {stage}: {e}",
                    record.file
                ))
            })?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, StageError> {
        Snapshot::take(&self.opts.root, &self.skip)
            .map_err(|e| StageError::general(format!("cannot snapshot the filesystem: {e}")))
    }

    fn run_stage(
        &mut self,
        stage: &Stage,
        config: ImageConfig,
        scope: Scope,
        before: &mut Snapshot,
        report: &mut StageReport,
    ) -> Result<(ImageConfig, Scope), StageError> {
        let ws = self.opts.workspace.clone();
        let layers_dir = ws.layers_dir(&stage.id);
        let _ = std::fs::remove_dir_all(ws.stage_dir(&stage.id));
        std::fs::create_dir_all(&layers_dir).map_err(StageError::general)?;

        let mut sc = StageConfig::new(config, scope, self.lexer);
        // ONBUILD triggers of the base run first, and are not inherited further.
        let triggers = sc.config.config.on_build.take().unwrap_or_default();
        let mut steps = self.parse_triggers(stage, &triggers)?;
        steps.extend(stage.instructions.iter().cloned());
        let total = steps.len();
        let created = self.created();
        let dockerfile = self.plan.dockerfile.clone();
        for (n, inst) in steps.iter().enumerate() {
            let prefix = format!("[{} {}/{}]", stage.id, n + 1, total);
            println!("{prefix} {}", inst.text);
            let started = Instant::now();
            let located = |message: String, exit_code: Option<i32>| StageError {
                stage: Some(stage.id.clone()),
                dockerfile: Some(dockerfile.clone()),
                line: Some(inst.line),
                instruction: Some(inst.text.clone()),
                message,
                exit_code,
            };
            let changes_fs = self
                .execute(stage, inst, &mut sc, &prefix, n + 1)
                .map_err(|(message, code)| located(message, code))?;
            let mut history = History {
                created: Some(created.clone()),
                created_by: Some(inst.text.clone()),
                comment: Some("stagecoach".into()),
                empty_layer: true,
            };
            if changes_fs {
                let after = self.snapshot()?;
                let changes = snapshot::diff(before, &after);
                if !changes.is_empty() {
                    let file = format!("{:04}.tar.gz", report.layers.len() + 1);
                    let info = layer::write_layer(
                        &self.opts.root,
                        &changes,
                        &after,
                        &layers_dir.join(&file),
                        self.opts.source_date_epoch,
                    )
                    .map_err(|e| located(format!("cannot write its layer: {e}"), None))?;
                    sc.config.rootfs.diff_ids.push(info.diff_id.clone());
                    report.layers.push(LayerRecord {
                        file,
                        digest: info.digest,
                        diff_id: info.diff_id,
                        size: info.size,
                        created_by: inst.text.clone(),
                        line: inst.line,
                    });
                    history.empty_layer = false;
                }
                *before = after;
            }
            sc.config.history.push(history);
            report.steps.push(StepReport {
                line: inst.line,
                instruction: inst.text.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        sc.config.created = Some(created);
        workspace::write_json(&ws.layer_index(&stage.id), &report.layers)
            .and_then(|()| workspace::write_json(&ws.config(&stage.id), &sc.config))
            .and_then(|()| workspace::write_json(&ws.scope(&stage.id), &sc.scope))
            .map_err(StageError::general)?;
        if !stage.exports.is_empty() {
            let count = export::write(
                &self.opts.root,
                &stage.exports,
                &self.skip,
                &ws.export(&stage.id),
            )
            .map_err(|e| StageError::general(format!("cannot write the exports: {e}")))?;
            report.exported_entries = Some(count);
        }
        Ok((sc.config, sc.scope))
    }

    /// ONBUILD triggers of the base image, as instructions placed at the FROM line.
    fn parse_triggers(
        &self,
        stage: &Stage,
        triggers: &[String],
    ) -> Result<Vec<Instruction>, StageError> {
        triggers
            .iter()
            .map(|trigger| {
                let df = stagecoach_plan::syntax::parse(trigger).map_err(|e| {
                    StageError::general(format!("ONBUILD {trigger}: {}", e.message))
                })?;
                let node = df.instructions.first().ok_or_else(|| {
                    StageError::general(format!("ONBUILD {trigger}: empty trigger"))
                })?;
                let mut inst = instruction::parse_node(node)
                    .map_err(|e| StageError::general(format!("ONBUILD {trigger}: {e}")))?;
                inst.line = stage.line;
                inst.end_line = stage.line;
                Ok(inst)
            })
            .collect()
    }

    /// RFC 3339 time for history and config: the source time when reproducible, else now.
    fn created(&self) -> String {
        let secs = self.opts.source_date_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        rfc3339(secs)
    }

    /// Runs one instruction; says whether it may have changed the filesystem.
    fn execute(
        &mut self,
        stage: &Stage,
        inst: &Instruction,
        sc: &mut StageConfig,
        prefix: &str,
        step: usize,
    ) -> Result<bool, (String, Option<i32>)> {
        let plain = |e: &dyn std::fmt::Display| (e.to_string(), None);
        match &inst.kind {
            Kind::Run(r) => {
                // What RUN does inside a declared volume is discarded, as the Dockerfile
                // reference says and buildah does: the volumes are put back afterwards.
                let saved = self.save_volumes(sc, step).map_err(|e| plain(&e))?;
                let result = self.run(stage, inst.line, r, sc, prefix, step);
                self.restore_volumes(saved).map_err(|e| plain(&e))?;
                result?;
                Ok(true)
            }
            Kind::Copy(c) => {
                self.copy(stage, inst.line, c, sc, "COPY")
                    .map_err(|e| plain(&e))?;
                Ok(true)
            }
            Kind::Add(c) => {
                self.copy(stage, inst.line, c, sc, "ADD")
                    .map_err(|e| plain(&e))?;
                Ok(true)
            }
            Kind::Workdir { .. } => {
                sc.apply(inst, &self.plan.global_args, &self.plan.build_args)
                    .map_err(|e| plain(&e))?;
                let dir = sc.config.working_dir();
                // The directories WORKDIR makes belong to the USER (BuildKit, buildah).
                let owner = match sc.config.config.user.as_deref() {
                    None | Some("") => None,
                    Some(user) => {
                        Some(users::resolve(&self.opts.root, user).map_err(|e| plain(&e))?)
                    }
                };
                disk_copy_old::make_dirs(&self.opts.root, &dir, owner).map_err(|e| plain(&e))?;
                Ok(true)
            }
            Kind::Volume { .. } => {
                // buildah (and Docker's classic builder) make each volume's directory in
                // the image; only one that is new changes the filesystem.
                sc.apply(inst, &self.plan.global_args, &self.plan.build_args)
                    .map_err(|e| plain(&e))?;
                let mut made = false;
                for path in sc.config.config.volumes.iter().flat_map(|v| v.keys()) {
                    if !self.opts.root.join(path.trim_start_matches('/')).is_dir() {
                        disk_copy_old::make_dirs(&self.opts.root, path, None)
                            .map_err(|e| plain(&e))?;
                        made = true;
                    }
                }
                Ok(made)
            }
            _ => {
                sc.apply(inst, &self.plan.global_args, &self.plan.build_args)
                    .map_err(|e| plain(&e))?;
                Ok(false)
            }
        }
    }

    /// The declared volumes that exist, saved before a RUN: a tar of each in the pod's
    /// scratch space, and a snapshot of each to tell whether the RUN touched it. A volume
    /// that holds a mount (the workspace, the tools, the kubelet's files) or is the root
    /// itself cannot be put back and is left alone.
    fn save_volumes(&self, sc: &StageConfig, step: usize) -> Result<Vec<SavedVolume>, String> {
        let mut saved = Vec::new();
        for (n, path) in sc
            .config
            .config
            .volumes
            .iter()
            .flat_map(|v| v.keys())
            .enumerate()
        {
            let Ok(on_disk) = rootfs::resolve(&self.opts.root, path, true) else {
                continue;
            };
            let holds_mount = self.skip.iter().any(|s| s.starts_with(&on_disk));
            if on_disk == self.opts.root || holds_mount || !on_disk.is_dir() {
                continue;
            }
            let snapshot = Snapshot::take(&on_disk, &self.skip)
                .map_err(|e| format!("cannot snapshot the volume {path}: {e}"))?;
            let tar = self
                .opts
                .workspace
                .scratch(&self.opts.pod)
                .join(format!("volume-{step}-{n}.tar"));
            export::write(
                &self.opts.root,
                std::slice::from_ref(path),
                &self.skip,
                &tar,
            )
            .map_err(|e| format!("cannot save the volume {path}: {e}"))?;
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
    fn restore_volumes(&self, saved: Vec<SavedVolume>) -> Result<(), String> {
        for volume in saved {
            let path = &volume.path;
            let after = Snapshot::take(&volume.on_disk, &self.skip)
                .map_err(|e| format!("cannot snapshot the volume {path}: {e}"))?;
            if !snapshot::diff(&volume.snapshot, &after).is_empty() {
                std::fs::remove_dir_all(&volume.on_disk)
                    .map_err(|e| format!("cannot restore the volume {path}: {e}"))?;
                layer::apply_layer(&volume.tar, &self.opts.root)
                    .map_err(|e| format!("cannot restore the volume {path}: {e}"))?;
            }
            let _ = std::fs::remove_file(&volume.tar);
        }
        Ok(())
    }

    fn run(
        &mut self,
        stage: &Stage,
        line: usize,
        r: &Run,
        sc: &StageConfig,
        prefix: &str,
        step: usize,
    ) -> Result<(), (String, Option<i32>)> {
        let plain = |e: &dyn std::fmt::Display| (e.to_string(), None);
        if self.opts.root != Path::new("/") {
            return Err((
                "RUN needs a base image to run in; this stage has none (FROM scratch)".into(),
                None,
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
            return Err((
                "RUN --network=host, --security=insecure and --device need privileges stage pods never have".into(),
                None,
            ));
        }
        let ids = match sc.config.config.user.as_deref() {
            None | Some("") => Ids { uid: 0, gid: 0 },
            Some(user) => users::resolve(&self.opts.root, user).map_err(|e| plain(&e))?,
        };
        let workdir = sc.config.working_dir();
        let cwd =
            disk_copy_old::make_dirs(&self.opts.root, &workdir, None).map_err(|e| plain(&e))?;
        let mut env = sc.scope.run_env().to_vec();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), home_of(&self.opts.root, ids.uid)));
        }
        let mounts = self.mount(stage, line, r, sc).map_err(|e| plain(&e))?;
        // Heredoc scripts go to the pod's scratch space on the workspace: never snapshotted,
        // and the tools directory stays read-only.
        let scripts = self.opts.workspace.scratch(&self.opts.pod).join("scripts");
        let argv = run::argv(r, &sc.config.shell(), &scripts, step).map_err(|e| plain(&e))?;
        let result = run::run(&RunSpec {
            argv,
            env,
            cwd,
            ids,
            prefix: prefix.to_string(),
        });
        let unmounted = mounts.into_iter().rev().try_for_each(|m| m.undo());
        match result {
            Err(run::Error::Exit(code)) => Err((format!("exit code {code}"), Some(code))),
            Err(e) => Err(plain(&e)),
            Ok(()) => unmounted.map_err(|e| plain(&e)),
        }
    }

    /// `RUN --mount`: pods cannot mount, so mounts are emulated in the filesystem. The
    /// target gets the content (bind) or an empty directory (cache, tmpfs) for the run
    /// and is put back as it was afterwards, so none of it reaches the layer. Secrets
    /// and SSH agents are refused: RUN steps never see credentials here.
    fn mount(
        &mut self,
        stage: &Stage,
        line: usize,
        r: &Run,
        sc: &StageConfig,
    ) -> Result<Vec<Mounted>, String> {
        let mut mounted = Vec::new();
        for raw in &r.mounts {
            let value = sc.expand("RUN", raw).map_err(|e| e.to_string())?;
            let fields: BTreeMap<String, String> = value
                .split(',')
                .filter(|f| !f.is_empty())
                .map(|f| match f.split_once('=') {
                    Some((k, v)) => (k.to_ascii_lowercase(), v.to_string()),
                    None => (f.to_ascii_lowercase(), "true".into()),
                })
                .collect();
            let kind = fields.get("type").map_or("bind", String::as_str);
            let target = fields
                .get("target")
                .or_else(|| fields.get("dst"))
                .or_else(|| fields.get("destination"))
                .ok_or_else(|| format!("--mount={value}: target is required"))?;
            let target = image_config::join_workdir(&sc.config.working_dir(), target);
            let content = match kind {
                "cache" | "tmpfs" => None,
                "bind" => {
                    let source = fields.get("source").or_else(|| fields.get("src"));
                    let source = source.map_or("/", String::as_str).to_string();
                    let root = match fields.get("from") {
                        None => self.opts.context.clone(),
                        Some(from) => self.export_of(stage, line, from)?,
                    };
                    Some(rootfs::resolve(&root, &source, true).map_err(|e| e.to_string())?)
                }
                other => {
                    return Err(format!(
                        "--mount=type={other} is not supported: RUN steps get no secrets or agents in Stagecoach"
                    ));
                }
            };
            mounted.push(Mounted::create(
                &self.opts.root,
                &target,
                content.as_deref(),
            )?);
        }
        Ok(mounted)
    }

    /// The extracted export of the stage a `--from` on this line reads.
    fn export_of(&mut self, stage: &Stage, line: usize, from: &str) -> Result<PathBuf, String> {
        let source = stage
            .read(line, from)
            .ok_or_else(|| format!("--from={from} is not in the plan"))?
            .to_string();
        if let Some(dir) = self.extracted.get(&source) {
            return Ok(dir.clone());
        }
        let ws = &self.opts.workspace;
        let dir = ws.scratch(&self.opts.pod).join("from").join(&source);
        let _ = std::fs::remove_dir_all(&dir);
        export::extract(&ws.export(&source), &dir).map_err(|e| e.to_string())?;
        self.extracted.insert(source, dir.clone());
        Ok(dir)
    }

    fn copy(
        &mut self,
        stage: &Stage,
        line: usize,
        c: &CopyArgs,
        sc: &StageConfig,
        keyword: &'static str,
    ) -> Result<(), String> {
        let expand = |w: &str| sc.expand(keyword, w).map_err(|e| e.to_string());
        let sources = c
            .sources
            .iter()
            .map(|s| expand(s))
            .collect::<Result<Vec<_>, _>>()?;

        let dest = expand(&c.destination)?;
        let absolute = image_config::join_workdir(&sc.config.working_dir(), &dest);
        let dest = if dest.ends_with('/') && absolute != "/" {
            format!("{absolute}/")
        } else {
            absolute
        };
        let owner = match &c.chown {
            Some(spec) => {
                Some(users::resolve(&self.opts.root, &expand(spec)?).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let chmod = match &c.chmod {
            Some(m) => Some(Chmod::parse(&expand(m)?).map_err(|e| e.to_string())?),
            None => None,
        };
        let opts = CopyOptions {
            keyword,
            owner,
            chmod,
            excludes: c
                .excludes
                .iter()
                .map(|e| expand(e))
                .collect::<Result<_, _>>()?,
            parents: c.parents,
            unpack_archives: keyword == "ADD" && c.unpack != Some(false),
        };
        for doc in &c.heredocs {
            disk_copy_old::write_inline(&self.opts.root, &dest, &doc.name, &doc.body, &opts)
                .map_err(|e| e.to_string())?;
        }
        // ADD <url>: each download becomes a source in a directory of its own.
        let (urls, sources): (Vec<String>, Vec<String>) =
            sources.into_iter().partition(|s| instruction::is_url(s));
        for (n, url) in urls.iter().enumerate() {
            let dir = self
                .opts
                .workspace
                .scratch(&self.opts.pod)
                .join(format!("add-{line}-{n}"));
            let checksum = c.checksum.as_deref().map(&expand).transpose()?;
            let file = fetch::download(
                url,
                &dir,
                checksum.as_deref(),
                Some(&self.opts.tools.join(CA_BUNDLE)),
            )
            .map_err(|e| e.to_string())?;
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let remote = CopyOptions {
                // Remote archives are not unpacked (Docker's rule).
                unpack_archives: false,
                ..opts.clone()
            };
            disk_copy_old::copy(
                SourceRoot {
                    root: &dir,
                    keep_owner: false,
                },
                &[name],
                &self.opts.root,
                &dest,
                &remote,
            )
            .map_err(|e| e.to_string())?;
        }
        if sources.is_empty() {
            return Ok(());
        }
        let (root, keep_owner) = match &c.from {
            None => (self.opts.context.clone(), false),
            Some(from) => (self.export_of(stage, line, &expand(from)?)?, true),
        };
        disk_copy_old::copy(
            SourceRoot {
                root: &root,
                keep_owner,
            },
            &sources,
            &self.opts.root,
            &dest,
            &opts,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

/// A RUN mount emulated in the filesystem, undone after the command.
struct Mounted {
    target: PathBuf,
    /// Where what was at the target before waits meanwhile.
    hidden: Option<PathBuf>,
}

impl Mounted {
    fn create(root: &Path, target: &str, content: Option<&Path>) -> Result<Mounted, String> {
        let parent = Path::new(target)
            .parent()
            .map_or("/".into(), |p| p.to_string_lossy().into_owned());
        let dir = disk_copy_old::make_dirs(root, &parent, None).map_err(|e| e.to_string())?;
        let name = Path::new(target).file_name().unwrap_or_default();
        let at = dir.join(name);
        let hidden = if std::fs::symlink_metadata(&at).is_ok() {
            let aside = dir.join(format!(".stagecoach-mount-{}", name.to_string_lossy()));
            std::fs::rename(&at, &aside).map_err(|e| format!("--mount target {target}: {e}"))?;
            Some(aside)
        } else {
            None
        };
        let mounted = Mounted { target: at, hidden };
        match content {
            Some(src) if src.is_dir() => copy_tree(src, &mounted.target)?,
            Some(src) => {
                std::fs::copy(src, &mounted.target).map_err(|e| format!("--mount source: {e}"))?;
            }
            None => std::fs::create_dir(&mounted.target)
                .map_err(|e| format!("--mount target {target}: {e}"))?,
        }
        Ok(mounted)
    }

    fn undo(self) -> std::io::Result<()> {
        match std::fs::symlink_metadata(&self.target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&self.target)?,
            Ok(_) => std::fs::remove_file(&self.target)?,
            Err(_) => {}
        }
        if let Some(hidden) = self.hidden {
            std::fs::rename(hidden, &self.target)?;
        }
        Ok(())
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    let from = [src.to_string_lossy().into_owned()];
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let name = dst
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(dst).map_err(|e| e.to_string())?;
    disk_copy_old::copy(
        SourceRoot {
            root: Path::new("/"),
            keep_owner: true,
        },
        &from,
        parent,
        &format!("/{name}/"),
        &CopyOptions {
            keyword: "RUN --mount",
            ..CopyOptions::default()
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The home directory of a uid in the root's passwd, `/` if it has none (Docker's rule).
fn home_of(root: &Path, uid: u32) -> String {
    let passwd = rootfs::read_file(root, "/etc/passwd")
        .ok()
        .flatten()
        .unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.get(2)? == &uid.to_string().as_str()).then(|| f.get(5).map(|h| h.to_string()))?
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() })
}

/// A declared volume saved before a RUN.
struct SavedVolume {
    path: String,
    on_disk: PathBuf,
    snapshot: Snapshot,
    tar: PathBuf,
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

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-26T17:00:00Z`); the epoch for a
/// time jiff cannot hold.
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
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

    #[test]
    fn home_comes_from_passwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "app:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("write");
        assert_eq!(home_of(dir.path(), 1000), "/home/app");
        assert_eq!(home_of(dir.path(), 0), "/root");
        assert_eq!(home_of(dir.path(), 5), "/");
    }
}
