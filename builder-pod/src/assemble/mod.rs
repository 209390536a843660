//! `stagecoach-builder assemble`: the target stage as an image in a registry.
//!
//! Pipeline: read the plan → fetch the base image (manifest for the plan's platform,
//! config; [`base`]) → build the target's layers here, through the shared executor on
//! the image's tree in memory, when it only copies (no stage pod ran it) → the layers of
//! the FROM chain from the workspace → the image config and manifest ([`image`]) → push
//! ([`crate::oci`]) → report (`pods/<pod>/report.json` and the termination message).

mod base;
mod image;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache;
use crate::exec::{self, Executor, Pod, Sources, StageError, StageReport};
use crate::fs::filetree::FileTree;
use crate::fs::tree::MemoryTree;
use crate::image_config::{self, ImageConfig};
use crate::layer::{self, LayerInfo};
use crate::oci::{self, Blob, BlobCounts, BlobSource, Reference, Registry};
use crate::workspace::{self, Workspace};
use base::{BaseImage, ImageLayer};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stagecoach_plan::PlatformsFile;
use stagecoach_plan::contract::{
    Base, Execution, Plan, PlatformImage, PodOutcome, Stage, Warning, WarningKind,
};

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
    /// What went wrong with one platform's image of an index.
    #[error("{platform}: {source}")]
    Platform {
        platform: String,
        source: Box<Error>,
    },
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
            Error::Platform { source, .. } => source.reason(),
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
    /// How the layers built here are compressed.
    pub compression: layer::Compression,
    pub registry: oci::Settings,
    /// Blobs transferred at the same time.
    pub jobs: usize,
    /// The stage cache, where the stages this build ran are stored after the push.
    pub cache: Option<cache::Settings>,
    /// Store the stages that ran in the cache and push no image: after a failed build,
    /// so that the next one resumes from the failed stage.
    pub cache_only: bool,
}

/// What the assemble pod did, written to `pods/<pod>/report.json`.
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
    /// In a build for several platforms, each one's image in the index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformImage>,
    /// Layers of the image (of every platform's image).
    pub layers: usize,
    pub blobs: BlobCounts,
    pub timings: Timings,
    /// Stages stored in the stage cache, and what could not be stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cached: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// Storing the stages that ran in the stage cache.
    pub cache_ms: u64,
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
        platforms: report.platforms.clone(),
        warnings: report
            .warnings
            .iter()
            .map(|message| Warning {
                kind: WarningKind::CacheUnavailable,
                message: message.clone(),
                line: None,
            })
            .collect(),
        ..PodOutcome::default()
    }
}

/// The pod's pipeline, each step timed into the report.
async fn assemble(opts: &AssembleOptions, report: &mut AssembleReport) -> Result<()> {
    let (parts, platforms) = platform_parts(&opts.workspace)?;
    let target_ref = destination(opts)?;
    let registry = Registry::new(&opts.registry)?;
    if !opts.cache_only {
        match &platforms {
            None => {
                let (ws, plan) = &parts[0];
                let (pushed, media_type) =
                    build_and_push(opts, &registry, ws, plan, &target_ref, true, report).await?;
                report.media_type = Some(media_type);
                report.manifest_size = Some(pushed.manifest_size);
                report.image = Some(format!("{}@{}", target_ref.whole(), pushed.digest));
                report.digest = Some(pushed.digest);
            }
            Some(_) => push_index(opts, &registry, &parts, &target_ref, report).await?,
        }
        report.tags = opts.tags.clone();
    }
    if let Some(cache) = opts
        .cache
        .as_ref()
        .filter(|c| c.mode == cache::Mode::ReadWrite)
    {
        let started = Instant::now();
        for (i, (ws, plan)) in parts.iter().enumerate() {
            // A stage the platforms share ran once, in the first platform's part.
            let mut plan = plan.clone();
            if let Some(file) = platforms.as_ref().filter(|_| i > 0) {
                for stage in &mut plan.stages {
                    if file.shared_stages.contains(&stage.id) {
                        stage.cache = None;
                    }
                }
            }
            let stored = cache::store(&plan, ws, &registry, cache, &target_ref).await;
            report.cached.extend(stored.stages);
            report.warnings.extend(stored.warnings);
        }
        report.timings.cache_ms = millis(started);
    }
    Ok(())
}

/// Each target platform's part of the workspace with its plan.
type Parts = Vec<(Workspace, Plan)>;

