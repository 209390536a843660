//! What `stagecoach local build` and `stagecoach build` print, locally or following a
//! cluster: the build's progress (a table redrawn in place on a terminal, one line per
//! change otherwise) and, when asked, every pod's output with its stage as prefix.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::api::{Failure, ImageBuildStatus, Phase, StagePhase};

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
pub struct Progress {
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
    pub fn new(style: ProgressStyle, stream: ProgressStream, logs: bool) -> Progress {
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
    pub fn show(
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

    /// The output of a pod's stream so far (`key` names it; the text only ever grows at
    /// its end): the complete lines that are new since the last call, with `label` as
    /// prefix. A line still being written waits for its end.
    pub fn log_since(&mut self, key: &str, label: &str, text: &str) {
        let seen = self.log_offsets.get(key).copied().unwrap_or(0);
        let Some(new) = text.get(seen..) else {
            return;
        };
        let Some(end) = new.rfind('\n') else {
            return;
        };
        let mut out = self.out();
        for line in new[..end].lines() {
            let _ = writeln!(out, "{label} | {line}");
        }
        self.log_offsets.insert(key.to_string(), seen + end + 1);
    }

    /// One line of a pod's output, as it comes.
    pub fn log_line(&mut self, label: &str, line: &str) {
        let _ = writeln!(self.out(), "{label} | {line}");
    }
}

/// Tells people why a build failed, on stderr: the failed pod's last log lines, then the
/// reason and message (`Dockerfile:N: ...`).
pub fn print_failure(failure: Option<&Failure>) {
    let Some(failure) = failure else {
        eprintln!("build failed: Unknown: the build failed");
        return;
    };
    if !failure.log_tail.is_empty() {
        let pod = failure.pod.as_deref().unwrap_or("the failed pod");
        eprintln!("last lines of {pod}'s log:");
        for line in &failure.log_tail {
            eprintln!("  {line}");
        }
    }
    eprintln!("build failed: {}: {}", failure.reason, failure.message);
}
