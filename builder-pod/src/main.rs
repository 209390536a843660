//! `stagecoach-builder`: the one static binary that runs inside Stagecoach's build pods.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use stagecoach_builder::assemble::{self, AssembleOptions, MediaTypes};
use stagecoach_builder::cache;
use stagecoach_builder::fs::read_text_bounded;
use stagecoach_builder::oci::{self, RetryPolicy};
use stagecoach_builder::stage::{self, StageOptions};
use stagecoach_builder::termination;
use stagecoach_builder::workspace::{Workspace, write_json};
use stagecoach_plan::{PlanOptions, Platform};

#[derive(Debug, Parser)]
#[command(
    name = "stagecoach-builder",
    version,
    about = "Runs inside Stagecoach build pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plans a Dockerfile and prints the plan.
    Plan(PlanArgs),
    /// Copies this binary into DIR (the init container's job: images have no `cp`).
    Install {
        /// Directory to install into (an emptyDir shared with the main container).
        dir: PathBuf,
    },
    /// Runs the stages of one stage pod (see the plan's waves).
    Stage(StageArgs),
    /// Checks out the source, applies .dockerignore and writes the plan (the source pod).
    Source(SourceArgs),
    /// Builds the target stage's image and pushes it (the assemble pod).
    Assemble(AssembleArgs),
    /// Prints the manifest digest of each image reference for a platform.
    Resolve(ResolveArgs),
    /// Serves ssh keys to a stage pod's `RUN --mount=type=ssh` (a container of its own,
    /// the only one that sees the keys).
    SshAgent(SshAgentArgs),
    /// Looks after a stage cache repository.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Debug, clap::Args)]
struct SshAgentArgs {
    /// An id and its OpenSSH private key file (repeatable, in socket order).
    #[arg(long = "key", value_name = "ID=FILE", value_parser = parse_secret)]
    keys: Vec<(String, PathBuf)>,
    /// The directory shared with the stage container: the sockets, then its `done`.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum CacheCommand {
    /// Deletes the entries stored longer ago than --older-than (a CronJob's job).
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// The cache repository, `registry/repository`.
    #[arg(long)]
    repository: String,
    /// Entries stored longer ago than this go (a Go duration: 336h, 90m, 0s).
    #[arg(long, value_parser = parse_age)]
    older_than: std::time::Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    stagecoach_plan::instruction::parse_go_duration(text)
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("`{text}` is not a duration such as 336h or 90m"))
}

#[derive(Debug, clap::Args)]
struct AssembleArgs {
    /// Where to push, `registry/repository[:tag]`.
    #[arg(long)]
    image: String,
    /// Another tag for the same image (repeatable), pushed after the image.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[arg(long, default_value = "/workspace")]
    workspace: PathBuf,
    /// The pod's name, for `pods/<pod>/report.json`.
    #[arg(long, default_value = "assemble")]
    pod: String,
    /// The context directory inside the checkout (`spec.source.contextDir`).
    #[arg(long, default_value = "")]
    context_dir: String,
    /// The repository URL, as the `org.opencontainers.image.source` label.
    #[arg(long)]
    source_url: Option<String>,
    /// A label for the image config, `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// An annotation for the image manifest, `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    annotations: Vec<(String, String)>,
    /// The commit, as the `org.opencontainers.image.revision` label.
    #[arg(long)]
    revision: Option<String>,
    /// Clamp layer, history and config times to this Unix time (the commit time).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<i64>,
    /// Push Docker v2 schema 2 manifests instead of OCI ones (for old registries).
    #[arg(long)]
    docker_media_types: bool,
    /// How the layers built here are compressed.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// Blobs transferred at the same time.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Push no image, only store the stages that ran in the stage cache (after a
    /// failed build).
    #[arg(long)]
    cache_only: bool,
}

