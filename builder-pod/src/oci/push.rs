//! Pushing images: each blob the repository lacks, skipped when it is there, mounted
//! from another repository of the same registry, else uploaded in one streamed PUT
//! that starts over when it fails; then the manifest under each tag, last, so that a
//! failed push tags nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::RegistryOperation;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::retry::Retries;
use super::{Error, Reference, Registry, Result, sha256};

/// Bytes per read of a layer file being uploaded.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A blob of an image to push, and where its bytes come from.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub source: BlobSource,
}

#[derive(Debug, Clone)]
pub enum BlobSource {
    /// A layer file on the workspace, streamed from disk.
    File(PathBuf),
    /// Small blobs made in memory (the image config).
    Bytes(Bytes),
    /// A blob of another image: mounted when on the same registry, else streamed across.
    Image(Reference),
}

/// What a push did with the image's blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobCounts {
    /// Uploaded.
    pub pushed: usize,
    /// Already in the repository.
    pub skipped: usize,
    /// Mounted from the base image's repository.
    pub mounted: usize,
    pub bytes_pushed: u64,
}

/// A pushed image.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub manifest_size: u64,
    pub blobs: BlobCounts,
}

impl BlobCounts {
    pub fn add(&mut self, other: &BlobCounts) {
        self.pushed += other.pushed;
        self.skipped += other.skipped;
        self.mounted += other.mounted;
        self.bytes_pushed += other.bytes_pushed;
    }
}

enum BlobOutcome {
    Skipped,
    Mounted,
    Pushed(u64),
}

impl Registry {
    /// Pushes an image: every blob the repository lacks (`jobs` at a time), then the
    /// manifest under the reference's tag, then each extra tag. Nothing names the image
    /// before all its blobs are in, so a failed push leaves no tag on a partial image.
    pub async fn push(
        &self,
        target: &Reference,
        blobs: &[Blob],
        manifest: &Bytes,
        media_type: &str,
        tags: &[String],
        jobs: usize,
    ) -> Result<Pushed> {
        let blobs = self.push_blobs(target, blobs, jobs).await?;
        let digest = sha256(manifest);
        self.put_manifest(
            target,
            target.tag().unwrap_or("latest"),
            manifest,
            media_type,
            &digest,
        )
        .await?;
        for tag in tags {
            self.put_manifest(target, tag, manifest, media_type, &digest)
                .await?;
        }
        Ok(Pushed {
            digest,
            manifest_size: manifest.len() as u64,
            blobs,
        })
    }

    /// Pushes an image under its digest alone, for an image index to name.
    pub async fn push_untagged(
        &self,
        target: &Reference,
        blobs: &[Blob],
        manifest: &Bytes,
        media_type: &str,
        jobs: usize,
    ) -> Result<Pushed> {
        let blobs = self.push_blobs(target, blobs, jobs).await?;
        let digest = sha256(manifest);
        self.put_manifest(target, &digest, manifest, media_type, &digest)
            .await?;
        Ok(Pushed {
            digest,
            manifest_size: manifest.len() as u64,
            blobs,
        })
    }

    /// Every blob the repository lacks, `jobs` at a time.
    async fn push_blobs(
        &self,
        target: &Reference,
        blobs: &[Blob],
        jobs: usize,
    ) -> Result<BlobCounts> {
        let mut seen = BTreeSet::new();
        let unique: Vec<&Blob> = blobs
            .iter()
            .filter(|b| seen.insert(b.digest.clone()))
            .collect();
        let outcomes: Vec<BlobOutcome> = futures::stream::iter(unique)
            .map(|blob| self.push_blob(target, blob))
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        let mut counts = BlobCounts::default();
        for outcome in outcomes {
            match outcome {
                BlobOutcome::Skipped => counts.skipped += 1,
                BlobOutcome::Mounted => counts.mounted += 1,
                BlobOutcome::Pushed(bytes) => {
                    counts.pushed += 1;
                    counts.bytes_pushed += bytes;
                }
            }
        }
        Ok(counts)
    }

    async fn push_blob(&self, target: &Reference, blob: &Blob) -> Result<BlobOutcome> {
        if self.blob_exists(target, &blob.digest).await? {
            return Ok(BlobOutcome::Skipped);
        }
        let mut session = None;
        if let BlobSource::Image(from) = &blob.source {
            let same_registry = from.resolve_registry() == target.resolve_registry();
            if same_registry && from.repository() != target.repository() {
                match self.mount(target, from, &blob.digest).await? {
                    None => return Ok(BlobOutcome::Mounted),
                    Some(location) => session = Some(location),
                }
            }
        }
        self.upload(target, blob, session).await?;
        Ok(BlobOutcome::Pushed(blob.size))
    }

