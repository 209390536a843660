//! OCI layers (`application/vnd.oci.image.layer.v1.tar+gzip`): written from a snapshot
//! difference (stage pods) or from in-memory nodes (the assemble pod), and applied onto
//! a root filesystem ([`apply`], the stage pod's security boundary).
//!
//! Writing streams every file through tar ([`tar`], the builder's one tar writer), gzip
//! (deflated in parallel, [`gzip`]) and two SHA-256 hashers at once (the diff id of the
//! tar, the digest of the gzip), so no file is ever held in memory.

pub mod apply;
pub mod gzip;
pub mod tar;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use apply::{ApplyStats, apply_layer, extract_archive};

use self::gzip::ParGzEncoder;
use self::tar::TarWriter;
use crate::fs::filetree::Node;
use crate::fs::snapshot::{Changes, Entry, Snapshot};

/// The gzip level of layers, measured with zlib-rs (`benches/snapshot.rs`, and tars of real
/// binaries and sources): level 2 packs over twice as fast as zlib's default (6) for ~4% more
/// bytes; level 1 is faster again but 13-20% bigger on binaries and sources. A stage pod waits
/// on packing at every instruction, and every node that pulls the image pays for the bytes.
pub const DEFAULT_LEVEL: u32 = 2;

/// zstd's level for layers: 3, zstd's and BuildKit's default; it packs faster than gzip
/// at level 2 and smaller.
pub const ZSTD_LEVEL: i32 = 3;

