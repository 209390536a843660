//! `stagecoach build`: the flags of `docker build` and `buildx build` over the local
//! runner. The flags become the ImageBuild a manifest would hold: a git URL becomes
//! `spec.source.git`, a directory is packed into a context artifact, pushed beside the
//! image and named as `spec.source.oci`. From there on it is `stagecoach local build`:
//! the same core, pods and push.
//!
//! With `--cluster` the same ImageBuild is created in a cluster instead ([`cluster`]).
//!
//! Exit codes: 0 built and pushed, 1 the build failed, 2 a usage or environment error.

pub mod cluster;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use k8s_openapi::api::core::v1::LocalObjectReference;
use stagecoach_builder::error::chain;
use stagecoach_builder::oci;
use stagecoach_builder::source::artifact;

use crate::api::{
    BuildArg, BuildSecret, BuildSsh, GitSource, ImageBuild, ImageBuildSpec, ImageBuildStatus,
    OciSource, Output, Phase, SecretKeyRef, Source,
};
use crate::local::{self, LocalOptions, ProgressStream, ProgressStyle};
use crate::progress::Progress;

/// Built and pushed.
pub const EXIT_BUILT: u8 = 0;
/// The build ran and failed (the reason and place are printed).
pub const EXIT_FAILED: u8 = 1;
/// Bad flags, a missing context, no podman, no registry: nothing was built.
pub const EXIT_USAGE: u8 = 2;

/// The most a Dockerfile sent inline may be (the source pod's own limit).
const DOCKERFILE_BYTES: usize = stagecoach_plan::limits::DOCKERFILE_BYTES;

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The context: a directory (default `.`; it needs no git) or a git URL, with
    /// Docker's `URL#REF:SUBDIR` to pick a revision and a directory in it.
    #[arg(default_value = ".", value_name = "PATH | GIT-URL")]
    pub context: String,
    /// The Dockerfile (default: `Dockerfile` in the context); `-` reads it from stdin.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,
    /// The image to push, `REGISTRY/NAME[:TAG]` (repeatable: the others are more tags of
    /// the same image).
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG", required = true)]
    pub tags: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// `KEY=VALUE`, or `KEY` to take the value from the environment (repeatable).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// The platforms to build for, `os/arch[/variant]`, separated by commas (default
    /// linux/amd64); several make an image index. Foreign platforms' RUN steps run
    /// under emulation (qemu-user-static).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// A label of the image (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Run every stage: take nothing from the stage cache and store nothing in it.
    #[arg(long)]
    pub no_cache: bool,
    /// A build secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`
    /// (repeatable); only the stage pods whose RUN steps mount it get it.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    pub secrets: Vec<String>,
    /// An ssh key for `RUN --mount=type=ssh`: `ID=KEYFILE`, an unencrypted OpenSSH private
    /// key served by an agent beside the stage pods that mount the id (repeatable).
    #[arg(long = "ssh", value_name = "ID=KEYFILE")]
    pub ssh: Vec<String>,
    /// `auto` (a live table on a terminal, lines otherwise), `tty`, or `plain` (one line
    /// per change and every pod's output, prefixed with its stage).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tty", "plain"])]
    pub progress: String,
    /// Writes the result as JSON with buildx's keys (`containerimage.digest`,
    /// `containerimage.config.digest`, `containerimage.descriptor`, `image.name`).
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Writes the image id (the config's digest), as `docker build --iidfile` does.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Prints only the pushed image's digest reference.
    #[arg(short, long)]
    pub quiet: bool,
    /// The repository a directory context is pushed to, under the tag
    /// `context-<digest prefix>` (default: the image's own repository).
    #[arg(long, value_name = "REPOSITORY")]
    pub context_push: Option<String>,
    /// The time file and history times are clamped to. Default: the newest file of a
    /// directory context; a repository's commit time.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// The builder image the pods use.
    #[arg(
        long,
        env = "STAGECOACH_BUILDER_IMAGE",
        default_value = "127.0.0.1:5000/stagecoach/builder:dev"
    )]
    pub builder_image: String,
    /// A registry (`host:port`) reached over plain HTTP (repeatable); the local registry
    /// of `make demo` by default.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "STAGECOACH_INSECURE_REGISTRIES",
        value_delimiter = ',',
        default_value = "127.0.0.1:5000"
    )]
    pub insecure_registries: Vec<String>,
    /// Leave the pods and the workspace volume for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Build on the cluster of the kubeconfig's current context instead of podman: the
    /// ImageBuild is created there under a generated name and followed to its end.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, requires = "cluster")]
    pub namespace: Option<String>,
    /// With --cluster: a `kubernetes.io/dockerconfigjson` Secret of the namespace that
    /// the assemble pod pushes with.
    #[arg(long, value_name = "SECRET", requires = "cluster")]
    pub push_secret: Option<String>,
    /// With --cluster: a Secret of the namespace to pull base images and the context
    /// artifact with.
    #[arg(long, value_name = "SECRET", requires = "cluster")]
    pub pull_secret: Option<String>,
}

