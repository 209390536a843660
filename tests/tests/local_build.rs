//! Whole builds through `stagecoach local build` (the operator's core and pods on
//! podman): source pod, stage pods, assemble pod, the local registry. The images are
//! checked with podman, skopeo and umoci, and compared with `buildah bud`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use stagecoach_e2e::git_server::{SshServer, commit, git};
use stagecoach_e2e::podman::{
    builder_image, check, platform_digest, podman, registry, run_on, tool,
};
use stagecoach_e2e::registry::{RegistryServer, auth_file};
use stagecoach_e2e::rootfs::{Layout, buildah_bud_with, differences};
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
        progress: local::ProgressStyle::Plain,
        progress_stream: local::ProgressStream::Stdout,
        insecure_registries: vec![registry()],
        secrets: BTreeMap::new(),
        containers_conf: Some(repo_root().join("containers/containers.conf")),
        registries_conf: Some(repo_root().join("containers/registries.conf")),
        cache_repository: None,
        run_cache_volume: None,
        // Tests of other things build without the stage cache, so that one test's
        // entries never decide what another runs; the cache tests turn it on.
        no_cache: true,
    }
}

/// A build of the files as a git repository; the `*_extra` texts are appended to the
/// spec, its `output` and its `source.git`.
#[derive(Default)]
struct Build<'a> {
    name: &'a str,
    files: &'a [(&'a str, &'a str)],
    extra: &'a str,
    output_extra: &'a str,
    git_extra: &'a str,
    revision: &'a str,
    /// Another registry than the local one (`host:port`).
    registry: Option<String>,
    secrets: BTreeMap<String, PathBuf>,
    /// The runner's options, when not [`options`].
    options: Option<LocalOptions>,
}

impl Build<'_> {
    fn image(&self) -> String {
        let registry = self.registry.clone().unwrap_or_else(registry);
        format!("{registry}/e2e/{}:latest", self.name)
    }

    fn run(&self, dir: &Path) -> LocalResult {
        let manifest = self.manifest(dir);
        let mut opts = self.options.clone().unwrap_or_else(options);
        opts.secrets = self.secrets.clone();
        opts.insecure_registries.extend(self.registry.clone());
        local::build(&manifest, &opts).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The build's repository and manifest, written under `dir`; the manifest's path.
    fn manifest(&self, dir: &Path) -> PathBuf {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).expect("repository dir");
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        commit(&repo, self.files, self.name);
        let manifest = dir.join("build.yaml");
        let yaml = format!(
            "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: {name}\nspec:\n  source:\n    git:\n      url: file://{repo}\n      revision: {rev}\n{git_extra}  output:\n    image: {image}\n    insecureRegistry: true\n{output_extra}  timeout: 10m\n{extra}",
            name = self.name,
            repo = repo.display(),
            rev = if self.revision.is_empty() {
                "main"
            } else {
                self.revision
            },
            git_extra = self.git_extra,
            image = self.image(),
            output_extra = self.output_extra,
            extra = self.extra
        );
        std::fs::write(&manifest, yaml).expect("manifest");
        manifest
    }
}

fn succeeded(status: &ImageBuildStatus) -> String {
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let image = status.image.clone().expect("image");
    // `repository@digest`: skopeo refuses a tag beside the digest.
    let (name, last) = image
        .reference
        .rsplit_once('/')
        .expect("registry/repository");
    let repository = last.split(':').next().unwrap_or(last);
    format!("{name}/{repository}@{}", image.digest)
}

fn failure(status: &ImageBuildStatus) -> (String, String, Option<i64>) {
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    let f = status.failure.clone().expect("failure");
    (f.reason, f.message, f.line)
}

