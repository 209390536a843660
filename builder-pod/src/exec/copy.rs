//! COPY and ADD's file rules, once, over any [`Tree`]: Docker's rules for sources
//! (globs, directory contents, `--parents`, `--exclude`), destinations (trailing slash,
//! several sources, relative to WORKDIR, symlinks of the image followed), ownership
//! (`--chown`, root for the context, kept for `--from`), `--chmod`, and ADD's local
//! archives. Sources are file trees (the build context, another stage's export, a
//! download) and never resolve outside their root; destinations never outside the
//! stage's root.
//!
//! The destination directory of a directory source is created 0755, owned by root or
//! the `--chown` user, or kept as it is when it exists: only the contents carry their
//! source's attributes (BuildKit's fsutil copy and buildah agree on this).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::fs::filetree::{self, Content, FileTree, Kind, Node};
use crate::fs::pattern;
use crate::fs::tree::{DiskTree, Tree};
use crate::fs::users::Ids;

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
    #[error("invalid --chmod value {0:?}")]
    Chmod(String),
    #[error(transparent)]
    Tree(#[from] filetree::Error),
    #[error(transparent)]
    Pattern(#[from] pattern::BadPattern),
    #[error("cannot extract {archive}")]
    Unpack {
        archive: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The flags of one COPY or ADD, expanded and resolved.
#[derive(Debug, Clone, Default)]
pub struct CopyFlags {
    pub keyword: &'static str,
    pub owner: Option<Ids>,
    pub chmod: Option<Chmod>,
    pub excludes: Vec<String>,
    pub parents: bool,
}

/// Where one COPY's files come from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub tree: &'a FileTree,
    /// `--from` keeps owners; the context's files (and downloads) become root's (Docker).
    pub keep_owner: bool,
}

/// Extracts ADD's local archive (the node) into the directory (resolved, in the tree).
pub type Unpack<'a> = &'a mut dyn FnMut(&Node, &Path) -> Result<()>;

/// Copies `sources` (relative to the source tree; globs allowed) to `dest` (absolute; a
/// trailing `/` makes it a directory) in `to`. Directories it makes are dated `now`.
/// With `unpack`, local tar archives (plain or gzip) are extracted instead (ADD).
pub fn copy(
    to: &mut impl Tree,
    from: Source<'_>,
    sources: &[String],
    dest: &str,
    flags: &CopyFlags,
    now: i64,
    mut unpack: Option<Unpack<'_>>,
) -> Result<()> {
    let matches = find_sources(from.tree, sources, flags.parents)?;
    let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == "/";
    if matches.len() > 1 && !dest_is_dir && !to.is_dir(dest)? {
        return Err(Error::NeedDirectory {
            keyword: flags.keyword,
        });
    }
    let mut copier = Copier {
        to,
        from,
        flags,
        now,
        links: HashMap::new(),
    };
    for (src, kept) in &matches {
        let node = from
            .tree
            .get(src)
            .ok_or_else(|| Error::NotFound(src.display().to_string()))?;
        let into_dir = dest_is_dir || matches.len() > 1 || copier.to.is_dir(dest)?;
        if let Some(unpack) = unpack.as_mut()
            && node.kind == Kind::File
            && is_tar_archive(node)?
        {
            let dir = copier.make_dirs(dest)?;
            unpack(node, &dir)?;
            continue;
        }
        if node.kind == Kind::Dir {
            let sub = if flags.parents { kept.as_str() } else { "" };
            let target = copier.make_dirs(&format!("{dest}/{sub}"))?;
            copier.dir_contents(src, &target, "")?;
            continue;
        }
        let target = if into_dir {
            let parent_rel = if flags.parents {
                parent_of(kept)
            } else {
                String::new()
            };
            copier
                .make_dirs(&format!("{dest}/{parent_rel}"))?
                .join(src.file_name().unwrap_or_default())
        } else {
            let parent = parent_of(dest.trim_end_matches('/'));
            copier
                .make_dirs(if parent.is_empty() { "/" } else { &parent })?
                .join(Path::new(dest).file_name().unwrap_or_default())
        };
        copier.entry(src, &target, &file_name(src))?;
    }
    Ok(())
}

/// Writes an inline (heredoc) source as a file: `dest/` gets the heredoc's name.
pub fn write_inline(
    to: &mut impl Tree,
    dest: &str,
    name: &str,
    content: &str,
    flags: &CopyFlags,
    now: i64,
) -> Result<()> {
    let into_dir = dest.ends_with('/') || to.is_dir(dest)?;
    let mut copier = Copier {
        to,
        from: Source {
            tree: &FileTree::new(),
            keep_owner: false,
        },
        flags,
        now,
        links: HashMap::new(),
    };
    let path = if into_dir {
        copier.make_dirs(dest)?.join(name)
    } else {
        let parent = parent_of(dest);
        copier
            .make_dirs(if parent.is_empty() { "/" } else { &parent })?
            .join(file_name(Path::new(dest)))
    };
    copier.refuse_directory(&path, name)?;
    let ids = flags.owner.unwrap_or_default();
    let bytes: std::sync::Arc<[u8]> = content.as_bytes().into();
    let node = Node {
        kind: Kind::File,
        mode: flags
            .chmod
            .as_ref()
            .map_or(0o644, |c| c.apply(0o644, false)),
        uid: ids.uid,
        gid: ids.gid,
        mtime: now,
        size: bytes.len() as u64,
        link_target: None,
        device: (0, 0),
        content: Content::Inline(bytes),
        inode: None,
        xattrs: Vec::new(),
    };
    Ok(copier.to.put(&path, &node)?)
}

/// Creates the directory `path` (absolute) and its missing parents in `to`, new ones
/// 0755 and owned by `owner` (root when none), following the tree's symlinks; returns
/// where it is.
pub fn make_dirs(to: &mut impl Tree, path: &str, owner: Option<Ids>, now: i64) -> Result<PathBuf> {
    let flags = CopyFlags {
        owner,
        ..CopyFlags::default()
    };
    let mut copier = Copier {
        to,
        from: Source {
            tree: &FileTree::new(),
            keep_owner: false,
        },
        flags: &flags,
        now,
        links: HashMap::new(),
    };
    copier.make_dirs(path)
}

/// ADD's archive entries (extracted into `tree`) placed under `dir` as Docker extracts
/// them: each entry's directory resolved through the image's symlinks (missing ones
/// made 0755), the entry created or replaced there with its own attributes and owner; a
/// directory that is there already keeps its own.
fn place_archive(to: &mut impl Tree, tree: &FileTree, dir: &str, now: i64) -> Result<()> {
    let flags = CopyFlags {
        keyword: "ADD",
        ..CopyFlags::default()
    };
    let mut copier = Copier {
        to,
        from: Source {
            tree,
            keep_owner: true,
        },
        flags: &flags,
        now,
        links: HashMap::new(),
    };
    for (path, node) in tree.entries() {
        if node.kind == Kind::Dir {
            // Through a symlink of the image to a directory too (`lib` -> `usr/lib`).
            let at = format!("{dir}/{}", path.display());
            let existed = copier.to.is_dir(&at)?;
            let target = copier.make_dirs(&at)?;
            if !existed {
                copier.to.put(&target, &copier.attributes(node, true))?;
            }
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new("")).display();
        let target = copier
            .make_dirs(&format!("{dir}/{parent}"))?
            .join(path.file_name().unwrap_or_default());
        copier.refuse_directory(&target, &path.display().to_string())?;
        if let Some(id) = node.inode {
            if let Some(first) = copier.links.get(&id) {
                copier.to.hard_link(&target, first)?;
                continue;
            }
            copier.links.insert(id, target.clone());
        }
        copier.to.put(&target, &copier.attributes(node, false))?;
    }
    Ok(())
}

/// The matches of each source, with the part `--parents` keeps of each.
pub(crate) fn find_sources(
    from: &FileTree,
    sources: &[String],
    parents: bool,
) -> Result<Vec<(PathBuf, String)>> {
    let mut matches = Vec::new();
    for source in sources {
        let clean = clean_relative(source).ok_or_else(|| Error::OutsideContext(source.clone()))?;
        if pattern::has_magic(&clean) {
            let found = from.glob(&clean)?;
            if found.is_empty() {
                return Err(Error::NoMatch(source.clone()));
            }
            for rel in found {
                let kept = kept_path(source, &rel, parents);
                matches.push((PathBuf::from(rel), kept));
            }
        } else {
            let path = from.resolve(&clean, true)?;
            if from.get(&path).is_none() {
                return Err(Error::NotFound(source.clone()));
            }
            matches.push((path, kept_path(source, &clean, parents)));
        }
    }
    Ok(matches)
}

/// One COPY's walk over its sources into the tree.
struct Copier<'a, T: Tree> {
    to: &'a mut T,
    from: Source<'a>,
    flags: &'a CopyFlags,
    /// Time of the directories the copy makes itself.
    now: i64,
    /// The first destination of each source hard-link id, to link the others to.
    links: HashMap<u64, PathBuf>,
}

impl<T: Tree> Copier<'_, T> {
    fn excluded(&self, rel: &str) -> Result<bool> {
        for pat in &self.flags.excludes {
            if pattern::matches_path(pat, rel)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn dir_contents(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<()> {
        let children: Vec<PathBuf> = self
            .from
            .tree
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
            self.entry(&child, &dst.join(&name), &child_rel)?;
        }
        Ok(())
    }

    fn entry(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<()> {
        if self.excluded(rel)? {
            return Ok(());
        }
        let tree = self.from.tree;
        let node = tree
            .get(src)
            .ok_or_else(|| Error::NotFound(src.display().to_string()))?;
        if node.kind == Kind::Dir {
            if self.to.get(dst)?.is_none_or(|n| n.kind != Kind::Dir) {
                self.to.put(dst, &Node::dir(0o755, 0, 0, self.now))?;
            }
            self.dir_contents(src, dst, rel)?;
            // Attributes last: writing the contents changed the directory's times.
            return Ok(self.to.put(dst, &self.attributes(node, true))?);
        }
        self.refuse_directory(dst, rel)?;
        if let Some(id) = node.inode {
            if let Some(first) = self.links.get(&id) {
                return Ok(self.to.hard_link(dst, first)?);
            }
            self.links.insert(id, dst.to_path_buf());
        }
        Ok(self.to.put(dst, &self.attributes(node, false))?)
    }

    /// The node as copied: owner (`--chown`, else kept for `--from`, else root), mode
    /// with `--chmod` (never on symlinks), everything else as the source has it.
    fn attributes(&self, node: &Node, is_dir: bool) -> Node {
        let (uid, gid) = match (self.flags.owner, self.from.keep_owner) {
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
            // Extended attributes come along only from another stage (a context's are
            // the checkout's, not the image's).
            xattrs: if self.from.keep_owner {
                node.xattrs.clone()
            } else {
                Vec::new()
            },
            ..node.clone()
        }
    }

    fn refuse_directory(&self, path: &Path, what: &str) -> Result<()> {
        match self.to.get(path)? {
            Some(n) if n.kind == Kind::Dir => Err(Error::OverDirectory {
                src: what.to_string(),
                dst: format!("/{}", path.display()),
            }),
            _ => Ok(()),
        }
    }

    /// See [`make_dirs`].
    fn make_dirs(&mut self, path: &str) -> Result<PathBuf> {
        let ids = self.flags.owner.unwrap_or_default();
        let mut current = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                current = parent_of(&current);
                continue;
            }
            current = format!("{}/{part}", current.trim_end_matches('/'));
            let resolved = self.to.resolve(&current, true)?;
            // A symlink to a missing place: make the whole way there.
            let mut missing = Vec::new();
            let mut at = resolved.as_path();
            while !at.as_os_str().is_empty() && self.to.get(at)?.is_none() {
                missing.push(at.to_path_buf());
                at = at.parent().unwrap_or(Path::new(""));
            }
            match self.to.get(at)? {
                Some(n) if n.kind == Kind::Dir => {}
                _ => return Err(Error::NotADirectory(at.display().to_string())),
            }
            for dir in missing.into_iter().rev() {
                self.to
                    .put(&dir, &Node::dir(0o755, ids.uid, ids.gid, self.now))?;
            }
        }
        Ok(self.to.resolve(path, true)?)
    }
}

/// ADD extracts gzip-compressed and plain tar archives, recognised by their content.
fn is_tar_archive(node: &Node) -> Result<bool> {
    let mut head = [0u8; 262];
    let mut reader = filetree::open_content(node)?;
    let mut read = 0;
    while read < head.len() {
        match reader.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Tree(filetree::Error::Io {
                    path: PathBuf::new(),
                    source,
                }));
            }
        }
    }
    let head = &head[..read];
    Ok(head.starts_with(&[0x1f, 0x8b]) || head.get(257..262) == Some(b"ustar"))
}

