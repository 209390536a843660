//! `stagecoach-builder plan` as a user runs it.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn run_plan(dockerfile: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagecoach-builder"))
        .arg("plan")
        .args(["-f", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("builder runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write");
    child.wait_with_output().expect("exits")
}

const CLASSIC: &str = "ARG CC=tcc\nFROM stagecoach/tcc:1 AS build\nARG CC\nCOPY hello.c /src/\n\
RUN $CC -o /hello /src/hello.c\nFROM stagecoach/runtime:1\nCOPY --from=build /hello /usr/local/bin/\n\
CMD [\"hello\"]\n";

#[test]
fn json_output_is_the_plan_contract() {
    let out = run_plan(CLASSIC, &["--format", "json", "--build-arg", "CC=gcc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = stagecoach_plan::Plan::from_json(&String::from_utf8(out.stdout).expect("utf8"))
        .expect("valid plan");
    assert_eq!(plan.build_args["CC"], "gcc");
    assert_eq!(plan.waves, [["build"]]);
    assert_eq!(plan.stage("build").expect("build").exports, ["/hello"]);
}

#[test]
fn text_output_lists_stages_and_waves() {
    let out = run_plan(CLASSIC, &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        text.contains("build                from docker.io/stagecoach/tcc:1"),
        "{text}"
    );
    assert!(text.contains("assembled, no pod"), "{text}");
    assert!(text.contains("waves:\n  1: build\n"), "{text}");
}

#[test]
fn invalid_dockerfile_fails_with_the_place() {
    let out = run_plan("FROM a\nCOPY --form=x a b\n", &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert_eq!(err.trim(), "error: Dockerfile:2: unknown flag: --form");
}

#[test]
fn missing_target_fails() {
    let out = run_plan(CLASSIC, &["--target", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("target stage \"nope\" could not be found")
    );
}