/// The parts of an image config a Dockerfile decides, for comparing with buildah's:
/// the labels of the build's source and of buildah itself are left out, and so are
/// Docker's extensions (Healthcheck, Shell, OnBuild), which buildah's image loses on the
/// way into the OCI layout it is compared from (the metadata test checks ours).
fn dockerfile_config(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config["config"].clone();
    if let Some(labels) = c.get_mut("Labels").and_then(|l| l.as_object_mut()) {
        labels.retain(|k, _| {
            !k.starts_with("org.opencontainers.image.") && k != "io.buildah.version"
        });
    }
    let keys = [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
    ];
    keys.iter()
        .filter(|k| !c[**k].is_null() && c[**k] != serde_json::json!({}))
        .map(|k| (k.to_string(), c[*k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Compares our pushed image with buildah's build of the same Dockerfile and context:
/// the root filesystem file by file, and the config.
fn assert_same_as_buildah(
    image: &str,
    files: &[(&str, &str)],
    build_args: &[(&str, &str)],
    target: Option<&str>,
    tag: &str,
) {
    assert_same_as_buildah_with(image, files, build_args, target, &[], tag);
}

/// [`assert_same_as_buildah`] with more flags for buildah (`--secret`).
fn assert_same_as_buildah_with(
    image: &str,
    files: &[(&str, &str)],
    build_args: &[(&str, &str)],
    target: Option<&str>,
    extra: &[String],
    tag: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
    }
    let theirs = Layout::from_buildah(&buildah_bud_with(
        &dir.path().join("Dockerfile"),
        dir.path(),
        target,
        build_args,
        extra,
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
    assert_eq!(
        dockerfile_config(&ours.config()),
        dockerfile_config(&theirs.config()),
        "{image}: config differs from buildah's"
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
        ..Build::default()
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
        ..Build::default()
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
        ..Build::default()
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
fn a_copy_only_target_with_user_and_workdir_is_assembled_like_buildah_builds_it() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nRUN mkdir -p /out/sub && echo hi > /out/file && echo deep > /out/sub/deep\n\
         FROM {r}/stagecoach/runtime:1\nUSER 1000:1000\nWORKDIR /app/data\nCOPY --from=build /out/file .\n\
         COPY --chown=1000:1000 --from=build /out /app/out\nCOPY --chmod=600 --from=build /out/sub/deep /etc/deep\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let result = Build {
        name: "copyonly",
        files: &files,
        ..Build::default()
    }
    .run(dir.path());
    let image = succeeded(&result.status);
    assert!(
        !result
            .timings
            .iter()
            .any(|(n, ..)| n.contains("stage-stage-1")),
        "the target needs no stage pod: {:?}",
        result.timings
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/copyonly:buildah",
    );
}

/// A directory source's destination directory: made 0755 and owned by root (or kept as
/// it is when it exists), whatever the source directory's own mode and owner; only the
/// contents carry theirs. The same stage assembled without a stage pod and run in a
/// stage pod gives the same files, modes and owners, and both equal buildah's.
#[test]
fn copy_destinations_are_the_same_from_either_pod_and_from_buildah() {
    let r = registry();
    let copies = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\n\
         RUN mkdir -p /out/sub && echo hi > /out/sub/f && chmod 0700 /out && chmod 0750 /out/sub && chown -R 1234:1234 /out\n\
         FROM {r}/stagecoach/runtime:1 AS final\n\
         COPY --from=build /out /app/\nCOPY --from=build /out /srv/data\nCOPY --from=build /out /tmp/\n\
         COPY --chown=1000:1000 --from=build /out/sub /home/owned/\n"
    );
    let in_pod = format!("{copies}FROM final\nRUN true\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut images = Vec::new();
    for (name, dockerfile) in [("destassembled", &copies), ("destpod", &in_pod)] {
        let files = [("Dockerfile", dockerfile.as_str())];
        let result = Build {
            name,
            files: &files,
            ..Build::default()
        }
        .run(&dir.path().join(name));
        // `final` runs in the last stage's pod (a fused chain) only when a RUN follows.
        let stage_pods = result
            .timings
            .iter()
            .filter(|(n, ..)| n.contains("-stage-"));
        assert_eq!(
            stage_pods.count(),
            if name == "destpod" { 2 } else { 1 },
            "{name}: {:?}",
            result.timings
        );
        images.push((
            succeeded(&result.status),
            files.map(|(p, c)| (p, c.to_string())),
        ));
    }
    let files: Vec<(&str, &str)> = images[0].1.iter().map(|(p, c)| (*p, c.as_str())).collect();
    assert_same_as_buildah(
        &images[0].0,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/destassembled:buildah",
    );
    let assembled = Layout::from_registry(&images[0].0);
    let in_pod = Layout::from_registry(&images[1].0);
    let diffs = differences(
        &assembled.unpack().path().join("b/rootfs"),
        &in_pod.unpack().path().join("b/rootfs"),
    );
    assert!(
        diffs.is_empty(),
        "the assembled stage differs from the same stage run in a pod:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn the_context_with_dockerignore_is_copied_like_buildah_copies_it() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nWORKDIR /src\nCOPY . .\nRUN find /src | sort > /listing && chmod -R go-w /src\n\
         FROM scratch AS files\nCOPY docs /files/docs\nCOPY --from=build /src/app /files/app\nWORKDIR /files/made/here\n\
         FROM {r}/stagecoach/runtime:1\nCOPY --from=build /src /app\nCOPY --from=build /listing /src/*.md /doc/\nCOPY docs/ /docs-copy\n\
         COPY --from=files / /from-scratch/\n"
    );
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        (
            ".dockerignore",
            // Excluding the Dockerfile and the ignore file itself: they are read, but no
            // `COPY .` takes them.
            "**/*.log\nsecrets/\ndocs/drafts\n!docs/drafts/keep.md\n*.tmp\nDockerfile\n.dockerignore\n",
        ),
        ("README.md", "readme\n"),
        ("app/main.c", "int main(void) { return 0; }\n"),
        ("app/build.log", "noise\n"),
        ("debug.log", "noise\n"),
        ("scratch.tmp", "noise\n"),
        ("secrets/token", "s3cr3t\n"),
        ("docs/guide.md", "guide\n"),
        ("docs/drafts/wip.md", "wip\n"),
        ("docs/drafts/keep.md", "keep\n"),
        ("docs/deep/er/file.txt", "deep\n"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let image = succeeded(
        &Build {
            name: "context",
            files: &files,
            ..Build::default()
        }
        .run(dir.path())
        .status,
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/context:buildah",
    );
}

#[test]
fn a_scratch_target_and_shell_form_metadata_match_buildah() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nSHELL [\"/bin/sh\", \"-ec\"]\nRUN echo built > /built\n\
         FROM scratch\nARG VERSION=1.2\nLABEL version=$VERSION \"two words\"=\"a b\"\nENV APP=/app VERSION=$VERSION\n\
         COPY --from=build /built $APP/\nEXPOSE 80 443/udp\nUSER 65534:65534\nENTRYPOINT /app/run --flag\nCMD echo $APP\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let image = succeeded(
        &Build {
            name: "scratchcfg",
            files: &files,
            ..Build::default()
        }
        .run(dir.path())
        .status,
    );
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/scratchcfg:buildah",
    );
}

#[test]
fn metadata_lands_in_the_image_config() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1\nENV MODE=prod\nWORKDIR /app\nRUN chown 1000:1000 /app\nUSER 1000:1000\nLABEL team=builders\nEXPOSE 8080/tcp\n\
         VOLUME /data\nSTOPSIGNAL SIGINT\nHEALTHCHECK --interval=30s CMD [\"true\"]\nENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD [\"echo $MODE\"]\n\
         RUN touch ready\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let image = succeeded(
        &Build {
            name: "metadata",
            files: &files,
            ..Build::default()
        }
        .run(dir.path())
        .status,
    );
    // skopeo's --config drops Docker's extensions (Healthcheck): read the blob itself.
    let config = Layout::from_registry(&image).config();
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
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/metadata:buildah",
    );
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
        ..Build::default()
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
    let tail = status.failure.as_ref().map(|f| f.log_tail.join("\n"));
    assert!(
        tail.as_deref().is_some_and(|t| t.contains("RUN exit 3")),
        "the failed pod's log tail: {tail:?}"
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
        ..Build::default()
    }
    .run(&dir.path().join("b"))
    .status;
    let (reason, _, line) = failure(&status);
    assert_eq!((reason.as_str(), line), ("DockerfileInvalid", Some(3)));

    // A base image the registry does not have, on the second FROM.
    let missing = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nRUN true\nFROM {r}/stagecoach/no-such-image:1\n"
    );
    let files = [("Dockerfile", missing.as_str())];
    let status = Build {
        name: "nobase",
        files: &files,
        ..Build::default()
    }
    .run(&dir.path().join("d"))
    .status;
    let (reason, message, line) = failure(&status);
    assert_eq!(
        (reason.as_str(), line),
        ("BaseImageNotFound", Some(3)),
        "{message}"
    );
    assert!(message.contains("stagecoach/no-such-image:1"), "{message}");

    let files = [("Dockerfile", "FROM busybox\n")];
    let status = Build {
        name: "norev",
        files: &files,
        revision: "no-such-branch",
        ..Build::default()
    }
    .run(&dir.path().join("c"))
    .status;
    assert_eq!(failure(&status).0, "RevisionNotFound");
}

#[test]
fn a_final_stage_that_deletes_and_changes_base_files_pushes_whiteouts() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/runtime:1\nRUN rm /etc/group && rm -r /usr/share/doc && echo changed >> /etc/passwd && \
         rm -r /etc/ld.so.conf.d && mkdir /etc/ld.so.conf.d && echo /opt/lib > /etc/ld.so.conf.d/opt.conf\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let image = succeeded(
        &Build {
            name: "whiteouts",
            files: &files,
            ..Build::default()
        }
        .run(dir.path())
        .status,
    );
    // The new layer records the deletions as whiteouts.
    let layout = Layout::from_registry(&image);
    let paths = layout.last_layer_paths();
    for whiteout in ["etc/.wh.group", "usr/share/.wh.doc"] {
        assert!(
            paths.iter().any(|p| p.trim_start_matches("./") == whiteout),
            "{whiteout} in {paths:?}"
        );
    }
    let rootfs = layout.unpack();
    let root = rootfs.path().join("b/rootfs");
    assert!(!root.join("etc/group").exists());
    assert!(!root.join("usr/share/doc").exists());
    assert!(
        std::fs::read_to_string(root.join("etc/passwd"))
            .expect("passwd")
            .ends_with("changed\n")
    );
    assert_eq!(
        std::fs::read_dir(root.join("etc/ld.so.conf.d"))
            .expect("ld.so.conf.d")
            .count(),
        1
    );
    let out = check(podman().args([
        "run",
        "--rm",
        "--tls-verify=false",
        &image,
        "sh",
        "-c",
        "test ! -e /etc/group && cat /etc/ld.so.conf.d/*",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/opt/lib\n");
    assert_same_as_buildah(
        &image,
        &files,
        &[],
        None,
        "localhost/stagecoach-e2e/whiteouts:buildah",
    );
}

/// Writes a Secret's keys into a directory, as `--secret NAME=DIR` takes them.
fn secret_dir(dir: &Path, keys: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("secret dir");
    for (key, value) in keys {
        std::fs::write(dir.join(key), value).expect("secret key");
    }
    dir.to_path_buf()
}

#[test]
fn credentials_reach_only_their_pods_and_a_wrong_password_pushes_nothing() {
    const GIT_TOKEN: &str = "git-token-5p8Qz";
    const PUSH_PASSWORD: &str = "push-password-7Kw2x";
    let protected = RegistryServer::start(Some(("pusher", PUSH_PASSWORD)));
    let r = registry();
    // The RUN looks for every form of both credentials in its whole filesystem (the
    // workspace volume included) and environment; the strings are split so that the
    // Dockerfile and plan on the volume do not hold them.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("pusher:{PUSH_PASSWORD}"));
    let needles = [GIT_TOKEN, PUSH_PASSWORD, basic.as_str()];
    let assignments: Vec<String> = needles
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (a, b) = n.split_at(n.len() / 2);
            format!("n{i}=\"{a}\"\"{b}\"")
        })
        .collect();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1\nRUN {}; \
         for n in \"$n0\" \"$n1\" \"$n2\"; do \
           if env | grep -qF \"$n\"; then echo \"found in the environment\"; exit 1; fi; \
           for d in /*; do case $d in /proc|/sys|/dev) ;; *) \
             if grep -rlsF \"$n\" \"$d\"; then echo \"found in files\"; exit 1; fi;; esac; done; \
         done; echo searched > /searched\n",
        assignments.join("; ")
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let git_secret = secret_dir(
        &dir.path().join("git-creds"),
        &[("username", "builder"), ("password", GIT_TOKEN)],
    );
    let push = |password: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).expect("dir");
        let config = auth_file(&d, &protected.addr, "pusher", password);
        let json = std::fs::read_to_string(config).expect("config");
        secret_dir(&d.join("secret"), &[(".dockerconfigjson", json.as_str())])
    };
    let build = |password: &str, sub: &str| Build {
        name: "credentials",
        files: &files,
        git_extra: "      secretRef: {name: git-creds}\n",
        output_extra: "    pushSecretRef: {name: push-creds}\n",
        registry: Some(protected.addr.clone()),
        secrets: BTreeMap::from([
            ("git-creds".to_string(), git_secret.clone()),
            ("push-creds".to_string(), push(password, sub)),
        ]),
        ..Build::default()
    };

    let status = build("wrong-password", "wrong")
        .run(&dir.path().join("a"))
        .status;
    let (reason, message, _) = failure(&status);
    assert_eq!(reason, "PushDenied", "{message}");
    assert!(message.contains(&protected.addr), "{message}");
    assert!(
        protected.repositories().is_empty(),
        "nothing is pushed: {:?}",
        protected.repositories()
    );

    let status = build(PUSH_PASSWORD, "right")
        .run(&dir.path().join("b"))
        .status;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(
        protected.repositories(),
        vec!["e2e/credentials".to_string()]
    );
}

