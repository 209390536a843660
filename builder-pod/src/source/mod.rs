//! `stagecoach-builder source`: the first pod of every build. It turns "this repository
//! at this revision" into what the other pods need on the workspace volume:
//!
//! checkout ([`crate::source::git`]) → context (`source/<contextDir>`, inside the checkout) →
//! Dockerfile → `.dockerignore` applied ([`crate::source::dockerignore`]) → plan → base images
//! pinned ([`pin_base_images`]) → `plan.json`, `pods/source/report.json` and the termination
//! message (the plan summary the operator schedules the stage pods from).
//!
//! Git credentials are used by the checkout only: they never reach the checkout, the
//! plan, the report, the termination message or the output.

pub mod artifact;
pub mod dockerignore;
pub mod git;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stagecoach_plan::contract::{Base, PlanSummary, PodOutcome};
use stagecoach_plan::limits::DOCKERFILE_BYTES;
use stagecoach_plan::{Plan, PlanError, PlanOptions, Platform};

use crate::oci::{self, Registry};
use crate::termination;
use crate::workspace::{self, Workspace};
use git::{Checkout, Credentials};

/// The name of the source pod's report (`pods/source/report.json`) and scratch space.
pub const POD: &str = "source";

/// Why the source pod failed; [`SourceError::reason`] is the stable word the build
/// reports.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] git::Error),
    #[error(transparent)]
    Artifact(#[from] artifact::Error),
    #[error("context directory {context_dir:?}: {message}")]
    ContextInvalid {
        context_dir: String,
        message: String,
    },
    #[error(
        "Dockerfile {path:?} not found in the context {context:?} of the repository: `spec.dockerfile` is relative to `spec.source.contextDir`{hint}"
    )]
    DockerfileNotFound {
        path: String,
        /// The context directory, relative to the repository (`.` for its root).
        context: String,
        /// A Dockerfile that is there, when there is one to suggest.
        hint: String,
    },
    #[error("Dockerfile {path:?}: {message}")]
    DockerfileUnreadable { path: String, message: String },
    #[error(transparent)]
    DockerfileInvalid(#[from] PlanError),
    #[error(transparent)]
    Dockerignore(#[from] dockerignore::Error),
    #[error("{dockerfile}:{line}: cannot pin the image {reference}")]
    BaseImage {
        dockerfile: String,
        line: usize,
        reference: String,
        #[source]
        source: Box<oci::Error>,
    },
    #[error("cannot reach registries")]
    Registry(#[source] Box<oci::Error>),
    #[error("the pull secrets in {}: {message}", dir.display())]
    PullSecrets { dir: PathBuf, message: String },
    #[error(
        "the plan summary does not fit a termination message even compressed \
         ({compressed} of {} bytes); see pods/source/report.json",
        termination::LIMIT
    )]
    PlanTooLarge { compressed: usize },
    #[error("cannot write {}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = SourceError> = std::result::Result<T, E>;

impl SourceError {
    /// The stable CamelCase reason (metrics label, `Succeeded` condition reason).
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Git(e) => e.reason(),
            SourceError::Artifact(e) => e.reason(),
            SourceError::ContextInvalid { .. } => "ContextInvalid",
            SourceError::DockerfileNotFound { .. } => "DockerfileNotFound",
            SourceError::DockerfileUnreadable { .. } | SourceError::DockerfileInvalid(_) => {
                "DockerfileInvalid"
            }
            SourceError::Dockerignore(
                dockerignore::Error::Read { .. } | dockerignore::Error::Remove { .. },
            )
            | SourceError::Workspace { .. } => "WorkspaceFailed",
            SourceError::Dockerignore(_) => "DockerignoreInvalid",
            SourceError::BaseImage { source, .. } | SourceError::Registry(source) => {
                source.reason()
            }
            SourceError::PullSecrets { .. } => "CredentialsInvalid",
            SourceError::PlanTooLarge { .. } => "PlanTooLarge",
        }
    }

    /// The Dockerfile line of a plan error.
    fn line(&self) -> Option<usize> {
        match self {
            SourceError::DockerfileInvalid(e) => e.line,
            SourceError::BaseImage { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Where the Dockerfile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dockerfile {
    /// A path relative to the context (`spec.dockerfile`, default `Dockerfile`).
    Path(String),
    /// The text itself (`spec.dockerfileInline`).
    Inline(String),
}

/// Where the context comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    Git {
        url: String,
        /// Branch, tag, full or short commit SHA; empty for the default branch.
        revision: String,
        submodules: bool,
        /// A mounted `kubernetes.io/basic-auth` or `kubernetes.io/ssh-auth` Secret.
        secret: Option<PathBuf>,
    },
    /// A context artifact ([`artifact`]), read with the pull secrets.
    Oci { image: String },
}

/// Everything the source pod is told.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub workspace: Workspace,
    pub origin: Origin,
    /// `spec.source.contextDir`, relative to the checkout.
    pub context_dir: String,
    pub dockerfile: Dockerfile,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// The target platforms, at least one: with several, each gets its part of the
    /// workspace and the pods they all share run once.
    pub platforms: Vec<Platform>,
    /// The platform the build pods run on (BUILDPLATFORM; none: the first target).
    pub build_platform: Option<Platform>,
    /// A private scratch directory outside the workspace (`/tmp`, an emptyDir).
    pub private_tmp: PathBuf,
    /// How registries are reached to pin base images.
    pub registry: oci::Settings,
    /// Where the operator mounts the build's image pull secrets, one directory each
    /// (`<dir>/<n>/.dockerconfigjson`); used when `registry.auth_file` is not set.
    pub pull_secrets: PathBuf,
    /// The stage cache, looked up with the pull credentials; none: every stage runs.
    pub cache: Option<crate::cache::Settings>,
}

