//! COPY and ADD: Docker's rules for sources (globs, directory contents, `--parents`,
//! `--exclude`), destinations (trailing slash, several sources, relative to WORKDIR),
//! ownership (`--chown`, root by default for the context, kept for `--from`), `--chmod`,
//! and ADD's local archive extraction. Sources never resolve outside their root and
//! destinations never outside the stage root.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use crate::fs::pattern;
use crate::fs::rootfs;
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
    #[error("invalid --chmod value {0:?}")]
    Chmod(String),
    #[error(transparent)]
    Pattern(#[from] pattern::BadPattern),
    #[error(transparent)]
    Find(#[from] pattern::FindError),
    #[error(transparent)]
    Resolve(#[from] rootfs::Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where files come from: the build context, or another stage's export.
#[derive(Debug, Clone, Copy)]
pub struct SourceRoot<'a> {
    pub root: &'a Path,
    /// `--from` keeps owners; the context's files become root's (Docker).
    pub keep_owner: bool,
}

/// The flags of one COPY/ADD, already expanded and resolved.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub keyword: &'static str,
    pub owner: Option<Ids>,
    pub chmod: Option<Chmod>,
    pub excludes: Vec<String>,
    pub parents: bool,
    /// ADD: extract local tar archives instead of copying them.
    pub unpack_archives: bool,
}

/// What a copy did, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
}