/// The stage cache (`spec.cache`): where its entries are and what the pod may do.
#[derive(Debug, clap::Args)]
struct CacheArgs {
    /// The repository of the stage cache's entries; none: no cache.
    #[arg(long)]
    cache_repository: Option<String>,
    #[arg(long, value_enum, default_value_t = CacheMode::ReadWrite)]
    cache_mode: CacheMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CacheMode {
    ReadWrite,
    ReadOnly,
    Disabled,
}

impl CacheArgs {
    fn settings(self) -> Option<cache::Settings> {
        let mode = match self.cache_mode {
            CacheMode::ReadWrite => cache::Mode::ReadWrite,
            CacheMode::ReadOnly => cache::Mode::ReadOnly,
            CacheMode::Disabled => return None,
        };
        self.cache_repository
            .map(|repository| cache::Settings { repository, mode })
    }
}

#[derive(Debug, clap::Args)]
struct ResolveArgs {
    /// Image references (`busybox`, `registry:5000/team/app:1.2`).
    #[arg(required = true)]
    references: Vec<String>,
    /// The platform whose manifest an index resolves to, `os/arch[/variant]`.
    #[arg(long, default_value = "linux/amd64")]
    platform: Platform,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// How registries are reached (the assemble pod's and the source pod's credentials).
#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// A Docker config.json with registry credentials (a dockerconfigjson Secret's file).
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// A registry (`host:port`) to reach over plain HTTP; every other one is HTTPS.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "STAGECOACH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Attempts per registry request before giving up (transient failures only).
    #[arg(long, default_value_t = RetryPolicy::default().attempts)]
    attempts: u32,
}

impl RegistryArgs {
    fn settings(self) -> oci::Settings {
        oci::Settings {
            auth_file: self.auth_file,
            insecure: self.insecure,
            retry: RetryPolicy {
                attempts: self.attempts.max(1),
                ..RetryPolicy::default()
            },
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("origin").required(true).args(["url", "context_image"])))]
struct SourceArgs {
    /// The repository: https://, ssh://, git@host:path, git://, file:// or a path.
    #[arg(long)]
    url: Option<String>,
    /// A context artifact (`spec.source.oci.image`; best by digest), instead of a
    /// repository: read with the pull secrets, every blob checked against its digest.
    #[arg(long, value_name = "IMAGE")]
    context_image: Option<String>,
    /// Branch, tag, full or short commit SHA (default: the default branch).
    #[arg(long, default_value = "")]
    revision: String,
    /// Check out the submodules too, at the commits the repository records.
    #[arg(long)]
    submodules: bool,
    /// A mounted kubernetes.io/basic-auth or kubernetes.io/ssh-auth Secret.
    #[arg(long)]
    git_secret: Option<PathBuf>,
    /// The context directory inside the checkout (`spec.source.contextDir`).
    #[arg(long, default_value = "")]
    context_dir: String,
    /// The Dockerfile, relative to the context.
    #[arg(long, default_value = "Dockerfile")]
    dockerfile: String,
    /// The Dockerfile's text, instead of a file.
    #[arg(long, conflicts_with = "dockerfile")]
    dockerfile_inline: Option<String>,
    #[command(flatten)]
    planning: PlanningArgs,
    #[arg(long, default_value = "/workspace")]
    workspace: PathBuf,
    /// Private scratch space outside the workspace (an emptyDir in the pod).
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// The mounted image pull secrets, one directory each (used without --auth-file).
    #[arg(long, default_value = "/var/run/secrets/stagecoach/pull")]
    pull_secrets: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Debug, clap::Args)]
