//! `stagecoach-builder assemble`: the target stage as an image in a registry.
//!
//! Pipeline: read the plan → fetch the base image (manifest for the plan's platform,
//! config) → build the target's layers here when it only copies (no stage pod ran it)
//! → the layers of the FROM chain from the workspace → the image config (labels,
//! `rootfs.diff_ids`, history, clamped times) → the manifest → push (registry.rs) →
//! report (`reports/<pod>.json` and the termination message).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    OciDescriptor, OciImageManifest,
};
use serde::{Deserialize, Serialize};
use stagecoach_plan::contract::{Base, Execution, Plan, PodOutcome, Stage};
use stagecoach_plan::instruction::{self, Copy as CopyArgs, Instruction, Kind};
use stagecoach_plan::scope::Scope;
use stagecoach_plan::shell::Lexer;

use crate::exec::copy::{self, CopyFlags, LayerBuilder};
use crate::exec::disk_copy_old::Chmod;
use crate::fs::filetree::{self, FileTree, Node};
use crate::fs::users::{self, Ids};
use crate::image_config::{self, History, ImageConfig, StageConfig};
use crate::oci::{self, Blob, BlobCounts, BlobSource, Reference, Registry};
use crate::stage::{StageError, rfc3339};
use crate::workspace::{self, LayerRecord, Workspace};

/// Docker's foreign layers, kept as they are but named in the manifest's vocabulary.
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Base image configs are small; a bigger one is not an image config.
const CONFIG_LIMIT: u64 = 16 << 20;

/// Labels the source step's facts go to (OCI annotation names, as BuildKit uses them).
const SOURCE_LABEL: &str = "org.opencontainers.image.source";
const REVISION_LABEL: &str = "org.opencontainers.image.revision";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Workspace(String),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Registry(#[from] oci::Error),
    #[error("base image {reference}: {message}")]
    BaseImage { reference: String, message: String },
    #[error("the image has {layers} layers but its history {entries} layer entries")]
    History { layers: usize, entries: usize },
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("cannot push to {0}: name a tag, the digest is only known after the push")]
    PushByDigest(String),
    #[error("an assemble task failed")]
    Task(#[source] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable reason word for conditions and metrics (never the message).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Workspace(_) => "WorkspaceInvalid",
            Error::Stage(_) => "StageFailed",
            Error::Registry(e) => e.reason(),
            Error::BaseImage { .. } | Error::History { .. } => "BaseImageInvalid",
            Error::Tag(_) | Error::PushByDigest(_) => "InvalidReference",
            Error::Task(_) => "Internal",
        }
    }
}

fn workspace_err(what: impl std::fmt::Display) -> Error {
    Error::Workspace(what.to_string())
}

/// The manifest vocabulary of the pushed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// OCI image manifest and config (the default).
    #[default]
    Oci,
    /// Docker v2 schema 2, for registries that predate OCI.
    Docker,
}

/// How the assemble pod is set up.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    pub workspace: Workspace,
    /// The pod's name, for its report.
    pub pod: String,
    /// The build context (`/workspace/source/<contextDir>`).
    pub context: PathBuf,
    /// Where to push: `registry/repository[:tag]`.
    pub image: String,
    /// More tags for the same image, pushed after it.
    pub tags: Vec<String>,
    /// `org.opencontainers.image.source` and `.revision` labels.
    pub source_url: Option<String>,
    pub revision: Option<String>,
    /// Labels for the image config (`spec.output.labels`), over the Dockerfile's.
    pub labels: BTreeMap<String, String>,
    /// Annotations for the image manifest (`spec.output.annotations`).
    pub annotations: BTreeMap<String, String>,
    /// Clamp for layer entry, history and config times (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    pub media_types: MediaTypes,
    pub registry: oci::Settings,
    /// Blobs transferred at the same time.
    pub jobs: usize,
}

/// What the assemble pod did, written to `reports/<pod>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssembleReport {
    pub pod: String,
    pub succeeded: bool,
    /// `registry/repository:tag@sha256:…`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub layers: usize,
    pub blobs: BlobCounts,
    pub timings: Timings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// Milliseconds spent in each step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Base manifest and config, and the base's file tree when COPY needs it.
    pub base_ms: u64,
    /// Layers built here for a COPY-only target.
    pub layers_ms: u64,
    pub push_ms: u64,
    pub total_ms: u64,
}

