//! File trees in memory: what the assemble pod knows of a filesystem it does not have.
//!
//! The assemble pod runs without root and without the image's filesystem, yet COPY must
//! follow the image's symlinks, land in existing directories and keep their owners. So
//! the image is known by its tar headers (base layers with their whiteouts, stage
//! layers), a stage's export by the headers of `export.tar`, and the build context by a
//! directory walk. Paths resolve the way rootfs.rs resolves them on disk: `..` stops at
//! the root and symlinks, absolute ones too, are followed inside the tree.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek as _, SeekFrom};

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fs::pattern;
use crate::fs::rootfs::resolve_with;
use crate::fs::snapshot::{self, FileKind};
use crate::layer::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Files of a base layer whose bytes are kept: `--chown` names resolve through them.
const KEPT_CONTENTS: [&str; 2] = ["etc/passwd", "etc/group"];

/// Bigger account files are not read into memory (a user database, not a base image).
const KEPT_CONTENT_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many levels of symbolic links resolving {0}")]
    Loop(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Resolve(#[from] crate::fs::rootfs::Error),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read a layer or archive entry")]
    Tar(#[source] io::Error),
    #[error("entry {0:?} leaves the root")]
    Outside(String),
    #[error(transparent)]
    Pattern(#[from] pattern::BadPattern),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What kind of filesystem object a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, Default)]
pub enum Content {
    /// Not kept (base layer files: only their place and owner matter).
    #[default]
    Unknown,
    /// At `offset` of an uncompressed tar (a stage's `export.tar`).
    Archive { archive: Arc<Path>, offset: u64 },
    /// A file on disk (the build context).
    File(PathBuf),
    /// In memory: heredocs, and the account files of base layers.
    Inline(Arc<[u8]>),
}

/// One filesystem object.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits plus setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub size: u64,
    /// A symlink's target, as stored.
    pub link_target: Option<PathBuf>,
    /// `(major, minor)` of a device node.
    pub device: (u32, u32),
    pub content: Content,
    /// Files that are hard links of one another share an id (unique in the process).
    pub inode: Option<u64>,
    /// Extended attributes (`security.capability`, ...), names without a namespace
    /// prefix added, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Node {
    /// A directory with these owners and mode.
    pub fn dir(mode: u32, uid: u32, gid: u32, mtime: i64) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            uid,
            gid,
            mtime,
            size: 0,
            link_target: None,
            device: (0, 0),
            content: Content::Unknown,
            inode: None,
            xattrs: Vec::new(),
        }
    }

    /// The node of what a snapshot entry records; None for a socket (no image has one).
    pub fn from_entry(
        entry: &snapshot::Entry,
        content: Content,
        inode: Option<u64>,
    ) -> Option<Node> {
        let kind = match entry.kind {
            FileKind::Regular => Kind::File,
            FileKind::Directory => Kind::Dir,
            FileKind::Symlink => Kind::Symlink,
            FileKind::CharDevice => Kind::CharDevice,
            FileKind::BlockDevice => Kind::BlockDevice,
            FileKind::Fifo => Kind::Fifo,
            FileKind::Socket => return None,
        };
        Some(Node {
            kind,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime.sec,
            size: if kind == Kind::File { entry.size } else { 0 },
            link_target: entry.link_target.clone(),
            device: entry.rdev.unwrap_or_default(),
            content,
            inode,
            xattrs: Vec::new(),
        })
    }
}

/// Hard-link ids for every tree of the process, so two trees never share one.
static NEXT_INODE: AtomicU64 = AtomicU64::new(1);

fn new_inode() -> u64 {
    NEXT_INODE.fetch_add(1, Ordering::Relaxed)
}

/// Every object under a root, by its relative path (the root itself is no node). Paths
/// order component by component, so a directory comes right before its contents.
#[derive(Debug, Clone)]
pub struct FileTree {
    /// The root directory's own attributes (a `COPY . /app/` gives them to `/app`).
    root: Node,
    nodes: BTreeMap<PathBuf, Node>,
}

impl Default for FileTree {
    fn default() -> Self {
        FileTree {
            root: Node::dir(0o755, 0, 0, 0),
            nodes: BTreeMap::new(),
        }
    }
}

/// What one image layer does to the tree below it.
#[derive(Debug, Default)]
pub struct LayerChanges {
    /// Directories whose lower contents are hidden (`.wh..wh..opq`).
    opaque: Vec<PathBuf>,
    /// Paths removed from the lower layers (`.wh.<name>`).
    removed: Vec<PathBuf>,
    /// Entries in layer order.
    entries: Vec<(PathBuf, LayerEntry)>,
}

/// An entry of a layer: an object, or a hard link to one (maybe of a lower layer).
#[derive(Debug)]
enum LayerEntry {
    Node(Node),
    HardLink(PathBuf),
}

impl FileTree {
    pub fn new() -> FileTree {
        FileTree::default()
    }

    /// The headers of an uncompressed tar (a stage's export), with where each file's
    /// bytes are so they can be copied later without extracting anything.
    pub fn from_archive(path: &Path) -> Result<FileTree> {
        let archive: Arc<Path> = Arc::from(path);
        let file = File::open(path).map_err(io_err(path))?;
        let mut tar = tar::Archive::new(BufReader::new(file));
        let mut tree = FileTree::new();
        let mut inodes: HashMap<PathBuf, u64> = HashMap::new();
        for entry in tar.entries().map_err(io_err(path))? {
            let mut entry = entry.map_err(io_err(path))?;
            let rel = entry_path(&entry)?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Link => {
                    let target = link_path(&entry)?;
                    let Some(mut node) = tree.nodes.get(&target).cloned() else {
                        continue;
                    };
                    let id = *inodes.entry(target.clone()).or_insert_with(new_inode);
                    if let Some(first) = tree.nodes.get_mut(&target) {
                        first.inode = Some(id);
                    }
                    node.inode = Some(id);
                    inodes.insert(rel.clone(), id);
                    tree.insert(rel, node);
                    continue;
                }
                other => match kind_of(other) {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            let mut node = node_of(&mut entry, kind)?;
            if kind == Kind::File {
                node.content = Content::Archive {
                    archive: Arc::clone(&archive),
                    offset: entry.raw_file_position(),
                };
            }
            tree.insert(rel, node);
        }
        Ok(tree)
    }

    /// Walks a directory without following symlinks (the build context, a download).
    pub fn from_dir(root: &Path) -> Result<FileTree> {
        let mut tree = FileTree::new();
        let top = snapshot::Entry::of(root).map_err(io_err(root))?;
        tree.root = Node::dir(top.mode, top.uid, top.gid, top.mtime.sec);
        let mut links: HashMap<(u64, u64), u64> = HashMap::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let dir = root.join(&rel);
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                let stat = snapshot::Entry::of(&path).map_err(io_err(&path))?;
                let inode = (stat.kind == FileKind::Regular && stat.nlink > 1)
                    .then(|| *links.entry((stat.dev, stat.ino)).or_insert_with(new_inode));
                let content = match stat.kind {
                    FileKind::Regular => Content::File(path.clone()),
                    _ => Content::Unknown,
                };
                // Sockets have no place in an image. Extended attributes are not read: a
                // context's files are copied without them.
                let Some(node) = Node::from_entry(&stat, content, inode) else {
                    continue;
                };
                let child = rel.join(path.file_name().unwrap_or_default());
                if node.kind == Kind::Dir {
                    pending.push(child.clone());
                }
                tree.nodes.insert(child, node);
            }
        }
        Ok(tree)
    }

    /// A git checkout as [`from_dir`](Self::from_dir) reads it, with the modes git
    /// records and nothing else: directories 0755, files 0755 when executable, else
    /// 0644. What a disk shows beyond that is the volume's, not the repository's: a
    /// kubelet applying an fsGroup adds setgid and group write to everything on it, at
    /// every pod start unless told otherwise, and the umask of the pod shapes the rest.
    pub fn from_checkout(root: &Path) -> Result<FileTree> {
        let mut tree = FileTree::from_dir(root)?;
        for node in std::iter::once(&mut tree.root).chain(tree.nodes.values_mut()) {
            node.mode = match node.kind {
                Kind::Dir => 0o755,
                Kind::File if node.mode & 0o100 != 0 => 0o755,
                Kind::File => 0o644,
                _ => node.mode,
            };
        }
        Ok(tree)
    }

    /// Applies one layer read by [`read_layer`]: whiteouts hide lower paths, then the
    /// layer's entries are added (the OCI image layer rules).
    pub fn apply(&mut self, layer: LayerChanges) {
        for dir in &layer.opaque {
            self.remove_below(dir);
        }
        for path in &layer.removed {
            self.nodes.remove(path);
            self.remove_below(path);
        }
        for (path, entry) in layer.entries {
            let node = match entry {
                LayerEntry::Node(node) => node,
                LayerEntry::HardLink(target) => match self.nodes.get(&target) {
                    Some(node) => node.clone(),
                    None => continue,
                },
            };
            self.insert(path, node);
        }
    }

    /// Puts a node at `path` (relative), replacing what was there; a directory replaced
    /// by anything else loses its contents.
    pub fn insert(&mut self, path: PathBuf, node: Node) {
        if node.kind != Kind::Dir
            && self
                .nodes
                .get(&path)
                .is_some_and(|old| old.kind == Kind::Dir)
        {
            self.remove_below(&path);
        }
        self.nodes.insert(path, node);
    }

    fn remove_below(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .descendants(dir)
            .map(|(p, _)| p.to_path_buf())
            .collect();
        for p in below {
            self.nodes.remove(&p);
        }
    }

    /// Everything under `dir` (not `dir` itself), in tree order.
    pub fn descendants<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a Path, &'a Node)> {
        let start = if dir.as_os_str().is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(dir.to_path_buf())
        };
        self.nodes
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(dir))
            .map(|(p, n)| (p.as_path(), n))
    }

    /// Every object of the tree, parents before their contents.
    pub fn entries(&self) -> impl Iterator<Item = (&Path, &Node)> {
        self.descendants(Path::new(""))
    }

    /// The direct children of a directory, by name.
    pub fn children<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a Path, &'a Node)> {
        let depth = dir.components().count() + 1;
        self.descendants(dir)
            .filter(move |(p, _)| p.components().count() == depth)
    }

    /// The node at a relative path; the empty path is the root directory.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        if path.as_os_str().is_empty() {
            Some(&self.root)
        } else {
            self.nodes.get(path)
        }
    }

    /// Whether `path` (absolute or relative to the root) is a directory, symlinks followed.
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        let resolved = self.resolve(path, true)?;
        Ok(self.get(&resolved).is_some_and(|n| n.kind == Kind::Dir))
    }

    /// Resolves `path` inside the tree like rootfs.rs does on disk: every symlink on the
    /// way is followed within the tree, the last one too when `follow_last` is set. The
    /// result is a clean relative path; it need not exist.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf> {
        let symlink_at = |parts: &[String]| {
            let candidate: PathBuf = parts.iter().collect();
            Ok(self
                .nodes
                .get(&candidate)
                .filter(|n| n.kind == Kind::Symlink)
                .map(|n| {
                    n.link_target
                        .as_deref()
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default()
                }))
        };
        let parts = resolve_with(path, follow_last, symlink_at, || {
            Error::Loop(path.to_string())
        })?;
        Ok(parts.iter().collect())
    }

    /// Paths matching a pattern (relative, `/`-separated, `**` allowed), sorted as text.
    pub fn glob(&self, pat: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for path in self.nodes.keys() {
            let rel = path.to_string_lossy();
            if pattern::matches_path(pat, &rel)? {
                found.push(rel.into_owned());
            }
        }
        found.sort();
        Ok(found)
    }

    /// The bytes of the file at `path` (symlinks followed), when the tree knows them.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let resolved = self.resolve(path, true)?;
        match self.get(&resolved) {
            Some(node) if node.kind == Kind::File => {
                if matches!(node.content, Content::Unknown) {
                    return Ok(None);
                }
                let mut bytes = Vec::new();
                open_content(node)?
                    .read_to_end(&mut bytes)
                    .map_err(io_err(&resolved))?;
                Ok(Some(bytes))
            }
            _ => Ok(None),
        }
    }
}