struct StageArgs {
    /// The id of the stage whose pod this is.
    pod: String,
    #[arg(long, default_value = "/workspace")]
    workspace: PathBuf,
    /// In a build for several platforms, the platform whose part of the workspace holds
    /// the pod's plan and stages: its own, or the first for a pod they all share.
    #[arg(long, value_name = "OS/ARCH")]
    part: Option<Platform>,
    /// The context directory inside the checkout (`spec.source.contextDir`).
    #[arg(long, default_value = "")]
    context_dir: String,
    /// The filesystem the stage builds on.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The tools directory the builder was installed into (never part of a layer).
    #[arg(long, default_value = "/stagecoach")]
    tools: PathBuf,
    /// Clamp layer and history times to this Unix time (the commit time).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<i64>,
    /// How layers are compressed.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// A build secret for `RUN --mount=type=secret,id=ID`: the file holding its value
    /// (repeatable).
    #[arg(long = "secret", value_name = "ID=FILE", value_parser = parse_secret)]
    secrets: Vec<(String, PathBuf)>,
    /// The volume of persistent `RUN --mount=type=cache` directories (without it, every
    /// cache mount starts empty).
    #[arg(long, value_name = "DIR")]
    run_cache: Option<PathBuf>,
    /// Evict least recently used run caches until they take at most this many bytes.
    #[arg(long, value_name = "BYTES", requires = "run_cache")]
    run_cache_max_bytes: Option<u64>,
    /// The ssh agent socket for `RUN --mount=type=ssh,id=ID` (repeatable); the agent
    /// stops once this pod writes `done` beside it.
    #[arg(long = "ssh", value_name = "ID=SOCKET", value_parser = parse_secret)]
    ssh: Vec<(String, PathBuf)>,
    /// The `known_hosts` of an ssh id, put at `/etc/ssh/ssh_known_hosts` for the RUN
    /// steps that mount the id (repeatable; a missing file is none).
    #[arg(long = "ssh-known-hosts", value_name = "ID=FILE", value_parser = parse_secret)]
    ssh_known_hosts: Vec<(String, PathBuf)>,
}

fn parse_secret(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((id, file)) if !id.is_empty() && !file.is_empty() => {
            Ok((id.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("{value:?}: expected ID=FILE")),
    }
}

/// Layer compression (`spec.output.compression`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Compression {
    Gzip,
    Zstd,
}

impl From<Compression> for stagecoach_builder::layer::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Gzip => stagecoach_builder::layer::Compression::Gzip,
            Compression::Zstd => stagecoach_builder::layer::Compression::Zstd,
        }
    }
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The Dockerfile (`-` for standard input).
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    file: PathBuf,
    #[command(flatten)]
    planning: PlanningArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// What a plan is made for: the source pod's and `plan`'s shared options.
#[derive(Debug, clap::Args)]
struct PlanningArgs {
    /// The stage to build (default: the last one).
    #[arg(long)]
    target: Option<String>,
    /// A build argument, `NAME=value` (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    build_args: Vec<(String, String)>,
    /// The platform of the image, `os/arch[/variant]`, or several separated by commas:
    /// `plan` shows which pods they share, `source` plans a build of an image index.
    #[arg(
        long = "platform",
        default_value = "linux/amd64",
        value_delimiter = ','
    )]
    platforms: Vec<Platform>,
    /// The platform the build runs on (`BUILDPLATFORM`; default: the first platform).
    #[arg(long)]
    build_platform: Option<Platform>,
}

impl PlanningArgs {
    fn options(&self, dockerfile_name: String) -> PlanOptions {
        PlanOptions {
            dockerfile_name,
            target: self.target.clone(),
            build_args: self.build_args.iter().cloned().collect(),
            platform: self.platforms[0].clone(),
            build_platform: self.build_platform.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Exits on SIGTERM (a pod being deleted), stopping the RUN in progress first. As a
/// container's first process the builder gets no default action for it, and the pod
/// would wait out its whole grace period.
fn exit_on_sigterm() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                stage::run::stop_running();
                eprintln!("stopped by SIGTERM");
                std::process::exit(143);
            }
        });
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit_on_sigterm();
    let result = match cli.command {
        Command::Plan(args) => run_plan(args),
        Command::Install { dir } => install(&dir),
        Command::Stage(args) => run_stage(args),
        Command::Source(args) => run_source(args),
        Command::Assemble(args) => run_assemble(args),
        Command::Resolve(args) => run_resolve(args),
        Command::SshAgent(args) => {
            stage::ssh_agent::serve(&args.keys, &args.dir).map_err(anyhow::Error::from)
        }
        Command::Cache {
            command: CacheCommand::Prune(args),
        } => run_prune(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let target = dir.join("stagecoach-builder");
    std::fs::copy(&me, &target).map_err(|e| {
        anyhow::anyhow!("cannot copy {} to {}: {e}", me.display(), target.display())
    })?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    // The CA bundle too: stages run on base images that may have none (ADD <https-url>).
    let bundle = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        std::fs::copy(bundle, dir.join(stage::CA_BUNDLE))?;
    }
    println!("installed {}", target.display());
    Ok(())
}

