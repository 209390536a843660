//! The build-pod side of Stagecoach: everything `stagecoach-builder` does inside a pod.
//!
//! One module per pod (`source`, `stage`, `assemble`), the Dockerfile executor they
//! share (`exec`), and what those stand on: filesystems (`fs`), layers (`layer`), the
//! registry client (`oci`), image configs and the workspace.

pub mod assemble;
pub mod cache;
pub mod error;
pub mod exec;
pub mod fs;
pub mod image_config;
pub mod layer;
pub mod oci;
pub mod source;
pub mod stage;
pub mod termination;
pub mod workspace;