/// Copies `sources` (relative to the source root; globs allowed) to `dest` (absolute
/// inside `dest_root`; a trailing `/` makes it a directory).
pub fn copy(
    from: SourceRoot<'_>,
    sources: &[String],
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<CopyStats> {
    let mut matches: Vec<(PathBuf, String)> = Vec::new();
    for source in sources {
        let clean = clean_relative(source).ok_or_else(|| Error::OutsideContext(source.clone()))?;
        if pattern::has_magic(&clean) {
            let found = pattern::find(from.root, &clean)?;
            if found.is_empty() {
                return Err(Error::NoMatch(source.clone()));
            }
            for rel in found {
                matches.push((from.root.join(&rel), kept_path(source, &rel, opts.parents)));
            }
        } else {
            let path = rootfs::resolve(from.root, &clean, true)?;
            if fs::symlink_metadata(&path).is_err() {
                return Err(Error::NotFound(source.clone()));
            }
            matches.push((path, kept_path(source, &clean, opts.parents)));
        }
    }
    let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == "/";
    if matches.len() > 1 && !dest_is_dir && !is_dir_in(dest_root, dest)? {
        return Err(Error::NeedDirectory {
            keyword: opts.keyword,
        });
    }
    let mut copier = Copier {
        opts,
        keep_owner: from.keep_owner,
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    for (src, kept) in &matches {
        let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
        let into_dir = dest_is_dir || matches.len() > 1 || is_dir_in(dest_root, dest)?;
        if opts.unpack_archives && meta.is_file() && is_tar_archive(src)? {
            let dir = make_dirs(dest_root, dest, opts.owner)?;
            copier.unpack(src, &dir)?;
            continue;
        }
        let target = if meta.is_dir() {
            let sub = if opts.parents { kept.as_str() } else { "" };
            make_dirs(dest_root, &format!("{dest}/{sub}"), opts.owner)?
        } else if into_dir {
            let parent_rel = if opts.parents {
                Path::new(kept)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let dir = make_dirs(dest_root, &format!("{dest}/{parent_rel}"), opts.owner)?;
            dir.join(src.file_name().unwrap_or_default())
        } else {
            let parent = Path::new(dest.trim_end_matches('/'))
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            let dir = make_dirs(dest_root, &parent, opts.owner)?;
            dir.join(Path::new(dest).file_name().unwrap_or_default())
        };
        if meta.is_dir() {
            // The destination directory keeps what it had or was created with (owner from
            // --chown, 0755): only the contents carry the source's attributes (buildah).
            copier.copy_dir_contents(src, &target, "")?;
        } else {
            copier.copy_entry(src, &target, &file_name(src))?;
        }
    }
    Ok(copier.stats)
}

/// Writes an inline (heredoc) source as a file: `dest/` gets the heredoc's name.
pub fn write_inline(
    dest_root: &Path,
    dest: &str,
    name: &str,
    content: &str,
    opts: &CopyOptions,
) -> Result<CopyStats> {
    let into_dir = dest.ends_with('/') || is_dir_in(dest_root, dest)?;
    let (dir, file) = if into_dir {
        (make_dirs(dest_root, dest, opts.owner)?, name.to_string())
    } else {
        let p = Path::new(dest);
        let parent = p
            .parent()
            .map_or("/".into(), |p| p.to_string_lossy().into_owned());
        (make_dirs(dest_root, &parent, opts.owner)?, file_name(p))
    };
    let path = dir.join(file);
    remove_existing(&path, name)?;
    fs::write(&path, content).map_err(io_err(&path))?;
    let mode = opts.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    let ids = opts.owner.unwrap_or(Ids { uid: 0, gid: 0 });
    std::os::unix::fs::lchown(&path, Some(ids.uid), Some(ids.gid)).map_err(io_err(&path))?;
    Ok(CopyStats {
        files: 1,
        bytes: content.len() as u64,
    })
}

struct Copier<'a> {
    opts: &'a CopyOptions,
    keep_owner: bool,
    /// (dev, inode) of hard-linked sources already copied, to link again instead.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

impl Copier<'_> {
    fn excluded(&self, rel: &str) -> Result<bool> {
        for pat in &self.opts.excludes {
            if pattern::matches_path(pat, rel)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn copy_dir_contents(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(io_err(src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err(src))?;
        names.sort();
        for name in names {
            let child_rel = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            self.copy_entry(&src.join(&name), &dst.join(&name), &child_rel)?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<()> {
        if self.excluded(rel)? {
            return Ok(());
        }
        let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            match fs::symlink_metadata(dst) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(dst).map_err(io_err(dst))?;
                    fs::create_dir(dst).map_err(io_err(dst))?;
                }
                Err(_) => fs::create_dir(dst).map_err(io_err(dst))?,
            }
            self.copy_dir_contents(src, dst, rel)?;
            return self.set_attributes(src, dst, &meta, true);
        }
        remove_existing(dst, rel)?;
        if meta.nlink() > 1 && !kind.is_symlink() {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, dst).map_err(io_err(dst))?;
                return Ok(());
            }
            self.links
                .insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        if kind.is_symlink() {
            let target = fs::read_link(src).map_err(io_err(src))?;
            symlink(&target, dst).map_err(io_err(dst))?;
        } else if kind.is_file() {
            let mut input = File::open(src).map_err(io_err(src))?;
            let mut output = File::create(dst).map_err(io_err(dst))?;
            self.stats.bytes += io::copy(&mut input, &mut output).map_err(io_err(dst))?;
        } else {
            let file_type = rustix::fs::FileType::from_raw_mode(meta.mode());
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dst,
                file_type,
                rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| io_err(dst)(e.into()))?;
        }
        self.stats.files += 1;
        self.set_attributes(src, dst, &meta, false)
    }

    /// Owner, mode (with `--chmod`), extended attributes and mtime, in that order so a
    /// chown does not clear setuid bits set afterwards.
    fn set_attributes(
        &self,
        src: &Path,
        dst: &Path,
        meta: &fs::Metadata,
        is_dir: bool,
    ) -> Result<()> {
        let (uid, gid) = match (self.opts.owner, self.keep_owner) {
            (Some(ids), _) => (ids.uid, ids.gid),
            (None, true) => (meta.uid(), meta.gid()),
            (None, false) => (0, 0),
        };
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err(dst))?;
        if !meta.file_type().is_symlink() {
            let mode = meta.mode() & 0o7777;
            let mode = self
                .opts
                .chmod
                .as_ref()
                .map_or(mode, |c| c.apply(mode, is_dir));
            fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(io_err(dst))?;
        }
        if self.keep_owner {
            copy_xattrs(src, dst)?;
        }
        let mtime = filetime::FileTime::from_last_modification_time(meta);
        filetime::set_symlink_file_times(dst, mtime, mtime).map_err(io_err(dst))?;
        Ok(())
    }

    /// ADD of a local tar archive (plain or gzip): its entries land under `dir`.
    fn unpack(&mut self, archive: &Path, dir: &Path) -> Result<()> {
        let file = File::open(archive).map_err(io_err(archive))?;
        let mut reader = io::BufReader::new(file);
        let gz = is_gzip(archive)?;
        let input: Box<dyn io::Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(&mut reader))
        } else {
            Box::new(&mut reader)
        };
        let mut tar = tar::Archive::new(input);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(true);
        tar.set_preserve_mtime(true);
        tar.set_overwrite(true);
        for entry in tar.entries().map_err(io_err(archive))? {
            let mut entry = entry.map_err(io_err(archive))?;
            self.stats.bytes += entry.size();
            self.stats.files += 1;
            // `unpack_in` refuses entries that would land outside `dir`.
            entry.unpack_in(dir).map_err(io_err(archive))?;
        }
        Ok(())
    }
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let Ok(names) = xattr::list(src) else {
        return Ok(());
    };
    for name in names {
        if let Ok(Some(value)) = xattr::get(src, &name) {
            xattr::set(dst, &name, &value).map_err(io_err(dst))?;
        }
    }
    Ok(())
}

