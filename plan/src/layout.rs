//! Where things live on the build's workspace volume, relative to its root. The builder
//! reads and writes these paths; the operator mounts them (a stage pod gets write access
//! to its own stage directories and pod directory only), so both take them from here.

/// The directory of a stage's results: layers, export, config, scope.
pub fn stage_dir(stage: &str) -> String {
    format!("stages/{stage}")
}

/// The directory holding every pod's [`pod_dir`].
pub const PODS: &str = "pods";

/// The directory that belongs to one pod: its report and its scratch space.
pub fn pod_dir(pod: &str) -> String {
    format!("{PODS}/{pod}")
}

/// The pod name of the stage pod whose last stage is `stage`: prefixed, so that a stage
/// called `source` or `assemble` has a directory apart from those pods'.
pub fn stage_pod(stage: &str) -> String {
    format!("stage-{stage}")
}

/// The root filesystem of a stage pod whose chain starts at `scratch` (the builder
/// image's own root is not the stage's).
pub fn scratch_root(stage: &str) -> String {
    format!("roots/{stage}")
}

/// The file naming the target platforms of a build for several: each has the plan, the
/// bases, the stage and pod directories and the scratch roots of a one-platform build
/// under its [`platform_dir`]; the checkout stays at the root, shared.
pub const PLATFORMS: &str = "platforms.json";

/// Where one target platform's part of the workspace is, in a build for several:
/// `platforms/linux-arm64` for `linux/arm64`.
pub fn platform_dir(platform: &str) -> String {
    format!("platforms/{}", platform.replace('/', "-"))
}
