//! `stagecoach build`, the binary itself, end to end: the local registry, real pods on
//! podman (`make e2e-env` first), and the images they push.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use stagecoach_e2e::git_server::{commit, git};
use stagecoach_e2e::podman::{builder_image, check, podman, registry, run_on, tool};
use stagecoach_e2e::rootfs::{Layout, buildah_bud_with, differences};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `stagecoach ARGS` with the project's podman configuration, as `make demo` runs it.
fn stagecoach(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecoach"));
    cmd.args(args)
        .env(
            "CONTAINERS_CONF",
            repo_root().join("containers/containers.conf"),
        )
        .env(
            "CONTAINERS_REGISTRIES_CONF",
            repo_root().join("containers/registries.conf"),
        )
        .env("STAGECOACH_BUILDER_IMAGE", builder_image())
        .env("STAGECOACH_INSECURE_REGISTRIES", registry())
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Runs it with `stdin`; its output, with stderr shown on failure.
fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stagecoach runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("stagecoach ends")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_tree(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
    }
}

/// The manifest (`--raw`) or config (`--config --raw`) of an image in the registry.
fn inspect(reference: &str, config: bool) -> serde_json::Value {
    let mut cmd = tool("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if config {
        cmd.arg("--config");
    }
    let out = check(cmd.arg(format!("docker://{reference}")));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `repository@digest` of a pushed `name:tag@digest` (skopeo refuses both).
fn by_digest(pushed: &str) -> String {
    let (name, digest) = pushed.trim().split_once('@').expect("a digest reference");
    let (registry_and_path, last) = name.rsplit_once('/').expect("a path");
    let repository = last.split(':').next().unwrap_or(last);
    format!("{registry_and_path}/{repository}@{digest}")
}

fn dockerfile() -> String {
    format!(
        "FROM {r}/stagecoach/tcc:1 AS build\nWORKDIR /src\nCOPY . .\n\
         RUN mkdir -p /out && tcc -o /out/hello hello.c && ls -a /src > /out/listing\n\
         FROM {r}/stagecoach/runtime:1\nCOPY --from=build /out/ /usr/local/bin/\n\
         CMD [\"/usr/local/bin/hello\"]\n",
        r = registry()
    )
}

const HELLO_C: &str =
    "#include <stdio.h>\nint main(void) { puts(\"hello from a directory\"); return 0; }\n";

#[test]
fn a_directory_builds_as_its_repository_does_and_reports_like_buildx() {
    let dockerfile = dockerfile();
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        ("hello.c", HELLO_C),
        (".dockerignore", "secret.txt\n*.log\n"),
        ("secret.txt", "not for the image"),
        ("debug.log", "noise"),
        ("docs/readme.md", "docs"),
    ];
    let work = tempfile::tempdir().expect("tempdir");
    // The same files as a repository, built through a manifest, and as a plain
    // directory (no .git), built with flags, at the commit's time.
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    commit(&repo, &files, "cli");
    let commit_time = git(&repo, &["log", "-1", "--format=%ct"]);
    let manifest = work.path().join("build.yaml");
    let from_git = format!("{}/e2e/cli-git:1", registry());
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: cli-git}}\n\
             spec:\n  source: {{git: {{url: 'file://{}', revision: main}}}}\n\
             \x20 output: {{image: '{from_git}', insecureRegistry: true}}\n  cache: {{mode: Disabled}}\n",
            repo.display()
        ),
    )
    .expect("manifest");
    let out = run(
        &mut stagecoach(&["local", "build", manifest.to_str().expect("utf-8")]),
        "",
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    let git_image = by_digest(text(&out.stdout).lines().last().expect("a reference"));

    let dir = work.path().join("dir");
    write_tree(&dir, &files);
    let image = format!("{}/e2e/cli-dir", registry());
    let metadata = work.path().join("metadata.json");
    let iid = work.path().join("iid");
    let out = run(
        stagecoach(&[
            "build",
            "-t",
            &format!("{image}:1"),
            "-t",
            &format!("{image}:latest"),
            "--no-cache",
            "--progress",
            "plain",
            "--metadata-file",
            metadata.to_str().expect("utf-8"),
            "--iidfile",
            iid.to_str().expect("utf-8"),
            dir.to_str().expect("utf-8"),
        ])
        .env("SOURCE_DATE_EPOCH", &commit_time),
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{}{stderr}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout holds the reference only: {stdout}"
    );
    assert!(
        stdout.starts_with(&format!("{image}:1@sha256:")),
        "{stdout}"
    );
    assert!(
        stderr.contains("stage build"),
        "plain progress names the stages: {stderr}"
    );
    let dir_image = by_digest(&stdout);

    // The same files, the same layers; the configs differ in the source labels only.
    let layers = |m: &serde_json::Value| m["layers"].clone();
    assert_eq!(
        layers(&inspect(&dir_image, false)),
        layers(&inspect(&git_image, false)),
        "a directory and its repository give the same layers"
    );
    let without_source = |mut c: serde_json::Value| {
        let labels = c["config"]["Labels"].as_object_mut().expect("labels");
        let source = labels.remove("org.opencontainers.image.source");
        labels.remove("org.opencontainers.image.revision");
        (c, source)
    };
    let (ours, our_source) = without_source(inspect(&dir_image, true));
    let (theirs, _) = without_source(inspect(&git_image, true));
    assert_eq!(ours, theirs);
    assert_eq!(
        our_source.and_then(|s| s.as_str().map(String::from)),
        Some(image.clone()),
        "the source label names the context artifact's repository, the image's own"
    );
    // And the same files as buildah builds from the directory itself.
    let tag = "localhost/stagecoach-e2e/cli-dir:buildah";
    let theirs = Layout::from_buildah(&buildah_bud_with(
        &dir.join("Dockerfile"),
        &dir,
        None,
        &[],
        &[],
        tag,
    ));
    let _ = tool("buildah").args(["rmi", "-f", tag]).output();
    let diffs = differences(
        &Layout::from_registry(&dir_image)
            .unpack()
            .path()
            .join("b/rootfs"),
        &theirs.unpack().path().join("b/rootfs"),
    );
    assert!(
        diffs.is_empty(),
        "differs from buildah:\n{}",
        diffs.join("\n")
    );
    let run_out = check(podman().args(["run", "--rm", "--tls-verify=false", &dir_image]));
    assert_eq!(text(&run_out.stdout), "hello from a directory\n");
    let listing = check(podman().args([
        "run",
        "--rm",
        "--tls-verify=false",
        &dir_image,
        "cat",
        "/usr/local/bin/listing",
    ]));
    let listing = text(&listing.stdout);
    for kept in ["Dockerfile", ".dockerignore", "hello.c", "docs"] {
        assert!(listing.lines().any(|l| l == kept), "{kept} in {listing}");
    }
    for ignored in ["secret.txt", "debug.log"] {
        assert!(
            !listing.lines().any(|l| l == ignored),
            "{ignored} in {listing}"
        );
    }

    // buildx's metadata keys; the image id is the config's digest.
    let digest = stdout.trim().split_once('@').expect("digest").1.to_string();
    let metadata: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metadata).expect("metadata file"))
            .expect("JSON");
    assert_eq!(metadata["containerimage.digest"], digest.as_str());
    assert_eq!(
        metadata["image.name"],
        format!("{image}:1,{image}:latest").as_str()
    );
    let manifest = inspect(&dir_image, false);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    assert_eq!(metadata["containerimage.config.digest"], config_digest);
    assert_eq!(
        metadata["containerimage.descriptor"]["digest"],
        digest.as_str()
    );
    assert_eq!(
        std::fs::read_to_string(&iid).expect("iidfile"),
        config_digest
    );
    // Both tags name the image.
    let latest = inspect(&format!("{image}:latest"), false);
    assert_eq!(latest, manifest);
}

