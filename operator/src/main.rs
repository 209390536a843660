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
    /// Runs builds without a cluster: the same pods, on podman.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
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
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", stagecoach_operator::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Local {
            command:
                LocalCommand::Build {
                    manifest,
                    builder_image,
                    keep,
                    logs,
                },
        } => {
            let opts = LocalOptions {
                builder_image,
                keep,
                logs,
                containers_conf: std::env::var_os("CONTAINERS_CONF").map(PathBuf::from),
                registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(PathBuf::from),
            };
            match local::build(&manifest, &opts) {
                Ok(result) if result.status.phase == Some(Phase::Succeeded) => {
                    if let Some(image) = &result.status.image {
                        println!("{}@{}", image.reference, image.digest);
                    }
                    ExitCode::SUCCESS
                }
                Ok(result) => {
                    let failure = result.status.failure.unwrap_or_else(|| {
                        stagecoach_operator::api::Failure {
                            reason: "Unknown".into(),
                            message: "the build failed".into(),
                            stage: None,
                            pod: None,
                            line: None,
                            log_tail: vec![],
                        }
                    });
                    eprintln!("build failed: {}: {}", failure.reason, failure.message);
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
