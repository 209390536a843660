//! The Dockerfile executor the stage and assemble pods share.

pub mod copy;
pub mod disk_copy_old;
pub mod export;
pub mod fetch;
