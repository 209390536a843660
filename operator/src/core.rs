//! The build state machine, pure: from what is observed (the ImageBuild, its pods, its
//! workspace claim, the time) to the actions to take and the new status. No API calls:
//! the controller and the local runner are shells around [`decide`].
//!
//! Everything needed to continue lives in the status and the pods (nothing in memory),
//! so a restarted operator carries on, and a stage recorded as succeeded is never run
//! again even if its pod is gone.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use stagecoach_plan::contract::{PlanSummary, PodOutcome};

use crate::api::{
    Failure, ImageBuild, ImageBuildStatus, ImageStatus, Phase, SourceStatus, StagePhase,
    StageStatus,
};
use crate::render::{self, OperatorConfig, Role};

/// Stable failure reasons (also metric labels).
pub mod reason {
    pub const DOCKERFILE_INVALID: &str = "DockerfileInvalid";
    pub const SOURCE_FAILED: &str = "SourceFailed";
    pub const STAGE_FAILED: &str = "StageFailed";
    pub const PUSH_FAILED: &str = "PushFailed";
    pub const TIMEOUT: &str = "Timeout";
    pub const POD_LOST: &str = "PodLost";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const BUILDING: &str = "Building";
}

/// What a pod is doing, as the core needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Evicted, preempted, its node gone: not the build's fault, may be retried.
    Lost,
}

/// One pod the build owns, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedPod {
    pub name: String,
    pub role: Role,
    pub generation: i64,
    pub attempt: u32,
    pub state: PodState,
    pub node: Option<String>,
    pub started: Option<Time>,
    pub finished: Option<Time>,
    /// The pod's termination message, parsed.
    pub outcome: Option<PodOutcome>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub build: &'a ImageBuild,
    pub pods: &'a [ObservedPod],
    pub claim_exists: bool,
    pub now: Timestamp,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateClaim(Box<PersistentVolumeClaim>),
    CreatePod(Box<Pod>),
    DeletePod(String),
    DeleteClaim(String),
    /// A Kubernetes Event on the ImageBuild (`Normal` or `Warning`).
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// The actions and the status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub status: ImageBuildStatus,
    /// Decide again after this long even if nothing changes: a finished build keeps
    /// pods or its workspace until the retention TTL passes.
    pub recheck_after: Option<std::time::Duration>,
}

/// Decides what the build needs next.
pub fn decide(observed: &Observed<'_>, config: &OperatorConfig) -> Decision {
    let build = observed.build;
    let generation = build.metadata.generation.unwrap_or(1);
    let mut status = build.status.clone().unwrap_or_default();
    let mut actions = Vec::new();

    // A new generation is a new build: stop the old pods, start over.
    if status.observed_generation != Some(generation) {
        for pod in observed.pods.iter().filter(|p| p.generation != generation) {
            if !matches!(pod.state, PodState::Succeeded | PodState::Failed) {
                actions.push(Action::DeletePod(pod.name.clone()));
            }
        }
        status = ImageBuildStatus {
            observed_generation: Some(generation),
            phase: Some(Phase::Pending),
            start_time: Some(Time(observed.now)),
            source: Some(SourceStatus {
                url: build.spec.source.git.url.clone(),
                revision: build.spec.source.git.revision.clone(),
                commit: None,
                commit_time: None,
            }),
            ..ImageBuildStatus::default()
        };
        actions.push(event(
            false,
            "BuildStarted",
            format!("generation {generation}"),
        ));
    }
    if matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) {
        let (deletes, recheck_after) = retention(observed, &status);
        actions.extend(deletes);
        return Decision {
            actions,
            status,
            recheck_after,
        };
    }
    let pods: Vec<&ObservedPod> = observed
        .pods
        .iter()
        .filter(|p| p.generation == generation)
        .collect();
    let mut step = Step {
        observed,
        config,
        pods: &pods,
        status: &mut status,
        actions: &mut actions,
    };
    step.advance();
    Decision {
        actions,
        status,
        recheck_after: None,
    }
}