/// What the source pod did, written to `pods/source/report.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceReport {
    pub pod: String,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The checkout: URL without credentials, commit, commit time, resolved ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Checkout>,
    /// The Dockerfile as messages name it.
    pub dockerfile: String,
    pub context_dir: String,
    /// The ignore file applied, relative to the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_file: Option<String>,
    /// Files and directories the ignore file removed from the context.
    pub ignored_files: u64,
    pub ignored_dirs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PlanSummary>,
    /// Stages found in the stage cache (nothing of them runs) and stages keyed but not
    /// found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_hits: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_misses: Vec<String>,
    pub duration_ms: u64,
}

/// Runs the source pod's pipeline. The report says how far it got; its scratch space
/// on the volume is removed whatever happened.
pub fn run(opts: &SourceOptions) -> SourceReport {
    let started = Instant::now();
    let mut report = SourceReport {
        pod: POD.to_string(),
        dockerfile: match &opts.dockerfile {
            Dockerfile::Path(p) => p.clone(),
            Dockerfile::Inline(_) => "Dockerfile".to_string(),
        },
        context_dir: opts.context_dir.clone(),
        ..SourceReport::default()
    };
    let result = pipeline(opts, &mut report);
    let _ = fs::remove_dir_all(opts.workspace.scratch(POD));
    let error = result.err().or_else(|| {
        // The operator cannot schedule what it cannot read: a summary too large for the
        // termination message fails the pod rather than leaving the build waiting.
        outcome(&report)
            .to_message()
            .err()
            .map(|compressed| SourceError::PlanTooLarge { compressed })
    });
    report.succeeded = error.is_none();
    if let Some(e) = &error {
        report.reason = Some(e.reason().to_string());
        report.error = Some(crate::error::chain(e));
        report.line = e.line();
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

fn pipeline(opts: &SourceOptions, report: &mut SourceReport) -> Result<()> {
    let ws = &opts.workspace;
    let checkout_dir = ws.source();
    let scratch = ws.scratch(POD);
    for dir in [&checkout_dir, &scratch] {
        // A pod started again after a failure begins from nothing.
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SourceError::Workspace {
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    let pull = registry_settings(opts)?;
    let checkout = match &opts.origin {
        Origin::Git {
            url,
            revision,
            submodules,
            secret,
        } => {
            let credentials = match secret {
                Some(dir) => Credentials::from_secret_dir(dir)?,
                None => Credentials::None,
            };
            git::checkout(
                &git::Request {
                    url,
                    revision,
                    submodules: *submodules,
                    credentials: &credentials,
                    scratch: &scratch,
                    private_tmp: &opts.private_tmp,
                },
                &checkout_dir,
            )?
        }
        Origin::Oci { image } => fetch_context(image, &pull.settings, &checkout_dir, &scratch)?,
    };
    let _ = fs::remove_dir_all(&scratch);
    if matches!(opts.origin, Origin::Git { .. }) {
        // An artifact's entries carry their modes, set explicitly as they are made.
        plain_directory_modes(&checkout_dir).map_err(|source| SourceError::Workspace {
            path: checkout_dir.clone(),
            source,
        })?;
    }
    let commit = checkout.commit.clone();
    let commit_time = checkout.commit_time;
    report.source = Some(checkout);

    let root = canonical(&checkout_dir).map_err(|source| SourceError::Workspace {
        path: checkout_dir.clone(),
        source,
    })?;
    let context = context_dir(&root, &opts.context_dir)?;
    let text = read_dockerfile(&root, &context, &opts.dockerfile)?;

    let dockerfile_path = match &opts.dockerfile {
        Dockerfile::Path(p) => Some(p.as_str()),
        Dockerfile::Inline(_) => None,
    };
    // Both files are read by now: like BuildKit and buildah, a `COPY .` leaves them out
    // when the patterns exclude them.
    let ignore = dockerignore::read_ignore_file(&root, &context, dockerfile_path)?;
    if let Some((file, matcher)) = ignore {
        let removed = dockerignore::apply(&context, &matcher)?;
        report.ignore_file = Some(file);
        report.ignored_files = removed.files;
        report.ignored_dirs = removed.dirs;
    }

    let options = PlanOptions {
        dockerfile_name: report.dockerfile.clone(),
        target: opts.target.clone(),
        build_args: opts.build_args.clone(),
        platform: opts.platforms[0].clone(),
        build_platform: opts.build_platform.clone(),
    };
    let summary = if opts.platforms.len() == 1 {
        let mut plan = stagecoach_plan::plan(&text, &options)?;
        pin_base_images(&mut [(&mut plan, ws.clone())], &pull.settings)?;
        let shared = crate::cache::Shared::None;
        prepare(
            &mut plan,
            ws,
            &context,
            &pull.settings,
            opts,
            shared,
            report,
        )?;
        plan.summary(Some(commit), Some(commit_time))
    } else {
        let mut plans = stagecoach_plan::plan_platforms(&text, &options, &opts.platforms)?;
        let file = plans.file();
        let first = ws.for_platform(&opts.platforms[0].to_string());
        let mut parts: Vec<(&mut Plan, Workspace)> = plans
            .plans
            .iter_mut()
            .map(|plan| {
                let part = ws.for_platform(&plan.platform.to_string());
                (plan, part)
            })
            .collect();
        // An image several platforms pin alike (a `$BUILDPLATFORM` base) is looked up once.
        pin_base_images(&mut parts, &pull.settings)?;
        for (i, (plan, part)) in parts.into_iter().enumerate() {
            // The first part holds the shared stages for all (whole, when found in the
            // cache); the others read them there, through links.
            let shared = match i {
                0 => crate::cache::Shared::Holds(&file.shared_stages),
                _ => crate::cache::Shared::Elsewhere(&file.shared_stages),
            };
            prepare(plan, &part, &context, &pull.settings, opts, shared, report)?;
            if i > 0 {
                link_shared_stages(&file.shared_stages, &part, &first)?;
            }
        }
        workspace::write_json(&ws.platforms(), &file).map_err(|source| SourceError::Workspace {
            path: ws.platforms(),
            source,
        })?;
        plans.summary(Some(commit), Some(commit_time))
    };
    report.summary = Some(summary);
    Ok(())
}

/// A plan with its base images pinned made ready to run in its part of the workspace:
/// the directories the pods write made, the stage cache looked up (`shared` says what
/// to restore of the stages the platforms share), `plan.json` written.
fn prepare(
    plan: &mut Plan,
    ws: &Workspace,
    context: &Path,
    pull: &oci::Settings,
    opts: &SourceOptions,
    shared: crate::cache::Shared,
    report: &mut SourceReport,
) -> Result<()> {
    ws.create_dirs(plan.stages.iter().map(|s| s.id.as_str()), plan.pod_stages())
        .map_err(|source| SourceError::Workspace {
            path: ws.part().to_path_buf(),
            source,
        })?;
    if let Some(cache) = &opts.cache {
        let found = crate::cache::prepare(plan, ws, context, pull, cache, shared);
        report.cache_hits.extend(found.hits);
        report.cache_misses.extend(found.misses);
    }
    workspace::write_json(&ws.plan(), &*plan).map_err(|source| SourceError::Workspace {
        path: ws.plan(),
        source,
    })
}

/// In a build for several platforms the shared stages run once, in the first
/// platform's part (or are restored whole there from the stage cache): another
/// platform's directory of such a stage becomes a link there, whatever its own plan
/// found, so that every platform reads the one copy the summary accounts for.
fn link_shared_stages(
    shared: &BTreeSet<String>,
    part: &Workspace,
    first: &Workspace,
) -> Result<()> {
    for id in shared {
        let dir = part.stage_dir(id);
        let relative = Path::new("../..")
            .join(first.part().file_name().unwrap_or_default())
            .join(stagecoach_plan::layout::stage_dir(id));
        fs::remove_dir_all(&dir)
            .and_then(|()| std::os::unix::fs::symlink(&relative, &dir))
            .map_err(|source| SourceError::Workspace { path: dir, source })?;
    }
    Ok(())
}

/// Fetches a context artifact into `dest`. What the report and status call the checkout
/// is the artifact: its repository as the URL, its manifest digest as the commit, its
/// source date as the commit time.
fn fetch_context(
    image: &str,
    settings: &oci::Settings,
    dest: &Path,
    scratch: &Path,
) -> Result<Checkout> {
    let runtime = oci::runtime().map_err(|e| SourceError::Registry(Box::new(e)))?;
    let fetched = runtime.block_on(async {
        let registry = Registry::new(settings).map_err(|e| SourceError::Registry(Box::new(e)))?;
        Ok::<_, SourceError>(artifact::fetch(&registry, image, dest, scratch).await?)
    })?;
    let repository = fetched
        .reference
        .split_once('@')
        .map_or(fetched.reference.as_str(), |(repository, _)| repository)
        .to_string();
    Ok(Checkout {
        url: repository,
        revision: fetched.reference,
        commit: fetched.digest,
        commit_time: fetched.source_date_epoch,
        resolved_ref: None,
        shallow: false,
        submodules: Vec::new(),
    })
}

/// Gives every directory of the checkout mode 0755. Git records no directory modes, but
/// a volume given to an fsGroup is setgid, and directories made in it inherit the bit:
/// COPY would carry it into images (buildah, reading a checkout on a plain disk, gives
/// 0755).
fn plain_directory_modes(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            plain_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// Pins every registry image of each plan (each `FROM <image>` and `COPY --from=<image>`
/// source) to the digest of its manifest for the stage's platform, and writes the
/// image's config to `bases/<stage-id>.json` of the plan's part of the workspace, which
/// the stage pod starts from. Each image is looked up once for all the plans, all of
/// them at the same time.
pub fn pin_base_images(
    parts: &mut [(&mut Plan, Workspace)],
    settings: &oci::Settings,
) -> Result<()> {
    // (part, stage index, reference, platform) of every image still to pin.
    let mut wanted = Vec::new();
    for (n, (plan, _)) in parts.iter().enumerate() {
        for (i, stage) in plan.stages.iter().enumerate() {
            if let Base::Image {
                reference,
                digest: None,
            } = &stage.base
            {
                let platform = match &stage.platform {
                    Some(p) => p.parse().map_err(|message: String| {
                        SourceError::DockerfileInvalid(PlanError {
                            file: plan.dockerfile.clone(),
                            line: Some(stage.line),
                            message,
                        })
                    })?,
                    None => plan.platform.clone(),
                };
                wanted.push((n, i, reference.clone(), platform));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let mut unique: Vec<(String, Platform)> = Vec::new();
    for (_, _, reference, platform) in &wanted {
        if !unique.iter().any(|(r, p)| r == reference && p == platform) {
            unique.push((reference.clone(), platform.clone()));
        }
    }
    let runtime = oci::runtime().map_err(|e| SourceError::Registry(Box::new(e)))?;
    let mut found = runtime.block_on(async {
        let registry = Registry::new(settings).map_err(|e| SourceError::Registry(Box::new(e)))?;
        let lookups = unique.iter().map(|(reference, platform)| {
            let registry = &registry;
            async move {
                let result = base_image(registry, reference, platform).await;
                (reference.clone(), platform.clone(), result)
            }
        });
        Ok::<_, SourceError>(futures::future::join_all(lookups).await)
    })?;
    for (n, i, reference, platform) in wanted {
        let (plan, workspace) = &mut parts[n];
        let dockerfile = plan.dockerfile.clone();
        let stage = &mut plan.stages[i];
        let at = found
            .iter()
            .position(|(r, p, _)| *r == reference && *p == platform)
            .expect("every wanted image was looked up");
        let (digest, config) = match &found[at].2 {
            Ok((digest, config)) => (digest.clone(), config.clone()),
            Err(_) => {
                let (_, _, result) = found.swap_remove(at);
                return Err(SourceError::BaseImage {
                    dockerfile,
                    line: stage.line,
                    reference,
                    source: Box::new(result.expect_err("a failed lookup")),
                });
            }
        };
        write_atomically(&workspace.base_config(&stage.id), &config)?;
        stage.base = Base::Image {
            reference,
            digest: Some(digest),
        };
    }
    Ok(())
}

/// The manifest digest of an image for a platform and its config's bytes.
async fn base_image(
    registry: &Registry,
    reference: &str,
    platform: &Platform,
) -> Result<(String, bytes::Bytes), oci::Error> {
    let parsed = oci::parse_reference(reference)?;
    let manifest = registry.manifest(&parsed, platform).await?;
    let config = registry
        .blob_bytes(
            &parsed,
            &manifest.manifest.config.digest,
            crate::image_config::CONFIG_LIMIT,
        )
        .await?;
    Ok((manifest.digest, config))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed = |source| SourceError::Workspace {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(failed)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, bytes).map_err(failed)?;
    fs::rename(&tmp, path).map_err(failed)
}

/// The registry settings of the run, with the mounted pull secrets as one credentials
/// file when none was given. Several secrets are merged (the first to name a registry
/// wins) into a private file that is deleted when the value drops.
struct PullSettings {
    settings: oci::Settings,
    merged: Option<PathBuf>,
}

impl Drop for PullSettings {
    fn drop(&mut self) {
        if let Some(path) = &self.merged {
            let _ = fs::remove_file(path);
        }
    }
}

fn registry_settings(opts: &SourceOptions) -> Result<PullSettings> {
    let mut settings = opts.registry.clone();
    if settings.auth_file.is_some() {
        return Ok(PullSettings {
            settings,
            merged: None,
        });
    }
    let dir = &opts.pull_secrets;
    let bad = |message: String| SourceError::PullSecrets {
        dir: dir.clone(),
        message,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(".dockerconfigjson"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let merged = match files.len() {
        0 => None,
        1 => {
            settings.auth_file = files.pop();
            None
        }
        _ => {
            let mut auths = serde_json::Map::new();
            for file in &files {
                let text = fs::read_to_string(file)
                    .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("{} is not JSON: {e}", file.display())))?;
                if let Some(entries) = value.get("auths").and_then(|a| a.as_object()) {
                    for (registry, entry) in entries {
                        auths
                            .entry(registry.clone())
                            .or_insert_with(|| entry.clone());
                    }
                }
            }
            let path = opts
                .private_tmp
                .join(format!("stagecoach-pull-{}.json", std::process::id()));
            let json = serde_json::json!({ "auths": auths }).to_string();
            write_private(&path, json.as_bytes())
                .map_err(|e| bad(format!("cannot write {}: {e}", path.display())))?;
            settings.auth_file = Some(path.clone());
            Some(path)
        }
    };
    Ok(PullSettings { settings, merged })
}

/// A file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn canonical(path: &Path) -> io::Result<PathBuf> {
    fs::canonicalize(path)
}

/// `source/<contextDir>`, symlinks resolved, refused unless it is a directory inside the
/// checkout (a repository must not point the build at the pod's own files).
fn context_dir(root: &Path, context_dir: &str) -> Result<PathBuf> {
    let invalid = |message: String| SourceError::ContextInvalid {
        context_dir: context_dir.to_string(),
        message,
    };
    let joined = root.join(context_dir.trim_start_matches('/'));
    let resolved = canonical(&joined).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => invalid("no such directory in the repository".into()),
        _ => invalid(e.to_string()),
    })?;
    if !resolved.starts_with(root) {
        return Err(invalid("leads outside the repository".into()));
    }
    if !resolved.is_dir() {
        return Err(invalid("is not a directory".into()));
    }
    Ok(resolved)
}

/// The Dockerfile's text, read no further than the planner's limit for it.
fn read_dockerfile(root: &Path, context: &Path, dockerfile: &Dockerfile) -> Result<String> {
    let path = match dockerfile {
        Dockerfile::Inline(text) => return Ok(text.clone()),
        Dockerfile::Path(p) => p,
    };
    let not_found = || SourceError::DockerfileNotFound {
        path: path.clone(),
        context: context
            .strip_prefix(root)
            .ok()
            .map(|c| c.to_string_lossy().into_owned())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| ".".into()),
        hint: dockerfiles_in(context)
            .map(|found| format!("; found here: {found}"))
            .unwrap_or_default(),
    };
    let resolved = inside(root, &context.join(path)).ok_or_else(not_found)?;
    if !resolved.is_file() {
        return Err(not_found());
    }
    let text = fs::File::open(&resolved)
        .and_then(|file| crate::fs::read_text_bounded(file, DOCKERFILE_BYTES))
        .map_err(|e| SourceError::DockerfileUnreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(text)
}

/// The Dockerfiles at the top of a context (`Dockerfile`, `*.Dockerfile`,
/// `Dockerfile.*`), named for a hint; None when there are none.
fn dockerfiles_in(context: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(context)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n == "Dockerfile" || n.starts_with("Dockerfile.") || n.ends_with(".Dockerfile"))
        .collect();
    names.sort();
    names.truncate(5);
    (!names.is_empty()).then(|| names.join(", "))
}

/// A path with symlinks resolved, if it exists and stays inside `root`.
fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    canonical(path).ok().filter(|p| p.starts_with(root))
}

/// The termination message's content: success with the plan summary, or the reason.
pub fn outcome(report: &SourceReport) -> PodOutcome {
    PodOutcome {
        succeeded: report.succeeded,
        reason: report.reason.clone(),
        message: report.error.as_deref().map(bounded),
        line: report.line,
        summary: report.summary.clone(),
        ..PodOutcome::default()
    }
}

/// Error messages can quote long things; the whole text is in the report.
fn bounded(message: &str) -> String {
    termination::bounded(message, 1024)
}

/// Writes the report and the termination message (the outcome the operator reads).
pub fn publish(workspace: &Workspace, report: &SourceReport) -> io::Result<()> {
    // `run` turned an oversized success into PlanTooLarge, so the plan summary fits.
    termination::write(&outcome(report));
    workspace::write_json(&workspace.report(POD), report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_plan::contract::{MESSAGE_ENCODING, PodSummary};

    fn outcome_with_pods(n: usize, image: impl Fn(usize) -> String) -> PodOutcome {
        PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("a".repeat(40)),
                commit_time: Some(1_700_000_000),
                target: "final".into(),
                warnings: Vec::new(),
                pods: (0..n)
                    .map(|i| PodSummary {
                        id: format!("stage-{i}"),
                        stages: vec![format!("stage-{i}")],
                        image: Some(image(i)),
                        waits_for: (i > 0)
                            .then(|| format!("stage-{}", i - 1))
                            .into_iter()
                            .collect(),
                        cache: None,
                        secrets: Vec::new(),
                        run_cache: false,
                        ssh: Vec::new(),
                        platform: None,
                        runs_on: None,
                    })
                    .collect(),
            }),
            ..PodOutcome::default()
        }
    }

    #[test]
    fn small_outcomes_are_plain_json() {
        let o = outcome_with_pods(3, |_| "docker.io/library/alpine:3".into());
        let m = o.to_message().expect("fits");
        assert!(m.starts_with("{\"succeeded\":true"));
        assert_eq!(PodOutcome::from_message(&m), Some(o));
    }

    #[test]
    fn large_outcomes_are_compressed_under_the_limit() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let o = outcome_with_pods(120, |_| format!("docker.io/library/golang:1.22@{digest}"));
        assert!(serde_json::to_string(&o).expect("json").len() > termination::LIMIT);
        let m = o.to_message().expect("fits compressed");
        assert!(m.len() <= termination::LIMIT);
        let v: serde_json::Value = serde_json::from_str(&m).expect("json");
        assert_eq!(v["encoding"], MESSAGE_ENCODING);
        assert_eq!(v["succeeded"], true);
        // A reader that knows only PodOutcome still parses it.
        let plain: PodOutcome = serde_json::from_str(&m).expect("a PodOutcome");
        assert!(plain.succeeded && plain.summary.is_none());
        assert_eq!(PodOutcome::from_message(&m), Some(o));
    }

    #[test]
    fn outcomes_too_large_even_compressed_are_refused() {
        // Distinct digests do not compress.
        let o = outcome_with_pods(400, |i| {
            format!(
                "registry.example.com/team/image-{i}@sha256:{:064x}",
                i * 7919
            )
        });
        let size = o.to_message().expect_err("too large");
        assert!(size > termination::LIMIT);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(2000);
        let cut = bounded(&long);
        assert!(cut.len() < 1100 && cut.ends_with("(see pods/ on the workspace)"));
    }

    #[test]
    fn plans_without_images_need_no_registry() {
        let ws = tempfile::tempdir().expect("tempdir");
        let mut plan = stagecoach_plan::plan(
            "FROM scratch AS a\nCOPY x /x\nFROM a\n",
            &PlanOptions::default(),
        )
        .expect("plan");
        let before = plan.clone();
        // No registry is contacted: an unreachable one would fail.
        let settings = oci::Settings {
            retry: oci::RetryPolicy {
                attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        pin_base_images(&mut [(&mut plan, Workspace::new(ws.path()))], &settings).expect("pins");
        assert_eq!(plan, before);
    }

    #[test]
    fn several_pull_secrets_become_one_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pull = dir.path().join("pull");
        for (n, json) in [
            (
                0,
                r#"{"auths":{"a.example":{"auth":"YTpi"},"b.example":{"auth":"Yjpj"}}}"#,
            ),
            (
                1,
                r#"{"auths":{"b.example":{"auth":"eDp5"},"c.example":{"auth":"Yzpk"}}}"#,
            ),
        ] {
            fs::create_dir_all(pull.join(n.to_string())).expect("mkdir");
            fs::write(pull.join(format!("{n}/.dockerconfigjson")), json).expect("write");
        }
        let opts = SourceOptions {
            workspace: Workspace::new(dir.path()),
            origin: Origin::Oci {
                image: String::new(),
            },
            context_dir: String::new(),
            dockerfile: Dockerfile::Path("Dockerfile".into()),
            target: None,
            build_args: BTreeMap::new(),
            platforms: vec![Platform::default()],
            build_platform: None,
            private_tmp: dir.path().to_path_buf(),
            registry: oci::Settings::default(),
            pull_secrets: pull.clone(),
            cache: None,
        };
        let merged = registry_settings(&opts).expect("settings");
        let path = merged.settings.auth_file.clone().expect("a file");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner reads it");
        }
        let creds = oci::Credentials::load(&path).expect("loads");
        assert_eq!(
            creds.get("b.example").expect("b"),
            oci_client::secrets::RegistryAuth::Basic("b".into(), "c".into()),
            "the first secret naming a registry wins"
        );
        assert!(creds.get("c.example").is_ok());
        drop(merged);
        assert!(!path.exists(), "the merged file is deleted");

        fs::remove_dir_all(pull.join("1")).expect("rm");
        let single = registry_settings(&opts).expect("settings");
        assert_eq!(
            single.settings.auth_file,
            Some(pull.join("0/.dockerconfigjson"))
        );
        drop(single);
        assert!(
            pull.join("0/.dockerconfigjson").exists(),
            "a mounted file stays"
        );
    }

    #[test]
    fn context_and_dockerfile_stay_inside_the_checkout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("source");
        fs::create_dir_all(root.join("app")).expect("mkdir");
        fs::write(root.join("app/Dockerfile"), "FROM scratch\n").expect("write");
        fs::write(dir.path().join("secret"), "hunter2").expect("write");
        std::os::unix::fs::symlink("../secret", root.join("app/leak")).expect("symlink");
        std::os::unix::fs::symlink("..", root.join("up")).expect("symlink");
        let root = canonical(&root).expect("root");

        let context = context_dir(&root, "app").expect("context");
        assert_eq!(context, root.join("app"));
        assert_eq!(context_dir(&root, "/app").expect("context"), context);
        for bad in ["..", "up", "missing", "app/Dockerfile"] {
            let e = context_dir(&root, bad).expect_err(bad);
            assert_eq!(e.reason(), "ContextInvalid", "{bad}");
        }
        let text =
            read_dockerfile(&root, &context, &Dockerfile::Path("Dockerfile".into())).expect("df");
        assert_eq!(text, "FROM scratch\n");
        for bad in ["leak", "../../secret", "nope"] {
            let e = read_dockerfile(&root, &context, &Dockerfile::Path(bad.into())).expect_err(bad);
            assert_eq!(e.reason(), "DockerfileNotFound", "{bad}");
        }
        let e = read_dockerfile(&root, &context, &Dockerfile::Path("app/Dockerfile".into()))
            .expect_err("relative to the context, not the repository");
        assert_eq!(
            e.to_string(),
            "Dockerfile \"app/Dockerfile\" not found in the context \"app\" of the repository: \
             `spec.dockerfile` is relative to `spec.source.contextDir`; found here: Dockerfile"
        );
        let text =
            read_dockerfile(&root, &context, &Dockerfile::Inline("FROM x".into())).expect("df");
        assert_eq!(text, "FROM x");
    }
}
