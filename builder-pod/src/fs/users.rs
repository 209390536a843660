//! Users and groups of a stage's filesystem: `USER`, `--chown` and RUN's `HOME` name
//! users the way the image's own `/etc/passwd` and `/etc/group` define them, read from
//! whichever [`Tree`] the stage is built on.

use crate::fs::filetree;
use crate::fs::tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error(transparent)]
    Read(#[from] filetree::Error),
}

/// A user and group resolved to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// One line of `/etc/passwd`: name, uid, gid and home directory.
struct Account<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn accounts(passwd: &str) -> impl Iterator<Item = Account<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(Account {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or_default(),
        })
    })
}

fn text_of(tree: &(impl Tree + ?Sized), path: &str) -> Result<String, Error> {
    Ok(tree
        .read_file(path)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default())
}

/// Resolves `user`, `uid`, `user:group`, `uid:gid` (and mixes) against the tree's files.
/// A numeric user that is not in passwd is allowed, with gid 0 unless given (Docker).
pub fn resolve(tree: &(impl Tree + ?Sized), spec: &str) -> Result<Ids, Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if let (Ok(uid), Some(Ok(gid))) = (user.parse::<u32>(), group.map(str::parse::<u32>)) {
        return Ok(Ids { uid, gid });
    }
    let passwd = text_of(tree, "/etc/passwd")?;
    let numeric = user.parse::<u32>().ok();
    let entry = accounts(&passwd).find(|a| a.name == user || numeric == Some(a.uid));
    let (uid, primary_gid) = match (entry, numeric) {
        (Some(a), _) => (a.uid, a.gid),
        (None, Some(uid)) => (uid, 0),
        (None, None) => return Err(Error::NoUser(user.to_string())),
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => resolve_group(tree, g)?,
    };
    Ok(Ids { uid, gid })
}

/// A group name or number; numbers need not exist in the group file.
pub fn resolve_group(tree: &(impl Tree + ?Sized), group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = text_of(tree, "/etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&group))
                .then(|| f.get(2)?.parse::<u32>().ok())
                .flatten()
        })
        .ok_or_else(|| Error::NoGroup(group.to_string()))
}

/// The home directory of a uid in the tree's passwd, `/` if it has none and `/root` for
/// root (Docker's rule).
pub fn home(tree: &(impl Tree + ?Sized), uid: u32) -> Result<String, Error> {
    let passwd = text_of(tree, "/etc/passwd")?;
    let home = accounts(&passwd)
        .find(|a| a.uid == uid)
        .map(|a| a.home.to_string())
        .filter(|h| !h.is_empty());
    Ok(home.unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::DiskTree;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn every_user_form_resolves() {
        let r = root();
        let tree = DiskTree::new(r.path());
        let ids = |s: &str| resolve(&tree, s).expect(s);
        assert_eq!(
            ids("app"),
            Ids {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            ids("1000"),
            Ids {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(ids("app:staff"), Ids { uid: 1000, gid: 50 });
        assert_eq!(ids("1000:50"), Ids { uid: 1000, gid: 50 });
        assert_eq!(ids("4242"), Ids { uid: 4242, gid: 0 });
        assert_eq!(
            ids("4242:app"),
            Ids {
                uid: 4242,
                gid: 1001
            }
        );
        assert!(matches!(resolve(&tree, "nobody"), Err(Error::NoUser(_))));
        assert!(matches!(
            resolve(&tree, "app:nogroup"),
            Err(Error::NoGroup(_))
        ));
    }

    #[test]
    fn home_comes_from_passwd() {
        let r = root();
        let tree = DiskTree::new(r.path());
        assert_eq!(home(&tree, 1000).expect("home"), "/home/app");
        assert_eq!(home(&tree, 0).expect("home"), "/root");
        assert_eq!(home(&tree, 5).expect("home"), "/");
    }
}
