//! Persistent `RUN --mount=type=cache`: the caches live on a volume that outlives
//! builds (a claim per namespace in a cluster, a podman volume locally), one directory
//! per cache, found by the mount's id (its target when it has none), `from` and `source`.
//!
//! Pods cannot mount, so a RUN sees its cache through a symbolic link at the target that
//! points into the volume (a read-only cache gets a copy instead, thrown away after the
//! RUN). Which directory a RUN gets follows BuildKit's `sharing`, with `flock(2)` on a
//! lock file beside each directory, which holds across pods on one node and across
//! nodes on NFS-backed ReadWriteMany volumes:
//! - `shared` (default): every user at once (a shared lock);
//! - `locked`: one user at a time, the others wait (an exclusive lock);
//! - `private`: the first free directory of the cache, a new one when all are in use.
//!
//! The caches are best-effort: a volume that fails only makes the RUN start with an
//! empty directory. Least recently used directories are evicted past a size budget.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use sha2::{Digest as _, Sha256};

/// How many directories one `sharing=private` cache may have at once; past it a RUN gets
/// a directory of its own that is not kept.
pub const PRIVATE_DIRS: usize = 16;

/// A directory's lock file is its name with this suffix; its mtime is the last use.
const LOCK_SUFFIX: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run cache {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// BuildKit's `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

impl Sharing {
    pub fn parse(value: &str) -> Option<Sharing> {
        match value {
            "shared" => Some(Sharing::Shared),
            "private" => Some(Sharing::Private),
            "locked" => Some(Sharing::Locked),
            _ => None,
        }
    }
}

/// `type=cache` with BuildKit's defaults: id = target, shared, 0755 root, writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    pub id: String,
    pub sharing: Sharing,
    /// The stage whose export seeds a new cache, and the path in it.
    pub from: Option<String>,
    pub source: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub readonly: bool,
}

impl CacheMount {
    /// The cache's directory name on the volume: a digest of what identifies it, so that
    /// no id can name a path, and a cache seeded from elsewhere is another cache.
    fn key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.id.as_str(),
            self.from.as_deref().unwrap_or(""),
            &self.source,
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hex::encode(&hash.finalize()[..16])
    }
}

/// The volume that holds the caches, and its size budget.
#[derive(Debug, Clone)]
pub struct RunCache {
    pub root: PathBuf,
    /// Evict least recently used directories until the caches take at most this much.
    pub max_bytes: Option<u64>,
}

/// A cache directory in use: the lock is held until this is dropped.
#[derive(Debug)]
pub struct Held {
    pub dir: PathBuf,
    /// True when the directory was made for this use (seed it).
    pub fresh: bool,
    /// A `private` directory made because all the others were held: not kept.
    spare: bool,
    _lock: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.spare {
            let _ = std::fs::remove_dir_all(&self.dir);
            let mut lock = self.dir.clone().into_os_string();
            lock.push(LOCK_SUFFIX);
            let _ = std::fs::remove_file(lock);
        }
    }
}

impl RunCache {
    /// The directories of every cache, under a versioned root.
    fn caches(&self) -> PathBuf {
        self.root.join("v1")
    }

