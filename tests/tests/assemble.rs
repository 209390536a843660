//! The assemble pod for real: images assembled from a workspace and pushed to real
//! registries (the local one, one with htpasswd auth, one behind a failing proxy), then
//! inspected with skopeo, run with podman and unpacked with umoci.
//!
//! The workspaces are made here the way the earlier pods would leave them: the plan,
//! the context, and a build stage's `export.tar` from a directory (or from buildah's
//! build of that stage), so no stage pod has to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stagecoach_builder::assemble::{self, AssembleOptions, AssembleReport, MediaTypes};
use stagecoach_builder::exec::export;
use stagecoach_builder::oci::{self as builder_registry, RetryPolicy, Settings};
use stagecoach_builder::workspace::{LayerRecord, Workspace, read_json, write_json};
use stagecoach_e2e::podman::{check, platform_digest, podman, registry, tool};
use stagecoach_e2e::registry::{Fault, Proxy, RegistryServer, auth_file};
use stagecoach_e2e::rootfs::{Layout, buildah_bud, differences};
use stagecoach_plan::contract::{Execution, Plan};
use stagecoach_plan::{PlanOptions, plan};

const EPOCH: i64 = 1_700_000_000;

fn image(name: &str) -> String {
    format!("{}/stagecoach/{name}", registry())
}

/// A workspace as the source pod and the stage pods would leave it.
struct Build {
    dir: tempfile::TempDir,
    plan: Plan,
}

impl Build {
    fn new(dockerfile: &str, context: &[(&str, &str)]) -> Build {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(dockerfile, &PlanOptions::default()).expect("plans");
        let build = Build { dir, plan };
        let ws = build.workspace();
        std::fs::write(ws.plan(), build.plan.to_json()).expect("plan");
        std::fs::create_dir_all(ws.source()).expect("source");
        for (path, content) in context {
            let file = ws.source().join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, content).expect("context file");
        }
        build
    }

    fn workspace(&self) -> Workspace {
        Workspace::new(self.dir.path())
    }

    /// Writes a stage's export from a directory standing for its filesystem.
    fn export_from(&self, stage: &str, root: &Path) {
        let exports = &self.plan.stage(stage).expect("stage").exports;
        export::write(root, exports, &[], &self.workspace().export(stage)).expect("export");
    }

    fn options(&self, image: &str) -> AssembleOptions {
        let workspace = self.workspace();
        AssembleOptions {
            context: workspace.source(),
            workspace,
            pod: "assemble".into(),
            image: image.into(),
            tags: Vec::new(),
            source_url: None,
            revision: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            source_date_epoch: Some(EPOCH),
            media_types: MediaTypes::Oci,
            compression: stagecoach_builder::layer::Compression::Gzip,
            registry: Settings {
                auth_file: None,
                insecure: vec![registry()],
                retry: RetryPolicy {
                    attempts: 6,
                    first_delay: Duration::from_millis(50),
                    max_delay: Duration::from_secs(2),
                },
            },
            jobs: 3,
            cache: None,
            cache_only: false,
        }
    }
}

/// A repository no earlier run pushed to (counts of pushed blobs depend on it).
fn fresh(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    format!("e2e/{name}-{nanos:x}")
}

fn assembled(opts: &AssembleOptions) -> AssembleReport {
    let report = assemble::run(opts);
    assert!(report.succeeded, "assemble failed: {:?}", report.error);
    report
}

