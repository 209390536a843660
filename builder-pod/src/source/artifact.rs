//! The build context as an OCI artifact (`spec.source.oci`), for builds of a directory
//! that is in no git repository: a CI job's checkout, a person's working tree.
//!
//! [`pack`] turns a directory into one tar+gzip layer, after `.dockerignore` (the
//! Dockerfile and the ignore file themselves always go, as Docker sends them), made
//! reproducible: entries sorted, owned by 0:0, every time the source date, no extended
//! attributes. The same directory and date give the same digest. [`push`] stores it
//! under its own tag and names it by digest; [`fetch`] (the source pod) reads it back,
//! every blob checked against its digest, and extracts it beneath the checkout with the
//! layers' containment.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::dockerignore::{self, Matcher};
use crate::layer::{self, GZIP_MEDIA_TYPE, ZSTD_MEDIA_TYPE};
use crate::oci::{self, Blob, BlobSource, Reference, Registry};
use bytes::Bytes;

/// The `artifactType` of a packed context.
pub const ARTIFACT_TYPE: &str = "application/vnd.stagecoach.context.v1";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI empty descriptor: an artifact's config when it has nothing to configure.
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
/// The source date of a context (RFC 3339), which the build's times are clamped to.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
/// Layer types a context may be in: ours, and the plain image layers other tools
/// (Shipwright's bundles, `oras push`) make.
const TAR_TYPES: [&str; 4] = [
    GZIP_MEDIA_TYPE,
    ZSTD_MEDIA_TYPE,
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// The most tar stream a context may unpack to.
pub const CONTEXT_BYTES: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Dockerignore(#[from] dockerignore::Error),
    #[error("the context {reference} is not in the registry")]
    NotFound { reference: String },
    #[error("the context {reference}: {message}")]
    Invalid { reference: String, message: String },
    #[error("the context {reference}")]
    Registry {
        reference: String,
        #[source]
        source: Box<oci::Error>,
    },
    #[error("the context {reference} cannot be unpacked")]
    Extract {
        reference: String,
        #[source]
        source: layer::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable reason the source pod reports.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "ContextNotFound",
            Error::Invalid { .. } | Error::Extract { .. } => "ContextArtifactInvalid",
            // Bytes that are not their digest: tampered with, or a broken store.
            Error::Registry { source, .. } if is_digest_mismatch(source) => {
                "ContextArtifactInvalid"
            }
            Error::Registry { source, .. } => source.reason(),
            Error::Read { .. } | Error::Write { .. } => "WorkspaceFailed",
            Error::Dockerignore(_) => "DockerignoreInvalid",
        }
    }
}

