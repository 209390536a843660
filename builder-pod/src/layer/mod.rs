//! OCI layers (`application/vnd.oci.image.layer.v1.tar+gzip`): writing one from a
//! snapshot difference, and applying one onto a root filesystem.
//!
//! Writing streams every file through tar, gzip and two SHA-256 hashers at once (the
//! diff-id of the tar, the digest of the gzip), so no file is ever held in memory.
//!
//! Applying is the security boundary of the stage pod: a layer comes from a build and
//! must never write outside its root. Every path is resolved from a descriptor of the
//! root one component at a time, opening each directory with `O_NOFOLLOW`, so a
//! symlink already in the tree (from a lower layer or from this one) is never
//! traversed; the last component is only ever created, replaced or changed with
//! calls that do not follow it either (`O_EXCL` creation after unlinking, `lchown`,
//! `utimensat(AT_SYMLINK_NOFOLLOW)`, `linkat` without `AT_SYMLINK_FOLLOW`). This works
//! on every kernel and under any seccomp profile, which `openat2(RESOLVE_BENEATH)` (Linux
//! 5.6, refused by older container seccomp profiles) does not.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, RawDir, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::fs::snapshot::{Changes, Entry, FileKind, Snapshot, Timestamp};

/// The gzip level of layers, measured with zlib-rs (`benches/snapshot.rs`, and tars of real
/// binaries and sources): level 2 packs over twice as fast as zlib's default (6) for ~4% more
/// bytes; level 1 is faster again but 13-20% bigger on binaries and sources. A stage pod waits
/// on packing at every instruction, and every node that pulls the image pays for the bytes.
pub const DEFAULT_LEVEL: u32 = 2;

