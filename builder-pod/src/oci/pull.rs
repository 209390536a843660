//! Reading images: a reference's manifest (an index resolved to the platform's entry),
//! the digest a reference resolves to (what FROM is pinned to), and blobs, small ones
//! in memory and layers streamed, their digests checked either way.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::RegistryOperation;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciImageIndex, OciImageManifest,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use stagecoach_plan::Platform;

use super::platform::{available_platforms, select_platform};
use super::{Error, Reference, Registry, Result, Settings, parse_reference, runtime, sha256};

/// The manifest types a base image may come as; indexes are resolved to a platform.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Registries refuse manifests bigger than this; so do we, before reading them whole.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// Tags asked for per page of a tag list, the pages read at most, and the most one page
/// may weigh: a repository of a hundred thousand tags is listed, no bigger one.
const TAG_PAGE: usize = 1000;
const TAG_PAGES: usize = 100;
const TAG_PAGE_LIMIT: u64 = 4 << 20;

/// An image manifest, the one for the wanted platform when the reference named an index.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub manifest: OciImageManifest,
}

/// A reference with the digest of its manifest for a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The reference as given, normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    pub digest: String,
    pub media_type: String,
}

impl Registry {
    /// The image manifest of `reference` for `platform`: an index (OCI or Docker
    /// manifest list) is resolved to the platform's entry.
    pub async fn manifest(&self, reference: &Reference, platform: &Platform) -> Result<Manifest> {
        let (bytes, media_type, digest) = self.manifest_bytes(reference).await?;
        let entry = match read_manifest(reference, &bytes, &media_type, platform)? {
            ManifestBytes::Image(manifest) => {
                return Ok(Manifest {
                    manifest: *manifest,
                    digest,
                    media_type,
                });
            }
            ManifestBytes::IndexEntry(digest) => digest,
        };
        let by_digest = reference.clone_with_digest(entry);
        let (bytes, media_type, digest) = self.manifest_bytes(&by_digest).await?;
        match read_manifest(&by_digest, &bytes, &media_type, platform)? {
            ManifestBytes::Image(manifest) => Ok(Manifest {
                manifest: *manifest,
                digest,
                media_type,
            }),
            ManifestBytes::IndexEntry(_) => Err(Error::Invalid {
                what: by_digest.whole(),
                message: "an index inside an index".into(),
            }),
        }
    }

    /// A manifest's bytes, media type and digest (checked against the reference's).
    async fn manifest_bytes(&self, reference: &Reference) -> Result<(Bytes, String, String)> {
        let url = format!(
            "{}/manifests/{}",
            self.base_url(reference),
            reference
                .digest()
                .or_else(|| reference.tag())
                .unwrap_or("latest")
        );
        let response = self
            .request(
                reference,
                RegistryOperation::Pull,
                |http| http.get(&url).header(ACCEPT, MANIFEST_TYPES.join(", ")),
                &[StatusCode::OK],
            )
            .await
            .map_err(|e| match e {
                Error::Protocol { status: 404, .. } => Error::NotFound {
                    reference: reference.whole(),
                },
                e => e,
            })?;
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = limited_body(response, MANIFEST_LIMIT, &url).await?;
        let digest = sha256(&bytes);
        if let Some(want) = reference.digest().filter(|d| *d != digest) {
            return Err(Error::Invalid {
                what: reference.whole(),
                message: format!("the registry sent a manifest with digest {digest}, not {want}"),
            });
        }
        let media_type = manifest_media_type(reference, &bytes, header_type)?;
        Ok((bytes, media_type, digest))
    }