/// The parts of the build: the root alone, or every platform of `platforms.json`, in
/// its order.
fn platform_parts(ws: &Workspace) -> Result<(Parts, Option<PlatformsFile>)> {
    let file: Option<PlatformsFile> = match workspace::read_json(&ws.platforms()) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(workspace_err(format!("the platforms of the build: {e}"))),
    };
    let parts = match &file {
        None => vec![ws.clone()],
        Some(file) => file
            .platforms
            .iter()
            .map(|p| ws.for_platform(&p.to_string()))
            .collect(),
    };
    let parts = parts
        .into_iter()
        .map(|part| read_plan(&part).map(|plan| (part, plan)))
        .collect::<Result<Vec<_>>>()?;
    Ok((parts, file))
}

/// One image per platform, named by its digest, then the index over them under every
/// tag: nothing is tagged before every platform's image is in.
async fn push_index(
    opts: &AssembleOptions,
    registry: &Registry,
    parts: &[(Workspace, Plan)],
    target_ref: &Reference,
    report: &mut AssembleReport,
) -> Result<()> {
    let mut manifests = Vec::new();
    for (ws, plan) in parts {
        let (pushed, media_type) =
            build_and_push(opts, registry, ws, plan, target_ref, false, report)
                .await
                .map_err(|e| Error::Platform {
                    platform: plan.platform.to_string(),
                    source: Box::new(e),
                })?;
        report.platforms.push(PlatformImage {
            platform: plan.platform.to_string(),
            digest: pushed.digest.clone(),
        });
        manifests.push(image::PlatformManifest {
            platform: plan.platform.clone(),
            digest: pushed.digest,
            size: pushed.manifest_size,
            media_type,
        });
    }
    let (index, media_type) = image::index(&manifests, opts.media_types)?;
    let started = Instant::now();
    let pushed = registry
        .push(target_ref, &[], &index, &media_type, &opts.tags, opts.jobs)
        .await?;
    report.timings.push_ms += millis(started);
    report.image = Some(format!("{}@{}", target_ref.whole(), pushed.digest));
    report.digest = Some(pushed.digest);
    report.media_type = Some(media_type);
    report.manifest_size = Some(pushed.manifest_size);
    Ok(())
}

/// The target's layers (built here when it only copies) over its base's, pushed as the
/// image: under the build's tags, or (`tagged` false) under its digest alone.
async fn build_and_push(
    opts: &AssembleOptions,
    registry: &Registry,
    ws: &Workspace,
    plan: &Plan,
    target_ref: &Reference,
    tagged: bool,
    report: &mut AssembleReport,
) -> Result<(oci::Pushed, String)> {
    let chain = exec::from_chain(plan, &plan.target)?;
    let target = stage(plan, &plan.target)?.clone();
    let started = Instant::now();
    let base = match &stage(plan, &chain[0])?.base {
        Base::Image { reference, digest } => {
            Some(base::fetch(registry, reference, digest.as_deref(), plan).await?)
        }
        Base::Scratch | Base::Stage { .. } => None,
    };
    report.timings.base_ms += millis(started);
    if !matches!(target.execution, Execution::Pod { .. }) {
        let below = &chain[..chain.len() - 1];
        build_target(
            opts,
            registry,
            ws,
            plan,
            &target,
            below,
            base.as_ref(),
            report,
        )
        .await?;
    }

    let mut layers: Vec<ImageLayer> = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
    for id in &chain {
        layers.extend(base::stage_layers(ws, stage(plan, id)?)?);
    }
    push_image(
        opts, registry, ws, plan, target_ref, &layers, tagged, report,
    )
    .await
}

fn read_plan(ws: &Workspace) -> Result<Plan> {
    let text = std::fs::read_to_string(ws.plan())
        .map_err(|e| workspace_err(format!("cannot read the plan {}: {e}", ws.plan().display())))?;
    Plan::from_json(&text).map_err(|e| workspace_err(crate::error::chain(&e)))
}

/// Where to push, checked before any work: a tag (the digest comes from the push) and
/// valid extra tags.
fn destination(opts: &AssembleOptions) -> Result<Reference> {
    let target_ref = oci::parse_reference(&opts.image)?;
    if target_ref.digest().is_some() {
        return Err(Error::PushByDigest(opts.image.clone()));
    }
    if let Some(bad) = opts.tags.iter().find(|t| !valid_tag(t)) {
        return Err(Error::Tag(bad.clone()));
    }
    Ok(target_ref)
}

