//! The planner against peer data: BuildKit's multi-stage cases and real-world Dockerfiles.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use stagecoach_plan::{Base, Execution, Plan, PlanOptions, WarningKind, plan};

/// The same lookup as the library's unit tests (`STAGECOACH_CORPORA`, skip or fail).
#[path = "../src/corpora.rs"]
mod corpora;

use corpora::Located;

fn options(target: Option<&str>, build_args: &[(&str, &str)]) -> PlanOptions {
    PlanOptions {
        target: target.map(str::to_string),
        build_args: build_args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..PlanOptions::default()
    }
}

/// One line per stage (`id <- base [deps] execution`) and the waves: compact enough to pin.
fn summary(plan: &Plan) -> String {
    let mut out = String::new();
    for s in &plan.stages {
        let base = match &s.base {
            Base::Scratch => "scratch".to_string(),
            Base::Image { reference, .. } => reference.clone(),
            Base::Stage { id } => format!("stage:{id}"),
        };
        let exec = match &s.execution {
            Execution::Pod { runs } => format!("pod{runs:?}"),
            Execution::Fused { pod } => format!("fused:{pod}"),
            Execution::Assemble => "assemble".into(),
            Execution::Nothing => "nothing".into(),
        };
        out += &format!("{} <- {base} {:?} {exec}", s.id, s.depends_on);
        if !s.exports.is_empty() {
            out += &format!(" exports {:?}", s.exports);
        }
        out += "\n";
    }
    out += &format!("waves {:?}\n", plan.waves);
    if !plan.pruned.is_empty() {
        out += &format!("pruned {:?}\n", plan.pruned);
    }
    out
}

