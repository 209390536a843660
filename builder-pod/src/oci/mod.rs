//! Registry access for build pods: credentials from a Docker `config.json`, oci-client's
//! authorization (HTTP basic, or the bearer-token flow a registry's challenge asks for),
//! and the distribution API requests that reading a base image and pushing an image
//! need, retried when the registry or the network fails for a moment.
//!
//! oci-client authorizes; the requests themselves go out through reqwest with that
//! authorization, because a push has to see each response's status and headers: a 429
//! says how long to wait (`Retry-After`), a declined cross-repository mount (202) turns
//! into an upload, and a streamed upload that fails starts again from the beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION,
    RETRY_AFTER,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use stagecoach_plan::Platform;

pub use oci_client::Reference;

/// The manifest types a base image may come as; indexes are resolved to a platform.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// The longest wait a `Retry-After` header gets: a registry asking for more is down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Registries refuse manifests bigger than this; so do we, before reading them whole.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// Bytes per read of a layer file being uploaded.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}")]
    Reference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("cannot read registry credentials {path}")]
    CredentialsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("registry credentials {path} are not a Docker config.json: {message}")]
    CredentialsInvalid { path: PathBuf, message: String },
    #[error("push to {registry}/{repository} denied: {detail}")]
    PushDenied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("pull from {registry}/{repository} denied: {detail}")]
    PullDenied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("image {reference} not found")]
    NotFound { reference: String },
    #[error("image {reference} has no manifest for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry} unavailable after {attempts} attempts: {last}")]
    Unavailable {
        registry: String,
        attempts: u32,
        last: String,
    },
    #[error("{what}: {message}")]
    Protocol {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read blob {digest}")]
    Blob {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable reason word for conditions and metrics (never the message).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::PushDenied { .. } => "PushDenied",
            Error::PullDenied { .. } => "PullDenied",
            Error::NotFound { .. } | Error::NoPlatform { .. } => "BaseImageNotFound",
            Error::Unavailable { .. } => "RegistryUnavailable",
            Error::Reference { .. } => "InvalidReference",
            Error::CredentialsFile { .. } | Error::CredentialsInvalid { .. } => {
                "CredentialsInvalid"
            }
            Error::Protocol { .. } | Error::Invalid { .. } | Error::Blob { .. } => "RegistryError",
            Error::Io { .. } => "WorkspaceInvalid",
            Error::Client(_) | Error::Runtime(_) => "Internal",
        }
    }
}

/// Parses an image reference, normalised the way Docker does (`busybox` is
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference.parse().map_err(|source| Error::Reference {
        reference: reference.to_string(),
        source,
    })
}

/// How the pod reaches registries.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A Docker `config.json` (the `.dockerconfigjson` of a Kubernetes Secret).
    pub auth_file: Option<PathBuf>,
    /// Registries (`host:port`) reached over plain HTTP; every other one is HTTPS.
    pub insecure: Vec<String>,
    pub retry: RetryPolicy,
}

/// Retries of requests that failed for a moment (connection errors, 5xx, 429, 408).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failures, with up to a quarter more so that pods that
    /// failed together do not retry together.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        let base = doubled.min(self.max_delay);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 250) / 1000.0)
    }
}

