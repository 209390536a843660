//! The Dockerfile front end and the build plan of Stagecoach.
//!
//! Pure: no I/O, no async, no Kubernetes. The source pod calls [`plan`] and writes the
//! [`Plan`] to the workspace; the operator, the stage pods and the assemble pod read it.
//! Pipeline: [`syntax`] (BuildKit-compatible parser) → [`instruction`] (typed
//! instructions) → [`planner`] (stages, scopes, graph, waves) → [`contract`];
//! [`platforms`] plans several target platforms and finds the pods they share.

pub mod contract;
#[cfg(test)]
pub(crate) mod corpora;
pub mod instruction;
pub mod layout;
pub mod limits;
pub mod planner;
pub mod platforms;
pub mod scope;
pub mod shell;
pub mod suggest;
pub mod syntax;

pub use contract::{Base, Execution, PLAN_VERSION, Plan, Platform, Stage, Warning, WarningKind};
pub use planner::{PlanError, PlanOptions, plan};
pub use platforms::{PlatformPlans, PlatformsFile, plan_platforms};
