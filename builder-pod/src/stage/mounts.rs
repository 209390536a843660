//! `RUN --mount`, emulated in the filesystem: pods cannot mount. The target gets the
//! content (bind), an empty directory (tmpfs), a link into the persistent run cache
//! (cache, see [`super::run_cache`]) or a build secret's file for the run and is put
//! back as it was afterwards, so none of it reaches the layer. An ssh mount gets a link
//! to the socket of the pod's agent (see [`super::ssh_agent`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::exec::copy::{self, CopyFlags, Source};
use crate::fs::filetree::{self, FileTree};
use crate::fs::snapshot::Snapshot;
use crate::fs::tree::DiskTree;
use crate::image_config;

use super::run_cache::{CacheMount, Sharing};

/// The largest build secret a RUN mounts: a Kubernetes Secret holds at most 1 MiB.
pub const SECRET_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--mount={0}: target is required")]
    NoTarget(String),
    #[error("--mount=type={0} is not supported")]
    Unsupported(String),
    #[error("--mount={mount}: {message}")]
    Invalid { mount: String, message: String },
    #[error(
        "secret {0:?} is required but the build gives none (add it to spec.secrets, or --secret for a local build)"
    )]
    SecretMissing(String),
    #[error("ssh id {0:?} is required but the build gives no key for it (add it to spec.ssh)")]
    SshMissing(String),
    #[error("cannot write the ssh known hosts {path}")]
    KnownHosts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lend the ssh agent socket {path}")]
    SshSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read secret {id:?}")]
    SecretRead {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--mount target {target}")]
    Target {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--mount source {0}")]
    Content(String, #[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One `--mount` as the RUN needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Absolute in the stage's root; none for a secret given only as `env=`.
    pub target: Option<String>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The stage it reads from (the context when none) and the path.
    Bind {
        from: Option<String>,
        source: String,
    },
    /// An empty directory (tmpfs).
    Empty,
    Cache(CacheMount),
    Secret(SecretMount),
    Ssh(SshMount),
}

/// `type=ssh` with BuildKit's defaults: id `default`, socket mode 0600 root, optional.
/// Without a target the socket goes to `/run/buildkit/ssh_agent.<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshMount {
    pub id: String,
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `type=secret` with BuildKit's defaults: file mode 0400, owned by root, optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub id: String,
    /// The variable that also (or only) holds the value (`env=`).
    pub env: Option<String>,
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Spec {
    /// Parses an expanded `--mount` value; relative targets are under `workdir`.
    pub fn parse(value: &str, workdir: &str) -> Result<Spec, Error> {
        let fields: BTreeMap<String, String> = value
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| match f.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), v.to_string()),
                None => (f.to_ascii_lowercase(), "true".into()),
            })
            .collect();
        let invalid = |message: String| Error::Invalid {
            mount: value.to_string(),
            message,
        };
        let target = ["target", "dst", "destination"]
            .iter()
            .find_map(|k| fields.get(*k))
            .filter(|t| !t.is_empty())
            .map(|t| image_config::join_workdir(workdir, t));
        let number = |key: &str, radix: u32, default: u32| match fields.get(key) {
            None => Ok(default),
            Some(v) => u32::from_str_radix(v, radix)
                .map_err(|_| invalid(format!("{key}={v} is not a number"))),
        };
        let kind = match fields.get("type").map_or("bind", String::as_str) {
            "tmpfs" => Kind::Empty,
            "cache" => {
                let readonly = ["ro", "readonly"]
                    .iter()
                    .any(|k| fields.get(*k).is_some_and(|v| v != "false"));
                let sharing = match fields.get("sharing") {
                    None => Sharing::default(),
                    Some(s) => Sharing::parse(s).ok_or_else(|| {
                        invalid(format!("sharing={s}: shared, private or locked"))
                    })?,
                };
                let Some(target) = &target else {
                    return Err(Error::NoTarget(value.to_string()));
                };
                Kind::Cache(CacheMount {
                    id: fields
                        .get("id")
                        .filter(|i| !i.is_empty())
                        .unwrap_or(target)
                        .clone(),
                    sharing,
                    from: fields.get("from").cloned(),
                    source: fields
                        .get("source")
                        .or_else(|| fields.get("src"))
                        .map_or("/", String::as_str)
                        .to_string(),
                    mode: number("mode", 8, 0o755)?,
                    uid: number("uid", 10, 0)?,
                    gid: number("gid", 10, 0)?,
                    readonly,
                })
            }
            "bind" => {
                let source = fields.get("source").or_else(|| fields.get("src"));
                Kind::Bind {
                    from: fields.get("from").cloned(),
                    source: source.map_or("/", String::as_str).to_string(),
                }
            }
            "ssh" => Kind::Ssh(SshMount {
                id: fields
                    .get("id")
                    .filter(|i| !i.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "default".into()),
                required: match fields.get("required").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => return Err(invalid(format!("required={other}: true or false"))),
                },
                mode: number("mode", 8, 0o600)?,
                uid: number("uid", 10, 0)?,
                gid: number("gid", 10, 0)?,
            }),
            "secret" => {
                let required = match fields.get("required").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => return Err(invalid(format!("required={other}: true or false"))),
                };
                let file_name = target.as_deref().and_then(|t| {
                    Path::new(t)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                });
                let id = fields.get("id").filter(|i| !i.is_empty()).cloned();
                let Some(id) = id.or(file_name) else {
                    return Err(invalid("id or target is required".into()));
                };
                Kind::Secret(SecretMount {
                    env: fields.get("env").filter(|e| !e.is_empty()).cloned(),
                    required,
                    mode: number("mode", 8, 0o400)?,
                    uid: number("uid", 10, 0)?,
                    gid: number("gid", 10, 0)?,
                    id,
                })
            }
            other => return Err(Error::Unsupported(other.to_string())),
        };
        let target = match (&kind, target) {
            (_, Some(target)) => Some(target),
            // Only the variable, when that is all it asks for.
            (Kind::Secret(s), None) if s.env.is_some() => None,
            (Kind::Secret(s), None) => Some(format!("/run/secrets/{}", s.id)),
            // Numbered by the RUN, which knows how many ssh mounts come before.
            (Kind::Ssh(_), None) => None,
            (_, None) => return Err(Error::NoTarget(value.to_string())),
        };
        Ok(Spec { target, kind })
    }
}

