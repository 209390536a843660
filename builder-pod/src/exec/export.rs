//! A stage's exports: the paths later stages `COPY --from` it, written as one tar (the
//! builder's one tar writer) so a reader of any uid can take them whatever their owners
//! and modes. Readers copy straight out of it as a file tree; a `RUN --mount` from a
//! stage extracts it with the layer applier.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use crate::fs::pattern;
use crate::fs::rootfs;
use crate::fs::snapshot::Entry;
use crate::layer::{self, tar::TarWriter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot export {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Resolve(#[from] rootfs::Error),
    #[error(transparent)]
    Find(#[from] pattern::FindError),
    #[error(transparent)]
    Tar(#[from] layer::Error),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the paths (globs allowed, `/` for everything) of `root` into the tar `out`,
/// with their parent directories, and the targets of symlinks on the way so the reader
/// resolves them as the stage would. Paths in `skip` (mounts) are left out. Paths that
/// do not exist are left out too: the reader reports them, with its Dockerfile line.
pub fn write(root: &Path, paths: &[String], skip: &[PathBuf], out: &Path) -> Result<u64> {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for path in paths {
        let rel = path.trim_start_matches('/').to_string();
        if pattern::has_magic(&rel) {
            for m in pattern::find(root, &rel)? {
                add_with_links(root, &m, &mut wanted)?;
            }
        } else {
            add_with_links(root, &rel, &mut wanted)?;
        }
    }
    // Parents first (BTreeSet order puts `a` before `a/b`); each path once.
    let mut entries: BTreeSet<String> = BTreeSet::new();
    for rel in &wanted {
        let mut prefix = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            entries.insert(prefix.clone());
        }
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file = File::create(out).map_err(io_err(out))?;
    let mut writer = TreeWriter {
        root,
        skip,
        tar: TarWriter::new(BufWriter::new(file), out, None),
        written: BTreeSet::new(),
    };
    if wanted.contains("") {
        writer.walk("")?;
    }
    for rel in &entries {
        if wanted.contains(rel) {
            writer.walk(rel)?;
        } else {
            writer.append(rel)?;
        }
    }
    let (buffered, count) = writer.tar.finish()?;
    buffered
        .into_inner()
        .map_err(|e| io_err(out)(e.into_error()))?;
    Ok(count as u64)
}

/// Adds a path as the reading stage will resolve it: every symlink met on the way (at
/// its real place) and the real path the whole resolves to. Missing paths add nothing.
fn add_with_links(root: &Path, rel: &str, wanted: &mut BTreeSet<String>) -> Result<()> {
    let resolved = rootfs::resolve(root, rel, true)?;
    if fs::symlink_metadata(&resolved).is_err() {
        return Ok(());
    }
    let relative = |p: &Path| {
        p.strip_prefix(root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut prefix = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let at = rootfs::resolve(root, &prefix, false)?;
        if fs::symlink_metadata(&at).is_ok_and(|m| m.is_symlink()) {
            wanted.insert(relative(&at));
        }
    }
    wanted.insert(relative(&resolved));
    Ok(())
}

struct TreeWriter<'a> {
    root: &'a Path,
    skip: &'a [PathBuf],
    tar: TarWriter<BufWriter<File>>,
    written: BTreeSet<String>,
}

impl TreeWriter<'_> {
    fn skipped(&self, rel: &str) -> bool {
        let abs = Path::new("/").join(rel);
        self.skip.iter().any(|s| abs.starts_with(s))
    }

    fn walk(&mut self, rel: &str) -> Result<()> {
        if self.skipped(rel) && !rel.is_empty() {
            return Ok(());
        }
        if !rel.is_empty() {
            self.append(rel)?;
        }
        let path = self.root.join(rel);
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            return Ok(());
        }
        let mut names: Vec<String> = fs::read_dir(&path)
            .map_err(io_err(&path))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()
            .map_err(io_err(&path))?;
        names.sort();
        for name in names {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if self.root == Path::new("/") && ["proc", "sys", "dev"].contains(&child.as_str()) {
                continue;
            }
            self.walk(&child)?;
        }
        Ok(())
    }

    fn append(&mut self, rel: &str) -> Result<()> {
        if !self.written.insert(rel.to_string()) || self.skipped(rel) {
            return Ok(());
        }
        let path = self.root.join(rel);
        let Ok(entry) = Entry::of(&path) else {
            return Ok(());
        };
        Ok(self.tar.put_disk(Path::new(rel), &path, &entry)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, symlink};

    #[test]
    fn exports_paths_parents_links_and_globs() {
        let src = tempfile::tempdir().expect("tempdir");
        let r = src.path();
        fs::create_dir_all(r.join("app/bin")).expect("mkdir");
        fs::create_dir_all(r.join("usr/lib")).expect("mkdir");
        fs::write(r.join("app/bin/tool"), "bin").expect("write");
        fs::write(r.join("app/a.so"), "a").expect("write");
        fs::write(r.join("app/b.so"), "b").expect("write");
        fs::write(r.join("other"), "no").expect("write");
        fs::write(r.join("usr/lib/real"), "r").expect("write");
        symlink("usr/lib", r.join("lib")).expect("symlink");
        fs::hard_link(r.join("app/a.so"), r.join("app/a-again.so")).expect("link");
        std::os::unix::fs::lchown(r.join("app/bin/tool"), Some(1000), Some(1000)).expect("chown");

        let out = tempfile::tempdir().expect("tempdir");
        let tar = out.path().join("export.tar");
        write(
            r,
            &[
                "/app/bin".into(),
                "/app/*.so".into(),
                "/lib/real".into(),
                "/missing".into(),
            ],
            &[],
            &tar,
        )
        .expect("export");
        let dest = out.path().join("x");
        crate::layer::extract_archive(&tar, &dest).expect("extract");
        assert_eq!(
            fs::read_to_string(dest.join("app/bin/tool")).expect("tool"),
            "bin"
        );
        assert_eq!(
            fs::metadata(dest.join("app/bin/tool")).expect("meta").uid(),
            1000
        );
        assert!(dest.join("app/a.so").exists() && dest.join("app/b.so").exists());
        assert_eq!(
            fs::metadata(dest.join("app/a.so")).expect("a").ino(),
            fs::metadata(dest.join("app/a-again.so")).expect("b").ino(),
            "hard links stay links"
        );
        assert!(
            fs::symlink_metadata(dest.join("lib"))
                .expect("lib")
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(dest.join("usr/lib/real")).expect("real"),
            "r"
        );
        assert!(!dest.join("other").exists());
    }

    #[test]
    fn whole_root_skips_mounts() {
        let src = tempfile::tempdir().expect("tempdir");
        let r = src.path();
        fs::create_dir_all(r.join("workspace/x")).expect("mkdir");
        fs::write(r.join("keep"), "k").expect("write");
        let out = tempfile::tempdir().expect("tempdir");
        let tar = out.path().join("e.tar");
        write(r, &["/".into()], &[PathBuf::from("/workspace")], &tar).expect("export");
        let dest = out.path().join("x");
        crate::layer::extract_archive(&tar, &dest).expect("extract");
        assert!(dest.join("keep").exists());
        assert!(!dest.join("workspace").exists());
    }
}