/// The mistakes a new user makes on the way to a first build, each ending at once with a
/// message that says what happened and what to do.
#[test]
fn new_user_mistakes_say_what_to_do() {
    let r = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let two_stages = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nRUN echo hi > /out\n\
         FROM {r}/stagecoach/busybox:1\nCOPY --from=build /out /out\nCOPY notes.txt /\n"
    );
    let files = [
        ("app/Dockerfile", two_stages.as_str()),
        ("app/.dockerignore", "notes.txt\n"),
        ("app/notes.txt", "left out\n"),
    ];
    let in_app = "    contextDir: app\n";
    // (name, what goes into the manifest, expected reason, words the message must hold)
    let cases: [(&str, Build<'_>, &str, &[&str]); 5] = [
        (
            "a misspelt target",
            Build {
                extra: "  target: biuld\n",
                ..Build::default()
            },
            "DockerfileInvalid",
            &[
                "target stage \"biuld\" could not be found",
                "did you mean \"build\"",
            ],
        ),
        (
            "the Dockerfile named from the repository's root",
            Build {
                extra: "  dockerfile: app/Dockerfile\n",
                ..Build::default()
            },
            "DockerfileNotFound",
            &[
                "relative to `spec.source.contextDir`",
                "found here: Dockerfile",
            ],
        ),
        (
            "a COPY of a file .dockerignore leaves out",
            Build::default(),
            "StageFailed",
            &[
                "COPY notes.txt /",
                "not found in the build context",
                ".dockerignore",
            ],
        ),
        (
            "a misspelt branch",
            Build {
                revision: "mian",
                ..Build::default()
            },
            "RevisionNotFound",
            &["did you mean \"main\""],
        ),
        (
            "a builder image that does not exist",
            Build {
                options: Some(LocalOptions {
                    builder_image: format!("{r}/stagecoach/buildr:dev"),
                    ..options()
                }),
                ..Build::default()
            },
            "ImagePullFailed",
            &[
                "cannot pull",
                "stagecoach/buildr:dev",
                "check the image reference",
            ],
        ),
    ];
    for (n, (what, build, reason, words)) in cases.into_iter().enumerate() {
        let build = Build {
            name: "mistake",
            files: &files,
            git_extra: in_app,
            ..build
        };
        let status = build.run(&dir.path().join(n.to_string())).status;
        let (got, message, _) = failure(&status);
        assert_eq!(got, reason, "{what}: {message}");
        for word in words {
            assert!(message.contains(word), "{what}: {message:?} lacks {word:?}");
        }
    }
}

/// A misspelt field is refused with its line and the name meant, before anything runs.
#[test]
fn a_misspelt_field_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = [("Dockerfile", "FROM busybox\n")];
    let manifest = Build {
        name: "misspelt",
        files: &files,
        git_extra: "      revison: main\n",
        ..Build::default()
    }
    .manifest(dir.path());
    let e = local::build(&manifest, &options()).expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains(
            "build.yaml:10: unknown field `revison` in spec.source.git; did you mean `revision`?"
        ),
        "{text}"
    );
}

/// A plain-HTTP registry the runner was not told about fails at the first attempt with
/// the setting that fixes it, instead of six retries.
#[test]
fn a_plain_http_registry_reached_over_tls_names_the_setting() {
    let r = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let dockerfile = format!("FROM {r}/stagecoach/busybox:1\nRUN true\n");
    let files = [("Dockerfile", dockerfile.as_str())];
    let status = Build {
        name: "notls",
        files: &files,
        options: Some(LocalOptions {
            insecure_registries: Vec::new(),
            ..options()
        }),
        ..Build::default()
    }
    .run(dir.path())
    .status;
    let (reason, message, _) = failure(&status);
    assert_eq!(reason, "RegistryTransportMismatch", "{message}");
    assert!(
        message.contains(&format!("--insecure-registry {r}")) && !message.contains("attempts"),
        "{message}"
    );
}