/// A reader of a file node's bytes, wherever they are.
pub fn open_content(node: &Node) -> Result<Box<dyn Read + Send>> {
    match &node.content {
        Content::Archive { archive, offset } => {
            let mut file = File::open(archive).map_err(io_err(archive))?;
            file.seek(SeekFrom::Start(*offset))
                .map_err(io_err(archive))?;
            Ok(Box::new(BufReader::new(file).take(node.size)))
        }
        Content::File(path) => {
            let file = File::open(path).map_err(io_err(path))?;
            Ok(Box::new(file.take(node.size)))
        }
        Content::Inline(bytes) => Ok(Box::new(io::Cursor::new(Arc::clone(bytes)))),
        Content::Unknown => Err(Error::Tar(io::Error::new(
            io::ErrorKind::NotFound,
            "the content of this file is not known",
        ))),
    }
}

/// Reads the headers of one image layer (an uncompressed tar stream): its whiteouts and
/// entries. Only the account files' bytes are kept; everything else is skipped over.
pub fn read_layer<R: Read>(tar: R) -> Result<LayerChanges> {
    let mut archive = tar::Archive::new(tar);
    let mut changes = LayerChanges::default();
    for entry in archive.entries().map_err(Error::Tar)? {
        let mut entry = entry.map_err(Error::Tar)?;
        let rel = entry_path(&entry)?;
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        match name.as_deref() {
            Some(OPAQUE_MARKER) => {
                changes.opaque.push(parent);
                continue;
            }
            Some(n) if n.starts_with(WHITEOUT_PREFIX) => {
                changes
                    .removed
                    .push(parent.join(&n[WHITEOUT_PREFIX.len()..]));
                continue;
            }
            None => continue,
            Some(_) => {}
        }
        let node = match entry.header().entry_type() {
            tar::EntryType::Link => LayerEntry::HardLink(link_path(&entry)?),
            other => {
                let Some(kind) = kind_of(other) else { continue };
                let mut node = node_of(&mut entry, kind)?;
                let keep = kind == Kind::File
                    && node.size <= KEPT_CONTENT_LIMIT
                    && KEPT_CONTENTS.iter().any(|k| rel == Path::new(k));
                if keep {
                    let mut bytes = Vec::with_capacity(node.size as usize);
                    entry.read_to_end(&mut bytes).map_err(Error::Tar)?;
                    node.content = Content::Inline(bytes.into());
                }
                LayerEntry::Node(node)
            }
        };
        changes.entries.push((rel, node));
    }
    Ok(changes)
}

