//! A cache entry: one stage's results as an OCI artifact under the immutable tag
//! `stage-<key>` of the cache repository. The manifest's config is the stage's image
//! config; its layers are the stage's layers (the very blobs images use, so pushes of
//! images mount them), then a record (the layer index and the scope), then the export
//! when the stage has one.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stagecoach_plan::scope::Scope;

use crate::oci::{self, Blob, BlobSource, Reference, Registry};
use crate::workspace::{self, LayerRecord, Workspace};

/// The `artifactType` of every entry; anything else under a `stage-` tag is no entry.
pub const ARTIFACT_TYPE: &str = "application/vnd.stagecoach.stage.v1";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The layer types an entry may hold: a stage's layers as its build compressed them.
const LAYER_TYPES: [&str; 2] = [crate::layer::GZIP_MEDIA_TYPE, crate::layer::ZSTD_MEDIA_TYPE];
const RECORD_TYPE: &str = "application/vnd.stagecoach.stage.record.v1+json";
const EXPORT_TYPE: &str = "application/vnd.stagecoach.stage.export.v1.tar";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Annotation with the key, so a registry's listing says what an entry is.
const KEY_ANNOTATION: &str = "dev.stagecoach.cache.key";
/// When the entry was stored (RFC 3339), what `cache prune` goes by.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
/// The most a record blob may be (thousands of layers fit).
const RECORD_LIMIT: u64 = 4 << 20;

/// The tag of the entry for a key.
pub fn tag(key: &str) -> String {
    format!("stage-{key}")
}

/// Whether a tag is an entry's: `stage-` and a key (64 lowercase hex digits).
pub fn is_tag(tag: &str) -> bool {
    tag.strip_prefix("stage-").is_some_and(|key| {
        key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The entry reference for a key in the cache repository.
pub fn reference(repository: &str, key: &str) -> oci::Result<Reference> {
    oci::parse_reference(&format!("{repository}:{}", tag(key)))
}

/// What an entry records beside the blobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    key: String,
    layers: Vec<LayerRecord>,
    scope: Scope,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// An entry found in the registry, not yet restored.
#[derive(Debug, Clone)]
pub struct Entry {
    reference: Reference,
    manifest: Manifest,
}

/// Why an entry is not usable: the stage then simply runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] oci::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {what}")]
    Workspace {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Looks the entry of a key up (one GET of its manifest).
pub async fn find(
    registry: &Registry,
    repository: &str,
    key: &str,
) -> Result<Option<Entry>, Error> {
    let reference = reference(repository, key)?;
    let Some((bytes, _)) = registry.artifact(&reference).await? else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Invalid(format!("{}: not an entry manifest: {e}", reference.whole()))
    })?;
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(Error::Invalid(format!(
            "{} is not a Stagecoach cache entry",
            reference.whole()
        )));
    }
    let records = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == RECORD_TYPE)
        .count();
    if records != 1 {
        return Err(Error::Invalid(format!(
            "{}: an entry has one record, this one has {records}",
            reference.whole()
        )));
    }
    Ok(Some(Entry {
        reference,
        manifest,
    }))
}

impl Entry {
    /// Puts the stage's results where its pod would have written them: layers and
    /// their index, config and scope (with `filesystem`), the export (with `export`).
    /// Every blob is checked against its digest on the way; on any failure the stage's
    /// directory is removed again, so a half restore never looks like a result.
    pub async fn restore(
        &self,
        registry: &Registry,
        ws: &Workspace,
        stage: &str,
        filesystem: bool,
        export: bool,
    ) -> Result<(), Error> {
        let result = self
            .restore_into(registry, ws, stage, filesystem, export)
            .await;
        if result.is_err() {
            let _ = workspace::empty_dir(&ws.stage_dir(stage));
        }
        result
    }

