//! Registry access for build pods: credentials from a Docker `config.json`, oci-client's
//! authorization (HTTP basic, or the bearer-token flow a registry's challenge asks for),
//! and the distribution API requests that reading a base image and pushing an image
//! need, retried when the registry or the network fails for a moment.
//!
//! oci-client authorizes; the requests themselves go out through reqwest with that
//! authorization, because a push has to see each response's status and headers: a 429
//! says how long to wait (`Retry-After`), a declined cross-repository mount (202) turns
//! into an upload, and a streamed upload that fails starts again from the beginning.
//!
//! The client core is here: the errors, the settings, [`Registry`] and the one request
//! path every call takes (authorize, send, sort out the response, retry). What it
//! does with registries is in submodules, each adding an `impl Registry` block:
//! `pull` (manifests, the digest a reference resolves to, blobs) and `push` (blob
//! uploads and mounts, manifests under tags). `auth` reads credentials, `retry` decides
//! when and how long to wait, `platform` picks an index's entry for a platform. The
//! public items of all of them are re-exported here, so `crate::oci::X` is the one path.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use sha2::{Digest as _, Sha256};

mod auth;
mod platform;
mod pull;
mod push;
mod retry;

pub use auth::Credentials;
pub use oci_client::Reference;
pub use platform::select_platform;
pub use pull::{Manifest, ManifestBytes, Resolved, manifest_media_type, read_manifest, resolve};
pub use push::{Blob, BlobCounts, BlobSource, Pushed};
pub use retry::RetryPolicy;

use retry::{Attempt, Retries, retry_after, transient};

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
    #[error(
        "push to {registry}/{repository} denied: {detail}; `output.pushSecretRef` must name a Secret with push rights to that repository (`--secret NAME=DIR` for the local runner)"
    )]
    PushDenied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error(
        "pull from {registry}/{repository} denied: {detail}; `spec.imagePullSecrets` must name a Secret that may pull it"
    )]
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
    #[error(
        "registry {registry} answers in plain HTTP, not HTTPS: let the build reach it over HTTP with `output.insecureRegistry: true` (the output registry), the operator's `--insecure-registry {registry}` (chart value `insecureRegistries`), or `stagecoach local build --insecure-registry {registry}`"
    )]
    NotTls { registry: String },
    #[error(
        "registry {registry} speaks HTTPS but is listed as a plain-HTTP registry: remove it from `--insecure-registry` / `insecureRegistries` (or `output.insecureRegistry`)"
    )]
    TlsOnly { registry: String },
    #[error(
        "the certificate of registry {registry} is not signed by an authority the builder trusts ({detail}): use a certificate from a public authority, or, for a registry on a private network only, list it as insecure (plain HTTP)"
    )]
    UntrustedCertificate { registry: String, detail: String },
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
            Error::NotTls { .. } | Error::TlsOnly { .. } => "RegistryTransportMismatch",
            Error::UntrustedCertificate { .. } => "RegistryCertificateUntrusted",
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
                if let Some(mistake) = transport_mistake(reference.registry(), &why) {
                    return Err(mistake);
                }
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
            Err(e) => {
                let why = crate::error::chain(&e);
                if let Some(mistake) = transport_mistake(reference.registry(), &why) {
                    return Err(mistake);
                }
                return match transient(&e) {
                    true => Ok(Attempt::Again {
                        retry_after: None,
                        why: format!("{what}: {why}"),
                    }),
                    false => Err(Error::Protocol {
                        what,
                        status: 0,
                        message: why,
                    }),
                };
            }
        };
        self.classify(reference, op, what, response, ok).await
    }

    /// What a response means: done when its status is one of `ok`; else, by status, a
    /// new authorization (401), a retry (429, 408, 5xx) or an error.
    async fn classify(
        &self,
        reference: &Reference,
        op: RegistryOperation,
        what: String,
        response: Response,
        ok: &[StatusCode],
    ) -> Result<Attempt> {
        let status = response.status();
        if ok.contains(&status) {
            return Ok(Attempt::Done(response));
        }
        let retry_after = retry_after(response.headers());
        let message = error_message(response).await;
        if status == StatusCode::BAD_REQUEST && message.contains("HTTP request to an HTTPS server")
        {
            return Err(Error::TlsOnly {
                registry: reference.registry().to_string(),
            });
        }
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

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `sha256:` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A runtime for the async work of one command (two cores: two workers).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// A transport error that no retry mends, said with the setting that does: TLS spoken
/// to a plain-HTTP registry (rustls sees a corrupt record), or a certificate of an
/// authority the builder does not trust. (Plain HTTP spoken to a TLS registry is a 400
/// response: see [`Registry::classify`].)
fn transport_mistake(registry: &str, error: &str) -> Option<Error> {
    let registry = registry.to_string();
    if error.contains("InvalidContentType") || error.contains("received corrupt message") {
        return Some(Error::NotTls { registry });
    }
    let untrusted = [
        "UnknownIssuer",
        "unknown issuer",
        "self-signed",
        "self signed",
    ];
    if let Some(marker) = untrusted.iter().find(|m| error.contains(*m)) {
        return Some(Error::UntrustedCertificate {
            registry,
            detail: marker.to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_mistakes_name_their_fix() {
        let rustls = "error sending request: client error (Connect): received corrupt message of type InvalidContentType";
        let e = transport_mistake("127.0.0.1:5000", rustls).expect("plain HTTP");
        assert_eq!(e.reason(), "RegistryTransportMismatch");
        assert!(
            e.to_string().contains("--insecure-registry 127.0.0.1:5000"),
            "{e}"
        );
        assert!(
            e.to_string().contains("output.insecureRegistry: true"),
            "{e}"
        );
        let ca = "error sending request: invalid peer certificate: UnknownIssuer";
        let e = transport_mistake("registry.corp:443", ca).expect("unknown CA");
        assert_eq!(e.reason(), "RegistryCertificateUntrusted");
        assert!(transport_mistake("r", "connection refused").is_none());
    }

    /// A TLS client meeting a plain-HTTP registry stops at the first attempt, saying
    /// what to set, instead of retrying six times.
    #[test]
    fn tls_to_a_plain_http_registry_fails_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut connections = 0;
            listener.set_nonblocking(true).expect("nonblocking");
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        connections += 1;
                        let mut buf = [0u8; 1024];
                        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
                        let _ = stream.read(&mut buf);
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
            connections
        });
        let settings = Settings {
            retry: RetryPolicy {
                attempts: 6,
                ..RetryPolicy::default()
            },
            ..Settings::default()
        };
        let platform: stagecoach_plan::Platform = "linux/amd64".parse().expect("platform");
        let result = runtime().expect("runtime").block_on(async {
            let registry = Registry::new(&settings)?;
            let reference = parse_reference(&format!("{addr}/app:1"))?;
            registry.manifest(&reference, &platform).await
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = result.expect_err("plain HTTP");
        assert!(matches!(e, Error::NotTls { .. }), "{e}");
        assert_eq!(server.join().expect("server"), 1, "one attempt, no retries");
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
            "push to r/a/b denied: 401 Unauthorized: authentication required; \
             `output.pushSecretRef` must name a Secret with push rights to that repository \
             (`--secret NAME=DIR` for the local runner)"
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