/// `output.compression: Zstd`: the layers the build makes are zstd (the base's stay
/// gzip), the image runs under podman, and a stage's output crosses to the next stage
/// through a zstd layer.
#[test]
fn zstd_layers_are_pushed_and_the_image_runs() {
    let r = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\n\
         RUN mkdir /out && echo zstd > /out/hello\n\
         FROM build AS more\n\
         RUN cat /out/hello /out/hello > /out/twice\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=more /out/ /out/\n\
         RUN cat /out/hello /out/twice > /all\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let status = Build {
        name: "zstd",
        files: &files,
        output_extra: "    compression: Zstd\n",
        ..Build::default()
    }
    .run(dir.path())
    .status;
    let image = succeeded(&status);
    let layer_types = |image: &str| -> Vec<String> {
        let raw = check(tool("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]));
        let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest");
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["mediaType"].as_str().expect("a media type").to_string())
            .collect()
    };
    let types = layer_types(&image);
    let busybox = format!("{r}/stagecoach/busybox:1");
    let base_types = layer_types(&format!(
        "{r}/stagecoach/busybox@{}",
        platform_digest(&busybox, "amd64")
    ));
    let (base, built) = types.split_at(base_types.len().min(types.len()));
    assert_eq!(base, base_types, "the base's layers as they are");
    assert!(
        built.len() == 2
            && built
                .iter()
                .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    assert_eq!(cat(&image, "/all"), "zstd\nzstd\nzstd\n");
}

/// A canceled ImageBuild builds nothing: the runner starts no pod and reports Canceled.
#[test]
fn a_canceled_build_starts_no_pod_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = [("Dockerfile", "FROM busybox\nRUN false\n")];
    let result = Build {
        name: "canceled",
        files: &files,
        extra: "  cancel: true\n",
        ..Build::default()
    }
    .run(dir.path());
    assert_eq!(failure(&result.status).0, "Canceled");
    assert!(result.timings.is_empty(), "pods ran: {:?}", result.timings);
}

/// The stages whose pods ran in a build (the others came from the stage cache), and
/// the stage pods the runner saw start, which must be the same.
fn ran(result: &LocalResult) -> Vec<String> {
    let ran: Vec<String> = result
        .status
        .stages
        .iter()
        .filter(|s| !s.cached)
        .map(|s| s.name.clone())
        .collect();
    let started = result
        .timings
        .iter()
        .filter(|(pod, ..)| pod.contains("-stage-"))
        .count();
    assert_eq!(
        started,
        ran.len(),
        "stage pods started: {:?}",
        result.timings
    );
    ran
}

fn cat(image: &str, path: &str) -> String {
    let out = check(podman().args(["run", "--rm", "--tls-verify=false", image, "cat", path]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stage cache end to end, on a registry of its own (so no other run's entries
/// count, and a blob can be corrupted): a rebuild runs no stage pod and pushes the same
/// digest; a change runs exactly the stages that read it and their dependents; a
/// corrupt entry makes its stage run and the image is still right; an unreachable cache
/// only warns.
#[test]
fn the_stage_cache_runs_only_what_changed_and_never_gives_a_wrong_image() {
    let r = registry();
    let cache = RegistryServer::start(None);
    let dir = tempfile::tempdir().expect("tempdir");
    // The assets stage's base, on the cache's registry so that a new digest can be
    // pushed under its tag: the same image in another manifest format.
    let base = format!("{}/e2e/base:1", cache.addr);
    let copy_base = |format: &str| {
        check(tool("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            format,
            &format!("docker://{r}/stagecoach/busybox:1"),
            &format!("docker://{base}"),
        ]));
    };
    copy_base("oci");
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS deps\n\
         ARG LEVEL=1\n\
         COPY deps.txt /deps.txt\n\
         RUN echo \"level $LEVEL\" > /level && cat /deps.txt >> /level\n\
         FROM deps AS build\n\
         COPY main.txt /main.txt\n\
         RUN cat /level /main.txt > /app.txt\n\
         FROM {base} AS assets\n\
         COPY web/ /web/\n\
         RUN ls /web > /web.list\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=build /app.txt /app.txt\n\
         COPY --from=assets /web.list /web.list\n\
         COPY check.sh /check.sh\n\
         RUN sh /check.sh && cat /app.txt /web.list > /all.txt\n"
    );
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        (".dockerignore", "ignored.txt\n"),
        ("deps.txt", "deps 1\n"),
        ("main.txt", "main 1\n"),
        ("web/index.html", "<p>1</p>\n"),
        ("README.md", "not read by any stage\n"),
        ("ignored.txt", "excluded\n"),
        ("check.sh", "exit 0\n"),
    ];
    let build = Build {
        name: "cache",
        files: &files,
        registry: Some(cache.addr.clone()),
        ..Build::default()
    };
    let manifest = build.manifest(dir.path());
    let repo = dir.path().join("repo");
    let mut opts = options();
    opts.no_cache = false;
    opts.insecure_registries.push(cache.addr.clone());
    let run = || local::build(&manifest, &opts).expect("the runner runs");

    let first = run();
    let first_ref = succeeded(&first.status);
    assert_eq!(ran(&first), ["build", "assets", "stage-3"]);
    assert!(first.status.stages.iter().all(|s| s.cache_key.is_some()));

    let again = run();
    assert_eq!(
        ran(&again),
        Vec::<String>::new(),
        "an unchanged rebuild runs no stage pod"
    );
    assert_eq!(
        succeeded(&again.status),
        first_ref,
        "and pushes the same image"
    );

    commit(
        &repo,
        &[("README.md", "changed\n"), ("ignored.txt", "changed\n")],
        "unread",
    );
    assert_eq!(
        ran(&run()),
        Vec::<String>::new(),
        "files no stage reads change nothing"
    );

    commit(&repo, &[("main.txt", "main 2\n")], "main");
    let changed = run();
    assert_eq!(
        ran(&changed),
        ["build", "stage-3"],
        "what reads main.txt, and after"
    );
    let image = succeeded(&changed.status);
    assert_eq!(
        cat(&image, "/all.txt"),
        "level 1\ndeps 1\nmain 2\nindex.html\n"
    );

    // The assets entry's export, which the final stage copies from, goes bad.
    let assets = changed.status.stages.iter().find(|s| s.name == "assets");
    let key = assets
        .and_then(|s| s.cache_key.clone())
        .expect("assets key");
    let entry = check(tool("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/e2e/cache/cache:stage-{key}", cache.addr),
    ]));
    let entry: serde_json::Value = serde_json::from_slice(&entry.stdout).expect("manifest");
    let export = entry["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| {
            l["mediaType"]
                .as_str()
                .is_some_and(|t| t.contains("export"))
        })
        .and_then(|l| l["digest"].as_str())
        .expect("an export")
        .to_string();
    std::fs::write(cache.blob_path(&export), b"not the export").expect("corrupt");
    commit(&repo, &[("main.txt", "main 3\n")], "main again");
    let corrupt = run();
    assert_eq!(
        ran(&corrupt),
        ["build", "assets", "stage-3"],
        "the corrupt entry's stage runs"
    );
    let image = succeeded(&corrupt.status);
    assert_eq!(
        cat(&image, "/all.txt"),
        "level 1\ndeps 1\nmain 3\nindex.html\n"
    );

    // A build fails in its last stage, after the build stage ran: the fixed build
    // resumes from the failed stage.
    commit(
        &repo,
        &[("main.txt", "main 4\n"), ("check.sh", "exit 1\n")],
        "fails",
    );
    let failed = run();
    assert_eq!(failure(&failed.status).0, "StageFailed");
    assert_eq!(ran(&failed), ["build", "stage-3"]);
    commit(&repo, &[("check.sh", "exit 0\n")], "fixed");
    let fixed = run();
    assert_eq!(
        ran(&fixed),
        ["stage-3"],
        "only the stage that failed runs again"
    );
    let image = succeeded(&fixed.status);
    assert_eq!(
        cat(&image, "/all.txt"),
        "level 1\ndeps 1\nmain 4\nindex.html\n"
    );

    // A build arg the deps stage reads: its pod (deps runs fused into build's) and after.
    let yaml = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        format!("{yaml}  buildArgs:\n  - name: LEVEL\n    value: \"2\"\n"),
    )
    .expect("manifest");
    let arg = run();
    assert_eq!(
        ran(&arg),
        ["build", "stage-3"],
        "what reads LEVEL, and after"
    );
    let image = succeeded(&arg.status);
    assert_eq!(
        cat(&image, "/all.txt"),
        "level 2\ndeps 1\nmain 4\nindex.html\n"
    );

    // A new digest under the assets stage's base tag: the stages on it run.
    copy_base("v2s2");
    let rebased = run();
    assert_eq!(
        ran(&rebased),
        ["assets", "stage-3"],
        "what is built on the base"
    );
    assert_eq!(
        cat(&succeeded(&rebased.status), "/all.txt"),
        "level 2\ndeps 1\nmain 4\nindex.html\n"
    );

    // Two builds of one commit at once, sharing a cache: both succeed, equal images.
    let shared = format!(
        "  cache:\n    repository: {}/e2e/shared/cache\n",
        cache.addr
    );
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS one\n\
         RUN echo one > /one\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=one /one /one\n\
         RUN cat /one > /both\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let twin_a = Build {
        name: "twin-a",
        files: &files,
        extra: &shared,
        registry: Some(cache.addr.clone()),
        ..Build::default()
    }
    .manifest(&dir.path().join("twins"));
    let twin_b = dir.path().join("twins/twin-b.yaml");
    let yaml = std::fs::read_to_string(&twin_a).expect("manifest");
    let yaml = yaml
        .replace("name: twin-a", "name: twin-b")
        .replace("/e2e/twin-a:", "/e2e/twin-b:");
    std::fs::write(&twin_b, yaml).expect("manifest");
    let images: Vec<String> = std::thread::scope(|s| {
        let builds: Vec<_> = [&twin_a, &twin_b]
            .into_iter()
            .map(|manifest| {
                s.spawn(|| succeeded(&local::build(manifest, &opts).expect("runs").status))
            })
            .collect();
        builds
            .into_iter()
            .map(|b| b.join().expect("a build"))
            .collect()
    });
    let digests: Vec<&str> = images
        .iter()
        .map(|i| i.rsplit_once('@').expect("a digest").1)
        .collect();
    assert_eq!(digests[0], digests[1], "{images:?}");
    assert_ne!(images[0], images[1], "two repositories");

    // Pruning (what the chart's CronJob runs): nothing was stored an hour ago; a dry run
    // lists every entry and deletes none; then all go, and the next build runs it all.
    let settings = stagecoach_builder::oci::Settings {
        insecure: vec![cache.addr.clone()],
        ..Default::default()
    };
    let repository = format!("{}/e2e/cache/cache", cache.addr);
    let prune = |older_than: u64, dry_run: bool| {
        stagecoach_builder::cache::prune::prune(
            &settings,
            &repository,
            Duration::from_secs(older_than),
            dry_run,
        )
        .expect("prune")
    };
    let young = prune(3600, false);
    assert!(young.deleted.is_empty() && young.kept >= 3, "{young:?}");
    let dry = prune(0, true);
    assert_eq!((dry.deleted.len(), dry.kept), (young.kept, 0), "{dry:?}");
    let gone = prune(0, false);
    assert_eq!(gone.deleted, dry.deleted);
    assert_eq!(prune(0, true).deleted, Vec::<String>::new(), "all gone");
    assert_eq!(ran(&run()), ["build", "assets", "stage-3"], "cold again");

    // A cache that cannot be reached: the build goes on without it and says so.
    let unreachable = "  cache:\n    repository: 127.0.0.1:1/nowhere/cache\n";
    let dockerfile = format!("FROM {r}/stagecoach/busybox:1\nRUN echo hi > /hi\n");
    let files = [("Dockerfile", dockerfile.as_str())];
    let status = Build {
        name: "cache-down",
        files: &files,
        extra: unreachable,
        options: Some(LocalOptions {
            no_cache: false,
            ..options()
        }),
        ..Build::default()
    }
    .run(&dir.path().join("down"))
    .status;
    succeeded(&status);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "CacheUnavailable")
        .unwrap_or_else(|| panic!("a CacheUnavailable condition: {status:#?}"));
    assert!(
        condition.message.contains("127.0.0.1:1/nowhere/cache"),
        "{}",
        condition.message
    );
}

/// Waits until the stage container of `pod` runs, then removes the pod from outside the
/// runner at once, as a node that dies takes its pods.
fn remove_running_stage_pod(pod: &str) {
    let container = format!("{pod}-stage");
    for _ in 0..600 {
        let out =
            check(podman().args(["ps", "--filter", "status=running", "--format", "{{.Names}}"]));
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|n| n == container)
        {
            // At once: with the default 10 s grace the RUN (5 s) could finish first,
            // as the builder, the container's first process, ignores SIGTERM.
            check(podman().args(["pod", "rm", "--force", "--time", "0", pod]));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{container} did not run within a minute");
}

#[test]
fn a_stage_pod_removed_mid_run_is_retried_or_the_build_fails_podlost() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nRUN sleep 5 && echo built > /built\n\
         FROM {r}/stagecoach/busybox:1\nCOPY --from=build /built /\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, retries) in [("lostonce", 1), ("lostforgood", 0)] {
        let extra = format!("  retries: {retries}\n");
        let build = Build {
            name,
            files: &files,
            extra: &extra,
            ..Build::default()
        };
        let status = std::thread::scope(|scope| {
            let running = scope.spawn(|| build.run(&dir.path().join(name)).status);
            remove_running_stage_pod(&format!("{name}-stage-build-g1"));
            running.join().expect("the build")
        });
        let stage = status
            .stages
            .iter()
            .find(|s| s.name == "build")
            .expect("stage build");
        if retries == 0 {
            let (reason, message, _) = failure(&status);
            assert_eq!(reason, "PodLost", "{message}");
            continue;
        }
        let image = succeeded(&status);
        assert_eq!(stage.attempts, 1, "{status:#?}");
        assert_eq!(stage.pod.as_deref(), Some("lostonce-stage-build-g1-r1"));
        assert_eq!(cat(&image, "/built"), "built\n");
    }
}

