//! Applying a layer onto a root filesystem: the security boundary of the stage pod.
//!
//! A layer comes from a build and must never write outside its root. Every path is
//! resolved from a descriptor of the root one component at a time, opening each
//! directory with `O_NOFOLLOW`, so a symlink already in the tree (from a lower layer or
//! from this one) is never traversed; the last component is only ever created, replaced
//! or changed with calls that do not follow it either (`O_EXCL` creation after
//! unlinking, `lchown`, `utimensat(AT_SYMLINK_NOFOLLOW)`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). This works on every kernel and under any seccomp profile, which
//! `openat2(RESOLVE_BENEATH)` (Linux 5.6, refused by older container seccomp profiles)
//! does not. Exports and ADD's local archives are extracted through it too.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, RawDir, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use tar::EntryType;

use super::tar::{XATTR_KEY, parse_pax_time};
use super::{Error, OPAQUE_MARKER, Result, WHITEOUT_PREFIX};
use crate::fs::snapshot::Timestamp;

/// What applying a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStats {
    /// Entries created or updated (whiteouts not included).
    pub entries: usize,
    /// Whiteouts and opaque markers honoured.
    pub whiteouts: usize,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Extracts a layer (gzip, zstd or plain tar) onto `root`, honouring whiteouts and opaque
/// directories, and refusing any entry that would write outside `root`.
pub fn apply_layer(layer: &Path, root: &Path) -> Result<ApplyStats> {
    extract(layer, root, Whiteouts::Honoured, Owners::Recorded, u64::MAX)
}

/// Extracts an archive (gzip, zstd or plain tar: a stage's export, ADD's local archive) into
/// `dir`, made if missing, with the same containment; `.wh.` names are files like any
/// other.
pub fn extract_archive(archive: &Path, dir: &Path) -> Result<ApplyStats> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Root {
        path: dir.to_path_buf(),
        source,
    })?;
    extract(archive, dir, Whiteouts::Kept, Owners::Recorded, u64::MAX)
}

/// Extracts a build context archive into `dir` (made if missing) with the same
/// containment, as the extracting user: a non-root source pod cannot give files
/// owners, and a context's owners mean nothing on another machine. More than
/// `max_bytes` of tar stream is refused, so a small compressed blob cannot fill the
/// volume.
pub fn extract_context(archive: &Path, dir: &Path, max_bytes: u64) -> Result<ApplyStats> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Root {
        path: dir.to_path_buf(),
        source,
    })?;
    extract(archive, dir, Whiteouts::Kept, Owners::Extracting, max_bytes)
}

fn extract(
    layer: &Path,
    root: &Path,
    whiteouts: Whiteouts,
    owners: Owners,
    max_bytes: u64,
) -> Result<ApplyStats> {
    let read_err = |source| Error::ReadLayer {
        path: layer.to_path_buf(),
        source,
    };
    let input = BufReader::with_capacity(256 << 10, File::open(layer).map_err(read_err)?);
    let stream = Bounded {
        inner: super::decompressed(input).map_err(read_err)?,
        left: max_bytes,
    };
    let mut applier = Applier::new(root, whiteouts, owners)?;
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        applier.apply(&mut entry, layer)?;
    }
    applier.finish()
}

/// Ownership, permissions, times and extended attributes of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Access and modification times both set to `mtime` (a layer carries no atime).
fn timestamps(mtime: Timestamp) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.sec,
        tv_nsec: i64::from(mtime.nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Why a path could not be resolved beneath the root.
enum WalkError {
    /// This component (relative to the root) is a symlink.
    Symlink(PathBuf),
    /// This component exists but is not a directory.
    NotDir(PathBuf),
    Io(PathBuf, Errno),
}

/// Opens directory `name` in `dir` without following a symlink; None if it is missing.
fn open_dir(dir: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> Result<Option<OwnedFd>, WalkError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    Err(WalkError::Symlink(rel.to_path_buf()))
                }
                _ => Err(WalkError::NotDir(rel.to_path_buf())),
            }
        }
        Err(e) => Err(WalkError::Io(rel.to_path_buf(), e)),
    }
}

