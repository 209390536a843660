//! COPY without root and without a filesystem: the layer of one COPY of a stage that
//! only copies (the plan's `Execution::Assemble`), written straight from the sources'
//! file trees (another stage's `export.tar`, the build context) as a gzip tar.
//!
//! The rules are those copy.rs applies on a real filesystem in stage pods, so a stage
//! gives the same image whichever pod builds it: directory contents, trailing slash,
//! several sources, globs, `--parents`, `--exclude`, owners (`--chown`, root for the
//! context, kept for `--from`), `--chmod`, and missing parent directories created with
//! mode 755. Destinations resolve against the image's own tree, so they follow its
//! symlinks and land in its existing directories as they would in a container.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::GzBuilder;

use crate::exec::disk_copy_old::{Chmod, clean_relative, file_name, kept_path};
use crate::fs::filetree::{self, Content, FileTree, Kind, Node};
use crate::fs::pattern;
use crate::fs::users::Ids;
use crate::layer::{self, Hashing, LayerInfo};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("forbidden path outside the build context: {0}")]
    OutsideContext(String),
    #[error("{0:?}: not found")]
    NotFound(String),
    #[error("no source files were specified matching {0:?}")]
    NoMatch(String),
    #[error(
        "When using {keyword} with more than one source file, the destination must be a directory and end with a /"
    )]
    NeedDirectory { keyword: &'static str },
    #[error("cannot copy {src:?} over directory {dst:?}")]
    OverDirectory { src: String, dst: String },
    #[error("cannot create directory /{0}: a file is in the way")]
    NotADirectory(String),
    #[error(transparent)]
    Tree(#[from] filetree::Error),
    #[error(transparent)]
    Pattern(#[from] pattern::BadPattern),
    #[error("cannot write layer {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The flags of one COPY, expanded and resolved.
#[derive(Debug, Clone, Default)]
pub struct CopyFlags {
    pub keyword: &'static str,
    pub owner: Option<Ids>,
    pub chmod: Option<Chmod>,
    pub excludes: Vec<String>,
    pub parents: bool,
}

/// The changes one instruction makes, applied to the tree it resolves against (the
/// image so far, or an empty tree for `--link`) and remembered for its layer.
#[derive(Debug)]
pub struct LayerBuilder<'a> {
    view: &'a mut FileTree,
    changed: BTreeSet<PathBuf>,
    /// Modification time of what the instruction makes itself (directories, heredocs).
    now: i64,
}

impl<'a> LayerBuilder<'a> {
    pub fn new(view: &'a mut FileTree, now: i64) -> LayerBuilder<'a> {
        LayerBuilder {
            view,
            changed: BTreeSet::new(),
            now,
        }
    }

    fn put(&mut self, path: PathBuf, node: Node) {
        self.changed.insert(path.clone());
        self.view.insert(path, node);
    }

    /// Copies `sources` (relative to the source tree; globs allowed) to `dest` (absolute;
    /// a trailing `/` makes it a directory), as copy.rs does on disk.
    pub fn copy(
        &mut self,
        from: &FileTree,
        keep_owner: bool,
        sources: &[String],
        dest: &str,
        flags: &CopyFlags,
    ) -> Result<()> {
        let mut matches: Vec<(PathBuf, String)> = Vec::new();
        for source in sources {
            let clean =
                clean_relative(source).ok_or_else(|| Error::OutsideContext(source.clone()))?;
            if pattern::has_magic(&clean) {
                let found = from.glob(&clean)?;
                if found.is_empty() {
                    return Err(Error::NoMatch(source.clone()));
                }
                for rel in found {
                    let kept = kept_path(source, &rel, flags.parents);
                    matches.push((PathBuf::from(rel), kept));
                }
            } else {
                let path = from.resolve(&clean, true)?;
                if from.get(&path).is_none() {
                    return Err(Error::NotFound(source.clone()));
                }
                matches.push((path, kept_path(source, &clean, flags.parents)));
            }
        }
        let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == "/";
        if matches.len() > 1 && !dest_is_dir && !self.view.is_dir(dest)? {
            return Err(Error::NeedDirectory {
                keyword: flags.keyword,
            });
        }
        let copier = Copier {
            from,
            flags,
            keep_owner,
        };
        for (src, kept) in &matches {
            let node = from
                .get(src)
                .ok_or_else(|| Error::NotFound(src.display().to_string()))?;
            let into_dir = dest_is_dir || matches.len() > 1 || self.view.is_dir(dest)?;
            if node.kind == Kind::Dir {
                let sub = if flags.parents { kept.as_str() } else { "" };
                let target = self.make_dirs(&format!("{dest}/{sub}"), flags.owner)?;
                copier.dir_contents(self, src, &target, "")?;
                if !target.as_os_str().is_empty() {
                    let attributes = copier.attributes(node, true);
                    self.put(target, attributes);
                }
                continue;
            }
            let target = if into_dir {
                let parent_rel = if flags.parents {
                    Path::new(kept)
                        .parent()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                self.make_dirs(&format!("{dest}/{parent_rel}"), flags.owner)?
                    .join(src.file_name().unwrap_or_default())
            } else {
                let parent = Path::new(dest.trim_end_matches('/'))
                    .parent()
                    .map_or_else(|| "/".to_string(), |p| p.to_string_lossy().into_owned());
                self.make_dirs(&parent, flags.owner)?
                    .join(Path::new(dest).file_name().unwrap_or_default())
            };
            copier.entry(self, src, &target, &file_name(src))?;
        }
        Ok(())
    }

    /// Writes an inline (heredoc) source as a file: `dest/` gets the heredoc's name.
    pub fn inline(
        &mut self,
        dest: &str,
        name: &str,
        content: &str,
        flags: &CopyFlags,
    ) -> Result<()> {
        let into_dir = dest.ends_with('/') || self.view.is_dir(dest)?;
        let path = if into_dir {
            self.make_dirs(dest, flags.owner)?.join(name)
        } else {
            let p = Path::new(dest);
            let parent = p
                .parent()
                .map_or("/".into(), |p| p.to_string_lossy().into_owned());
            self.make_dirs(&parent, flags.owner)?.join(file_name(p))
        };
        self.refuse_directory(&path, name)?;
        let ids = flags.owner.unwrap_or(Ids { uid: 0, gid: 0 });
        let bytes: std::sync::Arc<[u8]> = content.as_bytes().into();
        self.put(
            path,
            Node {
                kind: Kind::File,
                mode: flags
                    .chmod
                    .as_ref()
                    .map_or(0o644, |c| c.apply(0o644, false)),
                uid: ids.uid,
                gid: ids.gid,
                mtime: self.now,
                size: bytes.len() as u64,
                link_target: None,
                device: (0, 0),
                content: Content::Inline(bytes),
                inode: None,
            },
        );
        Ok(())
    }

    /// Creates the directory `path` (absolute) and its missing parents, new ones owned by
    /// `owner` (root when none) with mode 755, following symlinks; returns where it is.
    pub fn make_dirs(&mut self, path: &str, owner: Option<Ids>) -> Result<PathBuf> {
        let ids = owner.unwrap_or(Ids { uid: 0, gid: 0 });
        let mut current = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                current = Path::new(&current)
                    .parent()
                    .map_or("/".into(), |p| p.to_string_lossy().into_owned());
                continue;
            }
            current = format!("{}/{part}", current.trim_end_matches('/'));
            let resolved = self.view.resolve(&current, true)?;
            // A symlink to a missing place: make the whole way there.
            let mut missing = Vec::new();
            let mut at = resolved.as_path();
            while !at.as_os_str().is_empty() && self.view.get(at).is_none() {
                missing.push(at.to_path_buf());
                at = at.parent().unwrap_or(Path::new(""));
            }
            match self.view.get(at) {
                Some(n) if n.kind == Kind::Dir => {}
                _ => return Err(Error::NotADirectory(at.display().to_string())),
            }
            for dir in missing.into_iter().rev() {
                self.put(dir, Node::dir(0o755, ids.uid, ids.gid, self.now));
            }
        }
        Ok(self.view.resolve(path, true)?)
    }

    fn refuse_directory(&self, path: &Path, what: &str) -> Result<()> {
        match self.view.get(path) {
            Some(n) if n.kind == Kind::Dir => Err(Error::OverDirectory {
                src: what.to_string(),
                dst: format!("/{}", path.display()),
            }),
            _ => Ok(()),
        }
    }

    /// The layer's entries: every path the instruction changed, as it now is, parents
    /// before their contents.
    pub fn finish(self) -> Vec<(PathBuf, Node)> {
        self.changed
            .into_iter()
            .filter_map(|p| self.view.get(&p).cloned().map(|n| (p, n)))
            .collect()
    }
}

/// One COPY's walk over its sources.
struct Copier<'a> {
    from: &'a FileTree,
    flags: &'a CopyFlags,
    keep_owner: bool,
}

impl Copier<'_> {
    fn excluded(&self, rel: &str) -> Result<bool> {
        for pat in &self.flags.excludes {
            if pattern::matches_path(pat, rel)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn dir_contents(
        &self,
        to: &mut LayerBuilder<'_>,
        src: &Path,
        dst: &Path,
        rel: &str,
    ) -> Result<()> {
        let children: Vec<PathBuf> = self
            .from
            .children(src)
            .map(|(p, _)| p.to_path_buf())
            .collect();
        for child in children {
            let name = file_name(&child);
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            self.entry(to, &child, &dst.join(&name), &child_rel)?;
        }
        Ok(())
    }

    fn entry(&self, to: &mut LayerBuilder<'_>, src: &Path, dst: &Path, rel: &str) -> Result<()> {
        if self.excluded(rel)? {
            return Ok(());
        }
        let node = self
            .from
            .get(src)
            .ok_or_else(|| Error::NotFound(src.display().to_string()))?;
        if node.kind == Kind::Dir {
            if to.view.get(dst).is_none_or(|n| n.kind != Kind::Dir) {
                to.put(dst.to_path_buf(), Node::dir(0o755, 0, 0, to.now));
            }
            self.dir_contents(to, src, dst, rel)?;
            let attributes = self.attributes(node, true);
            to.put(dst.to_path_buf(), attributes);
            return Ok(());
        }
        to.refuse_directory(dst, rel)?;
        // Hard links keep their source's id: the layer writer links them again.
        to.put(dst.to_path_buf(), self.attributes(node, false));
        Ok(())
    }

    /// The node as copied: owner (`--chown`, else kept for `--from`, else root), mode
    /// with `--chmod` (never on symlinks), everything else as the source has it.
    fn attributes(&self, node: &Node, is_dir: bool) -> Node {
        let (uid, gid) = match (self.flags.owner, self.keep_owner) {
            (Some(ids), _) => (ids.uid, ids.gid),
            (None, true) => (node.uid, node.gid),
            (None, false) => (0, 0),
        };
        let mode = match (&self.flags.chmod, node.kind) {
            (_, Kind::Symlink) | (None, _) => node.mode,
            (Some(c), _) => c.apply(node.mode, is_dir),
        };
        Node {
            uid,
            gid,
            mode,
            ..node.clone()
        }
    }
}

/// Writes entries as a gzip tar layer (at stage pods' level), hashing both forms on the
/// way (no second pass). Modification times are clamped to `clamp` (`SOURCE_DATE_EPOCH`):
/// the same entries give the same bytes. File contents stream from where the trees found
/// them. A partial blob is removed, never left to look like a layer.
pub fn write_layer(
    entries: &[(PathBuf, Node)],
    out: &Path,
    clamp: Option<i64>,
) -> Result<LayerInfo> {
    let written = write_entries(entries, out, clamp);
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
}

fn write_entries(entries: &[(PathBuf, Node)], out: &Path, clamp: Option<i64>) -> Result<LayerInfo> {
    let werr = |source: io::Error| Error::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(werr)?;
    let compressed = Hashing::new(BufWriter::new(file));
    // GzBuilder leaves the header's mtime at 0 and names no file: reproducible.
    let gzip = GzBuilder::new().write(compressed, Compression::new(layer::DEFAULT_LEVEL));
    let mut tar = tar::Builder::new(Hashing::new(gzip));
    let mut first_of: HashMap<u64, &Path> = HashMap::new();
    for (path, node) in entries {
        let mtime = clamp.map_or(node.mtime, |c| node.mtime.min(c)).max(0) as u64;
        let mut header = tar::Header::new_gnu();
        header.set_mode(node.mode);
        header.set_uid(node.uid.into());
        header.set_gid(node.gid.into());
        header.set_mtime(mtime);
        header.set_size(0);
        match node.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                let name = format!("{}/", path.display());
                tar.append_data(&mut header, name, io::empty())
                    .map_err(werr)?;
            }
            Kind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = node.link_target.clone().unwrap_or_default();
                tar.append_link(&mut header, path, target).map_err(werr)?;
            }
            Kind::File => match node.inode.and_then(|id| first_of.get(&id).copied()) {
                Some(first) => {
                    header.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut header, path, first).map_err(werr)?;
                }
                None => {
                    if let Some(id) = node.inode {
                        first_of.insert(id, path);
                    }
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(node.size);
                    let data = filetree::open_content(node)?;
                    tar.append_data(&mut header, path, data).map_err(werr)?;
                }
            },
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                header.set_entry_type(match node.kind {
                    Kind::CharDevice => tar::EntryType::Char,
                    Kind::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                header.set_device_major(node.device.0).map_err(werr)?;
                header.set_device_minor(node.device.1).map_err(werr)?;
                tar.append_data(&mut header, path, io::empty())
                    .map_err(werr)?;
            }
        }
    }
    let uncompressed = tar.into_inner().map_err(werr)?;
    let (gzip, diff_id, uncompressed_size) = uncompressed.finish();
    let compressed = gzip.finish().map_err(werr)?;
    let (mut file, digest, size) = compressed.finish();
    file.flush().map_err(werr)?;
    Ok(LayerInfo {
        digest,
        diff_id,
        size,
        uncompressed_size,
        entries: entries.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    /// An export of a build stage, read as a tree.
    fn export() -> (tempfile::TempDir, FileTree) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("out/sub")).expect("mkdir");
        fs::write(root.join("out/a.txt"), "a").expect("write");
        fs::write(root.join("out/b.md"), "b").expect("write");
        fs::write(root.join("out/sub/c.txt"), "c").expect("write");
        fs::set_permissions(root.join("out/a.txt"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        fs::hard_link(root.join("out/a.txt"), root.join("out/a-again.txt")).expect("link");
        symlink("a.txt", root.join("out/link")).expect("symlink");
        std::os::unix::fs::lchown(root.join("out/b.md"), Some(1000), Some(1000)).expect("chown");
        let tar = dir.path().join("export.tar");
        crate::exec::export::write(&root, &["/out".into()], &[], &tar).expect("export");
        let tree = FileTree::from_archive(&tar).expect("tree");
        (dir, tree)
    }

    /// A base image: /usr/lib, /lib -> usr/lib, /home/app owned by 1000, /bin/sh a file.
    fn image() -> FileTree {
        let mut t = FileTree::new();
        t.insert("usr".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("usr/lib".into(), Node::dir(0o755, 0, 0, 0));
        let mut link = Node::dir(0o777, 0, 0, 0);
        link.kind = Kind::Symlink;
        link.link_target = Some("usr/lib".into());
        t.insert("lib".into(), link);
        t.insert("home".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("home/app".into(), Node::dir(0o700, 1000, 1000, 0));
        let mut sh = Node::dir(0o755, 0, 0, 0);
        sh.kind = Kind::File;
        t.insert("bin".into(), Node::dir(0o755, 0, 0, 0));
        t.insert("bin/sh".into(), sh);
        t
    }

    fn flags() -> CopyFlags {
        CopyFlags {
            keyword: "COPY",
            ..CopyFlags::default()
        }
    }

    fn copy(
        view: &mut FileTree,
        from: &FileTree,
        sources: &[&str],
        dest: &str,
        f: &CopyFlags,
    ) -> Result<Vec<(PathBuf, Node)>> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let mut b = LayerBuilder::new(view, 7);
        b.copy(from, true, &sources, dest, f)?;
        Ok(b.finish())
    }

    fn paths(entries: &[(PathBuf, Node)]) -> Vec<String> {
        entries
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    #[test]
    fn directory_contents_land_in_new_parents_owned_by_root() {
        let (_d, from) = export();
        let mut view = image();
        let entries = copy(&mut view, &from, &["/out"], "/opt/app/", &flags()).expect("copy");
        assert_eq!(
            paths(&entries),
            [
                "opt",
                "opt/app",
                "opt/app/a-again.txt",
                "opt/app/a.txt",
                "opt/app/b.md",
                "opt/app/link",
                "opt/app/sub",
                "opt/app/sub/c.txt"
            ]
        );
        let opt = view.get(Path::new("opt")).expect("opt");
        assert_eq!((opt.mode, opt.uid, opt.mtime), (0o755, 0, 7));
        let b = view.get(Path::new("opt/app/b.md")).expect("b");
        assert_eq!(b.uid, 1000, "--from keeps owners");
    }

    #[test]
    fn destinations_follow_the_image_and_keep_its_directories() {
        let (_d, from) = export();
        let mut view = image();
        // /lib is a symlink to usr/lib: the file lands there, nothing replaces the link.
        let entries = copy(&mut view, &from, &["/out/a.txt"], "/lib/x.so", &flags()).expect("copy");
        assert_eq!(paths(&entries), ["usr/lib/x.so"]);
        // An existing directory receives the file, and is not in the layer.
        let entries = copy(&mut view, &from, &["/out/b.md"], "/home/app", &flags()).expect("copy");
        assert_eq!(paths(&entries), ["home/app/b.md"]);
        assert_eq!(view.get(Path::new("home/app")).expect("dir").uid, 1000);
        let err = copy(&mut view, &from, &["/out/a.txt"], "/bin/sh/x", &flags())
            .expect_err("file in the way");
        assert!(matches!(err, Error::NotADirectory(_)), "{err}");
    }

    #[test]
    fn several_sources_globs_chown_chmod_and_excludes() {
        let (_d, from) = export();
        let mut view = image();
        let err = copy(
            &mut view,
            &from,
            &["/out/*.txt", "/out/b.md"],
            "/x",
            &flags(),
        )
        .expect_err("dir");
        assert!(
            err.to_string()
                .contains("must be a directory and end with a /")
        );
        let mut f = flags();
        f.owner = Some(Ids {
            uid: 1000,
            gid: 1001,
        });
        f.chmod = Some(Chmod::parse("640").expect("octal"));
        f.excludes = vec!["a-*".into()];
        let entries =
            copy(&mut view, &from, &["/out/*.txt", "/out/b.md"], "/x/", &f).expect("copy");
        assert_eq!(paths(&entries), ["x", "x/a.txt", "x/b.md"]);
        for (_, n) in &entries {
            assert_eq!((n.uid, n.gid), (1000, 1001));
        }
        assert_eq!(entries[1].1.mode, 0o640);
        assert_eq!(entries[0].1.mode, 0o755, "created parents are 755");
        assert!(matches!(
            copy(&mut view, &from, &["/nothing*"], "/z/", &flags()),
            Err(Error::NoMatch(_))
        ));
        assert!(matches!(
            copy(&mut view, &from, &["../x"], "/z/", &flags()),
            Err(Error::OutsideContext(_))
        ));
    }

    #[test]
    fn link_layers_start_from_nothing_and_heredocs_are_files() {
        let (_d, from) = export();
        let mut scratch = FileTree::new();
        let entries =
            copy(&mut scratch, &from, &["/out/a.txt"], "/lib/x.so", &flags()).expect("copy");
        assert_eq!(
            paths(&entries),
            ["lib", "lib/x.so"],
            "--link does not follow the image"
        );
        let mut view = image();
        let mut b = LayerBuilder::new(&mut view, 9);
        b.inline("/etc/app/", "conf", "x=1\n", &flags())
            .expect("inline");
        let entries = b.finish();
        assert_eq!(paths(&entries), ["etc", "etc/app", "etc/app/conf"]);
        assert_eq!(
            (entries[2].1.mode, entries[2].1.size, entries[2].1.mtime),
            (0o644, 4, 9)
        );
    }

    #[test]
    fn layers_are_reproducible_and_keep_hard_links() {
        let (d, from) = export();
        let mut view = image();
        let entries = copy(&mut view, &from, &["/out"], "/app/", &flags()).expect("copy");
        let one = write_layer(&entries, &d.path().join("1.tar.gz"), Some(5)).expect("write");
        let two = write_layer(&entries, &d.path().join("2.tar.gz"), Some(5)).expect("write");
        assert_eq!(one, two);
        let bytes = fs::read(d.path().join("1.tar.gz")).expect("read");
        assert_eq!(one.digest, crate::oci::sha256(&bytes));
        assert_eq!(one.size, bytes.len() as u64);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for e in tar.entries().expect("entries") {
            let e = e.expect("entry");
            assert!(e.header().mtime().expect("mtime") <= 5);
            seen.push((
                e.path().expect("path").display().to_string(),
                e.header().entry_type(),
            ));
        }
        assert!(
            seen.contains(&("app/a.txt".into(), tar::EntryType::Link)),
            "{seen:?}"
        );
        assert!(seen.contains(&("app/a-again.txt".into(), tar::EntryType::Regular)));
    }
}
