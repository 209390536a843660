//! What a Kubernetes Pod tells the core: its role in the build (from our labels), whether
//! it is pending, cannot start, is running, done, failed or lost, and its termination
//! message.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use stagecoach_plan::contract::PodOutcome;

use crate::core::{ObservedPod, PodState, StartFailure, StartProblem, reason};
use crate::render::{self, Role};

/// Pod failure reasons that are not the build's fault: the pod may be started again.
const LOST_REASONS: [&str; 5] = [
    "Evicted",
    "Preempting",
    "NodeLost",
    "Shutdown",
    "Terminated",
];

/// Our containers in a pod of each role, as render.rs names them: the init containers in
/// the order they run, then the one that does the work. Statuses are looked up by these
/// names: the kubelet sorts them by name, and injected sidecars (`istio-proxy`, ...) sit
/// among them.
pub fn containers(role: &Role) -> (&'static [&'static str], &'static str) {
    match role {
        Role::Source => (&[], "source"),
        Role::Stage(_) => (&["install"], "stage"),
        Role::Assemble => (&[], "assemble"),
        Role::Cache => (&[], "cache"),
    }
}

/// The container whose termination message and log are the pod's.
pub fn main_container(role: &Role) -> &'static str {
    containers(role).1
}

/// Maps a pod the build owns; None for a pod without our labels.
pub fn observe_pod(pod: &Pod, stage_names: &[String]) -> Option<ObservedPod> {
    let labels = pod.metadata.labels.as_ref()?;
    let role = Role::from_labels(labels, stage_names)?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    let (inits, main) = containers(&role);
    // How our main container ended; or, when it never ran, how an init container failed.
    let end: Option<(&str, &ContainerStateTerminated)> =
        match terminated(status.and_then(|s| s.container_statuses.as_ref()), main) {
            Some(t) => Some((main, t)),
            None => inits.iter().find_map(|name| {
                terminated(
                    status.and_then(|s| s.init_container_statuses.as_ref()),
                    name,
                )
                .filter(|t| t.exit_code != 0)
                .map(|t| (*name, t))
            }),
        };
    let state =
        if pod.metadata.deletion_timestamp.is_some() && !matches!(phase, "Succeeded" | "Failed") {
            PodState::Lost
        } else {
            match phase {
                "Succeeded" => PodState::Succeeded,
                "Failed" if LOST_REASONS.contains(&reason) => PodState::Lost,
                "Failed" => PodState::Failed,
                "Running" => PodState::Running,
                "Unknown" => PodState::Lost,
                _ => match start_problem(pod, &role) {
                    Some(problem) => PodState::Stuck(problem),
                    None => PodState::Pending,
                },
            }
        };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let outcome = end
        .and_then(|(_, t)| t.message.as_deref())
        .and_then(PodOutcome::from_message)
        .or_else(|| {
            // Deadline, a container that could not start, or one killed before it could
            // report.
            (state == PodState::Failed).then(|| {
                let start_error = end.filter(|(_, t)| {
                    matches!(
                        t.reason.as_deref(),
                        Some("StartError" | "ContainerCannotRun")
                    )
                });
                let failure = match start_error {
                    _ if reason == "DeadlineExceeded" => Some(reason::TIMEOUT.to_string()),
                    Some(_) => Some(reason::POD_START_FAILED.to_string()),
                    None => None,
                };
                let message = match start_error {
                    Some((container, t)) => Some(format!(
                        "{}: container {container:?} of pod {name} cannot start ({}: {})",
                        whose(&role),
                        t.reason.as_deref().unwrap_or_default(),
                        t.message.as_deref().unwrap_or_default(),
                    )),
                    None => end
                        .and_then(|(_, t)| t.message.clone())
                        .or_else(|| status.and_then(|s| s.message.clone())),
                };
                PodOutcome {
                    succeeded: false,
                    reason: failure,
                    message,
                    ..PodOutcome::default()
                }
            })
        });
    Some(ObservedPod {
        name,
        role,
        generation: labels.get(render::LABEL_GENERATION)?.parse().ok()?,
        attempt: labels
            .get(render::LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        state,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        started: status.and_then(|s| s.start_time.clone()),
        finished: end.and_then(|(_, t)| t.finished_at.clone()),
        outcome,
    })
}

/// How the container `name` among `statuses` ended, if it has.
fn terminated<'p>(
    statuses: Option<&'p Vec<ContainerStatus>>,
    name: &str,
) -> Option<&'p ContainerStateTerminated> {
    statuses
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
}