/// Removes a non-directory at `path` before it is replaced.
fn remove_existing(path: &Path, what: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::OverDirectory {
            src: what.to_string(),
            dst: path.display().to_string(),
        }),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}

/// Creates the directory `path` (absolute in the root) and its missing parents, new ones
/// owned by `owner` (root when none), returning its place on disk.
pub fn make_dirs(root: &Path, path: &str, owner: Option<Ids>) -> Result<PathBuf> {
    let mut current = String::from("/");
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            current = Path::new(&current)
                .parent()
                .map_or("/".into(), |p| p.to_string_lossy().into_owned());
            continue;
        }
        current = format!("{}/{part}", current.trim_end_matches('/'));
        let on_disk = rootfs::resolve(root, &current, true)?;
        match fs::metadata(&on_disk) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Io {
                    path: on_disk,
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
                });
            }
            Err(_) => {
                fs::create_dir(&on_disk).map_err(io_err(&on_disk))?;
                fs::set_permissions(&on_disk, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(&on_disk))?;
                let ids = owner.unwrap_or(Ids { uid: 0, gid: 0 });
                std::os::unix::fs::lchown(&on_disk, Some(ids.uid), Some(ids.gid))
                    .map_err(io_err(&on_disk))?;
            }
        }
    }
    Ok(rootfs::resolve(root, path, true)?)
}

fn is_dir_in(root: &Path, path: &str) -> Result<bool> {
    let on_disk = rootfs::resolve(root, path, true)?;
    Ok(fs::metadata(on_disk).is_ok_and(|m| m.is_dir()))
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

fn read_magic(path: &Path, len: usize, offset: u64) -> Result<Vec<u8>> {
    use std::io::Seek as _;
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(io::SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut buf = vec![0u8; len];
    let n = f.read(&mut buf).map_err(io_err(path))?;
    buf.truncate(n);
    Ok(buf)
}

fn is_gzip(path: &Path) -> Result<bool> {
    Ok(read_magic(path, 2, 0)? == [0x1f, 0x8b])
}

/// ADD extracts gzip-compressed and plain tar archives (recognised by content).
fn is_tar_archive(path: &Path) -> Result<bool> {
    if is_gzip(path)? {
        return Ok(true);
    }
    Ok(read_magic(path, 5, 257)? == b"ustar")
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
    use std::os::unix::fs::MetadataExt;

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

    fn opts() -> CopyOptions {
        CopyOptions {
            keyword: "COPY",
            ..CopyOptions::default()
        }
    }

    fn run(
        ctx: &Path,
        dst: &Path,
        sources: &[&str],
        dest: &str,
        o: &CopyOptions,
    ) -> Result<CopyStats> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        copy(
            SourceRoot {
                root: ctx,
                keep_owner: false,
            },
            &sources,
            dst,
            dest,
            o,
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
        o.unpack_archives = true;
        run(ctx.path(), out.path(), &["bundle.tar.gz"], "/opt/", &o).expect("add");
        assert_eq!(
            fs::read_to_string(out.path().join("opt/inside/x.txt")).expect("read"),
            "hi"
        );
    }

    #[test]
    fn inline_files() {
        let out = tempfile::tempdir().expect("tempdir");
        write_inline(out.path(), "/etc/app/", "conf", "x=1\n", &opts()).expect("dir");
        write_inline(out.path(), "/run.sh", "EOF", "echo\n", &opts()).expect("file");
        assert_eq!(
            fs::read_to_string(out.path().join("etc/app/conf")).expect("read"),
            "x=1\n"
        );
        assert!(out.path().join("run.sh").exists());
    }
}
