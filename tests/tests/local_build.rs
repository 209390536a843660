//! Whole builds through `stagecoach local build` (the operator's core and pods on
//! podman): source pod, stage pods, assemble pod, the local registry. The images are
//! checked with podman, skopeo and umoci, and compared with `buildah bud`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stagecoach_e2e::git_server::{commit, git};
use stagecoach_e2e::podman::{builder_image, check, podman, registry, tool};
use stagecoach_e2e::rootfs::{Layout, buildah_bud, differences};
use stagecoach_operator::api::{ImageBuildStatus, Phase};
use stagecoach_operator::local::{self, LocalOptions, LocalResult};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn options() -> LocalOptions {
    LocalOptions {
        builder_image: builder_image(),
        keep: false,
        logs: false,
        insecure_registries: vec![registry()],
        containers_conf: Some(repo_root().join("containers/containers.conf")),
        registries_conf: Some(repo_root().join("containers/registries.conf")),
    }
}

/// A build of the files as a git repository; `extra` is appended to the spec.
struct Build<'a> {
    name: &'a str,
    files: &'a [(&'a str, &'a str)],
    extra: &'a str,
    revision: &'a str,
}

impl Build<'_> {
    fn image(&self) -> String {
        format!("{}/e2e/{}:latest", registry(), self.name)
    }

    fn run(&self, dir: &Path) -> LocalResult {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).expect("repository dir");
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        commit(&repo, self.files, self.name);
        let manifest = dir.join("build.yaml");
        let yaml = format!(
            "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: {name}\nspec:\n  source:\n    git:\n      url: file://{repo}\n      revision: {rev}\n  output:\n    image: {image}\n    insecureRegistry: true\n  timeout: 10m\n{extra}",
            name = self.name,
            repo = repo.display(),
            rev = self.revision,
            image = self.image(),
            extra = self.extra
        );
        std::fs::write(&manifest, yaml).expect("manifest");
        local::build(&manifest, &options()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

fn succeeded(status: &ImageBuildStatus) -> String {
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let image = status.image.clone().expect("image");
    format!("{}@{}", image.reference, image.digest)
}

fn failure(status: &ImageBuildStatus) -> (String, String, Option<i64>) {
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    let f = status.failure.clone().expect("failure");
    (f.reason, f.message, f.line)
}

/// Compares our pushed image with buildah's build of the same Dockerfile and context.
fn assert_same_as_buildah(
    image: &str,
    files: &[(&str, &str)],
    build_args: &[(&str, &str)],
    target: Option<&str>,
    tag: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let file = dir.path().join("ctx").join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
    }
    let mut dockerfile = dir.path().join("ctx/Dockerfile");
    if !build_args.is_empty() {
        // buildah takes build args on the command line: bake them into a copy as defaults.
        let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
        let mut baked = text.clone();
        for (k, v) in build_args {
            baked = baked.replace(&format!("ARG {k}\n"), &format!("ARG {k}={v}\n"));
        }
        dockerfile = dir.path().join("Dockerfile.baked");
        std::fs::write(&dockerfile, baked).expect("baked");
    }
    let theirs = Layout::from_buildah(&buildah_bud(
        &dockerfile,
        &dir.path().join("ctx"),
        target,
        tag,
    ));
    let _ = tool("buildah").args(["rmi", "-f", tag]).output();
    let ours = Layout::from_registry(image);
    let diffs = differences(
        &ours.unpack().path().join("b/rootfs"),
        &theirs.unpack().path().join("b/rootfs"),
    );
    assert!(
        diffs.is_empty(),
        "{image}: differs from buildah:\n{}",
        diffs.join("\n")
    );
}

const HELLO_C: &str =
    "#include <stdio.h>\nint main(void) { puts(\"hello from stagecoach\"); return 0; }\n";

fn classic_dockerfile() -> String {
    format!(
        "FROM {r}/stagecoach/tcc:1 AS build\nWORKDIR /src\nCOPY hello.c .\nRUN mkdir -p /out && tcc -o /out/hello hello.c\n\
         FROM {r}/stagecoach/runtime:1\nCOPY --from=build /out/hello /usr/local/bin/hello\nCMD [\"/usr/local/bin/hello\"]\n",
        r = registry()
    )
}