    /// Whether the repository has the blob (HEAD).
    pub async fn blob_exists(&self, target: &Reference, digest: &str) -> Result<bool> {
        let url = format!("{}/blobs/{digest}", self.base_url(target));
        let response = self
            .request(
                target,
                RegistryOperation::Push,
                |http| http.head(&url),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(response.status() == StatusCode::OK)
    }

    /// Mounts a blob from another repository of the same registry. None when mounted;
    /// else the upload session the registry opened instead (it may decline a mount).
    async fn mount(
        &self,
        target: &Reference,
        from: &Reference,
        digest: &str,
    ) -> Result<Option<String>> {
        let url = format!("{}/blobs/uploads/", self.base_url(target));
        let query = [("mount", digest), ("from", from.repository())];
        let response = self
            .request(
                target,
                RegistryOperation::Push,
                |http| http.post(&url).query(&query).header(CONTENT_LENGTH, 0),
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(None);
        }
        self.location(target, &response).map(Some)
    }

    /// Opens an upload session; returns its URL.
    async fn start_upload(&self, target: &Reference) -> Result<String> {
        let url = format!("{}/blobs/uploads/", self.base_url(target));
        let response = self
            .request(
                target,
                RegistryOperation::Push,
                |http| http.post(&url).header(CONTENT_LENGTH, 0),
                &[StatusCode::ACCEPTED],
            )
            .await?;
        self.location(target, &response)
    }

    fn location(&self, target: &Reference, response: &Response) -> Result<String> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Invalid {
                what: response.url().to_string(),
                message: "no Location for the upload".into(),
            })?;
        let base = reqwest::Url::parse(&self.base_url(target)).map_err(|e| Error::Invalid {
            what: self.base_url(target),
            message: e.to_string(),
        })?;
        base.join(location)
            .map(String::from)
            .map_err(|e| Error::Invalid {
                what: location.to_string(),
                message: e.to_string(),
            })
    }

    /// Uploads a blob in one streamed PUT. A failed attempt starts over with a new
    /// session and a new stream: the bytes are never all held in memory to replay them.
    async fn upload(&self, target: &Reference, blob: &Blob, session: Option<String>) -> Result<()> {
        let mut session = session;
        let mut retries = Retries::new(self, target, RegistryOperation::Push);
        loop {
            let location = match session.take() {
                Some(location) => location,
                None => self.start_upload(target).await?,
            };
            let mut url = reqwest::Url::parse(&location).map_err(|e| Error::Invalid {
                what: location.clone(),
                message: e.to_string(),
            })?;
            url.query_pairs_mut().append_pair("digest", &blob.digest);
            let body = self.body(&blob.source, &blob.digest).await?;
            let request = self
                .http
                .put(url)
                .header(CONTENT_LENGTH, blob.size)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body);
            let outcome = self
                .attempt(
                    target,
                    RegistryOperation::Push,
                    request,
                    &[StatusCode::CREATED],
                )
                .await?;
            if retries.after(outcome).await?.is_some() {
                return Ok(());
            }
        }
    }

    async fn body(&self, source: &BlobSource, digest: &str) -> Result<reqwest::Body> {
        Ok(match source {
            BlobSource::Bytes(bytes) => reqwest::Body::from(bytes.clone()),
            BlobSource::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    UPLOAD_CHUNK,
                ))
            }
            BlobSource::Image(from) => {
                reqwest::Body::wrap_stream(self.blob_response(from, digest).await?.bytes_stream())
            }
        })
    }

    /// Deletes a manifest by digest, and with it every tag on it; one already gone is
    /// fine. The registry must allow deletes (distribution: `storage.delete.enabled`).
    pub async fn delete_manifest(&self, repository: &Reference, digest: &str) -> Result<()> {
        let url = format!("{}/manifests/{digest}", self.base_url(repository));
        match self
            .request(
                repository,
                RegistryOperation::Push,
                |http| http.delete(&url),
                &[StatusCode::ACCEPTED, StatusCode::OK],
            )
            .await
        {
            Ok(_) | Err(Error::Protocol { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn put_manifest(
        &self,
        target: &Reference,
        tag: &str,
        manifest: &Bytes,
        media_type: &str,
        digest: &str,
    ) -> Result<()> {
        let url = format!("{}/manifests/{tag}", self.base_url(target));
        let response = self
            .request(
                target,
                RegistryOperation::Push,
                |http| {
                    http.put(&url)
                        .header(CONTENT_TYPE, media_type)
                        .body(manifest.clone())
                },
                &[StatusCode::CREATED],
            )
            .await?;
        let stored = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        match stored {
            Some(stored) if stored != digest => Err(Error::Invalid {
                what: url,
                message: format!("the registry stored the manifest as {stored}, not {digest}"),
            }),
            _ => Ok(()),
        }
    }
}