struct Step<'a, 'b> {
    observed: &'a Observed<'a>,
    config: &'a OperatorConfig,
    pods: &'a [&'a ObservedPod],
    status: &'b mut ImageBuildStatus,
    actions: &'b mut Vec<Action>,
}

/// How one role's pods stand.
enum Progress<'a> {
    NotStarted,
    Active,
    Done(&'a ObservedPod),
    Failed(&'a ObservedPod),
    Lost(u32),
}

impl<'a> Step<'a, '_> {
    fn advance(&mut self) {
        let build = self.observed.build;
        if !self.observed.claim_exists {
            self.actions
                .push(Action::CreateClaim(Box::new(render::render_claim(
                    build,
                    self.config,
                ))));
        }
        if self.timed_out() {
            for pod in self
                .pods
                .iter()
                .filter(|p| matches!(p.state, PodState::Pending | PodState::Running))
            {
                self.actions.push(Action::DeletePod(pod.name.clone()));
            }
            let limit = render::timeout_seconds(build);
            self.fail(
                reason::TIMEOUT,
                format!("the build took longer than {limit}s"),
                None,
                None,
            );
            return;
        }
        if !self.source_done() {
            return;
        }
        if !self.stages_done() {
            return;
        }
        self.assemble();
    }

    fn timed_out(&self) -> bool {
        let Some(start) = &self.status.start_time else {
            return false;
        };
        let elapsed = self.observed.now.as_second() - start.0.as_second();
        elapsed > render::timeout_seconds(self.observed.build)
    }

    /// The latest attempt of a role and what it means.
    fn progress(&self, role: &Role) -> Progress<'a> {
        let pods: &'a [&'a ObservedPod] = self.pods;
        let latest = pods
            .iter()
            .copied()
            .filter(|p| p.role == *role)
            .max_by_key(|p| p.attempt);
        match latest {
            None => Progress::NotStarted,
            Some(p) => match p.state {
                PodState::Pending | PodState::Running => Progress::Active,
                PodState::Succeeded => Progress::Done(p),
                PodState::Failed => Progress::Failed(p),
                PodState::Lost => Progress::Lost(p.attempt),
            },
        }
    }

    fn retries(&self) -> u32 {
        self.observed.build.spec.retries.unwrap_or(2).max(0) as u32
    }

    /// Starts the next attempt of a lost pod, or fails the build when out of retries.
    fn retry(&mut self, role: &Role, attempt: u32, create: impl FnOnce(u32) -> Pod) -> bool {
        if attempt < self.retries() {
            let pod = create(attempt + 1);
            let name = pod.metadata.name.clone().unwrap_or_default();
            self.actions.push(Action::CreatePod(Box::new(pod)));
            self.actions.push(event(
                true,
                "PodLost",
                format!("{} pod lost, started {name}", role.label()),
            ));
            true
        } else {
            self.fail(
                reason::POD_LOST,
                format!("the {} pod was lost {} times", role.label(), attempt + 1),
                None,
                None,
            );
            false
        }
    }

    fn source_done(&mut self) -> bool {
        if self
            .status
            .source
            .as_ref()
            .is_some_and(|s| s.commit.is_some())
        {
            return true;
        }
        let (build, config) = (self.observed.build, self.config);
        match self.progress(&Role::Source) {
            Progress::NotStarted => {
                self.actions
                    .push(Action::CreatePod(Box::new(render::render_source_pod(
                        build, config, 0,
                    ))));
                self.status.phase = Some(Phase::Cloning);
            }
            Progress::Active => self.status.phase = Some(Phase::Cloning),
            Progress::Lost(n) => {
                if self.retry(&Role::Source, n, |a| {
                    render::render_source_pod(build, config, a)
                }) {
                    self.status.phase = Some(Phase::Cloning);
                }
            }
            Progress::Failed(pod) => {
                let outcome = pod.outcome.clone().unwrap_or_default();
                let reason = outcome
                    .reason
                    .clone()
                    .unwrap_or_else(|| reason::SOURCE_FAILED.into());
                let message = outcome
                    .message
                    .clone()
                    .unwrap_or_else(|| "the source pod failed".into());
                let pod = pod.name.clone();
                self.fail(&reason, message, Some(pod), outcome.line);
            }
            Progress::Done(pod) => match pod.outcome.as_ref().and_then(|o| o.summary.clone()) {
                Some(summary) => {
                    self.record_plan(&summary);
                    return true;
                }
                None => {
                    let pod = pod.name.clone();
                    self.fail(
                        reason::SOURCE_FAILED,
                        "the source pod reported no plan".into(),
                        Some(pod),
                        None,
                    );
                }
            },
        }
        false
    }

    fn record_plan(&mut self, summary: &PlanSummary) {
        if let Some(source) = &mut self.status.source {
            source.commit = summary.commit.clone().or_else(|| Some(String::new()));
            source.commit_time = summary.commit_time;
        }
        self.status.stages = summary
            .pods
            .iter()
            .map(|p| StageStatus {
                name: p.id.clone(),
                runs: p.stages.clone(),
                image: p.image.clone(),
                waits_for: p.waits_for.clone(),
                attempts: 0,
                pod: None,
                node: None,
                phase: StagePhase::Waiting,
                start_time: None,
                finish_time: None,
                message: None,
            })
            .collect();
        let commit = summary.commit.clone().unwrap_or_default();
        self.actions.push(event(
            false,
            "SourceReady",
            format!("commit {commit}, {} stage pods", summary.pods.len()),
        ));
    }

    fn stages_done(&mut self) -> bool {
        let (build, config) = (self.observed.build, self.config);
        let epoch = self.status.source.as_ref().and_then(|s| s.commit_time);
        for i in 0..self.status.stages.len() {
            if self.status.stages[i].phase == StagePhase::Succeeded {
                continue;
            }
            let stage = self.status.stages[i].clone();
            let role = Role::Stage(stage.name.clone());
            let summary = stagecoach_plan::contract::PodSummary {
                id: stage.name.clone(),
                stages: stage.runs.clone(),
                image: stage.image.clone(),
                waits_for: stage.waits_for.clone(),
            };
            let ready = stage.waits_for.iter().all(|w| {
                self.status
                    .stages
                    .iter()
                    .any(|s| s.name == *w && s.phase == StagePhase::Succeeded)
            });
            let progress = self.progress(&role);
            let entry = &mut self.status.stages[i];
            match progress {
                Progress::NotStarted if ready => {
                    let pod = render::render_stage_pod(build, config, &summary, epoch, 0);
                    entry.pod = pod.metadata.name.clone();
                    entry.phase = StagePhase::Running;
                    entry.start_time = Some(Time(self.observed.now));
                    self.actions.push(Action::CreatePod(Box::new(pod)));
                }
                Progress::NotStarted => entry.phase = StagePhase::Waiting,
                Progress::Active => {
                    let pods: &[&ObservedPod] = self.pods;
                    let pod = pods
                        .iter()
                        .filter(|p| p.role == role)
                        .max_by_key(|p| p.attempt);
                    entry.phase = StagePhase::Running;
                    entry.node = pod.and_then(|p| p.node.clone()).or(entry.node.take());
                }
                Progress::Done(pod) => {
                    entry.phase = StagePhase::Succeeded;
                    entry.finish_time = pod.finished.clone().or(Some(Time(self.observed.now)));
                    entry.node = pod.node.clone().or(entry.node.take());
                    let name = entry.name.clone();
                    self.actions
                        .push(event(false, "StageSucceeded", format!("stage {name} done")));
                }
                Progress::Failed(pod) => {
                    let outcome = pod.outcome.clone().unwrap_or_default();
                    let message = outcome
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("stage {} failed", stage.name));
                    entry.phase = StagePhase::Failed;
                    entry.message = Some(message.clone());
                    entry.finish_time = Some(Time(self.observed.now));
                    let reason = outcome
                        .reason
                        .clone()
                        .unwrap_or_else(|| reason::STAGE_FAILED.into());
                    let pod_name = pod.name.clone();
                    self.fail(&reason, message, Some(pod_name), outcome.line);
                    if let Some(f) = &mut self.status.failure {
                        f.stage = outcome.stage.or(Some(stage.name.clone()));
                    }
                    return false;
                }
                Progress::Lost(n) => {
                    entry.attempts = n as i32 + 1;
                    if !self.retry(&role, n, |a| {
                        render::render_stage_pod(build, config, &summary, epoch, a)
                    }) {
                        if let Some(f) = &mut self.status.failure {
                            f.stage = Some(stage.name.clone());
                        }
                        return false;
                    }
                }
            }
        }
        let all_done = self
            .status
            .stages
            .iter()
            .all(|s| s.phase == StagePhase::Succeeded);
        if !all_done {
            self.status.phase = Some(Phase::Building);
            self.set_in_progress();
        }
        all_done
    }

    fn assemble(&mut self) {
        let (build, config) = (self.observed.build, self.config);
        let source = self.status.source.clone().unwrap_or_else(|| SourceStatus {
            url: String::new(),
            revision: None,
            commit: None,
            commit_time: None,
        });
        let commit = source.commit.as_deref().filter(|c| !c.is_empty());
        let create = |a| render::render_assemble_pod(build, config, commit, source.commit_time, a);
        match self.progress(&Role::Assemble) {
            Progress::NotStarted => {
                self.actions.push(Action::CreatePod(Box::new(create(0))));
                self.status.phase = Some(Phase::Pushing);
                self.set_in_progress();
            }
            Progress::Active => {
                self.status.phase = Some(Phase::Pushing);
                self.set_in_progress();
            }
            Progress::Lost(n) => {
                if self.retry(&Role::Assemble, n, create) {
                    self.status.phase = Some(Phase::Pushing);
                }
            }
            Progress::Failed(pod) => {
                let outcome = pod.outcome.clone().unwrap_or_default();
                let reason = outcome
                    .reason
                    .clone()
                    .unwrap_or_else(|| reason::PUSH_FAILED.into());
                let message = outcome
                    .message
                    .clone()
                    .unwrap_or_else(|| "the assemble pod failed".into());
                let pod = pod.name.clone();
                self.fail(&reason, message, Some(pod), None);
            }
            Progress::Done(pod) => {
                let image = pod
                    .outcome
                    .as_ref()
                    .and_then(|o| o.image.clone())
                    .unwrap_or_default();
                let (reference, digest) = match image.split_once('@') {
                    Some((r, d)) => (r.to_string(), d.to_string()),
                    None => (build.spec.output.image.clone(), String::new()),
                };
                let short = digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect();
                self.status.image = Some(ImageStatus {
                    reference,
                    digest: digest.clone(),
                    short_digest: short,
                });
                self.status.phase = Some(Phase::Succeeded);
                self.status.completion_time = Some(Time(self.observed.now));
                let message = format!("pushed {}@{digest}", build.spec.output.image);
                self.set_conditions("True", reason::SUCCEEDED, &message, "True");
                self.actions.push(event(false, "Succeeded", message));
            }
        }
    }

    fn set_in_progress(&mut self) {
        self.set_conditions("False", reason::BUILDING, "the build is running", "Unknown");
    }

    fn fail(&mut self, reason: &str, message: String, pod: Option<String>, line: Option<usize>) {
        self.status.phase = Some(Phase::Failed);
        self.status.completion_time = Some(Time(self.observed.now));
        self.status.failure = Some(Failure {
            reason: reason.to_string(),
            message: message.clone(),
            stage: None,
            pod,
            line: line.map(|l| l as i64),
            log_tail: Vec::new(),
        });
        self.set_conditions("False", reason, &message, "False");
        self.actions.push(event(true, reason, message));
    }

    /// `Ready` (kstatus) and `Succeeded`, with the transition time kept when unchanged,
    /// and `Stalled` while the build has failed.
    fn set_conditions(&mut self, ready: &str, reason: &str, message: &str, succeeded: &str) {
        let generation = self.status.observed_generation;
        let now = self.observed.now;
        for (kind, value) in [("Ready", ready), ("Succeeded", succeeded)] {
            let previous = self.status.conditions.iter().find(|c| c.type_ == kind);
            let since = match previous {
                Some(c) if c.status == value => c.last_transition_time.clone(),
                _ => Time(now),
            };
            let condition = Condition {
                type_: kind.into(),
                status: value.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time: since,
            };
            self.status.conditions.retain(|c| c.type_ != kind);
            self.status.conditions.push(condition);
        }
        // kstatus (Flux, kubectl-style tools) reads a failure for good from Stalled=True;
        // Ready=False alone means "still in progress" to it.
        let stalled = self.status.conditions.iter().find(|c| c.type_ == "Stalled");
        let since = stalled
            .filter(|c| c.reason == reason)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        self.status.conditions.retain(|c| c.type_ != "Stalled");
        if succeeded == "False" {
            self.status.conditions.push(Condition {
                type_: "Stalled".into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time: since,
            });
        }
    }
}