#[test]
fn stdin_dockerfiles_secrets_and_exit_codes() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("ctx");
    write_tree(&dir, &[("note.txt", "from the context\n")]);
    let secret = work.path().join("token");
    std::fs::write(&secret, "s3cret").expect("secret");
    let image = format!("{}/e2e/cli-stdin:1", registry());
    let good = format!(
        "FROM {r}/stagecoach/runtime:1\nCOPY note.txt /note.txt\n\
         RUN --mount=type=secret,id=tok test \"$(cat /run/secrets/tok)\" = s3cret && echo ok > /checked\n",
        r = registry()
    );
    let secret_flag = format!("id=tok,src={}", secret.display());
    let ctx = dir.to_str().expect("utf-8");
    let out = run(
        &mut stagecoach(&[
            "build",
            "-q",
            "-t",
            &image,
            "-f",
            "-",
            "--secret",
            &secret_flag,
            ctx,
        ]),
        &good,
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "-q prints nothing else");
    let pushed = text(&out.stdout);
    assert!(
        pushed.starts_with(&format!("{image}@sha256:")),
        "-q prints the reference: {pushed}"
    );
    let note = check(podman().args([
        "run",
        "--rm",
        "--tls-verify=false",
        &by_digest(&pushed),
        "cat",
        "/note.txt",
        "/checked",
    ]));
    assert_eq!(text(&note.stdout), "from the context\nok\n");

    // A RUN that fails: 1, with the reason and the line.
    let failing = format!(
        "FROM {r}/stagecoach/runtime:1\nRUN exit 3\n",
        r = registry()
    );
    let out = run(
        &mut stagecoach(&["build", "-t", &image, "-f", "-", "--no-cache", ctx]),
        &failing,
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(stderr.contains("build failed: StageFailed"), "{stderr}");
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");

    // Usage and environment errors: 2, and nothing runs.
    for (args, says) in [
        (vec!["build", "--no-such-flag", ctx], "--no-such-flag"),
        (vec!["build", ctx], "--tag"),
        (
            vec!["build", "-t", &image, "/no/such/dir"],
            "neither a directory",
        ),
        (
            vec![
                "build",
                "-t",
                &image,
                "--platform",
                "linux/arm64,linux/arm64",
                ctx,
            ],
            "linux/arm64 is named twice",
        ),
        (
            vec!["build", "-t", "127.0.0.1:9/e2e/x:1", ctx],
            "no registry answers at 127.0.0.1:9",
        ),
        (
            vec!["build", "-t", &image, "--secret", "id=no-such-file", ctx],
            "cannot read no-such-file",
        ),
        (
            vec!["build", "-t", &image, "--ssh", "default", ctx],
            "ID=KEYFILE",
        ),
    ] {
        let out = run(
            stagecoach(&args).env(
                "STAGECOACH_INSECURE_REGISTRIES",
                format!("{},127.0.0.1:9", registry()),
            ),
            "",
        );
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // No podman: 2, in one line.
    let out = run(
        stagecoach(&["build", "-t", &image, ctx]).env("PATH", work.path()),
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("podman is not installed"), "{stderr}");
    // --cluster without a cluster: 2, before anything is pushed or created.
    let out = run(
        stagecoach(&["build", "--cluster", "-t", &image, ctx])
            .env("KUBECONFIG", work.path().join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST"),
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    assert!(stderr.contains("no cluster to build on"), "{stderr}");
}

/// `--platform linux/amd64,linux/arm64`: an image index under the tag, reported as
/// buildx reports one (the index's digest, no config), each platform's image running.
#[test]
fn several_platforms_make_an_index_reported_like_buildx() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("ctx");
    let dockerfile = format!(
        "FROM {r}/stagecoach/runtime:1\nCOPY which.txt /which.txt\nCMD [\"cat\", \"/which.txt\"]\n",
        r = registry()
    );
    write_tree(
        &dir,
        &[("Dockerfile", &dockerfile), ("which.txt", "both\n")],
    );
    let image = format!("{}/e2e/cli-platforms:1", registry());
    let metadata = work.path().join("metadata.json");
    let iid = work.path().join("iid");
    let out = run(
        &mut stagecoach(&[
            "build",
            "-t",
            &image,
            "--platform",
            "linux/amd64,linux/arm64",
            "--metadata-file",
            metadata.to_str().expect("utf-8"),
            "--iidfile",
            iid.to_str().expect("utf-8"),
            dir.to_str().expect("utf-8"),
        ]),
        "",
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("an index of 2 runtime images: linux/amd64 ")
            && stderr.contains("linux/arm64 "),
        "{stderr}"
    );
    let pushed = by_digest(&text(&out.stdout));
    let index = inspect(&pushed, false);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let digest = pushed.split_once('@').expect("digest").1;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metadata).expect("metadata")).expect("JSON");
    assert_eq!(meta["containerimage.digest"], digest);
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        index["mediaType"]
    );
    assert!(meta.get("containerimage.config.digest").is_none(), "{meta}");
    assert_eq!(std::fs::read_to_string(&iid).expect("iid"), digest);
    for platform in ["linux/amd64", "linux/arm64"] {
        assert_eq!(run_on(platform, &pushed), "both\n");
    }
}

