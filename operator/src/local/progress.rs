//! What the local runner prints: the build's progress (a table redrawn in place on a
//! terminal, one line per change otherwise) and, with `--logs`, every pod's output.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::podman::Podman;
use crate::api::{ImageBuildStatus, Phase, StagePhase};
use crate::render::Role;

/// How the build's progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressStyle {
    /// A live table on a terminal, one line per change otherwise.
    #[default]
    Auto,
    /// A live table.
    Tty,
    /// One line per change.
    Plain,
    /// Nothing.
    Quiet,
}

/// Where progress goes: `stagecoach build` keeps stdout for the image reference, as
/// `docker build` does; `stagecoach local build` prints both to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressStream {
    #[default]
    Stdout,
    Stderr,
}

/// What has been printed so far.
#[derive(Debug)]
pub(super) struct Progress {
    /// Progress redrawn in place, and how many lines it took.
    live: bool,
    quiet: bool,
    stream: ProgressStream,
    drawn: usize,
    printed: BTreeMap<String, String>,
    log_offsets: BTreeMap<String, usize>,
}

impl Progress {
    /// With `logs`, an automatic style prints lines: pods' output cannot run through a
    /// table redrawn in place.
    pub(super) fn new(style: ProgressStyle, stream: ProgressStream, logs: bool) -> Progress {
        let terminal = match stream {
            ProgressStream::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            ProgressStream::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        Progress {
            live: match style {
                ProgressStyle::Auto => terminal && !logs,
                ProgressStyle::Tty => true,
                ProgressStyle::Plain | ProgressStyle::Quiet => false,
            },
            quiet: style == ProgressStyle::Quiet,
            stream,
            drawn: 0,
            printed: BTreeMap::new(),
            log_offsets: BTreeMap::new(),
        }
    }

    fn out(&self) -> Box<dyn std::io::Write> {
        match self.stream {
            ProgressStream::Stdout => Box::new(std::io::stdout().lock()),
            ProgressStream::Stderr => Box::new(std::io::stderr().lock()),
        }
    }

    /// The build's progress: on a terminal, a table of the stages redrawn in place with
    /// running times; otherwise (or with `--logs`) one line per change. `timings` holds
    /// each pod's start and end since `started`.
    pub(super) fn show(
        &mut self,
        build: &str,
        status: &ImageBuildStatus,
        timings: &BTreeMap<String, (Duration, Option<Duration>)>,
        started: Instant,
    ) {
        let phase = format!("{:?}", status.phase.unwrap_or(Phase::Pending));
        let mut lines = vec![("build".to_string(), format!("{build} {phase}"))];
        for stage in &status.stages {
            let secs = stage
                .pod
                .as_ref()
                .and_then(|p| timings.get(p))
                .map(|(s, e)| {
                    e.unwrap_or_else(|| started.elapsed())
                        .saturating_sub(*s)
                        .as_secs_f64()
                })
                .unwrap_or(0.0);
            let name = &stage.name;
            let line = match stage.phase {
                StagePhase::Waiting => {
                    format!(
                        "  stage {name:<20} waiting for {}",
                        stage.waits_for.join(", ")
                    )
                }
                StagePhase::Running if self.live => {
                    format!("  stage {name:<20} running {secs:.1}s")
                }
                StagePhase::Running => format!("  stage {name:<20} running"),
                StagePhase::Succeeded if stage.cached => {
                    format!("  stage {name:<20} cached (no pod)")
                }
                StagePhase::Succeeded => format!("  stage {name:<20} done in {secs:.1}s"),
                StagePhase::Failed => format!("  stage {name:<20} FAILED after {secs:.1}s"),
            };
            lines.push((format!("stage/{name}"), line));
        }
        if self.quiet {
            return;
        }
        if self.live {
            self.redraw(lines.into_iter().map(|(_, line)| line).collect());
        } else {
            for (key, line) in lines {
                self.print_once(&key, line);
            }
        }
    }

    /// Moves the cursor up over the table drawn last time and draws it again.
    fn redraw(&mut self, lines: Vec<String>) {
        let mut out = self.out();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for line in &lines {
            let _ = writeln!(out, "\x1b[2K{line}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }

    fn print_once(&mut self, key: &str, line: String) {
        if self.printed.get(key) != Some(&line) {
            let mut out = self.out();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            self.printed.insert(key.to_string(), line);
        }
    }

    /// New output of every pod since the last call, prefixed with the pod's role/stage.
    pub(super) fn stream_logs<'a>(
        &mut self,
        podman: &Podman,
        pods: impl IntoIterator<Item = (&'a str, &'a Role)>,
    ) {
        for (name, role) in pods {
            let container = format!("{name}-{}", role.label());
            let Ok(out) = podman.command().args(["logs", &container]).output() else {
                continue;
            };
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let seen = self.log_offsets.get(name).copied().unwrap_or(0);
            if text.len() > seen {
                let label = match role {
                    Role::Stage(s) => s.clone(),
                    other => other.label().to_string(),
                };
                let mut out = self.out();
                for line in text[seen..].lines() {
                    let _ = writeln!(out, "{label} | {line}");
                }
                self.log_offsets.insert(name.to_string(), text.len());
            }
        }
    }
}