/// The OCI media types of the two layer compressions.
pub const GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How layer blobs are compressed (`spec.output.compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// What every registry and runtime takes.
    #[default]
    Gzip,
    /// Smaller and faster to pack and unpack; pulled by containerd 1.5+, CRI-O and
    /// podman, not by old Docker daemons, and OCI manifests only.
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => GZIP_MEDIA_TYPE,
            Compression::Zstd => ZSTD_MEDIA_TYPE,
        }
    }
}

/// A layer or archive's tar stream, decompressed as its first bytes say: gzip, zstd,
/// or a plain tar.
pub fn decompressed<'a, R: io::BufRead + 'a>(mut input: R) -> io::Result<Box<dyn io::Read + 'a>> {
    let head = input.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else {
        Box::new(input)
    })
}

/// The name prefix of a whiteout: `.wh.<name>` hides `<name>` of the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The entry that hides everything the layers below put in its directory.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the layer {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path} for the layer")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while its layer was written (snapshot size {expected}, now {actual})")]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} is in the changes but not in the snapshot")]
    NotInSnapshot { path: PathBuf },
    #[error("cannot read the layer {path}")]
    ReadLayer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?} escapes the root ({reason})")]
    Escape { entry: String, reason: String },
    #[error("layer entry {entry:?}: {what}")]
    Entry {
        entry: String,
        what: String,
        #[source]
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
    /// The blob's OCI media type (its compression).
    pub media_type: String,
}

/// Writes the layer of `changes` (paths in `after`, read from under `root`) to `out`.
/// With `clamp_mtime` (SOURCE_DATE_EPOCH), no entry is newer than that second.
pub fn write_layer(
    root: &Path,
    changes: &Changes,
    after: &Snapshot,
    out: &Path,
    clamp_mtime: Option<i64>,
    compression: Compression,
) -> Result<LayerInfo> {
    write_layer_entries(
        root,
        changes,
        after,
        out,
        clamp_mtime,
        compression,
        DEFAULT_LEVEL,
    )
}

/// [`write_layer`] as gzip at a chosen level (0-9), for the benchmark's comparison.
pub fn write_layer_with_level(
    root: &Path,
    changes: &Changes,
    after: &Snapshot,
    out: &Path,
    clamp_mtime: Option<i64>,
    level: u32,
) -> Result<LayerInfo> {
    write_layer_entries(
        root,
        changes,
        after,
        out,
        clamp_mtime,
        Compression::Gzip,
        level,
    )
}

fn write_layer_entries(
    root: &Path,
    changes: &Changes,
    after: &Snapshot,
    out: &Path,
    clamp_mtime: Option<i64>,
    compression: Compression,
    gzip_level: u32,
) -> Result<LayerInfo> {
    // Entries and whiteouts in one sorted order (a whiteout sorts by its own name), each
    // path once.
    let mut ops: Vec<(PathBuf, Change<'_>)> = Vec::new();
    for path in changes.added.iter().chain(&changes.changed) {
        let entry = after
            .get(path)
            .ok_or_else(|| Error::NotInSnapshot { path: path.clone() })?;
        ops.push((path.clone(), Change::Put(entry)));
    }
    for path in &changes.removed {
        let mut marker = WHITEOUT_PREFIX.to_string();
        marker.push_str(&path.file_name().unwrap_or_default().to_string_lossy());
        ops.push((path.with_file_name(marker), Change::Hide(path)));
    }
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    ops.dedup_by(|a, b| a.0 == b.0);
    write_compressed(out, compression, gzip_level, clamp_mtime, |tar| {
        for (path, change) in &ops {
            match change {
                Change::Put(entry) => tar.put_disk(path, &root.join(path), entry)?,
                Change::Hide(hidden) => tar.whiteout(hidden)?,
            }
        }
        Ok(())
    })
}

/// One entry of a snapshot layer: an object as it now is, or a whiteout of a path gone.
enum Change<'a> {
    Put(&'a Entry),
    Hide(&'a Path),
}

/// Writes in-memory nodes (parents before their contents) as a layer at `out`.
pub fn write_nodes(
    entries: &[(PathBuf, Node)],
    out: &Path,
    clamp: Option<i64>,
    compression: Compression,
) -> Result<LayerInfo> {
    write_compressed(out, compression, DEFAULT_LEVEL, clamp, |tar| {
        entries
            .iter()
            .try_for_each(|(path, node)| tar.put_node(path, node))
    })
}

type Compressed = Hashing<BufWriter<File>>;
type LayerTar = TarWriter<BufWriter<Hashing<Encoder>>>;

/// The compressor of a layer being written.
enum Encoder {
    Gzip(ParGzEncoder<Compressed>),
    Zstd(zstd::stream::write::Encoder<'static, Compressed>),
}

impl Encoder {
    fn new(out: Compressed, compression: Compression, gzip_level: u32) -> io::Result<Encoder> {
        Ok(match compression {
            Compression::Gzip => Encoder::Gzip(ParGzEncoder::new(
                out,
                gzip_level,
                gzip::default_workers(),
                gzip::BLOCK_SIZE,
            )?),
            // One thread: zstd's output then depends on the bytes alone.
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?),
        })
    }

    fn finish(self) -> io::Result<Compressed> {
        match self {
            Encoder::Gzip(gz) => gz.finish(),
            Encoder::Zstd(zst) => zst.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(gz) => gz.write(buf),
            Encoder::Zstd(zst) => zst.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(gz) => gz.flush(),
            Encoder::Zstd(zst) => zst.flush(),
        }
    }
}

/// A layer at `out` with the entries `fill` writes; a partial blob is removed, never
/// left to look like a layer.
fn write_compressed(
    out: &Path,
    compression: Compression,
    gzip_level: u32,
    clamp: Option<i64>,
    fill: impl FnOnce(&mut LayerTar) -> Result<()>,
) -> Result<LayerInfo> {
    let written = (|| {
        let err = |source| Error::Write {
            path: out.to_path_buf(),
            source,
        };
        let file = File::create(out).map_err(err)?;
        let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file));
        let encoder = Encoder::new(compressed, compression, gzip_level).map_err(err)?;
        let mut tar = TarWriter::new(
            BufWriter::with_capacity(256 << 10, Hashing::new(encoder)),
            out,
            clamp,
        );
        fill(&mut tar)?;
        let (buffered, entries) = tar.finish()?;
        let uncompressed = buffered.into_inner().map_err(|e| err(e.into_error()))?;
        let (encoder, diff_id, uncompressed_size) = uncompressed.finish();
        let mut compressed = encoder.finish().map_err(err)?;
        compressed.flush().map_err(err)?;
        let (_, digest, size) = compressed.finish();
        Ok(LayerInfo {
            digest,
            diff_id,
            size,
            uncompressed_size,
            entries,
            media_type: compression.media_type().to_string(),
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
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

#[cfg(test)]
mod tests {
    use super::tar::{LINK_NAME, format_pax_time, parse_pax_time, pax_record};
    use super::*;
    use crate::fs::snapshot::{FileKind, Timestamp, diff};
    use ::tar::{EntryType, Header};
    use filetime::FileTime;
    use rustix::fs::FileType;
    use rustix::fs::{AtFlags, Gid, Mode, Uid};
    use std::collections::HashMap;
    use std::fs;
    use std::io::Read as _;
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
        let info = write_layer(root, &changes, &after, out, clamp, Compression::Gzip)
            .expect("write layer");
        (after, changes, info)
    }

    /// zstd layers hold the same tar as gzip ones (same diff id), are the same bytes
    /// run to run, say what they are, and apply like any layer.
    #[test]
    fn zstd_layers_hold_the_same_tar_and_apply() {
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        build(&src);
        let after = Snapshot::take(&src, &[]).expect("snapshot");
        let changes = diff(&Snapshot::default(), &after);
        let write = |name: &str, compression| {
            let out = work.path().join(name);
            let info =
                write_layer(&src, &changes, &after, &out, None, compression).expect("write layer");
            (out, info)
        };
        let (_, gz) = write("l.tar.gz", Compression::Gzip);
        let (zst_path, zst) = write("l.tar.zst", Compression::Zstd);
        let (_, again) = write("again.tar.zst", Compression::Zstd);
        assert_eq!(zst.diff_id, gz.diff_id, "the same tar");
        assert_eq!(zst, again, "the same blob run to run");
        assert_eq!(zst.media_type, ZSTD_MEDIA_TYPE);
        assert_eq!(gz.media_type, GZIP_MEDIA_TYPE);
        let bytes = fs::read(&zst_path).expect("read");
        assert_eq!(zst.digest, sha256_hex(&bytes));
        let tar = zstd::stream::decode_all(bytes.as_slice()).expect("unzstd");
        assert_eq!(zst.diff_id, sha256_hex(&tar));
        let root = work.path().join("applied");
        fs::create_dir(&root).expect("mkdir");
        apply_layer(&zst_path, &root).expect("apply");
        assert_eq!(describe(&root), describe(&src));
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
        let mut archive = ::tar::Archive::new(flate2::read::GzDecoder::new(file));
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
            Compression::Gzip,
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
        let mut builder = ::tar::Builder::new(File::create(path).expect("create"));
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