/// Why the pod failed: a stable reason word and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// Assembles and pushes the target stage; never fails, the report says how it went.
pub fn run(opts: &AssembleOptions) -> AssembleReport {
    let started = Instant::now();
    let mut report = AssembleReport {
        pod: opts.pod.clone(),
        ..AssembleReport::default()
    };
    let result = oci::runtime()
        .map_err(Error::from)
        .and_then(|runtime| runtime.block_on(assemble(opts, &mut report)));
    if let Err(e) = result {
        report.error = Some(Failure {
            reason: e.reason().to_string(),
            message: crate::error::chain(&e),
        });
    }
    report.succeeded = report.error.is_none();
    report.timings.total_ms = millis(started);
    let _ = std::fs::remove_dir_all(opts.workspace.scratch(&opts.pod));
    report
}

/// The termination message's content: success with the pushed image, or the reason.
pub fn outcome(report: &AssembleReport) -> PodOutcome {
    PodOutcome {
        succeeded: report.succeeded,
        reason: report.error.as_ref().map(|e| e.reason.clone()),
        message: report.error.as_ref().map(|e| e.message.clone()),
        image: report.image.clone(),
        ..PodOutcome::default()
    }
}

/// One layer of the image: its descriptor, its diff id and where its bytes are.
#[derive(Debug, Clone)]
struct ImageLayer {
    descriptor: OciDescriptor,
    diff_id: String,
    source: BlobSource,
}

/// The image the target's FROM chain starts from.
#[derive(Debug)]
struct BaseImage {
    /// Pinned to the manifest's digest.
    reference: Reference,
    config: ImageConfig,
    layers: Vec<ImageLayer>,
}

async fn assemble(opts: &AssembleOptions, report: &mut AssembleReport) -> Result<()> {
    let ws = &opts.workspace;
    let text = std::fs::read_to_string(ws.plan())
        .map_err(|e| workspace_err(format!("cannot read the plan {}: {e}", ws.plan().display())))?;
    let plan = Plan::from_json(&text).map_err(|e| workspace_err(crate::error::chain(&e)))?;
    let target_ref = oci::parse_reference(&opts.image)?;
    if target_ref.digest().is_some() {
        return Err(Error::PushByDigest(opts.image.clone()));
    }
    if let Some(bad) = opts.tags.iter().find(|t| !valid_tag(t)) {
        return Err(Error::Tag(bad.clone()));
    }
    let chain = from_chain(&plan, &plan.target)?;
    let target = stage(&plan, &plan.target)?.clone();
    let registry = Registry::new(&opts.registry)?;

    let started = Instant::now();
    let root = stage(&plan, &chain[0])?;
    let base = match &root.base {
        Base::Image { reference, digest } => {
            Some(fetch_base(&registry, reference, digest.as_deref(), &plan).await?)
        }
        Base::Scratch | Base::Stage { .. } => None,
    };
    if !matches!(target.execution, Execution::Pod { .. }) {
        let tree = if touches_filesystem(&target) {
            image_tree(
                &registry,
                base.as_ref(),
                &chain[..chain.len() - 1],
                ws,
                opts.jobs,
            )
            .await?
        } else {
            FileTree::new()
        };
        report.timings.base_ms = millis(started);
        let started = Instant::now();
        let (config, scope) = starting_point(ws, &plan, &target, base.as_ref())?;
        let build = CopyStage {
            plan: plan.clone(),
            stage: target.clone(),
            workspace: ws.clone(),
            context: opts.context.clone(),
            scratch: ws.scratch(&opts.pod),
            image: tree,
            context_tree: None,
            exports: HashMap::new(),
            now: opts.source_date_epoch.unwrap_or_else(now),
            epoch: opts.source_date_epoch,
        };
        tokio::task::spawn_blocking(move || build.run(config, scope))
            .await
            .map_err(Error::Task)??;
        report.timings.layers_ms = millis(started);
    } else {
        report.timings.base_ms = millis(started);
    }

    let mut layers: Vec<ImageLayer> = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
    for id in &chain {
        layers.extend(stage_layers(ws, stage(&plan, id)?)?);
    }
    let stage_config: ImageConfig = workspace::read_json(&ws.config(&target.id))
        .map_err(|e| workspace_err(format!("the config of stage {}: {e}", target.id)))?;
    let config = image_config(stage_config, &layers, opts, &plan)?;
    let config_bytes = Bytes::from(
        serde_json::to_vec(&config).map_err(|e| workspace_err(format!("config: {e}")))?,
    );
    let (manifest, media_type) =
        manifest(&config_bytes, &layers, opts.media_types, &opts.annotations)?;

    let started = Instant::now();
    let mut blobs: Vec<Blob> = layers
        .iter()
        .map(|l| Blob {
            digest: l.descriptor.digest.clone(),
            size: l.descriptor.size.max(0) as u64,
            source: l.source.clone(),
        })
        .collect();
    blobs.push(Blob {
        digest: oci::sha256(&config_bytes),
        size: config_bytes.len() as u64,
        source: BlobSource::Bytes(config_bytes.clone()),
    });
    let pushed = registry
        .push(
            &target_ref,
            &blobs,
            &manifest,
            &media_type,
            &opts.tags,
            opts.jobs,
        )
        .await?;
    report.timings.push_ms = millis(started);
    report.image = Some(format!("{}@{}", target_ref.whole(), pushed.digest));
    report.digest = Some(pushed.digest);
    report.media_type = Some(media_type);
    report.manifest_size = Some(pushed.manifest_size);
    report.tags = opts.tags.clone();
    report.layers = layers.len();
    report.blobs = pushed.blobs;
    Ok(())
}

