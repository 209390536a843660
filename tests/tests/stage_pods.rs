//! Stage pods for real: the static builder installed by an init container into a pod
//! whose image is the stage's base image, run by `podman kube play` on a workspace
//! volume; the layers it writes, applied to the base by umoci, must give the same
//! filesystem as `buildah bud` of the same Dockerfile stage.

use std::path::PathBuf;

use stagecoach_builder::workspace::{LayerRecord, Workspace, read_json};
use stagecoach_e2e::podman::{PodRun, Volume, builder_image, check, play, registry, tool};
use stagecoach_e2e::rootfs::{Layout, buildah_bud, differences};
use stagecoach_operator::api::ImageBuild;
use stagecoach_operator::local::podman_manifest;
use stagecoach_operator::render::{self, OperatorConfig};
use stagecoach_plan::contract::{Base, Execution, Plan};
use stagecoach_plan::{PlanOptions, layout, plan};

/// A Dockerfile, its context, and the stage to check.
struct Case<'a> {
    name: &'a str,
    dockerfile: String,
    context: &'a [(&'a str, &'a str)],
    target: Option<&'a str>,
}

fn image(name: &str) -> String {
    format!("{}/stagecoach/{name}", registry())
}

/// A minimal ImageBuild standing for the build the pods belong to.
fn image_build(name: &str) -> ImageBuild {
    let mut build: ImageBuild = serde_json::from_value(serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": format!("e2e-{name}"), "namespace": "default", "uid": "e2e", "generation": 1},
        "spec": {"source": {"git": {"url": "file:///dev/null"}}, "output": {"image": "127.0.0.1:5000/e2e/x:1"}}
    }))
    .expect("ImageBuild");
    build.status = None;
    build
}

fn operator_config() -> OperatorConfig {
    OperatorConfig {
        builder_image: builder_image(),
        default_workspace_size: "1Gi".into(),
        default_storage_class: None,
        insecure_registries: Vec::new(),
        cache_repository: None,
        run_cache: None,
        build_platform: stagecoach_operator::render::DEFAULT_BUILD_PLATFORM.into(),
        emulated_platforms: vec!["all".into()],
    }
}

/// Writes what the source pod would: plan, context, base image configs.
fn prepare_workspace(case: &Case, volume: &Volume) -> Plan {
    let ws = Workspace::new(&volume.path);
    let options = PlanOptions {
        target: case.target.map(str::to_string),
        ..PlanOptions::default()
    };
    let plan = plan(&case.dockerfile, &options).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    std::fs::write(ws.plan(), plan.to_json()).expect("plan");
    ws.create_dirs(plan.stages.iter().map(|s| s.id.as_str()), plan.pod_stages())
        .expect("workspace directories");
    for (path, content) in case.context {
        let file = ws.source().join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("context file");
    }
    std::fs::create_dir_all(ws.source()).expect("source");
    for stage in &plan.stages {
        if let Base::Image { reference, .. } = &stage.base {
            let out = check(tool("skopeo").args([
                "inspect",
                "--tls-verify=false",
                "--config",
                "--raw",
                &format!("docker://{reference}"),
            ]));
            let path = ws.base_config(&stage.id);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, out.stdout).expect("base config");
        }
    }
    plan
}

/// The image a stage's pod runs on: the root of its FROM chain.
fn root_image(plan: &Plan, stage: &str) -> String {
    plan.root_image(stage)
        .expect("stage pods on scratch are not part of these tests")
}

/// Runs every stage pod of the plan as the operator renders it, wave by wave; returns
/// each pod's result.
fn run_pods(case: &Case, plan: &Plan, volume: &Volume) -> Vec<(String, PodRun)> {
    let build = image_build(case.name);
    let mut results = Vec::new();
    for summary in plan.summary(None, Some(1_700_000_000)).pods {
        let pod =
            render::render_stage_pod(&build, &operator_config(), &summary, Some(1_700_000_000), 0);
        let name = pod.metadata.name.clone().expect("name");
        let manifest = podman_manifest(pod, None, &volume.path).expect("manifest");
        let run = play(&manifest, &name, "stage");
        let failed = run.exit_code != 0;
        results.push((summary.id, run));
        if failed {
            return results;
        }
    }
    results
}