/// The parent of a `/`-separated path, `/` for a top-level one, empty for a bare name.
fn parent_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A source path relative to its root, cleaned; None when `..` would leave the root.
pub(crate) fn clean_relative(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// For `--parents`: the part of a matched path kept under the destination (after a
/// `/./` marker in the source, else all of it).
pub(crate) fn kept_path(source: &str, matched: &str, parents: bool) -> String {
    if !parents {
        return String::new();
    }
    match source.find("/./") {
        Some(i) => {
            let prefix = clean_relative(&source[..i]).unwrap_or_default();
            matched
                .strip_prefix(&prefix)
                .unwrap_or(matched)
                .trim_start_matches('/')
                .to_string()
        }
        None => matched.to_string(),
    }
}

/// ADD's archive extraction where the tree is the disk under `root`: the archive is
/// extracted into `scratch` by the layer applier (which never writes outside it), then
/// copied to its destination like any COPY, so its paths follow the image's symlinks
/// (`lib/x.so` lands in `/usr/lib` where `/lib` links there) and its owners are kept.
pub fn extract_into<'a>(
    root: &'a Path,
    scratch: &'a Path,
) -> impl FnMut(&Node, &Path) -> Result<()> + 'a {
    let mut count = 0;
    move |node, dir| {
        let unpack_err =
            |archive: &Path, source: Box<dyn std::error::Error + Send + Sync>| Error::Unpack {
                archive: archive.display().to_string(),
                source,
            };
        let Content::File(archive) = &node.content else {
            return Err(unpack_err(
                dir,
                "only a file of the context can be extracted".into(),
            ));
        };
        count += 1;
        let extracted = scratch.join(format!("archive-{count}"));
        let _ = std::fs::remove_dir_all(&extracted);
        crate::layer::extract_archive(archive, &extracted)
            .map_err(|e| unpack_err(archive, Box::new(e)))?;
        let tree = FileTree::from_dir(&extracted)?;
        let now = tree.get(Path::new("")).map_or(0, |n| n.mtime);
        let dest = format!("/{}", dir.display());
        let copied = place_archive(&mut DiskTree::new(root), &tree, &dest, now);
        let _ = std::fs::remove_dir_all(&extracted);
        copied
    }
}