/// Registry credentials by registry host, from a Docker `config.json`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    Auth(RegistryAuth),
    /// An OAuth refresh token (`identitytoken`): Docker trades it at the token endpoint,
    /// which oci-client's token flow does not do.
    IdentityToken,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl Credentials {
    /// Reads a Docker `config.json`.
    pub fn load(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::CredentialsFile {
            path: path.to_path_buf(),
            source,
        })?;
        Credentials::parse(&text).map_err(|message| Error::CredentialsInvalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The `auths` of a Docker `config.json`: `auth` (base64 `user:password`),
    /// `username`/`password`, or `registrytoken` (a bearer token) per registry.
    pub fn parse(json: &str) -> Result<Credentials, String> {
        let config: DockerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let parsed = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
                Entry::Auth(RegistryAuth::Bearer(token))
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                let text =
                    String::from_utf8(decoded).map_err(|_| format!("{key}: auth is not text"))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                Entry::Auth(RegistryAuth::Basic(user.to_string(), password.to_string()))
            } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                Entry::Auth(RegistryAuth::Basic(user, password))
            } else if entry.identitytoken.is_some() {
                Entry::IdentityToken
            } else {
                continue;
            };
            by_host.insert(host_key(&key), parsed);
        }
        Ok(Credentials { by_host })
    }

    /// The credentials for a registry (`docker.io`, `index.docker.io` and Docker's
    /// `https://index.docker.io/v1/` are one), anonymous when there are none.
    pub fn get(&self, registry: &str) -> Result<RegistryAuth, String> {
        match self.by_host.get(&host_key(registry)) {
            None => Ok(RegistryAuth::Anonymous),
            Some(Entry::Auth(auth)) => Ok(auth.clone()),
            Some(Entry::IdentityToken) => Err(format!(
                "the credentials for {registry} are an identity token, which is not supported: use a username and password or a registry token"
            )),
        }
    }
}