/// A failure before the build could start, printed as one line.
#[derive(Debug)]
struct Usage(String);

/// Runs a build from its flags and returns the exit code.
pub fn run(args: &BuildArgs, stdin: &mut dyn Read, stdout: &mut dyn Write) -> u8 {
    let started = Instant::now();
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("error: cannot make a temporary directory: {e}");
            return EXIT_USAGE;
        }
    };
    let Ended {
        status,
        stage_layers,
        opts,
    } = match build_and_follow(args, stdin, scratch.path()) {
        Ok(ended) => ended,
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            return EXIT_USAGE;
        }
    };
    if status.phase != Some(Phase::Succeeded) {
        crate::progress::print_failure(status.failure.as_ref());
        return EXIT_FAILED;
    }
    let Some(image) = status.image.clone() else {
        eprintln!("error: the build succeeded but reports no image");
        return EXIT_FAILED;
    };
    let pushed = format!("{}@{}", image.reference, image.digest);
    // The pushed manifest as this machine reads it back (a cluster's registry may not
    // let it): needed for --metadata-file and --iidfile, else only for the summary.
    let described = Manifests::new(&opts.insecure_registries)
        .and_then(|manifests| Ok((manifests.describe(&pushed)?, manifests)));
    let wants_files = args.metadata_file.is_some() || args.iidfile.is_some();
    let written = match &described {
        Ok((descriptor, _)) => write_results(args, &image.digest, descriptor),
        Err(message) => Err(format!("cannot read {pushed} back: {message}")),
    };
    if let (true, Err(message)) = (wants_files, &written) {
        eprintln!("error: {message}");
        let _ = writeln!(stdout, "{pushed}");
        return EXIT_FAILED;
    }
    if let (false, Ok((descriptor, manifests))) = (args.quiet, &described) {
        let pods = status.stages.iter().filter(|s| !s.cached).count();
        let cached = status.stages.len() - pods;
        eprintln!(
            "pushed {pushed}\n  {}\n  {pods} stage pod(s) ran, {cached} stage(s) from the cache, {:.1}s in all",
            match status.image.iter().flat_map(|i| &i.platforms).count() {
                0 => sizes(manifests, descriptor, &status, &stage_layers),
                _ => platform_sizes(manifests, &image),
            },
            started.elapsed().as_secs_f64()
        );
    }
    let _ = writeln!(stdout, "{pushed}");
    EXIT_BUILT
}

/// A build that ran to its end.
struct Ended {
    status: ImageBuildStatus,
    /// The layers each stage made, known locally only ([`local::LocalResult`]).
    stage_layers: BTreeMap<String, Vec<(String, u64)>>,
    opts: LocalOptions,
}

/// Runs the build locally or in the cluster; a usage or environment error before or
/// around it.
fn build_and_follow(
    args: &BuildArgs,
    stdin: &mut dyn Read,
    scratch: &Path,
) -> Result<Ended, Usage> {
    // The cluster is found before anything is pushed for it.
    let cluster = args.cluster.then(kube_config).transpose()?;
    let (build, opts) = prepare(args, stdin, scratch)?;
    match cluster {
        Some(config) => Ok(Ended {
            status: in_cluster(args, config, &build, &opts)?,
            stage_layers: BTreeMap::new(),
            opts,
        }),
        // podman failing under the build: the environment's fault, not the build's.
        None => match local::run(build, &opts) {
            Ok(result) => Ok(Ended {
                status: result.status,
                stage_layers: result.stage_layers,
                opts,
            }),
            Err(e) => Err(Usage(chain(&e))),
        },
    }
}