#[test]
fn buildkit_multistage_cases() {
    let Some(corpora) = corpora::root() else {
        return;
    };
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(corpora.join("buildkit-derived/cases.json")).expect("cases"),
    )
    .expect("json");
    let mut checked = 0;
    for case in cases["multistage_cases"].as_array().expect("cases") {
        let id = case["id"].as_str().expect("id");
        let dockerfile = case["dockerfile"].as_str().expect("dockerfile");
        let variants = case["variants"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![case.clone()]);
        for variant in variants {
            let merged = |key: &str| {
                variant
                    .get(key)
                    .filter(|v| !v.is_null())
                    .or_else(|| case.get(key))
                    .cloned()
            };
            let target = merged("target").and_then(|t| t.as_str().map(str::to_string));
            let build_args: BTreeMap<String, String> = merged("build_args")
                .and_then(|b| b.as_object().cloned())
                .map(|o| {
                    o.into_iter()
                        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let opts = PlanOptions {
                target: target.clone(),
                build_args,
                ..PlanOptions::default()
            };
            let result = plan(dockerfile, &opts);
            let expect = merged("expect").and_then(|e| e.as_str().map(str::to_string));
            match expect.as_deref() {
                Some("error") => {
                    let err = result.expect_err(id).to_string();
                    for key in ["error_contains", "error_exact"] {
                        if let Some(want) = merged(key).and_then(|v| v.as_str().map(str::to_string))
                        {
                            assert!(err.contains(&want), "{id}: {err:?} lacks {want:?}");
                        }
                    }
                }
                _ => {
                    let plan = result.unwrap_or_else(|e| panic!("{id} ({target:?}): {e}"));
                    if let Some(reachable) = merged("reachable_stages") {
                        let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
                        let want: Vec<&str> = reachable
                            .as_array()
                            .expect("list")
                            .iter()
                            .map(|v| v.as_str().expect("name"))
                            .collect();
                        assert_eq!(ids, want, "{id}");
                        let skipped: Vec<String> = merged("skipped_stages")
                            .and_then(|v| serde_json::from_value(v).ok())
                            .unwrap_or_default();
                        assert_eq!(plan.pruned, skipped, "{id}");
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} cases checked");
}

#[test]
fn every_realworld_dockerfile_plans() {
    let Some(corpora) = corpora::root() else {
        return;
    };
    let mut count = 0;
    for entry in std::fs::read_dir(corpora.join("realworld")).expect("realworld") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("Dockerfile") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        plan(&src, &PlanOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        count += 1;
    }
    assert_eq!(count, 37);
}

#[test]
fn realworld_dockerfiles_name_no_image_like_a_stage() {
    let Some(corpora) = corpora::root() else {
        return;
    };
    let mut warned = Vec::new();
    for entry in std::fs::read_dir(corpora.join("realworld")).expect("realworld") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("Dockerfile") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let last = plan(&src, &PlanOptions::default()).expect("plans");
        // Every named stage as the target too, so pruned stages' reads are looked at.
        let names = last.stages.iter().filter_map(|s| s.name.as_deref());
        let targets: Vec<&str> = names
            .chain(last.pruned.iter().map(String::as_str))
            .collect();
        let mut plans = vec![last.clone()];
        plans.extend(
            targets
                .iter()
                .filter_map(|t| plan(&src, &options(Some(t), &[])).ok()),
        );
        for p in plans {
            for w in p.warnings {
                if w.kind == WarningKind::FromLooksLikeStage {
                    warned.push(format!("{}: {}", path.display(), w.message));
                }
            }
        }
    }
    assert!(warned.is_empty(), "{}", warned.join("\n"));
}

fn realworld(corpora: &Path, name: &str, opts: &PlanOptions) -> Plan {
    let src = std::fs::read_to_string(corpora.join(format!("realworld/{name}.Dockerfile")))
        .expect("realworld file");
    plan(&src, opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Stages, bases, dependencies, execution and waves of real-world Dockerfiles, checked by
/// hand against what BuildKit would build for the same target.
/// (Dockerfile in `realworld/`, target, build args, expected summary).
type Pinned = (
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const PINNED: &[Pinned] = &[
    (
        "GoogleContainerTools__distroless__examples_go_Dockerfile",
        None,
        &[],
        concat!(
            "build <- docker.io/library/golang:1.22 [] pod[\"build\"] exports [\"/go/bin/app\"]\n",
            "stage-1 <- gcr.io/distroless/static-debian12:latest [\"build\"] assemble\n",
            "waves [[\"build\"]]\n",
        ),
    ),
    (
        "GoogleContainerTools__distroless__examples_python3-requirements_Dockerfile",
        None,
        &[],
        concat!(
            "build <- docker.io/library/python:3.13-slim-trixie [] fused:build-venv\n",
            "build-venv <- stage:build [\"build\"] pod[\"build\", \"build-venv\"] exports [\"/venv\"]\n",
            "stage-2 <- gcr.io/distroless/python3-debian13:latest [\"build-venv\"] assemble\n",
            "waves [[\"build-venv\"]]\n",
        ),
    ),
    (
        "docker__docs__content_manuals_build_building_multi-stage.md__ex1-copy-from-index",
        None,
        &[],
        concat!(
            "stage-0 <- docker.io/library/golang:1.24 [] pod[\"stage-0\"] exports [\"/bin/hello\"]\n",
            "stage-1 <- scratch [\"stage-0\"] assemble\n",
            "waves [[\"stage-0\"]]\n",
        ),
    ),
    (
        "docker__docs__content_manuals_build_building_multi-stage.md__ex2-named-target-build",
        Some("build"),
        &[],
        concat!(
            "build <- docker.io/library/golang:1.24 [] pod[\"build\"]\n",
            "waves [[\"build\"]]\n",
            "pruned [\"stage-1\"]\n",
        ),
    ),
    (
        "docker__docs__content_manuals_build_building_multi-stage.md__ex3-stage-as-base",
        None,
        &[],
        concat!(
            "builder <- docker.io/library/alpine:latest [] fused:build2\n",
            "build2 <- stage:builder [\"builder\"] pod[\"builder\", \"build2\"]\n",
            "waves [[\"build2\"]]\n",
            "pruned [\"build1\"]\n",
        ),
    ),
    (
        "docker__docs__content_manuals_build_building_multi-stage.md__ex4-prune-target-stage2",
        Some("stage2"),
        &[],
        concat!(
            "base <- docker.io/library/ubuntu:latest [] fused:stage2\n",
            "stage2 <- stage:base [\"base\"] pod[\"base\", \"stage2\"]\n",
            "waves [[\"stage2\"]]\n",
            "pruned [\"stage1\"]\n",
        ),
    ),
    (
        "traefik__whoami__Dockerfile",
        None,
        &[],
        concat!(
            "builder <- docker.io/library/golang:1-alpine [] pod[\"builder\"] exports [\"/etc/ssl/certs/ca-certificates.crt\", \"/go/whoami/whoami\", \"/usr/share/zoneinfo\"]\n",
            "stage-1 <- scratch [\"builder\"] assemble\n",
            "waves [[\"builder\"]]\n",
        ),
    ),
    (
        "docker__getting-started__Dockerfile",
        None,
        &[],
        concat!(
            "base <- docker.io/library/python:alpine [] fused:build\n",
            "app-base <- docker.io/library/node:18-alpine [] pod[\"app-base\"]\n",
            "test <- stage:app-base [\"app-base\"] pod[\"test\"] exports [\"/app/package.json\", \"/app/yarn.lock\"]\n",
            "app-zip-creator <- stage:app-base [\"app-base\", \"test\"] pod[\"app-zip-creator\"] exports [\"/app.zip\"]\n",
            "build <- stage:base [\"base\"] pod[\"base\", \"build\"] exports [\"/app/site\"]\n",
            "stage-6 <- docker.io/library/nginx:alpine [\"app-zip-creator\", \"build\"] assemble\n",
            "waves [[\"app-base\", \"build\"], [\"test\"], [\"app-zip-creator\"]]\n",
            "pruned [\"dev\"]\n",
        ),
    ),
    (
        "gotify__server__docker_Dockerfile",
        None,
        &[("GO_VERSION", "1.24.1")],
        concat!(
            "js-builder <- docker.io/library/node:24 [] pod[\"js-builder\"] exports [\"/src/gotify/ui/build\"]\n",
            "builder <- docker.io/gotify/build:1.24.1-linux-amd64 [\"js-builder\"] pod[\"builder\"] exports [\"/target\"]\n",
            "stage-2 <- docker.io/library/debian:sid-slim [\"builder\"] pod[\"stage-2\"]\n",
            "waves [[\"js-builder\"], [\"builder\"], [\"stage-2\"]]\n",
        ),
    ),
    (
        "qdrant__qdrant__Dockerfile",
        None,
        &[],
        concat!(
            "xx <- docker.io/tonistiigi/xx:latest [] pod[\"xx\"] exports [\"/\"]\n",
            "chef <- docker.io/lukemathwalker/cargo-chef:latest-rust-1.97.1-bookworm [] nothing\n",
            "planner <- stage:chef [\"chef\"] pod[\"planner\"] exports [\"/qdrant/recipe.json\"]\n",
            "builder <- stage:chef [\"chef\", \"xx\", \"planner\"] pod[\"builder\"] exports [\"/\"]\n",
            "qdrant-cpu <- docker.io/library/debian:13-slim [] nothing\n",
            "qdrant <- stage:qdrant-cpu [\"qdrant-cpu\", \"builder\"] pod[\"qdrant\"]\n",
            "waves [[\"xx\", \"planner\"], [\"builder\"], [\"qdrant\"]]\n",
            "pruned [\"qdrant-gpu-nvidia\", \"qdrant-gpu-amd\"]\n",
        ),
    ),
    (
        "qdrant__qdrant__Dockerfile",
        None,
        &[("GPU", "nvidia")],
        concat!(
            "xx <- docker.io/tonistiigi/xx:latest [] pod[\"xx\"] exports [\"/\"]\n",
            "chef <- docker.io/lukemathwalker/cargo-chef:latest-rust-1.97.1-bookworm [] nothing\n",
            "planner <- stage:chef [\"chef\"] pod[\"planner\"] exports [\"/qdrant/recipe.json\"]\n",
            "builder <- stage:chef [\"chef\", \"xx\", \"planner\"] pod[\"builder\"] exports [\"/\"]\n",
            "qdrant-gpu-nvidia <- docker.io/nvidia/opengl:1.2-glvnd-devel-ubuntu22.04 [\"builder\"] fused:qdrant\n",
            "qdrant <- stage:qdrant-gpu-nvidia [\"qdrant-gpu-nvidia\", \"builder\"] pod[\"qdrant-gpu-nvidia\", \"qdrant\"]\n",
            "waves [[\"xx\", \"planner\"], [\"builder\"], [\"qdrant\"]]\n",
            "pruned [\"qdrant-cpu\", \"qdrant-gpu-amd\"]\n",
        ),
    ),
    (
        "jenkinsci__docker__alpine_hotspot_Dockerfile",
        None,
        &[],
        concat!(
            "jre-and-war <- docker.io/library/alpine:3.24.1 [] pod[\"jre-and-war\"] exports [\"/javaruntime\", \"/war/jenkins.war\"]\n",
            "controller <- docker.io/library/alpine:3.24.1 [\"jre-and-war\"] pod[\"controller\"]\n",
            "waves [[\"jre-and-war\"], [\"controller\"]]\n",
        ),
    ),
    (
        "nginx__nginx-prometheus-exporter__build_Dockerfile",
        Some("container"),
        &[],
        concat!(
            "builder <- docker.io/library/golang:1.26.5 [] pod[\"builder\"] exports [\"/go/src/github.com/nginx/nginx-prometheus-exporter/nginx-prometheus-exporter\"]\n",
            "certs <- docker.io/library/alpine:3.24 [] pod[\"certs\"] exports [\"/etc/ssl/certs/ca-certificates.crt\"]\n",
            "base <- scratch [\"certs\"] pod[\"base\"]\n",
            "container <- stage:base [\"base\", \"builder\"] assemble\n",
            "waves [[\"builder\", \"certs\"], [\"base\"]]\n",
            "pruned [\"goreleaser\"]\n",
        ),
    ),
    (
        "dotnet__dotnet-docker__samples_complexapp_Dockerfile",
        Some("test"),
        &[],
        concat!(
            "build <- mcr.microsoft.com/dotnet/sdk:10.0 [] fused:test-build\n",
            "test-build <- stage:build [\"build\"] pod[\"build\", \"test-build\"]\n",
            "test <- stage:test-build [\"test-build\"] assemble\n",
            "waves [[\"test-build\"]]\n",
            "pruned [\"publish\", \"final\"]\n",
        ),
    ),
    (
        "astral-sh__uv__Dockerfile",
        None,
        &[],
        concat!(
            "build <- docker.io/library/ubuntu:24.04@sha256:d1e2e92c075e5ca139d51a140fff46f84315c0fdce203eab2807c7e495eff4f9 [\"image-0\"] pod[\"build\"] exports [\"/uv\", \"/uvx\"]\n",
            "stage-1 <- scratch [\"build\"] assemble\n",
            "image-0 <- ghcr.io/astral-sh/uv:latest [] pod[\"image-0\"] exports [\"/uv\"]\n",
            "waves [[\"image-0\"], [\"build\"]]\n",
        ),
    ),
    (
        "vercel__next.js__examples_with-docker_Dockerfile",
        None,
        &[],
        concat!(
            "base <- docker.io/library/node:18-alpine [] nothing\n",
            "deps <- stage:base [\"base\"] pod[\"deps\"] exports [\"/app/node_modules\"]\n",
            "builder <- stage:base [\"base\", \"deps\"] pod[\"builder\"] exports [\"/app/.next/standalone\", \"/app/.next/static\", \"/app/public\"]\n",
            "runner <- stage:base [\"base\", \"builder\"] pod[\"runner\"]\n",
            "waves [[\"deps\"], [\"builder\"], [\"runner\"]]\n",
        ),
    ),
];

#[test]
fn realworld_plans_are_pinned() {
    let Some(corpora) = corpora::root() else {
        return;
    };
    let mut mismatches = Vec::new();
    for (name, target, args, expected) in PINNED {
        let got = summary(&realworld(&corpora, name, &options(*target, args)));
        if got != *expected {
            mismatches.push(format!("{name} {target:?}:\n{got}"));
        }
    }
    assert!(PINNED.len() >= 10, "pin at least ten real-world plans");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_corpus_location_comes_from_stagecoach_corpora() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        corpora::locate(Some(here.into()), false),
        Located::Found(here.into())
    );
    assert_eq!(
        corpora::locate(Some(here.into()), true),
        Located::Found(here.into()),
        "CI changes nothing when the corpus is there"
    );
    // Unset or empty: `<workspace root>/../shared/corpora`, beside the checkout.
    let default = corpora::default_root();
    let workspace = here.parent().expect("plan/ is in the workspace");
    assert_eq!(default, workspace.join("../shared/corpora"));
    for unset in [None, Some("".into())] {
        match corpora::locate(unset, false) {
            Located::Found(path) => assert_eq!(path, default),
            Located::Skip(message) => assert!(message.contains(&default.display().to_string())),
            Located::Fail(message) => panic!("no CI, no failure: {message}"),
        }
    }
    let missing = here.join("no-such-corpus");
    let message = format!(
        "peer corpus not found at {} (set STAGECOACH_CORPORA)",
        missing.display()
    );
    assert_eq!(
        corpora::locate(Some(missing.clone().into()), false),
        Located::Skip(message.clone())
    );
    assert_eq!(
        corpora::locate(Some(missing.into()), true),
        Located::Fail(message)
    );
}

/// Runs one test of this binary again, alone, with `STAGECOACH_CORPORA` and `CI` as given.
fn rerun(test: &str, corpora: &Path, ci: Option<&str>) -> Output {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", test, "--test-threads=1"])
        .env(corpora::VAR, corpora)
        .env_remove("CI");
    if let Some(ci) = ci {
        command.env("CI", ci);
    }
    command.output().expect("test binary runs")
}

#[test]
fn a_missing_corpus_skips_the_test_but_fails_it_under_ci() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-corpus");
    let line = format!(
        "skipped: peer corpus not found at {} (set STAGECOACH_CORPORA)",
        missing.display()
    );

    let local = rerun("every_realworld_dockerfile_plans", &missing, None);
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.success(), "a skip passes: {local:?}");
    assert!(
        stderr.lines().any(|l| l == line),
        "stderr says why: {stderr}"
    );

    let ci = rerun("every_realworld_dockerfile_plans", &missing, Some("true"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&ci.stdout),
        String::from_utf8_lossy(&ci.stderr)
    );
    assert!(!ci.status.success(), "CI must fail: {output}");
    assert!(
        output.contains("peer corpus not found at") && output.contains("CI is set"),
        "the failure says why: {output}"
    );
    assert!(!output.contains("skipped:"), "no skip under CI: {output}");
}

/// Every real-world Dockerfile plans for two platforms; a shared pod runs no stage that
/// declares a TARGET value, and none that starts from an image without `--platform`.
/// Two are pinned: which pods run once and which per platform, by BuildKit's rules.
#[test]
fn realworld_dockerfiles_share_only_platform_independent_pods() {
    use stagecoach_plan::instruction::Kind;
    let Some(corpora) = corpora::root() else {
        return;
    };
    let platforms: Vec<stagecoach_plan::Platform> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| p.parse().expect("platform"))
        .collect();
    let mut planned = 0;
    for entry in std::fs::read_dir(corpora.join("realworld")).expect("realworld") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("Dockerfile") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let plans = stagecoach_plan::plan_platforms(&text, &PlanOptions::default(), &platforms)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        planned += 1;
        let plan = &plans.plans[0];
        for pod in &plans.shared_pods {
            let Some(Execution::Pod { runs }) = plan.stage(pod).map(|s| &s.execution) else {
                panic!("{}: shared {pod} is no pod", path.display());
            };
            for id in runs {
                let stage = plan.stage(id).expect("stage");
                if let Base::Image { reference, .. } = &stage.base {
                    assert!(
                        stage.platform.is_some(),
                        "{}: {id} runs once on {reference} without --platform",
                        path.display()
                    );
                }
                for inst in &stage.instructions {
                    if let Kind::Arg { args } = &inst.kind {
                        assert!(
                            args.iter().all(|a| !a.name.starts_with("TARGET")),
                            "{}: {id} declares a TARGET value and runs once",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    assert_eq!(planned, 37);
    let shared = |name: &str| {
        let text = std::fs::read_to_string(corpora.join(format!("realworld/{name}.Dockerfile")))
            .expect("read");
        stagecoach_plan::plan_platforms(&text, &PlanOptions::default(), &platforms)
            .expect("plans")
            .shared_pods
            .into_iter()
            .collect::<Vec<_>>()
    };
    // FROM --platform=$BUILDPLATFORM node/python stages and their children run once; the
    // nginx stage is `--platform=$TARGETPLATFORM` and assembled per platform.
    assert_eq!(
        shared("docker__getting-started__Dockerfile"),
        ["app-base", "app-zip-creator", "build", "test"]
    );
    // buildx: xx, gobase and the version stage once; the build reads TARGETPLATFORM.
    assert_eq!(
        shared("docker__buildx__Dockerfile"),
        ["buildx-version", "gobase", "xx"]
    );
}