/// A registry's key in a `config.json`: the host without scheme or path, Docker Hub's
/// names as one.
fn host_key(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(name);
    let host = name.split('/').next().unwrap_or(name).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

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

enum BlobOutcome {
    Skipped,
    Mounted,
    Pushed(u64),
}

/// How one attempt at a request ended, when it did not fail for good.
enum Attempt {
    Done(Response),
    /// A transient failure: try again, after the registry's `Retry-After` if it gave one.
    Again {
        retry_after: Option<Duration>,
        why: String,
    },
    /// Our authorization was refused: fetch a new one once (tokens expire).
    Unauthorized {
        detail: String,
    },
}

/// A client for any number of registries, with one set of credentials.
pub struct Registry {
    oci: oci_client::Client,
    http: reqwest::Client,
    credentials: Credentials,
    insecure: Vec<String>,
    retry: RetryPolicy,
    /// `Authorization` values by (registry, repository, operation); None: anonymous.
    authorizations: Mutex<BTreeMap<(String, String, RegistryOperation), Option<HeaderValue>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("insecure", &self.insecure)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(settings: &Settings) -> Result<Registry> {
        let credentials = match &settings.auth_file {
            Some(path) => Credentials::load(path)?,
            None => Credentials::default(),
        };
        let oci = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(settings.insecure.clone()),
            ..ClientConfig::default()
        });
        let http = reqwest::Client::builder()
            .user_agent(concat!("stagecoach-builder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(Error::Client)?;
        Ok(Registry {
            oci,
            http,
            credentials,
            insecure: settings.insecure.clone(),
            retry: settings.retry,
            authorizations: Mutex::new(BTreeMap::new()),
        })
    }

    fn base_url(&self, reference: &Reference) -> String {
        let registry = reference.resolve_registry();
        let scheme = if self.insecure.iter().any(|i| i == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2/{}", reference.repository())
    }

    /// The `Authorization` header for an operation on a repository, from oci-client's
    /// token flow (a bearer token when the registry's challenge asks for one), else the
    /// credentials themselves.
    async fn authorization(
        &self,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<Result<Option<HeaderValue>, String>> {
        let key = (
            reference.resolve_registry().to_string(),
            reference.repository().to_string(),
            op,
        );
        if let Some(found) = self.lock().get(&key) {
            return Ok(Ok(found.clone()));
        }
        let auth = self
            .credentials
            .get(reference.registry())
            .map_err(|detail| self.denied(reference, op, detail))?;
        let header = match self.oci.auth(reference, &auth, op).await {
            Ok(Some(token)) => Some(bearer(&token)),
            Ok(None) => match &auth {
                RegistryAuth::Basic(user, password) => {
                    let pair = format!("{user}:{password}");
                    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                    HeaderValue::from_str(&format!("Basic {encoded}")).ok()
                }
                RegistryAuth::Bearer(token) => Some(bearer(token)),
                RegistryAuth::Anonymous => None,
            },
            Err(OciDistributionError::AuthenticationFailure(detail)) => {
                return Err(self.denied(reference, op, detail));
            }
            Err(e) => return Ok(Err(format!("authorization: {}", crate::error::chain(&e)))),
        };
        self.lock().insert(key, header.clone());
        Ok(Ok(header))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, String, RegistryOperation), Option<HeaderValue>>>
    {
        self.authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, reference: &Reference, op: RegistryOperation) {
        let key = (
            reference.resolve_registry().to_string(),
            reference.repository().to_string(),
            op,
        );
        self.lock().remove(&key);
    }

    fn denied(&self, reference: &Reference, op: RegistryOperation, detail: String) -> Error {
        let registry = reference.registry().to_string();
        let repository = reference.repository().to_string();
        match op {
            RegistryOperation::Push => Error::PushDenied {
                registry,
                repository,
                detail,
            },
            RegistryOperation::Pull => Error::PullDenied {
                registry,
                repository,
                detail,
            },
        }
    }

    /// Sends one request with authorization and sorts out the response.
    async fn attempt(
        &self,
        reference: &Reference,
        op: RegistryOperation,
        request: RequestBuilder,
        ok: &[StatusCode],
    ) -> Result<Attempt> {
        let authorization = match self.authorization(reference, op).await? {
            Ok(a) => a,
            Err(why) => {
                return Ok(Attempt::Again {
                    retry_after: None,
                    why,
                });
            }
        };
        let mut request = request.build().map_err(|e| Error::Invalid {
            what: "request".into(),
            message: crate::error::chain(&e),
        })?;
        if let Some(value) = authorization {
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let mut shown = request.url().clone();
        shown.set_query(None);
        let what = format!("{} {shown}", request.method());
        let response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) if transient(&e) => {
                return Ok(Attempt::Again {
                    retry_after: None,
                    why: format!("{what}: {}", crate::error::chain(&e)),
                });
            }
            Err(e) => {
                return Err(Error::Protocol {
                    what,
                    status: 0,
                    message: crate::error::chain(&e),
                });
            }
        };
        let status = response.status();
        if ok.contains(&status) {
            return Ok(Attempt::Done(response));
        }
        let retry_after = retry_after(response.headers());
        let message = error_message(response).await;
        let detail = if message.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {message}")
        };
        match status {
            StatusCode::UNAUTHORIZED => Ok(Attempt::Unauthorized { detail }),
            StatusCode::FORBIDDEN => Err(self.denied(reference, op, detail)),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Ok(Attempt::Again {
                retry_after,
                why: format!("{what}: {detail}"),
            }),
            s if s.is_server_error() => Ok(Attempt::Again {
                retry_after,
                why: format!("{what}: {detail}"),
            }),
            s => Err(Error::Protocol {
                what,
                status: s.as_u16(),
                message: detail,
            }),
        }
    }

    /// A request retried with backoff while it fails for a moment; `build` makes it anew
    /// for each attempt.
    async fn request(
        &self,
        reference: &Reference,
        op: RegistryOperation,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        ok: &[StatusCode],
    ) -> Result<Response> {
        let mut retries = Retries::new(self, reference, op);
        loop {
            let outcome = self.attempt(reference, op, build(&self.http), ok).await?;
            if let Some(response) = retries.after(outcome).await? {
                return Ok(response);
            }
        }
    }

    /// The image manifest of `reference` for `platform`: an index (OCI or Docker
    /// manifest list) is resolved to the platform's entry.
    pub async fn manifest(&self, reference: &Reference, platform: &Platform) -> Result<Manifest> {
        let (bytes, media_type, digest) = self.manifest_bytes(reference).await?;
        if is_index(&media_type) {
            let index: OciImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                    what: reference.whole(),
                    message: format!("not an image index: {e}"),
                })?;
            let entry =
                select_platform(&index.manifests, platform).ok_or_else(|| Error::NoPlatform {
                    reference: reference.whole(),
                    platform: platform.to_string(),
                    available: available_platforms(&index.manifests),
                })?;
            let by_digest = reference.clone_with_digest(entry.digest.clone());
            let (bytes, media_type, digest) = self.manifest_bytes(&by_digest).await?;
            if is_index(&media_type) {
                return Err(Error::Invalid {
                    what: by_digest.whole(),
                    message: "an index inside an index".into(),
                });
            }
            return Ok(Manifest {
                manifest: parse_manifest(&by_digest, &bytes)?,
                digest,
                media_type,
            });
        }
        Ok(Manifest {
            manifest: parse_manifest(reference, &bytes)?,
            digest,
            media_type,
        })
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
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Typed {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let typed: Typed = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
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
        Ok((bytes, media_type, digest))
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

    async fn blob_response(&self, from: &Reference, digest: &str) -> Result<Response> {
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
            blobs: counts,
        })
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

/// Counts the failures of one request (or upload) and waits between attempts.
struct Retries<'a> {
    registry: &'a Registry,
    reference: &'a Reference,
    op: RegistryOperation,
    failures: u32,
    reauthorized: bool,
}