fn stage<'a>(plan: &'a Plan, id: &str) -> Result<&'a Stage> {
    plan.stage(id)
        .ok_or_else(|| workspace_err(format!("no stage {id:?} in the plan")))
}

/// The stages a FROM chain goes through, root first, ending with `id`.
fn from_chain(plan: &Plan, id: &str) -> Result<Vec<String>> {
    let mut chain = vec![id.to_string()];
    let mut current = stage(plan, id)?;
    while let Base::Stage { id } = &current.base {
        if chain.contains(id) {
            return Err(workspace_err(format!("stage {id} builds on itself")));
        }
        chain.push(id.clone());
        current = stage(plan, id)?;
    }
    chain.reverse();
    Ok(chain)
}

/// A tag as the distribution API allows it.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The base image's manifest for the plan's platform and its config.
async fn fetch_base(
    registry: &Registry,
    reference: &str,
    digest: Option<&str>,
    plan: &Plan,
) -> Result<BaseImage> {
    let mut pinned = oci::parse_reference(reference)?;
    if let Some(digest) = digest {
        pinned = pinned.clone_with_digest(digest.to_string());
    }
    let manifest = registry.manifest(&pinned, &plan.platform).await?;
    let pinned = pinned.clone_with_digest(manifest.digest.clone());
    let bytes = registry
        .blob_bytes(&pinned, &manifest.manifest.config.digest, CONFIG_LIMIT)
        .await?;
    let invalid = |message: String| Error::BaseImage {
        reference: pinned.whole(),
        message,
    };
    let config: ImageConfig =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("config: {e}")))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.manifest.layers.len() {
        return Err(invalid(format!(
            "{} layers but {} diff ids in its config",
            manifest.manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let layers = manifest
        .manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(descriptor, diff_id)| ImageLayer {
            descriptor: descriptor.clone(),
            diff_id: diff_id.clone(),
            source: BlobSource::Image(pinned.clone()),
        })
        .collect();
    Ok(BaseImage {
        reference: pinned,
        config,
        layers,
    })
}

/// The layers a stage left on the workspace (none for a stage that is its base as is).
fn stage_layers(ws: &Workspace, stage: &Stage) -> Result<Vec<ImageLayer>> {
    if stage.execution == Execution::Nothing {
        return Ok(Vec::new());
    }
    let records: Vec<LayerRecord> = workspace::read_json(&ws.layer_index(&stage.id))
        .map_err(|e| workspace_err(format!("the layers of stage {}: {e}", stage.id)))?;
    Ok(records
        .into_iter()
        .map(|r| ImageLayer {
            descriptor: OciDescriptor {
                media_type: IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
                digest: r.digest,
                size: r.size as i64,
                ..OciDescriptor::default()
            },
            diff_id: r.diff_id,
            source: BlobSource::File(ws.layers_dir(&stage.id).join(r.file)),
        })
        .collect())
}

/// Whether a COPY-only stage changes files (then its destinations must be resolved
/// against the image's tree); metadata-only stages need no tree.
fn touches_filesystem(stage: &Stage) -> bool {
    stage
        .instructions
        .iter()
        .any(|i| matches!(i.kind, Kind::Copy(_) | Kind::Workdir { .. }))
}

/// The file tree of the image below the target: the base's layers (their headers,
/// streamed from the registry, `jobs` at a time), then the layers of the chain's stages.
async fn image_tree(
    registry: &Registry,
    base: Option<&BaseImage>,
    below: &[String],
    ws: &Workspace,
    jobs: usize,
) -> Result<FileTree> {
    let mut tree = FileTree::new();
    if let Some(base) = base {
        let scans: Vec<filetree::LayerChanges> = futures::stream::iter(&base.layers)
            .map(|layer| registry.read_blob(&base.reference, &layer.descriptor.digest, read_layer))
            .buffered(jobs.max(1))
            .try_collect()
            .await?;
        for scan in scans {
            tree.apply(scan);
        }
    }
    for id in below {
        let records: Vec<LayerRecord> = match workspace::read_json(&ws.layer_index(id)) {
            Ok(records) => records,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(workspace_err(format!("the layers of stage {id}: {e}"))),
        };
        for record in records {
            let path = ws.layers_dir(id).join(&record.file);
            let scan = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| workspace_err(format!("{}: {e}", path.display())))?;
                read_layer(&mut std::io::BufReader::new(file))
                    .map_err(|e| workspace_err(format!("{}: {e}", path.display())))
            })
            .await
            .map_err(Error::Task)??;
            tree.apply(scan);
        }
    }
    Ok(tree)
}

