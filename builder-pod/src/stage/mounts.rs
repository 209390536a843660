//! `RUN --mount`, emulated in the filesystem: pods cannot mount. The target gets the
//! content (bind) or an empty directory (cache, tmpfs) for the run and is put back as it
//! was afterwards, so none of it reaches the layer. Secrets and SSH agents are refused:
//! RUN steps never see credentials here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exec::copy::{self, CopyFlags, Source};
use crate::fs::filetree::{self, FileTree};
use crate::fs::snapshot::Snapshot;
use crate::fs::tree::DiskTree;
use crate::image_config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--mount={0}: target is required")]
    NoTarget(String),
    #[error("--mount=type={0} is not supported: RUN steps get no secrets or agents in Stagecoach")]
    Unsupported(String),
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
    /// Absolute in the stage's root.
    pub target: String,
    /// For a bind mount: the stage it reads from (the context when none) and the path.
    pub bind: Option<(Option<String>, String)>,
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
        let target = ["target", "dst", "destination"]
            .iter()
            .find_map(|k| fields.get(*k))
            .ok_or_else(|| Error::NoTarget(value.to_string()))?;
        let target = image_config::join_workdir(workdir, target);
        let bind = match fields.get("type").map_or("bind", String::as_str) {
            "cache" | "tmpfs" => None,
            "bind" => {
                let source = fields.get("source").or_else(|| fields.get("src"));
                let source = source.map_or("/", String::as_str).to_string();
                Some((fields.get("from").cloned(), source))
            }
            other => return Err(Error::Unsupported(other.to_string())),
        };
        Ok(Spec { target, bind })
    }
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
            Some(src) if src.is_dir() => {
                let from =
                    FileTree::from_dir(src).map_err(|e| content_err(copy::Error::Tree(e)))?;
                let source = Source {
                    tree: &from,
                    keep_owner: true,
                };
                let dest = format!("{}/", target.trim_end_matches('/'));
                let flags = CopyFlags {
                    keyword: "RUN --mount",
                    ..CopyFlags::default()
                };
                copy::copy(&mut tree, source, &["/".into()], &dest, &flags, 0, None)
                    .map_err(content_err)?;
            }
            Some(src) => {
                std::fs::copy(src, &mounted.target).map_err(|e| {
                    content_err(copy::Error::Tree(filetree::Error::Io {
                        path: src.to_path_buf(),
                        source: e,
                    }))
                })?;
            }
            None => std::fs::create_dir(&mounted.target).map_err(failed)?,
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
        let cache = Spec::parse("type=cache,target=/root/.cache", "/").expect("cache");
        assert_eq!((cache.target.as_str(), cache.bind), ("/root/.cache", None));
        let bind = Spec::parse("from=build,source=/out,target=out", "/app").expect("bind");
        assert_eq!(bind.target, "/app/out");
        assert_eq!(bind.bind, Some((Some("build".into()), "/out".into())));
        assert!(matches!(
            Spec::parse("type=secret,id=x,target=/s", "/"),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            Spec::parse("type=cache", "/"),
            Err(Error::NoTarget(_))
        ));
    }
}