impl<'a> Retries<'a> {
    fn new(registry: &'a Registry, reference: &'a Reference, op: RegistryOperation) -> Self {
        Retries {
            registry,
            reference,
            op,
            failures: 0,
            reauthorized: false,
        }
    }

    /// The response when the attempt succeeded; None after waiting when it may be tried
    /// again; an error when it may not.
    async fn after(&mut self, attempt: Attempt) -> Result<Option<Response>> {
        match attempt {
            Attempt::Done(response) => Ok(Some(response)),
            Attempt::Unauthorized { detail } => {
                if self.reauthorized {
                    return Err(self.registry.denied(self.reference, self.op, detail));
                }
                self.reauthorized = true;
                self.registry.forget(self.reference, self.op);
                Ok(None)
            }
            Attempt::Again { retry_after, why } => {
                self.failures += 1;
                let policy = &self.registry.retry;
                if self.failures >= policy.attempts {
                    return Err(Error::Unavailable {
                        registry: self.reference.registry().to_string(),
                        attempts: self.failures,
                        last: why,
                    });
                }
                let wait = retry_after
                    .map(|d| d.min(MAX_RETRY_AFTER))
                    .unwrap_or_else(|| policy.backoff(self.failures));
                eprintln!("{why}; retrying in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                Ok(None)
            }
        }
    }
}

/// Whether a transport error may go away when tried again (connection refused or reset,
/// a timeout, a body cut short).
fn transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// `Retry-After` in seconds (HTTP dates are not used by registries; they get backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The registry's error messages (the distribution API's `errors` envelope), else the
/// start of the body.
async fn error_message(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    if let Ok(envelope) = serde_json::from_str::<OciEnvelope>(&text) {
        let messages: Vec<String> = envelope
            .errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    format!("{:?}", e.code)
                } else {
                    e.message.clone()
                }
            })
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    text.trim().chars().take(300).collect()
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

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `sha256:` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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

/// The variant a platform means when it names none (containerd's normalisation).
fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// The index entry for a platform: same OS and architecture, and the same variant once
/// defaults are filled in (`arm64` is `arm64/v8`).
pub fn select_platform<'a>(
    entries: &'a [ImageIndexEntry],
    platform: &Platform,
) -> Option<&'a ImageIndexEntry> {
    let want_variant = platform
        .variant
        .as_deref()
        .or_else(|| default_variant(&platform.architecture));
    entries.iter().find(|entry| {
        entry.platform.as_ref().is_some_and(|p| {
            let arch = p.architecture.to_string();
            let variant = p.variant.as_deref().or_else(|| default_variant(&arch));
            p.os.to_string() == platform.os
                && arch == platform.architecture
                && variant == want_variant
        })
    })
}