/// `--chmod`: octal (`755`) or symbolic (`u+x,go=rX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<SymbolicClause>),
}

/// One clause of a symbolic mode: who, operator, permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolicClause {
    who: u32,
    op: char,
    perms: String,
}

impl Chmod {
    pub fn parse(s: &str) -> Result<Chmod> {
        if !s.is_empty() && s.chars().all(|c| c.is_digit(8)) {
            return u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(|| Error::Chmod(s.into()));
        }
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let op_at = clause
                .find(['+', '-', '='])
                .ok_or_else(|| Error::Chmod(s.into()))?;
            let (who_s, rest) = clause.split_at(op_at);
            let mut who = 0;
            for c in who_s.chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return Err(Error::Chmod(s.into())),
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let op = rest.chars().next().unwrap_or('=');
            let perms = rest[1..].to_string();
            if !perms.chars().all(|c| "rwxXst".contains(c)) {
                return Err(Error::Chmod(s.into()));
            }
            clauses.push(SymbolicClause { who, op, perms });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits for an entry with `mode` (X: execute for directories and
    /// for files already executable by someone).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for c in clauses {
                    let mut bits = 0;
                    for p in c.perms.chars() {
                        bits |= match p {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        };
                    }
                    let bits = bits & c.who;
                    mode = match c.op {
                        '+' => mode | bits,
                        '-' => mode & !bits,
                        _ => (mode & !(c.who & 0o7777)) | bits,
                    };
                }
                mode
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::MemoryTree;
    use std::fs::{self, File};
    use std::os::unix::fs::{MetadataExt, PermissionsExt as _, symlink};

    // On disk, as stage pods copy.

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = dir.path();
        fs::create_dir_all(c.join("src/sub")).expect("mkdir");
        fs::write(c.join("src/a.txt"), "a").expect("write");
        fs::write(c.join("src/b.md"), "b").expect("write");
        fs::write(c.join("src/sub/c.txt"), "c").expect("write");
        fs::write(c.join("file with space"), "s").expect("write");
        fs::set_permissions(c.join("src/a.txt"), fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("/etc", c.join("etc-link")).expect("symlink");
        symlink("a.txt", c.join("src/link")).expect("symlink");
        dir
    }

    fn opts() -> CopyFlags {
        CopyFlags {
            keyword: "COPY",
            ..CopyFlags::default()
        }
    }

    fn run(ctx: &Path, dst: &Path, sources: &[&str], dest: &str, o: &CopyFlags) -> Result<()> {
        run_with(ctx, dst, sources, dest, o, false)
    }

    fn run_with(
        ctx: &Path,
        dst: &Path,
        sources: &[&str],
        dest: &str,
        o: &CopyFlags,
        unpack: bool,
    ) -> Result<()> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let from = FileTree::from_dir(ctx)?;
        let scratch = tempfile::tempdir().expect("scratch");
        let mut extract = extract_into(dst, scratch.path());
        let unpack: Option<Unpack<'_>> = if unpack { Some(&mut extract) } else { None };
        let source = Source {
            tree: &from,
            keep_owner: false,
        };
        copy(
            &mut DiskTree::new(dst),
            source,
            &sources,
            dest,
            o,
            0,
            unpack,
        )
    }