/// A build secret's value, read from the file the pod was given for its id (bounded).
pub fn read_secret(id: &str, file: &Path) -> Result<Vec<u8>, Error> {
    let failed = |source| Error::SecretRead {
        id: id.to_string(),
        source,
    };
    let mut value = Vec::new();
    std::fs::File::open(file)
        .map_err(failed)?
        .take(SECRET_BYTES + 1)
        .read_to_end(&mut value)
        .map_err(failed)?;
    if value.len() as u64 > SECRET_BYTES {
        return Err(failed(std::io::Error::other(format!(
            "more than {SECRET_BYTES} bytes"
        ))));
    }
    Ok(value)
}

/// What a mount puts at its target.
enum Content<'a> {
    /// A directory's contents, or a file.
    Path(&'a Path),
    EmptyDir,
    /// A symbolic link to a directory of the run cache.
    Link(&'a Path),
    Secret(&'a [u8], &'a SecretMount),
}

/// A RUN mount emulated in the filesystem, undone after the command.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    /// Where what was at the target before waits meanwhile.
    hidden: Option<PathBuf>,
}

impl Mounted {
    /// Puts `content` (a directory's contents, or a file; an empty directory when none)
    /// at `target` in `root`, moving what was there aside.
    pub fn create(root: &Path, target: &str, content: Option<&Path>) -> Result<Mounted, Error> {
        Self::create_with(
            root,
            target,
            match content {
                Some(path) => Content::Path(path),
                None => Content::EmptyDir,
            },
        )
    }

    /// Puts a symbolic link to `dir` (a run cache directory, outside every snapshot) at
    /// `target` in `root`.
    pub fn link(root: &Path, target: &str, dir: &Path) -> Result<Mounted, Error> {
        Self::create_with(root, target, Content::Link(dir))
    }

    /// Puts a secret's value at `target` in `root` as a file of its mode and owner.
    pub fn create_secret(
        root: &Path,
        target: &str,
        value: &[u8],
        s: &SecretMount,
    ) -> Result<Mounted, Error> {
        Self::create_with(root, target, Content::Secret(value, s))
    }