/// The headers of a layer blob, gzip or plain tar (by its first bytes).
fn read_layer(blob: &mut dyn std::io::Read) -> std::io::Result<filetree::LayerChanges> {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(blob);
    let magic = reader
        .fill_buf()?
        .get(..4)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let result = if magic.starts_with(&[0x1f, 0x8b]) {
        filetree::read_layer(flate2::bufread::GzDecoder::new(reader))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "zstd layers are not supported",
        ));
    } else {
        filetree::read_layer(reader)
    };
    result.map_err(std::io::Error::other)
}

/// The config and variable scope a COPY-only target starts with: its parent stage's
/// results, or the base image's config.
fn starting_point(
    ws: &Workspace,
    plan: &Plan,
    target: &Stage,
    base: Option<&BaseImage>,
) -> Result<(ImageConfig, Scope)> {
    if let Base::Stage { id } = &target.base {
        let config = workspace::read_json(&ws.config(id))
            .map_err(|e| workspace_err(format!("the config of stage {id}: {e}")))?;
        let scope = workspace::read_json(&ws.scope(id))
            .map_err(|e| workspace_err(format!("the scope of stage {id}: {e}")))?;
        return Ok((config, scope));
    }
    let mut config = base.map(|b| b.config.clone()).unwrap_or_default();
    if config.os.is_empty() {
        config.os = plan.platform.os.clone();
        config.architecture = plan.platform.architecture.clone();
        config.variant = plan.platform.variant.clone();
    }
    config.ensure_path();
    let scope = Scope::from_image_env(&config.env_pairs());
    Ok((config, scope))
}

/// A COPY-only target stage, built here as a stage pod would build it: its layers (one
/// per COPY, and WORKDIR when it makes a directory), config and scope go to the
/// workspace in the same form.
#[derive(Debug)]
struct CopyStage {
    plan: Plan,
    stage: Stage,
    workspace: Workspace,
    context: PathBuf,
    /// Where `--chown` names are looked up (the image's account files are put there).
    scratch: PathBuf,
    /// The image as the instructions see it: the base, then what they added.
    image: FileTree,
    context_tree: Option<FileTree>,
    /// Stage exports by stage id, read once.
    exports: HashMap<String, FileTree>,
    /// Time of what the stage makes itself (directories, heredocs, history).
    now: i64,
    epoch: Option<i64>,
}

