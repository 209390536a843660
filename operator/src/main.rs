//! `stagecoach`: the operator binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stagecoach_operator::api::Phase;
use stagecoach_operator::local::{self, LocalOptions};

#[derive(Debug, Parser)]
#[command(
    name = "stagecoach",
    version,
    about = "Builds container images from Dockerfiles, one pod per stage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the ImageBuild CustomResourceDefinition as YAML.
    Crd,
    /// Runs the operator: watches ImageBuilds and drives their pods.
    Operator(Box<OperatorArgs>),
    /// Prints the objects the operator would create for an ImageBuild (the workspace
    /// claim, the source pod, and with the source pod's outcome every stage pod and the
    /// assemble pod), as YAML, for review or `kubectl apply --dry-run=server`.
    Render(RenderArgs),
    /// Builds an image from a directory or a git URL with `docker build`'s flags, through
    /// the same pods as `local build`, on podman; pushes it and prints its reference.
    /// Exit codes: 0 built and pushed, 1 the build failed, 2 a usage or environment error.
    Build(Box<stagecoach_operator::build_command::BuildArgs>),
    /// Runs builds without a cluster: the same pods, on podman.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// The builder image build pods use.
    #[arg(long, env = "STAGECOACH_BUILDER_IMAGE")]
    builder_image: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "STAGECOACH_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Builds reconciled at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Default size of a build's workspace claim.
    #[arg(long, default_value = "10Gi")]
    workspace_size: String,
    /// Default storage class of workspace claims.
    #[arg(long)]
    storage_class: Option<String>,
    /// A registry (`host:port`) build pods reach over plain HTTP (repeatable).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "STAGECOACH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// The stage cache repository of builds whose `spec.cache` names none (default:
    /// each build's `<output repository>/cache`).
    #[arg(long, env = "STAGECOACH_CACHE_REPOSITORY")]
    cache_repository: Option<String>,
    /// The claim of persistent `RUN --mount=type=cache` directories the operator makes
    /// in each build namespace that needs one (empty: none; cache mounts start empty).
    #[arg(
        long,
        env = "STAGECOACH_RUN_CACHE_CLAIM",
        default_value = "stagecoach-run-cache"
    )]
    run_cache_claim: String,
    /// Size of the run cache claims the operator makes.
    #[arg(long, default_value = "20Gi")]
    run_cache_size: String,
    /// Storage class of the run cache claims (default: the cluster's default class).
    #[arg(long)]
    run_cache_storage_class: Option<String>,
    /// Access mode of the run cache claims: ReadWriteMany lets pods on every node use
    /// it at once; with ReadWriteOnce the pods that mount it share one node at a time.
    #[arg(long, default_value = "ReadWriteOnce", value_parser = ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"])]
    run_cache_access_mode: String,
    /// Stage pods evict least recently used caches down to this many bytes (default:
    /// 80% of --run-cache-size).
    #[arg(long)]
    run_cache_max_bytes: Option<u64>,
    /// The platform of the nodes the builder image's pods (source, assemble) run on:
    /// BUILDPLATFORM of every build.
    #[arg(long, env = "STAGECOACH_BUILD_PLATFORM", default_value = stagecoach_operator::render::DEFAULT_BUILD_PLATFORM, value_parser = parse_platform)]
    build_platform: String,
    /// A platform whose stage pods go to build-platform nodes that emulate it
    /// (qemu-user-static registered with binfmt_misc), for clusters without native
    /// nodes of it; `all` for every platform (repeatable).
    #[arg(
        long = "emulate-platform",
        value_name = "OS/ARCH",
        env = "STAGECOACH_EMULATED_PLATFORMS",
        value_delimiter = ',',
        value_parser = parse_emulated
    )]
    emulated_platforms: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// `text` or `json` logs.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Hold a Lease before reconciling (needed with more than one replica).
    #[arg(long)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "stagecoach-system")]
    lease_namespace: String,
    /// Name of the Lease: one per installation, so that two beside each other do not
    /// wait on one another.
    #[arg(long, default_value = "stagecoach")]
    lease_name: String,
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The ImageBuild YAML.
    manifest: PathBuf,
    /// The source pod's termination message (its plan summary), from
    /// `kubectl get pod NAME-source-g1 -o jsonpath='{..terminated.message}'`.
    #[arg(long)]
    source_outcome: Option<PathBuf>,
    /// The builder image the pods use.
    #[arg(long, default_value = "127.0.0.1:5000/stagecoach/builder:dev")]
    builder_image: String,
    /// A registry (`host:port`) build pods reach over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Runs an ImageBuild manifest to the end and prints the image.
    Build {
        /// The ImageBuild YAML.
        manifest: PathBuf,
        /// The builder image the pods use.
        #[arg(
            long,
            env = "STAGECOACH_BUILDER_IMAGE",
            default_value = "127.0.0.1:5000/stagecoach/builder:dev"
        )]
        builder_image: String,
        /// Leave the pods and the workspace volume for inspection.
        #[arg(long)]
        keep: bool,
        /// Stream every pod's output, prefixed with its stage.
        #[arg(long)]
        logs: bool,
        /// A registry (`host:port`) reached over plain HTTP (repeatable); the local
        /// registry of `make demo` by default.
        #[arg(
            long = "insecure-registry",
            value_name = "HOST:PORT",
            env = "STAGECOACH_INSECURE_REGISTRIES",
            value_delimiter = ',',
            default_value = "127.0.0.1:5000"
        )]
        insecure_registries: Vec<String>,
        /// A Secret the ImageBuild names, as a directory with one file per key
        /// (repeatable): `--secret push-creds=./push-creds`.
        #[arg(long = "secret", value_name = "NAME=DIR", value_parser = parse_secret)]
        secrets: Vec<(String, PathBuf)>,
        /// The stage cache repository when the manifest's `spec.cache` names none
        /// (default: `<output repository>/cache`).
        #[arg(long)]
        cache_repository: Option<String>,
        /// The podman volume of persistent `RUN --mount=type=cache` directories.
        #[arg(long, default_value = "stagecoach-run-cache")]
        run_cache_volume: String,
        /// Cache mounts start empty (no run cache volume).
        #[arg(long)]
        no_run_cache: bool,
        /// Run every stage and store nothing in the stage cache.
        #[arg(long)]
        no_cache: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Operator(args) => match run_operator(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Build(args) => ExitCode::from(stagecoach_operator::build_command::run(
            &args,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
        )),
        Command::Crd => {
            print!("{}", stagecoach_operator::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Render(args) => match render(args) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Local {
            command:
                LocalCommand::Build {
                    manifest,
                    builder_image,
                    keep,
                    logs,
                    insecure_registries,
                    secrets,
                    cache_repository,
                    run_cache_volume,
                    no_run_cache,
                    no_cache,
                },
        } => {
            let opts = LocalOptions {
                builder_image,
                keep,
                logs,
                progress: local::ProgressStyle::Auto,
                progress_stream: local::ProgressStream::Stdout,
                insecure_registries,
                secrets: secrets.into_iter().collect(),
                containers_conf: std::env::var_os("CONTAINERS_CONF").map(PathBuf::from),
                registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(PathBuf::from),
                cache_repository,
                run_cache_volume: (!no_run_cache).then_some(run_cache_volume),
                no_cache,
            };
            match local::build(&manifest, &opts) {
                Ok(result) if result.status.phase == Some(Phase::Succeeded) => {
                    if let Some(image) = &result.status.image {
                        println!("{}@{}", image.reference, image.digest);
                    }
                    ExitCode::SUCCESS
                }
                Ok(result) => {
                    stagecoach_operator::progress::print_failure(result.status.failure.as_ref());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn render(args: RenderArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use stagecoach_operator::render::{self, OperatorConfig, RunCacheConfig};
    use stagecoach_plan::contract::PodOutcome;

    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    // Unknown fields are errors, as for the API server (the message names the file).
    let mut build = stagecoach_operator::manifest::read_image_build(&text, &args.manifest)?;
    build
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    build.metadata.generation.get_or_insert(1);
    let config = OperatorConfig {
        builder_image: args.builder_image,
        default_workspace_size: "10Gi".into(),
        default_storage_class: None,
        insecure_registries: args.insecure_registries,
        cache_repository: None,
        run_cache: Some(RunCacheConfig::default()),
        build_platform: render::DEFAULT_BUILD_PLATFORM.into(),
        emulated_platforms: Vec::new(),
    };
    let mut objects = vec![
        serde_json::to_value(render::render_claim(&build, &config))?,
        serde_json::to_value(render::render_source_pod(&build, &config, 0))?,
    ];
    if let Some(path) = args.source_outcome {
        let message = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let summary = PodOutcome::from_message(message.trim())
            .and_then(|o| o.summary)
            .with_context(|| format!("{} holds no plan summary", path.display()))?;
        if summary.pods.iter().any(|p| p.run_cache)
            && let Some(claim) = render::operator_run_cache_claim(&build, &config)
        {
            objects.push(serde_json::to_value(claim)?);
        }
        for pod in &summary.pods {
            let stage = render::render_stage_pod(&build, &config, pod, summary.commit_time, 0);
            objects.push(serde_json::to_value(stage)?);
        }
        let assemble = render::render_assemble_pod(
            &build,
            &config,
            summary.commit.as_deref(),
            summary.commit_time,
            0,
        );
        objects.push(serde_json::to_value(assemble)?);
    }
    let mut yaml = String::new();
    for object in objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_saphyr::to_string(&object)?);
    }
    Ok(yaml)
}

fn parse_secret(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("{s:?} is not NAME=DIR")),
    }
}

/// Bytes of a Kubernetes quantity with a binary or decimal suffix (`20Gi`, `500M`).
fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(unit)
}

fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    use stagecoach_operator::controller::{self, Context};
    use stagecoach_operator::leader::{Elector, LEASE_DURATION};
    use stagecoach_operator::metrics::Metrics;
    use stagecoach_operator::render::{OperatorConfig, RunCacheConfig};
    use stagecoach_operator::serve::{self, Health};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let metrics = Arc::new(Metrics::default());
        let health = Health {
            metrics: metrics.clone(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let config = OperatorConfig {
            builder_image: args.builder_image,
            default_workspace_size: args.workspace_size,
            default_storage_class: args.storage_class,
            insecure_registries: args.insecure_registries,
            cache_repository: args.cache_repository,
            run_cache: (!args.run_cache_claim.is_empty()).then(|| RunCacheConfig {
                max_bytes: args
                    .run_cache_max_bytes
                    .or_else(|| quantity_bytes(&args.run_cache_size).map(|b| b / 5 * 4)),
                claim: args.run_cache_claim,
                size: args.run_cache_size,
                storage_class: args.run_cache_storage_class,
                access_mode: args.run_cache_access_mode,
            }),
            build_platform: args.build_platform,
            emulated_platforms: args.emulated_platforms,
        };
        let elector = args.leader_election.then(|| Elector {
            api: kube::Api::namespaced(client.clone(), &args.lease_namespace),
            lease: args.lease_name,
            identity: identity(),
            duration: LEASE_DURATION,
        });
        let ctx = Arc::new(Context::new(client, config, metrics));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down");
            let _ = stop.send(true);
        });
        let server = tokio::spawn(serve::serve(args.listen, health.clone()));
        // Ready once the controller starts, leading or waiting for the Lease.
        health
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let result = controller::run(
            ctx,
            args.namespace,
            args.concurrency,
            elector,
            &AtomicBool::new(false),
            shutdown,
        )
        .await;
        server.abort();
        Ok(result?)
    })
}

/// Who holds the lease: the pod's name (downward API), else host and process.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

/// `os/arch[/variant]`, normalised as the planner reads it.
fn parse_platform(text: &str) -> Result<String, String> {
    text.parse::<stagecoach_plan::Platform>()
        .map(|p| p.to_string())
}

/// A platform, or `all`.
fn parse_emulated(text: &str) -> Result<String, String> {
    match text {
        "all" => Ok(text.to_string()),
        _ => parse_platform(text),
    }
}
