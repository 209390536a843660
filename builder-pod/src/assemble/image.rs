//! The pushed image's config and manifest: the target stage's config with the source
//! labels, the real `rootfs.diff_ids`, a history that matches the layers and clamped
//! times; the manifest in OCI's or Docker's vocabulary.

use std::collections::BTreeMap;

use bytes::Bytes;
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageManifest,
};
use stagecoach_plan::contract::{Base, Plan, Platform};

use super::base::ImageLayer;
use super::{AssembleOptions, Error, MediaTypes, Result, workspace_err};
use crate::image_config::{self, History, ImageConfig, rfc3339};
use crate::oci;

/// Docker's foreign layers, kept as they are but named in the manifest's vocabulary.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Labels the source step's facts go to (OCI annotation names, as BuildKit uses them).
const SOURCE_LABEL: &str = "org.opencontainers.image.source";
const REVISION_LABEL: &str = "org.opencontainers.image.revision";

/// The pushed image's config: the target stage's, with the source labels, the real
/// `rootfs.diff_ids`, a history that matches the layers, and clamped times.
pub fn config(
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
    // A chain from scratch has no base image to say its platform (and its stages may be
    // shared, built once for every platform): the image is the target platform's.
    let from_scratch = crate::exec::from_chain(plan, &plan.target)
        .ok()
        .and_then(|chain| plan.stage(&chain[0]).cloned())
        .is_some_and(|root| root.base == Base::Scratch);
    if config.os.is_empty() || from_scratch {
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
                config.created = Some(rfc3339(image_config::now()));
            }
        }
    }
    Ok(config)
}

/// A history with one non-empty entry per layer. Base images made without history get
/// entries for their layers in front; more entries than layers is an error.
pub fn history_for(mut history: Vec<History>, layers: usize) -> Result<Vec<History>> {
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
pub fn clamped(time: Option<&str>, epoch: i64) -> String {
    match time.and_then(parse_rfc3339) {
        Some(t) if t <= epoch => time.unwrap_or_default().to_string(),
        _ => rfc3339(epoch),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.678+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// The manifest of the image and its media type.
pub fn manifest(
    config: &Bytes,
    layers: &[ImageLayer],
    types: MediaTypes,
    annotations: &BTreeMap<String, String>,
) -> Result<(Bytes, String)> {
    if matches!(types, MediaTypes::Docker)
        && layers
            .iter()
            .any(|l| l.descriptor.media_type == crate::layer::ZSTD_MEDIA_TYPE)
    {
        return Err(Error::Workspace(
            "zstd layers need an OCI manifest: Docker's format has no zstd".into(),
        ));
    }
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

/// One platform's pushed manifest, as an image index lists it.
#[derive(Debug, Clone)]
pub struct PlatformManifest {
    pub platform: Platform,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// The image index over one manifest per platform, in the order given (OCI's, or a
/// Docker manifest list in Docker's vocabulary, as the manifests are).
pub fn index(manifests: &[PlatformManifest], types: MediaTypes) -> Result<(Bytes, String)> {
    let media_type = match types {
        MediaTypes::Oci => OCI_IMAGE_INDEX_MEDIA_TYPE,
        MediaTypes::Docker => IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    };
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|m| {
            let mut platform = serde_json::json!({
                "architecture": m.platform.architecture,
                "os": m.platform.os,
            });
            if let Some(variant) = &m.platform.variant {
                platform["variant"] = variant.clone().into();
            }
            serde_json::json!({
                "mediaType": m.media_type,
                "digest": m.digest,
                "size": m.size,
                "platform": platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index).map_err(|e| workspace_err(format!("index: {e}")))?;
    Ok((Bytes::from(bytes), media_type.to_string()))
}

/// A layer's media type in the manifest's vocabulary (BuildKit converts the same way).
pub fn layer_media_type(media_type: &str, types: MediaTypes) -> &str {
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