const BLOCK: usize = 512;
/// The largest numbers the octal fields of a ustar header hold; beyond them, PAX.
const MAX_OCTAL_ID: u64 = 0o7_777_777;
const MAX_OCTAL_SIZE: u64 = 0o77_777_777_777;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The node's SELinux label (every file of a pod's rootfs has one) is not image content.
const DROPPED_XATTRS: [&str; 1] = ["security.selinux"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the layer {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path} for the layer: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} changed while its layer was written (snapshot size {expected}, now {actual})")]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} is in the changes but not in the snapshot")]
    NotInSnapshot { path: PathBuf },
    #[error("cannot read the layer {path}: {source}")]
    ReadLayer { path: PathBuf, source: io::Error },
    #[error("cannot open the root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("layer entry {entry:?} escapes the root ({reason})")]
    Escape { entry: String, reason: String },
    #[error("layer entry {entry:?}: {what}: {source}")]
    Entry {
        entry: String,
        what: String,
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {reason}")]
    Invalid { entry: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a written layer is, for the image manifest and config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the compressed blob (the manifest's layer digest).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Bytes of the compressed blob.
    pub size: u64,
    pub uncompressed_size: u64,
    /// Tar entries, whiteouts included, PAX headers not.
    pub entries: usize,
}

/// Writes the layer of `changes` (paths in `after`, read from under `root`) to `out`.
/// With `clamp_mtime` (SOURCE_DATE_EPOCH), no entry is newer than that second.
pub fn write_layer(
    root: &Path,
    changes: &Changes,
    after: &Snapshot,
    out: &Path,
    clamp_mtime: Option<i64>,
) -> Result<LayerInfo> {
    write_layer_with_level(root, changes, after, out, clamp_mtime, DEFAULT_LEVEL)
}

/// [`write_layer`] with a chosen gzip level (0-9), for the benchmark's comparison.
pub fn write_layer_with_level(
    root: &Path,
    changes: &Changes,
    after: &Snapshot,
    out: &Path,
    clamp_mtime: Option<i64>,
    level: u32,
) -> Result<LayerInfo> {
    let written = LayerWriter::new(out, level, clamp_mtime)
        .and_then(|w| w.write_changes(root, changes, after));
    if written.is_err() {
        // A partial blob must not be mistaken for a layer.
        let _ = std::fs::remove_file(out);
    }
    written
}

/// One step of the layer, in tar order: an entry of the snapshot, or a whiteout (an
/// empty file named for what it hides).
enum Op<'a> {
    Put(&'a Entry),
    Marker,
}

/// Passes bytes through, hashing and counting them: a blob's digest and size (or a
/// tar's diff id) are known when it has been written, without reading it again.
#[derive(Debug)]
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the `sha256:` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Compressed = Hashing<BufWriter<File>>;
type Tar = BufWriter<Hashing<flate2::write::GzEncoder<Compressed>>>;

struct LayerWriter<'a> {
    out: &'a Path,
    tar: Tar,
    clamp: Option<i64>,
    entries: usize,
    /// The first name written for each (dev, inode) with more than one link.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
}

impl<'a> LayerWriter<'a> {
    fn new(out: &'a Path, level: u32, clamp: Option<i64>) -> Result<Self> {
        let file = File::create(out).map_err(|source| Error::Write {
            path: out.to_path_buf(),
            source,
        })?;
        let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file));
        // GzBuilder leaves the header's mtime at 0 and names no file: reproducible.
        let gz = flate2::GzBuilder::new().write(compressed, Compression::new(level));
        Ok(LayerWriter {
            out,
            tar: BufWriter::with_capacity(256 << 10, Hashing::new(gz)),
            clamp,
            entries: 0,
            links: HashMap::new(),
            buf: vec![0; 256 << 10],
        })
    }

    fn write_err(&self, source: io::Error) -> Error {
        Error::Write {
            path: self.out.to_path_buf(),
            source,
        }
    }

    fn write_changes(
        mut self,
        root: &Path,
        changes: &Changes,
        after: &Snapshot,
    ) -> Result<LayerInfo> {
        let mut ops: Vec<(PathBuf, Op<'_>)> = Vec::new();
        for path in changes.added.iter().chain(&changes.changed) {
            let entry = after
                .get(path)
                .ok_or_else(|| Error::NotInSnapshot { path: path.clone() })?;
            // Tar cannot carry a socket; Docker leaves them out too.
            if entry.kind != FileKind::Socket {
                ops.push((path.clone(), Op::Put(entry)));
            }
        }
        for path in &changes.removed {
            let mut name = WHITEOUT.to_vec();
            name.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
            ops.push((path.with_file_name(OsStr::from_bytes(&name)), Op::Marker));
        }
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        ops.dedup_by(|a, b| a.0 == b.0);

        for (path, op) in &ops {
            match op {
                Op::Put(entry) => self.put(root, path, entry)?,
                Op::Marker => self.marker(path.as_os_str().as_bytes())?,
            }
        }
        self.finish()
    }

    /// One entry of `after`, read from the tree.
    fn put(&mut self, root: &Path, path: &Path, entry: &Entry) -> Result<()> {
        let full = root.join(path);
        let mut name = path.as_os_str().as_bytes().to_vec();
        let mut header = Header::new_ustar();
        let mut pax = Vec::new();
        header.set_mode(entry.mode);
        set_id(&mut header, &mut pax, entry.uid, entry.gid);
        self.set_mtime(&mut header, &mut pax, entry.mtime);
        header.set_size(0);
        let mut link_name = None;
        let mut content = None;

        let first_link = if entry.kind != FileKind::Directory && entry.nlink > 1 {
            match self.links.get(&(entry.dev, entry.ino)) {
                Some(first) => Some(first.clone()),
                None => {
                    self.links.insert((entry.dev, entry.ino), name.clone());
                    None
                }
            }
        } else {
            None
        };
        if let Some(first) = first_link {
            header.set_entry_type(EntryType::Link);
            link_name = Some(first);
        } else {
            match entry.kind {
                FileKind::Regular => {
                    header.set_entry_type(EntryType::Regular);
                    set_size(&mut header, &mut pax, entry.size);
                    content = Some(open_unchanged(&full, entry)?);
                }
                FileKind::Directory => {
                    header.set_entry_type(EntryType::Directory);
                    name.push(b'/');
                }
                FileKind::Symlink => {
                    header.set_entry_type(EntryType::Symlink);
                    let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
                    link_name = Some(target.as_os_str().as_bytes().to_vec());
                }
                FileKind::CharDevice | FileKind::BlockDevice => {
                    header.set_entry_type(if entry.kind == FileKind::CharDevice {
                        EntryType::Char
                    } else {
                        EntryType::Block
                    });
                    let (major, minor) = entry.rdev.unwrap_or_default();
                    header
                        .set_device_major(major)
                        .and_then(|()| header.set_device_minor(minor))
                        .map_err(|e| self.write_err(e))?;
                }
                FileKind::Fifo => header.set_entry_type(EntryType::Fifo),
                FileKind::Socket => return Ok(()),
            }
        }
        if let Some(link) = &link_name {
            set_link_name(&mut header, &mut pax, link);
        }
        for (key, value) in read_xattrs(&full)? {
            pax_record(&mut pax, &key, &value);
        }
        set_name(&mut header, &mut pax, &name);
        self.header(&name, &mut header, &pax)?;
        if let Some(file) = content {
            self.copy(file, &full, entry.size)?;
        }
        Ok(())
    }

    /// A whiteout: an empty file, owned by root, from the epoch.
    fn marker(&mut self, name: &[u8]) -> Result<()> {
        let mut header = Header::new_ustar();
        let mut pax = Vec::new();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        self.set_mtime(&mut header, &mut pax, Timestamp::default());
        set_name(&mut header, &mut pax, name);
        self.header(name, &mut header, &pax)
    }

    fn set_mtime(&self, header: &mut Header, pax: &mut Vec<u8>, mut t: Timestamp) {
        if let Some(limit) = self.clamp
            && t > (Timestamp {
                sec: limit,
                nsec: 0,
            })
        {
            t = Timestamp {
                sec: limit,
                nsec: 0,
            };
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

    /// Writes the PAX extended header (if any record) and then the entry's header.
    fn header(&mut self, name: &[u8], header: &mut Header, pax: &[u8]) -> Result<()> {
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            let base = name
                .strip_suffix(b"/")
                .unwrap_or(name)
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
            self.raw(pax)?;
            self.pad(pax.len() as u64)?;
        }
        header.set_cksum();
        self.entries += 1;
        self.raw(header.as_bytes())
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.tar.write_all(bytes).map_err(|e| self.write_err(e))
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let rest = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.raw(&[0; BLOCK][..rest])
    }

    /// Streams exactly `size` bytes of a file into the archive.
    fn copy(&mut self, mut file: File, path: &Path, size: u64) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut self.buf[..want]) {
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
            self.tar
                .write_all(&self.buf[..n])
                .map_err(|source| Error::Write {
                    path: self.out.to_path_buf(),
                    source,
                })?;
            left -= n as u64;
        }
        self.pad(size)
    }

    fn finish(mut self) -> Result<LayerInfo> {
        self.raw(&[0; 2 * BLOCK])?;
        let err = |source| Error::Write {
            path: self.out.to_path_buf(),
            source,
        };
        let uncompressed = self.tar.into_inner().map_err(|e| err(e.into_error()))?;
        let (gzip, diff_id, uncompressed_size) = uncompressed.finish();
        let mut compressed = gzip.finish().map_err(err)?;
        compressed.flush().map_err(err)?;
        let (_, digest, size) = compressed.finish();
        Ok(LayerInfo {
            digest,
            diff_id,
            size,
            uncompressed_size,
            entries: self.entries,
        })
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

/// The extended attributes to carry, sorted by name, as PAX records' keys and values.
fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            out.push((key, value));
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
const LINK_NAME: std::ops::Range<usize> = 157..257;
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
fn pax_record(pax: &mut Vec<u8>, key: &[u8], value: &[u8]) {
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
fn format_pax_time(t: Timestamp) -> String {
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

fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
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

/// Extracts a layer (gzip or plain tar) onto `root`, honouring whiteouts and opaque
/// directories, and refusing any entry that would write outside `root`.
pub fn apply_layer(layer: &Path, root: &Path) -> Result<ApplyStats> {
    let read_err = |source| Error::ReadLayer {
        path: layer.to_path_buf(),
        source,
    };
    let mut input = BufReader::with_capacity(256 << 10, File::open(layer).map_err(read_err)?);
    let gzip = input
        .fill_buf()
        .map_err(read_err)?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut applier = Applier::new(root)?;
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

struct Applier {
    dirs: Dirs,
    /// Paths this layer made, so an opaque marker keeps them whatever the entry order.
    created: HashSet<PathBuf>,
    /// Directory mtimes, set last: creating their contents changes them.
    dir_times: HashMap<PathBuf, Timestamp>,
    stats: ApplyStats,
    buf: Vec<u8>,
}

impl Applier {
    fn new(root: &Path) -> Result<Self> {
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
        let rel: PathBuf = comps.iter().collect();

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT) {
            if name.as_bytes() == OPAQUE {
                return self.opaque(parents, &shown);
            }
            if hidden.starts_with(WHITEOUT) {
                // Other `.wh..wh.` names are aufs bookkeeping, not content.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Error::Escape {
                    entry: shown,
                    reason: "whiteout of an invalid name".into(),
                });
            }
            return self.whiteout(parents, OsStr::from_bytes(hidden), &shown);
        }

        let meta = read_meta(entry, &shown)?;
        let link_target = match kind {
            EntryType::Link => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                Some(self.hard_link_target(&link, &comps, &shown)?)
            }
            _ => None,
        };
        let symlink_target = match kind {
            EntryType::Symlink => Some(entry.link_name_bytes().unwrap_or_default().into_owned()),
            _ => None,
        };
        let device = match kind {
            EntryType::Char | EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                Some(rustix::fs::makedev(major, minor))
            }
            _ => None,
        };

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
        let is_dir = kind == EntryType::Directory;
        if !is_dir {
            self.dir_times.remove(&rel);
        }
        if let Some((target_dir, target_name)) = &link_target
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

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| failed("cannot create the file", e.into()))?;
                let mut file = File::from(fd);
                let mut written = 0u64;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(Error::ReadLayer {
                                path: layer.to_path_buf(),
                                source: e,
                            });
                        }
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| failed("cannot write the file", e))?;
                    written += n as u64;
                }
                self.stats.bytes += written;
                set_fd_meta(file.as_fd(), &meta).map_err(|(what, e)| failed(what, e.into()))?;
                rustix::fs::futimens(&file, &timestamps(meta.mtime))
                    .map_err(|e| failed("cannot set its times", e.into()))?;
            }
            EntryType::Directory => {
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
            EntryType::Symlink => {
                let target = symlink_target.unwrap_or_default();
                rustix::fs::symlinkat(target.as_slice(), parent, name)
                    .map_err(|e| failed("cannot create the symlink", e.into()))?;
                set_at_meta(parent, name, &meta, false)
                    .map_err(|(what, e)| failed(what, e.into()))?;
            }
            EntryType::Link => {
                let Some((target_dir, target_name)) = &link_target else {
                    return Ok(());
                };
                rustix::fs::linkat(target_dir, target_name, parent, name, AtFlags::empty())
                    .map_err(|e| failed("cannot create the hard link", e.into()))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
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
                    device.unwrap_or(0),
                )
                .map_err(|e| failed(what, e.into()))?;
                set_at_meta(parent, name, &meta, true)
                    .map_err(|(what, e)| failed(what, e.into()))?;
            }
            other => {
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
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::snapshot::diff;
    use filetime::FileTime;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;

    /// `cap_net_bind_service=ep` in the kernel's v2 format.
    const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn own(path: &Path, uid: u32, gid: u32) {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("chown");
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn date(path: &Path, sec: i64, nsec: u32) {
        let t = FileTime::from_unix_time(sec, nsec);
        filetime::set_symlink_file_times(path, t, t).expect("set times");
    }

    fn mknod(path: &Path, kind: FileType, mode: u32, dev: (u32, u32)) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            kind,
            Mode::from_raw_mode(mode),
            rustix::fs::makedev(dev.0, dev.1),
        )
        .expect("mknod");
    }

    /// Every entry of a tree as one line: what a layer must carry across, and the first
    /// path of its hard-link group (identity, not inode numbers).
    fn describe(root: &Path) -> Vec<String> {
        let snap = Snapshot::take(root, &[]).expect("snapshot");
        let mut groups: HashMap<u64, String> = HashMap::new();
        snap.entries()
            .map(|(path, e)| {
                let full = root.join(path);
                let shown = path.display().to_string();
                let data = match e.kind {
                    FileKind::Regular => hex::encode(Sha256::digest(fs::read(&full).expect("read"))),
                    _ => String::new(),
                };
                let size = if e.kind == FileKind::Directory { 0 } else { e.size };
                let group = match e.kind {
                    FileKind::Directory => String::new(),
                    _ if e.nlink > 1 => groups.entry(e.ino).or_insert_with(|| shown.clone()).clone(),
                    _ => String::new(),
                };
                let mut xattrs: Vec<String> = xattr::list(&full)
                    .expect("xattrs")
                    .map(|n| {
                        let v = xattr::get(&full, &n).expect("xattr").unwrap_or_default();
                        format!("{}={}", n.to_string_lossy(), hex::encode(v))
                    })
                    .collect();
                xattrs.sort();
                format!(
                    "{shown} {:?} {:o} {}:{} size={size} mtime={}.{:09} link={:?} dev={:?} data={data} xattrs={xattrs:?} group={group}",
                    e.kind, e.mode, e.uid, e.gid, e.mtime.sec, e.mtime.nsec, e.link_target, e.rdev
                )
            })
            .collect()
    }

    /// A tree with every kind of entry a layer must carry.
    fn build(root: &Path) {
        let long_dir = "d".repeat(120);
        let long_name = format!("{}.txt", "n".repeat(150));
        for dir in [
            "bin",
            "data/sub/deeper",
            "empty",
            "etc",
            "home/user",
            "run",
            "tmp",
        ] {
            fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        fs::create_dir_all(root.join("long").join(&long_dir)).expect("mkdir");
        fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").expect("write");
        chmod(&root.join("bin/tool"), 0o4755);
        // Not every filesystem takes file capabilities; the rest of the test stands.
        let _ = xattr::set(root.join("bin/tool"), "security.capability", &CAPABILITY);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect();
        fs::write(root.join("data/big.bin"), noise).expect("write");
        fs::write(root.join("data/hard1"), "shared inode\n").expect("write");
        fs::hard_link(root.join("data/hard1"), root.join("data/hard2")).expect("link");
        fs::hard_link(root.join("data/hard1"), root.join("data/sub/hard3")).expect("link");
        fs::write(root.join("data/sub/deeper/file"), "deep\n").expect("write");
        chmod(&root.join("empty"), 0o700);
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        symlink("/etc/passwd", root.join("etc/abs-link")).expect("symlink");
        symlink(
            "../home/user/file with spaces.txt",
            root.join("etc/rel-link"),
        )
        .expect("symlink");
        fs::write(root.join("home/user/file with spaces.txt"), "spaces\n").expect("write");
        xattr::set(
            root.join("home/user/file with spaces.txt"),
            "user.test",
            b"hello",
        )
        .expect("xattr");
        fs::write(root.join("home/user/ünïcødé ☃.txt"), "unicode\n").expect("write");
        own(&root.join("home/user"), 1000, 1000);
        own(&root.join("home/user/file with spaces.txt"), 1000, 1000);
        own(&root.join("home/user/ünïcødé ☃.txt"), 1000, 1000);
        fs::write(root.join("home/big-ids"), "ids\n").expect("write");
        own(&root.join("home/big-ids"), 3_000_000, 4_000_000);
        fs::write(root.join("long").join(&long_dir).join(&long_name), "long\n").expect("write");
        symlink("t".repeat(150), root.join("long/link")).expect("symlink");
        mknod(&root.join("run/fifo"), FileType::Fifo, 0o640, (0, 0));
        mknod(
            &root.join("run/null"),
            FileType::CharacterDevice,
            0o666,
            (1, 3),
        );
        chmod(&root.join("tmp"), 0o1777);
        date(&root.join("etc/passwd"), 1_600_000_000, 123_456_789);
        date(&root.join("etc/abs-link"), 1_500_000_000, 5);
        date(&root.join("etc"), 1_400_000_000, 999_999_999);
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn check_digests(layer: &Path, info: &LayerInfo) {
        let compressed = fs::read(layer).expect("read layer");
        assert_eq!(info.digest, sha256_hex(&compressed));
        assert_eq!(info.size, compressed.len() as u64);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut tar)
            .expect("gunzip");
        assert_eq!(info.diff_id, sha256_hex(&tar));
        assert_eq!(info.uncompressed_size, tar.len() as u64);
    }

    fn gnu_tar(args: &[&str]) -> String {
        let out = Command::new("tar").args(args).output().expect("run tar");
        assert!(
            out.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn layer_of(
        root: &Path,
        before: &Snapshot,
        out: &Path,
        clamp: Option<i64>,
    ) -> (Snapshot, Changes, LayerInfo) {
        let after = Snapshot::take(root, &[]).expect("snapshot");
        let changes = diff(before, &after);
        let info = write_layer(root, &changes, &after, out, clamp).expect("write layer");
        (after, changes, info)
    }

    #[test]
    fn round_trip_with_whiteouts_and_replaced_directories() {
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        build(&src);
        let first = work.path().join("1.tar.gz");
        let (s1, changes, info) = layer_of(&src, &Snapshot::default(), &first, None);
        assert_eq!(changes.added.len(), s1.len());
        assert_eq!(info.entries, s1.len());
        check_digests(&first, &info);
        let expected1 = describe(&src);
        assert!(
            expected1
                .iter()
                .any(|l| l.starts_with("bin/tool ") && l.contains("security.capability")),
            "the test tree lacks a file capability: {expected1:#?}"
        );

        let once = work.path().join("once");
        fs::create_dir(&once).expect("mkdir");
        let stats = apply_layer(&first, &once).expect("apply");
        assert_eq!(stats.entries, s1.len());
        assert_eq!(describe(&once), expected1);

        // Delete a file and a directory tree, replace a directory, turn one into a file,
        // change a hard-linked file.
        fs::remove_file(src.join("home/user/ünïcødé ☃.txt")).expect("rm");
        fs::remove_dir_all(src.join("data/sub")).expect("rm -r");
        fs::remove_dir_all(src.join("etc")).expect("rm -r");
        fs::create_dir(src.join("etc")).expect("mkdir");
        fs::write(src.join("etc/new"), "new\n").expect("write");
        fs::remove_dir(src.join("empty")).expect("rmdir");
        fs::write(src.join("empty"), "a file now\n").expect("write");
        fs::write(src.join("data/hard1"), "shared inode, changed\n").expect("write");
        let second = work.path().join("2.tar.gz");
        let (_, changes, info) = layer_of(&src, &s1, &second, None);
        check_digests(&second, &info);
        assert_eq!(
            changes.removed,
            [
                PathBuf::from("data/sub"),
                PathBuf::from("etc/abs-link"),
                PathBuf::from("etc/passwd"),
                PathBuf::from("etc/rel-link"),
                PathBuf::from("home/user/ünïcødé ☃.txt")
            ]
        );
        let listing = gnu_tar(&[
            "--quoting-style=literal",
            "-tzf",
            second.to_str().expect("utf-8"),
        ]);
        for marker in [
            "data/.wh.sub",
            "etc/.wh.passwd",
            "home/user/.wh.ünïcødé ☃.txt",
        ] {
            assert!(
                listing.lines().any(|l| l == marker),
                "{marker} missing in:\n{listing}"
            );
        }
        let expected2 = describe(&src);

        // Both layers onto a fresh root, and the second onto the first's result.
        let fresh = work.path().join("fresh");
        fs::create_dir(&fresh).expect("mkdir");
        apply_layer(&first, &fresh).expect("apply 1");
        let stats = apply_layer(&second, &fresh).expect("apply 2");
        assert_eq!(stats.whiteouts, 5);
        assert_eq!(describe(&fresh), expected2);
        apply_layer(&second, &once).expect("apply 2 again");
        assert_eq!(describe(&once), expected2);
    }

    #[test]
    fn gnu_tar_lists_sorted_entries_and_extracts_the_layer() {
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        build(&src);
        let layer = work.path().join("layer.tar.gz");
        let (_, _, info) = layer_of(&src, &Snapshot::default(), &layer, None);
        let layer = layer.to_str().expect("utf-8");

        gnu_tar(&["-tzvf", layer]);
        let names: Vec<String> = gnu_tar(&["--quoting-style=literal", "-tzf", layer])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(names.len(), info.entries);
        let paths: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert!(
            names.contains(&"bin/".to_string()),
            "directories end with a slash"
        );
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with('/') && !n.starts_with("./"))
        );
        assert!(
            names.iter().any(|n| n.len() > 255),
            "the long name was cut: {names:#?}"
        );

        let out = work.path().join("gnu");
        fs::create_dir(&out).expect("mkdir");
        gnu_tar(&[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpzf",
            layer,
            "-C",
            out.to_str().expect("utf-8"),
        ]);
        assert_eq!(describe(&out), describe(&src));
    }

    #[test]
    fn clamped_layers_are_reproducible() {
        let work = tempfile::tempdir().expect("tempdir");
        let (a, b) = (work.path().join("a"), work.path().join("b"));
        fs::create_dir(&a).expect("mkdir");
        build(&a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir(&b).expect("mkdir");
        build(&b);
        let clamp = 1_450_000_000;
        let (_, _, first) = layer_of(
            &a,
            &Snapshot::default(),
            &work.path().join("a1"),
            Some(clamp),
        );
        let (_, _, again) = layer_of(
            &a,
            &Snapshot::default(),
            &work.path().join("a2"),
            Some(clamp),
        );
        let (_, _, other) = layer_of(
            &b,
            &Snapshot::default(),
            &work.path().join("b1"),
            Some(clamp),
        );
        assert_eq!(first, again);
        assert_eq!(
            first, other,
            "same content at another time gives another layer"
        );

        let file = File::open(work.path().join("a1")).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let mut mtime = entry.header().mtime().expect("mtime").to_string();
            if let Some(pax) = entry.pax_extensions().expect("pax") {
                for r in pax {
                    let r = r.expect("record");
                    if r.key_bytes() == b"mtime" {
                        mtime = String::from_utf8_lossy(r.value_bytes()).into_owned();
                    }
                }
            }
            let t = parse_pax_time(mtime.as_bytes()).expect("time");
            assert!(
                t <= Timestamp {
                    sec: clamp,
                    nsec: 0
                },
                "{mtime}"
            );
        }
        // Unclamped, the nanoseconds are kept.
        let (_, _, free) = layer_of(&a, &Snapshot::default(), &work.path().join("a3"), None);
        assert_ne!(free.digest, first.digest);
    }

    #[test]
    fn empty_change_set_gives_a_valid_empty_layer() {
        let work = tempfile::tempdir().expect("tempdir");
        let layer = work.path().join("empty.tar.gz");
        let info = write_layer(
            work.path(),
            &Changes::default(),
            &Snapshot::default(),
            &layer,
            None,
        )
        .expect("write");
        assert_eq!((info.entries, info.uncompressed_size), (0, 1024));
        check_digests(&layer, &info);
        assert_eq!(gnu_tar(&["-tzf", layer.to_str().expect("utf-8")]), "");
        let root = work.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        assert_eq!(
            apply_layer(&layer, &root).expect("apply"),
            ApplyStats::default()
        );
    }

    #[test]
    fn pax_times_and_records() {
        for (t, text) in [
            (
                Timestamp {
                    sec: 1_600_000_000,
                    nsec: 123_456_789,
                },
                "1600000000.123456789",
            ),
            (
                Timestamp {
                    sec: 5,
                    nsec: 500_000_000,
                },
                "5.5",
            ),
            (Timestamp { sec: 7, nsec: 0 }, "7"),
            (
                Timestamp {
                    sec: -2,
                    nsec: 500_000_000,
                },
                "-1.5",
            ),
            (Timestamp { sec: -3, nsec: 0 }, "-3"),
        ] {
            assert_eq!(format_pax_time(t), text);
            assert_eq!(parse_pax_time(text.as_bytes()), Some(t));
        }
        assert_eq!(parse_pax_time(b"1.5x"), None);
        assert_eq!(parse_pax_time(b""), None);
        let mut pax = Vec::new();
        pax_record(&mut pax, b"path", &[b'a'; 93]);
        // A body of 100 bytes (value, key, " =\n") needs a three-digit length: 103.
        assert_eq!(pax.len(), 103);
        assert!(pax.starts_with(b"103 path="));
        pax.clear();
        pax_record(&mut pax, b"mtime", b"1");
        assert_eq!(pax, b"11 mtime=1\n");
    }

    /// A crafted entry: name and link stored raw, as an attacker would.
    enum Crafted<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn craft(path: &Path, entries: &[Crafted<'_>]) {
        let mut builder = tar::Builder::new(File::create(path).expect("create"));
        for entry in entries {
            let (name, kind, link, data) = match *entry {
                Crafted::File(name, data) => (name, EntryType::Regular, "", data),
                Crafted::Dir(name) => (name, EntryType::Directory, "", ""),
                Crafted::Symlink(name, target) => (name, EntryType::Symlink, target, ""),
                Crafted::Hard(name, target) => (name, EntryType::Link, target, ""),
            };
            let mut h = Header::new_ustar();
            h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
            h.as_mut_bytes()[LINK_NAME][..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(if kind == EntryType::Directory {
                0o777
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            builder.append(&h, data.as_bytes()).expect("append");
        }
        builder.finish().expect("finish");
    }

    /// A root and, beside it, a sentinel directory that must come out untouched.
    struct Arena {
        dir: tempfile::TempDir,
    }

    impl Arena {
        fn new() -> Arena {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::create_dir(dir.path().join("root")).expect("mkdir");
            fs::create_dir(dir.path().join("sentinel")).expect("mkdir");
            fs::write(dir.path().join("sentinel/keep"), "original").expect("write");
            chmod(&dir.path().join("sentinel"), 0o755);
            Arena { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn sentinel(&self) -> String {
            self.dir.path().join("sentinel").display().to_string()
        }

        /// Applies the crafted layer; returns its error, checking nothing moved outside.
        fn apply(&self, entries: &[Crafted<'_>]) -> Result<ApplyStats> {
            let layer = self.dir.path().join("layer.tar");
            craft(&layer, entries);
            let outside = || {
                let mut names: Vec<_> = fs::read_dir(self.dir.path())
                    .expect("ls")
                    .map(|e| e.expect("entry").file_name())
                    .collect();
                names.sort();
                (names, describe(&self.dir.path().join("sentinel")))
            };
            let before = outside();
            let result = apply_layer(&layer, &self.root());
            assert_eq!(outside(), before, "something was written outside the root");
            assert_eq!(
                fs::metadata(self.dir.path().join("sentinel"))
                    .expect("stat")
                    .permissions()
                    .mode()
                    & 0o7777,
                0o755
            );
            result
        }

        fn refused(&self, entries: &[Crafted<'_>]) -> String {
            match self.apply(entries) {
                Ok(stats) => panic!("applied: {stats:?}"),
                Err(e) => e.to_string(),
            }
        }
    }

    #[test]
    fn dotdot_and_absolute_names_are_refused() {
        let arena = Arena::new();
        let message = arena.refused(&[Crafted::File("a/../../x", "pwned")]);
        assert_eq!(
            message,
            r#"layer entry "a/../../x" escapes the root (".." component)"#
        );
        let message = arena.refused(&[Crafted::File("../sentinel/keep", "pwned")]);
        assert!(
            message.starts_with(r#"layer entry "../sentinel/keep" escapes the root"#),
            "{message}"
        );
        let absolute = format!("{}/keep", arena.sentinel());
        let message = arena.refused(&[Crafted::File(&absolute, "pwned")]);
        assert_eq!(
            message,
            format!("layer entry {absolute:?} escapes the root (absolute path)")
        );
    }

    #[test]
    fn a_symlink_in_the_tree_is_never_followed() {
        let arena = Arena::new();
        let sentinel = arena.sentinel();
        // Through a symlink the same layer made.
        let message = arena.refused(&[
            Crafted::Symlink("evil", &sentinel),
            Crafted::File("evil/keep", "pwned"),
        ]);
        assert_eq!(
            message,
            r#"layer entry "evil/keep" escapes the root ("evil" is a symlink)"#
        );
        // Through one already in the tree (a lower layer), deeper down.
        fs::create_dir(arena.root().join("a")).expect("mkdir");
        symlink("../..", arena.root().join("a/up")).expect("symlink");
        let message = arena.refused(&[Crafted::File("a/up/sentinel/keep", "pwned")]);
        assert!(message.contains(r#"("a/up" is a symlink)"#), "{message}");
        // A whiteout through it.
        let message = arena.refused(&[Crafted::File("evil/.wh.keep", "")]);
        assert!(message.contains("escapes the root"), "{message}");
        // A directory entry through it, which would chmod the target.
        let message = arena.refused(&[Crafted::Dir("a/up/sentinel/")]);
        assert!(message.contains("escapes the root"), "{message}");
    }

    #[test]
    fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
        let arena = Arena::new();
        let target = format!("{}/keep", arena.sentinel());
        let stats = arena
            .apply(&[
                Crafted::Symlink("file", &target),
                Crafted::File("file", "mine"),
                Crafted::Symlink("dir", &arena.sentinel()),
                Crafted::Dir("dir/"),
            ])
            .expect("apply");
        assert_eq!(stats.entries, 4);
        assert_eq!(
            fs::read_to_string(arena.root().join("file")).expect("read"),
            "mine"
        );
        assert!(
            fs::symlink_metadata(arena.root().join("dir"))
                .expect("stat")
                .is_dir()
        );
    }

    #[test]
    fn hard_links_that_escape_are_refused() {
        let arena = Arena::new();
        let message = arena.refused(&[Crafted::Hard("passwd", "../../etc/passwd")]);
        assert_eq!(
            message,
            r#"layer entry "passwd" escapes the root (hard link to "../../etc/passwd": ".." component)"#
        );
        let message = arena.refused(&[Crafted::Hard("passwd", "/etc/passwd")]);
        assert!(message.contains("absolute path"), "{message}");
        let message = arena.refused(&[
            Crafted::Symlink("evil", &arena.sentinel()),
            Crafted::Hard("stolen", "evil/keep"),
        ]);
        assert!(
            message.contains(r#"through the symlink "evil""#),
            "{message}"
        );
        assert!(!arena.root().join("stolen").exists());
    }

    #[test]
    fn opaque_directory_keeps_this_layers_entries_whatever_their_order() {
        let work = tempfile::tempdir().expect("tempdir");
        let root = work.path().join("root");
        fs::create_dir_all(root.join("d/lower-dir")).expect("mkdir");
        fs::write(root.join("d/lower"), "lower").expect("write");
        fs::write(root.join("d/lower-dir/x"), "lower").expect("write");
        fs::write(root.join("gone"), "lower").expect("write");
        let layer = work.path().join("layer.tar");
        craft(
            &layer,
            &[
                Crafted::Dir("d/"),
                Crafted::File("d/-before", "mine"),
                Crafted::File("d/.wh..wh..opq", ""),
                Crafted::File("d/after", "mine"),
                Crafted::File(".wh.gone", ""),
                Crafted::File("new/.wh.never-there", ""),
            ],
        );
        let stats = apply_layer(&layer, &root).expect("apply");
        assert_eq!(stats.whiteouts, 3);
        let mut left: Vec<_> = fs::read_dir(root.join("d"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["-before", "after"]);
        assert!(!root.join("gone").exists());
    }
}
