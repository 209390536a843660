//! The one tar writer of the builder: ustar headers with PAX records where ustar falls
//! short (long names and link names, big ids and sizes, sub-second times, extended
//! attributes). Layers (from a snapshot's changes or from in-memory nodes) and stage
//! exports are all written through it, so every archive the builder makes reads the same.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tar::{EntryType, Header};

use super::{Error, Result};
use crate::fs::filetree::{self, Kind, Node};
use crate::fs::snapshot::{Entry, FileKind, Timestamp};

const BLOCK: usize = 512;
/// The largest numbers the octal fields of a ustar header hold; beyond them, PAX.
const MAX_OCTAL_ID: u64 = 0o7_777_777;
const MAX_OCTAL_SIZE: u64 = 0o77_777_777_777;
/// The node's SELinux label (every file of a pod's rootfs has one) is not image content.
const DROPPED_XATTRS: [&str; 1] = ["security.selinux"];
/// The PAX key prefix of an extended attribute.
pub(crate) const XATTR_KEY: &[u8] = b"SCHILY.xattr.";

/// A tar stream being written to `W`, with the bookkeeping hard links need.
pub struct TarWriter<W: Write> {
    out: W,
    /// Where the archive goes, for errors.
    path: PathBuf,
    clamp: Option<i64>,
    entries: usize,
    /// The first name written for each (dev, inode) of a file on disk with several links.
    disk_links: HashMap<(u64, u64), Vec<u8>>,
    /// The first name written for each in-memory hard-link id.
    node_links: HashMap<u64, Vec<u8>>,
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for TarWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarWriter")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// One entry's header fields, however the entry was found.
struct Fields<'a> {
    kind: EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    size: u64,
    link: Option<&'a [u8]>,
    device: (u32, u32),
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<W: Write> TarWriter<W> {
    /// A writer onto `out` (named `path` in errors). With `clamp` (SOURCE_DATE_EPOCH),
    /// no entry is newer than that second.
    pub fn new(out: W, path: &Path, clamp: Option<i64>) -> TarWriter<W> {
        TarWriter {
            out,
            path: path.to_path_buf(),
            clamp,
            entries: 0,
            disk_links: HashMap::new(),
            node_links: HashMap::new(),
            buf: vec![0; 256 << 10],
        }
    }

    fn write_err(&self, source: io::Error) -> Error {
        Error::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// The object at `full` on disk as `name`, with the metadata `entry` recorded of it;
    /// a second name of a hard-linked file becomes a link to the first.
    pub fn put_disk(&mut self, name: &Path, full: &Path, entry: &Entry) -> Result<()> {
        let name = name.as_os_str().as_bytes();
        if entry.kind == FileKind::Socket {
            // Tar cannot carry a socket; Docker leaves them out too (and so must the
            // hard-link bookkeeping, or a second name would link to nothing).
            return Ok(());
        }
        let first = (entry.kind != FileKind::Directory && entry.nlink > 1)
            .then(|| first_name(&mut self.disk_links, (entry.dev, entry.ino), name))
            .flatten();
        let xattrs = read_xattrs(full)?;
        let target = entry
            .link_target
            .as_deref()
            .map(|t| t.as_os_str().as_bytes());
        let (kind, link) = match (&first, entry.kind) {
            (Some(first), _) => (EntryType::Link, Some(first.as_slice())),
            (None, FileKind::Regular) => (EntryType::Regular, None),
            (None, FileKind::Directory) => (EntryType::Directory, None),
            (None, FileKind::Symlink) => (EntryType::Symlink, target),
            (None, FileKind::CharDevice) => (EntryType::Char, None),
            (None, FileKind::BlockDevice) => (EntryType::Block, None),
            (None, FileKind::Fifo) => (EntryType::Fifo, None),
            (_, FileKind::Socket) => return Ok(()),
        };
        let fields = Fields {
            kind,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            size: if kind == EntryType::Regular {
                entry.size
            } else {
                0
            },
            link,
            device: entry.rdev.unwrap_or_default(),
            xattrs: &xattrs,
        };
        let content = match kind {
            EntryType::Regular => Some(open_unchanged(full, entry)?),
            _ => None,
        };
        self.entry(name, &fields)?;
        if let Some(file) = content {
            self.copy(file, full, entry.size)?;
        }
        Ok(())
    }

    /// An in-memory node as `name` (content from wherever its tree found it); nodes that
    /// share a hard-link id become links to the first one written.
    pub fn put_node(&mut self, name: &Path, node: &Node) -> Result<()> {
        let name = name.as_os_str().as_bytes();
        let first = match (node.kind, node.inode) {
            (Kind::File, Some(id)) => first_name(&mut self.node_links, id, name),
            _ => None,
        };
        let target = node
            .link_target
            .as_deref()
            .map(|t| t.as_os_str().as_bytes());
        let (kind, link) = match (&first, node.kind) {
            (Some(first), _) => (EntryType::Link, Some(first.as_slice())),
            (None, Kind::File) => (EntryType::Regular, None),
            (None, Kind::Dir) => (EntryType::Directory, None),
            (None, Kind::Symlink) => (EntryType::Symlink, target),
            (None, Kind::CharDevice) => (EntryType::Char, None),
            (None, Kind::BlockDevice) => (EntryType::Block, None),
            (None, Kind::Fifo) => (EntryType::Fifo, None),
        };
        let fields = Fields {
            kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            mtime: Timestamp {
                sec: node.mtime,
                nsec: 0,
            },
            size: if kind == EntryType::Regular {
                node.size
            } else {
                0
            },
            link,
            device: node.device,
            xattrs: &node.xattrs,
        };
        let content = match kind {
            EntryType::Regular => Some(filetree::open_content(node).map_err(|e| Error::Read {
                path: PathBuf::from(OsStr::from_bytes(name)),
                source: io::Error::other(e),
            })?),
            _ => None,
        };
        self.entry(name, &fields)?;
        if let Some(content) = content {
            self.copy(content, Path::new(OsStr::from_bytes(name)), node.size)?;
        }
        Ok(())
    }

    /// A whiteout (`.wh.<name>` beside what it hides): an empty file, owned by root,
    /// from the epoch.
    pub fn whiteout(&mut self, hidden: &Path) -> Result<()> {
        let mut name = hidden
            .parent()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(super::WHITEOUT_PREFIX.as_bytes());
        name.extend_from_slice(hidden.file_name().unwrap_or_default().as_bytes());
        let fields = Fields {
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            size: 0,
            link: None,
            device: (0, 0),
            xattrs: &[],
        };
        self.entry(&name, &fields)
    }

    /// Ends the archive; the writer and the number of entries (PAX headers not counted).
    pub fn finish(mut self) -> Result<(W, usize)> {
        self.raw(&[0; 2 * BLOCK])?;
        Ok((self.out, self.entries))
    }

    /// The entry's header, PAX records first when it needs any.
    fn entry(&mut self, name: &[u8], f: &Fields<'_>) -> Result<()> {
        let mut name = name.to_vec();
        if f.kind == EntryType::Directory {
            name.push(b'/');
        }
        let mut header = Header::new_ustar();
        let mut pax = Vec::new();
        header.set_entry_type(f.kind);
        header.set_mode(f.mode);
        set_id(&mut header, &mut pax, f.uid, f.gid);
        self.set_mtime(&mut header, &mut pax, f.mtime);
        set_size(&mut header, &mut pax, f.size);
        if matches!(f.kind, EntryType::Char | EntryType::Block) {
            header
                .set_device_major(f.device.0)
                .and_then(|()| header.set_device_minor(f.device.1))
                .map_err(|e| self.write_err(e))?;
        }
        if let Some(link) = f.link {
            set_link_name(&mut header, &mut pax, link);
        }
        for (key, value) in f.xattrs {
            let mut record = XATTR_KEY.to_vec();
            record.extend_from_slice(key);
            pax_record(&mut pax, &record, value);
        }
        set_name(&mut header, &mut pax, &name);
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            let base = name
                .strip_suffix(b"/")
                .unwrap_or(&name)
                .rsplit(|&b| b == b'/')
                .next()
                .unwrap_or_default();
            let mut x_name = b"PaxHeaders.0/".to_vec();
            x_name.extend_from_slice(&base[..base.len().min(100 - x_name.len())]);
            x.as_mut_bytes()[..x_name.len()].copy_from_slice(&x_name);
            x.set_entry_type(EntryType::XHeader);
            x.set_mode(0o644);
            x.set_uid(0);
            x.set_gid(0);
            x.set_mtime(0);
            x.set_size(pax.len() as u64);
            x.set_cksum();
            self.raw(x.as_bytes())?;
            self.raw(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        header.set_cksum();
        self.entries += 1;
        self.raw(header.as_bytes())
    }

    fn set_mtime(&self, header: &mut Header, pax: &mut Vec<u8>, mut t: Timestamp) {
        if let Some(limit) = self.clamp {
            let limit = Timestamp {
                sec: limit,
                nsec: 0,
            };
            if t > limit {
                t = limit;
            }
        }
        match u64::try_from(t.sec) {
            Ok(sec) if sec <= MAX_OCTAL_SIZE => {
                header.set_mtime(sec);
                if t.nsec != 0 {
                    pax_record(pax, b"mtime", format_pax_time(t).as_bytes());
                }
            }
            _ => {
                header.set_mtime(0);
                pax_record(pax, b"mtime", format_pax_time(t).as_bytes());
            }
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| self.write_err(e))
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let rest = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.raw(&[0; BLOCK][..rest])
    }

    /// Streams exactly `size` bytes of `from` (named `path` in errors) into the archive:
    /// the header already promised that many.
    fn copy(&mut self, mut from: impl Read, path: &Path, size: u64) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match from.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(Error::Changed {
                        path: path.to_path_buf(),
                        expected: size,
                        actual: size - left,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Read {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            };
            if let Err(source) = self.out.write_all(&self.buf[..n]) {
                return Err(self.write_err(source));
            }
            left -= n as u64;
        }
        self.pad(size)
    }
}

/// The first name recorded under `key`, or None after recording `name` as the first.
fn first_name<K: std::hash::Hash + Eq>(
    seen: &mut HashMap<K, Vec<u8>>,
    key: K,
    name: &[u8],
) -> Option<Vec<u8>> {
    match seen.get(&key) {
        Some(first) => Some(first.clone()),
        None => {
            seen.insert(key, name.to_vec());
            None
        }
    }
}

/// Opens a regular file of the snapshot without following a symlink put in its place,
/// and checks it still has the size the snapshot saw (the header is written first).
fn open_unchanged(path: &Path, entry: &Entry) -> Result<File> {
    let read_err = |source: io::Error| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| read_err(e.into()))?;
    let file = File::from(fd);
    let actual = file.metadata().map_err(read_err)?.len();
    if actual != entry.size {
        return Err(Error::Changed {
            path: path.to_path_buf(),
            expected: entry.size,
            actual,
        });
    }
    Ok(file)
}

/// The extended attributes of a file to carry into an archive, sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => return Ok(vec![]),
        Err(e) => return Err(read_err(e)),
    };
    let mut names: Vec<OsString> = names
        .filter(|n| {
            !DROPPED_XATTRS
                .iter()
                .any(|d| n.as_os_str() == OsStr::new(d))
        })
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(value) = xattr::get(path, &name).map_err(read_err)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

fn set_id(header: &mut Header, pax: &mut Vec<u8>, uid: u32, gid: u32) {
    for (key, id, set) in [
        (&b"uid"[..], uid, Header::set_uid as fn(&mut Header, u64)),
        (b"gid", gid, Header::set_gid),
    ] {
        let id = u64::from(id);
        if id <= MAX_OCTAL_ID {
            set(header, id);
        } else {
            set(header, 0);
            pax_record(pax, key, id.to_string().as_bytes());
        }
    }
}

fn set_size(header: &mut Header, pax: &mut Vec<u8>, size: u64) {
    if size <= MAX_OCTAL_SIZE {
        header.set_size(size);
    } else {
        header.set_size(0);
        pax_record(pax, b"size", size.to_string().as_bytes());
    }
}

/// Byte ranges of the ustar name, link name and prefix fields.
const NAME: std::ops::Range<usize> = 0..100;
pub(super) const LINK_NAME: std::ops::Range<usize> = 157..257;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Puts `name` in the ustar name (and prefix) fields, or in a PAX `path` record when it
/// does not fit (the name field then holds a truncated copy for old readers).
fn set_name(header: &mut Header, pax: &mut Vec<u8>, name: &[u8]) {
    let bytes = header.as_mut_bytes();
    if name.len() <= NAME.len() {
        bytes[..name.len()].copy_from_slice(name);
        return;
    }
    // ustar: prefix "/" name, split at a slash, prefix <= 155 and name <= 100 bytes.
    let split = (name.len().saturating_sub(NAME.len() + 1)..=PREFIX.len().min(name.len() - 1))
        .find(|&i| i > 0 && name[i] == b'/' && i + 1 < name.len());
    if let Some(i) = split {
        bytes[PREFIX][..i].copy_from_slice(&name[..i]);
        bytes[NAME][..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
    } else {
        bytes[NAME].copy_from_slice(&name[..NAME.len()]);
        pax_record(pax, b"path", name);
    }
}

fn set_link_name(header: &mut Header, pax: &mut Vec<u8>, link: &[u8]) {
    let field = &mut header.as_mut_bytes()[LINK_NAME];
    if link.len() <= field.len() {
        field[..link.len()].copy_from_slice(link);
    } else {
        field.copy_from_slice(&link[..LINK_NAME.len()]);
        pax_record(pax, b"linkpath", link);
    }
}

/// Appends `"<len> <key>=<value>\n"`, where len counts the whole record, itself included.
pub(super) fn pax_record(pax: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    pax.extend_from_slice(len.to_string().as_bytes());
    pax.push(b' ');
    pax.extend_from_slice(key);
    pax.push(b'=');
    pax.extend_from_slice(value);
    pax.push(b'\n');
}

/// `seconds[.fraction]`, the fraction without trailing zeros, negative times included.
pub(super) fn format_pax_time(t: Timestamp) -> String {
    let total = i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    let (sec, nsec) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if nsec == 0 {
        format!("{sign}{sec}")
    } else {
        let frac = format!("{nsec:09}");
        format!("{sign}{sec}.{}", frac.trim_end_matches('0'))
    }
}

/// The inverse of [`format_pax_time`]; None for anything else.
pub(crate) fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let nsec = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    Some(match (negative, nsec) {
        (false, _) => Timestamp { sec, nsec },
        (true, 0) => Timestamp { sec: -sec, nsec: 0 },
        (true, _) => Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        },
    })
}