fn available_platforms(entries: &[ImageIndexEntry]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if names.is_empty() {
        "no platforms".to_string()
    } else {
        names.join(", ")
    }
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

/// A runtime for the async work of one command (two cores: two workers).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_with_hub_aliases() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "127.0.0.1:5001": {"username": "u", "password": "p:w"},
            "http://registry.example:8443/some/path": {"auth": "YTpiOmM="},
            "ghcr.io": {"registrytoken": "tok"},
            "quay.io": {"identitytoken": "refresh"},
            "empty.example": {}
        }}"#;
        let c = Credentials::parse(json).expect("parses");
        let hub = RegistryAuth::Basic("hub".into(), "secret".into());
        for name in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
        ] {
            assert_eq!(c.get(name).expect("hub"), hub, "{name}");
        }
        assert_eq!(
            c.get("127.0.0.1:5001").expect("u"),
            RegistryAuth::Basic("u".into(), "p:w".into())
        );
        assert_eq!(
            c.get("registry.example:8443").expect("a"),
            RegistryAuth::Basic("a".into(), "b:c".into()),
            "the password is everything after the first colon"
        );
        assert_eq!(
            c.get("ghcr.io").expect("token"),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(
            c.get("elsewhere.example").expect("none"),
            RegistryAuth::Anonymous
        );
        assert_eq!(
            c.get("empty.example").expect("none"),
            RegistryAuth::Anonymous
        );
        assert!(
            c.get("quay.io")
                .expect_err("unsupported")
                .contains("identity token")
        );
        assert!(Credentials::parse(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(Credentials::parse("not json").is_err());
    }

    #[test]
    fn index_entries_match_os_architecture_and_variant() {
        let index: OciImageIndex = serde_json::from_str(
            r#"{"schemaVersion": 2, "manifests": [
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:arm", "size": 1,
               "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:arm64", "size": 1,
               "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:att", "size": 1,
               "platform": {"os": "unknown", "architecture": "unknown"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:amd64", "size": 1,
               "platform": {"os": "linux", "architecture": "amd64"}}
            ]}"#,
        )
        .expect("index");
        let pick = |p: &str| {
            select_platform(&index.manifests, &p.parse().expect("platform"))
                .map(|e| e.digest.clone())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("sha256:amd64"));
        assert_eq!(
            pick("linux/arm64").as_deref(),
            Some("sha256:arm64"),
            "arm64 means v8"
        );
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("sha256:arm"));
        assert_eq!(pick("linux/arm"), None, "arm means v7");
        assert_eq!(pick("windows/amd64"), None);
        assert_eq!(
            available_platforms(&index.manifests),
            "linux/arm/v6, linux/arm64/v8, unknown/unknown, linux/amd64"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_is_seconds() {
        let p = RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base * 5 / 4)
        };
        assert!(within(p.backoff(1), 100));
        assert!(within(p.backoff(2), 200));
        assert!(within(p.backoff(3), 350));
        assert!(within(p.backoff(30), 350));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn reasons_are_stable_words() {
        let denied = Error::PushDenied {
            registry: "r".into(),
            repository: "a/b".into(),
            detail: "401 Unauthorized: authentication required".into(),
        };
        assert_eq!(denied.reason(), "PushDenied");
        assert_eq!(
            denied.to_string(),
            "push to r/a/b denied: 401 Unauthorized: authentication required"
        );
        assert_eq!(
            Error::NotFound {
                reference: "x".into()
            }
            .reason(),
            "BaseImageNotFound"
        );
        assert_eq!(
            Error::Unavailable {
                registry: "r".into(),
                attempts: 3,
                last: "503".into()
            }
            .reason(),
            "RegistryUnavailable"
        );
        let r = parse_reference("busybox").expect("parses");
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        assert!(matches!(
            parse_reference("no spaces allowed"),
            Err(Error::Reference { .. })
        ));
    }
}
