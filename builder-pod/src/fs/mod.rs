//! Filesystems as builds see them: paths confined to a root, snapshots of a root, path
//! patterns, users and groups, and file trees in memory.

pub mod filetree;
pub mod pattern;
pub mod rootfs;
pub mod snapshot;
pub mod tree;
pub mod users;
