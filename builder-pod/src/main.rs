//! `stagecoach-builder`: the one static binary that runs inside Stagecoach's build pods.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Debug, clap::Args)]
struct StageArgs {
    /// The id of the stage whose pod this is.
    pod: String,
    #[arg(long, default_value = "/workspace")]
    workspace: PathBuf,
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
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The Dockerfile (`-` for standard input).
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    file: PathBuf,
    /// The stage to build (default: the last one).
    #[arg(long)]
    target: Option<String>,
    /// A build argument, `NAME=value` (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    build_args: Vec<(String, String)>,
    /// The platform of the image, `os/arch[/variant]`.
    #[arg(long, default_value = "linux/amd64")]
    platform: Platform,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => run_plan(args),
        Command::Install { dir } => install(&dir),
        Command::Stage(args) => run_stage(args),
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
    let workspace = Workspace::new(&args.workspace);
    let opts = StageOptions {
        context: workspace
            .source()
            .join(args.context_dir.trim_start_matches('/')),
        workspace,
        pod: args.pod,
        root: args.root,
        tools: args.tools,
        source_date_epoch: args.source_date_epoch,
    };
    let report = stage::run_pod(&opts);
    write_json(&opts.workspace.report(&report.pod), &report)?;
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

fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        ("Dockerfile".to_string(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let options = PlanOptions {
        dockerfile_name: name,
        target: args.target,
        build_args: args.build_args.into_iter().collect::<BTreeMap<_, _>>(),
        platform: args.platform,
    };
    let plan = stagecoach_plan::plan(&text, &options)?;
    match args.format {
        Format::Json => println!("{}", plan.to_json()),
        Format::Text => print!("{}", plan.to_text()),
    }
    Ok(())
}
