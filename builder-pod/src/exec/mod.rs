//! The Dockerfile executor the stage and assemble pods share: one instruction loop, one
//! place per instruction, over whichever [`Tree`] the pod builds on.
//!
//! A stage starts from its parent stage's config and scope, or its base image's; the
//! base's ONBUILD triggers run first; each instruction then changes the config, the
//! tree, or both, and every instruction that changed files leaves one layer. What
//! differs between the pods (RUN and ADD, which need the stage's own root, and how a
//! layer is found) is the [`Pod`] trait.

pub mod copy;
pub mod export;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stagecoach_plan::contract::{Base, Plan, Stage};
use stagecoach_plan::instruction::{self, Copy as CopyArgs, Instruction, Kind, Run};
use stagecoach_plan::scope::Scope;
use stagecoach_plan::shell::Lexer;

use crate::fs::filetree::{self, FileTree};
use crate::fs::tree::Tree;
use crate::fs::users::{self, Ids};
use crate::image_config::{self, History, ImageConfig, StageConfig};
use crate::layer::{self, LayerInfo};
use crate::workspace::{self, LayerRecord, Workspace};
use copy::{Chmod, CopyFlags, Source};

/// Why an instruction failed; the executor adds the stage and the Dockerfile line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Copy(#[from] copy::Error),
    #[error(transparent)]
    Users(#[from] users::Error),
    #[error(transparent)]
    Tree(#[from] filetree::Error),
    #[error(transparent)]
    Config(#[from] image_config::Error),
    #[error("exit code {0}")]
    Exit(i32),
    /// What a pod cannot do here (RUN without a root, privileged RUN options).
    #[error("{0}")]
    Refused(String),
    #[error("--from={0} is not in the plan")]
    NotInPlan(String),
    #[error(
        "{0:?}: not found in the build context (is it excluded by .dockerignore, or outside `spec.source.contextDir`?)"
    )]
    NotInContext(String),
    #[error("{path:?}: not found in stage {stage} (or not among the paths it exports)")]
    NotInStage { path: String, stage: String },
    #[error("cannot read the export of stage {stage}")]
    Export {
        stage: String,
        #[source]
        source: filetree::Error,
    },
    #[error("cannot write its layer")]
    Layer(#[source] layer::Error),
    #[error("{what}")]
    Workspace {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A pod's own step failed (a RUN process, a download, a snapshot).
    #[error(transparent)]
    Pod(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a pod's own error.
    pub fn pod(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Pod(Box::new(e))
    }

    fn workspace(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Workspace { what, source }
    }
}

/// A stage that could not run, with everything a user needs to find why. It is what the
/// pods report, so it is data: the message is the whole error chain, rendered once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{}", self.render(None))]
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
    /// The error for people; `platform`, in a build for several, is the target
    /// platform of the pod that failed (`stage build (linux/arm64): ...`).
    pub fn render(&self, platform: Option<&str>) -> String {
        let mut out = String::new();
        match (&self.stage, platform) {
            (Some(stage), Some(platform)) => out.push_str(&format!("stage {stage} ({platform}): ")),
            (Some(stage), None) => out.push_str(&format!("stage {stage}: ")),
            _ => {}
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

    /// A failure outside any instruction (the plan, a parent's results).
    pub fn unplaced(stage: Option<&str>, message: String) -> StageError {
        StageError {
            stage: stage.map(str::to_string),
            dockerfile: None,
            line: None,
            instruction: None,
            message,
            exit_code: None,
        }
    }

    /// A failure of one instruction, at its place in the Dockerfile.
    pub fn at(plan: &Plan, stage: &Stage, inst: &Instruction, error: &Error) -> StageError {
        StageError {
            stage: Some(stage.id.clone()),
            dockerfile: Some(plan.dockerfile.clone()),
            line: Some(inst.line),
            instruction: Some(inst.text.clone()),
            message: crate::error::chain(error),
            exit_code: match error {
                Error::Exit(code) => Some(*code),
                _ => None,
            },
        }
    }
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

/// One instruction being executed: where it is, for output and errors.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub stage: &'a Stage,
    pub line: usize,
    /// `[build 3/7]`, the prefix of the instruction's output lines.
    pub prefix: &'a str,
    /// 1-based position among the stage's instructions (triggers included).
    pub number: usize,
    /// Time of what the instruction makes itself (directories, heredoc files).
    pub now: i64,
}

/// What differs between the pods that execute a stage.
pub trait Pod {
    type Tree: Tree;

    /// The filesystem the instructions change.
    fn tree(&mut self) -> &mut Self::Tree;

    /// RUN: only a stage pod, on the stage's own base image, can.
    fn run(&mut self, step: &Step<'_>, run: &Run, sc: &StageConfig) -> Result<()> {
        let _ = (step, run, sc);
        Err(Error::Refused(
            "this stage is assembled without a stage pod, which cannot run RUN".into(),
        ))
    }

    /// ADD: downloads and local archives, where the tree is on disk.
    fn add(&mut self, step: &Step<'_>, add: &ResolvedCopy, sources: &mut Sources) -> Result<()> {
        let _ = (step, add, sources);
        Err(Error::Refused(
            "this stage is assembled without a stage pod, which cannot run ADD".into(),
        ))
    }

    /// The layer of what the last instruction changed, written to `out`; None when it
    /// changed nothing after all.
    fn layer(&mut self, out: &Path, epoch: Option<i64>) -> Result<Option<LayerInfo>>;
}

/// Where COPY's files come from: the build context and other stages' exports, each read
/// once per pod, as file trees.
#[derive(Debug)]
pub struct Sources {
    context: PathBuf,
    workspace: Workspace,
    context_tree: Option<FileTree>,
    exports: HashMap<String, FileTree>,
}

impl Sources {
    pub fn new(context: PathBuf, workspace: Workspace) -> Sources {
        Sources {
            context,
            workspace,
            context_tree: None,
            exports: HashMap::new(),
        }
    }

    /// The build context.
    pub fn context(&mut self) -> Result<&FileTree> {
        let tree = match self.context_tree.take() {
            Some(tree) => tree,
            None => FileTree::from_checkout(&self.context)?,
        };
        Ok(self.context_tree.insert(tree))
    }

    /// The stage a `--from` on this line of `stage` reads (the planner resolved it).
    pub fn stage_read(stage: &Stage, line: usize, from: &str) -> Result<String> {
        stage
            .read(line, from)
            .map(str::to_string)
            .ok_or_else(|| Error::NotInPlan(from.to_string()))
    }

    /// The export of the stage a `--from` on this line reads.
    pub fn export(&mut self, stage: &Stage, line: usize, from: &str) -> Result<&FileTree> {
        let id = Sources::stage_read(stage, line, from)?;
        if !self.exports.contains_key(&id) {
            let tree = FileTree::from_archive(&self.workspace.export(&id)).map_err(|source| {
                Error::Export {
                    stage: id.clone(),
                    source,
                }
            })?;
            self.exports.insert(id.clone(), tree);
        }
        Ok(&self.exports[&id])
    }
}

/// A COPY or ADD with every word expanded and the destination made absolute.
#[derive(Debug, Clone)]
pub struct ResolvedCopy {
    pub sources: Vec<String>,
    /// Absolute; a trailing `/` when the Dockerfile gave one.
    pub dest: String,
    pub from: Option<String>,
    pub checksum: Option<String>,
    /// ADD: local archives are extracted (unless `--unpack=false`).
    pub unpack: bool,
    pub flags: CopyFlags,
    pub heredocs: Vec<(String, String)>,
}

/// Runs the stages of one pod: the instruction loop and the workspace records.
#[derive(Debug)]
pub struct Executor<'a> {
    pub plan: &'a Plan,
    pub workspace: &'a Workspace,
    pub sources: Sources,
    /// Time of history entries and of what instructions make themselves.
    pub now: i64,
    /// Clamp for layer entry times (`SOURCE_DATE_EPOCH`).
    pub epoch: Option<i64>,
}

impl Executor<'_> {
    /// Runs `stage` on the pod from `config` and `scope`, writes its layers, layer
    /// index, config and scope to the workspace, and returns the config and scope a
    /// child stage starts from.
    pub fn run_stage<P: Pod>(
        &mut self,
        pod: &mut P,
        stage: &Stage,
        config: ImageConfig,
        scope: Scope,
        report: &mut StageReport,
    ) -> Result<(ImageConfig, Scope), StageError> {
        let ws = self.workspace;
        let unplaced = |e: Error| StageError::unplaced(Some(&stage.id), crate::error::chain(&e));
        let layers_dir = ws.layers_dir(&stage.id);
        workspace::empty_dir(&ws.stage_dir(&stage.id))
            .and_then(|()| std::fs::create_dir_all(&layers_dir))
            .map_err(Error::workspace(format!(
                "cannot create {}",
                layers_dir.display()
            )))
            .map_err(unplaced)?;
        let mut sc = StageConfig::new(config, scope, Lexer::new(self.plan.escape));
        // ONBUILD triggers of the base run first, and are not inherited further.
        let triggers = sc.config.config.on_build.take().unwrap_or_default();
        let mut steps = triggers_of(self.plan, stage, &triggers)?;
        steps.extend(stage.instructions.iter().cloned());
        let created = image_config::rfc3339(self.now);
        for (n, inst) in steps.iter().enumerate() {
            let prefix = format!("[{} {}/{}]", stage.id, n + 1, steps.len());
            println!("{prefix} {}", inst.text);
            let started = Instant::now();
            let step = Step {
                stage,
                line: inst.line,
                prefix: &prefix,
                number: n + 1,
                now: self.now,
            };
            let layer = self
                .execute(pod, &step, inst, &mut sc)
                .and_then(|changed| match changed {
                    true => self.record_layer(pod, inst, report),
                    false => Ok(None),
                })
                .map_err(|e| StageError::at(self.plan, stage, inst, &e))?;
            if let Some(diff_id) = &layer {
                sc.config.rootfs.diff_ids.push(diff_id.clone());
            }
            sc.config.history.push(History {
                created: Some(created.clone()),
                created_by: Some(inst.text.clone()),
                comment: Some("stagecoach".into()),
                empty_layer: layer.is_none(),
            });
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
            .map_err(Error::workspace(format!(
                "cannot write the results of stage {}",
                stage.id
            )))
            .map_err(unplaced)?;
        Ok((sc.config, sc.scope))
    }

    /// Writes the layer of what an instruction changed and records it; its diff id.
    fn record_layer<P: Pod>(
        &self,
        pod: &mut P,
        inst: &Instruction,
        report: &mut StageReport,
    ) -> Result<Option<String>> {
        let file = format!("{:04}.tar.gz", report.layers.len() + 1);
        let out = self.workspace.layers_dir(&report.id).join(&file);
        let Some(info) = pod.layer(&out, self.epoch)? else {
            return Ok(None);
        };
        let diff_id = info.diff_id.clone();
        // The name says what the blob is; its first bytes say it to readers.
        let file = match info.media_type.as_str() {
            crate::layer::ZSTD_MEDIA_TYPE => {
                let zst = file.replace(".tar.gz", ".tar.zst");
                let dir = self.workspace.layers_dir(&report.id);
                std::fs::rename(&out, dir.join(&zst))
                    .map_err(Error::workspace(format!("cannot name the layer {zst}")))?;
                zst
            }
            _ => file,
        };
        report.layers.push(LayerRecord {
            file,
            digest: info.digest,
            diff_id: info.diff_id,
            size: info.size,
            media_type: info.media_type,
            created_by: inst.text.clone(),
            line: inst.line,
        });
        Ok(Some(diff_id))
    }

    /// Runs one instruction; says whether it may have changed the filesystem.
    fn execute<P: Pod>(
        &mut self,
        pod: &mut P,
        step: &Step<'_>,
        inst: &Instruction,
        sc: &mut StageConfig,
    ) -> Result<bool> {
        match &inst.kind {
            Kind::Run(r) => pod.run(step, r, sc).map(|()| true),
            Kind::Copy(c) => {
                let copy = resolve_copy(pod.tree(), c, sc, "COPY")?;
                self.copy(pod.tree(), step, &copy)?;
                Ok(true)
            }
            Kind::Add(c) => {
                let add = resolve_copy(pod.tree(), c, sc, "ADD")?;
                write_heredocs(pod.tree(), &add, self.now)?;
                if !add.sources.is_empty() {
                    pod.add(step, &add, &mut self.sources)?;
                }
                Ok(true)
            }
            Kind::Workdir { .. } => {
                self.apply(inst, sc)?;
                // The directories WORKDIR makes belong to the USER (BuildKit, buildah).
                let owner = user_ids(pod.tree(), sc)?;
                copy::make_dirs(pod.tree(), &sc.config.working_dir(), owner, self.now)?;
                Ok(true)
            }
            Kind::Volume { .. } => {
                // buildah (and Docker's classic builder) make each volume's directory in
                // the image; only one that is new changes the filesystem.
                self.apply(inst, sc)?;
                let mut made = false;
                for path in sc.config.config.volumes.iter().flat_map(|v| v.keys()) {
                    if !pod.tree().is_dir(path)? {
                        copy::make_dirs(pod.tree(), path, None, self.now)?;
                        made = true;
                    }
                }
                Ok(made)
            }
            _ => self.apply(inst, sc).map(|()| false),
        }
    }

    fn apply(&self, inst: &Instruction, sc: &mut StageConfig) -> Result<()> {
        sc.apply(inst, &self.plan.global_args, &self.plan.build_args)?;
        Ok(())
    }

    /// COPY (and ADD's local files): heredocs, then the sources from the context or
    /// another stage's export.
    fn copy(&mut self, to: &mut impl Tree, step: &Step<'_>, c: &ResolvedCopy) -> Result<()> {
        write_heredocs(to, c, self.now)?;
        if c.sources.is_empty() {
            return Ok(());
        }
        let source = match &c.from {
            None => Source {
                tree: self.sources.context()?,
                keep_owner: false,
            },
            Some(from) => Source {
                tree: self.sources.export(step.stage, step.line, from)?,
                keep_owner: true,
            },
        };
        copy::copy(to, source, &c.sources, &c.dest, &c.flags, self.now, None)
            .map_err(|e| missing_source(e, step, c.from.as_deref()))
    }
}

/// A copy error, with a source not found said where it was looked for: the context
/// (`from` None) or the stage a `--from` names.
pub fn missing_source(e: copy::Error, step: &Step<'_>, from: Option<&str>) -> Error {
    match (e, from) {
        (copy::Error::NotFound(path), None) => Error::NotInContext(path),
        (copy::Error::NotFound(path), Some(from)) => Error::NotInStage {
            path,
            stage: Sources::stage_read(step.stage, step.line, from).unwrap_or(from.to_string()),
        },
        (e, _) => Error::Copy(e),
    }
}

/// A COPY's or ADD's inline (heredoc) sources, written as files.
fn write_heredocs(to: &mut impl Tree, c: &ResolvedCopy, now: i64) -> Result<()> {
    for (name, body) in &c.heredocs {
        copy::write_inline(to, &c.dest, name, body, &c.flags, now)?;
    }
    Ok(())
}

/// The ids of the stage's USER, None for root.
pub fn user_ids(tree: &impl Tree, sc: &StageConfig) -> Result<Option<Ids>> {
    match sc.config.config.user.as_deref() {
        None | Some("") => Ok(None),
        Some(user) => Ok(Some(users::resolve(tree, user)?)),
    }
}

/// Expands a COPY's or ADD's words and resolves its flags against the tree.
fn resolve_copy(
    tree: &impl Tree,
    c: &CopyArgs,
    sc: &StageConfig,
    keyword: &'static str,
) -> Result<ResolvedCopy> {
    let expand = |w: &str| sc.expand(keyword, w);
    let sources = c
        .sources
        .iter()
        .map(|s| expand(s))
        .collect::<Result<Vec<_>, _>>()?;
    if keyword == "COPY"
        && let Some(url) = sources.iter().find(|s| instruction::is_url(s))
    {
        return Err(Error::Refused(format!(
            "source can't be a URL for COPY: {url}"
        )));
    }
    let dest = expand(&c.destination)?;
    let absolute = image_config::join_workdir(&sc.config.working_dir(), &dest);
    let dest = if dest.ends_with('/') && absolute != "/" {
        format!("{absolute}/")
    } else {
        absolute
    };
    let owner = match &c.chown {
        Some(spec) => Some(users::resolve(tree, &expand(spec)?)?),
        None => None,
    };
    let chmod = match &c.chmod {
        Some(m) => Some(Chmod::parse(&expand(m)?)?),
        None => None,
    };
    Ok(ResolvedCopy {
        sources,
        dest,
        from: c.from.as_deref().map(&expand).transpose()?,
        checksum: c.checksum.as_deref().map(&expand).transpose()?,
        unpack: keyword == "ADD" && c.unpack != Some(false),
        flags: CopyFlags {
            keyword,
            owner,
            chmod,
            excludes: c
                .excludes
                .iter()
                .map(|e| expand(e))
                .collect::<Result<_, _>>()?,
            parents: c.parents,
        },
        heredocs: c
            .heredocs
            .iter()
            .map(|d| (d.name.clone(), d.body.clone()))
            .collect(),
    })
}

/// ONBUILD triggers of the base image, as instructions at the stage's FROM line.
pub(crate) fn triggers_of(
    plan: &Plan,
    stage: &Stage,
    triggers: &[String],
) -> Result<Vec<Instruction>, StageError> {
    triggers
        .iter()
        .map(|trigger| {
            let fail = |message: String| StageError {
                stage: Some(stage.id.clone()),
                dockerfile: Some(plan.dockerfile.clone()),
                line: Some(stage.line),
                instruction: Some(format!("ONBUILD {trigger}")),
                message,
                exit_code: None,
            };
            let df = stagecoach_plan::syntax::parse(trigger).map_err(|e| fail(e.message))?;
            let node = df
                .instructions
                .first()
                .ok_or_else(|| fail("empty trigger".into()))?;
            let mut inst = instruction::parse_node(node).map_err(|e| fail(e.to_string()))?;
            inst.line = stage.line;
            inst.end_line = stage.line;
            Ok(inst)
        })
        .collect()
}

/// The config and variable scope a stage starts with: its parent stage's results, or
/// the base image's config (`base`; none for scratch), on the plan's platform and with
/// the default PATH when the base sets none.
pub fn starting_point(
    plan: &Plan,
    ws: &Workspace,
    stage: &Stage,
    base: Option<ImageConfig>,
) -> Result<(ImageConfig, Scope), StageError> {
    let unplaced = |e: Error| StageError::unplaced(Some(&stage.id), crate::error::chain(&e));
    if let Base::Stage { id } = &stage.base {
        let config = workspace::read_json(&ws.config(id))
            .map_err(Error::workspace(format!(
                "cannot read the config of stage {id}"
            )))
            .map_err(unplaced)?;
        let scope = workspace::read_json(&ws.scope(id))
            .map_err(Error::workspace(format!(
                "cannot read the scope of stage {id}"
            )))
            .map_err(unplaced)?;
        return Ok((config, scope));
    }
    Ok(image_start(plan, base))
}

/// The config and scope of a stage that starts from an image (`base`) or scratch.
pub fn image_start(plan: &Plan, base: Option<ImageConfig>) -> (ImageConfig, Scope) {
    let mut config = base.unwrap_or_default();
    if config.os.is_empty() {
        config.os = plan.platform.os.clone();
        config.architecture = plan.platform.architecture.clone();
        config.variant = plan.platform.variant.clone();
    }
    config.ensure_path();
    let scope = Scope::from_image_env(&config.env_pairs());
    (config, scope)
}

/// The stages a `FROM <stage>` chain goes through, root first, ending with `id`; a
/// chain that comes back to a stage is refused.
pub fn from_chain(plan: &Plan, id: &str) -> Result<Vec<String>, StageError> {
    let missing = |id: &str| StageError::unplaced(None, format!("no stage {id:?} in the plan"));
    let mut chain = vec![id.to_string()];
    let mut current = plan.stage(id).ok_or_else(|| missing(id))?;
    while let Base::Stage { id } = &current.base {
        if chain.contains(id) {
            return Err(StageError::unplaced(
                Some(id),
                format!("stage {id} builds on itself"),
            ));
        }
        chain.push(id.clone());
        current = plan.stage(id).ok_or_else(|| missing(id))?;
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_instruction_keeps_its_line_and_its_cause() {
        let plan = stagecoach_plan::plan(
            "FROM busybox\nWORKDIR /app\nCOPY . /app\n",
            &stagecoach_plan::PlanOptions::default(),
        )
        .expect("plans");
        let stage = plan.stage(&plan.target).expect("target");
        let copy = &stage.instructions[1];
        let denied = Error::Copy(copy::Error::Tree(filetree::Error::Write {
            path: "/app/x".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        }));
        let e = StageError::at(&plan, stage, copy, &denied);
        assert_eq!(
            e.to_string(),
            "stage stage-0: Dockerfile:3: COPY . /app: cannot write /app/x: permission denied"
        );
        let exit = StageError::at(&plan, stage, copy, &Error::Exit(2));
        assert_eq!(exit.exit_code, Some(2));
    }
}