/// The directories leading to the current entry, kept open: tar entries come sorted,
/// so the next entry usually shares them and nothing is opened twice. The chain only
/// ever holds parents of the entry being applied, so no operation on an entry can
/// invalidate it.
struct Dirs {
    root: OwnedFd,
    names: Vec<OsString>,
    fds: Vec<OwnedFd>,
}

impl Dirs {
    /// Opens the directory `components` beneath the root, never following symlinks. When
    /// `created` is given, missing directories are made (0755, root) and recorded there.
    fn open(
        &mut self,
        components: &[OsString],
        mut created: Option<&mut HashSet<PathBuf>>,
    ) -> Result<Option<BorrowedFd<'_>>, WalkError> {
        let common = self
            .names
            .iter()
            .zip(components)
            .take_while(|(a, b)| a == b)
            .count();
        self.names.truncate(common);
        self.fds.truncate(common);
        for name in &components[common..] {
            let parent = self.fds.last().unwrap_or(&self.root).as_fd();
            let rel: PathBuf = components[..=self.names.len()].iter().collect();
            let fd = match open_dir(parent, name, &rel)? {
                Some(fd) => fd,
                None => {
                    let Some(created) = created.as_deref_mut() else {
                        return Ok(None);
                    };
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755))
                        .map_err(|e| WalkError::Io(rel.clone(), e))?;
                    let fd = open_dir(parent, name, &rel)?
                        .ok_or(WalkError::Io(rel.clone(), Errno::NOENT))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(|e| WalkError::Io(rel.clone(), e))?;
                    created.insert(rel);
                    fd
                }
            };
            self.names.push(name.clone());
            self.fds.push(fd);
        }
        Ok(Some(self.fds.last().unwrap_or(&self.root).as_fd()))
    }
}

/// Walks `components` from `root` without following symlinks and without caching
/// (for hard-link targets, which are elsewhere in the tree).
fn open_beneath(
    root: BorrowedFd<'_>,
    components: &[OsString],
) -> Result<Option<OwnedFd>, WalkError> {
    let mut current: Option<OwnedFd> = None;
    for (i, name) in components.iter().enumerate() {
        let rel: PathBuf = components[..=i].iter().collect();
        let dir = current.as_ref().map_or(root, AsFd::as_fd);
        match open_dir(dir, name, &rel)? {
            Some(fd) => current = Some(fd),
            None => return Ok(None),
        }
    }
    match current {
        Some(fd) => Ok(Some(fd)),
        None => rustix::fs::openat(
            root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(Some)
        .map_err(|e| WalkError::Io(PathBuf::new(), e)),
    }
}

/// The normal components of an entry name; an absolute name or a `..` is an escape.
fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("\"..\" component".into()),
            _ => out.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok(out)
}

/// A reader that fails once more than its bound has been read.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the archive is larger than its limit",
            )
        })?;
        Ok(n)
    }
}

struct Applier {
    dirs: Dirs,
    whiteouts: Whiteouts,
    owners: Owners,
    /// Paths this layer made, so an opaque marker keeps them whatever the entry order.
    created: HashSet<PathBuf>,
    /// Directory mtimes, set last: creating their contents changes them.
    dir_times: HashMap<PathBuf, Timestamp>,
    stats: ApplyStats,
    buf: Vec<u8>,
}