    fn create_with(root: &Path, target: &str, content: Content<'_>) -> Result<Mounted, Error> {
        let failed = |source| Error::Target {
            target: target.to_string(),
            source,
        };
        let content_err = |e: copy::Error| Error::Content(target.to_string(), Box::new(e));
        let mut tree = DiskTree::new(root);
        let parent = Path::new(target)
            .parent()
            .map_or("/".into(), |p| p.to_string_lossy().into_owned());
        let dir =
            copy::make_dirs(&mut tree, &parent, None, image_config::now()).map_err(content_err)?;
        let name = Path::new(target).file_name().unwrap_or_default();
        let at = tree.on_disk(&dir).join(name);
        let hidden = if std::fs::symlink_metadata(&at).is_ok() {
            let aside = at.with_file_name(format!(".stagecoach-mount-{}", name.to_string_lossy()));
            std::fs::rename(&at, &aside).map_err(failed)?;
            Some(aside)
        } else {
            None
        };
        let mounted = Mounted { target: at, hidden };
        match content {
            Content::Path(src) => {
                copy_content(&mut tree, src, target, &mounted.target).map_err(content_err)?
            }
            Content::EmptyDir => std::fs::create_dir(&mounted.target).map_err(failed)?,
            Content::Link(dir) => {
                std::os::unix::fs::symlink(dir, &mounted.target).map_err(failed)?
            }
            Content::Secret(value, s) => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(s.mode)
                    .open(&mounted.target)
                    .map_err(failed)?;
                file.write_all(value).map_err(failed)?;
                // The mode exactly, whatever the umask took away.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(s.mode))
                    .map_err(failed)?;
                std::os::unix::fs::fchown(&file, Some(s.uid), Some(s.gid)).map_err(failed)?;
            }
        }
        Ok(mounted)
    }

    pub fn undo(self) -> Result<(), Error> {
        let failed = |source| Error::Target {
            target: self.target.display().to_string(),
            source,
        };
        match std::fs::symlink_metadata(&self.target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&self.target).map_err(failed)?,
            Ok(_) => std::fs::remove_file(&self.target).map_err(failed)?,
            Err(_) => {}
        }
        if let Some(hidden) = &self.hidden {
            std::fs::rename(hidden, &self.target).map_err(failed)?;
        }
        Ok(())
    }
}

/// Puts `src` (a directory's contents, or a file) at `dest` in `tree`, whose place on
/// disk is `on_disk`: owners kept, as a mount shows them.
pub fn copy_content(
    tree: &mut DiskTree,
    src: &Path,
    dest: &str,
    on_disk: &Path,
) -> Result<(), copy::Error> {
    if !src.is_dir() {
        return std::fs::copy(src, on_disk).map(|_| ()).map_err(|source| {
            copy::Error::Tree(filetree::Error::Io {
                path: src.to_path_buf(),
                source,
            })
        });
    }
    let from = FileTree::from_dir(src).map_err(copy::Error::Tree)?;
    let source = Source {
        tree: &from,
        keep_owner: true,
    };
    let flags = CopyFlags {
        keyword: "RUN --mount",
        ..CopyFlags::default()
    };
    let dest = format!("{}/", dest.trim_end_matches('/'));
    copy::copy(tree, source, &["/".into()], &dest, &flags, 0, None)
}

/// A declared volume saved before a RUN.
#[derive(Debug)]
pub struct SavedVolume {
    pub path: String,
    pub on_disk: PathBuf,
    pub snapshot: Snapshot,
    pub tar: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_specs() {
        let tmpfs = Spec::parse("type=tmpfs,target=/tmp/x", "/").expect("tmpfs");
        assert_eq!(tmpfs.kind, Kind::Empty);
        let bind = Spec::parse("from=build,source=/out,target=out", "/app").expect("bind");
        assert_eq!(bind.target.as_deref(), Some("/app/out"));
        assert_eq!(
            bind.kind,
            Kind::Bind {
                from: Some("build".into()),
                source: "/out".into()
            }
        );
        assert!(matches!(
            Spec::parse("type=nope", "/"),
            Err(Error::Unsupported(_))
        ));
        let ssh = Spec::parse("type=ssh", "/").expect("ssh");
        assert_eq!(
            (ssh.target, ssh.kind),
            (
                None,
                Kind::Ssh(SshMount {
                    id: "default".into(),
                    required: false,
                    mode: 0o600,
                    uid: 0,
                    gid: 0
                })
            )
        );
        let ssh = Spec::parse(
            "type=ssh,id=github,target=/agent,required=true,uid=1000,mode=0660",
            "/",
        )
        .expect("ssh");
        assert_eq!(ssh.target.as_deref(), Some("/agent"));
        assert!(
            matches!(ssh.kind, Kind::Ssh(SshMount { ref id, required: true, mode: 0o660, uid: 1000, .. }) if id == "github")
        );
        assert!(matches!(
            Spec::parse("type=cache", "/"),
            Err(Error::NoTarget(_))
        ));
    }