/// How failure messages name a pod's owner: `stage build`, `source pod`, `assemble pod`.
fn whose(role: &Role) -> String {
    match role {
        Role::Stage(name) => format!("stage {name}"),
        role => format!("{} pod", role.label()),
    }
}

/// The first of our containers (init containers first, in order) whose waiting state
/// says it cannot start.
fn start_problem(pod: &Pod, role: &Role) -> Option<StartProblem> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref();
    let (inits, main) = containers(role);
    if let Some(unschedulable) = unschedulable(pod, main) {
        return Some(unschedulable);
    }
    let inits = inits.iter().map(|name| {
        (
            *name,
            status.init_container_statuses.as_deref(),
            spec.and_then(|s| s.init_containers.as_deref()),
        )
    });
    let main = std::iter::once((
        main,
        status.container_statuses.as_deref(),
        spec.map(|s| s.containers.as_slice()),
    ));
    inits.chain(main).find_map(|(name, statuses, specs)| {
        let current = statuses?.iter().find(|c| c.name == name)?;
        let waiting = current.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.clone().unwrap_or_default();
        let message = waiting.message.clone().unwrap_or_default();
        let failure = classify(&reason, &message)?;
        let image = specs
            .and_then(|cs| cs.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
            .or_else(|| Some(current.image.clone()).filter(|i| !i.is_empty()));
        Some(StartProblem {
            failure,
            container: name.to_string(),
            image,
            reason,
            message,
        })
    })
}