/// Whether the registry sent a manifest or blob whose digest is not the one asked for
/// (not a transfer or disk failure).
fn is_digest_mismatch(error: &oci::Error) -> bool {
    match error {
        oci::Error::Invalid { .. } => true,
        oci::Error::Blob { source, .. } => source.kind() == io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// A packed context, ready to push.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The tar+gzip layer file.
    pub layer: PathBuf,
    pub layer_digest: String,
    pub layer_size: u64,
    /// Files, symlinks and directories in it.
    pub entries: u64,
    /// Files and directories `.dockerignore` left out.
    pub ignored: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
    pub source_date_epoch: i64,
    pub manifest: Bytes,
    pub manifest_digest: String,
}

/// What goes into the tar, in order.
enum Item {
    Dir(String, u32),
    File(String, PathBuf, u32, u64),
    Symlink(String, PathBuf),
}

/// Packs `dir` into `out` (a file path). `dockerfile` is the Dockerfile's path relative
/// to `dir` when it is inside; `source_date_epoch` defaults to the newest modification
/// time of the packed files, so an unchanged directory packs the same. `.git` is never
/// packed.
pub fn pack(
    dir: &Path,
    dockerfile: Option<&str>,
    source_date_epoch: Option<i64>,
    out: &Path,
) -> Result<Packed> {
    let root = fs::canonicalize(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let ignore = dockerignore::read_ignore_file(&root, &root, dockerfile)?;
    let always: Vec<String> = dockerfile
        .into_iter()
        .map(dockerignore::clean)
        .chain(ignore.as_ref().map(|(name, _)| name.clone()))
        .collect();
    let mut walk = Walk {
        matcher: ignore.map(|(_, m)| m),
        always,
        items: Vec::new(),
        ignored: 0,
        newest: 0,
    };
    walk.dir(dir, "")?;
    let epoch = source_date_epoch.unwrap_or(walk.newest);
    let write_err = |source| Error::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = fs::File::create(out).map_err(write_err)?;
    let hashing = layer::Hashing::new(io::BufWriter::new(file));
    let gzip = flate2::GzBuilder::new().write(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    let mut content_bytes = 0;
    for item in &walk.items {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(u64::try_from(epoch).unwrap_or(0));
        match item {
            Item::Dir(name, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, format!("{name}/"), io::empty())
                    .map_err(write_err)?;
            }
            Item::File(name, path, mode, size) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                let file = fs::File::open(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                // A file that grows while it is packed must not break the tar.
                let mut content = file.take(*size);
                let mut counted = CountingReader::new(&mut content);
                tar.append_data(&mut header, name, &mut counted)
                    .map_err(write_err)?;
                if counted.read != *size {
                    return Err(Error::Read {
                        path: path.clone(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was packed",
                        ),
                    });
                }
                content_bytes += size;
            }
            Item::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, name, target)
                    .map_err(write_err)?;
            }
        }
    }
    let gzip = tar.into_inner().map_err(write_err)?;
    let (mut writer, layer_digest, layer_size) = gzip.finish().map_err(write_err)?.finish();
    writer.flush().map_err(write_err)?;
    let manifest = manifest(&layer_digest, layer_size, epoch);
    Ok(Packed {
        layer: out.to_path_buf(),
        manifest_digest: oci::sha256(&manifest),
        manifest,
        layer_digest,
        layer_size,
        entries: walk.items.len() as u64,
        ignored: walk.ignored,
        content_bytes,
        source_date_epoch: epoch,
    })
}

fn manifest(layer_digest: &str, layer_size: u64, epoch: i64) -> Bytes {
    let created = jiff::Timestamp::from_second(epoch)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": oci::sha256(EMPTY), "size": EMPTY.len()},
        "layers": [{"mediaType": GZIP_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}],
        "annotations": {CREATED_ANNOTATION: created},
    });
    Bytes::from(serde_json::to_vec(&manifest).expect("a manifest serialises"))
}

struct Walk {
    matcher: Option<Matcher>,
    /// Paths sent whatever the patterns say (the Dockerfile, the ignore file).
    always: Vec<String>,
    items: Vec<Item>,
    ignored: u64,
    newest: i64,
}

impl Walk {
    fn ignored(&self, rel: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_ignored(rel))
            && !self.always.iter().any(|a| a == rel)
    }

    /// Whether something under `rel` must be sent even if `rel` is ignored.
    fn may_keep_below(&self, rel: &str) -> bool {
        let prefix = format!("{rel}/");
        self.matcher.as_ref().is_some_and(Matcher::has_exclusions)
            || self.always.iter().any(|a| a.starts_with(&prefix))
    }

    /// Adds what `dir` holds; returns whether anything was added.
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<bool> {
        let read_err = |source| Error::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(read_err)?;
        names.sort();
        let before = self.items.len();
        for name in names {
            let Some(name) = name.to_str() else {
                return Err(Error::Read {
                    path: dir.join(&name),
                    source: io::Error::new(io::ErrorKind::InvalidData, "the name is not UTF-8"),
                });
            };
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let path = dir.join(name);
            let meta = fs::symlink_metadata(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let ignored = self.ignored(&child);
            let mode = meta.permissions().mode() & 0o7777;
            if name == ".git" {
                // A repository's metadata (and a CI job's token in .git/config) is never
                // published; a git source's checkout has no .git either.
                self.ignored += 1;
                continue;
            }
            if meta.is_dir() {
                if ignored && !self.may_keep_below(&child) {
                    self.ignored += 1;
                    continue;
                }
                let at = self.items.len();
                self.items.push(Item::Dir(child.clone(), mode));
                let kept = self.dir(&path, &child)?;
                if ignored && !kept {
                    self.items.truncate(at);
                    self.ignored += 1;
                    continue;
                }
            } else if ignored {
                self.ignored += 1;
                continue;
            } else if meta.is_file() {
                self.items
                    .push(Item::File(child.clone(), path.clone(), mode, meta.len()));
                // Files only: a directory's time moves when an ignored file appears in it.
                self.newest = self.newest.max(meta.mtime());
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                self.items.push(Item::Symlink(child.clone(), target));
            } else {
                // Sockets, fifos and devices: Docker's context carries no such thing.
                continue;
            }
        }
        Ok(self.items.len() > before)
    }
}

struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> Self {
        CountingReader { inner, read: 0 }
    }
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Pushes a packed context to `repository` under the tag `context-<digest prefix>` (so
/// a registry's garbage collection keeps it) and returns its reference by digest.
pub async fn push(registry: &Registry, repository: &str, packed: &Packed) -> Result<String> {
    let hex = packed.manifest_digest.trim_start_matches("sha256:");
    let tagged = format!("{repository}:context-{}", &hex[..16]);
    let registry_err = |source| Error::Registry {
        reference: tagged.clone(),
        source: Box::new(source),
    };
    let target = oci::parse_reference(&tagged).map_err(registry_err)?;
    let blobs = [
        Blob {
            digest: packed.layer_digest.clone(),
            size: packed.layer_size,
            source: BlobSource::File(packed.layer.clone()),
        },
        Blob {
            digest: oci::sha256(EMPTY),
            size: EMPTY.len() as u64,
            source: BlobSource::Bytes(Bytes::from_static(EMPTY)),
        },
    ];
    let pushed = registry
        .push(&target, &blobs, &packed.manifest, MANIFEST_TYPE, &[], 4)
        .await
        .map_err(registry_err)?;
    Ok(format!(
        "{}/{}@{}",
        target.resolve_registry(),
        target.repository(),
        pushed.digest
    ))
}

/// A context read back by the source pod.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The reference it was named by.
    pub reference: String,
    pub digest: String,
    /// From the manifest's `created` annotation; 0 without one.
    pub source_date_epoch: i64,
}

