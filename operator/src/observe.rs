//! What a Kubernetes Pod tells the core: its role in the build (from our labels), whether
//! it is pending, running, done, failed or lost, and its termination message.

use k8s_openapi::api::core::v1::Pod;
use stagecoach_plan::contract::PodOutcome;

use crate::core::{ObservedPod, PodState};
use crate::render::{self, Role};

/// Pod failure reasons that are not the build's fault: the pod may be started again.
const LOST_REASONS: [&str; 5] = [
    "Evicted",
    "Preempting",
    "NodeLost",
    "Shutdown",
    "Terminated",
];

/// Maps a pod the build owns; None for a pod without our labels.
pub fn observe_pod(pod: &Pod, stage_names: &[String]) -> Option<ObservedPod> {
    let labels = pod.metadata.labels.as_ref()?;
    let role = Role::from_labels(labels, stage_names)?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
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
                _ => PodState::Pending,
            }
        };
    let outcome = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(PodOutcome::from_message)
        .or_else(|| {
            // Deadline or a container killed before it could report.
            (state == PodState::Failed).then(|| PodOutcome {
                succeeded: false,
                reason: (reason == "DeadlineExceeded").then(|| "Timeout".to_string()),
                message: terminated
                    .and_then(|t| t.message.clone())
                    .or_else(|| status.and_then(|s| s.message.clone())),
                ..PodOutcome::default()
            })
        });
    Some(ObservedPod {
        name: pod.metadata.name.clone().unwrap_or_default(),
        role,
        generation: labels.get(render::LABEL_GENERATION)?.parse().ok()?,
        attempt: labels
            .get(render::LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        state,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        started: status.and_then(|s| s.start_time.clone()),
        finished: terminated.and_then(|t| t.finished_at.clone()),
        outcome,
    })
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
            "stagecoach.dev/stage": "build-x",
            "stagecoach.dev/generation": "2",
            "stagecoach.dev/attempt": "1",
        })
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
}
