//! `stagecoach-builder`: the one static binary that runs inside Stagecoach's build pods.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
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
