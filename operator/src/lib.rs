//! The Stagecoach operator: the `ImageBuild` API, pod rendering, and (as it grows) the
//! build state machine, the controller and the local runner.

pub mod api;
pub mod build_command;
pub mod controller;
pub mod core;
pub mod leader;
pub mod local;
pub mod manifest;
pub mod metrics;
pub mod observe;
pub mod progress;
pub mod render;
pub mod serve;
