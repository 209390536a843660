//! The build-pod side of Stagecoach: everything `stagecoach-builder` does inside a pod.

pub mod assemble;
pub mod copy;
pub mod copy_layer;
pub mod dockerignore;
pub mod export;
pub mod fetch;
pub mod filetree;
pub mod git;
pub mod image_config;
pub mod layer;
pub mod pattern;
pub mod registry;
pub mod rootfs;
pub mod run;
pub mod snapshot;
pub mod source;
pub mod stage;
pub mod termination;
pub mod users;
pub mod workspace;