/// The usual shape: a build stage makes a program, the runtime stage only copies it.
fn hello_build() -> Build {
    let build = Build::new(
        &format!(
            "FROM {} AS build\nRUN mkdir /out && echo built > /out/hello\n\
             FROM {}\nENV GREETING=stagecoach\nCOPY --from=build /out/hello /usr/local/bin/hello\n\
             LABEL org.example.team=builders\nWORKDIR /srv\nEXPOSE 8080\nUSER app\nCMD [\"hello\"]\n",
            image("busybox:1"),
            image("runtime:1")
        ),
        &[],
    );
    assert_eq!(
        build
            .plan
            .stage(&build.plan.target)
            .expect("target")
            .execution,
        Execution::Assemble,
        "the runtime stage needs no pod"
    );
    let root = build.dir.path().join("build-root");
    std::fs::create_dir_all(root.join("out")).expect("mkdir");
    std::fs::write(
        root.join("out/hello"),
        "#!/bin/sh\necho \"hello from $GREETING\"\n",
    )
    .expect("program");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        root.join("out/hello"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    build.export_from("build", &root);
    build
}

fn inspect(reference: &str, config: bool) -> serde_json::Value {
    let mut cmd = tool("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if config {
        cmd.arg("--config");
    }
    let out = check(cmd.arg(format!("docker://{reference}")));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn raw_manifest(reference: &str) -> serde_json::Value {
    let out = check(tool("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The layers of the target stage that assemble wrote to the workspace.
fn target_layers(build: &Build) -> Vec<(PathBuf, String)> {
    let ws = build.workspace();
    let records: Vec<LayerRecord> = read_json(&ws.layer_index(&build.plan.target)).expect("index");
    records
        .into_iter()
        .map(|r| (ws.layers_dir(&build.plan.target).join(r.file), r.diff_id))
        .collect()
}

#[test]
fn copy_only_stage_is_pushed_inspected_run_and_unpacked() {
    let build = hello_build();
    let repository = format!("{}/{}", registry(), fresh("assemble-hello"));
    let target = format!("{repository}:1");
    let mut opts = build.options(&target);
    opts.tags = vec!["extra".into()];
    opts.source_url = Some("https://git.example/team/hello".into());
    opts.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
    let report = assembled(&opts);

    // Base layers are mounted from the base's repository; the two new layers (COPY and
    // WORKDIR) and the config are uploaded.
    let runtime = image("runtime:1");
    let base = raw_manifest(&format!(
        "{}@{}",
        runtime.trim_end_matches(":1"),
        platform_digest(&runtime, "amd64")
    ));
    let base_layers = base["layers"].as_array().expect("layers").len();
    assert_eq!(report.layers, base_layers + 2);
    assert_eq!(report.blobs.mounted, base_layers, "{report:?}");
    assert_eq!(report.blobs.pushed, 3, "{report:?}");
    let digest = report.digest.clone().expect("digest");
    assert_eq!(
        report.image.as_deref(),
        Some(format!("{target}@{digest}").as_str())
    );

    // The report is what the pod leaves behind too.
    let saved = serde_json::to_value(&report).expect("json");
    assert_eq!(saved["blobs"]["mounted"], base_layers);
    assert!(saved["timings"]["totalMs"].is_number());

    let manifest = raw_manifest(&target);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let info = inspect(&target, false);
    assert_eq!(info["Digest"], digest.as_str());
    let config = inspect(&target, true);
    let c = &config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"GREETING=stagecoach"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "the base's PATH stays: {env:?}"
    );
    assert_eq!(c["Cmd"], serde_json::json!(["hello"]));
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://git.example/team/hello"
    );
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        opts.revision.clone().expect("rev")
    );
    assert_eq!(labels["org.example.team"], "builders");
    assert!(
        labels["org.opencontainers.image.description"].is_string(),
        "base labels stay"
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff ids");
    assert_eq!(diff_ids.len(), base_layers + 2);
    let history = config["history"].as_array().expect("history");
    let with_layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        with_layers,
        diff_ids.len(),
        "one history entry per layer: {history:?}"
    );
    let last = history.last().expect("entry");
    assert_eq!(last["created_by"], "CMD [\"hello\"]");
    assert_eq!(last["empty_layer"], true);
    assert_eq!(
        config["created"], "2023-11-14T22:13:20Z",
        "clamped to SOURCE_DATE_EPOCH"
    );
    assert_eq!(
        inspect(&format!("{repository}:extra"), false)["Digest"],
        digest.as_str()
    );

    // It runs.
    let out = check(podman().args([
        "run",
        "--rm",
        "--pull",
        "always",
        "--tls-verify=false",
        "--network",
        "none",
        &target,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from stagecoach\n"
    );
    let _ = podman().args(["rmi", "-f", &target]).output();

    // umoci gives the base's filesystem with the stage's layers applied.
    let pushed = Layout::from_registry(&target).unpack();
    let expected = Layout::from_registry(&image("runtime:1"));
    expected.append_layers(&target_layers(&build));
    let expected = expected.unpack();
    let diffs = differences(
        &pushed.path().join("b/rootfs"),
        &expected.path().join("b/rootfs"),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let hello =
        std::fs::metadata(pushed.path().join("b/rootfs/usr/local/bin/hello")).expect("hello");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((hello.mode() & 0o7777, hello.uid()), (0o755, 0));
}

#[test]
fn stage_pod_layers_are_pushed_with_docker_media_types() {
    // The stage a pod would run: its layer and config taken from buildah's build of it.
    let dockerfile = format!(
        "FROM {} AS app\nRUN echo built > /built && mkdir -p /data/x && ln -s /built /data/link\nCMD [\"cat\", \"/built\"]\n",
        image("busybox:1")
    );
    let build = Build::new(&dockerfile, &[]);
    assert!(matches!(
        build.plan.stage("app").expect("app").execution,
        Execution::Pod { .. }
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), &dockerfile).expect("Dockerfile");
    let tag = "localhost/stagecoach-e2e/assemble-pod:buildah";
    let theirs = Layout::from_buildah(&buildah_bud(
        &dir.path().join("Dockerfile"),
        dir.path(),
        None,
        &[],
        tag,
    ));
    let _ = tool("buildah").args(["rmi", "-f", tag]).output();
    let layout = theirs.dir.path();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("json");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().expect("d"))).expect("m"),
    )
    .expect("json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().expect("d"))).expect("c"),
    )
    .expect("json");
    let layer = manifest["layers"]
        .as_array()
        .expect("layers")
        .last()
        .expect("layer")
        .clone();
    let ws = build.workspace();
    std::fs::create_dir_all(ws.layers_dir("app")).expect("mkdir");
    std::fs::copy(
        blob(layer["digest"].as_str().expect("d")),
        ws.layers_dir("app").join("0001.tar.gz"),
    )
    .expect("layer");
    let record = LayerRecord {
        file: "0001.tar.gz".into(),
        media_type: stagecoach_builder::layer::GZIP_MEDIA_TYPE.into(),
        digest: layer["digest"].as_str().expect("d").into(),
        diff_id: config["rootfs"]["diff_ids"]
            .as_array()
            .expect("ids")
            .last()
            .expect("id")
            .as_str()
            .expect("id")
            .into(),
        size: layer["size"].as_u64().expect("size"),
        created_by: "RUN echo built > /built".into(),
        line: 2,
    };
    write_json(&ws.layer_index("app"), &vec![record]).expect("index");
    write_json(&ws.config("app"), &config).expect("config");

    let target = format!("{}/e2e/assemble-pod:1", registry());
    let mut opts = build.options(&target);
    opts.media_types = MediaTypes::Docker;
    let report = assembled(&opts);
    let manifest = raw_manifest(&target);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in manifest["layers"].as_array().expect("layers") {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    assert_eq!(
        report.layers,
        manifest["layers"].as_array().expect("layers").len()
    );

    let out = check(podman().args([
        "run",
        "--rm",
        "--pull",
        "always",
        "--tls-verify=false",
        "--network",
        "none",
        &target,
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "built\n");
    let _ = podman().args(["rmi", "-f", &target]).output();
    let ours = Layout::from_registry(&target).unpack();
    let theirs = theirs.unpack();
    let diffs = differences(
        &ours.path().join("b/rootfs"),
        &theirs.path().join("b/rootfs"),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn htpasswd_registry_takes_good_credentials_and_denies_a_wrong_password() {
    let server = RegistryServer::start(Some(("stage", "coach")));
    let build = hello_build();
    let creds = tempfile::tempdir().expect("tempdir");

    let target = format!("{}/e2e/auth:1", server.addr);
    let mut opts = build.options(&target);
    opts.registry.insecure.push(server.addr.clone());
    opts.registry.auth_file = Some(auth_file(creds.path(), &server.addr, "stage", "coach"));
    let report = assembled(&opts);
    // Another registry: the base's layers are streamed across, not mounted.
    assert_eq!(report.blobs.mounted, 0);
    assert_eq!(report.blobs.pushed, report.layers + 1);
    let out = check(tool("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "stage:coach",
        &format!("docker://{target}"),
    ]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        info["Digest"],
        report.digest.clone().expect("digest").as_str()
    );

    let denied = format!("{}/e2e/denied:1", server.addr);
    let mut opts = build.options(&denied);
    opts.registry.insecure.push(server.addr.clone());
    opts.registry.auth_file = Some(auth_file(creds.path(), &server.addr, "stage", "wrong"));
    let report = assemble::run(&opts);
    let error = report.error.expect("denied");
    assert_eq!(error.reason, "PushDenied");
    assert!(
        error
            .message
            .contains(&format!("{}/e2e/denied", server.addr)),
        "names registry and repository: {}",
        error.message
    );
    assert_eq!(
        server.repositories(),
        ["e2e/auth"],
        "nothing of the denied push is stored"
    );
    let missing = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            "stage:coach",
            &format!("docker://{denied}"),
        ])
        .output()
        .expect("skopeo");
    assert!(!missing.status.success());
}

#[test]
fn a_second_push_uploads_no_blob() {
    let build = hello_build();
    let proxy = Proxy::start(&registry(), Box::new(|_, _| None));
    let target = format!("{}/{}:1", proxy.addr, fresh("again"));
    let mut opts = build.options(&target);
    opts.registry.insecure.push(proxy.addr.clone());
    let first = assembled(&opts);
    let uploads = |log: &[stagecoach_e2e::registry::Exchange]| {
        log.iter()
            .filter(|e| e.path.contains("/blobs/uploads/") || e.method == "PATCH")
            .count()
    };
    assert!(uploads(&proxy.log()) > 0, "the first push uploads");
    proxy.clear();

    let second = assembled(&opts);
    let log = proxy.log();
    assert_eq!(uploads(&log), 0, "no upload the second time: {log:#?}");
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.blobs.skipped, second.layers + 1);
    assert_eq!((second.blobs.pushed, second.blobs.mounted), (0, 0));
    let heads = log.iter().filter(|e| e.method == "HEAD").count();
    assert_eq!(heads, second.layers + 1, "one HEAD per blob: {log:#?}");
}

#[test]
fn transient_failures_are_retried_and_the_manifest_is_put_once_after_all_blobs() {
    let build = hello_build();
    let mut seen = 0;
    let mut upload_puts = 0;
    let mut manifest_puts = 0;
    let faults = Box::new(move |method: &str, path: &str| {
        seen += 1;
        if seen <= 3 {
            return Some(Fault::Unavailable);
        }
        if method == "PUT" && path.contains("/blobs/uploads/") {
            upload_puts += 1;
            if upload_puts % 2 == 1 {
                return Some(Fault::Unavailable);
            }
        }
        if method == "PUT" && path.contains("/manifests/") {
            manifest_puts += 1;
            if manifest_puts == 1 {
                return Some(Fault::TooManyRequests);
            }
        }
        None
    });
    let proxy = Proxy::start(&registry(), faults);
    let target = format!("{}/{}:1", proxy.addr, fresh("flaky"));
    let mut opts = build.options(&target);
    opts.registry.insecure.push(proxy.addr.clone());
    let report = assembled(&opts);
    let log = proxy.log();
    let injected = log.iter().filter(|e| !e.forwarded).count();
    assert!(injected >= 5, "failures were injected: {log:#?}");
    assert!(log.iter().any(|e| e.status == 429), "{log:#?}");

    let manifests: Vec<_> = log
        .iter()
        .filter(|e| e.forwarded && e.method == "PUT" && e.path.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 1, "the manifest is put once: {log:#?}");
    let blob_done = log
        .iter()
        .filter(|e| e.forwarded && e.path.contains("/blobs/"))
        .map(|e| e.completed)
        .max()
        .expect("blob requests");
    assert!(
        manifests[0].arrived > blob_done,
        "the manifest comes after every blob: {log:#?}"
    );
    let uploaded = log
        .iter()
        .filter(|e| {
            e.forwarded
                && e.method == "PUT"
                && e.path.contains("/blobs/uploads/")
                && e.status == 201
        })
        .count();
    assert_eq!(uploaded, report.blobs.pushed);
    let info = inspect(&target, false);
    assert_eq!(
        info["Digest"],
        report.digest.clone().expect("digest").as_str()
    );
}

#[test]
fn the_same_inputs_and_source_time_give_the_same_digest() {
    let build = hello_build();
    let first = assembled(&build.options(&format!("{}/e2e/repro-a:1", registry())));
    // The build stage ran again later: same files, newer times.
    std::thread::sleep(Duration::from_millis(1100));
    let root = build.dir.path().join("build-root");
    let program = std::fs::read(root.join("out/hello")).expect("read");
    std::fs::write(root.join("out/hello"), program).expect("rewrite");
    build.export_from("build", &root);
    let second = assembled(&build.options(&format!("{}/e2e/repro-b:1", registry())));
    assert_eq!(first.digest, second.digest);

    let mut later = build.options(&format!("{}/e2e/repro-c:1", registry()));
    later.source_date_epoch = Some(EPOCH + 1);
    let third = assembled(&later);
    assert_ne!(
        third.digest, first.digest,
        "the source time is part of the image"
    );
}

#[test]
fn copy_only_stage_gives_the_filesystem_buildah_gives() {
    let dockerfile = format!(
        "FROM {} AS build\n\
         RUN mkdir -p /out/sub /out/empty && echo a > /out/a.txt && echo b > /out/b.txt \
         && echo c > /out/sub/c.txt && printf '#!/bin/sh\\necho run\\n' > /out/run.sh && chmod 750 /out/run.sh \
         && chown 1000:1000 /out/b.txt && ln -s a.txt /out/link && ln /out/a.txt /out/hard.txt \
         && echo conf > /etc/app.conf\n\
         FROM {}\n\
         WORKDIR /app\n\
         COPY --from=build /out/ ./\n\
         COPY --from=build /out/*.txt /txt/\n\
         COPY --from=build --chown=app:app --chmod=640 /out/sub/c.txt /home/app/\n\
         COPY --from=build /etc/app.conf /etc/app/conf\n\
         COPY ctx.txt notes /data/\n\
         COPY --chown=1000:1000 ctx.txt /owned\n\
         COPY --from=build /out/run.sh /usr/local/bin/\n\
         ENV MODE=release\n\
         USER app\n",
        image("busybox:1"),
        image("runtime:1")
    );
    let context: &[(&str, &str)] = &[
        ("ctx.txt", "context\n"),
        ("notes/one.md", "1\n"),
        ("notes/deep/two.md", "2\n"),
    ];
    let build = Build::new(&dockerfile, context);
    assert_eq!(
        build
            .plan
            .stage(&build.plan.target)
            .expect("target")
            .execution,
        Execution::Assemble
    );

    // buildah builds both stages; its build stage's filesystem is our build stage's export.
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().join("context");
    for (path, content) in context {
        let file = ctx.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, content).expect("write");
    }
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, &dockerfile).expect("Dockerfile");
    let stage_tag = "localhost/stagecoach-e2e/assemble-copy:build";
    let build_stage =
        Layout::from_buildah(&buildah_bud(&file, &ctx, Some("build"), &[], stage_tag));
    let _ = tool("buildah").args(["rmi", "-f", stage_tag]).output();
    let build_root = build_stage.unpack();
    build.export_from("build", &build_root.path().join("b/rootfs"));
    let tag = "localhost/stagecoach-e2e/assemble-copy:buildah";
    let theirs = Layout::from_buildah(&buildah_bud(&file, &ctx, None, &[], tag));
    let _ = tool("buildah").args(["rmi", "-f", tag]).output();

    let target = format!("{}/e2e/assemble-copy:1", registry());
    assembled(&build.options(&target));
    let ours = Layout::from_registry(&target).unpack();
    let theirs = theirs.unpack();
    let diffs = differences(
        &ours.path().join("b/rootfs"),
        &theirs.path().join("b/rootfs"),
    );
    assert!(
        diffs.is_empty(),
        "filesystems differ from buildah's:\n{}",
        diffs.join("\n")
    );
    let tree = stagecoach_e2e::rootfs::tree(&ours.path().join("b/rootfs"));
    let entry = |p: &str| tree.get(p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(
        (entry("home/app/c.txt").mode, entry("home/app/c.txt").uid),
        (0o640, 1000)
    );
    assert_eq!(entry("app/link").kind, "symlink");
    assert_eq!(entry("app/run.sh").mode, 0o750);
    assert_eq!(entry("app/b.txt").uid, 1000, "--from keeps owners");
    assert_eq!(entry("txt/hard.txt").content, entry("txt/a.txt").content);
    assert_eq!(entry("data/deep/two.md").kind, "file");
    assert_eq!(entry("owned").uid, 1000);
    assert_eq!(entry("etc/app/conf").kind, "file");
}

#[test]
fn resolve_reads_docker_and_oci_indexes_and_manifests() {
    let settings = Settings {
        insecure: vec![registry()],
        ..Settings::default()
    };
    let platform = "linux/amd64".parse().expect("platform");
    // Docker v2 schema 2 manifest and manifest list, OCI manifest and index.
    let v2s2 = format!("{}/e2e/busybox-v2s2:1", registry());
    check(tool("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{}", image("busybox:1")),
        &format!("docker://{v2s2}"),
    ]));
    let mut expected = Vec::new();
    for (format, name) in [("v2s2", "list-v2s2"), ("oci", "list-oci")] {
        let list = format!("localhost/stagecoach-e2e/{name}");
        let _ = tool("buildah").args(["manifest", "rm", &list]).output();
        check(tool("buildah").args(["manifest", "create", &list]));
        check(tool("buildah").args([
            "manifest",
            "add",
            "--tls-verify=false",
            &list,
            &format!("docker://{}", image("busybox:1")),
        ]));
        let pushed = format!("{}/e2e/{name}:1", registry());
        check(tool("buildah").args([
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "--format",
            format,
            &list,
            &format!("docker://{pushed}"),
        ]));
        let _ = tool("buildah").args(["manifest", "rm", &list]).output();
        let index = raw_manifest(&pushed);
        let want = if format == "oci" {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.list.v2+json"
        };
        assert_eq!(index["mediaType"], want);
        expected.push((
            pushed,
            index["manifests"][0]["digest"]
                .as_str()
                .expect("digest")
                .to_string(),
        ));
    }
    let digest_of = |r: &str| {
        inspect(r, false)["Digest"]
            .as_str()
            .expect("digest")
            .to_string()
    };
    expected.push((v2s2.clone(), digest_of(&v2s2)));
    // An index of linux/amd64 and linux/arm64 (the base images are).
    expected.push((
        image("runtime:1"),
        platform_digest(&image("runtime:1"), "amd64"),
    ));
    let references: Vec<String> = expected.iter().map(|(r, _)| r.clone()).collect();
    let resolved = builder_registry::resolve(&settings, &platform, &references).expect("resolves");
    for ((reference, digest), got) in expected.iter().zip(&resolved) {
        assert_eq!(&got.digest, digest, "{reference}");
        assert_eq!(&got.reference, reference);
    }
    assert_eq!(
        resolved[2].media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let arm = "linux/arm64".parse().expect("platform");
    let err =
        builder_registry::resolve(&settings, &arm, &[expected[0].0.clone()]).expect_err("no arm64");
    assert_eq!(err.reason(), "BaseImageNotFound");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
}

#[test]
fn a_missing_base_image_is_base_image_not_found() {
    let build = Build::new(
        &format!("FROM {}/stagecoach/nope:1\nCOPY ctx.txt /\n", registry()),
        &[("ctx.txt", "x")],
    );
    let report = assemble::run(&build.options(&format!("{}/e2e/never:1", registry())));
    let error = report.error.expect("fails");
    assert_eq!(error.reason, "BaseImageNotFound");
    assert!(
        error.message.contains("stagecoach/nope:1"),
        "{}",
        error.message
    );
}