    /// BuildKit's defaults: the id is the target, shared, 0755 root, writable.
    #[test]
    fn cache_specs_take_buildkits_defaults() {
        let cache = |value: &str| match Spec::parse(value, "/src") {
            Ok(Spec {
                target,
                kind: Kind::Cache(c),
            }) => (target, c),
            other => panic!("{value}: {other:?}"),
        };
        let (target, c) = cache("type=cache,target=/root/.cache");
        assert_eq!(target.as_deref(), Some("/root/.cache"));
        assert_eq!(
            c,
            CacheMount {
                id: "/root/.cache".into(),
                sharing: Sharing::Shared,
                from: None,
                source: "/".into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                readonly: false,
            }
        );
        let (target, c) = cache(
            "type=cache,id=go,target=.cache,sharing=locked,from=deps,source=/seed,mode=0700,uid=1000,gid=100,ro",
        );
        assert_eq!(target.as_deref(), Some("/src/.cache"));
        assert_eq!(
            (
                c.id.as_str(),
                c.sharing,
                c.from.as_deref(),
                c.source.as_str()
            ),
            ("go", Sharing::Locked, Some("deps"), "/seed")
        );
        assert_eq!((c.mode, c.uid, c.gid, c.readonly), (0o700, 1000, 100, true));
        assert!(cache("type=cache,target=/c,sharing=private").1.sharing == Sharing::Private);
        assert!(!cache("type=cache,target=/c,readonly=false").1.readonly);
        for bad in [
            "type=cache,target=/c,sharing=some",
            "type=cache,target=/c,uid=me",
        ] {
            assert!(
                matches!(Spec::parse(bad, "/"), Err(Error::Invalid { .. })),
                "{bad}"
            );
        }
    }

    /// BuildKit's defaults: `/run/secrets/<id>`, the id from the target's name, 0400
    /// root-owned, optional; `env=` alone gives no file.
    #[test]
    fn secret_specs_take_buildkits_defaults() {
        let secret = |value: &str| match Spec::parse(value, "/app") {
            Ok(Spec {
                target,
                kind: Kind::Secret(s),
            }) => (target, s),
            other => panic!("{value}: {other:?}"),
        };
        let (target, s) = secret("type=secret,id=npm");
        assert_eq!(target.as_deref(), Some("/run/secrets/npm"));
        assert_eq!(
            s,
            SecretMount {
                id: "npm".into(),
                env: None,
                required: false,
                mode: 0o400,
                uid: 0,
                gid: 0
            }
        );
        let (target, s) = secret("type=secret,target=.netrc,mode=0440,uid=1000,gid=100,required");
        assert_eq!(target.as_deref(), Some("/app/.netrc"));
        assert_eq!(
            (s.id.as_str(), s.mode, s.uid, s.gid, s.required),
            (".netrc", 0o440, 1000, 100, true)
        );
        let (target, s) = secret("type=secret,id=tok,env=TOKEN");
        assert_eq!((target, s.env.as_deref()), (None, Some("TOKEN")));
        let (target, _) = secret("type=secret,id=tok,env=TOKEN,target=/t");
        assert_eq!(target.as_deref(), Some("/t"));
        for bad in [
            "type=secret",
            "type=secret,id=x,mode=rw",
            "type=secret,id=x,required=maybe",
        ] {
            assert!(
                matches!(Spec::parse(bad, "/"), Err(Error::Invalid { .. })),
                "{bad}"
            );
        }
    }

    /// What a mount leaves behind, as buildah leaves it (outside `/var`, see the e2e
    /// comparison): the target goes, its parents stay, and whatever was at the target
    /// comes back.
    #[test]
    fn a_mount_leaves_its_parents_and_puts_back_what_was_there() {
        let root = tempfile::tempdir().expect("root");
        let cache = Mounted::create(root.path(), "/root/.cache/go", None).expect("empty");
        std::fs::write(root.path().join("root/.cache/go/junk"), "x").expect("write");
        cache.undo().expect("undo");
        assert!(!root.path().join("root/.cache/go").exists());
        assert!(root.path().join("root/.cache").is_dir(), "the parents stay");

        std::fs::create_dir_all(root.path().join("data")).expect("mkdir");
        std::fs::write(root.path().join("data/kept"), "kept").expect("write");
        let over = Mounted::create(root.path(), "/data", None).expect("over");
        assert!(!root.path().join("data/kept").exists(), "hidden meanwhile");
        over.undo().expect("undo");
        assert_eq!(
            std::fs::read_to_string(root.path().join("data/kept")).expect("back"),
            "kept"
        );
    }

    #[test]
    fn a_secret_file_has_its_mode_and_owner_and_goes_away() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("root");
        std::fs::create_dir_all(root.path().join("run/secrets")).expect("dir");
        std::fs::write(root.path().join("run/secrets/tok"), "before").expect("before");
        let s = SecretMount {
            id: "tok".into(),
            env: None,
            required: false,
            mode: 0o440,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        let m =
            Mounted::create_secret(root.path(), "/run/secrets/tok", b"s3cr3t", &s).expect("mount");
        let path = root.path().join("run/secrets/tok");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o440, s.uid));
        assert_eq!(std::fs::read(&path).expect("read"), b"s3cr3t");
        m.undo().expect("undo");
        assert_eq!(std::fs::read_to_string(&path).expect("back"), "before");

        let file = root.path().join("value");
        std::fs::write(&file, vec![b'x'; SECRET_BYTES as usize + 1]).expect("big");
        assert!(matches!(
            read_secret("tok", &file),
            Err(Error::SecretRead { .. })
        ));
    }
}
