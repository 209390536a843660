//! RUN: the command line Docker would run (shell form through SHELL, exec form as is,
//! heredocs as scripts), run as the stage's user in its working directory with its
//! environment, output streamed to the pod log with the step as prefix.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use stagecoach_plan::instruction::{Command, Run};

use crate::fs::users::Ids;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("exit code {0}")]
    Exit(i32),
    #[error("killed by signal {0}")]
    Signal(i32),
    #[error("cannot write the heredoc script {path}")]
    Script {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the command's output")]
    Output(#[source] std::io::Error),
}

/// One process to run for a RUN instruction.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub ids: Ids,
    /// `[build 3/7]`, put before every output line.
    pub prefix: String,
}

/// The argv Docker runs for a RUN: exec form as written; shell form through the shell;
/// a RUN that is only one heredoc runs its body as the script (through its `#!` line if
/// it has one); other heredocs follow the command line as shell here-documents.
pub fn argv(
    run: &Run,
    shell: &[String],
    scripts: &Path,
    step: usize,
) -> Result<Vec<String>, Error> {
    let line = match &run.command {
        Command::Exec(args) => return Ok(args.clone()),
        Command::Shell(line) => line,
    };
    let with_shell = |script: String| -> Vec<String> {
        shell
            .iter()
            .cloned()
            .chain(std::iter::once(script))
            .collect()
    };
    match run.heredocs.as_slice() {
        [] => Ok(with_shell(line.clone())),
        [only] if is_only_heredoc(line, &only.name) => {
            if only.body.starts_with("#!") {
                let path = scripts.join(format!("run-{step}-{}", only.name));
                std::fs::create_dir_all(scripts)
                    .and_then(|()| std::fs::write(&path, &only.body))
                    .and_then(|()| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|source| Error::Script {
                        path: path.clone(),
                        source,
                    })?;
                Ok(vec![path.to_string_lossy().into_owned()])
            } else {
                Ok(with_shell(only.body.clone()))
            }
        }
        docs => {
            let mut script = line.clone();
            for doc in docs {
                script.push('\n');
                script.push_str(&doc.body);
                script.push_str(&doc.name);
            }
            script.push('\n');
            Ok(with_shell(script))
        }
    }
}

/// Whether the shell-form command is nothing but the heredoc marker (`<<EOF`, `<<-"EOF"`).
fn is_only_heredoc(line: &str, name: &str) -> bool {
    let Some(rest) = line.trim().strip_prefix("<<") else {
        return false;
    };
    rest.trim_start_matches('-').trim_matches(['"', '\'']) == name
}

/// The process group of the RUN in progress (0: none), for [`stop_running`].
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// Sends SIGTERM to the RUN in progress and everything it started (its process group),
/// as a pod being deleted asks: the builder is the container's first process, which the
/// kernel gives no default action for SIGTERM, so it passes the signal on itself.
pub fn stop_running() {
    let group = RUNNING_GROUP.load(Ordering::SeqCst);
    if let Some(pid) = rustix::process::Pid::from_raw(group) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    }
}

/// Runs the process to completion, streaming its output prefixed; a non-zero exit or a
/// signal is an error. It leads a process group of its own, which [`stop_running`] stops.
pub fn run(spec: &RunSpec) -> Result<(), Error> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut child = Process::new(&program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .uid(spec.ids.uid)
        .gid(spec.ids.gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn { program, source })?;
    RUNNING_GROUP.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::scope(|threads| -> Result<(), Error> {
        let prefix = spec.prefix.as_str();
        let out = threads.spawn(move || forward(stdout, prefix));
        let err = threads.spawn(move || forward(stderr, prefix));
        out.join().expect("output thread").map_err(Error::Output)?;
        err.join().expect("output thread").map_err(Error::Output)?;
        Ok(())
    })?;
    let status = child.wait();
    RUNNING_GROUP.store(0, Ordering::SeqCst);
    let status = status.map_err(Error::Output)?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(Error::Exit(code)),
        (None, Some(signal)) => Err(Error::Signal(signal)),
        (None, None) => Err(Error::Exit(-1)),
    }
}