fn kind_of(entry_type: tar::EntryType) -> Option<Kind> {
    match entry_type {
        tar::EntryType::Regular | tar::EntryType::Continuous => Some(Kind::File),
        tar::EntryType::Directory => Some(Kind::Dir),
        tar::EntryType::Symlink => Some(Kind::Symlink),
        tar::EntryType::Char => Some(Kind::CharDevice),
        tar::EntryType::Block => Some(Kind::BlockDevice),
        tar::EntryType::Fifo => Some(Kind::Fifo),
        _ => None,
    }
}

fn node_of<R: Read>(entry: &mut tar::Entry<'_, R>, kind: Kind) -> Result<Node> {
    let xattrs = pax_xattrs(entry)?;
    let header = entry.header();
    let num = |v: io::Result<u64>| v.map_err(Error::Tar);
    let link_target = match kind {
        Kind::Symlink => entry
            .link_name()
            .map_err(Error::Tar)?
            .map(|l| l.into_owned()),
        _ => None,
    };
    let device = match kind {
        Kind::CharDevice | Kind::BlockDevice => (
            header.device_major().map_err(Error::Tar)?.unwrap_or(0),
            header.device_minor().map_err(Error::Tar)?.unwrap_or(0),
        ),
        _ => (0, 0),
    };
    Ok(Node {
        kind,
        mode: num(header.mode().map(u64::from))? as u32 & 0o7777,
        uid: num(header.uid())? as u32,
        gid: num(header.gid())? as u32,
        mtime: num(header.mtime())? as i64,
        size: if kind == Kind::File { entry.size() } else { 0 },
        link_target,
        device,
        content: Content::Unknown,
        inode: None,
        xattrs,
    })
}

