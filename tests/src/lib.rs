//! Harness for the end-to-end tests: the local registry, podman running pod manifests,
//! base images, and comparing root filesystems file by file.

pub mod git_server;
pub mod podman;
pub mod registry;
pub mod rootfs;