    async fn restore_into(
        &self,
        registry: &Registry,
        ws: &Workspace,
        stage: &str,
        filesystem: bool,
        export: bool,
    ) -> Result<(), Error> {
        let record_at = self
            .manifest
            .layers
            .iter()
            .find(|l| l.media_type == RECORD_TYPE)
            .expect("find() checked there is one record");
        let bytes = registry
            .blob_bytes(&self.reference, &record_at.digest, RECORD_LIMIT)
            .await?;
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!("the record of {}: {e}", self.reference.whole()))
        })?;
        let layers: Vec<&Descriptor> = self
            .manifest
            .layers
            .iter()
            .filter(|l| LAYER_TYPES.contains(&l.media_type.as_str()))
            .collect();
        let listed = record.layers.len() == layers.len()
            && record
                .layers
                .iter()
                .zip(&layers)
                .all(|(r, l)| r.digest == l.digest && r.media_type == l.media_type);
        if !listed {
            return Err(Error::Invalid(format!(
                "{}: its record does not list its layers",
                self.reference.whole()
            )));
        }
        let written = |what: &Path| {
            let what = what.display().to_string();
            move |source| Error::Workspace { what, source }
        };
        if filesystem {
            let dir = ws.layers_dir(stage);
            std::fs::create_dir_all(&dir).map_err(written(&dir))?;
            for (record, layer) in record.layers.iter().zip(&layers) {
                self.download(registry, &layer.digest, &dir.join(&record.file))
                    .await?;
            }
            let config = registry
                .blob_bytes(
                    &self.reference,
                    &self.manifest.config.digest,
                    crate::image_config::CONFIG_LIMIT,
                )
                .await?;
            let config_path = ws.config(stage);
            std::fs::write(&config_path, &config).map_err(written(&config_path))?;
            workspace::write_json(&ws.scope(stage), &record.scope)
                .map_err(written(&ws.scope(stage)))?;
            workspace::write_json(&ws.layer_index(stage), &record.layers)
                .map_err(written(&ws.layer_index(stage)))?;
        }
        if export {
            let at = self
                .manifest
                .layers
                .iter()
                .find(|l| l.media_type == EXPORT_TYPE)
                .ok_or_else(|| {
                    Error::Invalid(format!("{} has no export", self.reference.whole()))
                })?;
            self.download(registry, &at.digest, &ws.export(stage))
                .await?;
        }
        Ok(())
    }

    async fn download(&self, registry: &Registry, digest: &str, to: &Path) -> Result<(), Error> {
        let path = to.to_path_buf();
        let result = registry
            .read_blob(&self.reference, digest, move |reader| {
                let mut file = std::fs::File::create(&path)?;
                std::io::copy(reader, &mut file)?;
                file.sync_all()
            })
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(to);
        }
        Ok(result?)
    }
}

/// Pushes the results of `stage` (on the workspace) as the entry of `key`. Blobs the
/// repository has are skipped, those of `image` (just pushed there) are mounted.
pub async fn store(
    registry: &Registry,
    repository: &str,
    key: &str,
    ws: &Workspace,
    stage: &str,
    image: &Reference,
) -> Result<oci::Pushed, Error> {
    let target = reference(repository, key)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Workspace {
            what: path.display().to_string(),
            source,
        })
    };
    let config = Bytes::from(read(&ws.config(stage))?);
    let layers: Vec<LayerRecord> =
        workspace::read_json(&ws.layer_index(stage)).map_err(|source| Error::Workspace {
            what: ws.layer_index(stage).display().to_string(),
            source,
        })?;
    let scope: Scope =
        workspace::read_json(&ws.scope(stage)).map_err(|source| Error::Workspace {
            what: ws.scope(stage).display().to_string(),
            source,
        })?;
    let record = Bytes::from(
        serde_json::to_vec(&Record {
            key: key.to_string(),
            layers: layers.clone(),
            scope,
        })
        .expect("a record serialises"),
    );
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    for layer in &layers {
        let path = ws.layers_dir(stage).join(&layer.file);
        // A blob already in the image's repository is mounted, not uploaded again.
        let source = if registry
            .blob_exists(image, &layer.digest)
            .await
            .unwrap_or(false)
        {
            BlobSource::Image(image.clone())
        } else {
            BlobSource::File(path)
        };
        blobs.push(Blob {
            digest: layer.digest.clone(),
            size: layer.size,
            source,
        });
        descriptors.push(descriptor(&layer.media_type, &layer.digest, layer.size));
    }
    let record_digest = oci::sha256(&record);
    descriptors.push(descriptor(RECORD_TYPE, &record_digest, record.len() as u64));
    blobs.push(Blob {
        digest: record_digest,
        size: record.len() as u64,
        source: BlobSource::Bytes(record),
    });
    let export = ws.export(stage);
    if let Ok(meta) = std::fs::metadata(&export) {
        let digest = file_sha256(&export).map_err(|source| Error::Workspace {
            what: export.display().to_string(),
            source,
        })?;
        descriptors.push(descriptor(EXPORT_TYPE, &digest, meta.len()));
        blobs.push(Blob {
            digest,
            size: meta.len(),
            source: BlobSource::File(export),
        });
    }
    let config_digest = oci::sha256(&config);
    blobs.push(Blob {
        digest: config_digest.clone(),
        size: config.len() as u64,
        source: BlobSource::Bytes(config.clone()),
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_TYPE, &config_digest, config.len() as u64),
        "layers": descriptors,
        "annotations": {
            KEY_ANNOTATION: key,
            CREATED_ANNOTATION: jiff::Timestamp::now().to_string(),
        },
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("a manifest serialises"));
    Ok(registry
        .push(&target, &blobs, &manifest, MANIFEST_TYPE, &[], 4)
        .await?)
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size,
    }
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