/// Fetches the context `reference` and extracts it into `dest`, downloading the layer
/// to `scratch` first.
pub async fn fetch(
    registry: &Registry,
    reference: &str,
    dest: &Path,
    scratch: &Path,
) -> Result<Fetched> {
    let registry_err = |source| Error::Registry {
        reference: reference.to_string(),
        source: Box::new(source),
    };
    let invalid = |message: String| Error::Invalid {
        reference: reference.to_string(),
        message,
    };
    let parsed: Reference = oci::parse_reference(reference).map_err(registry_err)?;
    let Some((bytes, digest)) = registry.artifact(&parsed).await.map_err(registry_err)? else {
        return Err(Error::NotFound {
            reference: reference.to_string(),
        });
    };
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the manifest is not JSON: {e}")))?;
    if manifest["mediaType"] == "application/vnd.oci.image.index.v1+json"
        || manifest["manifests"].is_array()
    {
        return Err(invalid(
            "an image index is no context: name one manifest".into(),
        ));
    }
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(invalid(format!(
            "a context is one tar layer, this artifact has {}",
            layers.len()
        )));
    };
    let media_type = layer["mediaType"].as_str().unwrap_or_default();
    let layer_digest = layer["digest"].as_str().unwrap_or_default().to_string();
    if !TAR_TYPES.contains(&media_type) {
        return Err(invalid(format!("its layer is a {media_type:?}, not a tar")));
    }
    let source_date_epoch = manifest["annotations"][CREATED_ANNOTATION]
        .as_str()
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .map(|t| t.as_second())
                .map_err(|e| invalid(format!("{CREATED_ANNOTATION} {t:?}: {e}")))
        })
        .transpose()?
        .unwrap_or(0);
    fs::create_dir_all(scratch).map_err(|source| Error::Write {
        path: scratch.to_path_buf(),
        source,
    })?;
    let archive = scratch.join("context.tar");
    let path = archive.clone();
    let downloaded = registry
        .read_blob(&parsed, &layer_digest, move |reader| {
            let mut file = fs::File::create(&path)?;
            let copied = io::copy(&mut reader.take(CONTEXT_BYTES + 1), &mut file)?;
            if copied > CONTEXT_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("the layer is larger than {CONTEXT_BYTES} bytes"),
                ));
            }
            file.sync_all()
        })
        .await;
    if let Err(e) = downloaded {
        let _ = fs::remove_file(&archive);
        return Err(registry_err(e));
    }
    let extracted = layer::apply::extract_context(&archive, dest, CONTEXT_BYTES);
    let _ = fs::remove_file(&archive);
    extracted.map_err(|source| Error::Extract {
        reference: reference.to_string(),
        source,
    })?;
    Ok(Fetched {
        reference: reference.to_string(),
        digest,
        source_date_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
    }

    fn names(layer: &Path) -> Vec<(String, u64, u64)> {
        let file = fs::File::open(layer).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.uid().expect("uid"),
                    h.mtime().expect("mtime"),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_directory_packs_to_the_same_digest_and_a_change_does_not() {
        let a = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        tree(
            a.path(),
            &[
                ("Dockerfile", "FROM scratch\n"),
                ("src/main.c", "int main;"),
            ],
        );
        let first = pack(
            a.path(),
            Some("Dockerfile"),
            Some(1_700_000_000),
            &out.path().join("1"),
        )
        .expect("pack");
        // Another directory with the same files, made at another time.
        let b = tempfile::tempdir().expect("tempdir");
        tree(
            b.path(),
            &[
                ("src/main.c", "int main;"),
                ("Dockerfile", "FROM scratch\n"),
            ],
        );
        let second = pack(
            b.path(),
            Some("Dockerfile"),
            Some(1_700_000_000),
            &out.path().join("2"),
        )
        .expect("pack");
        assert_eq!(first.manifest_digest, second.manifest_digest);
        assert_eq!(first.layer_digest, second.layer_digest);
        tree(b.path(), &[("src/main.c", "int main = 1;")]);
        let third = pack(
            b.path(),
            Some("Dockerfile"),
            Some(1_700_000_000),
            &out.path().join("3"),
        )
        .expect("pack");
        assert_ne!(first.layer_digest, third.layer_digest);
        for (_, uid, mtime) in names(&first.layer) {
            assert_eq!((uid, mtime), (0, 1_700_000_000));
        }
    }

    #[test]
    fn dockerignore_leaves_files_out_but_never_the_dockerfile_or_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        tree(
            dir.path(),
            &[
                (".dockerignore", "*\n!src\nsrc/*.o\n"),
                ("Dockerfile", "FROM scratch\n"),
                ("secret.env", "x"),
                ("build/out.bin", "x"),
                ("src/a.c", "a"),
                ("src/a.o", "o"),
                (
                    ".git/config",
                    "[http] extraheader = AUTHORIZATION: basic dG9rZW4=",
                ),
            ],
        );
        let packed =
            pack(dir.path(), Some("Dockerfile"), None, &out.path().join("l")).expect("pack");
        let got: Vec<String> = names(&packed.layer)
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(got, [".dockerignore", "Dockerfile", "src/", "src/a.c"]);
        assert_eq!(
            packed.ignored, 5,
            "secret.env, build/out.bin, build, src/a.o and .git"
        );
        assert!(packed.source_date_epoch > 0, "the newest mtime by default");
    }

    #[test]
    fn a_context_extracts_as_the_extracting_user_and_refuses_more_than_its_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        tree(
            dir.path(),
            &[("Dockerfile", "FROM scratch\n"), ("big", &"x".repeat(8192))],
        );
        let packed = pack(dir.path(), None, Some(5), &out.path().join("l")).expect("pack");
        let dest = out.path().join("ctx");
        layer::apply::extract_context(&packed.layer, &dest, 1 << 20).expect("extracts");
        let meta = fs::metadata(dest.join("big")).expect("big");
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(meta.mtime(), 5);
        let small = out.path().join("small");
        let err = layer::apply::extract_context(&packed.layer, &small, 4096).expect_err("bound");
        assert!(
            format!("{:?}", err).contains("larger than its limit"),
            "{err:?}"
        );
    }
}