    /// The tags of a repository, page by page; none when it does not exist yet.
    pub async fn tags(&self, repository: &Reference) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags: Vec<String> = Vec::new();
        for _ in 0..TAG_PAGES {
            let mut url = format!("{}/tags/list?n={TAG_PAGE}", self.base_url(repository));
            // Tags are [A-Za-z0-9_.-]: nothing to escape.
            if let Some(last) = tags.last() {
                url.push_str("&last=");
                url.push_str(last);
            }
            let response = match self
                .request(
                    repository,
                    RegistryOperation::Pull,
                    |http| http.get(&url),
                    &[StatusCode::OK],
                )
                .await
            {
                Err(Error::Protocol { status: 404, .. }) => return Ok(tags),
                response => response?,
            };
            let bytes = limited_body(response, TAG_PAGE_LIMIT, &url).await?;
            let page: TagList = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                what: url.clone(),
                message: format!("not a tag list: {e}"),
            })?;
            let page = page.tags.unwrap_or_default();
            // A registry that ignores `n` sends everything at once.
            let more = page.len() == TAG_PAGE;
            tags.extend(page);
            if !more {
                return Ok(tags);
            }
        }
        Ok(tags)
    }

    /// A manifest by tag or digest as it is stored (an artifact's, never resolved as an
    /// index), with its digest; None when the registry has none under that name.
    pub async fn artifact(&self, reference: &Reference) -> Result<Option<(Bytes, String)>> {
        match self.manifest_bytes(reference).await {
            Ok((bytes, _, digest)) => Ok(Some((bytes, digest))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The digest of a reference's manifest for a platform (what FROM is pinned to).
    pub async fn resolve(&self, reference: &str, platform: &Platform) -> Result<Resolved> {
        let parsed = parse_reference(reference)?;
        let manifest = self.manifest(&parsed, platform).await?;
        Ok(Resolved {
            reference: parsed.whole(),
            digest: manifest.digest,
            media_type: manifest.media_type,
        })
    }

    /// A small blob (an image config) in memory, its digest checked.
    pub async fn blob_bytes(&self, from: &Reference, digest: &str, limit: u64) -> Result<Bytes> {
        let url = format!("{}/blobs/{digest}", self.base_url(from));
        let response = self.blob_response(from, digest).await?;
        let bytes = limited_body(response, limit, &url).await?;
        let got = sha256(&bytes);
        if got != digest {
            return Err(Error::Invalid {
                what: url,
                message: format!("the registry sent a blob with digest {got}"),
            });
        }
        Ok(bytes)
    }

    pub(super) async fn blob_response(&self, from: &Reference, digest: &str) -> Result<Response> {
        let url = format!("{}/blobs/{digest}", self.base_url(from));
        self.request(
            from,
            RegistryOperation::Pull,
            |http| http.get(&url),
            &[StatusCode::OK],
        )
        .await
    }

    /// Streams a blob through `read` (on a blocking thread), checking its digest; when
    /// the transfer breaks off, the blob is fetched and read again from the start.
    pub async fn read_blob<T, F>(&self, from: &Reference, digest: &str, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut dyn Read) -> io::Result<T> + Clone + Send + 'static,
    {
        let mut failures = 0;
        loop {
            let response = self.blob_response(from, digest).await?;
            let broken = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&broken);
            let stream = response.bytes_stream().map_err(move |e| {
                flag.store(true, Ordering::Relaxed);
                io::Error::other(e)
            });
            let mut reader = HashingReader {
                inner: tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream)),
                hasher: Sha256::new(),
            };
            let read = read.clone();
            let want = digest.to_string();
            let outcome = tokio::task::spawn_blocking(move || {
                let value = read(&mut reader)?;
                io::copy(&mut reader, &mut io::sink())?;
                let got = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
                if got != want {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("content has digest {got}"),
                    ));
                }
                Ok(value)
            })
            .await
            .map_err(|e| Error::Blob {
                digest: digest.to_string(),
                source: io::Error::other(e),
            })?;
            match outcome {
                Ok(value) => return Ok(value),
                Err(e) if broken.load(Ordering::Relaxed) && failures + 1 < self.retry.attempts => {
                    failures += 1;
                    tokio::time::sleep(self.retry.backoff(failures)).await;
                    eprintln!("blob {digest}: transfer broke off ({e}), reading it again");
                }
                Err(source) => {
                    return Err(Error::Blob {
                        digest: digest.to_string(),
                        source,
                    });
                }
            }
        }
    }
}

/// What a registry's manifest bytes hold for a platform.
#[derive(Debug)]
pub enum ManifestBytes {
    Image(Box<OciImageManifest>),
    /// An index: the digest of its entry for the platform.
    IndexEntry(String),
}

/// Reads manifest bytes of `media_type` (see [`manifest_media_type`]): an image manifest,
/// or an index's entry for `platform`. Pure, so the fuzz target reaches every parse a
/// pull does with bytes a registry could send.
pub fn read_manifest(
    reference: &Reference,
    bytes: &[u8],
    media_type: &str,
    platform: &Platform,
) -> Result<ManifestBytes> {
    if !is_index(media_type) {
        return Ok(ManifestBytes::Image(Box::new(parse_manifest(
            reference, bytes,
        )?)));
    }
    let index: OciImageIndex = serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
        what: reference.whole(),
        message: format!("not an image index: {e}"),
    })?;
    let entry = select_platform(&index.manifests, platform).ok_or_else(|| Error::NoPlatform {
        reference: reference.whole(),
        platform: platform.to_string(),
        available: available_platforms(&index.manifests),
    })?;
    Ok(ManifestBytes::IndexEntry(entry.digest.to_string()))
}

/// A manifest's media type: its own `mediaType`, else the response's `Content-Type`,
/// else what its fields say it is; an error when it is none of [`MANIFEST_TYPES`].
pub fn manifest_media_type(
    reference: &Reference,
    bytes: &[u8],
    header_type: Option<String>,
) -> Result<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Typed {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let typed: Typed = serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
        what: reference.whole(),
        message: format!("manifest is not JSON: {e}"),
    })?;
    let media_type = typed
        .media_type
        .or(header_type.filter(|t| MANIFEST_TYPES.contains(&t.as_str())))
        .unwrap_or_else(|| {
            if typed.manifests.is_some() {
                OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()
            } else {
                OCI_IMAGE_MEDIA_TYPE.to_string()
            }
        });
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(Error::Invalid {
            what: reference.whole(),
            message: format!("unsupported manifest type {media_type}"),
        });
    }
    Ok(media_type)
}

async fn limited_body(response: Response, limit: u64, url: &str) -> Result<Bytes> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(Error::Invalid {
            what: url.to_string(),
            message: format!("bigger than {limit} bytes"),
        });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Invalid {
            what: url.to_string(),
            message: crate::error::chain(&e),
        })?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(Error::Invalid {
                what: url.to_string(),
                message: format!("bigger than {limit} bytes"),
            });
        }
    }
    Ok(Bytes::from(body))
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

fn parse_manifest(reference: &Reference, bytes: &[u8]) -> Result<OciImageManifest> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
        what: reference.whole(),
        message: format!("not an image manifest: {e}"),
    })
}

/// Hashes what passes through (the compressed bytes of a blob being read).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `stagecoach-builder resolve`: the digest of each reference for the platform, in order.
pub fn resolve(
    settings: &Settings,
    platform: &Platform,
    references: &[String],
) -> Result<Vec<Resolved>> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let registry = Registry::new(settings)?;
        let lookups = references.iter().map(|r| registry.resolve(r, platform));
        futures::future::try_join_all(lookups).await
    })
}