impl CopyStage {
    fn run(mut self, config: ImageConfig, scope: Scope) -> Result<()> {
        let ws = self.workspace.clone();
        let id = self.stage.id.clone();
        let _ = std::fs::remove_dir_all(ws.stage_dir(&id));
        let layers_dir = ws.layers_dir(&id);
        std::fs::create_dir_all(&layers_dir)
            .map_err(|e| workspace_err(format!("{}: {e}", layers_dir.display())))?;
        let mut sc = StageConfig::new(config, scope, Lexer::new(self.plan.escape));
        // ONBUILD triggers of the base run first, and are not inherited further.
        let triggers = sc.config.config.on_build.take().unwrap_or_default();
        let mut steps = self.triggers(&triggers)?;
        steps.extend(self.stage.instructions.iter().cloned());
        let created = rfc3339(self.now);
        let mut records: Vec<LayerRecord> = Vec::new();
        for inst in &steps {
            println!("[{id}] {}", inst.text);
            let entries = self.execute(inst, &mut sc).map_err(|message| StageError {
                stage: Some(id.clone()),
                dockerfile: Some(self.plan.dockerfile.clone()),
                line: Some(inst.line),
                instruction: Some(inst.text.clone()),
                message,
                exit_code: None,
            })?;
            let mut history = History {
                created: Some(created.clone()),
                created_by: Some(inst.text.clone()),
                comment: Some("stagecoach".into()),
                empty_layer: true,
            };
            if !entries.is_empty() {
                let file = format!("{:04}.tar.gz", records.len() + 1);
                let info = copy::write_layer(&entries, &layers_dir.join(&file), self.epoch)
                    .map_err(|e| workspace_err(crate::error::chain(&e)))?;
                sc.config.rootfs.diff_ids.push(info.diff_id.clone());
                records.push(LayerRecord {
                    file,
                    digest: info.digest,
                    diff_id: info.diff_id,
                    size: info.size,
                    created_by: inst.text.clone(),
                    line: inst.line,
                });
                history.empty_layer = false;
            }
            sc.config.history.push(history);
        }
        sc.config.created = Some(created);
        workspace::write_json(&ws.layer_index(&id), &records)
            .and_then(|()| workspace::write_json(&ws.config(&id), &sc.config))
            .and_then(|()| workspace::write_json(&ws.scope(&id), &sc.scope))
            .map_err(|e| workspace_err(format!("stage {id}: {e}")))
    }