/// The flags as an ImageBuild and runner options; a directory context is pushed here.
fn prepare(
    args: &BuildArgs,
    stdin: &mut dyn Read,
    scratch: &Path,
) -> Result<(ImageBuild, LocalOptions), Usage> {
    let platforms: Vec<String> = args
        .platform
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<stagecoach_plan::Platform>()
                .map(|p| p.to_string())
                .map_err(|e| Usage(format!("--platform: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if let Some((_, twice)) = platforms
        .iter()
        .enumerate()
        .find(|(i, p)| platforms[..*i].contains(p))
    {
        return Err(Usage(format!("--platform: {twice} is named twice")));
    }
    if platforms.len() > stagecoach_plan::limits::PLATFORMS {
        return Err(Usage(format!(
            "--platform: at most {} platforms, as spec.platforms",
            stagecoach_plan::limits::PLATFORMS
        )));
    }
    if !args.cluster {
        podman_present()?;
    } else if !args.secrets.is_empty() || !args.ssh.is_empty() {
        return Err(Usage(
            "--secret and --ssh read local files, which a cluster cannot: with --cluster, create the Secrets and name them in an ImageBuild manifest (spec.secrets, spec.ssh)".into(),
        ));
    }
    let (image, tags) = tags(&args.tags)?;
    let mut secrets = BTreeMap::new();
    let auth = registry_auth_file();
    let named = |secret: &Option<String>| secret.clone().map(|name| LocalObjectReference { name });
    // A cluster gets no credentials from this machine, only the Secrets it names.
    let (push_secret, pull_secret) = if args.cluster {
        (named(&args.push_secret), named(&args.pull_secret))
    } else {
        let secret = local_auth_secret(auth.as_ref(), scratch, &mut secrets)?;
        (secret.clone(), secret)
    };
    let stdin_dockerfile = match args.file.as_deref() {
        Some("-") => Some(read_dockerfile(stdin, "-f -")?),
        _ => None,
    };
    // Secrets first: a bad one must stop the build before the context is pushed.
    let mut build_secrets = Vec::new();
    for (n, flag) in args.secrets.iter().enumerate() {
        let (id, file) = secret_flag(flag, scratch, n)?;
        let name = format!("stagecoach-build-secret-{n}");
        secrets.insert(
            name.clone(),
            secret_dir(scratch, &name, &[("value", &file)])?,
        );
        build_secrets.push(BuildSecret {
            id,
            secret_ref: SecretKeyRef {
                name,
                key: "value".into(),
            },
        });
    }
    let mut ssh = Vec::new();
    for (n, flag) in args.ssh.iter().enumerate() {
        let Some((id, key)) = flag
            .split_once('=')
            .filter(|(id, key)| !id.is_empty() && !key.is_empty())
        else {
            return Err(Usage(format!(
                "--ssh {flag}: give ID=KEYFILE (an agent's socket cannot reach the pods; the key is served by an agent beside them)"
            )));
        };
        let name = format!("stagecoach-build-ssh-{n}");
        let dir = secret_dir(scratch, &name, &[("ssh-privatekey", Path::new(key))])?;
        secrets.insert(name.clone(), dir);
        ssh.push(BuildSsh {
            id: id.into(),
            secret_ref: LocalObjectReference { name },
        });
    }
    let mut spec_dockerfile = None;
    let mut dockerfile_inline = stdin_dockerfile;
    let source = match git_context(&args.context) {
        Some((url, revision, subdir)) => {
            if let Some(path) = args.file.as_deref().filter(|f| *f != "-") {
                // In a repository, -f names a path inside the context, as in buildx.
                spec_dockerfile = Some(path.to_string());
            }
            Source {
                git: Some(GitSource {
                    url,
                    revision,
                    secret_ref: None,
                }),
                oci: None,
                context_dir: subdir,
            }
        }
        None => {
            let dir = Path::new(&args.context);
            if !dir.is_dir() {
                return Err(Usage(format!(
                    "the context {:?} is neither a directory nor a git URL",
                    args.context
                )));
            }
            if let Some(path) = args.file.as_deref().filter(|f| *f != "-") {
                match inside(dir, Path::new(path)) {
                    Some(relative) => spec_dockerfile = Some(relative),
                    None => {
                        let file = std::fs::File::open(path)
                            .map_err(|e| Usage(format!("-f {path}: {e}")))?;
                        dockerfile_inline = Some(read_dockerfile(file, &format!("-f {path}"))?);
                    }
                }
            }
            let repository = args
                .context_push
                .clone()
                .unwrap_or_else(|| crate::render::repository_of(&image).to_string());
            let reference = push_context(
                dir,
                spec_dockerfile
                    .as_deref()
                    .or(if dockerfile_inline.is_some() {
                        None
                    } else {
                        Some("Dockerfile")
                    }),
                args,
                &repository,
                auth.as_deref(),
                scratch,
            )?;
            Source {
                git: None,
                oci: Some(OciSource {
                    image: reference,
                    pull_secret_ref: pull_secret.clone(),
                }),
                context_dir: None,
            }
        }
    };
    let mut build_args = Vec::new();
    for arg in &args.build_args {
        if arg.is_empty() || arg.starts_with('=') {
            return Err(Usage(format!(
                "--build-arg {arg:?}: a name first (KEY=VALUE)"
            )));
        }
        match arg.split_once('=') {
            Some((name, value)) => build_args.push(BuildArg {
                name: name.into(),
                value: value.into(),
            }),
            // As Docker: a bare name takes the environment's value, or is left out.
            None => {
                if let Ok(value) = std::env::var(arg) {
                    build_args.push(BuildArg {
                        name: arg.clone(),
                        value,
                    });
                }
            }
        }
    }
    let insecure = args
        .insecure_registries
        .iter()
        .any(|r| *r == crate::render::registry_host(&image));
    let stem = name_stem(&image);
    let mut build = ImageBuild::new(
        &format!("{stem}-{}", std::process::id()),
        ImageBuildSpec {
            source,
            dockerfile: spec_dockerfile,
            dockerfile_inline,
            target: args.target.clone(),
            build_args,
            secrets: build_secrets,
            ssh,
            platforms,
            output: Output {
                image,
                tags,
                push_secret_ref: push_secret,
                insecure_registry: insecure,
                labels: args.labels.iter().cloned().collect(),
                annotations: BTreeMap::new(),
                compression: None,
            },
            workspace: None,
            resources: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            service_account_name: None,
            image_pull_secrets: pull_secret.map(|s| vec![s]),
            timeout: None,
            retries: None,
            retention: None,
            cache: None,
            run_cache: None,
            cancel: false,
        },
    );
    if args.cluster {
        // The API server names it, fills in the rest and counts generations.
        build.metadata.name = None;
        build.metadata.generate_name = Some(format!("{stem}-"));
    } else {
        build.metadata.namespace = Some("default".into());
        build.metadata.generation = Some(1);
        build.metadata.uid = Some(format!("local-{}", std::process::id()));
    }
    if args.no_cache {
        build.spec.cache = Some(crate::api::CacheSpec {
            mode: Some(crate::api::CacheMode::Disabled),
            repository: None,
        });
    }
    let opts = LocalOptions {
        builder_image: args.builder_image.clone(),
        keep: args.keep,
        logs: args.progress == "plain" && !args.quiet,
        progress: match (args.quiet, args.progress.as_str()) {
            (true, _) => ProgressStyle::Quiet,
            (false, "tty") => ProgressStyle::Tty,
            (false, "plain") => ProgressStyle::Plain,
            _ => ProgressStyle::Auto,
        },
        progress_stream: ProgressStream::Stderr,
        insecure_registries: args.insecure_registries.clone(),
        secrets,
        containers_conf: std::env::var_os("CONTAINERS_CONF").map(PathBuf::from),
        registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(PathBuf::from),
        cache_repository: None,
        run_cache_volume: Some("stagecoach-run-cache".into()),
        no_cache: args.no_cache,
    };
    Ok((build, opts))
}

/// The image (the first `-t`) and the tags of the others, which must name its repository.
fn tags(flags: &[String]) -> Result<(String, Vec<String>), Usage> {
    let parse = |flag: &String| {
        let reference =
            oci::parse_reference(flag).map_err(|e| Usage(format!("-t {flag}: {}", chain(&e))))?;
        if reference.digest().is_some() {
            return Err(Usage(format!("-t {flag}: a tag, not a digest")));
        }
        Ok(reference)
    };
    let first = parse(&flags[0])?;
    let mut tags = Vec::new();
    for flag in &flags[1..] {
        let reference = parse(flag)?;
        if (reference.resolve_registry(), reference.repository())
            != (first.resolve_registry(), first.repository())
        {
            return Err(Usage(format!(
                "-t {flag}: every tag must name the repository of the first, {}",
                crate::render::repository_of(&flags[0])
            )));
        }
        tags.push(reference.tag().unwrap_or("latest").to_string());
    }
    Ok((flags[0].clone(), tags))
}

/// The local registry credentials as the Secret the pods push and pull with.
fn local_auth_secret(
    auth: Option<&PathBuf>,
    scratch: &Path,
    secrets: &mut BTreeMap<String, PathBuf>,
) -> Result<Option<LocalObjectReference>, Usage> {
    let Some(file) = auth else {
        return Ok(None);
    };
    let name = "stagecoach-registry-auth";
    let dir = secret_dir(scratch, name, &[(".dockerconfigjson", file)])?;
    secrets.insert(name.to_string(), dir);
    Ok(Some(LocalObjectReference { name: name.into() }))
}

/// A Dockerfile sent inline (from stdin, or from outside the context), bounded.
fn read_dockerfile(reader: impl Read, flag: &str) -> Result<String, Usage> {
    stagecoach_builder::fs::read_text_bounded(reader, DOCKERFILE_BYTES)
        .map_err(|e| Usage(format!("{flag}: the Dockerfile: {e}")))
}

/// Whether `context` is a git URL (as `docker build` tells them apart), and its URL,
/// revision and subdirectory from Docker's `URL#REF:SUBDIR`.
fn git_context(context: &str) -> Option<(String, Option<String>, Option<String>)> {
    let (url, fragment) = context.split_once('#').unwrap_or((context, ""));
    let is_git = ["https://", "http://", "git://", "ssh://", "git@", "file://"]
        .iter()
        .any(|p| url.starts_with(p))
        && (url.ends_with(".git")
            || !fragment.is_empty()
            || url.starts_with("git@")
            || url.starts_with("git://")
            || url.starts_with("ssh://")
            || url.starts_with("file://"))
        || url.starts_with("github.com/");
    if !is_git {
        return None;
    }
    let url = match url.strip_prefix("github.com/") {
        Some(rest) => format!("https://github.com/{rest}"),
        None => url.to_string(),
    };
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let some = |s: &str| (!s.is_empty()).then(|| s.trim_matches('/').to_string());
    Some((url, some(reference), some(subdir)))
}

/// `path` (as given, relative to the working directory) relative to the context
/// directory, when it is inside it.
fn inside(context: &Path, path: &Path) -> Option<String> {
    let context = context.canonicalize().ok()?;
    let path = path.canonicalize().ok()?;
    let relative = path.strip_prefix(&context).ok()?;
    Some(relative.to_str()?.to_string())
}

/// Packs the directory and pushes it; returns the artifact's reference by digest.
fn push_context(
    dir: &Path,
    dockerfile: Option<&str>,
    args: &BuildArgs,
    repository: &str,
    auth: Option<&Path>,
    scratch: &Path,
) -> Result<String, Usage> {
    let packed = artifact::pack(
        dir,
        dockerfile,
        args.source_date_epoch,
        &scratch.join("context.tar.gz"),
    )
    .map_err(|e| Usage(format!("the context {}: {}", dir.display(), chain(&e))))?;
    if !args.quiet {
        eprintln!(
            "context {}: {} entries, {} ignored, {} bytes ({} packed)",
            dir.display(),
            packed.entries,
            packed.ignored,
            packed.content_bytes,
            packed.layer_size
        );
    }
    let settings = oci::Settings {
        auth_file: auth.map(Path::to_path_buf),
        insecure: args.insecure_registries.clone(),
        ..oci::Settings::default()
    };
    let runtime = oci::runtime().map_err(|e| Usage(chain(&e)))?;
    runtime
        .block_on(async {
            let registry = oci::Registry::new(&settings)?;
            Ok::<_, oci::Error>(artifact::push(&registry, repository, &packed).await)
        })
        .map_err(|e| Usage(chain(&e)))?
        .map_err(|e| {
            let host = crate::render::registry_host(repository);
            match &e {
                artifact::Error::Registry { source, .. }
                    if matches!(**source, oci::Error::Unavailable { .. }) =>
                {
                    Usage(format!(
                        "no registry answers at {host}: start the project's local one with `./scripts/registry.sh start`, or name another with -t REGISTRY/NAME:TAG"
                    ))
                }
                _ => Usage(format!("cannot push the context: {}", chain(&e))),
            }
        })
}

fn podman_present() -> Result<(), Usage> {
    match std::process::Command::new("podman")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(Usage(
            "podman is not installed or does not run: `./scripts/install-deps.sh` installs it"
                .into(),
        )),
    }
}

/// The registry credentials a person already has: podman's, then Docker's.
fn registry_auth_file() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    [
        env("REGISTRY_AUTH_FILE"),
        env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")),
        env("HOME").map(|d| d.join(".config/containers/auth.json")),
        env("DOCKER_CONFIG").map(|d| d.join("config.json")),
        env("HOME").map(|d| d.join(".docker/config.json")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// A Secret as the local runner reads one: a directory with one file per key.
fn secret_dir(scratch: &Path, name: &str, keys: &[(&str, &Path)]) -> Result<PathBuf, Usage> {
    let dir = scratch.join("secrets").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Usage(format!("{}: {e}", dir.display())))?;
    for (key, file) in keys {
        std::fs::copy(file, dir.join(key))
            .map_err(|e| Usage(format!("cannot read {}: {e}", file.display())))?;
    }
    Ok(dir)
}

/// A `--secret` flag's id and the file that holds the value (an environment value is
/// written to one in `scratch`). As buildx: `src=` a file, `env=` a variable, and with
/// neither the variable named like the id if it is set, else the file of that name.
fn secret_flag(flag: &str, scratch: &Path, n: usize) -> Result<(String, PathBuf), Usage> {
    let bad = |why: &str| {
        Usage(format!(
            "--secret {flag}: {why} (id=ID,src=FILE or id=ID,env=VAR)"
        ))
    };
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for field in flag.split(',') {
        match field.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", "file" | "env")) => {}
            _ => return Err(bad(&format!("unknown field {field:?}"))),
        }
    }
    let id = id.ok_or_else(|| bad("give id="))?;
    let from_env = |var: &str| -> Result<PathBuf, Usage> {
        let value = std::env::var(var).map_err(|_| bad(&format!("${var} is not set")))?;
        let file = scratch.join(format!("secret-env-{n}"));
        std::fs::write(&file, value).map_err(|e| bad(&e.to_string()))?;
        Ok(file)
    };
    let file = match (src, env) {
        (Some(src), None) => src,
        (None, Some(var)) => from_env(&var)?,
        (None, None) if std::env::var_os(&id).is_some() => from_env(&id)?,
        (None, None) => PathBuf::from(&id),
        (Some(_), Some(_)) => return Err(bad("src= and env= both")),
    };
    Ok((id, file))
}

/// The start of the build's name, from the image's: a DNS label part.
fn name_stem(image: &str) -> String {
    let repository = crate::render::repository_of(image);
    let last = repository.rsplit('/').next().unwrap_or("build");
    let stem: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    let stem = stem.trim_matches('-');
    if stem.is_empty() {
        "build".into()
    } else {
        stem.to_string()
    }
}

/// Creates the build in the kubeconfig's cluster and follows it; its last status.
fn in_cluster(
    args: &BuildArgs,
    config: kube::Config,
    build: &ImageBuild,
    opts: &LocalOptions,
) -> Result<ImageBuildStatus, Usage> {
    runtime()?.block_on(async {
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| Usage(format!("--cluster: {}", chain(&e))))?;
        let mut progress = Progress::new(opts.progress, opts.progress_stream, opts.logs);
        let mut name = String::new();
        let mut report = |update: cluster::Update| match update {
            cluster::Update::Created(created) => {
                if !args.quiet {
                    eprintln!("imagebuild {namespace}/{created} created");
                }
                name = created;
            }
            cluster::Update::Status(status) => {
                let (timings, started) = cluster_timings(&status);
                progress.show(&name, &status, &timings, started);
            }
            cluster::Update::Log { stage, line } => progress.log_line(&stage, &line),
            cluster::Update::Canceling => eprintln!(
                "canceling {namespace}/{name}: it is asked to stop (Ctrl-C again leaves it running)"
            ),
        };
        let interrupts = futures::stream::unfold((), |()| async {
            tokio::signal::ctrl_c().await.ok().map(|()| ((), ()))
        });
        cluster::follow(
            client,
            &namespace,
            build,
            opts.logs,
            interrupts,
            &mut report,
        )
        .await
        .map_err(|e| Usage(chain(&e)))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Usage> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Usage(format!("cannot start a runtime: {e}")))
}

/// The kubeconfig's cluster (or the pod's own, inside one).
fn kube_config() -> Result<kube::Config, Usage> {
    runtime()?.block_on(kube::Config::infer()).map_err(|e| {
        Usage(format!(
            "--cluster: no cluster to build on ({}); set KUBECONFIG or the current context",
            chain(&e)
        ))
    })
}

/// Each stage pod's start and end since the build started, from the status, and the
/// build's start as an instant of this process, for [`Progress::show`].
fn cluster_timings(
    status: &ImageBuildStatus,
) -> (
    BTreeMap<String, (std::time::Duration, Option<std::time::Duration>)>,
    Instant,
) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let since = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, from| {
        std::time::Duration::try_from(t.0.duration_since(from)).unwrap_or_default()
    };
    let begun = status.start_time.as_ref().map_or(now, |t| t.0);
    let started = Instant::now()
        .checked_sub(std::time::Duration::try_from(now.duration_since(begun)).unwrap_or_default())
        .unwrap_or_else(Instant::now);
    let timings = status
        .stages
        .iter()
        .filter_map(|stage| {
            let pod = stage.pod.clone()?;
            let start = since(stage.start_time.as_ref()?, begun);
            let end = stage.finish_time.as_ref().map(|t| since(t, begun));
            Some((pod, (start, end)))
        })
        .collect();
    (timings, started)
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Manifests of the registry, read with this machine's credentials.
struct Manifests {
    runtime: tokio::runtime::Runtime,
    registry: oci::Registry,
}

impl Manifests {
    fn new(insecure: &[String]) -> Result<Manifests, String> {
        let settings = oci::Settings {
            auth_file: registry_auth_file(),
            insecure: insecure.to_vec(),
            ..oci::Settings::default()
        };
        let runtime = oci::runtime().map_err(|e| chain(&e))?;
        let registry = runtime
            .block_on(async { oci::Registry::new(&settings) })
            .map_err(|e| chain(&e))?;
        Ok(Manifests { runtime, registry })
    }

    /// An image's manifest descriptor (`mediaType`, `digest`, `size`), its config's
    /// digest (`config`), the compressed size of its layers (`layers`) and their digests
    /// (`layerDigests`).
    fn describe(&self, reference: &str) -> Result<serde_json::Value, String> {
        self.runtime.block_on(async {
            let parsed = oci::parse_reference(reference).map_err(|e| chain(&e))?;
            let (bytes, digest) = self
                .registry
                .artifact(&parsed)
                .await
                .map_err(|e| chain(&e))?
                .ok_or_else(|| format!("{reference} is not in the registry"))?;
            let manifest: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("{reference}: {e}"))?;
            let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
            let size: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
            let digests: Vec<serde_json::Value> =
                layers.iter().map(|l| l["digest"].clone()).collect();
            Ok(serde_json::json!({
                "mediaType": manifest["mediaType"],
                "digest": digest,
                "size": bytes.len(),
                "config": manifest["config"]["digest"],
                "layers": size,
                "layerDigests": digests,
            }))
        })
    }
}

/// Each platform's runtime image size, for an image index.
fn platform_sizes(manifests: &Manifests, image: &crate::api::ImageStatus) -> String {
    let each: Vec<String> = image
        .platforms
        .iter()
        .map(|p| {
            let reference = format!("{}@{}", image.reference, p.digest);
            match manifests.describe(&reference) {
                Ok(d) => format!(
                    "{} {:.1} MB",
                    p.platform,
                    d["layers"].as_u64().unwrap_or(0) as f64 / 1e6
                ),
                Err(_) => format!("{} (size unknown)", p.platform),
            }
        })
        .collect();
    format!(
        "an index of {} runtime images: {}",
        each.len(),
        each.join(", ")
    )
}

/// What multi-stage saved: the runtime image's compressed size beside the largest stage
/// left behind (one whose layers the image does not ship: its base image and the layers
/// it made), when this run made its layers.
fn sizes(
    manifests: &Manifests,
    runtime: &serde_json::Value,
    status: &ImageBuildStatus,
    stage_layers: &BTreeMap<String, Vec<(String, u64)>>,
) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let shipped: Vec<&str> = runtime["layerDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .collect();
    let largest = status
        .stages
        .iter()
        .filter_map(|stage| {
            let made = stage_layers.get(&stage.name)?;
            if made
                .iter()
                .all(|(digest, _)| shipped.contains(&digest.as_str()))
            {
                return None;
            }
            let base = match &stage.image {
                Some(image) => manifests.describe(image).ok()?["layers"].as_u64()?,
                None => 0,
            };
            let made: u64 = made.iter().map(|(_, size)| size).sum();
            Some((base + made, stage.name.as_str()))
        })
        .max();
    let runtime = mb(runtime["layers"].as_u64().unwrap_or(0));
    match largest {
        Some((bytes, name)) => format!(
            "runtime image {runtime:.1} MB; the largest stage left behind ({name}) {:.1} MB",
            mb(bytes)
        ),
        None => format!("runtime image {runtime:.1} MB"),
    }
}

/// `--metadata-file` and `--iidfile`.
fn write_results(
    args: &BuildArgs,
    digest: &str,
    descriptor: &serde_json::Value,
) -> Result<(), String> {
    // An image index has no config: buildx then writes the index's digest as the id.
    let config = descriptor["config"].as_str().unwrap_or(digest).to_string();
    if let Some(path) = &args.metadata_file {
        let mut metadata = serde_json::json!({
            "containerimage.digest": digest,
            "containerimage.descriptor": {
                "mediaType": descriptor["mediaType"],
                "digest": descriptor["digest"],
                "size": descriptor["size"],
            },
            "image.name": args.tags.join(","),
        });
        if let Some(config) = descriptor["config"].as_str() {
            metadata["containerimage.config.digest"] = config.into();
        }
        let text = serde_json::to_string_pretty(&metadata).expect("JSON serialises");
        std::fs::write(path, text)
            .map_err(|e| format!("--metadata-file {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &config).map_err(|e| format!("--iidfile {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_are_told_from_directories_with_dockers_fragment() {
        assert_eq!(
            git_context("https://example.com/app.git#v1:svc/api"),
            Some((
                "https://example.com/app.git".into(),
                Some("v1".into()),
                Some("svc/api".into())
            ))
        );
        assert_eq!(
            git_context("git@example.com:team/app#main"),
            Some(("git@example.com:team/app".into(), Some("main".into()), None))
        );
        assert_eq!(
            git_context("github.com/team/app#:docs"),
            Some((
                "https://github.com/team/app".into(),
                None,
                Some("docs".into())
            ))
        );
        assert_eq!(git_context("."), None);
        assert_eq!(
            git_context("./app.git"),
            None,
            "a local path, even named .git"
        );
        assert_eq!(
            git_context("https://example.com/tarball.tar.gz"),
            None,
            "an https URL that is no repository"
        );
    }

    #[test]
    fn secret_flags_read_as_buildx_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, file) = secret_flag("id=npm,src=/run/npmrc", dir.path(), 0).expect("ok");
        assert_eq!(
            (id.as_str(), file.as_path()),
            ("npm", Path::new("/run/npmrc"))
        );
        let home = std::env::var("HOME").expect("HOME is set");
        let (id, file) = secret_flag("id=tok,env=HOME", dir.path(), 2).expect("ok");
        assert_eq!(id, "tok");
        assert_eq!(std::fs::read_to_string(file).expect("file"), home);
        // The id alone: the variable of that name, else the file of that name.
        let (_, file) = secret_flag("id=HOME", dir.path(), 3).expect("ok");
        assert_eq!(std::fs::read_to_string(file).expect("file"), home);
        let (_, file) = secret_flag("id=STAGECOACH_NO_SUCH_VAR", dir.path(), 4).expect("ok");
        assert_eq!(file, Path::new("STAGECOACH_NO_SUCH_VAR"));
        for bad in [
            "src=a",
            "id=x,src=a,env=B",
            "id=x,mode=0400,src=a",
            "id=x,env=STAGECOACH_UNSET_VAR",
            "id=,src=a",
        ] {
            assert!(secret_flag(bad, dir.path(), 5).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_name_one_repository_and_no_digest() {
        let (image, more) = tags(&[
            "127.0.0.1:5000/app".into(),
            "127.0.0.1:5000/app:1".into(),
            "127.0.0.1:5000/app:latest".into(),
        ])
        .expect("tags");
        assert_eq!(image, "127.0.0.1:5000/app");
        assert_eq!(more, ["1", "latest"]);
        for bad in [
            vec![
                "reg.example/app:1".to_string(),
                "reg.example/other:1".into(),
            ],
            vec![format!("reg.example/app@sha256:{}", "a".repeat(64))],
            vec!["Not A Reference".into()],
        ] {
            assert!(tags(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_names_are_dns_labels_from_the_image() {
        assert_eq!(name_stem("127.0.0.1:5000/Team/My_App:1"), "my-app");
        assert_eq!(name_stem("registry.example/__:1"), "build");
    }
}