    /// Takes the directory a RUN's mount gets, waiting for `sharing=locked`.
    pub fn open(&self, mount: &CacheMount) -> Result<Held> {
        let cache = self.caches().join(mount.key());
        std::fs::create_dir_all(&cache).map_err(io(&cache))?;
        let id_file = cache.join("id");
        if !id_file.exists() {
            std::fs::write(&id_file, &mount.id).map_err(io(&id_file))?;
        }
        let (name, lock) = match mount.sharing {
            Sharing::Shared => ("data".to_string(), lock(&cache, "data", Lock::Shared)?),
            Sharing::Locked => ("data".to_string(), lock(&cache, "data", Lock::Exclusive)?),
            Sharing::Private => {
                let mut taken = None;
                for n in 0..PRIVATE_DIRS {
                    let name = if n == 0 {
                        "data".to_string()
                    } else {
                        format!("private-{n}")
                    };
                    if let Some(lock) = try_lock(&cache, &name)? {
                        taken = Some((name, lock));
                        break;
                    }
                }
                match taken {
                    Some(taken) => taken,
                    // Every directory is in use: one for this RUN alone, removed after it.
                    None => {
                        let nanos = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos());
                        let name = format!("spare-{}-{nanos}", std::process::id());
                        let lock = lock(&cache, &name, Lock::Exclusive)?;
                        (name, lock)
                    }
                }
            }
        };
        let dir = cache.join(&name);
        let fresh = match std::fs::DirBuilder::new().mode(mount.mode).create(&dir) {
            Ok(()) => {
                let set = std::fs::set_permissions(
                    &dir,
                    std::os::unix::fs::PermissionsExt::from_mode(mount.mode),
                );
                set.and_then(|()| std::os::unix::fs::chown(&dir, Some(mount.uid), Some(mount.gid)))
                    .map_err(io(&dir))?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(&dir)(e)),
        };
        Ok(Held {
            spare: name.starts_with("spare-"),
            dir,
            fresh,
            _lock: lock,
        })
    }

    /// Removes least recently used directories (by their lock files' mtimes) that nobody
    /// holds until the caches fit the budget; returns how many bytes went.
    pub fn evict(&self) -> Result<u64> {
        let Some(budget) = self.max_bytes else {
            return Ok(0);
        };
        let caches = self.caches();
        let mut dirs = Vec::new();
        let mut total = 0;
        let entries = match std::fs::read_dir(&caches) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&caches)(e)),
        };
        for cache in entries.flatten() {
            let cache = cache.path();
            for entry in std::fs::read_dir(&cache).map_err(io(&cache))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(dir) = name.strip_suffix(LOCK_SUFFIX) else {
                    continue;
                };
                let used = entry.metadata().map(|m| m.mtime()).unwrap_or(0);
                let bytes = disk_usage(&cache.join(dir));
                total += bytes;
                dirs.push((used, cache.clone(), dir.to_string(), bytes));
            }
        }
        dirs.sort();
        let mut freed = 0;
        for (_, cache, dir, bytes) in dirs {
            if total <= budget {
                break;
            }
            let Some(_lock) = try_lock(&cache, &dir)? else {
                continue;
            };
            let path = cache.join(&dir);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            let _ = std::fs::remove_file(cache.join(format!("{dir}{LOCK_SUFFIX}")));
            total -= bytes;
            freed += bytes;
        }
        Ok(freed)
    }
}

enum Lock {
    Shared,
    Exclusive,
}

/// Opens `<cache>/<name>.lock`, marks the use, and locks it (waiting).
fn lock(cache: &Path, name: &str, kind: Lock) -> Result<File> {
    let (file, path) = lock_file(cache, name)?;
    let op = match kind {
        Lock::Shared => FlockOperation::LockShared,
        Lock::Exclusive => FlockOperation::LockExclusive,
    };
    flock(&file, op).map_err(|e| io(&path)(e.into()))?;
    Ok(file)
}

/// Like [`lock`], exclusive, but gives up at once when someone holds it.
fn try_lock(cache: &Path, name: &str) -> Result<Option<File>> {
    let (file, path) = lock_file(cache, name)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(io(&path)(e.into())),
    }
}