/// The extended attributes an entry's PAX records carry.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    let Some(records) = entry.pax_extensions().map_err(Error::Tar)? else {
        return Ok(xattrs);
    };
    for record in records {
        let record = record.map_err(Error::Tar)?;
        if let Some(name) = record
            .key_bytes()
            .strip_prefix(crate::layer::tar::XATTR_KEY)
        {
            xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// An entry's path made relative and clean; `..` that would leave the root is refused.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf> {
    let path = entry.path().map_err(Error::Tar)?;
    clean(&path)
}

fn link_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf> {
    match entry.link_name().map_err(Error::Tar)? {
        Some(target) => clean(&target),
        None => Err(Error::Tar(io::Error::new(
            io::ErrorKind::InvalidData,
            "hard link without a target",
        ))),
    }
}

fn clean(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                if !out.pop() {
                    return Err(Error::Outside(path.display().to_string()));
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32) -> Node {
        Node {
            kind: Kind::File,
            ..Node::dir(mode, 0, 0, 0)
        }
    }

    fn symlink(target: &str) -> Node {
        Node {
            kind: Kind::Symlink,
            link_target: Some(PathBuf::from(target)),
            ..file(0o777)
        }
    }

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(bytes) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                    h.set_mode(0o644);
                    tar.append_data(&mut h, path, *bytes).expect("file");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    tar.append_data(&mut h, path, io::empty()).expect("dir");
                }
            }
        }
        tar.into_inner().expect("tar")
    }

    #[test]
    fn resolves_like_rootfs_inside_the_tree() {
        let mut t = FileTree::new();
        t.insert("usr".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("usr/lib".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("lib".into(), symlink("/usr/lib"));
        t.insert("usr/escape".into(), symlink("../../../../etc"));
        t.insert("loop1".into(), symlink("loop2"));
        t.insert("loop2".into(), symlink("loop1"));
        assert_eq!(
            t.resolve("/lib/x", true).expect("ok"),
            Path::new("usr/lib/x")
        );
        assert_eq!(
            t.resolve("../../lib", true).expect("ok"),
            Path::new("usr/lib")
        );
        assert_eq!(t.resolve("lib", false).expect("ok"), Path::new("lib"));
        assert_eq!(
            t.resolve("usr/escape/passwd", true).expect("ok"),
            Path::new("etc/passwd")
        );
        assert!(matches!(t.resolve("loop1", true), Err(Error::Loop(_))));
        assert!(t.is_dir("/lib").expect("ok") && t.is_dir("/").expect("ok"));
        assert!(!t.is_dir("/usr/nothing").expect("ok"));
    }

    #[test]
    fn layers_apply_with_whiteouts_and_opaque_directories() {
        let mut t = FileTree::new();
        let lower = layer(&[
            ("etc/", None),
            ("etc/passwd", Some(b"root:x:0:0::/root:/bin/sh\n")),
            ("etc/old", Some(b"o")),
            ("var/", None),
            ("var/cache/", None),
            ("var/cache/a", Some(b"a")),
        ]);
        t.apply(read_layer(&lower[..]).expect("lower"));
        assert!(t.get(Path::new("etc/old")).is_some());
        let upper = layer(&[
            ("etc/.wh.old", Some(b"")),
            ("var/cache/.wh..wh..opq", Some(b"")),
            ("var/cache/b", Some(b"b")),
            ("etc/passwd", Some(b"app:x:1000:1000::/home/app:/bin/sh\n")),
        ]);
        t.apply(read_layer(&upper[..]).expect("upper"));
        assert!(t.get(Path::new("etc/old")).is_none(), "whiteout removes");
        assert!(
            t.get(Path::new("var/cache/a")).is_none(),
            "opaque hides lower contents"
        );
        assert!(
            t.get(Path::new("var/cache/b")).is_some(),
            "but not the layer's own"
        );
        let passwd = t.read_file("/etc/passwd").expect("read").expect("kept");
        assert!(
            passwd.starts_with(b"app:"),
            "the upper layer's account file wins"
        );
        assert_eq!(
            t.read_file("/var/cache/b").expect("read"),
            None,
            "other bytes are not kept"
        );
        let names: Vec<_> = t
            .children(Path::new(""))
            .map(|(p, _)| p.to_path_buf())
            .collect();
        assert_eq!(names, [PathBuf::from("etc"), PathBuf::from("var")]);
    }

    #[test]
    fn a_file_replacing_a_directory_drops_its_contents() {
        let mut t = FileTree::new();
        t.insert("d".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("d/x".into(), file(0o644));
        t.insert("d".into(), file(0o644));
        assert!(t.get(Path::new("d/x")).is_none());
    }

    #[test]
    fn archives_keep_offsets_and_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("app")).expect("mkdir");
        std::fs::write(src.join("app/a"), "alpha").expect("write");
        std::fs::hard_link(src.join("app/a"), src.join("app/b")).expect("link");
        std::os::unix::fs::symlink("a", src.join("app/c")).expect("symlink");
        let out = dir.path().join("export.tar");
        crate::exec::export::write(&src, &["/app".into()], &[], &out).expect("export");
        let t = FileTree::from_archive(&out).expect("read");
        let a = t.get(Path::new("app/a")).expect("a");
        let b = t.get(Path::new("app/b")).expect("b");
        assert!(
            a.inode.is_some() && a.inode == b.inode,
            "hard links share an id"
        );
        assert_eq!(
            t.read_file("app/c").expect("read").expect("bytes"),
            b"alpha"
        );
        assert_eq!(t.glob("app/[ab]").expect("glob"), ["app/a", "app/b"]);

        let ctx = FileTree::from_dir(&src).expect("walk");
        assert_eq!(
            ctx.get(Path::new("app/a")).expect("a").inode,
            ctx.get(Path::new("app/b")).expect("b").inode
        );
        assert_eq!(
            ctx.read_file("app/b").expect("read").expect("bytes"),
            b"alpha"
        );
    }

    /// What a kubelet's fsGroup and a pod's umask do to a checkout on the workspace
    /// (setgid and group write everywhere) never reaches an image: only git's modes do.
    #[test]
    fn a_checkout_has_the_modes_git_records_whatever_the_volume_did() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/main.c"), "int main;").expect("write");
        std::fs::write(root.join("run.sh"), "true").expect("write");
        std::os::unix::fs::symlink("src/main.c", root.join("link")).expect("symlink");
        let chmod = |rel: &str, mode: u32| {
            std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        };
        chmod("src", 0o2775);
        chmod("src/main.c", 0o664);
        chmod("run.sh", 0o775);
        let mode = |t: &FileTree, rel: &str| t.get(Path::new(rel)).expect(rel).mode & 0o7777;
        let on_disk = FileTree::from_dir(root).expect("walk");
        assert_eq!(mode(&on_disk, "src"), 0o2775, "what the volume shows");
        let checkout = FileTree::from_checkout(root).expect("walk");
        assert_eq!(mode(&checkout, "src"), 0o755);
        assert_eq!(mode(&checkout, "src/main.c"), 0o644);
        assert_eq!(mode(&checkout, "run.sh"), 0o755);
        assert_eq!(
            mode(&checkout, "link"),
            mode(&on_disk, "link"),
            "symlinks as they are"
        );
    }
}
