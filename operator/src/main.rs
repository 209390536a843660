//! `stagecoach`: the operator binary.

use clap::{Parser, Subcommand};

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
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", stagecoach_operator::api::crd_yaml()),
    }
}