fn lock_file(cache: &Path, name: &str) -> Result<(File, PathBuf)> {
    let path = cache.join(format!("{name}{LOCK_SUFFIX}"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.set_modified(std::time::SystemTime::now())
        .map_err(io(&path))?;
    Ok((file, path))
}

/// Bytes the files under `dir` take on disk (blocks, as `du` counts), links not followed.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: &str, sharing: Sharing) -> CacheMount {
        CacheMount {
            id: id.into(),
            sharing,
            from: None,
            source: "/".into(),
            mode: 0o755,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            readonly: false,
        }
    }

    fn cache(root: &Path) -> RunCache {
        RunCache {
            root: root.to_path_buf(),
            max_bytes: None,
        }
    }

    #[test]
    fn a_cache_keeps_its_content_for_the_next_user_and_ids_stay_apart() {
        let root = tempfile::tempdir().expect("root");
        let c = cache(root.path());
        let first = c
            .open(&mount("/root/.cache", Sharing::Shared))
            .expect("open");
        assert!(first.fresh);
        std::fs::write(first.dir.join("object"), "built").expect("write");
        drop(first);
        let again = c
            .open(&mount("/root/.cache", Sharing::Shared))
            .expect("open");
        assert!(!again.fresh);
        assert_eq!(
            std::fs::read_to_string(again.dir.join("object")).expect("kept"),
            "built"
        );
        let other = c.open(&mount("go", Sharing::Shared)).expect("open");
        assert!(other.fresh && other.dir != again.dir);
        let mut seeded = mount("/root/.cache", Sharing::Shared);
        seeded.from = Some("deps".into());
        let seeded = c.open(&seeded).expect("open");
        assert!(seeded.fresh, "a cache seeded from a stage is another cache");
    }

    #[test]
    fn shared_users_share_private_ones_get_their_own_locked_ones_wait() {
        let root = tempfile::tempdir().expect("root");
        let c = cache(root.path());
        let a = c.open(&mount("x", Sharing::Shared)).expect("a");
        let b = c.open(&mount("x", Sharing::Shared)).expect("b");
        assert_eq!(a.dir, b.dir);
        drop((a, b));

        let p1 = c.open(&mount("x", Sharing::Private)).expect("p1");
        let p2 = c.open(&mount("x", Sharing::Private)).expect("p2");
        assert_ne!(p1.dir, p2.dir);
        drop(p2);
        let p3 = c.open(&mount("x", Sharing::Private)).expect("p3");
        assert!(p3.dir.ends_with("private-1"), "{:?}", p3.dir);
        let mut all_held = vec![p1, p3];
        for _ in 2..PRIVATE_DIRS {
            all_held.push(c.open(&mount("x", Sharing::Private)).expect("private"));
        }
        let spare = c.open(&mount("x", Sharing::Private)).expect("spare");
        assert!(spare.fresh && !all_held.iter().any(|h| h.dir == spare.dir));
        let spare_dir = spare.dir.clone();
        drop(spare);
        assert!(!spare_dir.exists(), "a spare directory is not kept");
        drop(all_held);

        // locked: the second user gets the directory only once the first lets go.
        let held = c.open(&mount("x", Sharing::Locked)).expect("locked");
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || {
            let second = c2.open(&mount("x", Sharing::Locked)).expect("second");
            tx.send(std::fs::read_to_string(second.dir.join("by")).unwrap_or_default())
                .expect("send");
        });
        assert!(
            rx.try_recv().is_err(),
            "the second user waits while the first holds the lock"
        );
        std::fs::write(held.dir.join("by"), "first").expect("write");
        drop(held);
        assert_eq!(rx.recv().expect("second got it"), "first");
        waiter.join().expect("thread");
    }

    #[test]
    fn new_directories_take_mode_and_owner() {
        let root = tempfile::tempdir().expect("root");
        let mut m = mount("owned", Sharing::Shared);
        m.mode = 0o700;
        let held = cache(root.path()).open(&m).expect("open");
        let meta = std::fs::metadata(&held.dir).expect("meta");
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, m.uid));
    }

    #[test]
    fn eviction_removes_the_least_recently_used_that_nobody_holds() {
        let root = tempfile::tempdir().expect("root");
        let mut c = cache(root.path());
        let fill = |id: &str| {
            let held = c.open(&mount(id, Sharing::Shared)).expect("open");
            std::fs::write(held.dir.join("blob"), vec![7u8; 64 * 1024]).expect("write");
            held
        };
        drop(fill("old"));
        let old_lock = root
            .path()
            .join("v1")
            .join(mount("old", Sharing::Shared).key());
        filetime::set_file_mtime(
            old_lock.join("data.lock"),
            filetime::FileTime::from_unix_time(1_000_000, 0),
        )
        .expect("age");
        let in_use = fill("in-use");
        filetime::set_file_mtime(
            root.path()
                .join("v1")
                .join(mount("in-use", Sharing::Shared).key())
                .join("data.lock"),
            filetime::FileTime::from_unix_time(500_000, 0),
        )
        .expect("age");
        drop(fill("new"));
        c.max_bytes = Some(150 * 1024);
        let freed = c.evict().expect("evict");
        assert!(freed >= 64 * 1024, "{freed}");
        assert!(!old_lock.join("data").exists(), "the oldest free one goes");
        assert!(in_use.dir.join("blob").exists(), "one in use stays");
        let new = c.open(&mount("new", Sharing::Shared)).expect("new");
        assert!(new.dir.join("blob").exists(), "the newest stays");
    }
}
