//! The core and the renderers over 1,000 ImageBuilds, each driven through a whole build
//! (source, three parallel stages and a final one, assemble): prints the time per
//! decision and the peak memory. `cargo bench -p stagecoach-operator --bench scale`.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use stagecoach_operator::api::{ImageBuild, Phase};
use stagecoach_operator::core::{Action, Observed, ObservedPod, PodState, decide};
use stagecoach_operator::render::{LABEL_ATTEMPT, LABEL_GENERATION, OperatorConfig, Role};
use stagecoach_plan::contract::{PlanSummary, PodOutcome, PodSummary};

fn build(n: usize) -> ImageBuild {
    let mut b: ImageBuild = serde_json::from_value(serde_json::json!({
        "apiVersion": "stagecoach.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": format!("build-{n}"), "namespace": "bench", "uid": format!("u{n}"), "generation": 1},
        "spec": {"source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "registry.example/app:1"}}
    }))
    .expect("build");
    b.status = None;
    b
}

fn outcome_for(role: &Role) -> PodOutcome {
    let pod = |id: &str, waits: &[&str]| PodSummary {
        id: id.into(),
        stages: vec![id.into()],
        image: Some("busybox@sha256:1".into()),
        waits_for: waits.iter().map(|s| s.to_string()).collect(),
        cache: None,
        secrets: Vec::new(),
        run_cache: false,
        ssh: Vec::new(),
        platform: None,
        runs_on: None,
    };
    match role {
        Role::Source => PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("abc".into()),
                commit_time: Some(1),
                target: "final".into(),
                pods: vec![
                    pod("a", &[]),
                    pod("b", &[]),
                    pod("c", &[]),
                    pod("final", &["a", "b", "c"]),
                ],
                warnings: Vec::new(),
            }),
            ..PodOutcome::default()
        },
        Role::Assemble => PodOutcome {
            succeeded: true,
            image: Some(format!("registry.example/app:1@sha256:{}", "a".repeat(64))),
            ..PodOutcome::default()
        },
        Role::Stage(_) | Role::Cache => PodOutcome {
            succeeded: true,
            ..PodOutcome::default()
        },
    }
}

fn main() {
    let config = OperatorConfig {
        builder_image: "builder:1".into(),
        default_workspace_size: "1Gi".into(),
        default_storage_class: None,
        insecure_registries: Vec::new(),
        cache_repository: None,
        run_cache: None,
        build_platform: stagecoach_operator::render::DEFAULT_BUILD_PLATFORM.into(),
        emulated_platforms: Vec::new(),
    };
    let mut builds: Vec<(ImageBuild, Vec<ObservedPod>, bool)> =
        (0..1000).map(|n| (build(n), Vec::new(), false)).collect();
    let now = Timestamp::now();
    let start = Instant::now();
    let mut decisions = 0u64;
    let mut pods_rendered = 0u64;
    loop {
        let mut running = 0;
        for (build, pods, claim) in &mut builds {
            let d = decide(
                &Observed {
                    build,
                    pods,
                    claim_exists: *claim,
                    now,
                },
                &config,
            );
            decisions += 1;
            for a in &d.actions {
                match a {
                    Action::CreateClaim(_) => *claim = true,
                    Action::CreatePod(p) => {
                        pods_rendered += 1;
                        let l = p.metadata.labels.clone().unwrap_or_default();
                        let role = Role::from_labels(&l, &[]).expect("our labels");
                        pods.push(ObservedPod {
                            name: p.metadata.name.clone().unwrap_or_default(),
                            outcome: Some(outcome_for(&role)),
                            role,
                            generation: l[LABEL_GENERATION].parse().unwrap_or(1),
                            attempt: l[LABEL_ATTEMPT].parse().unwrap_or(0),
                            // Every pod finishes by the next look.
                            state: PodState::Succeeded,
                            node: None,
                            started: None,
                            finished: None,
                        });
                    }
                    _ => {}
                }
            }
            let done = matches!(d.status.phase, Some(Phase::Succeeded | Phase::Failed));
            build.status = Some(d.status);
            if !done {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    let succeeded = builds
        .iter()
        .filter(|(b, ..)| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
        .count();
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    println!(
        "1000 ImageBuilds driven to the end: {succeeded} succeeded, {decisions} decisions, {pods_rendered} pods rendered in {elapsed:?} ({:.1} µs per decision); peak memory {}",
        elapsed.as_secs_f64() * 1e6 / decisions as f64,
        peak_kib.trim_start_matches("VmHWM:").trim()
    );
}
