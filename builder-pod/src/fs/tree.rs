//! The filesystem a stage's instructions change, whichever pod runs them: the stage
//! pod's root on disk ([`DiskTree`]), or the image as the assemble pod knows it from
//! layer headers ([`MemoryTree`]). COPY, WORKDIR and VOLUME are written once, against
//! [`Tree`], so both pods give a stage the same files, modes and owners.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use super::filetree::{self, Content, FileTree, Kind, Node, Result};
use super::{rootfs, snapshot};

/// A root filesystem. Paths given to [`Tree::get`], [`Tree::put`] and
/// [`Tree::hard_link`] are relative and already resolved with [`Tree::resolve`].
pub trait Tree {
    /// Resolves `path` (absolute in the image) inside the root, the way the kernel would
    /// with the root as `/`; the last symlink too when `follow_last`. It need not exist.
    fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf>;

    /// The object at `path`; the empty path is the root directory.
    fn get(&self, path: &Path) -> Result<Option<Node>>;

    /// Puts `node` at `path`, replacing what is there; a directory that stays a
    /// directory keeps its contents and takes the node's attributes.
    fn put(&mut self, path: &Path, node: &Node) -> Result<()>;

    /// Makes `path` another name of the file at `existing` (put by this instruction).
    fn hard_link(&mut self, path: &Path, existing: &Path) -> Result<()>;

    /// The bytes of the file at `path` (absolute, symlinks followed), when it is there.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// Whether `path` (absolute) is a directory, symlinks followed.
    fn is_dir(&self, path: &str) -> Result<bool> {
        let resolved = self.resolve(path, true)?;
        Ok(self.get(&resolved)?.is_some_and(|n| n.kind == Kind::Dir))
    }
}

/// The stage pod's root filesystem (`/` in a pod), changed in place.
#[derive(Debug, Clone)]
pub struct DiskTree {
    root: PathBuf,
}

impl DiskTree {
    pub fn new(root: impl Into<PathBuf>) -> DiskTree {
        DiskTree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a resolved relative path is on disk.
    pub fn on_disk(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> filetree::Error + '_ {
    move |source| filetree::Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl Tree for DiskTree {
    fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf> {
        let full = rootfs::resolve(&self.root, path, follow_last)?;
        Ok(full
            .strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_default())
    }

    fn get(&self, path: &Path) -> Result<Option<Node>> {
        let full = self.on_disk(path);
        match snapshot::Entry::of(&full) {
            Ok(entry) => Ok(Node::from_entry(&entry, Content::File(full), None)),
            Err(e) if matches!(e.raw_os_error(), Some(2 | 20)) => Ok(None), // ENOENT, ENOTDIR
            Err(source) => Err(filetree::Error::Io { path: full, source }),
        }
    }

    fn put(&mut self, path: &Path, node: &Node) -> Result<()> {
        let full = self.on_disk(path);
        let existing = fs::symlink_metadata(&full).ok();
        let stays_dir = node.kind == Kind::Dir && existing.as_ref().is_some_and(|m| m.is_dir());
        if let Some(m) = &existing
            && !stays_dir
        {
            if m.is_dir() {
                fs::remove_dir_all(&full).map_err(write_err(&full))?;
            } else {
                fs::remove_file(&full).map_err(write_err(&full))?;
            }
        }
        match node.kind {
            Kind::Dir if stays_dir => {}
            Kind::Dir => fs::create_dir(&full).map_err(write_err(&full))?,
            Kind::File => {
                let mut content = filetree::open_content(node)?;
                let mut file = File::create(&full).map_err(write_err(&full))?;
                io::copy(&mut content, &mut file).map_err(write_err(&full))?;
            }
            Kind::Symlink => {
                let target = node.link_target.clone().unwrap_or_default();
                symlink(target, &full).map_err(write_err(&full))?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let file_type = match node.kind {
                    Kind::CharDevice => rustix::fs::FileType::CharacterDevice,
                    Kind::BlockDevice => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &full,
                    file_type,
                    rustix::fs::Mode::from_raw_mode(node.mode & 0o7777),
                    rustix::fs::makedev(node.device.0, node.device.1),
                )
                .map_err(|e| write_err(&full)(e.into()))?;
            }
        }
        set_attributes(&full, node)
    }

    fn hard_link(&mut self, path: &Path, existing: &Path) -> Result<()> {
        let full = self.on_disk(path);
        if fs::symlink_metadata(&full).is_ok() {
            fs::remove_file(&full).map_err(write_err(&full))?;
        }
        fs::hard_link(self.on_disk(existing), &full).map_err(write_err(&full))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let full = rootfs::resolve(&self.root, path, true)?;
        match fs::read(&full) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if matches!(e.raw_os_error(), Some(2 | 20 | 21)) => Ok(None), // or EISDIR
            Err(source) => Err(filetree::Error::Io { path: full, source }),
        }
    }
}

/// Owner, mode, extended attributes and mtime, in that order so a chown does not clear
/// setuid bits or file capabilities set afterwards.
fn set_attributes(full: &Path, node: &Node) -> Result<()> {
    std::os::unix::fs::lchown(full, Some(node.uid), Some(node.gid)).map_err(write_err(full))?;
    if node.kind != Kind::Symlink {
        fs::set_permissions(full, fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(write_err(full))?;
    }
    for (name, value) in &node.xattrs {
        match xattr::set(full, OsStr::from_bytes(name), value) {
            // A filesystem without extended attributes (NFS) keeps the file, as the
            // layer applier does.
            Err(e) if e.raw_os_error() == Some(95) => {} // EOPNOTSUPP
            other => other.map_err(write_err(full))?,
        }
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime, 0);
    filetime::set_symlink_file_times(full, mtime, mtime).map_err(write_err(full))
}

/// The image below the target as the assemble pod knows it (no root, no filesystem of
/// its own), and what the current instruction changed in it: that is its layer.
#[derive(Debug, Default)]
pub struct MemoryTree {
    tree: FileTree,
    changed: BTreeSet<PathBuf>,
}

impl MemoryTree {
    pub fn new(tree: FileTree) -> MemoryTree {
        MemoryTree {
            tree,
            changed: BTreeSet::new(),
        }
    }

    /// The entries of every path changed since the last call, as they now are, parents
    /// before their contents.
    pub fn take_changes(&mut self) -> Vec<(PathBuf, Node)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|p| self.tree.get(&p).cloned().map(|n| (p, n)))
            .collect()
    }
}

impl Tree for MemoryTree {
    fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf> {
        self.tree.resolve(path, follow_last)
    }

    fn get(&self, path: &Path) -> Result<Option<Node>> {
        Ok(self.tree.get(path).cloned())
    }

    fn put(&mut self, path: &Path, node: &Node) -> Result<()> {
        self.changed.insert(path.to_path_buf());
        self.tree.insert(path.to_path_buf(), node.clone());
        Ok(())
    }

    fn hard_link(&mut self, path: &Path, existing: &Path) -> Result<()> {
        // Both names keep the source's hard-link id: the layer writer links them again.
        let node = self
            .tree
            .get(existing)
            .cloned()
            .ok_or_else(|| filetree::Error::Io {
                path: existing.to_path_buf(),
                source: io::ErrorKind::NotFound.into(),
            })?;
        self.put(path, &node)
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.tree.read_file(path)
    }
}
