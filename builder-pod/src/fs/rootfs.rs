//! Paths resolved inside a root, Docker's way: `..` stops at the root and symlinks
//! (absolute ones too) are resolved as if the root were `/`. Nothing a Dockerfile, a
//! context or a stage names can reach outside the root through these functions.

use std::path::{Component, Path, PathBuf};

/// Symlink hops before giving up, as Linux does (ELOOP).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many levels of symbolic links resolving {0}")]
    Loop(String),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `path` (absolute or relative to `/`) inside `root`. Every symlink on the way is
/// followed within the root; the last component too when `follow_last` is set. The result
/// is `root` joined with a clean path; it need not exist.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, Error> {
    let symlink_at = |parts: &[String]| {
        let candidate = root.join(parts.join("/"));
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&candidate)
                .map(|t| Some(t.to_string_lossy().into_owned()))
                .map_err(|source| Error::Io {
                    path: candidate,
                    source,
                }),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(20) => Ok(None), // ENOTDIR: treat as missing
            Err(source) => Err(Error::Io {
                path: candidate,
                source,
            }),
        }
    };
    let parts = resolve_with(path, follow_last, symlink_at, || {
        Error::Loop(path.to_string())
    })?;
    Ok(root.join(parts.join("/")))
}

/// The resolution algorithm of [`resolve`], over any tree: `symlink_at` gives the target
/// of the symlink at a path (its components below the root), None when no symlink is
/// there. `..` stops at the root; an absolute target starts again from the root.
pub(crate) fn resolve_with<E>(
    path: &str,
    follow_last: bool,
    mut symlink_at: impl FnMut(&[String]) -> Result<Option<String>, E>,
    too_many: impl FnOnce() -> E,
) -> Result<Vec<String>, E> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let follow = !pending.is_empty() || follow_last;
        resolved.push(part);
        let Some(target) = follow.then(|| symlink_at(&resolved)).transpose()?.flatten() else {
            continue;
        };
        resolved.pop();
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(too_many());
        }
        if target.starts_with('/') {
            resolved.clear();
        }
        pending.extend(components(&target).into_iter().rev());
    }
    Ok(resolved)
}

/// The normal components of a path, keeping `.` and `..` for the resolver to handle.
fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir => Some(".".into()),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Reads a file inside the root (symlinks followed within it), None if it is missing.
pub fn read_file(root: &Path, path: &str) -> Result<Option<String>, Error> {
    let resolved = resolve(root, path, true)?;
    match std::fs::read(&resolved) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: resolved,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        symlink("/usr/lib", root.join("lib")).expect("symlink");
        symlink("../../../../etc", root.join("usr/escape")).expect("symlink");
        symlink("/", root.join("usr/lib/up")).expect("symlink");
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");

        assert_eq!(
            resolve(root, "/lib/x", true).expect("ok"),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve(root, "../../lib", true).expect("ok"),
            root.join("usr/lib")
        );
        assert_eq!(resolve(root, "lib", false).expect("ok"), root.join("lib"));
        assert_eq!(
            resolve(root, "usr/escape/passwd", true).expect("ok"),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve(root, "usr/lib/up/usr", true).expect("ok"),
            root.join("usr")
        );
        assert!(matches!(resolve(root, "loop1", true), Err(Error::Loop(_))));
    }

    #[test]
    fn read_file_follows_links_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/real"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        symlink("/etc/real", root.join("etc/passwd")).expect("symlink");
        assert!(
            read_file(root, "/etc/passwd")
                .expect("ok")
                .expect("exists")
                .starts_with("root:")
        );
        assert_eq!(read_file(root, "/etc/group").expect("ok"), None);
    }
}
