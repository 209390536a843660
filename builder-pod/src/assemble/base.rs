//! The image below a target: its base image (fetched for the plan's platform) and the
//! layers its FROM chain left on the workspace, as blobs to push and as a file tree for
//! a COPY-only target's destinations.

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::OciDescriptor;
use stagecoach_plan::contract::{Execution, Plan, Stage};
use stagecoach_plan::instruction::Kind;

use super::{Error, Result, workspace_err};
use crate::fs::filetree::{self, FileTree};
use crate::image_config::{CONFIG_LIMIT, ImageConfig};
use crate::oci::{self, BlobSource, Reference, Registry};
use crate::workspace::{self, LayerRecord, Workspace};

/// One layer of the image: its descriptor, its diff id and where its bytes are.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub descriptor: OciDescriptor,
    pub diff_id: String,
    pub source: BlobSource,
}

/// The image the target's FROM chain starts from.
#[derive(Debug)]
pub struct BaseImage {
    /// Pinned to the manifest's digest.
    pub reference: Reference,
    pub config: ImageConfig,
    pub layers: Vec<ImageLayer>,
}

/// The base image's manifest for the plan's platform and its config.
pub async fn fetch(
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
pub fn stage_layers(ws: &Workspace, stage: &Stage) -> Result<Vec<ImageLayer>> {
    if stage.execution == Execution::Nothing {
        return Ok(Vec::new());
    }
    let records: Vec<LayerRecord> = workspace::read_json(&ws.layer_index(&stage.id))
        .map_err(|e| workspace_err(format!("the layers of stage {}: {e}", stage.id)))?;
    Ok(records
        .into_iter()
        .map(|r| ImageLayer {
            descriptor: OciDescriptor {
                media_type: r.media_type,
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
pub fn touches_filesystem(stage: &Stage) -> bool {
    stage.instructions.iter().any(|i| {
        matches!(
            i.kind,
            Kind::Copy(_) | Kind::Workdir { .. } | Kind::Volume { .. }
        )
    })
}

/// The file tree of the image below the target: the base's layers (their headers,
/// streamed from the registry, `jobs` at a time), then the layers of the chain's stages.
pub async fn image_tree(
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

/// The headers of a layer blob, gzip, zstd or plain tar (by its first bytes).
fn read_layer(blob: &mut dyn std::io::Read) -> std::io::Result<filetree::LayerChanges> {
    let stream = crate::layer::decompressed(std::io::BufReader::new(blob))?;
    filetree::read_layer(stream).map_err(std::io::Error::other)
}
