//! The build-pod side of Stagecoach: everything `stagecoach-builder` does inside a pod.

pub mod layer;
pub mod snapshot;