fn run_stage(args: StageArgs) -> anyhow::Result<()> {
    let mut workspace = Workspace::new(&args.workspace);
    if let Some(platform) = &args.part {
        workspace = workspace.for_platform(&platform.to_string());
    }
    let opts = StageOptions {
        context: workspace
            .source()
            .join(args.context_dir.trim_start_matches('/')),
        workspace,
        part: args.part,
        pod: args.pod,
        root: args.root,
        tools: args.tools,
        source_date_epoch: args.source_date_epoch,
        compression: args.compression.into(),
        // The first file given for an id wins, as the operator mounts the first entry.
        secrets: args.secrets.into_iter().rev().collect(),
        run_cache: args.run_cache.map(|root| stage::run_cache::RunCache {
            root,
            max_bytes: args.run_cache_max_bytes,
        }),
        ssh: args.ssh.into_iter().rev().collect(),
        ssh_known_hosts: args.ssh_known_hosts.into_iter().rev().collect(),
    };
    let report = stage::run_pod(&opts);
    // The agents beside this container stop now.
    for socket in opts.ssh.values() {
        if let Some(dir) = socket.parent() {
            let _ = std::fs::write(dir.join(stage::ssh_agent::DONE), "");
        }
    }
    write_json(&opts.workspace.report(&opts.pod_name()), &report)?;
    termination::write(&stage::outcome(&report));
    match report.error {
        None => {
            let layers: usize = report.stages.iter().map(|s| s.layers.len()).sum();
            println!(
                "pod {} done: {} stage(s), {layers} layer(s) in {} ms",
                report.pod,
                report.stages.len(),
                report.duration_ms
            );
            Ok(())
        }
        Some(e) => Err(anyhow::anyhow!(e)),
    }
}

fn run_source(args: SourceArgs) -> anyhow::Result<()> {
    use stagecoach_builder::source::{self, Dockerfile, Origin, SourceOptions};
    let opts = SourceOptions {
        workspace: Workspace::new(&args.workspace),
        origin: match (args.url, args.context_image) {
            (_, Some(image)) => Origin::Oci { image },
            (url, None) => Origin::Git {
                url: url.unwrap_or_default(),
                revision: args.revision,
                submodules: args.submodules,
                secret: args.git_secret,
            },
        },
        context_dir: args.context_dir,
        dockerfile: match args.dockerfile_inline {
            Some(text) => Dockerfile::Inline(text),
            None => Dockerfile::Path(args.dockerfile),
        },
        platforms: args.planning.platforms,
        build_platform: args.planning.build_platform,
        target: args.planning.target,
        build_args: args.planning.build_args.into_iter().collect(),
        private_tmp: args.tmp,
        registry: args.registry.settings(),
        pull_secrets: args.pull_secrets,
        cache: args.cache.settings(),
    };
    let report = source::run(&opts);
    source::publish(&opts.workspace, &report)?;
    match (&report.source, &report.summary, &report.error) {
        (Some(src), Some(summary), None) => {
            println!(
                "source {} at {} ({}): {} pod(s) planned in {} ms",
                src.url,
                src.commit,
                src.resolved_ref.as_deref().unwrap_or("commit"),
                summary.pods.len(),
                report.duration_ms
            );
            Ok(())
        }
        (_, _, error) => Err(anyhow::anyhow!(
            "{}: {}",
            report.reason.as_deref().unwrap_or("Failed"),
            error.as_deref().unwrap_or("unknown error")
        )),
    }
}