/// A pod the scheduler found no node for (its `PodScheduled` condition), with the node
/// it is pinned to and what its main container requests.
fn unschedulable(pod: &Pod, main: &str) -> Option<StartProblem> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.is_some() {
        return None;
    }
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    if condition.reason.as_deref() != Some("Unschedulable") {
        return None;
    }
    let requests = spec
        .containers
        .iter()
        .find(|c| c.name == main)
        .and_then(|c| c.resources.as_ref()?.requests.as_ref())
        .filter(|r| !r.is_empty())
        .map_or_else(
            || "no resources".to_string(),
            |r| {
                r.iter()
                    .map(|(name, q)| format!("{name} {}", q.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
    Some(StartProblem {
        failure: StartFailure::Unschedulable {
            node: render::pinned_node(pod).map(str::to_string),
            requests,
        },
        container: main.to_string(),
        image: None,
        reason: "Unschedulable".into(),
        message: condition.message.clone().unwrap_or_default(),
    })
}

/// What keeps a waiting container from starting, from the kubelet's reason; None while
/// its start is under way (`ContainerCreating`, `PodInitializing`).
fn classify(reason: &str, message: &str) -> Option<StartFailure> {
    Some(match reason {
        "ErrImagePull" | "ImagePullBackOff" | "ImageInspectError" => StartFailure::ImagePull,
        "InvalidImageName" | "ErrImageNeverPull" => StartFailure::InvalidImage,
        "CreateContainerConfigError" => missing_secret(message).unwrap_or(StartFailure::Start),
        "CreateContainerError" | "RunContainerError" => StartFailure::Start,
        _ => return None,
    })
}

/// The Secret, and key, a `CreateContainerConfigError` says is missing: `secret "x" not
/// found`, or `couldn't find key k in Secret ns/x`. None for any other config error (a
/// ConfigMap, a subPath, runAsNonRoot, ...).
fn missing_secret(message: &str) -> Option<StartFailure> {
    if let Some((_, rest)) = message.split_once("couldn't find key ") {
        let (key, secret) = rest.split_once(" in Secret ")?;
        let secret = secret.split_whitespace().next()?;
        let name = secret.rsplit('/').next()?.trim_end_matches(['.', ',', ';']);
        return Some(StartFailure::Secret {
            name: name.into(),
            key: Some(key.into()),
        });
    }
    ["secret \"", "secrets \""].iter().find_map(|marker| {
        let (_, rest) = message.split_once(marker)?;
        let (name, rest) = rest.split_once('"')?;
        rest.starts_with(" not found")
            .then(|| StartFailure::Secret {
                name: name.into(),
                key: None,
            })
    })
}

/// A pod still being created that the kubelet cannot mount a Secret volume for: the
/// reason is only in its `FailedMount` event (`message`, its latest event), never in a
/// container state. Other mount failures are left to the build's timeout: a volume still
/// attached elsewhere (a lost node's ReadWriteOnce claim) frees itself after minutes,
/// and a retried pod must not fail for it.
pub fn with_mount_failure(mut observed: ObservedPod, message: &str) -> ObservedPod {
    if observed.state == PodState::Pending
        && let Some(failure) = missing_secret(message)
    {
        observed.state = PodState::Stuck(StartProblem {
            failure,
            container: main_container(&observed.role).to_string(),
            image: None,
            reason: "FailedMount".into(),
            message: message.to_string(),
        });
    }
    observed
}

/// Whether a pending pod may be held up by a volume: scheduled, and no container of ours
/// past `ContainerCreating`/`PodInitializing` (a mount blocks every container).
pub fn may_wait_on_a_mount(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let creating = |statuses: Option<&Vec<ContainerStatus>>| {
        statuses.is_none_or(|cs| {
            cs.iter().all(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    .is_none_or(|r| r == "ContainerCreating" || r == "PodInitializing")
                    && c.state
                        .as_ref()
                        .is_none_or(|s| s.running.is_none() && s.terminated.is_none())
            })
        })
    };
    status.phase.as_deref() == Some("Pending")
        && scheduled
        && creating(status.init_container_statuses.as_ref())
        && creating(status.container_statuses.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn labels(role: &str) -> serde_json::Value {
        serde_json::json!({
            "app.kubernetes.io/component": role,
            "stagecoach.dev/stage": "build_x",
            "stagecoach.dev/generation": "2",
            "stagecoach.dev/attempt": "1",
        })
    }

    #[test]
    fn a_failed_mount_of_a_missing_secret_is_a_start_problem_and_others_wait() {
        let names = vec!["build_x".to_string()];
        let pending = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("source")},
            "spec": {"nodeName": "n", "containers": [{"name": "source", "image": "b:1"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "source", "ready": false,
                "restartCount": 0, "image": "b:1", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}}]},
        }));
        assert!(may_wait_on_a_mount(&pending));
        let seen = observe_pod(&pending, &names).expect("ours");
        let note = "MountVolume.SetUp failed for volume \"git\" : secret \"git-creds\" not found";
        let stuck = with_mount_failure(seen.clone(), note);
        let PodState::Stuck(problem) = &stuck.state else {
            panic!("{:?}", stuck.state);
        };
        assert_eq!(
            problem.failure,
            StartFailure::Secret {
                name: "git-creds".into(),
                key: None
            }
        );
        assert_eq!(
            (problem.container.as_str(), problem.reason.as_str()),
            ("source", "FailedMount")
        );
        let other = with_mount_failure(
            seen,
            "Unable to attach or mount volumes: unmounted volumes=[workspace]: timed out waiting for the condition",
        );
        assert_eq!(
            other.state,
            PodState::Pending,
            "left to the build's timeout"
        );
        let mut unscheduled = pending.clone();
        unscheduled.spec.as_mut().expect("spec").node_name = None;
        assert!(
            !may_wait_on_a_mount(&unscheduled),
            "not scheduled: nothing to mount yet"
        );
        let running = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("source")},
            "spec": {"nodeName": "n", "containers": [{"name": "source", "image": "b:1"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "source", "ready": true,
                "restartCount": 0, "image": "b:1", "imageID": "", "state": {"running": {}}}]},
        }));
        assert!(!may_wait_on_a_mount(&running));
    }

    #[test]
    fn pods_map_to_states_and_outcomes() {
        let names = vec!["build_x".to_string()];
        let running = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("stage")},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Running"}
        }));
        let o = observe_pod(&running, &names).expect("ours");
        assert_eq!(o.role, Role::Stage("build_x".into()));
        assert_eq!(
            (o.state, o.generation, o.attempt),
            (PodState::Running, 2, 1)
        );
        assert_eq!(o.node.as_deref(), Some("n1"));

        let failed = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("stage")},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "stage", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "message":
                    "{\"succeeded\":false,\"reason\":\"StageFailed\",\"message\":\"stage build_x: Dockerfile:3: RUN false: exit code 1\",\"line\":3}"}}
            }]}
        }));
        let o = observe_pod(&failed, &names).expect("ours");
        assert_eq!(o.state, PodState::Failed);
        let outcome = o.outcome.expect("outcome");
        assert_eq!(
            (outcome.reason.as_deref(), outcome.line),
            (Some("StageFailed"), Some(3))
        );

        let evicted = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("source")},
            "status": {"phase": "Failed", "reason": "Evicted"}
        }));
        assert_eq!(
            observe_pod(&evicted, &names).expect("ours").state,
            PodState::Lost
        );

        let deadline = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": labels("assemble")},
            "status": {"phase": "Failed", "reason": "DeadlineExceeded"}
        }));
        let o = observe_pod(&deadline, &names).expect("ours");
        assert_eq!(o.outcome.and_then(|x| x.reason).as_deref(), Some("Timeout"));

        let foreign =
            pod(serde_json::json!({"metadata": {"name": "x", "labels": {"app": "other"}}}));
        assert!(observe_pod(&foreign, &names).is_none());
    }

    /// A stage pod as the API server returns it, with an injected istio sidecar (istio's
    /// init container and proxy), in `phase` with these container statuses.
    fn stage_pod(
        phase: &str,
        init_statuses: serde_json::Value,
        statuses: serde_json::Value,
    ) -> Pod {
        pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app-stage-build-x-g2", "namespace": "team", "labels": labels("stage")},
            "spec": {
                "initContainers": [
                    {"name": "install", "image": "registry.example/stagecoach/builder:0.1.0",
                     "args": ["install", "/stagecoach"]},
                    {"name": "istio-init", "image": "docker.io/istio/proxyv2:1.22.0"}
                ],
                "containers": [
                    {"name": "stage", "image": "registry.example/team/base@sha256:3f9c",
                     "command": ["/stagecoach/stagecoach-builder"], "args": ["stage", "build_x"]},
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.0"}
                ],
                "nodeName": "node-1", "restartPolicy": "Never"
            },
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T10:00:00Z"},
                    {"type": "Initialized", "status": "False", "lastTransitionTime": "2025-01-01T10:00:00Z",
                     "reason": "ContainersNotInitialized"}
                ],
                "hostIP": "10.0.0.5", "podIP": "10.244.1.7",
                "startTime": "2025-01-01T10:00:00Z",
                "initContainerStatuses": init_statuses,
                "containerStatuses": statuses
            }
        }))
    }

    fn status(name: &str, image: &str, state: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": image, "imageID": "", "lastState": {}, "ready": false,
            "restartCount": 0, "started": false, "state": state
        })
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({"waiting": {"reason": reason, "message": message}})
    }

    fn completed() -> serde_json::Value {
        serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed",
            "startedAt": "2025-01-01T10:00:01Z", "finishedAt": "2025-01-01T10:00:02Z"}})
    }

    fn inits_done() -> serde_json::Value {
        serde_json::json!([
            status(
                "install",
                "registry.example/stagecoach/builder:0.1.0",
                completed()
            ),
            status("istio-init", "docker.io/istio/proxyv2:1.22.0", completed()),
        ])
    }

    fn problem(o: &ObservedPod) -> &StartProblem {
        match &o.state {
            PodState::Stuck(problem) => problem,
            other => panic!("not stuck: {other:?}"),
        }
    }

    /// A pod the scheduler places nowhere, as the API server shows it: no node, the
    /// PodScheduled condition False with reason Unschedulable, no container statuses.
    #[test]
    fn an_unschedulable_pod_is_a_start_problem_with_its_node_and_requests() {
        let names = vec!["build_x".to_string()];
        let mut p = stage_pod("Pending", serde_json::json!([]), serde_json::json!([]));
        let spec = p.spec.as_mut().expect("spec");
        spec.node_name = None;
        spec.containers[0].resources = Some(
            serde_json::from_value(serde_json::json!({"requests": {"cpu": "2", "memory": "4Gi"}}))
                .expect("resources"),
        );
        render::pin_to_node(&mut p, "node-1");
        let status = p.status.as_mut().expect("status");
        status.init_container_statuses = None;
        status.container_statuses = None;
        status.conditions = Some(vec![serde_json::from_value(serde_json::json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "lastTransitionTime": "2025-01-01T10:00:00Z",
            "message": "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
        }))
        .expect("condition")]);
        let o = observe_pod(&p, &names).expect("ours");
        assert_eq!(
            problem(&o),
            &StartProblem {
                failure: StartFailure::Unschedulable {
                    node: Some("node-1".into()),
                    requests: "cpu 2, memory 4Gi".into(),
                },
                container: "stage".into(),
                image: None,
                reason: "Unschedulable".into(),
                message: "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector.".into(),
            }
        );
        // Once scheduled, it is only pending.
        p.spec.as_mut().expect("spec").node_name = Some("node-1".into());
        assert_eq!(
            observe_pod(&p, &names).expect("ours").state,
            PodState::Pending
        );
    }

    #[test]
    fn our_container_is_found_by_name_behind_a_sidecar() {
        let names = vec!["build_x".to_string()];
        // The kubelet sorts statuses by name: istio-proxy comes before stage.
        let p = stage_pod(
            "Pending",
            inits_done(),
            serde_json::json!([
                status(
                    "istio-proxy",
                    "docker.io/istio/proxyv2:1.22.0",
                    serde_json::json!({"running": {"startedAt": "2025-01-01T10:00:03Z"}})
                ),
                status(
                    "stage",
                    "registry.example/team/base@sha256:3f9c",
                    waiting(
                        "ImagePullBackOff",
                        "Back-off pulling image \"registry.example/team/base@sha256:3f9c\""
                    )
                ),
            ]),
        );
        let o = observe_pod(&p, &names).expect("ours");
        assert_eq!(
            problem(&o),
            &StartProblem {
                failure: StartFailure::ImagePull,
                container: "stage".into(),
                image: Some("registry.example/team/base@sha256:3f9c".into()),
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"registry.example/team/base@sha256:3f9c\"".into(),
            }
        );
        // A sidecar that cannot pull is not ours to judge: our container is still coming.
        let p = stage_pod(
            "Pending",
            inits_done(),
            serde_json::json!([
                status(
                    "istio-proxy",
                    "docker.io/istio/proxyv2:1.22.0",
                    waiting("ErrImagePull", "rpc error: code = NotFound")
                ),
                status(
                    "stage",
                    "registry.example/team/base@sha256:3f9c",
                    waiting("ContainerCreating", "")
                ),
            ]),
        );
        assert_eq!(
            observe_pod(&p, &names).expect("ours").state,
            PodState::Pending
        );
    }

    #[test]
    fn an_init_container_that_cannot_pull_the_builder_image_is_seen() {
        let names = vec!["build_x".to_string()];
        let pull = "Failed to pull image \"registry.example/stagecoach/builder:0.1.0\": rpc error: \
                    code = NotFound desc = failed to pull and unpack image \
                    \"registry.example/stagecoach/builder:0.1.0\": failed to resolve reference \
                    \"registry.example/stagecoach/builder:0.1.0\": \
                    registry.example/stagecoach/builder:0.1.0: not found";
        let p = stage_pod(
            "Pending",
            serde_json::json!([
                status(
                    "install",
                    "registry.example/stagecoach/builder:0.1.0",
                    waiting("ErrImagePull", pull)
                ),
                status(
                    "istio-init",
                    "docker.io/istio/proxyv2:1.22.0",
                    waiting("PodInitializing", "")
                ),
            ]),
            serde_json::json!([
                status(
                    "istio-proxy",
                    "docker.io/istio/proxyv2:1.22.0",
                    waiting("PodInitializing", "")
                ),
                status(
                    "stage",
                    "registry.example/team/base@sha256:3f9c",
                    waiting("PodInitializing", "")
                ),
            ]),
        );
        let o = observe_pod(&p, &names).expect("ours");
        let problem = problem(&o);
        assert_eq!(
            (
                problem.failure.clone(),
                problem.container.as_str(),
                problem.image.as_deref()
            ),
            (
                StartFailure::ImagePull,
                "install",
                Some("registry.example/stagecoach/builder:0.1.0")
            )
        );
        assert_eq!(
            (problem.reason.as_str(), problem.message.as_str()),
            ("ErrImagePull", pull)
        );
    }

    #[test]
    fn waiting_reasons_map_to_start_failures() {
        let secret = |name: &str, key: Option<&str>| StartFailure::Secret {
            name: name.into(),
            key: key.map(String::from),
        };
        let cases = [
            ("ContainerCreating", "", None),
            ("PodInitializing", "", None),
            (
                "ErrImagePull",
                "rpc error: code = Unknown desc = 401 Unauthorized",
                Some(StartFailure::ImagePull),
            ),
            (
                "ImageInspectError",
                "Failed to inspect image",
                Some(StartFailure::ImagePull),
            ),
            (
                "InvalidImageName",
                "couldn't parse image reference \"Base:1\"",
                Some(StartFailure::InvalidImage),
            ),
            (
                "ErrImageNeverPull",
                "Container image \"base:1\" is not present with pull policy of Never",
                Some(StartFailure::InvalidImage),
            ),
            (
                "CreateContainerConfigError",
                "secret \"git-creds\" not found",
                Some(secret("git-creds", None)),
            ),
            (
                "CreateContainerConfigError",
                "secrets \"git-creds\" not found",
                Some(secret("git-creds", None)),
            ),
            (
                "CreateContainerConfigError",
                "couldn't find key password in Secret team/git-creds",
                Some(secret("git-creds", Some("password"))),
            ),
            (
                "CreateContainerConfigError",
                "configmap \"settings\" not found",
                Some(StartFailure::Start),
            ),
            (
                "CreateContainerConfigError",
                "failed to create subPath directory for volumeMount \"workspace\" of container \"stage\"",
                Some(StartFailure::Start),
            ),
            (
                "CreateContainerError",
                "failed to reserve container name \"stage_app\": name is reserved",
                Some(StartFailure::Start),
            ),
            (
                "RunContainerError",
                "failed to start containerd task: permission denied",
                Some(StartFailure::Start),
            ),
        ];
        let names = vec!["build_x".to_string()];
        for (reason, message, expected) in cases {
            let p = stage_pod(
                "Pending",
                inits_done(),
                serde_json::json!([status(
                    "stage",
                    "registry.example/team/base@sha256:3f9c",
                    waiting(reason, message)
                )]),
            );
            let o = observe_pod(&p, &names).expect("ours");
            let seen = match &o.state {
                PodState::Stuck(problem) => Some(problem.failure.clone()),
                PodState::Pending => None,
                other => panic!("{reason}: {other:?}"),
            };
            assert_eq!(seen, expected, "{reason}: {message}");
        }
        // Deleted while stuck: lost, not stuck.
        let mut p = stage_pod(
            "Pending",
            inits_done(),
            serde_json::json!([status("stage", "x", waiting("ErrImagePull", ""))]),
        );
        p.metadata.deletion_timestamp = p.status.as_ref().and_then(|s| s.start_time.clone());
        assert_eq!(observe_pod(&p, &names).expect("ours").state, PodState::Lost);
    }

    #[test]
    fn the_outcome_is_read_from_our_container_and_a_start_error_is_pod_start_failed() {
        let names = vec!["build_x".to_string()];
        let outcome = "{\"succeeded\":false,\"reason\":\"StageFailed\",\"message\":\"stage build_x: Dockerfile:3: RUN false: exit code 1\",\"line\":3}";
        let p = stage_pod(
            "Failed",
            inits_done(),
            serde_json::json!([
                status(
                    "istio-proxy",
                    "docker.io/istio/proxyv2:1.22.0",
                    serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
                ),
                status(
                    "stage",
                    "registry.example/team/base@sha256:3f9c",
                    serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error", "message": outcome,
                        "finishedAt": "2025-01-01T10:01:00Z"}})
                ),
            ]),
        );
        let o = observe_pod(&p, &names).expect("ours");
        let got = o.outcome.expect("outcome");
        assert_eq!(
            (got.reason.as_deref(), got.line),
            (Some("StageFailed"), Some(3))
        );
        assert!(o.finished.is_some());

        // restartPolicy Never: a container the runtime could not start ends at once.
        let start_error = "failed to create containerd task: failed to create shim task: OCI runtime \
                           create failed: runc create failed: unable to start container process: \
                           exec: \"/stagecoach/stagecoach-builder\": exec format error";
        let p = stage_pod(
            "Failed",
            inits_done(),
            serde_json::json!([status(
                "stage",
                "registry.example/team/base@sha256:3f9c",
                serde_json::json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": start_error}})
            )]),
        );
        let got = observe_pod(&p, &names)
            .expect("ours")
            .outcome
            .expect("outcome");
        assert_eq!(got.reason.as_deref(), Some("PodStartFailed"));
        assert_eq!(
            got.message.as_deref(),
            Some(format!(
                "stage build_x: container \"stage\" of pod app-stage-build-x-g2 cannot start (StartError: {start_error})"
            ).as_str())
        );

        // The install init container failed: its message, the main container never ran.
        let p = stage_pod(
            "Failed",
            serde_json::json!([status(
                "install",
                "registry.example/stagecoach/builder:0.1.0",
                serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "install: /stagecoach: read-only file system"}})
            )]),
            serde_json::json!([status(
                "stage",
                "registry.example/team/base@sha256:3f9c",
                waiting("PodInitializing", "")
            )]),
        );
        let got = observe_pod(&p, &names)
            .expect("ours")
            .outcome
            .expect("outcome");
        assert_eq!(
            got.message.as_deref(),
            Some("install: /stagecoach: read-only file system")
        );
    }

    #[test]
    fn our_container_names_are_the_rendered_ones() {
        let mut build: crate::api::ImageBuild = serde_saphyr::from_str(
            "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: app, namespace: team}\n\
             spec:\n  source: {git: {url: 'https://git.example/app.git'}}\n\
             \x20 output: {image: 'registry.example/app:1'}\n",
        )
        .expect("build");
        build.metadata.generation = Some(1);
        let config = render::OperatorConfig {
            builder_image: "builder:1".into(),
            default_workspace_size: "1Gi".into(),
            default_storage_class: None,
            insecure_registries: Vec::new(),
            cache_repository: None,
            run_cache: None,
            build_platform: render::DEFAULT_BUILD_PLATFORM.into(),
            emulated_platforms: Vec::new(),
        };
        let stage = stagecoach_plan::contract::PodSummary {
            id: "build".into(),
            stages: vec!["build".into()],
            image: Some("busybox@sha256:1".into()),
            waits_for: Vec::new(),
            cache: None,
            secrets: Vec::new(),
            run_cache: false,
            ssh: Vec::new(),
            platform: None,
            runs_on: None,
        };
        for (role, pod) in [
            (Role::Source, render::render_source_pod(&build, &config, 0)),
            (
                Role::Stage("build".into()),
                render::render_stage_pod(&build, &config, &stage, None, 0),
            ),
            (
                Role::Assemble,
                render::render_assemble_pod(&build, &config, None, None, 0),
            ),
        ] {
            let spec = pod.spec.expect("spec");
            let names = |cs: &[k8s_openapi::api::core::v1::Container]| {
                cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
            };
            let (inits, main) = containers(&role);
            assert_eq!(names(&spec.containers), [main], "{role:?}");
            assert_eq!(
                names(spec.init_containers.as_deref().unwrap_or_default()),
                inits,
                "{role:?}"
            );
        }
    }
}
