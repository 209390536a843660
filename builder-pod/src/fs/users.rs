//! Users and groups of a stage's filesystem: `USER` and `--chown` name users the way the
//! image's own `/etc/passwd` and `/etc/group` define them.

use std::path::Path;

use crate::fs::rootfs;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error(transparent)]
    Read(#[from] rootfs::Error),
}

/// A user and group resolved to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user`, `uid`, `user:group`, `uid:gid` (and mixes) against the root's files.
/// A numeric user that is not in passwd is allowed, with gid 0 unless given (Docker).
pub fn resolve(root: &Path, spec: &str) -> Result<Ids, Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = rootfs::read_file(root, "/etc/passwd")?.unwrap_or_default();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (name, uid, gid) = (f.first()?, f.get(2)?, f.get(3)?);
        let matches = *name == user || (user.parse::<u32>().is_ok() && *uid == user);
        matches.then(|| Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?)))?
    });
    let (uid, primary_gid) = match (entry, user.parse::<u32>()) {
        (Some(ids), _) => ids,
        (None, Ok(uid)) => (uid, 0),
        (None, Err(_)) => return Err(Error::NoUser(user.to_string())),
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => resolve_group(root, g)?,
    };
    Ok(Ids { uid, gid })
}

/// A group name or number; numbers need not exist in the group file.
pub fn resolve_group(root: &Path, group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = rootfs::read_file(root, "/etc/group")?.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let ids = |s: &str| resolve(r.path(), s).expect(s);
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
        assert!(matches!(resolve(r.path(), "nobody"), Err(Error::NoUser(_))));
        assert!(matches!(
            resolve(r.path(), "app:nogroup"),
            Err(Error::NoGroup(_))
        ));
    }
}