/// A COPY-only target, built here as a stage pod would build it, by the same executor:
/// its layers, config and scope go to the workspace in the same form. Its COPY
/// destinations resolve against the tree of the image below it (`below`: the stages of
/// its FROM chain), which only a target that changes files needs.
#[allow(clippy::too_many_arguments)]
async fn build_target(
    opts: &AssembleOptions,
    registry: &Registry,
    ws: &Workspace,
    plan: &Plan,
    target: &Stage,
    below: &[String],
    base: Option<&BaseImage>,
    report: &mut AssembleReport,
) -> Result<()> {
    let started = Instant::now();
    let tree = if base::touches_filesystem(target) {
        base::image_tree(registry, base, below, ws, opts.jobs).await?
    } else {
        FileTree::new()
    };
    // The base's file tree counts as fetching the base.
    report.timings.base_ms += millis(started);
    let started = Instant::now();
    let (config, scope) = exec::starting_point(plan, ws, target, base.map(|b| b.config.clone()))?;
    let (plan, target, ws) = (plan.clone(), target.clone(), ws.clone());
    let context = opts.context.clone();
    let epoch = opts.source_date_epoch;
    let compression = opts.compression;
    tokio::task::spawn_blocking(move || {
        let mut executor = Executor {
            plan: &plan,
            workspace: &ws,
            sources: Sources::new(context, ws.clone()),
            now: epoch.unwrap_or_else(image_config::now),
            epoch,
        };
        let mut pod = AssemblePod {
            tree: MemoryTree::new(tree),
            compression,
        };
        let mut stage_report = StageReport {
            id: target.id.clone(),
            ..StageReport::default()
        };
        executor
            .run_stage(&mut pod, &target, config, scope, &mut stage_report)
            .map(|_| ())
    })
    .await
    .map_err(Error::Task)??;
    report.timings.layers_ms += millis(started);
    Ok(())
}

/// The assemble pod's side of the executor: the image in memory, whose changes per
/// instruction are its layers.
#[derive(Debug)]
struct AssemblePod {
    tree: MemoryTree,
    compression: layer::Compression,
}

impl Pod for AssemblePod {
    type Tree = MemoryTree;

    fn tree(&mut self) -> &mut MemoryTree {
        &mut self.tree
    }

    fn layer(&mut self, out: &Path, epoch: Option<i64>) -> exec::Result<Option<LayerInfo>> {
        let entries = self.tree.take_changes();
        if entries.is_empty() {
            return Ok(None);
        }
        layer::write_nodes(&entries, out, epoch, self.compression)
            .map(Some)
            .map_err(exec::Error::Layer)
    }
}

/// The image config and manifest over `layers`, pushed with every blob the registry
/// lacks, under the tags or (`tagged` false) its digest alone; the report counts it.
#[allow(clippy::too_many_arguments)]
async fn push_image(
    opts: &AssembleOptions,
    registry: &Registry,
    ws: &Workspace,
    plan: &Plan,
    target_ref: &Reference,
    layers: &[ImageLayer],
    tagged: bool,
    report: &mut AssembleReport,
) -> Result<(oci::Pushed, String)> {
    let stage_config: ImageConfig = workspace::read_json(&ws.config(&plan.target))
        .map_err(|e| workspace_err(format!("the config of stage {}: {e}", plan.target)))?;
    let config = image::config(stage_config, layers, opts, plan)?;
    let config_bytes = Bytes::from(
        serde_json::to_vec(&config).map_err(|e| workspace_err(format!("config: {e}")))?,
    );
    let (manifest, media_type) =
        image::manifest(&config_bytes, layers, opts.media_types, &opts.annotations)?;
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
    let pushed = match tagged {
        true => {
            registry
                .push(
                    target_ref,
                    &blobs,
                    &manifest,
                    &media_type,
                    &opts.tags,
                    opts.jobs,
                )
                .await?
        }
        false => {
            registry
                .push_untagged(target_ref, &blobs, &manifest, &media_type, opts.jobs)
                .await?
        }
    };
    report.timings.push_ms += millis(started);
    report.layers += layers.len();
    report.blobs.add(&pushed.blobs);
    Ok((pushed, media_type))
}

fn stage<'a>(plan: &'a Plan, id: &str) -> Result<&'a Stage> {
    plan.stage(id)
        .ok_or_else(|| workspace_err(format!("no stage {id:?} in the plan")))
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

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::image::*;
    use super::*;
    use crate::image_config::{History, rfc3339};
    use oci_client::manifest::{
        IMAGE_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE,
        IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    };

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
            exec::from_chain(&plan, &plan.target).expect("chain"),
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