/// Waits until a container named `name` runs (a pod of a build running in another thread).
fn wait_running(name: &str) {
    for _ in 0..1200 {
        let out =
            check(podman().args(["ps", "--filter", "status=running", "--format", "{{.Names}}"]));
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|n| n == name)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} did not run within two minutes");
}

/// The manifest PUTs a registry answered, from its log.
fn manifest_puts(server: &RegistryServer) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("response completed"))
        .filter(|l| l.contains("http.request.method=PUT") && l.contains("/manifests/"))
        .count()
}

#[test]
fn a_registry_down_during_the_push_is_waited_for_and_one_down_for_good_fails_the_build() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS build\nRUN sleep 2 && echo built > /built\n\
         FROM {r}/stagecoach/busybox:1\nCOPY --from=build /built /\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, comes_back) in [("pushwaits", true), ("pushfails", false)] {
        let mut server = RegistryServer::start(None);
        let build = Build {
            name,
            files: &files,
            registry: Some(server.addr.clone()),
            ..Build::default()
        };
        let status = std::thread::scope(|scope| {
            let running = scope.spawn(|| build.run(&dir.path().join(name)).status);
            // Down before the assemble pod pushes, back while it is retrying.
            wait_running(&format!("{name}-stage-build-g1-stage"));
            server.stop();
            if comes_back {
                wait_running(&format!("{name}-assemble-g1-assemble"));
                std::thread::sleep(Duration::from_secs(3));
                server.start_again();
            }
            running.join().expect("the build")
        });
        if comes_back {
            let image = succeeded(&status);
            assert_eq!(cat(&image, "/built"), "built\n");
            assert_eq!(manifest_puts(&server), 1, "the manifest is put once");
            continue;
        }
        let (reason, message, _) = failure(&status);
        assert_eq!(reason, "RegistryUnavailable", "{message}");
        server.start_again();
        assert_eq!(manifest_puts(&server), 0, "nothing is under the tag");
        let tag = tool("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                &format!("docker://{}", build.image()),
            ])
            .output()
            .expect("skopeo");
        assert!(!tag.status.success(), "the tag does not exist");
    }
}