#[test]
fn classic_c_example_runs_and_ships_only_the_binary() {
    let dockerfile = classic_dockerfile();
    let files = [("Dockerfile", dockerfile.as_str()), ("hello.c", HELLO_C)];
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Build {
        name: "classic",
        files: &files,
        extra: "",
        revision: "main",
    };
    let result = b.run(dir.path());
    let image = succeeded(&result.status);
    assert!(
        result
            .status
            .source
            .as_ref()
            .and_then(|s| s.commit.clone())
            .is_some_and(|c| c.len() == 40)
    );
    let out = check(podman().args(["run", "--rm", "--tls-verify=false", &image]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from stagecoach\n"
    );
    // The runtime base plus one layer holding only the binary.
    let base = Layout::from_registry(&format!("{}/stagecoach/runtime:1", registry()));
    let ours = Layout::from_registry(&image);
    let diffs = differences(
        &ours.unpack().path().join("b/rootfs"),
        &base.unpack().path().join("b/rootfs"),
    );
    let added: Vec<&String> = diffs
        .iter()
        .filter(|d| d.starts_with("only in ours"))
        .collect();
    assert!(
        added.iter().all(|d| d.contains("usr/local")),
        "only the binary (and its directories) is added: {diffs:#?}"
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/classic:buildah",
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS one\nRUN sleep 3 && echo 1 > /one\n\
         FROM {r}/stagecoach/busybox:1 AS two\nRUN sleep 3 && echo 2 > /two\n\
         FROM {r}/stagecoach/busybox:1 AS three\nRUN sleep 3 && echo 3 > /three\n\
         FROM {r}/stagecoach/busybox:1\nCOPY --from=one /one /\nCOPY --from=two /two /\nCOPY --from=three /three /\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let result = Build {
        name: "parallel",
        files: &files,
        extra: "",
        revision: "main",
    }
    .run(dir.path());
    let image = succeeded(&result.status);
    let stages: Vec<&(String, Duration, Duration)> = result
        .timings
        .iter()
        .filter(|(n, ..)| n.contains("-stage-"))
        .collect();
    assert_eq!(stages.len(), 3, "{:?}", result.timings);
    let latest_start = stages.iter().map(|t| t.1).max().expect("starts");
    let earliest_end = stages.iter().map(|t| t.2).min().expect("ends");
    assert!(
        latest_start < earliest_end,
        "the three stage pods overlapped: {stages:?}"
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/parallel:buildah",
    );
}

#[test]
fn args_targets_indexes_images_and_chains() {
    let r = registry();
    let dockerfile = format!(
        "ARG BASE=busybox\nFROM {r}/stagecoach/${{BASE}}:1 AS base\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\n\
         FROM base AS middle\nCOPY --from=0 /greeting /copied-by-index\nCOPY --from={r}/stagecoach/tcc:1 /usr/bin/tcc /tcc\nRUN ls /tcc\n\
         FROM middle AS broken\nRUN exit 9\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let result = Build {
        name: "targets",
        files: &files,
        extra: "  target: middle\n  buildArgs:\n  - {name: GREETING, value: hi there}\n",
        revision: "main",
    }
    .run(dir.path());
    let image = succeeded(&result.status);
    assert!(
        !result.timings.iter().any(|(n, ..)| n.contains("broken")),
        "the pruned stage never ran"
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[("GREETING", "hi there")],
        Some("middle"),
        "localhost/stagecoach-e2e/targets:buildah",
    );
}

#[test]
fn metadata_lands_in_the_image_config() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1\nENV MODE=prod\nWORKDIR /app\nUSER 1000:1000\nLABEL team=builders\nEXPOSE 8080/tcp\n\
         VOLUME /data\nSTOPSIGNAL SIGINT\nHEALTHCHECK --interval=30s CMD [\"true\"]\nENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD [\"echo $MODE\"]\n\
         RUN touch /app/ready\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let image = succeeded(
        &Build {
            name: "metadata",
            files: &files,
            extra: "",
            revision: "main",
        }
        .run(dir.path())
        .status,
    );
    let out = check(tool("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{image}"),
    ]));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config");
    let c = &config["config"];
    assert!(
        c["Env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e == "MODE=prod")
    );
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["team"], "builders");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert!(c["Volumes"]["/data"].is_object());
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Healthcheck"]["Test"][0], "CMD");
    assert_eq!(c["Entrypoint"][0], "/bin/sh");
    assert_eq!(c["Cmd"][0], "echo $MODE");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.revision"]
            .as_str()
            .map(str::len),
        Some(40)
    );
    let out = check(podman().args(["run", "--rm", "--tls-verify=false", &image]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "prod");
}

#[test]
fn failures_end_with_their_reason_and_place() {
    let r = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = format!("FROM {r}/stagecoach/busybox:1 AS build\nRUN echo ok\nRUN exit 3\n");
    let files = [("Dockerfile", failing.as_str())];
    let status = Build {
        name: "runfails",
        files: &files,
        extra: "",
        revision: "main",
    }
    .run(&dir.path().join("a"))
    .status;
    let (reason, message, line) = failure(&status);
    assert_eq!(
        (reason.as_str(), line),
        ("StageFailed", Some(3)),
        "{message}"
    );
    assert!(
        message.contains("stage build: Dockerfile:3: RUN exit 3: exit code 3"),
        "{message}"
    );
    let pushed = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{r}/e2e/runfails:latest"),
        ])
        .output()
        .expect("skopeo");
    assert!(!pushed.status.success(), "nothing is pushed");

    let invalid = "FROM busybox\nCOPY --from= x /\nRUN [\"a\", [\"b\"]]\n";
    let files = [("Dockerfile", invalid)];
    let status = Build {
        name: "invalid",
        files: &files,
        extra: "",
        revision: "main",
    }
    .run(&dir.path().join("b"))
    .status;
    let (reason, _, line) = failure(&status);
    assert_eq!((reason.as_str(), line), ("DockerfileInvalid", Some(3)));

    let files = [("Dockerfile", "FROM busybox\n")];
    let status = Build {
        name: "norev",
        files: &files,
        extra: "",
        revision: "no-such-branch",
    }
    .run(&dir.path().join("c"))
    .status;
    assert_eq!(failure(&status).0, "RevisionNotFound");
}
