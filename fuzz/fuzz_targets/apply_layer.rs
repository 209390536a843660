//! Layers onto a root that already holds symlinks pointing out of it (a lower layer's):
//! applying fails or succeeds, never panics, and nothing appears outside the root. The
//! input is either raw bytes (gzip, zstd, tar or junk), or, with a first byte of 0, a
//! list of entries built into a tar here, so that headers keep valid checksums and the
//! fuzzer spends its time on names, link targets, types and whiteouts: `..`, absolute
//! paths, writes through the symlinks, hard links out, `.wh.` markers.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stagecoach_builder::layer::apply::apply_layer;

/// Path pieces: bytes below 250 pick a character, the others a piece that matters.
fn path(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bytes {
        let piece: &[u8] = match b {
            250 => b"..",
            251 => b".wh.",
            252 => b".wh..wh..opq",
            253 => b"up",
            254 => b"abs",
            _ => &b"ab/."[usize::from(*b) % 4..usize::from(*b) % 4 + 1],
        };
        out.extend_from_slice(piece);
    }
    out
}

/// One entry per chunk between 0xff bytes: type, mode byte, then name and link target
/// split at the first 0xfe.
fn tar_of(spec: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in spec.split(|b| *b == 0xff) {
        let [kind, mode, rest @ ..] = chunk else { continue };
        let (name, link) = match rest.iter().position(|b| *b == 0xfe) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let entry_type = match kind % 6 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            3 => tar::EntryType::Link,
            4 => tar::EntryType::Fifo,
            _ => tar::EntryType::Char,
        };
        let data: &[u8] = if entry_type == tar::EntryType::Regular { b"data\n" } else { b"" };
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().expect("gnu header");
        let name = path(name);
        let link = path(link);
        let n = name.len().min(gnu.name.len());
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(gnu.linkname.len());
        gnu.linkname[..l].copy_from_slice(&link[..l]);
        header.set_entry_type(entry_type);
        header.set_mode(u32::from(*mode) << 4 | 0o600);
        header.set_size(data.len() as u64);
        header.set_mtime(1);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((0, spec)) => tar_of(spec),
        _ => data.to_vec(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    std::os::unix::fs::symlink("../outside", root.join("up")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("abs")).expect("symlink");
    let layer = dir.path().join("layer");
    std::fs::write(&layer, &bytes).expect("layer");
    let _ = apply_layer(&layer, &root);
    let escaped: Vec<_> = std::fs::read_dir(&outside).expect("outside").collect();
    assert!(escaped.is_empty(), "the layer wrote outside its root: {escaped:?}");
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["layer", "outside", "root"], "something appeared beside the root");
    assert!(Path::new(&layer).is_file());
});