/// Eight builds at once through one process: each image holds its own build's number,
/// so names, volumes or outcomes shared by mistake would show. The wall time and the
/// process's peak memory are printed for the record.
#[test]
fn eight_builds_at_once_all_succeed_without_cross_talk() {
    let r = registry();
    let dockerfiles: Vec<String> = (0..8)
        .map(|n| {
            format!(
                "FROM {r}/stagecoach/busybox:1 AS build\nRUN echo {n} > /n\n\
                 FROM {r}/stagecoach/busybox:1\nCOPY --from=build /n /n\nCOPY number /number\n"
            )
        })
        .collect();
    let numbers: Vec<String> = (0..8).map(|n| format!("{n}\n")).collect();
    let names: Vec<String> = (0..8).map(|n| format!("together{n}")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let images: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..8)
            .map(|n| {
                let (dockerfile, number, name) = (&dockerfiles[n], &numbers[n], &names[n]);
                let dir = dir.path().join(name);
                scope.spawn(move || {
                    let files = [
                        ("Dockerfile", dockerfile.as_str()),
                        ("number", number.as_str()),
                    ];
                    let build = Build {
                        name,
                        files: &files,
                        ..Build::default()
                    };
                    succeeded(&build.run(&dir).status)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|h| h.join().expect("a build"))
            .collect()
    });
    let wall = started.elapsed();
    for (n, image) in images.iter().enumerate() {
        assert_eq!(cat(image, "/n"), format!("{n}\n"), "{image}");
        assert_eq!(cat(image, "/number"), format!("{n}\n"), "{image}");
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!(
        "eight builds at once: {:.1} s wall, runner peak {peak}",
        wall.as_secs_f64()
    );
}

/// Everything a build leaves behind that a user or another tenant can read: the pushed
/// image's blobs (layers decompressed), the workspace volume, the pods' logs and the
/// status. Returns where `needle` was found.
fn found_in_build(
    status: &ImageBuildStatus,
    claim: &str,
    pod_prefix: &str,
    needle: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    let image = succeeded(status);
    let layout = Layout::from_registry(&image);
    let blobs = check(tool("sh").arg("-c").arg(format!(
        "for b in {}/blobs/sha256/*; do zcat -f \"$b\"; done | grep -caF '{needle}' || true",
        layout.dir.path().display()
    )));
    if String::from_utf8_lossy(&blobs.stdout).trim() != "0" {
        found.push("the image's blobs".to_string());
    }
    let volume = check(podman().args(["volume", "inspect", claim, "--format", "{{.Mountpoint}}"]));
    let mountpoint = String::from_utf8_lossy(&volume.stdout).trim().to_string();
    let grep = tool("grep")
        .args(["-rlaF", needle, &mountpoint])
        .output()
        .expect("grep");
    if !grep.stdout.is_empty() {
        found.push(format!(
            "the workspace: {}",
            String::from_utf8_lossy(&grep.stdout)
        ));
    }
    let pods = check(podman().args(["pod", "ps", "-q", "--filter", &format!("name={pod_prefix}")]));
    for pod in String::from_utf8_lossy(&pods.stdout).split_whitespace() {
        let logs = podman().args(["pod", "logs", pod]).output().expect("logs");
        if [&logs.stdout, &logs.stderr]
            .iter()
            .any(|o| String::from_utf8_lossy(o).contains(needle))
        {
            found.push(format!("the logs of pod {pod}"));
        }
    }
    if serde_json::to_string(status)
        .expect("status")
        .contains(needle)
    {
        found.push("the status".to_string());
    }
    found
}

/// Removes what a build run with `keep` left: its pods and its workspace volume.
fn remove_kept(claim: &str, pod_prefix: &str) {
    let pods = check(podman().args(["pod", "ps", "-q", "--filter", &format!("name={pod_prefix}")]));
    for pod in String::from_utf8_lossy(&pods.stdout).split_whitespace() {
        let _ = podman().args(["pod", "rm", "-f", pod]).output();
    }
    let _ = podman().args(["volume", "rm", "-f", claim]).output();
}

/// `RUN --mount=type=secret` end to end: the value is at BuildKit's default target (and
/// in `env=` where asked) for the RUN that mounts it, gone for the next RUN, absent from
/// a stage pod that mounts no secret, and, with its base64 form, in no pushed layer,
/// nowhere on the workspace, in no log and not in the status; a required secret the
/// build does not give fails the build at its line.
#[test]
fn a_build_secret_reaches_only_the_run_that_mounts_it_and_is_stored_nowhere() {
    const VALUE: &str = "npm-token-Zq81xVw3";
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS deps\n\
         RUN --mount=type=secret,id=npm test \"$(cat /run/secrets/npm)\" = \"$(printf npm-token-Zq81x; printf Vw3)\" && stat -c '%a %u' /run/secrets/npm > /mode\n\
         RUN --mount=type=secret,id=npm,env=NPM_TOKEN,target=/root/.npmrc test \"$NPM_TOKEN\" = \"$(cat /root/.npmrc)\" && echo env-and-file > /both\n\
         RUN test ! -e /run/secrets/npm && test ! -e /root/.npmrc && test -z \"$NPM_TOKEN\" && echo gone > /after\n\
         RUN --mount=type=secret,id=absent echo optional > /optional\n\
         FROM {r}/stagecoach/busybox:1 AS other\n\
         RUN (ls -A /var/run/secrets/stagecoach 2>/dev/null; ls -A /run/secrets 2>/dev/null) | wc -l > /visible\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=deps /mode /both /after /optional /\n\
         COPY --from=other /visible /\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let npm = secret_dir(&dir.path().join("npm"), &[("token", VALUE)]);
    let result = Build {
        name: "secret-mounts",
        files: &files,
        extra: "  secrets:\n  - {id: npm, secretRef: {name: npm-secret, key: token}}\n",
        secrets: BTreeMap::from([("npm-secret".to_string(), npm.clone())]),
        options: Some(LocalOptions {
            keep: true,
            ..options()
        }),
        ..Build::default()
    }
    .run(dir.path());
    let claim = "secret-mounts-workspace";
    let base64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
    let leaks: Vec<String> = [VALUE, base64.as_str()]
        .iter()
        .flat_map(|needle| found_in_build(&result.status, claim, "secret-mounts-", needle))
        .collect();
    remove_kept(claim, "secret-mounts-");
    assert!(leaks.is_empty(), "the secret was found in {leaks:?}");
    let image = succeeded(&result.status);
    assert_eq!(cat(&image, "/mode"), "400 0\n");
    assert_eq!(cat(&image, "/both"), "env-and-file\n");
    assert_eq!(cat(&image, "/after"), "gone\n");
    assert_eq!(cat(&image, "/optional"), "optional\n");
    assert_eq!(
        cat(&image, "/visible").trim(),
        "0",
        "a stage that mounts no secret sees none"
    );
    let deps = result
        .status
        .stages
        .iter()
        .find(|s| s.name == "deps")
        .expect("deps");
    assert_eq!(deps.secrets, ["absent", "npm"]);

    let required = format!(
        "FROM {r}/stagecoach/busybox:1\nRUN --mount=type=secret,id=npm,required=true true\n"
    );
    let files = [("Dockerfile", required.as_str())];
    let status = Build {
        name: "secret-required",
        files: &files,
        ..Build::default()
    }
    .run(&dir.path().join("required"))
    .status;
    let (reason, message, line) = failure(&status);
    assert_eq!(
        (reason.as_str(), line),
        ("StageFailed", Some(2)),
        "{message}"
    );
    assert!(message.contains("secret \"npm\" is required"), "{message}");
}

/// Runs two builds at once on their own threads.
fn both_at_once(a: Build<'_>, b: Build<'_>, dir: &Path) -> (LocalResult, LocalResult) {
    std::thread::scope(|s| {
        let first = s.spawn(|| a.run(&dir.join("a")));
        let second = s.spawn(|| b.run(&dir.join("b")));
        (first.join().expect("a"), second.join().expect("b"))
    })
}

/// `RUN --mount=type=cache` persists across builds on the run cache volume: a second
/// build (another commit) finds what the first one's RUN left, and none of it is in a
/// layer; `sharing=locked` serialises two builds' RUNs (their timestamps do not
/// overlap, and neither saw the other's marker), `sharing=private` gives each of two
/// concurrent RUNs a directory of its own.
#[test]
fn run_caches_outlive_builds_and_share_as_buildkit_says() {
    let r = registry();
    let volume = format!("e2e-run-cache-{}", std::process::id());
    let _ = podman().args(["volume", "rm", "-f", &volume]).output();
    let with_cache = LocalOptions {
        run_cache_volume: Some(volume.clone()),
        ..options()
    };
    let dir = tempfile::tempdir().expect("tempdir");

    let fill = |n: &str| {
        format!(
            "FROM {r}/stagecoach/busybox:1\n\
             RUN --mount=type=cache,target=/root/.cache/deps (cat /root/.cache/deps/first 2>/dev/null || echo none) > /seen && echo {n} > /root/.cache/deps/first-{n} && [ -e /root/.cache/deps/first ] || echo {n} > /root/.cache/deps/first\n\
             RUN ls -A /root/.cache/deps 2>/dev/null | wc -l > /left-in-image\n"
        )
    };
    let (one, two) = (fill("one"), fill("two"));
    let first = Build {
        name: "run-cache-1",
        files: &[("Dockerfile", one.as_str())],
        options: Some(with_cache.clone()),
        ..Build::default()
    }
    .run(&dir.path().join("1"));
    let first = succeeded(&first.status);
    assert_eq!(cat(&first, "/seen"), "none\n");
    assert_eq!(
        cat(&first, "/left-in-image").trim(),
        "0",
        "the cache is no layer"
    );
    let second = Build {
        name: "run-cache-2",
        files: &[("Dockerfile", two.as_str())],
        options: Some(with_cache.clone()),
        ..Build::default()
    }
    .run(&dir.path().join("2"));
    let second = succeeded(&second.status);
    assert_eq!(
        cat(&second, "/seen"),
        "one\n",
        "the second build found the first's cache"
    );
    let layout = Layout::from_registry(&second);
    let rootfs = layout.unpack();
    let paths = stagecoach_e2e::rootfs::tree(&rootfs.path().join("b/rootfs"));
    assert!(
        !paths.keys().any(|p| p.contains("first")),
        "no cache file in the image: {:?}",
        paths
            .keys()
            .filter(|p| p.contains(".cache"))
            .collect::<Vec<_>>()
    );

    // A new cache is seeded from another stage's directory (`from`, `source`), or file.
    let seeded = format!(
        "FROM {r}/stagecoach/busybox:1 AS seed\n\
         RUN mkdir -p /seed/sub && echo dir-seed > /seed/sub/a && echo file-seed > /seed/one\n\
         FROM {r}/stagecoach/busybox:1\n\
         RUN --mount=type=cache,id=seeded,target=/s,from=seed,source=/seed cat /s/sub/a > /from-dir\n\
         RUN --mount=type=cache,id=seeded-file,target=/f,from=seed,source=/seed/one cat /f/one > /from-file\n"
    );
    let seeded = Build {
        name: "run-cache-seeded",
        files: &[("Dockerfile", seeded.as_str())],
        options: Some(with_cache.clone()),
        ..Build::default()
    }
    .run(&dir.path().join("seeded"));
    let seeded = succeeded(&seeded.status);
    assert_eq!(cat(&seeded, "/from-dir"), "dir-seed\n");
    assert_eq!(cat(&seeded, "/from-file"), "file-seed\n");

    // Two builds at once: a private RUN each (own directory), then a locked RUN each.
    let concurrent = |n: &str| {
        format!(
            "FROM {r}/stagecoach/busybox:1\n\
             RUN --mount=type=cache,id=mine,target=/p,sharing=private echo {n} > /p/who && sleep 3 && test \"$(cat /p/who)\" = {n} && echo own > /private\n\
             RUN --mount=type=cache,id=one-at-a-time,target=/l,sharing=locked cut -d' ' -f1 /proc/uptime > /start && test ! -e /l/busy && touch /l/busy && sleep 3 && rm /l/busy && cut -d' ' -f1 /proc/uptime > /end\n"
        )
    };
    let (a, b) = (concurrent("a"), concurrent("b"));
    let (ra, rb) = both_at_once(
        Build {
            name: "run-cache-a",
            files: &[("Dockerfile", a.as_str())],
            options: Some(with_cache.clone()),
            ..Build::default()
        },
        Build {
            name: "run-cache-b",
            files: &[("Dockerfile", b.as_str())],
            options: Some(with_cache.clone()),
            ..Build::default()
        },
        dir.path(),
    );
    let _ = podman().args(["volume", "rm", "-f", &volume]).output();
    let (ia, ib) = (succeeded(&ra.status), succeeded(&rb.status));
    // The host's uptime: one clock for every container.
    let span = |image: &str| -> (f64, f64) {
        let n = |p| cat(image, p).trim().parse::<f64>().expect("timestamp");
        (n("/start"), n("/end"))
    };
    let ((sa, ea), (sb, eb)) = (span(&ia), span(&ib));
    eprintln!("locked RUNs: a {sa}..{ea}, b {sb}..{eb}");
    assert!(
        ea <= sb || eb <= sa,
        "locked RUNs overlapped: a {sa}..{ea}, b {sb}..{eb}"
    );
    assert_eq!(cat(&ia, "/private"), "own\n");
    assert_eq!(cat(&ib, "/private"), "own\n");
}

/// `RUN --mount=type=ssh` end to end: a RUN clones a private repository from a loopback
/// sshd through the agent (`SSH_AUTH_SOCK` set for that RUN only), checking the host
/// key against the Secret's `known_hosts` (put where OpenSSH reads it, for that RUN
/// only); the key is served by
/// the agent container, so no RUN can find it anywhere in its filesystem, and it is in
/// no pushed blob, nowhere on the workspace, in no log and not in the status.
#[test]
fn an_ssh_mount_clones_through_the_agent_and_the_key_is_nowhere() {
    let r = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SshServer::start(&dir.path().join("sshd"));
    let private = dir.path().join("private");
    std::fs::create_dir_all(&private).expect("repo dir");
    git(&private, &["init", "--quiet", "--initial-branch=main"]);
    commit(
        &private,
        &[("dep.txt", "from the private repository\n")],
        "dep",
    );
    // A line of the key's body, split so that the Dockerfile does not hold it.
    let key = std::fs::read_to_string(server.secret.join("ssh-privatekey")).expect("key");
    let needle = key.lines().nth(2).expect("a key line").to_string();
    let (a, b) = needle.split_at(needle.len() / 2);
    let dockerfile = format!(
        "FROM {r}/stagecoach/git-ssh:1 AS deps\n\
         RUN --mount=type=ssh git clone -q {url} /src && test -S \"$SSH_AUTH_SOCK\" && \
             echo \"$SSH_AUTH_SOCK\" > /sock\n\
         RUN test ! -e /etc/ssh/ssh_known_hosts && echo gone > /known-hosts-after\n\
         RUN n=\"{a}\"\"{b}\"; test -z \"$SSH_AUTH_SOCK\" && \
             for d in /*; do case $d in /proc|/sys|/dev) ;; *) \
               if grep -rlsF \"$n\" \"$d\"; then echo \"the key is readable\"; exit 1; fi;; esac; done && \
             echo searched > /searched\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=deps /src/dep.txt /sock /searched /known-hosts-after /\n",
        url = server.url(&private),
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let result = Build {
        name: "ssh-mount",
        files: &files,
        extra: "  ssh:\n  - secretRef: {name: git-key}\n",
        secrets: BTreeMap::from([("git-key".to_string(), server.secret.clone())]),
        options: Some(LocalOptions {
            keep: true,
            ..options()
        }),
        ..Build::default()
    }
    .run(&dir.path().join("build"));
    let claim = "ssh-mount-workspace";
    let leaks = if result.status.phase == Some(Phase::Succeeded) {
        found_in_build(&result.status, claim, "ssh-mount-", &needle)
    } else {
        let agent = podman()
            .args(["logs", "ssh-mount-stage-deps-g1-ssh-agent"])
            .output()
            .expect("podman logs");
        eprintln!(
            "the agent's log:\n{}",
            String::from_utf8_lossy(&agent.stderr)
        );
        Vec::new()
    };
    remove_kept(claim, "ssh-mount-");
    let image = succeeded(&result.status);
    assert!(leaks.is_empty(), "the key was found in {leaks:?}");
    assert_eq!(cat(&image, "/dep.txt"), "from the private repository\n");
    assert_eq!(cat(&image, "/sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(cat(&image, "/searched"), "searched\n");
    assert_eq!(
        cat(&image, "/known-hosts-after"),
        "gone\n",
        "known hosts for that RUN only"
    );
}

/// Every RUN mount type leaves the same files as buildah leaves: the target goes, its
/// parents stay, and nothing a mount held is in the image. Two buildah 1.28 quirks are
/// not followed, so the targets here avoid them: it leaves the mount points it made
/// under `/var` (only there), and a cache mounted over an existing directory deletes that
/// directory from the image (containers/buildah#4927; ours puts it back, as BuildKit).
#[test]
fn run_mounts_leave_the_files_buildah_leaves() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1\n\
         RUN --mount=type=tmpfs,target=/srv/scratch/deep echo t > /srv/scratch/deep/x\n\
         RUN --mount=type=cache,id=compare,target=/root/.cache/tool echo c > /root/.cache/tool/x && echo cached > /cache-ran\n\
         RUN --mount=type=cache,target=/opt/cache/apt,sharing=locked,mode=0700 ls /opt/cache/apt > /dev/null\n\
         RUN --mount=type=secret,id=tok,target=/opt/app/.npmrc test -s /opt/app/.npmrc && echo s > /secret-ran\n\
         RUN --mount=type=secret,id=tok,required=true test -s /run/secrets/tok\n\
         RUN --mount=type=bind,target=/mnt/ctx test -f /mnt/ctx/Dockerfile\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = secret_dir(&dir.path().join("tok"), &[("value", "t0ken")]);
    let status = Build {
        name: "mounts-vs-buildah",
        files: &files,
        extra: "  secrets:\n  - {id: tok, secretRef: {name: tok, key: value}}\n",
        secrets: BTreeMap::from([("tok".to_string(), tok.clone())]),
        ..Build::default()
    }
    .run(dir.path())
    .status;
    let image = succeeded(&status);
    let secret = format!("id=tok,src={}", tok.join("value").display());
    assert_same_as_buildah_with(
        &image,
        &files,
        &[],
        None,
        &["--secret".to_string(), secret],
        "localhost/e2e/mounts-vs-buildah:buildah",
    );
}

/// A build whose context is an OCI artifact (`spec.source.oci`): the source pod pulls it
/// by digest and checks every blob; a tampered blob or a missing artifact fails the
/// build with a reason of its own, and nothing is pushed.
#[test]
fn a_context_artifact_is_checked_and_a_tampered_or_missing_one_fails_the_build() {
    use stagecoach_builder::oci;
    use stagecoach_builder::source::artifact;

    let store = RegistryServer::start(None);
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("ctx");
    std::fs::create_dir_all(&context).expect("ctx");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {}/stagecoach/runtime:1\nCOPY a.txt /a.txt\nCMD [\"cat\", \"/a.txt\"]\n",
            registry()
        ),
    )
    .expect("Dockerfile");
    std::fs::write(context.join("a.txt"), "from the artifact\n").expect("a.txt");
    let packed = artifact::pack(
        &context,
        Some("Dockerfile"),
        Some(1_700_000_000),
        &work.path().join("ctx.tar.gz"),
    )
    .expect("pack");
    let settings = oci::Settings {
        insecure: vec![store.addr.clone()],
        ..oci::Settings::default()
    };
    let reference = oci::runtime()
        .expect("runtime")
        .block_on(async {
            let registry = oci::Registry::new(&settings).expect("client");
            artifact::push(&registry, &format!("{}/e2e/ctx", store.addr), &packed).await
        })
        .expect("push");
    assert!(reference.ends_with(&packed.manifest_digest), "{reference}");

    let build = |name: &str, image: &str, context: &str| {
        let manifest = work.path().join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}}}\n\
                 spec:\n  source: {{oci: {{image: '{context}'}}}}\n\
                 \x20 output: {{image: '{image}', insecureRegistry: true}}\n",
            ),
        )
        .expect("manifest");
        let mut opts = options();
        opts.insecure_registries.push(store.addr.clone());
        local::build(&manifest, &opts).expect("runs")
    };
    let image = format!("{}/e2e/from-artifact:1", registry());
    let result = build("from-artifact", &image, &reference);
    let pushed = succeeded(&result.status);
    let source = result.status.source.clone().expect("source");
    assert_eq!(
        source.commit.as_deref(),
        Some(packed.manifest_digest.as_str())
    );
    assert_eq!(
        source.commit_time,
        Some(1_700_000_000),
        "the artifact's date"
    );
    let out = check(podman().args(["run", "--rm", "--tls-verify=false", &pushed]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the artifact\n");

    // The layer's bytes changed in the registry's storage behind its digest.
    let blob = store.blob_path(&packed.layer_digest);
    let mut bytes = std::fs::read(&blob).expect("the stored layer");
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).expect("tampered");
    let tampered = format!("{}/e2e/tampered:1", registry());
    let result = build("tampered", &tampered, &reference);
    let (reason, message, _) = failure(&result.status);
    assert_eq!(reason, "ContextArtifactInvalid", "{message}");
    assert!(message.contains(&packed.layer_digest), "{message}");

    let missing = format!("{}/e2e/ctx@sha256:{}", store.addr, "0".repeat(64));
    let result = build("missing", &tampered, &missing);
    let (reason, message, _) = failure(&result.status);
    assert_eq!(reason, "ContextNotFound", "{message}");
    let manifest = tool("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{tampered}"))
        .output()
        .expect("skopeo runs");
    assert!(
        !manifest.status.success()
            && String::from_utf8_lossy(&manifest.stderr).contains("manifest unknown"),
        "nothing is pushed from a bad context: {}",
        String::from_utf8_lossy(&manifest.stderr)
    );
}