fn run_assemble(args: AssembleArgs) -> anyhow::Result<()> {
    let workspace = Workspace::new(&args.workspace);
    let opts = AssembleOptions {
        context: workspace
            .source()
            .join(args.context_dir.trim_start_matches('/')),
        workspace,
        pod: args.pod,
        image: args.image,
        tags: args.tags,
        source_url: args.source_url,
        revision: args.revision,
        labels: args.labels.into_iter().collect(),
        annotations: args.annotations.into_iter().collect(),
        source_date_epoch: args.source_date_epoch,
        media_types: if args.docker_media_types {
            MediaTypes::Docker
        } else {
            MediaTypes::Oci
        },
        compression: args.compression.into(),
        registry: args.registry.settings(),
        jobs: args.jobs,
        cache: args.cache.settings(),
        cache_only: args.cache_only,
    };
    let cache_only = args.cache_only;
    let report = assemble::run(&opts);
    write_json(&opts.workspace.report(&report.pod), &report)?;
    termination::write(&assemble::outcome(&report));
    match (&report.error, &report.image) {
        (None, None) if cache_only => {
            println!(
                "stored {} stage(s) in the stage cache in {} ms",
                report.cached.len(),
                report.timings.total_ms
            );
            Ok(())
        }
        (None, Some(image)) => {
            println!(
                "pushed {image} ({} layers: {} pushed, {} mounted, {} already there) in {} ms",
                report.layers,
                report.blobs.pushed,
                report.blobs.mounted,
                report.blobs.skipped,
                report.timings.total_ms
            );
            Ok(())
        }
        (Some(e), _) => Err(anyhow::anyhow!("{}: {}", e.reason, e.message)),
        (None, None) => Err(anyhow::anyhow!("the push reported no image")),
    }
}

fn run_prune(args: PruneArgs) -> anyhow::Result<()> {
    let settings = args.registry.settings();
    let pruned = cache::prune::prune(&settings, &args.repository, args.older_than, args.dry_run)?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for tag in &pruned.deleted {
        println!("{verb} {}:{tag}", args.repository);
    }
    for tag in &pruned.foreign {
        println!("left {}:{tag}: not a stage cache entry", args.repository);
    }
    println!(
        "{verb} {} entries stored before {}, kept {}",
        pruned.deleted.len(),
        pruned.cutoff,
        pruned.kept
    );
    Ok(())
}

fn run_resolve(args: ResolveArgs) -> anyhow::Result<()> {
    let resolved = oci::resolve(&args.registry.settings(), &args.platform, &args.references)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.reason()))?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&resolved)?),
        Format::Text => {
            for r in resolved {
                println!("{} {}", r.reference, r.digest);
            }
        }
    }
    Ok(())
}

fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let limit = stagecoach_plan::limits::DOCKERFILE_BYTES;
    let (name, text) = if args.file.as_os_str() == "-" {
        let text = read_text_bounded(std::io::stdin(), limit)?;
        ("Dockerfile".to_string(), text)
    } else {
        let text = std::fs::File::open(&args.file)
            .and_then(|file| read_text_bounded(file, limit))
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let options = args.planning.options(name);
    if args.planning.platforms.len() > 1 {
        let plans = stagecoach_plan::plan_platforms(&text, &options, &args.planning.platforms)?;
        match args.format {
            Format::Json => println!("{}", plans.to_json()),
            Format::Text => print!("{}", plans.to_text()),
        }
        return Ok(());
    }
    let plan = stagecoach_plan::plan(&text, &options)?;
    match args.format {
        Format::Json => println!("{}", plan.to_json()),
        Format::Text => print!("{}", plan.to_text()),
    }
    Ok(())
}