#[test]
fn a_git_url_builds_its_revision_and_subdirectory() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    let dockerfile = format!(
        "FROM {r}/stagecoach/runtime:1\nCOPY which.txt /which.txt\nCMD [\"cat\", \"/which.txt\"]\n",
        r = registry()
    );
    commit(
        &repo,
        &[
            ("svc/Dockerfile", &dockerfile),
            ("svc/which.txt", "v1 of svc\n"),
            ("which.txt", "root\n"),
        ],
        "v1",
    );
    git(&repo, &["tag", "v1"]);
    commit(&repo, &[("svc/which.txt", "main of svc\n")], "later");
    let url = format!("file://{}#v1:svc", repo.display());
    let image = format!("{}/e2e/cli-git-url:1", registry());
    let out = run(&mut stagecoach(&["build", "-q", "-t", &image, &url]), "");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let ran = check(podman().args([
        "run",
        "--rm",
        "--tls-verify=false",
        &by_digest(&text(&out.stdout)),
    ]));
    assert_eq!(text(&ran.stdout), "v1 of svc\n");
}

#[test]
fn help_lists_the_docker_build_flags() {
    let out = run(&mut stagecoach(&["build", "--help"]), "");
    assert_eq!(code(&out), 0);
    let help = text(&out.stdout);
    for flag in [
        "--file",
        "--tag",
        "--target",
        "--build-arg",
        "--platform",
        "--label",
        "--no-cache",
        "--secret",
        "--ssh",
        "--progress",
        "--metadata-file",
        "--iidfile",
        "--quiet",
        "--context-push",
        "[PATH | GIT-URL]",
    ] {
        assert!(help.contains(flag), "{flag} not in:\n{help}");
    }
    let out = run(&mut stagecoach(&["--help"]), "");
    assert!(text(&out.stdout).contains("build"), "{}", text(&out.stdout));

    // As a kubectl plugin (`make install` links it): `kubectl stagecoach build ...` runs
    // `kubectl-stagecoach build ...` (kubectl from `scripts/install-deps.sh`).
    let bin = tempfile::tempdir().expect("tempdir");
    let plugin = bin.path().join("kubectl-stagecoach");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stagecoach"), &plugin).expect("symlink");
    let kubectl = repo_root().join(".work/tools/bin/kubectl");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(
        Command::new(&kubectl)
            .args(["stagecoach", "build", "--help"])
            .env("PATH", path),
        "",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("--cluster"));
}