/// Copies lines from a child's pipe to our stdout with the step prefix.
fn forward(pipe: impl std::io::Read, prefix: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{prefix} {}", text.trim_end_matches(['\n', '\r']))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_plan::instruction::HeredocBody;

    fn run_of(command: Command, heredocs: Vec<HeredocBody>) -> Run {
        Run {
            command,
            mounts: vec![],
            network: None,
            security: None,
            devices: vec![],
            heredocs,
        }
    }

    fn doc(name: &str, body: &str) -> HeredocBody {
        HeredocBody {
            name: name.into(),
            file_descriptor: 0,
            expand: true,
            body: body.into(),
        }
    }

    const SH: [&str; 2] = ["/bin/sh", "-c"];

    #[test]
    fn command_lines_as_docker_builds_them() {
        let shell: Vec<String> = SH.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let argv = |r: &Run| argv(r, &shell, dir.path(), 1).expect("argv");
        assert_eq!(
            argv(&run_of(Command::Shell("make all".into()), vec![])),
            ["/bin/sh", "-c", "make all"]
        );
        assert_eq!(
            argv(&run_of(Command::Exec(vec!["/bin/true".into()]), vec![])),
            ["/bin/true"]
        );
        assert_eq!(
            argv(&run_of(
                Command::Shell("<<EOF".into()),
                vec![doc("EOF", "echo hi\n")]
            )),
            ["/bin/sh", "-c", "echo hi\n"]
        );
        assert_eq!(
            argv(&run_of(
                Command::Shell("cat <<A > /a && cat <<B".into()),
                vec![doc("A", "1\n"), doc("B", "2\n")]
            )),
            ["/bin/sh", "-c", "cat <<A > /a && cat <<B\n1\nA\n2\nB\n"]
        );
        let script = argv(&run_of(
            Command::Shell("<<-EOF".into()),
            vec![doc("EOF", "#!/bin/sh\necho from script\n")],
        ));
        assert_eq!(script.len(), 1);
        assert!(
            std::fs::read_to_string(&script[0])
                .expect("script")
                .starts_with("#!/bin/sh")
        );
    }

    /// Tests that run processes, one at a time: `stop_running` stops whichever runs.
    static RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn sigterm_stops_the_run_and_everything_it_started() {
        let _one = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = RunSpec {
            // A grandchild holding the output pipe: run() returns only once it is gone.
            argv: vec!["/bin/sh".into(), "-c".into(), "sleep 300 & wait".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.path().to_path_buf(),
            ids: Ids { uid: 0, gid: 0 },
            prefix: "[test 1/1]".into(),
        };
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(run(&spec)));
        while RUNNING_GROUP.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stop_running();
        let outcome = result
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the RUN and its sleep ended");
        assert!(matches!(outcome, Err(Error::Signal(15))), "{outcome:?}");
        assert_eq!(RUNNING_GROUP.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn runs_as_user_in_dir_with_env_and_reports_exit() {
        let _one = RUNS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = |script: &str| RunSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![
                ("GREETING".into(), "hi".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            cwd: dir.path().to_path_buf(),
            ids: Ids {
                uid: 65534,
                gid: 65534,
            },
            prefix: "[test 1/1]".into(),
        };
        run(&spec(
            "test \"$GREETING\" = hi && test \"$(id -u)\" = 65534 && test \"$PWD\" = \"$(pwd)\"",
        ))
        .expect("runs");
        assert!(matches!(run(&spec("exit 3")), Err(Error::Exit(3))));
        assert!(matches!(run(&spec("kill -9 $$")), Err(Error::Signal(9))));
        let mut missing = spec("true");
        missing.argv = vec!["/nonexistent".into()];
        assert!(matches!(run(&missing), Err(Error::Spawn { .. })));
    }
}