/// A file over gix's 16 MiB reduced-trust limit, committed and not packed (a loose
/// object), in a repository the source pod reads from a mount owned by another user.
#[test]
fn a_large_loose_object_of_a_mounted_repository_is_checked_out() {
    let big = "x".repeat(20 << 20);
    let dockerfile = format!(
        "FROM {}/stagecoach/busybox:1\nCOPY big /big\nRUN test \"$(wc -c < /big)\" = {}\n",
        registry(),
        big.len()
    );
    let files = [("Dockerfile", dockerfile.as_str()), ("big", big.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Build {
        name: "large-object",
        files: &files,
        ..Build::default()
    };
    succeeded(&b.run(dir.path()).status);
}

/// A build for linux/arm64 on this amd64 machine: TARGET* are arm64's, BUILDPLATFORM
/// stays amd64 and a `FROM --platform=$BUILDPLATFORM` stage runs natively (BuildKit's
/// rule), the runtime stage's base is pinned to its arm64 image and its RUN runs under
/// qemu. The image is an arm64 image, and equals `buildah bud --platform linux/arm64`
/// file by file, on a Dockerfile whose build stage does not print where it ran:
/// buildah 1.28 runs such a stage on the target platform's image instead.
#[test]
fn a_build_for_arm64_runs_its_target_stages_under_emulation_as_buildah_does() {
    let r = registry();
    let dockerfile = |build_run: &str| {
        format!(
            "FROM --platform=$BUILDPLATFORM {r}/stagecoach/busybox:1 AS gen\n\
             ARG TARGETARCH BUILDARCH\n\
             RUN {build_run} > /arch\n\
             FROM {r}/stagecoach/busybox:1\n\
             COPY --from=gen /arch /arch\n\
             RUN uname -m > /machine\n\
             CMD [\"cat\", \"/arch\", \"/machine\"]\n"
        )
    };
    let build = |name: &str, dockerfile: &str| {
        let files = [("Dockerfile", dockerfile)];
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Build {
            name,
            files: &files,
            extra: "  platforms: [linux/arm64]\n",
            ..Build::default()
        };
        succeeded(&b.run(dir.path()).status)
    };
    let native = build(
        "arm64-native",
        &dockerfile("echo \"$TARGETARCH from $BUILDARCH on $(uname -m)\""),
    );
    let config = Layout::from_registry(&native).config();
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(
        run_on("linux/arm64", &native),
        "arm64 from amd64 on x86_64\naarch64\n"
    );

    let compared = dockerfile("echo \"$TARGETARCH from $BUILDARCH\"");
    let image = build("arm64", &compared);
    assert_same_as_buildah_with(
        &image,
        &[("Dockerfile", compared.as_str())],
        &[],
        None,
        &["--platform".to_string(), "linux/arm64".to_string()],
        "localhost/stagecoach-e2e/arm64:buildah",
    );
}

/// A build for linux/amd64 and linux/arm64 at once. The stage that reads no TARGET value
/// runs in one pod for both, the cross stage (on the build platform) and the runtime
/// stage (on each platform's base, arm64's under qemu) in a pod per platform. The tag
/// names an image index; each platform's image runs, and equals buildah's image of that
/// platform (`buildah bud --platform linux/amd64,linux/arm64 --manifest`) file by file
/// and config by config. Built again with the stage cache, no stage pod runs: a shared
/// stage has one key in both platforms' plans.
#[test]
fn a_build_for_two_platforms_shares_what_it_can_and_pushes_an_index_equal_to_buildahs() {
    let r = registry();
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {r}/stagecoach/busybox:1 AS assets\n\
         RUN echo shared > /assets\n\
         FROM --platform=$BUILDPLATFORM {r}/stagecoach/busybox:1 AS gen\n\
         ARG TARGETARCH BUILDARCH\n\
         RUN echo \"$TARGETARCH from $BUILDARCH\" > /arch\n\
         FROM {r}/stagecoach/busybox:1\n\
         COPY --from=assets /assets /assets\n\
         COPY --from=gen /arch /arch\n\
         RUN uname -m > /machine\n\
         CMD [\"cat\", \"/assets\", \"/arch\", \"/machine\"]\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    // A repository of its own: no earlier run's entries decide what runs.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let cache_repository = format!("{r}/e2e/two-platforms-cache-{nanos:x}");
    let cached = LocalOptions {
        no_cache: false,
        cache_repository: Some(cache_repository),
        ..options()
    };
    let b = Build {
        name: "two-platforms",
        files: &files,
        extra: "  platforms: [linux/amd64, linux/arm64]\n",
        ..Build::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = b.manifest(dir.path());
    let run = || local::build(&manifest, &cached).expect("the runner runs");
    let status = run().status;
    let image = succeeded(&status);
    let pods: Vec<(&str, Option<&str>, Option<&str>, bool)> = status
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.platform.as_deref(),
                s.runs_on.as_deref(),
                s.cached,
            )
        })
        .collect();
    let (amd, arm) = (Some("linux/amd64"), Some("linux/arm64"));
    assert_eq!(
        pods,
        [
            ("assets", None, amd, false),
            ("gen@linux/amd64", amd, amd, false),
            ("stage-2@linux/amd64", amd, amd, false),
            ("gen@linux/arm64", arm, amd, false),
            ("stage-2@linux/arm64", arm, arm, false),
        ]
    );
    let mut pod_names: Vec<&str> = status
        .stages
        .iter()
        .filter_map(|s| s.pod.as_deref())
        .collect();
    pod_names.dedup();
    assert_eq!(pod_names.len(), 5, "a pod each: {pod_names:?}");
    let pushed = status.image.clone().expect("image");
    let platforms: Vec<&str> = pushed
        .platforms
        .iter()
        .map(|p| p.platform.as_str())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(
        Layout::index_from_registry(&image).platforms(),
        ["linux/amd64", "linux/arm64"]
    );
    for (platform, arch, machine) in [
        ("linux/amd64", "amd64", "x86_64"),
        ("linux/arm64", "arm64", "aarch64"),
    ] {
        assert_eq!(
            run_on(platform, &image),
            format!("shared\n{arch} from amd64\n{machine}\n")
        );
    }

    let context = tempfile::tempdir().expect("tempdir");
    std::fs::write(context.path().join("Dockerfile"), &dockerfile).expect("write");
    let list = "localhost/stagecoach-e2e/two-platforms:list";
    let tag = "localhost/stagecoach-e2e/two-platforms:buildah";
    let extra = [
        "--platform".to_string(),
        "linux/amd64,linux/arm64".to_string(),
        "--manifest".to_string(),
        list.to_string(),
    ];
    buildah_bud_with(
        &context.path().join("Dockerfile"),
        context.path(),
        None,
        &[],
        &extra,
        tag,
    );
    for arch in ["amd64", "arm64"] {
        let ours = Layout::index_from_registry(&image);
        ours.select_platform(arch);
        let theirs = Layout::from_buildah_manifest(list);
        theirs.select_platform(arch);
        let diffs = differences(
            &ours.unpack().path().join("b/rootfs"),
            &theirs.unpack().path().join("b/rootfs"),
        );
        assert!(
            diffs.is_empty(),
            "{arch}: differs from buildah:\n{}",
            diffs.join("\n")
        );
        assert_eq!(
            dockerfile_config(&ours.config()),
            dockerfile_config(&theirs.config()),
            "{arch}: config differs from buildah's"
        );
    }
    let _ = tool("buildah").args(["manifest", "rm", list]).output();
    let _ = tool("buildah").args(["rmi", "-f", tag]).output();

    let status = run().status;
    assert_eq!(succeeded(&status), image, "the same index again");
    assert!(
        status.stages.iter().all(|s| s.cached),
        "{:#?}",
        status.stages
    );
}

