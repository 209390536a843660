//! The Stagecoach operator: the `ImageBuild` API, and (as it grows) the build state
//! machine, pod rendering, the controller and the local runner.

pub mod api;