/// The workspace volume of a case, named as the operator names the claim.
fn volume_for(case: &str) -> Volume {
    Volume::create(&render::claim_name(&image_build(case)))
}

/// The layers of a stage and its FROM ancestors, root first.
fn chain_layers(plan: &Plan, ws: &Workspace, stage: &str) -> Vec<(PathBuf, String)> {
    let mut chain = vec![stage.to_string()];
    let mut current = plan.stage(stage).expect("stage");
    while let Base::Stage { id } = &current.base {
        chain.push(id.clone());
        current = plan.stage(id).expect("parent");
    }
    chain.reverse();
    chain
        .iter()
        .flat_map(|id| {
            let records: Vec<LayerRecord> = read_json(&ws.layer_index(id)).expect("layer index");
            records
                .into_iter()
                .map(|r| (ws.layers_dir(id).join(r.file), r.diff_id))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Builds the case with our pods and with buildah; their filesystems must be equal.
fn assert_same_as_buildah(case: Case) {
    let volume = volume_for(case.name);
    let plan = prepare_workspace(&case, &volume);
    let results = run_pods(&case, &plan, &volume);
    for (stage, run) in &results {
        assert_eq!(
            run.exit_code, 0,
            "{}: pod {stage} failed:\n{}",
            case.name, run.logs
        );
    }
    let ws = Workspace::new(&volume.path);
    let target = plan.target.clone();
    assert!(
        matches!(
            plan.stage(&target).expect("target").execution,
            Execution::Pod { .. }
        ),
        "{}: the target must run in a pod for this test",
        case.name
    );
    let ours = Layout::from_registry(&root_image(&plan, &target));
    ours.append_layers(&chain_layers(&plan, &ws, &target));
    let ours_root = ours.unpack();

    let dir = tempfile::tempdir().expect("tempdir");
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).expect("context");
    for (path, content) in case.context {
        let file = context.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
    }
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, &case.dockerfile).expect("Dockerfile");
    let tag = format!("localhost/stagecoach-e2e/{}:buildah", case.name);
    let theirs = Layout::from_buildah(&buildah_bud(&dockerfile, &context, case.target, &[], &tag));
    let theirs_root = theirs.unpack();
    let _ = tool("buildah").args(["rmi", "-f", &tag]).output();

    let diffs = differences(
        &ours_root.path().join("b/rootfs"),
        &theirs_root.path().join("b/rootfs"),
    );
    assert!(
        diffs.is_empty(),
        "{}: filesystems differ from buildah's:\n{}",
        case.name,
        diffs.join("\n")
    );
}

const HELLO_C: &str =
    "#include <stdio.h>\nint main(void) { puts(\"hello from stagecoach\"); return 0; }\n";

#[test]
fn compiles_c_with_tcc() {
    assert_same_as_buildah(Case {
        name: "tcc",
        dockerfile: format!(
            "FROM {} AS build\nWORKDIR /src\nCOPY hello.c .\nRUN mkdir -p /usr/local/bin && tcc -o /usr/local/bin/hello hello.c && /usr/local/bin/hello\n",
            image("tcc:1")
        ),
        context: &[("hello.c", HELLO_C)],
        target: None,
    });
}

#[test]
fn deletes_and_modifies_base_files() {
    assert_same_as_buildah(Case {
        name: "whiteouts",
        dockerfile: format!(
            "FROM {}\nRUN rm -rf /home/app /etc/group && echo changed >> /etc/passwd && mkdir -p /new/empty\n\
             RUN rm /bin/vi && ln -s busybox /bin/vi2\n",
            image("busybox:1")
        ),
        context: &[],
        target: None,
    });
}

#[test]
fn from_stage_chain_users_links_and_odd_names() {
    assert_same_as_buildah(Case {
        name: "chain",
        dockerfile: format!(
            "FROM {} AS base\nRUN mkdir -p /data/dir && echo x > '/data/file with spaces' && ln /data/'file with spaces' /data/hard \
             && ln -s '/data/file with spaces' /data/soft && mkdir /data/empty\n\
             FROM base AS other\nRUN echo other > /other && mkdir -p /out/sub && echo deep > /out/sub/deep\n\
             FROM base AS users\nCOPY --chown=app:app --chmod=640 conf.txt /etc/app/\nUSER app\nRUN id -u > /tmp/whoami && touch /home/app/mine\n\
             COPY --from=other /other /out/ /copied/\n\
             USER root\nRUN echo suid > /data/suid && chmod 4755 /data/suid\n",
            image("busybox:1")
        ),
        context: &[("conf.txt", "key=value\n")],
        target: None,
    });
}

#[test]
fn volumes_are_made_and_what_run_writes_in_them_is_discarded() {
    assert_same_as_buildah(Case {
        name: "volumes",
        dockerfile: format!(
            "FROM {}\nRUN mkdir -p /srv/keep && echo before > /srv/keep/file\nVOLUME /data /srv/keep\n\
             RUN echo lost > /data/x && mkdir /data/sub && echo lost > /srv/keep/file && echo kept > /outside\n\
             COPY conf.txt /data/copied\nVOLUME /late\n",
            image("busybox:1")
        ),
        context: &[("conf.txt", "conf\n")],
        target: None,
    });
}

#[test]
fn workdir_and_copy_parents_belong_to_their_user() {
    assert_same_as_buildah(Case {
        name: "ownership",
        dockerfile: format!(
            "FROM {}\nUSER 1000:1000\nWORKDIR /app/sub\nUSER root\nWORKDIR /other\nRUN true\n\
             COPY --chown=1000 conf.txt /x/y/\nCOPY conf.txt /w\n",
            image("busybox:1")
        ),
        context: &[("conf.txt", "conf\n")],
        target: None,
    });
}

#[test]
fn env_arg_workdir_and_the_base_environment() {
    assert_same_as_buildah(Case {
        name: "env",
        dockerfile: format!(
            "ARG BASE={}\nFROM $BASE\nARG FLAVOR=plain\nENV PATH=/opt/tools/bin:$PATH APP_HOME=/srv/app\n\
             WORKDIR $APP_HOME\nWORKDIR data\nRUN mkdir -p /opt/tools/bin && echo \"$FLAVOR $PATH $PWD\" > info && \
             printf '#!/bin/sh\\necho tool\\n' > /opt/tools/bin/tool && chmod 755 /opt/tools/bin/tool && tool > from-path\n\
             ENV FLAVOR=env-wins\nRUN echo \"$FLAVOR\" > flavor\n",
            image("busybox:1")
        ),
        context: &[],
        target: None,
    });
}

#[test]
fn copy_rules_match_docker() {
    assert_same_as_buildah(Case {
        name: "copyrules",
        dockerfile: format!(
            "FROM {}\nWORKDIR /w\nCOPY dir /contents/\nCOPY dir /w/named\nCOPY dir/a.txt /renamed.txt\n\
             COPY dir/a.txt dir/b.txt /multi/\nCOPY dir/*.txt /glob/\nCOPY dir/a.txt relative/\n\
             COPY --chown=1000:1000 --chmod=700 dir /owned/\nCOPY dir/sub /etc/\nCOPY top.txt /tmp\nRUN true\n",
            image("busybox:1")
        ),
        context: &[
            ("dir/a.txt", "a\n"),
            ("dir/b.txt", "b\n"),
            ("dir/c.md", "c\n"),
            ("dir/sub/deep.conf", "deep\n"),
            ("top.txt", "top\n"),
        ],
        target: None,
    });
}

#[test]
fn replaced_directories_and_copy_from_an_image() {
    assert_same_as_buildah(Case {
        name: "opaque",
        dockerfile: format!(
            "FROM {} AS main\nRUN rm -rf /home && mkdir -p /home/new && echo fresh > /home/new/file\n\
             COPY --from={} /usr/bin/tcc /usr/local/bin/tcc-from-image\nRUN ls -l /usr/local/bin > /listing\n",
            image("busybox:1"),
            image("tcc:1")
        ),
        context: &[],
        target: None,
    });
}

#[test]
fn a_stage_from_scratch_builds_in_the_builder_image() {
    assert_same_as_buildah(Case {
        name: "scratch",
        dockerfile: format!(
            "FROM {b} AS certs\nRUN mkdir -p /etc/ssl && echo pem > /etc/ssl/ca.pem\n\
             FROM scratch AS base\nCOPY --from=certs /etc/ssl/ca.pem /etc/ssl/\n\
             FROM {b}\nCOPY --from=base / /copied/\nRUN cat /copied/etc/ssl/ca.pem\n",
            b = image("busybox:1")
        ),
        context: &[],
        target: None,
    });
}

/// A file server on loopback for ADD <url>; stopped on drop.
struct FileServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl FileServer {
    fn start(files: &[(&str, &str)]) -> FileServer {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            std::fs::write(dir.path().join(path), content).expect("file");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FileServer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_downloads_urls_and_unpacks_local_archives() {
    let server = FileServer::start(&[("tool.sh", "#!/bin/sh\necho tool\n")]);
    let url = format!("http://127.0.0.1:{}/tool.sh", server.port);
    let archive = {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        t.append_data(&mut h, "pkg/data.txt", &b"abc"[..])
            .expect("append");
        t.into_inner().expect("tar")
    };
    let archive = String::from_utf8(archive).expect("ascii tar");
    assert_same_as_buildah(Case {
        name: "add",
        dockerfile: format!(
            "FROM {}\nADD {url} /opt/bin/\nADD {url} /renamed.sh\nADD bundle.tar /srv/\nRUN chmod 755 /opt/bin/tool.sh\n",
            image("busybox:1")
        ),
        context: &[("bundle.tar", archive.as_str())],
        target: None,
    });
}

/// Debian's buildah (1.28) predates heredocs, so this case checks the result directly.
#[test]
fn heredoc_runs_as_docker_runs_it() {
    let case = Case {
        name: "heredoc",
        dockerfile: format!(
            "FROM {}\nARG WHO=world\nRUN <<EOF\nset -e\necho \"hello $WHO\" > /greeting\nEOF\n\
             RUN <<-SCRIPT cat > /two && cat <<'RAW' >> /two\n\tfirst $WHO\n\tSCRIPT\nsecond $WHO\nRAW\n\
             RUN <<EOF\n#!/bin/sh\necho \"script as $(id -u)\" > /script\nEOF\n",
            image("busybox:1")
        ),
        context: &[],
        target: None,
    };
    let volume = volume_for("heredoc");
    let plan = prepare_workspace(&case, &volume);
    for (stage, run) in run_pods(&case, &plan, &volume) {
        assert_eq!(run.exit_code, 0, "pod {stage} failed:\n{}", run.logs);
    }
    let ours = Layout::from_registry(&root_image(&plan, &plan.target));
    ours.append_layers(&chain_layers(
        &plan,
        &Workspace::new(&volume.path),
        &plan.target,
    ));
    let root = ours.unpack();
    let read = |p: &str| std::fs::read_to_string(root.path().join("b/rootfs").join(p)).expect(p);
    assert_eq!(read("greeting"), "hello world\n");
    assert_eq!(read("two"), "first world\nsecond $WHO\n");
    assert_eq!(read("script"), "script as 0\n");
}

#[test]
fn copy_outside_the_context_fails_and_writes_nothing() {
    let case = Case {
        name: "escape",
        dockerfile: format!(
            "FROM {} AS sneaky\nCOPY ../secret /stolen\nRUN cat /stolen\n",
            image("busybox:1")
        ),
        context: &[],
        target: None,
    };
    let volume = volume_for("escape");
    std::fs::write(volume.path.join("secret"), "do not copy").expect("secret");
    let plan = prepare_workspace(&case, &volume);
    let (_, run) = run_pods(&case, &plan, &volume).pop().expect("a pod ran");
    assert_ne!(run.exit_code, 0);
    assert!(
        run.logs.contains("Dockerfile:2: COPY ../secret /stolen: forbidden path outside the build context: ../secret"),
        "{}",
        run.logs
    );
    let index: Vec<LayerRecord> =
        read_json(&Workspace::new(&volume.path).layer_index("sneaky")).unwrap_or_default();
    assert!(index.is_empty(), "no layer may be written");
}

#[test]
fn failing_run_names_stage_line_command_and_exit_code() {
    let case = Case {
        name: "failing",
        dockerfile: format!(
            "FROM {} AS broken\nRUN echo before\nRUN exit 7\n",
            image("busybox:1")
        ),
        context: &[],
        target: None,
    };
    let volume = volume_for("failing");
    let plan = prepare_workspace(&case, &volume);
    let results = run_pods(&case, &plan, &volume);
    let (_, run) = results.last().expect("a pod ran");
    assert_ne!(run.exit_code, 0);
    assert!(
        run.logs
            .contains("stage broken: Dockerfile:3: RUN exit 7: exit code 7"),
        "{}",
        run.logs
    );
    let report: serde_json::Value =
        read_json(&Workspace::new(&volume.path).report(&layout::stage_pod("broken")))
            .expect("report");
    assert_eq!(report["succeeded"], false);
    assert_eq!(report["error"]["exitCode"], 7);
    assert_eq!(report["error"]["line"], 3);
}

/// A stage pod can change only its own results: a RUN writing to another stage's export,
/// the plan, the checkout, another pod's report or outcome is refused by the mounts (the
/// workspace is read-only to the pod but for its own directories), and those files are
/// as they were afterwards.
#[test]
fn a_stage_cannot_touch_what_other_pods_wrote() {
    let others = [
        "/workspace/stages/first/export.tar",
        "/workspace/stages/first/layers/index.json",
        "/workspace/plan.json",
        "/workspace/source/app.txt",
        "/workspace/pods/stage-first/report.json",
        "/workspace/outcomes/e2e-isolation-stage-first-g1/outcome.json",
        "/workspace/newfile",
    ];
    let attempts: Vec<String> = others
        .iter()
        // The marker is split in the command, whole only in what it prints.
        .map(|f| format!("if echo tampered > {f}; then echo \"WR\"\"OTE {f}\"; exit 1; fi"))
        .collect();
    let case = Case {
        name: "isolation",
        dockerfile: format!(
            "FROM {busybox} AS first\nCOPY app.txt /app.txt\nRUN echo first > /made\n\
             FROM {busybox} AS second\nRUN {}\nRUN echo own > /own\n\
             FROM {busybox}\nCOPY --from=first /made /made\nCOPY --from=second /own /own\n",
            attempts.join("; "),
            busybox = image("busybox:1"),
        ),
        context: &[("app.txt", "app\n")],
        target: None,
    };
    let volume = volume_for("isolation");
    let plan = prepare_workspace(&case, &volume);
    let ws = Workspace::new(&volume.path);
    let before =
        |path: &str| std::fs::read(volume.path.join(path.trim_start_matches("/workspace/")));
    let mut kept = Vec::new();
    for (stage, run) in run_pods(&case, &plan, &volume) {
        assert_eq!(run.exit_code, 0, "pod {stage} failed:\n{}", run.logs);
        assert!(!run.logs.contains("WROTE"), "{}", run.logs);
        if stage == "first" {
            kept = others.iter().map(|f| (f, before(f).ok())).collect();
        }
    }
    for (file, content) in kept {
        assert_eq!(&before(file).ok(), &content, "{file} changed");
        assert!(
            !content
                .as_deref()
                .is_some_and(|c| c.starts_with(b"tampered")),
            "{file}"
        );
    }
    // The files the test tries existed (else the refusal would prove nothing), but
    // the one it tries to create.
    for file in &others[..others.len() - 1] {
        assert!(before(file).is_ok(), "{file} exists");
    }
    let own: Vec<LayerRecord> = read_json(&ws.layer_index("second")).expect("second's layers");
    assert_eq!(own.len(), 1, "the stage's own directory stays writable");
}