/// One platform's RUN fails: the build fails naming the stage, its platform and the
/// line, and nothing is under the tag (the index is pushed last).
#[test]
fn a_failure_on_one_platform_names_it_and_pushes_no_index() {
    let r = registry();
    let dockerfile = format!(
        "FROM {r}/stagecoach/busybox:1 AS check\n\
         RUN echo checking\n\
         RUN test \"$(uname -m)\" != aarch64\n\
         FROM scratch\nCOPY --from=check /bin/busybox /busybox\n"
    );
    let files = [("Dockerfile", dockerfile.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Build {
        name: "two-platforms-failing",
        files: &files,
        extra: "  platforms: [linux/amd64, linux/arm64]\n",
        ..Build::default()
    };
    let status = b.run(dir.path()).status;
    let (reason, message, line) = failure(&status);
    assert_eq!((reason.as_str(), line), ("StageFailed", Some(3)));
    assert!(
        message.starts_with("stage check (linux/arm64): Dockerfile:3: RUN test"),
        "{message}"
    );
    let out = tool("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", b.image()))
        .output()
        .expect("skopeo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("manifest unknown"),
        "nothing is under the tag: {stderr}"
    );
}

/// A chain from scratch, shared by both platforms (no base image says a platform, no
/// TARGET value is read): each platform's image still says its own platform, and holds
/// the same files.
#[test]
fn a_scratch_image_for_two_platforms_says_each_platform() {
    let files = [
        (
            "Dockerfile",
            "FROM scratch AS files\nCOPY a.txt /a.txt\nFROM files\nCOPY b.txt /b.txt\n",
        ),
        ("a.txt", "a\n"),
        ("b.txt", "b\n"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Build {
        name: "two-platforms-scratch",
        files: &files,
        extra: "  platforms: [linux/amd64, linux/arm64]\n",
        ..Build::default()
    };
    let status = b.run(dir.path()).status;
    let image = succeeded(&status);
    let names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["files"], "the scratch stage runs once");
    for arch in ["amd64", "arm64"] {
        let layout = Layout::index_from_registry(&image);
        layout.select_platform(arch);
        assert_eq!(layout.config()["architecture"], arch);
        let root = layout.unpack();
        let read = |f: &str| std::fs::read_to_string(root.path().join("b/rootfs").join(f));
        assert_eq!(
            (read("a.txt").ok(), read("b.txt").ok()),
            (Some("a\n".into()), Some("b\n".into()))
        );
    }
}
