//! The bounds on what one Dockerfile may ask of the planner and the builder pods.
//!
//! A Dockerfile is user input that a source pod plans with a fixed memory limit: without
//! bounds, thirty `ARG A<n+1>=${A<n>}${A<n>}` lines ask for gigabytes and the pod is
//! OOM-killed with nothing a user can read. Past any of these the build fails with reason
//! `DockerfileInvalid` and the line, long before memory or time run out. Each is far
//! above what real Dockerfiles use (the largest in `../shared/corpora`, moby's own, is 25 KB);
//! docs/architecture.md lists them for users.

/// The Dockerfile's size (the largest ConfigMap Kubernetes stores, for scale).
pub const DOCKERFILE_BYTES: usize = 1 << 20;

/// One logical line, continuations joined.
pub const LINE_BYTES: usize = 256 << 10;

/// One heredoc body.
pub const HEREDOC_BYTES: usize = 256 << 10;

/// Instructions in one Dockerfile (each is parsed, typed and walked).
pub const INSTRUCTIONS: usize = 10_000;

/// Stages in one Dockerfile (each is a pod).
pub const STAGES: usize = 1000;

/// What one word may expand to (`${A}${A}` and `${V//x/yyyy}` grow fast).
pub const WORD_BYTES: usize = 1 << 20;

/// The ARG and ENV values one stage holds at once, names included.
pub const SCOPE_BYTES: usize = 4 << 20;

/// Distinct ARG and ENV names in one stage (each set looks the earlier ones up).
pub const SCOPE_VARIABLES: usize = 4096;

/// Everything the planner expands over a whole Dockerfile (many words each under
/// [`WORD_BYTES`] add up).
pub const EXPANDED_BYTES: usize = 16 << 20;

/// A `${V#p}`, `${V%p}` or `${V/p/r}` pattern is matched with a table of pattern
/// characters by value characters; this bounds its cells.
pub const PATTERN_CELLS: usize = 1 << 22;

/// A `.dockerignore` file's size.
pub const DOCKERIGNORE_BYTES: usize = 1 << 20;

/// Patterns in one `.dockerignore` (each is tried on every path of the context).
pub const DOCKERIGNORE_PATTERNS: usize = 10_000;

/// Target platforms of one build: each is a whole plan, and its pods and image.
pub const PLATFORMS: usize = 8;

/// A size for messages: `1 MiB`, `256 KiB`, `1000 bytes`.
pub fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}