impl Applier {
    fn new(root: &Path, whiteouts: Whiteouts, owners: Owners) -> Result<Self> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Root {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Applier {
            whiteouts,
            owners,
            dirs: Dirs {
                root: root_fd,
                names: Vec::new(),
                fds: Vec::new(),
            },
            created: HashSet::new(),
            dir_times: HashMap::new(),
            stats: ApplyStats::default(),
            buf: vec![0; 256 << 10],
        })
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, layer: &Path) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = components(&raw).map_err(|reason| Error::Escape {
            entry: shown.clone(),
            reason,
        })?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./"): its metadata belongs to the runtime, not the layer.
            return Ok(());
        };
        if self.whiteouts == Whiteouts::Honoured
            && let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            return self.hide(parents, name, hidden, &shown);
        }
        let target = self.entry_target(entry, &comps, &shown)?;
        let mut meta = read_meta(entry, &shown)?;
        if self.owners == Owners::Extracting {
            meta.uid = rustix::process::geteuid().as_raw();
            meta.gid = rustix::process::getegid().as_raw();
        }
        let failed = |what: &str, e: io::Error| Error::Entry {
            entry: shown.clone(),
            what: what.to_string(),
            source: e,
        };
        let parent = self
            .dirs
            .open(parents, Some(&mut self.created))
            .map_err(|e| walk_error(e, &shown))?
            .ok_or_else(|| failed("cannot open its directory", Errno::NOENT.into()))?;
        let rel: PathBuf = comps.iter().collect();
        let is_dir = kind == EntryType::Directory;
        if !is_dir {
            self.dir_times.remove(&rel);
        }
        if let Target::HardLink(target_dir, target_name) = &target
            && let Ok(a) = rustix::fs::statat(target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW)
            && let Ok(b) = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        {
            // Already this very link (the layer names the file twice): nothing to do.
            self.created.insert(rel);
            self.stats.entries += 1;
            return Ok(());
        }
        let kept_dir = clear_for(parent, name, is_dir)
            .map_err(|e| failed("cannot replace what is there", e.into()))?;
        match (kind, target) {
            (EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse, _) => {
                let written = write_file(parent, name, entry, &mut self.buf, &meta, layer)
                    .map_err(|e| e.into_error(&shown))?;
                self.stats.bytes += written;
            }
            (EntryType::Directory, _) => {
                if !kept_dir {
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| failed("cannot create the directory", e.into()))?;
                }
                let fd = open_dir(parent, name, &rel)
                    .map_err(|e| walk_error(e, &shown))?
                    .ok_or_else(|| failed("cannot open the directory", Errno::NOENT.into()))?;
                set_fd_meta(fd.as_fd(), &meta).map_err(|(what, e)| failed(what, e.into()))?;
                self.dir_times.insert(rel.clone(), meta.mtime);
            }
            (EntryType::Symlink, Target::Symlink(target)) => {
                rustix::fs::symlinkat(target.as_slice(), parent, name)
                    .map_err(|e| failed("cannot create the symlink", e.into()))?;
                set_at_meta(parent, name, &meta, false)
                    .map_err(|(what, e)| failed(what, e.into()))?;
            }
            (EntryType::Link, Target::HardLink(target_dir, target_name)) => {
                rustix::fs::linkat(&target_dir, &target_name, parent, name, AtFlags::empty())
                    .map_err(|e| failed("cannot create the hard link", e.into()))?;
            }
            (EntryType::Char | EntryType::Block | EntryType::Fifo, Target::Device(device)) => {
                make_node(parent, name, kind, device, &meta)
                    .map_err(|(what, e)| failed(what, e.into()))?;
            }
            (other, _) => {
                return Err(Error::Invalid {
                    entry: shown.clone(),
                    reason: format!("unsupported entry type {other:?}"),
                });
            }
        }
        self.created.insert(rel);
        self.stats.entries += 1;
        Ok(())
    }

    /// A whiteout name: an opaque marker, a whiteout of one lower path, or aufs
    /// bookkeeping (ignored).
    fn hide(
        &mut self,
        parents: &[OsString],
        name: &OsStr,
        hidden: &[u8],
        shown: &str,
    ) -> Result<()> {
        if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
            return self.opaque(parents, shown);
        }
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs bookkeeping, not content.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Error::Escape {
                entry: shown.to_string(),
                reason: "whiteout of an invalid name".into(),
            });
        }
        self.whiteout(parents, OsStr::from_bytes(hidden), shown)
    }

    /// What a link or device entry points at, resolved before anything is changed.
    fn entry_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        comps: &[OsString],
        shown: &str,
    ) -> Result<Target> {
        let link = || entry.link_name_bytes().unwrap_or_default().into_owned();
        Ok(match entry.header().entry_type() {
            EntryType::Link => {
                let (dir, name) = self.hard_link_target(&link(), comps, shown)?;
                Target::HardLink(dir, name)
            }
            EntryType::Symlink => Target::Symlink(link()),
            EntryType::Char | EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                Target::Device(rustix::fs::makedev(major, minor))
            }
            EntryType::Fifo => Target::Device(0),
            _ => Target::None,
        })
    }

    /// Resolves a hard link's target beneath the root: its directory and name.
    fn hard_link_target(
        &self,
        link: &[u8],
        comps: &[OsString],
        shown: &str,
    ) -> Result<(OwnedFd, OsString)> {
        let escape = |reason: String| Error::Escape {
            entry: shown.to_string(),
            reason,
        };
        let shown_link = String::from_utf8_lossy(link);
        let target = components(link)
            .map_err(|why| escape(format!("hard link to {shown_link:?}: {why}")))?;
        let Some((name, parents)) = target.split_last() else {
            return Err(escape(format!("hard link to {shown_link:?}: the root")));
        };
        if target == comps {
            return Err(Error::Invalid {
                entry: shown.to_string(),
                reason: "hard link to itself".into(),
            });
        }
        let dir = match open_beneath(self.dirs.root.as_fd(), parents) {
            Ok(Some(dir)) => dir,
            Ok(None) | Err(WalkError::NotDir(_)) => {
                return Err(Error::Invalid {
                    entry: shown.to_string(),
                    reason: format!("hard link target {shown_link:?} does not exist"),
                });
            }
            Err(WalkError::Symlink(at)) => {
                return Err(escape(format!(
                    "hard link to {shown_link:?} through the symlink {:?}",
                    at.display().to_string()
                )));
            }
            Err(WalkError::Io(at, e)) => {
                return Err(Error::Entry {
                    entry: shown.to_string(),
                    what: format!("cannot open {}", at.display()),
                    source: e.into(),
                });
            }
        };
        Ok((dir, name.clone()))
    }

    /// `.wh.<name>`: removes `name` from the lower layers (not from this one).
    fn whiteout(&mut self, parents: &[OsString], hidden: &OsStr, shown: &str) -> Result<()> {
        let rel: PathBuf = parents
            .iter()
            .map(OsString::as_os_str)
            .chain([hidden])
            .collect();
        self.stats.whiteouts += 1;
        if self.created.contains(&rel) {
            return Ok(());
        }
        let Some(parent) = self
            .dirs
            .open(parents, None)
            .map_err(|e| walk_error(e, shown))?
        else {
            return Ok(());
        };
        match remove_tree(parent, hidden) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::Entry {
                entry: shown.to_string(),
                what: format!("cannot remove {}", rel.display()),
                source: e.into(),
            }),
        }
    }

    /// `.wh..wh..opq`: empties the directory of everything lower layers put there.
    fn opaque(&mut self, parents: &[OsString], shown: &str) -> Result<()> {
        self.stats.whiteouts += 1;
        let rel: PathBuf = parents.iter().collect();
        let Some(dir) = self
            .dirs
            .open(parents, None)
            .map_err(|e| walk_error(e, shown))?
        else {
            return Ok(());
        };
        clear_lower(dir, &rel, &self.created).map_err(|e| Error::Entry {
            entry: shown.to_string(),
            what: format!("cannot empty {}", rel.display()),
            source: e.into(),
        })?;
        Ok(())
    }

    /// Sets directory times, now that nothing will be created in them any more.
    fn finish(mut self) -> Result<ApplyStats> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dir_times).into_iter().collect();
        dirs.sort();
        for (rel, mtime) in dirs {
            let comps: Vec<OsString> = rel.iter().map(OsStr::to_os_string).collect();
            let Some((name, parents)) = comps.split_last() else {
                continue;
            };
            let shown = rel.display().to_string();
            // Gone, or under something that is no longer a directory: a later entry of
            // the layer replaced it, and there is nothing to date.
            let parent = match self.dirs.open(parents, None) {
                Ok(Some(parent)) => parent,
                Ok(None) | Err(WalkError::Symlink(_) | WalkError::NotDir(_)) => continue,
                Err(e) => return Err(walk_error(e, &shown)),
            };
            match rustix::fs::utimensat(parent, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(Error::Entry {
                        entry: shown,
                        what: "cannot set the directory's times".into(),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(self.stats)
    }
}

fn walk_error(e: WalkError, shown: &str) -> Error {
    match e {
        WalkError::Symlink(at) => Error::Escape {
            entry: shown.to_string(),
            reason: format!("{:?} is a symlink", at.display().to_string()),
        },
        WalkError::NotDir(at) => Error::Invalid {
            entry: shown.to_string(),
            reason: format!("{:?} is not a directory", at.display().to_string()),
        },
        WalkError::Io(at, e) => Error::Entry {
            entry: shown.to_string(),
            what: format!("cannot open {:?}", at.display().to_string()),
            source: e.into(),
        },
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
    let invalid = |reason: String| Error::Invalid {
        entry: shown.to_string(),
        reason,
    };
    let header = entry.header();
    let mode = header
        .mode()
        .map_err(|e| invalid(format!("bad mode: {e}")))?
        & 0o7777;
    let uid = header.uid().map_err(|e| invalid(format!("bad uid: {e}")))?;
    let gid = header.gid().map_err(|e| invalid(format!("bad gid: {e}")))?;
    let sec = header
        .mtime()
        .map_err(|e| invalid(format!("bad mtime: {e}")))?;
    let mut meta = Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| invalid(format!("uid {uid} is too large")))?,
        gid: u32::try_from(gid).map_err(|_| invalid(format!("gid {gid} is too large")))?,
        mtime: Timestamp {
            sec: i64::try_from(sec).map_err(|_| invalid(format!("mtime {sec} is too large")))?,
            nsec: 0,
        },
        xattrs: Vec::new(),
    };
    if let Some(records) = entry
        .pax_extensions()
        .map_err(|e| invalid(format!("bad PAX header: {e}")))?
    {
        for record in records {
            let record = record.map_err(|e| invalid(format!("bad PAX record: {e}")))?;
            let key = record.key_bytes();
            if key == b"mtime" {
                meta.mtime = parse_pax_time(record.value_bytes()).ok_or_else(|| {
                    invalid(format!(
                        "bad PAX mtime {:?}",
                        String::from_utf8_lossy(record.value_bytes())
                    ))
                })?;
            } else if let Some(name) = key.strip_prefix(XATTR_KEY) {
                meta.xattrs.push((
                    OsString::from_vec(name.to_vec()),
                    record.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(meta)
}

/// Makes room for an entry: whatever is at `name` goes, except a directory where a
/// directory comes (its contents from lower layers stay). Returns whether one stayed.
fn clear_for(parent: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> Result<bool, Errno> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
        Ok(st) => {
            let existing_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if existing_dir && is_dir {
                Ok(true)
            } else {
                remove_tree(parent, name)?;
                Ok(false)
            }
        }
    }
}

/// Removes `name` from `parent`, a directory with everything in it; symlinks are
/// removed, never followed.
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Err(Errno::ISDIR) => {}
        other => return other,
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    for child in dir_names(dir.as_fd())? {
        match remove_tree(dir.as_fd(), &child) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Removes from `dir` (at `rel`) everything not created by the current layer, looking
/// inside the directories the layer kept or made.
fn clear_lower(dir: BorrowedFd<'_>, rel: &Path, created: &HashSet<PathBuf>) -> Result<(), Errno> {
    for child in dir_names(dir)? {
        let child_rel = rel.join(&child);
        if !created.contains(&child_rel) {
            match remove_tree(dir, &child) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, &child, flags, Mode::empty()) {
            Ok(sub) => clear_lower(sub.as_fd(), &child_rel, created)?,
            Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn dir_names(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    let mut buf = Vec::with_capacity(32 << 10);
    let mut raw = RawDir::new(dir, buf.spare_capacity_mut());
    let mut names = Vec::new();
    while let Some(item) = raw.next() {
        let name = item?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// Owner, then mode (a chown clears setuid bits and file capabilities), then xattrs.
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), (&'static str, Errno)> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| ("cannot set its owner", e))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
        .map_err(|e| ("cannot set its mode", e))?;
    for (name, value) in &meta.xattrs {
        match rustix::fs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(("cannot set an extended attribute", e)),
        }
    }
    Ok(())
}

/// The same for an entry that cannot be opened (symlink, fifo, device): every call
/// works on `name` in `parent` itself. `chmod` is only for nodes this layer just
/// made (a symlink has no mode of its own).
fn set_at_meta(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Meta,
    chmod: bool,
) -> Result<(), (&'static str, Errno)> {
    rustix::fs::chownat(
        parent,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ("cannot set its owner", e))?;
    if chmod {
        // Not a symlink: mknodat made it a moment ago.
        rustix::fs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| ("cannot set its mode", e))?;
    }
    if !meta.xattrs.is_empty() {
        // lsetxattr on /proc/self/fd/<parent>/<name>: relative to the descriptor, last
        // component not followed.
        let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
        path.extend_from_slice(name.as_bytes());
        for (key, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(
                path.as_slice(),
                key.as_os_str(),
                value,
                XattrFlags::empty(),
            ) {
                Ok(()) | Err(Errno::OPNOTSUPP) => {}
                Err(e) => return Err(("cannot set an extended attribute", e)),
            }
        }
    }
    rustix::fs::utimensat(
        parent,
        name,
        &timestamps(meta.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ("cannot set its times", e))
}

/// What a link or device entry refers to.
enum Target {
    None,
    Symlink(Vec<u8>),
    /// The directory and name of the file a hard link names, beneath the root.
    HardLink(OwnedFd, OsString),
    Device(u64),
}

/// Whether `.wh.` names are whiteouts (layers) or plain files (ADD's archives, as
/// Docker extracts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    Honoured,
    Kept,
}

/// Whether entries keep the owners the archive records (layers, as root in a stage
/// pod) or belong to whoever extracts them (build contexts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    Recorded,
    Extracting,
}

/// A failure writing a file's content: the layer's read side or the file's write side.
enum FileError {
    Layer(PathBuf, io::Error),
    Entry(&'static str, io::Error),
}

impl FileError {
    fn into_error(self, shown: &str) -> Error {
        match self {
            FileError::Layer(path, source) => Error::ReadLayer { path, source },
            FileError::Entry(what, source) => Error::Entry {
                entry: shown.to_string(),
                what: what.to_string(),
                source,
            },
        }
    }
}

/// Creates a regular file (never through a symlink) with the entry's content and meta;
/// returns the bytes written.
fn write_file(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    content: &mut impl Read,
    buf: &mut [u8],
    meta: &Meta,
    layer: &Path,
) -> Result<u64, FileError> {
    let entry_err = |what| move |e: Errno| FileError::Entry(what, e.into());
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(entry_err("cannot create the file"))?;
    let mut file = File::from(fd);
    let mut written = 0u64;
    loop {
        let n = match content.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FileError::Layer(layer.to_path_buf(), e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| FileError::Entry("cannot write the file", e))?;
        written += n as u64;
    }
    set_fd_meta(file.as_fd(), meta).map_err(|(what, e)| FileError::Entry(what, e.into()))?;
    rustix::fs::futimens(&file, &timestamps(meta.mtime))
        .map_err(entry_err("cannot set its times"))?;
    Ok(written)
}

/// A device node or fifo, with its owner and mode.
fn make_node(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    kind: EntryType,
    device: u64,
    meta: &Meta,
) -> Result<(), (&'static str, Errno)> {
    let (file_type, what) = match kind {
        EntryType::Char => (
            FileType::CharacterDevice,
            "cannot create the device node (it needs CAP_MKNOD)",
        ),
        EntryType::Block => (
            FileType::BlockDevice,
            "cannot create the device node (it needs CAP_MKNOD)",
        ),
        _ => (FileType::Fifo, "cannot create the fifo"),
    };
    rustix::fs::mknodat(
        parent,
        name,
        file_type,
        Mode::from_raw_mode(meta.mode & 0o777),
        device,
    )
    .map_err(|e| (what, e))?;
    set_at_meta(parent, name, meta, true)
}