fn event(warning: bool, reason: &str, message: String) -> Action {
    Action::Event {
        warning,
        reason: reason.to_string(),
        message,
    }
}

/// After the end: delete pods and the claim unless the retention settings keep them (a
/// TTL, once passed, deletes what was kept); and when to look again for that TTL.
fn retention(
    observed: &Observed<'_>,
    status: &ImageBuildStatus,
) -> (Vec<Action>, Option<std::time::Duration>) {
    let build = observed.build;
    let retention = build.spec.retention.as_ref();
    let succeeded = status.phase == Some(Phase::Succeeded);
    let keep = retention
        .and_then(|r| {
            if succeeded {
                r.on_success.clone()
            } else {
                r.on_failure.clone()
            }
        })
        .unwrap_or(crate::api::Keep {
            pods: !succeeded,
            workspace: false,
        });
    // Seconds of the TTL still to run (zero or less: passed).
    let ttl_left = match (
        retention.and_then(|r| r.ttl.as_deref()),
        &status.completion_time,
    ) {
        (Some(ttl), Some(done)) => stagecoach_plan::instruction::parse_go_duration(ttl).map(|ns| {
            (ns / 1_000_000_000) as i64 - (observed.now.as_second() - done.0.as_second())
        }),
        _ => None,
    };
    let ttl_passed = ttl_left.is_some_and(|left| left <= 0);
    let mut actions = Vec::new();
    if !keep.pods || ttl_passed {
        actions.extend(
            observed
                .pods
                .iter()
                .map(|p| Action::DeletePod(p.name.clone())),
        );
    }
    if (!keep.workspace || ttl_passed) && observed.claim_exists {
        actions.push(Action::DeleteClaim(render::claim_name(build)));
    }
    let kept =
        (keep.pods && !observed.pods.is_empty()) || (keep.workspace && observed.claim_exists);
    let recheck = ttl_left
        .filter(|left| *left > 0 && kept)
        .map(|left| std::time::Duration::from_secs(left as u64));
    (actions, recheck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagecoach_plan::contract::PodSummary;

    const BUILD: &str = r#"
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, namespace: team}
spec:
  source: {git: {url: "https://git.example/app.git", revision: main}}
  output: {image: "registry.example/app:1"}
  timeout: 10m
  retries: 1
"#;

    fn config() -> OperatorConfig {
        OperatorConfig {
            builder_image: "builder:1".into(),
            default_workspace_size: "1Gi".into(),
            default_storage_class: None,
            insecure_registries: Vec::new(),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("time")
    }

    /// A build being driven through its life: the status is carried from one decision
    /// to the next, as the API server would keep it.
    struct Sim {
        build: ImageBuild,
        pods: Vec<ObservedPod>,
        claim: bool,
    }

    impl Sim {
        fn new() -> Sim {
            let mut build: ImageBuild = serde_saphyr::from_str(BUILD).expect("build");
            build.metadata.generation = Some(1);
            build.metadata.uid = Some("u".into());
            Sim {
                build,
                pods: Vec::new(),
                claim: false,
            }
        }

        fn step(&mut self, now: i64) -> Vec<Action> {
            let d = decide(
                &Observed {
                    build: &self.build,
                    pods: &self.pods,
                    claim_exists: self.claim,
                    now: at(now),
                },
                &config(),
            );
            self.build.status = Some(d.status);
            for a in &d.actions {
                match a {
                    Action::CreateClaim(_) => self.claim = true,
                    Action::CreatePod(p) => {
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        let role = Role::from_labels(&labels, &[]).expect("our labels");
                        self.pods.push(ObservedPod {
                            name: p.metadata.name.clone().expect("name"),
                            role,
                            generation: labels[render::LABEL_GENERATION].parse().expect("gen"),
                            attempt: labels[render::LABEL_ATTEMPT].parse().expect("attempt"),
                            state: PodState::Pending,
                            node: Some("node-1".into()),
                            started: None,
                            finished: None,
                            outcome: None,
                        });
                    }
                    Action::DeletePod(name) => self.pods.retain(|p| p.name != *name),
                    Action::DeleteClaim(_) => self.claim = false,
                    Action::Event { .. } => {}
                }
            }
            d.actions
        }

        fn set(&mut self, role: Role, state: PodState, outcome: Option<PodOutcome>) {
            let pod = self
                .pods
                .iter_mut()
                .filter(|p| p.role == role)
                .max_by_key(|p| p.attempt)
                .expect("pod of role");
            pod.state = state;
            pod.outcome = outcome;
        }

        fn status(&self) -> &ImageBuildStatus {
            self.build.status.as_ref().expect("status")
        }

        fn phase(&self) -> Phase {
            self.status().phase.expect("phase")
        }

        fn condition(&self, kind: &str) -> (String, String) {
            let c = self
                .status()
                .conditions
                .iter()
                .find(|c| c.type_ == kind)
                .expect("condition");
            (c.status.clone(), c.reason.clone())
        }
    }

    fn created(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => p.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }

    fn ok() -> Option<PodOutcome> {
        Some(PodOutcome {
            succeeded: true,
            ..PodOutcome::default()
        })
    }

    /// Three independent stages and a final one waiting for them all.
    fn summary() -> Option<PodOutcome> {
        let pod = |id: &str, waits: &[&str]| PodSummary {
            id: id.into(),
            stages: vec![id.into()],
            image: Some("busybox@sha256:1".into()),
            waits_for: waits.iter().map(|s| s.to_string()).collect(),
        };
        Some(PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("abc123".into()),
                commit_time: Some(1_700_000_000),
                target: "final".into(),
                pods: vec![
                    pod("a", &[]),
                    pod("b", &[]),
                    pod("c", &[]),
                    pod("final", &["a", "b", "c"]),
                ],
            }),
            ..PodOutcome::default()
        })
    }

    fn failed(reason: &str, message: &str, line: Option<usize>) -> Option<PodOutcome> {
        Some(PodOutcome {
            succeeded: false,
            reason: Some(reason.into()),
            message: Some(message.into()),
            line,
            ..PodOutcome::default()
        })
    }

    fn through_source(sim: &mut Sim) {
        sim.step(0);
        sim.set(Role::Source, PodState::Succeeded, summary());
    }

    #[test]
    fn new_build_creates_claim_and_source_pod() {
        let mut sim = Sim::new();
        let actions = sim.step(0);
        assert!(
            matches!(actions[1], Action::CreateClaim(_))
                || matches!(actions[0], Action::CreateClaim(_))
        );
        assert_eq!(created(&actions), ["app-source-g1"]);
        assert_eq!(sim.phase(), Phase::Cloning);
        assert_eq!(sim.status().observed_generation, Some(1));
        sim.set(Role::Source, PodState::Running, None);
        assert!(created(&sim.step(5)).is_empty());
        assert_eq!(sim.phase(), Phase::Cloning);
    }

    #[test]
    fn source_failures_end_the_build_with_their_reason() {
        for reason in [
            "GitAuthFailed",
            "RevisionNotFound",
            "DockerfileInvalid",
            "BaseImageNotFound",
        ] {
            let mut sim = Sim::new();
            sim.step(0);
            sim.set(
                Role::Source,
                PodState::Failed,
                failed(reason, "details", Some(3)),
            );
            sim.step(5);
            assert_eq!(sim.phase(), Phase::Failed);
            assert_eq!(sim.condition("Ready"), ("False".into(), reason.into()));
            assert_eq!(sim.condition("Succeeded"), ("False".into(), reason.into()));
            assert_eq!(sim.status().failure.as_ref().map(|f| f.line), Some(Some(3)));
        }
    }

    #[test]
    fn independent_stages_start_together_and_the_final_waits() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        let actions = sim.step(10);
        assert_eq!(
            created(&actions),
            ["app-stage-a-g1", "app-stage-b-g1", "app-stage-c-g1"]
        );
        assert_eq!(sim.phase(), Phase::Building);
        assert_eq!(
            sim.status()
                .source
                .as_ref()
                .and_then(|s| s.commit.clone())
                .as_deref(),
            Some("abc123")
        );
        assert_eq!(sim.condition("Ready"), ("False".into(), "Building".into()));
        sim.set(Role::Stage("a".into()), PodState::Succeeded, ok());
        sim.set(Role::Stage("b".into()), PodState::Succeeded, ok());
        sim.set(Role::Stage("c".into()), PodState::Running, None);
        assert!(created(&sim.step(20)).is_empty(), "final waits for c");
        sim.set(Role::Stage("c".into()), PodState::Succeeded, ok());
        assert_eq!(created(&sim.step(30)), ["app-stage-final-g1"]);
        sim.set(Role::Stage("final".into()), PodState::Succeeded, ok());
        assert_eq!(created(&sim.step(40)), ["app-assemble-g1"]);
        assert_eq!(sim.phase(), Phase::Pushing);
        sim.set(
            Role::Assemble,
            PodState::Succeeded,
            Some(PodOutcome {
                succeeded: true,
                image: Some(format!("registry.example/app:1@sha256:{}", "f".repeat(64))),
                ..PodOutcome::default()
            }),
        );
        sim.step(50);
        assert_eq!(sim.phase(), Phase::Succeeded);
        let image = sim.status().image.clone().expect("image");
        assert_eq!(image.short_digest, "ffffffffffff");
        assert_eq!(sim.condition("Ready"), ("True".into(), "Succeeded".into()));
        assert!(sim.status().completion_time.is_some());
    }

    #[test]
    fn failed_stage_names_stage_line_and_message() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim.set(
            Role::Stage("b".into()),
            PodState::Failed,
            failed(
                "StageFailed",
                "stage b: Dockerfile:12: RUN make: exit code 2",
                Some(12),
            ),
        );
        sim.step(20);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = sim.status().failure.clone().expect("failure");
        assert_eq!(
            (f.reason.as_str(), f.stage.as_deref(), f.line),
            ("StageFailed", Some("b"), Some(12))
        );
        assert_eq!(f.pod.as_deref(), Some("app-stage-b-g1"));
        assert!(
            created(&sim.step(30)).is_empty(),
            "a failed build starts nothing"
        );
    }

    #[test]
    fn lost_pods_are_retried_then_podlost() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim.set(Role::Stage("a".into()), PodState::Lost, None);
        assert_eq!(created(&sim.step(20)), ["app-stage-a-g1-r1"]);
        sim.set(Role::Stage("a".into()), PodState::Lost, None);
        sim.step(30);
        assert_eq!(sim.phase(), Phase::Failed);
        assert_eq!(sim.condition("Ready").1, "PodLost");
    }

    #[test]
    fn deleted_pod_is_recreated_and_finished_stages_never_rerun() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim.set(Role::Stage("a".into()), PodState::Succeeded, ok());
        sim.step(15);
        // Someone deletes a running pod and the finished one.
        sim.pods
            .retain(|p| p.role != Role::Stage("b".into()) && p.role != Role::Stage("a".into()));
        assert_eq!(created(&sim.step(20)), ["app-stage-b-g1"]);
    }

    #[test]
    fn timeout_stops_running_pods() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        let actions = sim.step(601);
        let deleted: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::DeletePod(_)))
            .collect();
        assert_eq!(deleted.len(), 3);
        assert_eq!(sim.phase(), Phase::Failed);
        assert_eq!(sim.condition("Ready").1, "Timeout");
    }

    #[test]
    fn new_generation_restarts_the_build() {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim.build.metadata.generation = Some(2);
        let actions = sim.step(20);
        let deleted = actions
            .iter()
            .filter(|a| matches!(a, Action::DeletePod(_)))
            .count();
        assert_eq!(deleted, 3, "the old generation's running pods stop");
        assert_eq!(created(&actions), ["app-source-g2"]);
        assert_eq!(sim.status().observed_generation, Some(2));
        assert!(sim.status().stages.is_empty());
    }

    #[test]
    fn finished_builds_only_clean_up() {
        let mut sim = Sim::new();
        sim.step(0);
        sim.set(
            Role::Source,
            PodState::Failed,
            failed("GitAuthFailed", "no", None),
        );
        sim.step(5);
        // Failed builds keep their pods by default, for inspection; the claim goes.
        let actions = sim.step(6);
        assert_eq!(actions, [Action::DeleteClaim("app-workspace".into())]);
        assert!(sim.step(7).is_empty(), "nothing more to do");
    }

    #[test]
    fn kept_pods_and_workspace_go_when_the_ttl_passes() {
        let mut sim = Sim::new();
        sim.build.spec.retention = Some(crate::api::Retention {
            on_success: None,
            on_failure: Some(crate::api::Keep {
                pods: true,
                workspace: true,
            }),
            ttl: Some("1m".into()),
        });
        sim.step(0);
        sim.set(
            Role::Source,
            PodState::Failed,
            failed("GitAuthFailed", "no", None),
        );
        sim.step(10);
        assert_eq!(sim.phase(), Phase::Failed);
        let failed_status = sim.status();
        let stalled = failed_status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled");
        assert_eq!(
            stalled.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("True", "GitAuthFailed"))
        );
        // Kept for the TTL: nothing deleted, and a look again when it runs out.
        let recheck = |sim: &Sim, now: i64| {
            decide(
                &Observed {
                    build: &sim.build,
                    pods: &sim.pods,
                    claim_exists: sim.claim,
                    now: at(now),
                },
                &config(),
            )
            .recheck_after
        };
        assert!(sim.step(30).is_empty());
        assert_eq!(recheck(&sim, 30), Some(std::time::Duration::from_secs(40)));
        let actions = sim.step(71);
        assert_eq!(
            actions,
            [
                Action::DeletePod("app-source-g1".into()),
                Action::DeleteClaim("app-workspace".into())
            ]
        );
        assert_eq!(recheck(&sim, 72), None, "nothing kept, nothing to wait for");
    }
}