    #[test]
    fn directory_contents_file_and_rename() {
        let ctx = context();
        let out = tempfile::tempdir().expect("tempdir");
        run(ctx.path(), out.path(), &["src"], "/app/", &opts()).expect("copy dir");
        assert!(out.path().join("app/a.txt").exists());
        assert!(out.path().join("app/sub/c.txt").exists());
        assert!(
            !out.path().join("app/src").exists(),
            "a directory's contents are copied"
        );
        assert_eq!(
            fs::read_link(out.path().join("app/link")).expect("link"),
            Path::new("a.txt")
        );
        let m = fs::metadata(out.path().join("app/a.txt")).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o755, "modes are kept");
        assert_eq!((m.uid(), m.gid()), (0, 0));

        run(ctx.path(), out.path(), &["src/a.txt"], "/renamed", &opts()).expect("file");
        assert_eq!(
            fs::read_to_string(out.path().join("renamed")).expect("read"),
            "a"
        );
        run(
            ctx.path(),
            out.path(),
            &["file with space"],
            "/app",
            &opts(),
        )
        .expect("into dir");
        assert!(
            out.path().join("app/file with space").exists(),
            "existing dir receives the file"
        );
    }

    #[test]
    fn globs_several_sources_and_excludes() {
        let ctx = context();
        let out = tempfile::tempdir().expect("tempdir");
        let err = run(
            ctx.path(),
            out.path(),
            &["src/*.txt", "src/b.md"],
            "/x",
            &opts(),
        )
        .expect_err("needs a directory");
        assert!(
            err.to_string()
                .contains("must be a directory and end with a /")
        );
        run(
            ctx.path(),
            out.path(),
            &["src/*.txt", "src/b.md"],
            "/x/",
            &opts(),
        )
        .expect("copy");
        assert!(out.path().join("x/a.txt").exists() && out.path().join("x/b.md").exists());
        let mut o = opts();
        o.excludes = vec!["*.txt".into()];
        run(ctx.path(), out.path(), &["src"], "/y/", &o).expect("copy");
        assert!(out.path().join("y/b.md").exists());
        assert!(!out.path().join("y/a.txt").exists());
        assert!(matches!(
            run(ctx.path(), out.path(), &["nothing*"], "/z/", &opts()),
            Err(Error::NoMatch(_))
        ));
    }

    #[test]
    fn parents_keep_the_structure() {
        let ctx = context();
        let out = tempfile::tempdir().expect("tempdir");
        let mut o = opts();
        o.parents = true;
        run(
            ctx.path(),
            out.path(),
            &["src/sub/c.txt", "./src/./a.txt"],
            "/p/",
            &o,
        )
        .expect("copy");
        assert!(out.path().join("p/src/sub/c.txt").exists());
        assert!(out.path().join("p/a.txt").exists());
    }

    #[test]
    fn chown_and_chmod() {
        let ctx = context();
        let out = tempfile::tempdir().expect("tempdir");
        let mut o = opts();
        o.owner = Some(Ids {
            uid: 1000,
            gid: 1001,
        });
        o.chmod = Some(Chmod::parse("640").expect("octal"));
        run(ctx.path(), out.path(), &["src/b.md"], "/new/dir/", &o).expect("copy");
        let m = fs::metadata(out.path().join("new/dir/b.md")).expect("meta");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o640));
        let d = fs::metadata(out.path().join("new")).expect("meta");
        assert_eq!(
            (d.uid(), d.mode() & 0o7777),
            (1000, 0o755),
            "created parents get --chown"
        );

        let sym = Chmod::parse("u=rwX,go=rX").expect("symbolic");
        assert_eq!(sym.apply(0o600, false), 0o644);
        assert_eq!(sym.apply(0o700, false), 0o755);
        assert_eq!(sym.apply(0o700, true), 0o755);
        assert_eq!(Chmod::parse("+x").expect("plus").apply(0o644, false), 0o755);
        assert!(Chmod::parse("99").is_err() && Chmod::parse("u+q").is_err());
    }

    #[test]
    fn nothing_escapes_the_context() {
        let ctx = context();
        let out = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            run(ctx.path(), out.path(), &["../x"], "/", &opts()),
            Err(Error::OutsideContext(_))
        ));
        // A context symlink to /etc resolves inside the context, where there is no etc.
        let err =
            run(ctx.path(), out.path(), &["etc-link/passwd"], "/p", &opts()).expect_err("scoped");
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(!out.path().join("p").exists());
    }

    #[test]
    fn add_unpacks_local_archives() {
        let ctx = context();
        let archive = ctx.path().join("bundle.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&archive).expect("create"),
                flate2::Compression::fast(),
            );
            let mut t = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            t.append_data(&mut h, "inside/x.txt", &b"hi"[..])
                .expect("append");
            t.into_inner().expect("finish").finish().expect("gzip");
        }
        let out = tempfile::tempdir().expect("tempdir");
        let mut o = opts();
        o.keyword = "ADD";
        run_with(
            ctx.path(),
            out.path(),
            &["bundle.tar.gz"],
            "/opt/",
            &o,
            true,
        )
        .expect("add");
        assert_eq!(
            fs::read_to_string(out.path().join("opt/inside/x.txt")).expect("read"),
            "hi"
        );
    }

    #[test]
    fn add_archives_follow_the_images_symlinks_and_keep_owners() {
        let ctx = context();
        let archive = ctx.path().join("libs.tar");
        {
            let mut t = tar::Builder::new(File::create(&archive).expect("create"));
            let mut h = tar::Header::new_ustar();
            h.set_size(3);
            h.set_mode(0o755);
            h.set_uid(7);
            h.set_gid(7);
            h.set_mtime(0);
            h.set_cksum();
            t.append_data(&mut h, "lib/x.so", &b"elf"[..])
                .expect("append");
            t.into_inner().expect("finish");
        }
        let out = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(out.path().join("usr/lib")).expect("mkdir");
        symlink("usr/lib", out.path().join("lib")).expect("symlink");
        let mut o = opts();
        o.keyword = "ADD";
        run_with(ctx.path(), out.path(), &["libs.tar"], "/", &o, true).expect("add");
        let lib = out.path().join("usr/lib/x.so");
        assert_eq!(fs::read(&lib).expect("read"), b"elf");
        assert_eq!(
            fs::metadata(&lib).expect("meta").uid(),
            7,
            "owners are kept"
        );
        assert!(
            fs::symlink_metadata(out.path().join("lib"))
                .expect("lib")
                .is_symlink(),
            "the image's symlink stays"
        );
    }

    #[test]
    fn inline_files() {
        let out = tempfile::tempdir().expect("tempdir");
        let mut tree = DiskTree::new(out.path());
        write_inline(&mut tree, "/etc/app/", "conf", "x=1\n", &opts(), 0).expect("dir");
        write_inline(&mut tree, "/run.sh", "EOF", "echo\n", &opts(), 0).expect("file");
        assert_eq!(
            fs::read_to_string(out.path().join("etc/app/conf")).expect("read"),
            "x=1\n"
        );
        assert!(out.path().join("run.sh").exists());
    }

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

    // In memory, as the assemble pod copies.

    fn flags() -> CopyFlags {
        CopyFlags {
            keyword: "COPY",
            ..CopyFlags::default()
        }
    }

    fn copy_in(
        view: &mut MemoryTree,
        from: &FileTree,
        sources: &[&str],
        dest: &str,
        f: &CopyFlags,
    ) -> Result<Vec<(PathBuf, Node)>> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let source = Source {
            tree: from,
            keep_owner: true,
        };
        copy(view, source, &sources, dest, f, 7, None)?;
        Ok(view.take_changes())
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
        let mut view = MemoryTree::new(image());
        let entries = copy_in(&mut view, &from, &["/out"], "/opt/app/", &flags()).expect("copy");
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
        let opt = view.get(Path::new("opt")).expect("get").expect("opt");
        assert_eq!((opt.mode, opt.uid, opt.mtime), (0o755, 0, 7));
        let b = view
            .get(Path::new("opt/app/b.md"))
            .expect("get")
            .expect("b");
        assert_eq!(b.uid, 1000, "--from keeps owners");
    }

    #[test]
    fn destinations_follow_the_image_and_keep_its_directories() {
        let (_d, from) = export();
        let mut view = MemoryTree::new(image());
        // /lib is a symlink to usr/lib: the file lands there, nothing replaces the link.
        let entries =
            copy_in(&mut view, &from, &["/out/a.txt"], "/lib/x.so", &flags()).expect("copy");
        assert_eq!(paths(&entries), ["usr/lib/x.so"]);
        // An existing directory receives the file, and is not in the layer.
        let entries =
            copy_in(&mut view, &from, &["/out/b.md"], "/home/app", &flags()).expect("copy");
        assert_eq!(paths(&entries), ["home/app/b.md"]);
        assert_eq!(
            view.get(Path::new("home/app"))
                .expect("get")
                .expect("dir")
                .uid,
            1000
        );
        let err = copy_in(&mut view, &from, &["/out/a.txt"], "/bin/sh/x", &flags())
            .expect_err("file in the way");
        assert!(matches!(err, Error::NotADirectory(_)), "{err}");
    }

    #[test]
    fn several_sources_globs_chown_chmod_and_excludes() {
        let (_d, from) = export();
        let mut view = MemoryTree::new(image());
        let err = copy_in(
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
            copy_in(&mut view, &from, &["/out/*.txt", "/out/b.md"], "/x/", &f).expect("copy");
        assert_eq!(paths(&entries), ["x", "x/a.txt", "x/b.md"]);
        for (_, n) in &entries {
            assert_eq!((n.uid, n.gid), (1000, 1001));
        }
        assert_eq!(entries[1].1.mode, 0o640);
        assert_eq!(entries[0].1.mode, 0o755, "created parents are 755");
        assert!(matches!(
            copy_in(&mut view, &from, &["/nothing*"], "/z/", &flags()),
            Err(Error::NoMatch(_))
        ));
        assert!(matches!(
            copy_in(&mut view, &from, &["../x"], "/z/", &flags()),
            Err(Error::OutsideContext(_))
        ));
    }

    #[test]
    fn heredocs_are_files() {
        let mut view = MemoryTree::new(image());
        write_inline(&mut view, "/etc/app/", "conf", "x=1\n", &flags(), 9).expect("inline");
        let entries = view.take_changes();
        assert_eq!(paths(&entries), ["etc", "etc/app", "etc/app/conf"]);
        assert_eq!(
            (entries[2].1.mode, entries[2].1.size, entries[2].1.mtime),
            (0o644, 4, 9)
        );
    }

    #[test]
    fn layers_are_reproducible_and_keep_hard_links() {
        let (d, from) = export();
        let mut view = MemoryTree::new(image());
        let entries = copy_in(&mut view, &from, &["/out"], "/app/", &flags()).expect("copy");
        let write = |out: &str| {
            let gzip = crate::layer::Compression::Gzip;
            crate::layer::write_nodes(&entries, &d.path().join(out), Some(5), gzip)
        };
        let one = write("1.tar.gz").expect("write");
        let two = write("2.tar.gz").expect("write");
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