    /// ONBUILD triggers of the base image, as instructions at the FROM line.
    fn triggers(&self, triggers: &[String]) -> Result<Vec<Instruction>> {
        triggers
            .iter()
            .map(|trigger| {
                let fail = |message: String| StageError {
                    stage: Some(self.stage.id.clone()),
                    dockerfile: Some(self.plan.dockerfile.clone()),
                    line: Some(self.stage.line),
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
                inst.line = self.stage.line;
                inst.end_line = self.stage.line;
                Ok(inst)
            })
            .collect()
    }

    /// Applies one instruction; returns the entries of its layer (none: metadata only).
    fn execute(
        &mut self,
        inst: &Instruction,
        sc: &mut StageConfig,
    ) -> Result<Vec<(PathBuf, Node)>, String> {
        let globals = &self.plan.global_args;
        let args = &self.plan.build_args;
        match &inst.kind {
            Kind::Copy(c) => self.copy(inst.line, c, sc),
            Kind::Workdir { .. } => {
                sc.apply(inst, globals, args).map_err(|e| e.to_string())?;
                let dir = sc.config.working_dir();
                // The directories WORKDIR makes belong to the USER (BuildKit, buildah).
                let owner = match sc.config.config.user.as_deref() {
                    None | Some("") => None,
                    Some(user) => Some(self.ids(user)?),
                };
                let mut layer = LayerBuilder::new(&mut self.image, self.now);
                layer.make_dirs(&dir, owner).map_err(|e| e.to_string())?;
                Ok(layer.finish())
            }
            Kind::Run(_) | Kind::Add(_) => Err(
                "this stage is assembled without a stage pod, which cannot run RUN or ADD".into(),
            ),
            _ => {
                sc.apply(inst, globals, args).map_err(|e| e.to_string())?;
                Ok(Vec::new())
            }
        }
    }

    fn copy(
        &mut self,
        line: usize,
        c: &CopyArgs,
        sc: &StageConfig,
    ) -> Result<Vec<(PathBuf, Node)>, String> {
        let expand = |w: &str| sc.expand("COPY", w).map_err(|e| e.to_string());
        let sources = c
            .sources
            .iter()
            .map(|s| expand(s))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = sources.iter().find(|s| instruction::is_url(s)) {
            return Err(format!("source can't be a URL for COPY: {url}"));
        }
        let dest = expand(&c.destination)?;
        let absolute = image_config::join_workdir(&sc.config.working_dir(), &dest);
        let dest = if dest.ends_with('/') && absolute != "/" {
            format!("{absolute}/")
        } else {
            absolute
        };
        let owner = match &c.chown {
            Some(spec) => Some(self.ids(&expand(spec)?)?),
            None => None,
        };
        let flags = CopyFlags {
            keyword: "COPY",
            owner,
            chmod: match &c.chmod {
                Some(m) => Some(Chmod::parse(&expand(m)?).map_err(|e| e.to_string())?),
                None => None,
            },
            excludes: c
                .excludes
                .iter()
                .map(|e| expand(e))
                .collect::<Result<_, _>>()?,
            parents: c.parents,
        };
        let from = match &c.from {
            Some(from) => Some(self.export(line, &expand(from)?)?),
            None if !sources.is_empty() => {
                if self.context_tree.is_none() {
                    self.context_tree = Some(
                        FileTree::from_dir(&self.context).map_err(|e| crate::error::chain(&e))?,
                    );
                }
                None
            }
            None => None,
        };
        let source = match &from {
            Some(id) => self.exports.get(id),
            None => self.context_tree.as_ref(),
        };
        // `--link`: the layer is made on nothing, independent of the image below it.
        let mut nothing = FileTree::new();
        let view = if c.link {
            &mut nothing
        } else {
            &mut self.image
        };
        let mut layer = LayerBuilder::new(view, self.now);
        for doc in &c.heredocs {
            layer
                .inline(&dest, &doc.name, &doc.body, &flags)
                .map_err(|e| e.to_string())?;
        }
        if let (Some(tree), false) = (source, sources.is_empty()) {
            layer
                .copy(tree, from.is_some(), &sources, &dest, &flags)
                .map_err(|e| e.to_string())?;
        }
        let entries = layer.finish();
        if c.link {
            for (path, node) in &entries {
                self.image.insert(path.clone(), node.clone());
            }
        }
        Ok(entries)
    }

    /// The export of the stage a `--from` on this line reads, read once.
    fn export(&mut self, line: usize, from: &str) -> Result<String, String> {
        let id = self
            .stage
            .read(line, from)
            .ok_or_else(|| format!("--from={from} is not in the plan"))?
            .to_string();
        if !self.exports.contains_key(&id) {
            let path = self.workspace.export(&id);
            let tree = FileTree::from_archive(&path).map_err(|e| crate::error::chain(&e))?;
            self.exports.insert(id.clone(), tree);
        }
        Ok(id)
    }

    /// `--chown` ids: numbers as they are; names from the image's `/etc/passwd` and
    /// `/etc/group`, looked up the way users.rs does it in stage pods.
    fn ids(&self, spec: &str) -> Result<Ids, String> {
        if let Some((user, group)) = spec.split_once(':')
            && let (Ok(uid), Ok(gid)) = (user.parse::<u32>(), group.parse::<u32>())
        {
            return Ok(Ids { uid, gid });
        }
        let root = self.scratch.join("accounts");
        let etc = root.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        for name in ["passwd", "group"] {
            let file = etc.join(name);
            let _ = std::fs::remove_file(&file);
            let content = self
                .image
                .read_file(&format!("/etc/{name}"))
                .map_err(|e| crate::error::chain(&e))?;
            if let Some(bytes) = content {
                std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        users::resolve(&root, spec).map_err(|e| e.to_string())
    }
}

/// The pushed image's config: the target stage's, with the source labels, the real
/// `rootfs.diff_ids`, a history that matches the layers, and clamped times.
fn image_config(
    mut config: ImageConfig,
    layers: &[ImageLayer],
    opts: &AssembleOptions,
    plan: &Plan,
) -> Result<ImageConfig> {
    let source = [
        (SOURCE_LABEL, &opts.source_url),
        (REVISION_LABEL, &opts.revision),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_string(), value.clone()?)));
    for (key, value) in source.chain(opts.labels.clone()) {
        config
            .config
            .labels
            .get_or_insert_with(Default::default)
            .insert(key, value);
    }
    if config.os.is_empty() {
        config.os = plan.platform.os.clone();
        config.architecture = plan.platform.architecture.clone();
        config.variant = plan.platform.variant.clone();
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    if config.rootfs.diff_ids != diff_ids {
        eprintln!(
            "the stage config lists {} layers, the workspace and base {}: using those",
            config.rootfs.diff_ids.len(),
            diff_ids.len()
        );
    }
    config.rootfs = image_config::RootFs {
        kind: "layers".into(),
        diff_ids,
    };
    config.history = history_for(std::mem::take(&mut config.history), layers.len())?;
    match opts.source_date_epoch {
        Some(epoch) => {
            for entry in &mut config.history {
                entry.created = Some(clamped(entry.created.as_deref(), epoch));
            }
            config.created = Some(clamped(config.created.as_deref(), epoch));
        }
        None => {
            if config.created.is_none() {
                config.created = Some(rfc3339(now()));
            }
        }
    }
    Ok(config)
}

/// A history with one non-empty entry per layer. Base images made without history get
/// entries for their layers in front; more entries than layers is an error.
fn history_for(mut history: Vec<History>, layers: usize) -> Result<Vec<History>> {
    let entries = history.iter().filter(|h| !h.empty_layer).count();
    if entries > layers {
        return Err(Error::History { layers, entries });
    }
    let missing = (0..layers - entries).map(|_| History {
        comment: Some("layer without history in its image".into()),
        ..History::default()
    });
    let mut full: Vec<History> = missing.collect();
    full.append(&mut history);
    Ok(full)
}

/// An RFC 3339 time no later than `epoch` (times that do not parse become `epoch`).
fn clamped(time: Option<&str>, epoch: i64) -> String {
    match time.and_then(parse_rfc3339) {
        Some(t) if t <= epoch => time.unwrap_or_default().to_string(),
        _ => rfc3339(epoch),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.678+01:00`).
fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// The manifest of the image and its media type.
fn manifest(
    config: &Bytes,
    layers: &[ImageLayer],
    types: MediaTypes,
    annotations: &BTreeMap<String, String>,
) -> Result<(Bytes, String)> {
    let (manifest_type, config_type) = match types {
        MediaTypes::Oci => (OCI_IMAGE_MEDIA_TYPE, IMAGE_CONFIG_MEDIA_TYPE),
        MediaTypes::Docker => (IMAGE_MANIFEST_MEDIA_TYPE, IMAGE_DOCKER_CONFIG_MEDIA_TYPE),
    };
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_string()),
        config: OciDescriptor {
            media_type: config_type.to_string(),
            digest: oci::sha256(config),
            size: config.len() as i64,
            ..OciDescriptor::default()
        },
        layers: layers
            .iter()
            .map(|l| OciDescriptor {
                media_type: layer_media_type(&l.descriptor.media_type, types).to_string(),
                ..l.descriptor.clone()
            })
            .collect(),
        annotations: (!annotations.is_empty()).then(|| annotations.clone().into_iter().collect()),
        ..OciImageManifest::default()
    };
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| workspace_err(format!("manifest: {e}")))?;
    Ok((Bytes::from(bytes), manifest_type.to_string()))
}

/// A layer's media type in the manifest's vocabulary (BuildKit converts the same way).
fn layer_media_type(media_type: &str, types: MediaTypes) -> &str {
    match (types, media_type) {
        (MediaTypes::Oci, IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE) => IMAGE_LAYER_GZIP_MEDIA_TYPE,
        (MediaTypes::Oci, IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE) => IMAGE_LAYER_MEDIA_TYPE,
        (MediaTypes::Oci, DOCKER_FOREIGN_LAYER) => IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE,
        (MediaTypes::Docker, IMAGE_LAYER_GZIP_MEDIA_TYPE) => IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
        (MediaTypes::Docker, IMAGE_LAYER_MEDIA_TYPE) => IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
        (MediaTypes::Docker, IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE) => DOCKER_FOREIGN_LAYER,
        (_, other) => other,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(empty: bool) -> History {
        History {
            empty_layer: empty,
            ..History::default()
        }
    }

    #[test]
    fn history_gets_entries_for_layers_without_any() {
        let h = history_for(vec![entry(false), entry(true), entry(false)], 2).expect("fits");
        assert_eq!(h.len(), 3);
        let h = history_for(vec![entry(true), entry(false)], 3).expect("padded");
        assert_eq!(h.iter().filter(|e| !e.empty_layer).count(), 3);
        assert!(h[0].comment.is_some() && h[1].comment.is_some() && h[2].empty_layer);
        assert!(matches!(
            history_for(vec![entry(false); 3], 2),
            Err(Error::History { .. })
        ));
    }

    #[test]
    fn times_parse_and_clamp() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(
            parse_rfc3339("2026-11-26T17:01:01.123456789Z"),
            Some(1_795_712_461)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T18:01:01+01:00"),
            Some(1_795_712_461)
        );
        assert_eq!(parse_rfc3339("2026-11-26 17:01:01z"), Some(1_795_712_461));
        assert_eq!(parse_rfc3339("yesterday"), None);
        for secs in [0, 86_399, 951_782_400, 1_795_712_461, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            clamped(Some("2001-01-01T00:00:00.5Z"), 1_700_000_000),
            "2001-01-01T00:00:00.5Z"
        );
        assert_eq!(
            clamped(Some("2030-01-01T00:00:00Z"), 1_700_000_000),
            rfc3339(1_700_000_000)
        );
        assert_eq!(clamped(None, 0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn layer_types_follow_the_manifest() {
        use MediaTypes::*;
        assert_eq!(
            layer_media_type(IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, Oci),
            IMAGE_LAYER_GZIP_MEDIA_TYPE
        );
        assert_eq!(
            layer_media_type(IMAGE_LAYER_GZIP_MEDIA_TYPE, Docker),
            IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        );
        assert_eq!(
            layer_media_type(DOCKER_FOREIGN_LAYER, Oci),
            IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE
        );
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        assert_eq!(layer_media_type(zstd, Docker), zstd);
    }

    #[test]
    fn tags_and_chains() {
        assert!(valid_tag("v1.2.3-rc_1") && valid_tag("_x"));
        assert!(
            !valid_tag("") && !valid_tag(".x") && !valid_tag("a/b") && !valid_tag(&"x".repeat(129))
        );
        let plan = stagecoach_plan::plan(
            "FROM busybox AS a\nRUN true\nFROM a AS b\nRUN true\nFROM b\nCOPY --from=a /x /\n",
            &stagecoach_plan::PlanOptions::default(),
        )
        .expect("plans");
        assert_eq!(
            from_chain(&plan, &plan.target).expect("chain"),
            ["a", "b", "stage-2"]
        );
    }

    #[test]
    fn manifests_name_config_and_layers_in_one_vocabulary() {
        let layer = ImageLayer {
            descriptor: OciDescriptor {
                media_type: IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE.into(),
                digest: "sha256:aa".into(),
                size: 3,
                ..OciDescriptor::default()
            },
            diff_id: "sha256:bb".into(),
            source: BlobSource::Bytes(Bytes::new()),
        };
        let config = Bytes::from_static(b"{}");
        let (bytes, media_type) =
            manifest(&config, &[layer], MediaTypes::Oci, &BTreeMap::new()).expect("manifest");
        assert_eq!(media_type, OCI_IMAGE_MEDIA_TYPE);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["config"]["mediaType"], IMAGE_CONFIG_MEDIA_TYPE);
        assert_eq!(json["config"]["digest"], oci::sha256(b"{}"));
        assert_eq!(json["layers"][0]["mediaType"], IMAGE_LAYER_GZIP_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["size"], 3);
    }
}
