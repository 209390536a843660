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
use stagecoach_plan::contract::{PlanSummary, PodOutcome, PodSummary};

use crate::api::{
    Failure, ImageBuild, ImageBuildStatus, ImageStatus, Phase, PlatformImageStatus, SourceStatus,
    StagePhase, StageStatus,
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
    /// A pod cannot pull an image: an invalid name at once, any other pull failure once
    /// it has lasted [`START_GRACE_SECONDS`](super::START_GRACE_SECONDS).
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// A container refers to a Secret, or a key of one, that does not exist (for
    /// [`START_GRACE_SECONDS`](super::START_GRACE_SECONDS)).
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The runtime cannot create or start a container (for
    /// [`START_GRACE_SECONDS`](super::START_GRACE_SECONDS) when it may retry).
    pub const POD_START_FAILED: &str = "PodStartFailed";
    /// The API server refused to create one of the build's objects (Pod Security
    /// admission, a quota, a webhook, validation): no retry mends that.
    pub const POD_REJECTED: &str = "PodRejected";
    /// No node can take a pod (for [`UNSCHEDULABLE_GRACE_SECONDS`](super::UNSCHEDULABLE_GRACE_SECONDS)
    /// while no other pod of the build runs): the node of a ReadWriteOnce workspace is
    /// full, cordoned or gone, or no node fits the requests.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// A stage pod needs a node of another platform than the build platform's while the
    /// workspace is ReadWriteOnce (every pod on the source pod's node) and the operator
    /// does not emulate that platform: known as soon as the plan is.
    pub const PLATFORM_UNSCHEDULABLE: &str = "PlatformUnschedulable";
    /// Failures of a pod whose container never ran: there is no log to read.
    pub const START_FAILURES: [&str; 5] = [
        IMAGE_PULL_FAILED,
        SECRET_NOT_FOUND,
        POD_START_FAILED,
        POD_REJECTED,
        UNSCHEDULABLE,
    ];
    /// `spec.cancel` stopped the build.
    pub const CANCELED: &str = "Canceled";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const BUILDING: &str = "Building";
}

/// How long a pod may keep failing to pull an image or to start a container before the
/// build fails, counted from the first time the operator saw the problem (kept in the
/// [`START_BLOCKED`] condition, so a restarted operator counts on). The kubelet retries a
/// failed pull after 10, 20, 40 s (doubling, at most 5 min): 90 s sees four attempts fail,
/// while a registry hiccup that one retry mends passes.
pub const START_GRACE_SECONDS: i64 = 90;

/// How long a pod may stay unschedulable, while no other pod of its build runs, before
/// the build fails: long enough for a cluster autoscaler to add a node (minutes), short
/// of the hour a build's timeout gives (Tekton's affinity assistant waits forever,
/// tektoncd/pipeline#3049). While another pod of the build runs, it may free the room.
pub const UNSCHEDULABLE_GRACE_SECONDS: i64 = 300;

/// The status condition (True) that remembers, from one decision to the next and across
/// restarts, since when a pod cannot start a container: its `lastTransitionTime` is when
/// the operator first saw the problem, its message `<pod>/<container>: <kubelet reason>:
/// <kubelet message>`. Gone once the pod starts or the build ends.
pub const START_BLOCKED: &str = "PodStartBlocked";

/// The condition of a build whose stage cache could not be used (it built without).
pub const CACHE_UNAVAILABLE: &str = "CacheUnavailable";

/// What a pod is doing, as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    Pending,
    /// Pending, and the kubelet reports that one of our containers cannot start.
    Stuck(StartProblem),
    Running,
    Succeeded,
    Failed,
    /// Evicted, preempted, its node gone: not the build's fault, may be retried.
    Lost,
}

impl PodState {
    /// Not ended: may still run (or be waited for).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            PodState::Pending | PodState::Stuck(_) | PodState::Running
        )
    }
}

/// Why a container of a pending pod cannot start, from its waiting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProblem {
    pub failure: StartFailure,
    /// Our container that cannot start (`install`, `stage`, `source`, `assemble`).
    pub container: String,
    /// Its image, as the pod spec names it.
    pub image: Option<String>,
    /// The kubelet's waiting reason (`ImagePullBackOff`, `CreateContainerError`, ...).
    pub reason: String,
    /// The kubelet's waiting message.
    pub message: String,
}

/// What kind of start problem, which decides how soon the build fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// The image cannot be pulled now (`ErrImagePull`, `ImagePullBackOff`): may pass (a
    /// registry outage, credentials still to come), so it fails after the grace period.
    ImagePull,
    /// The image can never be pulled as named (`InvalidImageName`, `ErrImageNeverPull`):
    /// fails at once.
    InvalidImage,
    /// A Secret, or its `key`, that the container refers to does not exist
    /// (`CreateContainerConfigError`): fails after the grace period, since a Secret
    /// applied beside the build (a GitOps sync, External Secrets) arrives a moment later.
    Secret { name: String, key: Option<String> },
    /// The runtime cannot create or start the container (`CreateContainerError`,
    /// `RunContainerError`, any other `CreateContainerConfigError`): fails after the grace
    /// period.
    Start,
    /// The scheduler finds no node for the pod; `node` is the one it is pinned to (the
    /// node of a ReadWriteOnce workspace), `requests` what its containers ask for.
    Unschedulable {
        node: Option<String>,
        requests: String,
    },
}

impl StartFailure {
    /// The reason of the [`START_BLOCKED`] condition while a retryable problem lasts; None
    /// for a problem that fails the build at once.
    fn blocked_reason(&self) -> Option<&'static str> {
        match self {
            StartFailure::ImagePull => Some("ImagePull"),
            StartFailure::Start => Some("ContainerStart"),
            StartFailure::Secret { .. } => Some("SecretMissing"),
            StartFailure::Unschedulable { .. } => Some("Unschedulable"),
            StartFailure::InvalidImage => None,
        }
    }

    /// How long the problem may last before the build fails.
    fn grace_seconds(&self) -> i64 {
        match self {
            StartFailure::Unschedulable { .. } => UNSCHEDULABLE_GRACE_SECONDS,
            _ => START_GRACE_SECONDS,
        }
    }
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
    /// pods or its workspace until the retention TTL passes; a pod that cannot start
    /// fails the build once the grace period has passed.
    pub recheck_after: Option<std::time::Duration>,
}

/// Decides what the build needs next.
pub fn decide(observed: &Observed<'_>, config: &OperatorConfig) -> Decision {
    let build = observed.build;
    let generation = build.metadata.generation.unwrap_or(1);
    let mut status = build.status.clone().unwrap_or_default();
    let mut actions = Vec::new();

    // Setting spec.cancel is a new generation too, but no new build: the running one
    // stops, a finished one stays as it ended.
    if build.spec.cancel && status.observed_generation != Some(generation) {
        status.observed_generation = Some(generation);
        if !matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) {
            cancel(observed, config, &mut status, &mut actions);
        }
    }
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
                url: build.spec.source.location().to_string(),
                revision: build
                    .spec
                    .source
                    .git
                    .as_ref()
                    .and_then(|g| g.revision.clone()),
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
        recheck_after: None,
    };
    step.advance();
    let recheck_after = step.recheck_after;
    if render::workspace_is_node_local(build)
        && let Some(node) = pods.iter().find_map(|p| p.node.as_deref())
    {
        for action in &mut actions {
            if let Action::CreatePod(pod) = action {
                render::pin_to_node(pod, node);
            }
        }
    }
    Decision {
        actions,
        status,
        recheck_after,
    }
}

/// Stops a running build for `spec.cancel`: every active pod of any generation is
/// deleted, and the build fails with reason `Canceled`.
fn cancel(
    observed: &Observed<'_>,
    config: &OperatorConfig,
    status: &mut ImageBuildStatus,
    actions: &mut Vec<Action>,
) {
    let pods: Vec<&ObservedPod> = observed.pods.iter().collect();
    let mut step = Step {
        observed,
        config,
        pods: &pods,
        status,
        actions,
        recheck_after: None,
    };
    step.stop_active_pods();
    for stage in &mut step.status.stages {
        if matches!(stage.phase, StagePhase::Running | StagePhase::Waiting) {
            stage.phase = StagePhase::Failed;
            stage.message = Some("canceled".into());
        }
    }
    step.fail(
        reason::CANCELED,
        "canceled (spec.cancel)".into(),
        None,
        None,
    );
}

/// The API server refused to create `object` (a pod or the claim) of the build whose
/// decision was `decided`: the build fails at once with reason `PodRejected` and the
/// API's words, and its pods still active are stopped. The actions returned replace
/// what was left of `decided`'s.
pub fn reject(
    observed: &Observed<'_>,
    config: &OperatorConfig,
    decided: ImageBuildStatus,
    object: &str,
    message: &str,
) -> Decision {
    let generation = observed.build.metadata.generation.unwrap_or(1);
    let pods: Vec<&ObservedPod> = observed
        .pods
        .iter()
        .filter(|p| p.generation == generation)
        .collect();
    let mut status = decided;
    let mut actions = Vec::new();
    let mut step = Step {
        observed,
        config,
        pods: &pods,
        status: &mut status,
        actions: &mut actions,
        recheck_after: None,
    };
    step.stop_active_pods();
    step.fail(
        reason::POD_REJECTED,
        format!("the API server refused to create {object}: {message}"),
        None,
        None,
    );
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
    recheck_after: Option<std::time::Duration>,
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
            self.stop_active_pods();
            let limit = render::timeout_seconds(build);
            self.fail(
                reason::TIMEOUT,
                format!("the build took longer than {limit}s"),
                None,
                None,
            );
            return;
        }
        if self.start_failed() {
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

    /// Deletes the pods still pending or running: the build has ended without them (and
    /// a pod that cannot start would never end by itself).
    fn stop_active_pods(&mut self) {
        for pod in self.pods.iter().filter(|p| p.state.is_active()) {
            self.actions.push(Action::DeletePod(pod.name.clone()));
        }
    }

    /// Pods that cannot start a container. A problem no retry mends (an invalid image
    /// name) fails the build at once; a failing pull, a missing Secret or a container
    /// that cannot start once it has lasted [`START_GRACE_SECONDS`], timed by the [`START_BLOCKED`]
    /// condition for one pod and container at a time (the one timed so far while it
    /// lasts, else the first), so that no problem fails the build before it has lasted
    /// that long. A status read before the condition was written only starts the clock
    /// later. True when the build failed.
    fn start_failed(&mut self) -> bool {
        let pods: &'a [&'a ObservedPod] = self.pods;
        // A pod waiting for room is not stuck while another pod of the build runs: that
        // one may free the room (parallel stages on the node of the workspace).
        let running = pods.iter().any(|p| p.state == PodState::Running);
        let stuck: Vec<(&'a ObservedPod, &'a StartProblem)> = pods
            .iter()
            .filter_map(|p| match &p.state {
                PodState::Stuck(StartProblem {
                    failure: StartFailure::Unschedulable { .. },
                    ..
                }) if running => None,
                PodState::Stuck(problem) => Some((*p, problem)),
                _ => None,
            })
            .collect();
        if let Some((pod, problem)) = stuck
            .iter()
            .find(|(_, problem)| problem.failure.blocked_reason().is_none())
        {
            self.fail_to_start(pod, problem, &problem.reason, &problem.message, None);
            return true;
        }
        let now = self.observed.now;
        let blocked = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == START_BLOCKED && c.status == "True");
        // The problem timed so far, if it lasts: the kubelet's reason and message it kept,
        // and since when.
        let timed = stuck.iter().find_map(|(pod, problem)| {
            let c = blocked?;
            let detail = c.message.strip_prefix(&blocked_key(pod, problem))?;
            (Some(c.reason.as_str()) == problem.failure.blocked_reason())
                .then(|| (*pod, *problem, detail.to_string(), c.last_transition_time.0))
        });
        let (pod, problem, reason, message, since) = match timed {
            // `ImagePullBackOff` only says "Back-off pulling image": keep the error of the
            // last pull tried.
            Some((pod, problem, detail, since)) => match detail.split_once(": ") {
                Some((reason, message)) if problem.reason == "ImagePullBackOff" => {
                    (pod, problem, reason.to_string(), message.to_string(), since)
                }
                _ => (
                    pod,
                    problem,
                    problem.reason.clone(),
                    problem.message.clone(),
                    since,
                ),
            },
            None => match stuck.first() {
                Some((pod, problem)) => (
                    *pod,
                    *problem,
                    problem.reason.clone(),
                    problem.message.clone(),
                    now,
                ),
                None => {
                    self.status.conditions.retain(|c| c.type_ != START_BLOCKED);
                    return false;
                }
            },
        };
        let lasted = now.as_second() - since.as_second();
        let grace = problem.failure.grace_seconds();
        if lasted >= grace {
            self.fail_to_start(pod, problem, &reason, &message, Some(lasted));
            return true;
        }
        let condition = Condition {
            type_: START_BLOCKED.into(),
            status: "True".into(),
            reason: problem.failure.blocked_reason().unwrap_or_default().into(),
            message: format!("{}{reason}: {message}", blocked_key(pod, problem)),
            observed_generation: self.status.observed_generation,
            last_transition_time: Time(since),
        };
        // In place, so that the conditions keep their order and an unchanged status is
        // not written again.
        match self
            .status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == START_BLOCKED)
        {
            Some(c) => *c = condition,
            None => self.status.conditions.push(condition),
        }
        let left = (grace - lasted).clamp(1, grace);
        self.recheck_after = Some(std::time::Duration::from_secs(left as u64));
        false
    }

    /// Ends the build for a pod that cannot start (its stage failed, the other pods
    /// stopped), naming the stage, the pod, the container and what to check.
    fn fail_to_start(
        &mut self,
        pod: &ObservedPod,
        problem: &StartProblem,
        reason: &str,
        message: &str,
        lasted: Option<i64>,
    ) {
        let (reason, message) = start_failure(
            self.observed.build,
            self.config,
            pod,
            problem,
            (reason, message),
            lasted,
        );
        self.stop_active_pods();
        let stage = match &pod.role {
            Role::Stage(name) => Some(name.clone()),
            _ => None,
        };
        if let Some(entry) = self
            .status
            .stages
            .iter_mut()
            .find(|s| Some(&s.name) == stage.as_ref())
        {
            entry.phase = StagePhase::Failed;
            entry.message = Some(message.clone());
            entry.finish_time = Some(Time(self.observed.now));
        }
        self.fail(reason, message, Some(pod.name.clone()), None);
        if let Some(f) = &mut self.status.failure {
            f.stage = stage;
        }
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
                PodState::Pending | PodState::Stuck(_) | PodState::Running => Progress::Active,
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
                    if let Some(message) = self.platform_out_of_reach() {
                        self.fail(reason::PLATFORM_UNSCHEDULABLE, message, None, None);
                        return false;
                    }
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

    /// With a ReadWriteOnce workspace every pod runs on the source pod's node, one of the
    /// build platform: a stage pod that needs a node of another platform (one the
    /// operator does not emulate) could never start.
    fn platform_out_of_reach(&self) -> Option<String> {
        let (build, config) = (self.observed.build, self.config);
        if !render::workspace_is_node_local(build) {
            return None;
        }
        let os_arch = |p: &str| p.split('/').take(2).collect::<Vec<_>>().join("/");
        let build_node = os_arch(&config.build_platform);
        // A stage found in the cache needs no pod, so no node.
        let stage = self.status.stages.iter().filter(|s| !s.cached).find(|s| {
            let runs_on = s.runs_on.as_deref().unwrap_or(&config.build_platform);
            os_arch(config.node_platform(runs_on)) != build_node
        })?;
        let runs_on = stage.runs_on.as_deref().unwrap_or_default();
        Some(format!(
            "stage {} runs on {runs_on} but the workspace is ReadWriteOnce, so every pod of the build runs on one {build_node} node: give spec.workspace.accessModes [ReadWriteMany] so that each stage pod goes to a node of its platform, or have the operator emulate {runs_on} (--emulate-platform, chart value platforms.emulated) on nodes with qemu-user-static",
            stage.name
        ))
    }

    fn record_plan(&mut self, summary: &PlanSummary) {
        if let Some(source) = &mut self.status.source {
            source.commit = summary.commit.clone().or_else(|| Some(String::new()));
            source.commit_time = summary.commit_time;
        }
        let now = self.observed.now;
        self.status.stages = summary
            .pods
            .iter()
            .map(|p| {
                let cache = p.cache.clone().unwrap_or_default();
                StageStatus {
                    name: p.id.clone(),
                    platform: p.platform.clone(),
                    runs_on: p.runs_on.clone(),
                    runs: p.stages.clone(),
                    image: p.image.clone(),
                    waits_for: p.waits_for.clone(),
                    secrets: p.secrets.clone(),
                    run_cache: p.run_cache,
                    ssh: p.ssh.clone(),
                    attempts: 0,
                    pod: None,
                    node: None,
                    // A stage found in the cache is done before it starts: no pod.
                    phase: match cache.hit {
                        true => StagePhase::Succeeded,
                        false => StagePhase::Waiting,
                    },
                    start_time: None,
                    finish_time: cache.hit.then_some(Time(now)),
                    message: cache.uncacheable.map(|why| format!("not cached: {why}")),
                    cached: cache.hit,
                    cache_key: cache.key,
                }
            })
            .collect();
        let commit = summary.commit.clone().unwrap_or_default();
        let cached: Vec<&StageStatus> = self.status.stages.iter().filter(|s| s.cached).collect();
        self.actions.push(event(
            false,
            "SourceReady",
            format!(
                "commit {commit}, {} stage pods, {} of them taken from the stage cache",
                summary.pods.len(),
                cached.len()
            ),
        ));
        let cached_events: Vec<Action> = cached
            .iter()
            .map(|s| {
                let key = s.cache_key.as_deref().unwrap_or_default();
                event(
                    false,
                    "StageCached",
                    format!("stage {} taken from the stage cache (key {key})", s.name),
                )
            })
            .collect();
        self.actions.extend(cached_events);
        // What the planner warns about (a build arg no ARG uses, an image named like a
        // stage) builds anyway, as with Docker: a Warning Event each.
        for warning in &summary.warnings {
            self.actions
                .push(event(true, warning.kind.as_str(), warning.message.clone()));
        }
        self.note_cache_trouble(&summary.warnings);
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
            let summary = PodSummary {
                id: stage.name.clone(),
                platform: stage.platform.clone(),
                runs_on: stage.runs_on.clone(),
                stages: stage.runs.clone(),
                image: stage.image.clone(),
                waits_for: stage.waits_for.clone(),
                cache: None,
                secrets: stage.secrets.clone(),
                run_cache: stage.run_cache,
                ssh: stage.ssh.clone(),
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
                    // The operator's run cache claim, made when a pod first needs it.
                    if summary.run_cache
                        && let Some(claim) = render::operator_run_cache_claim(build, config)
                    {
                        self.actions.push(Action::CreateClaim(Box::new(claim)));
                    }
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
                    // The run cache is best effort: a pod no node can take with it (a
                    // node-local claim on a full or other node) runs without it.
                    if entry.run_cache
                        && let Some(p) = pod
                        && let PodState::Stuck(StartProblem {
                            failure: StartFailure::Unschedulable { .. },
                            message,
                            ..
                        }) = &p.state
                    {
                        entry.run_cache = false;
                        let note = format!(
                            "no node could take the pod with the run cache ({message}): it runs with empty cache mounts"
                        );
                        entry.message = Some(note.clone());
                        let without = PodSummary {
                            run_cache: false,
                            ..summary.clone()
                        };
                        let next =
                            render::render_stage_pod(build, config, &without, epoch, p.attempt + 1);
                        entry.pod = next.metadata.name.clone();
                        self.actions.push(Action::DeletePod(p.name.clone()));
                        self.actions.push(Action::CreatePod(Box::new(next)));
                        self.actions.push(event(true, "RunCacheUnavailable", note));
                        continue;
                    }
                    entry.phase = StagePhase::Running;
                    entry.pod = pod.map(|p| p.name.clone()).or(entry.pod.take());
                    entry.node = pod.and_then(|p| p.node.clone()).or(entry.node.take());
                }
                Progress::Done(pod) => {
                    entry.phase = StagePhase::Succeeded;
                    entry.pod = Some(pod.name.clone());
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
                    // Its siblings cannot change the result now: stop them.
                    self.stop_active_pods();
                    self.fail(&reason, message, Some(pod_name), outcome.line);
                    if let Some(f) = &mut self.status.failure {
                        f.stage = outcome.stage.or(Some(stage.name.clone()));
                    }
                    self.save_succeeded_stages();
                    return false;
                }
                Progress::Lost(n) => {
                    entry.attempts = n as i32 + 1;
                    if !self.retry(&role, n, |a| {
                        render::render_stage_pod(build, config, &summary, epoch, a)
                    }) {
                        self.stop_active_pods();
                        if let Some(f) = &mut self.status.failure {
                            f.stage = Some(stage.name.clone());
                        }
                        self.save_succeeded_stages();
                        return false;
                    }
                    // The status names the attempt that runs now.
                    self.status.stages[i].pod = Some(render::pod_name(build, &role, n + 1));
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
                // The stage cache could not store what ran: the image is fine.
                let warnings = pod
                    .outcome
                    .as_ref()
                    .map(|o| o.warnings.clone())
                    .unwrap_or_default();
                for warning in &warnings {
                    self.actions
                        .push(event(true, warning.kind.as_str(), warning.message.clone()));
                }
                self.note_cache_trouble(&warnings);
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
                let platforms = pod
                    .outcome
                    .iter()
                    .flat_map(|o| &o.platforms)
                    .map(|p| PlatformImageStatus {
                        platform: p.platform.clone(),
                        digest: p.digest.clone(),
                    })
                    .collect();
                self.status.image = Some(ImageStatus {
                    reference,
                    digest: digest.clone(),
                    short_digest: short,
                    platforms,
                });
                self.status.phase = Some(Phase::Succeeded);
                self.status.completion_time = Some(Time(self.observed.now));
                let message = format!("pushed {}@{digest}", build.spec.output.image);
                self.set_conditions("True", reason::SUCCEEDED, &message, "True");
                self.actions.push(event(false, "Succeeded", message));
            }
        }
    }

    /// After a stage failed: a cache pod stores the stages that succeeded, so that the
    /// fixed build runs from the failed stage on. The build is already `Failed`; the
    /// workspace stays until the pod is done (see [`retention`]).
    fn save_succeeded_stages(&mut self) {
        let (build, config) = (self.observed.build, self.config);
        let writable = matches!(
            render::cache_settings(build, config),
            Some((_, crate::api::CacheMode::ReadWrite))
        );
        let worth_it = self
            .status
            .stages
            .iter()
            .any(|s| s.phase == StagePhase::Succeeded && !s.cached && s.cache_key.is_some());
        if !writable || !worth_it {
            return;
        }
        let source = self.status.source.as_ref();
        let commit = source
            .and_then(|s| s.commit.as_deref())
            .filter(|c| !c.is_empty());
        let epoch = source.and_then(|s| s.commit_time);
        let pod = render::render_cache_pod(build, config, commit, epoch);
        self.actions.push(Action::CreatePod(Box::new(pod)));
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

    /// The stage cache could not be read or written: the build goes on without it, and
    /// `CacheUnavailable=True` says why (the first such warning of the build stays).
    fn note_cache_trouble(&mut self, warnings: &[stagecoach_plan::contract::Warning]) {
        let Some(first) = warnings
            .iter()
            .find(|w| w.kind == stagecoach_plan::contract::WarningKind::CacheUnavailable)
        else {
            return;
        };
        if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == CACHE_UNAVAILABLE)
        {
            return;
        }
        self.status.conditions.push(Condition {
            type_: CACHE_UNAVAILABLE.into(),
            status: "True".into(),
            reason: CACHE_UNAVAILABLE.into(),
            message: first.message.clone(),
            observed_generation: self.status.observed_generation,
            last_transition_time: Time(self.observed.now),
        });
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
        if succeeded != "Unknown" {
            // The build has ended: no pod is waited for.
            self.status.conditions.retain(|c| c.type_ != START_BLOCKED);
        }
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

/// How the [`START_BLOCKED`] condition's message starts for a pod's container.
fn blocked_key(pod: &ObservedPod, problem: &StartProblem) -> String {
    format!("{}/{}: ", pod.name, problem.container)
}

/// The failure reason and message of a pod that cannot start, as a user reads them in
/// `status.failure`: whose pod, which container, the image or Secret, how long it
/// lasted, the kubelet's `reason: message`, and what to check.
fn start_failure(
    build: &ImageBuild,
    config: &OperatorConfig,
    pod: &ObservedPod,
    problem: &StartProblem,
    (reason, message): (&str, &str),
    lasted: Option<i64>,
) -> (&'static str, String) {
    let whose = match &pod.role {
        Role::Stage(name) => format!("stage {name}"),
        role => format!("{} pod", role.label()),
    };
    let container = format!("container {:?} of pod {}", problem.container, pod.name);
    let lasted = lasted.map(|s| format!(" for {s}s")).unwrap_or_default();
    let kubelet = if message.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {message}")
    };
    match &problem.failure {
        StartFailure::ImagePull | StartFailure::InvalidImage => {
            let image = problem.image.as_deref().unwrap_or_default();
            let verb = if lasted.is_empty() {
                "cannot pull"
            } else {
                "could not pull"
            };
            let check = if image == config.builder_image {
                "it is the operator's builder image (its --builder-image, the chart's \
                 builderImage): check that reference and its tag, and that the nodes may pull \
                 it (a Secret in spec.imagePullSecrets, or the nodes' own credentials)"
            } else {
                "check the image reference and its tag (the stage's FROM), and that \
                 spec.imagePullSecrets names a Secret with pull credentials for its registry"
            };
            (
                reason::IMAGE_PULL_FAILED,
                format!("{whose}: {container} {verb} image {image:?}{lasted} ({kubelet}); {check}"),
            )
        }
        StartFailure::Secret { name, key } => {
            let namespace = build.metadata.namespace.as_deref().unwrap_or("default");
            let (missing, fix) = match key {
                Some(key) => (
                    format!("key {key:?} of Secret {name:?}, which has no such key"),
                    "add the key to the Secret or correct the reference".to_string(),
                ),
                None => (
                    format!("Secret {name:?}, which does not exist in namespace {namespace}"),
                    "create the Secret or correct the name".to_string(),
                ),
            };
            let field = match secret_field(build, name) {
                Some(field) => format!("{field} names it: {fix}"),
                None => "no field of the ImageBuild names it: something else (an admission \
                         webhook?) added it to the pod"
                    .to_string(),
            };
            (
                reason::SECRET_NOT_FOUND,
                format!("{whose}: {container} refers to {missing} ({kubelet}); {field}"),
            )
        }
        StartFailure::Start => (
            reason::POD_START_FAILED,
            format!("{whose}: {container} cannot start{lasted} ({kubelet})"),
        ),
        StartFailure::Unschedulable { node, requests } => {
            let pod = &pod.name;
            let message = match node {
                Some(node) => format!(
                    "{whose}: pod {pod} cannot be scheduled on node {node}, where the build's \
                     ReadWriteOnce workspace is attached,{lasted} ({kubelet}); it requests \
                     {requests}: give the workspace ReadWriteMany storage \
                     (spec.workspace.accessModes, a storage class that offers it) so that \
                     its pods may run on any node, lower the requests (spec.resources), or \
                     make room on that node (uncordon it, if it was cordoned)"
                ),
                None => format!(
                    "{whose}: pod {pod} cannot be scheduled{lasted} ({kubelet}); it requests \
                     {requests}: lower the requests (spec.resources), or check that a node \
                     fits them and spec.nodeSelector, spec.affinity and spec.tolerations"
                ),
            };
            (reason::UNSCHEDULABLE, message)
        }
    }
}

/// The spec field that names a Secret.
fn secret_field(build: &ImageBuild, secret: &str) -> Option<String> {
    let spec = &build.spec;
    let named = |r: &Option<k8s_openapi::api::core::v1::LocalObjectReference>| {
        r.as_ref().is_some_and(|s| s.name == secret)
    };
    if spec
        .source
        .git
        .as_ref()
        .is_some_and(|g| named(&g.secret_ref))
    {
        return Some("spec.source.git.secretRef".into());
    }
    if spec
        .source
        .oci
        .as_ref()
        .is_some_and(|o| named(&o.pull_secret_ref))
    {
        return Some("spec.source.oci.pullSecretRef".into());
    }
    if spec
        .output
        .push_secret_ref
        .as_ref()
        .is_some_and(|s| s.name == secret)
    {
        return Some("spec.output.pushSecretRef".into());
    }
    spec.image_pull_secrets
        .iter()
        .flatten()
        .position(|s| s.name == secret)
        .map(|i| format!("spec.imagePullSecrets[{i}]"))
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
    // The cache pod of a failed build reads the workspace: both stay until it is done.
    let saving = |p: &ObservedPod| p.role == Role::Cache && p.state.is_active();
    let mut actions = Vec::new();
    if !keep.pods || ttl_passed {
        actions.extend(
            observed
                .pods
                .iter()
                .filter(|p| !saving(p))
                .map(|p| Action::DeletePod(p.name.clone())),
        );
    }
    let workspace_in_use = observed.pods.iter().any(saving);
    if (!keep.workspace || ttl_passed) && observed.claim_exists && !workspace_in_use {
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
    use k8s_openapi::api::core::v1::LocalObjectReference;

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
            cache_repository: None,
            run_cache: None,
            build_platform: render::DEFAULT_BUILD_PLATFORM.into(),
            emulated_platforms: Vec::new(),
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
        /// The last decision's `recheck_after`.
        recheck: Option<std::time::Duration>,
        config: OperatorConfig,
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
                recheck: None,
                config: config(),
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
                &self.config,
            );
            self.build.status = Some(d.status);
            self.recheck = d.recheck_after;
            for a in &d.actions {
                match a {
                    Action::CreateClaim(c) if c.metadata.owner_references.is_none() => {}
                    Action::CreateClaim(_) => self.claim = true,
                    Action::CreatePod(p) => {
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        let names: Vec<String> = self
                            .build
                            .status
                            .iter()
                            .flat_map(|s| &s.stages)
                            .map(|s| s.name.clone())
                            .collect();
                        let role = Role::from_labels(&labels, &names).expect("our labels");
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
            secrets: Vec::new(),
            run_cache: false,
            ssh: Vec::new(),
            cache: None,
            platform: None,
            runs_on: None,
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
                warnings: Vec::new(),
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

    /// The outcome of an assemble pod that pushed the image (digest f...f).
    fn pushed() -> Option<PodOutcome> {
        Some(PodOutcome {
            succeeded: true,
            image: Some(format!("registry.example/app:1@sha256:{}", "f".repeat(64))),
            ..PodOutcome::default()
        })
    }

    fn through_source(sim: &mut Sim) {
        sim.step(0);
        sim.set(Role::Source, PodState::Succeeded, summary());
    }

    /// [`through_source`] with every pod keyed, and found in the cache where `hit` says.
    fn through_cached_source(sim: &mut Sim, hit: impl Fn(&str) -> bool) {
        sim.step(0);
        let mut outcome = summary().expect("summary");
        for pod in &mut outcome.summary.as_mut().expect("plan").pods {
            pod.cache = Some(stagecoach_plan::contract::StageCache {
                key: Some(format!("key-of-{}", pod.id)),
                hit: hit(&pod.id),
                uncacheable: None,
            });
        }
        sim.set(Role::Source, PodState::Succeeded, Some(outcome));
    }

    /// The operator's run cache claim is asked for (a create that finds it is fine)
    /// right before each stage pod whose stages mount caches, and for no other.
    #[test]
    fn the_run_cache_claim_is_made_before_the_pods_that_mount_it() {
        let mut sim = Sim::new();
        sim.config.run_cache = Some(render::RunCacheConfig {
            claim: "stagecoach-run-cache".into(),
            size: "20Gi".into(),
            storage_class: None,
            access_mode: "ReadWriteOnce".into(),
            max_bytes: None,
        });
        sim.step(0);
        let mut outcome = summary().expect("summary");
        for pod in &mut outcome.summary.as_mut().expect("plan").pods {
            pod.run_cache = pod.id == "b";
        }
        sim.set(Role::Source, PodState::Succeeded, Some(outcome));
        let actions = sim.step(10);
        let order: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateClaim(c) => Some(format!("claim {}", c.metadata.name.clone()?)),
                Action::CreatePod(p) => Some(format!("pod {}", p.metadata.name.clone()?)),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            [
                "pod app-stage-a-g1",
                "claim stagecoach-run-cache",
                "pod app-stage-b-g1",
                "pod app-stage-c-g1"
            ]
        );
        assert!(sim.status().stages[1].run_cache);
    }

    /// A stage pod no node can take with the run cache claim (a node-local claim on a
    /// full node) is started again without it, at once: the cache is best effort.
    #[test]
    fn a_pod_unschedulable_with_the_run_cache_runs_without_it() {
        let mut sim = Sim::new();
        sim.config.run_cache = Some(render::RunCacheConfig::default());
        sim.step(0);
        let mut outcome = summary().expect("summary");
        for pod in &mut outcome.summary.as_mut().expect("plan").pods {
            pod.run_cache = pod.id == "b";
        }
        sim.set(Role::Source, PodState::Succeeded, Some(outcome));
        sim.step(1);
        set_state(
            &mut sim,
            "b",
            PodState::Stuck(StartProblem {
                failure: StartFailure::Unschedulable {
                    node: None,
                    requests: "cpu 1".into(),
                },
                container: "stage".into(),
                image: None,
                reason: "Unschedulable".into(),
                message: "0/3 nodes are available: 3 node(s) had volume node affinity conflict."
                    .into(),
            }),
        );
        let actions = sim.step(2);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::DeletePod(n) if n == "app-stage-b-g1"))
        );
        let [next] = actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => Some(p),
                _ => None,
            })
            .collect::<Vec<_>>()[..]
        else {
            panic!("one new pod: {actions:?}")
        };
        assert_eq!(next.metadata.name.as_deref(), Some("app-stage-b-g1-r1"));
        let volumes = next.spec.as_ref().and_then(|s| s.volumes.clone());
        assert!(
            !volumes.iter().flatten().any(|v| v.name == "run-cache"),
            "without the claim"
        );
        let b = &sim.status().stages[1];
        assert!(
            !b.run_cache
                && b.message
                    .as_deref()
                    .is_some_and(|m| m.contains("empty cache"))
        );
        assert_eq!(sim.phase(), Phase::Building);
    }

    #[test]
    fn stages_found_in_the_cache_get_no_pod_and_say_so() {
        let mut sim = Sim::new();
        through_cached_source(&mut sim, |pod| pod != "c");
        let actions = sim.step(10);
        assert_eq!(created(&actions), ["app-stage-c-g1"], "only the miss runs");
        let cached_events = actions
            .iter()
            .filter(|a| matches!(a, Action::Event { reason, .. } if reason == "StageCached"))
            .count();
        assert_eq!(cached_events, 3);
        let a = &sim.status().stages[0];
        assert!(a.cached && a.phase == StagePhase::Succeeded && a.pod.is_none());
        assert_eq!(a.cache_key.as_deref(), Some("key-of-a"));
        sim.set(Role::Stage("c".into()), PodState::Succeeded, ok());
        assert_eq!(
            created(&sim.step(20)),
            ["app-assemble-g1"],
            "final is cached too"
        );
        assert!(!sim.status().stages[2].cached);
    }

    #[test]
    fn a_failed_build_stores_what_succeeded_and_keeps_its_workspace_meanwhile() {
        let mut sim = Sim::new();
        through_cached_source(&mut sim, |_| false);
        sim.step(10);
        sim.set(Role::Stage("a".into()), PodState::Succeeded, ok());
        sim.set(
            Role::Stage("b".into()),
            PodState::Failed,
            failed("StageFailed", "no", Some(3)),
        );
        let actions = sim.step(20);
        assert_eq!(sim.phase(), Phase::Failed);
        assert_eq!(
            created(&actions),
            ["app-cache-g1"],
            "a succeeded, so it is stored"
        );
        sim.set(Role::Cache, PodState::Running, None);
        sim.step(30);
        assert!(
            sim.claim,
            "the workspace stays while the cache pod reads it"
        );
        sim.set(Role::Cache, PodState::Succeeded, ok());
        sim.step(40);
        assert!(!sim.claim, "then it goes, as after any failure");
    }

    #[test]
    fn plan_warnings_become_warning_events_once() {
        let mut sim = Sim::new();
        sim.step(0);
        let mut outcome = summary().expect("summary");
        if let Some(s) = outcome.summary.as_mut() {
            s.warnings = vec![stagecoach_plan::contract::Warning {
                kind: stagecoach_plan::contract::WarningKind::BuildArgUnused,
                message: "build arg FOO is not used by any ARG in the stages the target needs"
                    .into(),
                line: None,
            }];
        }
        sim.set(Role::Source, PodState::Succeeded, Some(outcome));
        let warnings = |actions: &[Action]| -> Vec<String> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Event {
                        warning: true,
                        reason,
                        ..
                    } => Some(reason.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(warnings(&sim.step(1)), ["BuildArgUnused"]);
        assert!(warnings(&sim.step(2)).is_empty(), "said once");
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

    /// `spec.cancel` (a new generation) stops a running build for good; a build that
    /// never started builds nothing; a finished one stays as it ended.
    #[test]
    fn cancel_stops_a_running_build_and_leaves_a_finished_one_alone() {
        let cancel = |sim: &mut Sim| {
            sim.build.spec.cancel = true;
            sim.build.metadata.generation = Some(2);
        };
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim.set(Role::Stage("a".into()), PodState::Running, None);
        cancel(&mut sim);
        let actions = sim.step(20);
        assert_eq!(sim.phase(), Phase::Failed);
        assert_eq!(sim.condition("Ready"), ("False".into(), "Canceled".into()));
        assert_eq!(
            deleted(&actions),
            ["app-stage-a-g1", "app-stage-b-g1", "app-stage-c-g1"]
        );
        assert!(created(&actions).is_empty());
        assert!(
            sim.status()
                .stages
                .iter()
                .all(|s| s.phase == StagePhase::Failed),
            "no stage is left running"
        );
        assert!(created(&sim.step(30)).is_empty(), "nothing starts after");

        let mut never = Sim::new();
        cancel(&mut never);
        assert!(created(&never.step(0)).is_empty());
        assert_eq!(never.condition("Ready").1, "Canceled");

        let mut done = Sim::new();
        through_source(&mut done);
        done.step(10);
        for stage in ["a", "b", "c"] {
            done.set(Role::Stage(stage.into()), PodState::Succeeded, ok());
        }
        done.step(20);
        done.set(Role::Stage("final".into()), PodState::Succeeded, ok());
        done.step(30);
        done.set(Role::Assemble, PodState::Succeeded, pushed());
        done.step(40);
        assert_eq!(done.phase(), Phase::Succeeded);
        cancel(&mut done);
        done.step(50);
        assert_eq!(
            done.phase(),
            Phase::Succeeded,
            "a finished build stays as it ended"
        );
        assert!(created(&done.step(60)).is_empty());
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
        sim.set(Role::Assemble, PodState::Succeeded, pushed());
        sim.step(50);
        assert_eq!(sim.phase(), Phase::Succeeded);
        let image = sim.status().image.clone().expect("image");
        assert_eq!(image.short_digest, "ffffffffffff");
        assert_eq!(sim.condition("Ready"), ("True".into(), "Succeeded".into()));
        assert!(sim.status().completion_time.is_some());
    }

    /// A plan for linux/amd64 and linux/arm64: a shared pod, a cross-compiler per
    /// platform on the build platform, and the final stage on each platform's image.
    fn two_platform_summary() -> Option<PodOutcome> {
        let pod = |id: &str, platform: Option<&str>, runs_on: &str, waits: &[&str]| PodSummary {
            id: id.into(),
            stages: vec![id.split('@').next().unwrap_or(id).into()],
            image: Some(format!("busybox@sha256:{}", runs_on.len())),
            waits_for: waits.iter().map(|s| s.to_string()).collect(),
            secrets: Vec::new(),
            run_cache: false,
            ssh: Vec::new(),
            cache: None,
            platform: platform.map(str::to_string),
            runs_on: Some(runs_on.into()),
        };
        let (amd, arm) = ("linux/amd64", "linux/arm64");
        Some(PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("abc123".into()),
                commit_time: Some(1_700_000_000),
                target: "final".into(),
                pods: vec![
                    pod("assets", None, amd, &[]),
                    pod("gen@linux/amd64", Some(amd), amd, &[]),
                    pod(
                        "final@linux/amd64",
                        Some(amd),
                        amd,
                        &["assets", "gen@linux/amd64"],
                    ),
                    pod("gen@linux/arm64", Some(arm), amd, &[]),
                    pod(
                        "final@linux/arm64",
                        Some(arm),
                        arm,
                        &["assets", "gen@linux/arm64"],
                    ),
                ],
                warnings: Vec::new(),
            }),
            ..PodOutcome::default()
        })
    }

    fn two_platforms(access_mode: &str, emulated: &[&str]) -> Sim {
        let mut sim = Sim::new();
        sim.build.spec.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        sim.build.spec.workspace = Some(crate::api::WorkspaceSpec {
            access_modes: vec![access_mode.into()],
            storage_class_name: None,
            size: None,
        });
        sim.config.emulated_platforms = emulated.iter().map(|p| p.to_string()).collect();
        sim.step(0);
        sim.set(Role::Source, PodState::Succeeded, two_platform_summary());
        sim
    }

    fn arch_of(pod: &Pod) -> String {
        let spec = pod.spec.as_ref().expect("spec");
        spec.node_selector.as_ref().expect("selector")["kubernetes.io/arch"].clone()
    }

    #[test]
    fn a_two_platform_build_runs_each_pod_on_its_platform_and_reports_the_index() {
        let mut sim = two_platforms("ReadWriteMany", &[]);
        let actions = sim.step(10);
        let pods: Vec<(String, String)> = created_pods(&actions)
            .iter()
            .map(|p| (p.metadata.name.clone().expect("name"), arch_of(p)))
            .collect();
        let names: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0] == "app-stage-assets-g1" && names[1] != names[2],
            "{names:?}"
        );
        // The cross-compilers run on amd64 nodes, for either platform.
        assert!(pods.iter().all(|(_, arch)| arch == "amd64"), "{pods:?}");
        let stages = &sim.status().stages;
        assert_eq!(stages[3].platform.as_deref(), Some("linux/arm64"));
        assert_eq!(stages[0].platform, None);
        for id in ["assets", "gen@linux/amd64", "gen@linux/arm64"] {
            sim.set(Role::Stage(id.into()), PodState::Succeeded, ok());
        }
        let finals = sim.step(20);
        let archs: Vec<String> = created_pods(&finals).iter().map(|p| arch_of(p)).collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        sim.set(
            Role::Stage("final@linux/amd64".into()),
            PodState::Succeeded,
            ok(),
        );
        assert!(
            created(&sim.step(30)).is_empty(),
            "assemble waits for every platform"
        );
        sim.set(
            Role::Stage("final@linux/arm64".into()),
            PodState::Succeeded,
            ok(),
        );
        assert_eq!(created(&sim.step(40)), ["app-assemble-g1"]);
        let mut outcome = pushed().expect("pushed");
        outcome.platforms = ["linux/amd64", "linux/arm64"]
            .iter()
            .enumerate()
            .map(|(i, p)| stagecoach_plan::contract::PlatformImage {
                platform: p.to_string(),
                digest: format!("sha256:{}", i.to_string().repeat(64)),
            })
            .collect();
        sim.set(Role::Assemble, PodState::Succeeded, Some(outcome));
        sim.step(50);
        assert_eq!(sim.phase(), Phase::Succeeded);
        let image = sim.status().image.clone().expect("image");
        assert_eq!(image.digest, format!("sha256:{}", "f".repeat(64)));
        let platforms: Vec<(&str, &str)> = image
            .platforms
            .iter()
            .map(|p| (p.platform.as_str(), &p.digest[..8]))
            .collect();
        assert_eq!(
            platforms,
            [("linux/amd64", "sha256:0"), ("linux/arm64", "sha256:1")]
        );
    }

    #[test]
    fn a_read_write_once_workspace_fails_a_foreign_platform_at_once_unless_it_is_emulated() {
        let mut sim = two_platforms("ReadWriteOnce", &[]);
        let actions = sim.step(10);
        assert_eq!(sim.phase(), Phase::Failed);
        assert!(created(&actions).is_empty(), "{:?}", created(&actions));
        let f = failure(&sim);
        assert_eq!(f.reason, reason::PLATFORM_UNSCHEDULABLE);
        for part in ["final@linux/arm64", "ReadWriteMany", "--emulate-platform"] {
            assert!(f.message.contains(part), "{part}: {}", f.message);
        }
        // A foreign pod found in the stage cache needs no node.
        let mut sim = Sim::new();
        sim.build.spec.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        sim.step(0);
        let mut plan = two_platform_summary().expect("plan");
        for pod in &mut plan.summary.as_mut().expect("summary").pods {
            pod.cache = Some(stagecoach_plan::contract::StageCache {
                key: Some(format!("key-of-{}", pod.id)),
                hit: pod.runs_on.as_deref() == Some("linux/arm64"),
                uncacheable: None,
            });
        }
        sim.set(Role::Source, PodState::Succeeded, Some(plan));
        sim.step(10);
        assert_eq!(sim.phase(), Phase::Building, "{:?}", sim.status().failure);
        // Emulated, the arm64 pods go to the build platform's node, pinned to the first.
        let mut sim = two_platforms("ReadWriteOnce", &["linux/arm64"]);
        sim.step(10);
        for id in ["assets", "gen@linux/amd64", "gen@linux/arm64"] {
            sim.set(Role::Stage(id.into()), PodState::Succeeded, ok());
        }
        let actions = sim.step(20);
        let finals = created_pods(&actions);
        assert_eq!(finals.len(), 2);
        for pod in finals {
            assert_eq!(arch_of(pod), "amd64");
            assert_eq!(render::pinned_node(pod), Some("node-1"));
        }
    }

    #[test]
    fn a_failed_platform_pod_is_named_with_its_platform() {
        let mut sim = two_platforms("ReadWriteMany", &[]);
        sim.step(10);
        sim.set(
            Role::Stage("gen@linux/arm64".into()),
            PodState::Failed,
            failed(
                "StageFailed",
                "stage gen (linux/arm64): Dockerfile:5: RUN make: exit code 2",
                Some(5),
            ),
        );
        sim.step(20);
        let f = failure(&sim);
        assert_eq!(f.stage.as_deref(), Some("gen@linux/arm64"));
        assert!(
            f.message
                .starts_with("stage gen (linux/arm64): Dockerfile:5:"),
            "{}",
            f.message
        );
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
        let actions = sim.step(20);
        assert_eq!(sim.phase(), Phase::Failed);
        assert_eq!(
            deleted(&actions),
            ["app-stage-a-g1", "app-stage-c-g1"],
            "the siblings still running are stopped"
        );
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
        let stage = |sim: &Sim| {
            let s = sim.status().stages.iter().find(|s| s.name == "a").cloned();
            s.map(|s| (s.pod, s.attempts)).expect("stage a")
        };
        assert_eq!(stage(&sim), (Some("app-stage-a-g1-r1".into()), 1));
        sim.step(25);
        assert_eq!(
            stage(&sim),
            (Some("app-stage-a-g1-r1".into()), 1),
            "and stays so"
        );
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

    /// A pod whose container cannot start, as observe maps the kubelet's waiting state.
    fn stuck(
        failure: StartFailure,
        container: &str,
        image: &str,
        (reason, message): (&str, &str),
    ) -> PodState {
        PodState::Stuck(StartProblem {
            failure,
            container: container.into(),
            image: Some(image.into()),
            reason: reason.into(),
            message: message.into(),
        })
    }

    const BASE: &str = "busybox@sha256:1";

    /// The first failed pull of a private base image without credentials (containerd).
    fn pull_error() -> PodState {
        stuck(
            StartFailure::ImagePull,
            "stage",
            BASE,
            (
                "ErrImagePull",
                "failed to pull and unpack image \"docker.io/library/busybox@sha256:1\": \
                 401 Unauthorized",
            ),
        )
    }

    /// The kubelet waiting to pull again.
    fn back_off() -> PodState {
        stuck(
            StartFailure::ImagePull,
            "stage",
            BASE,
            (
                "ImagePullBackOff",
                "Back-off pulling image \"busybox@sha256:1\"",
            ),
        )
    }

    fn set_state(sim: &mut Sim, stage: &str, state: PodState) {
        sim.set(Role::Stage(stage.into()), state, None);
    }

    fn deleted(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::DeletePod(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    fn failure(sim: &Sim) -> Failure {
        sim.status().failure.clone().expect("failure")
    }

    fn blocked(sim: &Sim) -> Option<Condition> {
        sim.status()
            .conditions
            .iter()
            .find(|c| c.type_ == START_BLOCKED)
            .cloned()
    }

    /// The three first-wave stage pods created at 10 s.
    fn building() -> Sim {
        let mut sim = Sim::new();
        through_source(&mut sim);
        sim.step(10);
        sim
    }

    #[test]
    fn an_invalid_image_name_fails_the_build_at_once_and_stops_its_pods() {
        let mut sim = building();
        set_state(
            &mut sim,
            "a",
            stuck(
                StartFailure::InvalidImage,
                "stage",
                "Busybox:1",
                (
                    "InvalidImageName",
                    "Failed to apply default image tag \"Busybox:1\": couldn't parse image \
                     reference \"Busybox:1\": invalid reference format: repository name must \
                     be lowercase",
                ),
            ),
        );
        set_state(&mut sim, "b", PodState::Running);
        let actions = sim.step(11);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = failure(&sim);
        assert_eq!(
            (f.reason.as_str(), f.stage.as_deref(), f.pod.as_deref()),
            ("ImagePullFailed", Some("a"), Some("app-stage-a-g1"))
        );
        assert_eq!(
            f.message,
            "stage a: container \"stage\" of pod app-stage-a-g1 cannot pull image \
             \"Busybox:1\" (InvalidImageName: Failed to apply default image tag \"Busybox:1\": \
             couldn't parse image reference \"Busybox:1\": invalid reference format: \
             repository name must be lowercase); check the image reference and its tag (the \
             stage's FROM), and that spec.imagePullSecrets names a Secret with pull \
             credentials for its registry"
        );
        assert_eq!(
            sim.condition("Ready"),
            ("False".into(), "ImagePullFailed".into())
        );
        assert_eq!(
            deleted(&actions),
            ["app-stage-a-g1", "app-stage-b-g1", "app-stage-c-g1"],
            "a pod that cannot start never ends: it and its siblings stop"
        );
        let stage = &sim.status().stages[0];
        assert_eq!(stage.phase, StagePhase::Failed);
        assert_eq!(stage.message.as_ref(), Some(&f.message));
        assert!(blocked(&sim).is_none());
    }

    #[test]
    fn a_failed_pull_that_mends_itself_does_not_fail_the_build() {
        let mut sim = building();
        set_state(&mut sim, "a", pull_error());
        sim.step(20);
        assert_eq!(sim.phase(), Phase::Building);
        let c = blocked(&sim).expect("the problem is remembered");
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                c.last_transition_time.0
            ),
            ("True", "ImagePull", at(20))
        );
        assert_eq!(
            c.message,
            "app-stage-a-g1/stage: ErrImagePull: failed to pull and unpack image \
             \"docker.io/library/busybox@sha256:1\": 401 Unauthorized"
        );
        assert_eq!(sim.recheck, Some(std::time::Duration::from_secs(90)));
        // Backing off: still the same problem, since 20 s, with the pull's own error kept.
        set_state(&mut sim, "a", back_off());
        sim.step(30);
        let c = blocked(&sim).expect("still remembered");
        assert_eq!(c.last_transition_time.0, at(20));
        assert!(c.message.contains("401 Unauthorized"), "{}", c.message);
        assert_eq!(sim.recheck, Some(std::time::Duration::from_secs(80)));
        // The next pull works.
        set_state(&mut sim, "a", PodState::Running);
        assert!(deleted(&sim.step(40)).is_empty());
        assert!(blocked(&sim).is_none(), "forgotten once the pod runs");
        assert_eq!(sim.recheck, None);
        sim.step(300);
        assert_eq!(sim.phase(), Phase::Building);
        assert!(sim.status().failure.is_none());
    }

    #[test]
    fn a_pull_failing_past_the_grace_period_fails_naming_image_and_stage() {
        let mut sim = building();
        set_state(&mut sim, "a", pull_error());
        sim.step(20);
        set_state(&mut sim, "a", back_off());
        // The status goes through the API server (and a restarted operator reads it).
        sim.build =
            serde_json::from_value(serde_json::to_value(&sim.build).expect("json")).expect("build");
        sim.step(60);
        assert_eq!(sim.phase(), Phase::Building);
        sim.step(20 + START_GRACE_SECONDS - 1);
        assert_eq!(sim.phase(), Phase::Building, "not before the grace period");
        assert_eq!(sim.recheck, Some(std::time::Duration::from_secs(1)));
        let actions = sim.step(20 + START_GRACE_SECONDS);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = failure(&sim);
        assert_eq!(
            (f.reason.as_str(), f.stage.as_deref(), f.pod.as_deref()),
            ("ImagePullFailed", Some("a"), Some("app-stage-a-g1"))
        );
        assert_eq!(
            f.message,
            "stage a: container \"stage\" of pod app-stage-a-g1 could not pull image \
             \"busybox@sha256:1\" for 90s (ErrImagePull: failed to pull and unpack image \
             \"docker.io/library/busybox@sha256:1\": 401 Unauthorized); check the image \
             reference and its tag (the stage's FROM), and that spec.imagePullSecrets names a \
             Secret with pull credentials for its registry"
        );
        assert_eq!(
            deleted(&actions),
            ["app-stage-a-g1", "app-stage-b-g1", "app-stage-c-g1"]
        );
        let stalled = sim.condition("Stalled");
        assert_eq!(stalled, ("True".into(), "ImagePullFailed".into()));
        assert!(blocked(&sim).is_none());
    }

    fn created_pods(actions: &[Action]) -> Vec<&Pod> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// With a ReadWriteOnce workspace (the default) every pod after the first goes to
    /// the first one's node, added to each of the user's required terms; with
    /// ReadWriteMany, pods go anywhere.
    #[test]
    fn a_node_local_workspace_keeps_the_pods_on_the_first_pods_node() {
        let mut sim = Sim::new();
        sim.build.spec.affinity = Some(
            serde_json::from_value(serde_json::json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["build"]}]},
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["spare"]}]}
            ]}}}))
            .expect("affinity"),
        );
        let first = sim.step(0);
        let source = created_pods(&first);
        assert_eq!(
            render::pinned_node(source[0]),
            None,
            "the first pod goes anywhere"
        );
        sim.set(Role::Source, PodState::Succeeded, summary());
        let stages = sim.step(1);
        let stages = created_pods(&stages);
        assert_eq!(stages.len(), 3);
        for pod in stages {
            assert_eq!(render::pinned_node(pod), Some("node-1"));
            let terms = serde_json::to_value(&pod.spec.as_ref().expect("spec").affinity)
                .expect("json")["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"]
                .clone();
            for (term, pool) in terms
                .as_array()
                .expect("terms")
                .iter()
                .zip(["build", "spare"])
            {
                assert_eq!(term["matchExpressions"][0]["values"][0], pool, "kept");
                assert_eq!(term["matchFields"][0]["key"], "metadata.name");
                assert_eq!(term["matchFields"][0]["values"][0], "node-1");
            }
        }

        let mut shared = Sim::new();
        shared.build.spec.workspace = Some(crate::api::WorkspaceSpec {
            storage_class_name: None,
            size: None,
            access_modes: vec!["ReadWriteMany".into()],
        });
        shared.step(0);
        shared.set(Role::Source, PodState::Succeeded, summary());
        let stages = shared.step(1);
        assert!(
            created_pods(&stages)
                .iter()
                .all(|p| render::pinned_node(p).is_none())
        );
    }

    /// A pod no node takes fails the build once it has waited past the bound with no
    /// other pod of the build running (a running one may free the room), naming the
    /// node, the requests and the fix.
    #[test]
    fn an_unschedulable_pod_fails_the_build_naming_node_requests_and_fix() {
        let mut sim = Sim::new();
        sim.build.spec.timeout = Some("1h".into());
        sim.step(0);
        sim.set(Role::Source, PodState::Succeeded, summary());
        sim.step(1);
        let waiting = || {
            PodState::Stuck(StartProblem {
                failure: StartFailure::Unschedulable {
                    node: Some("node-1".into()),
                    requests: "cpu 2, memory 4Gi".into(),
                },
                container: "stage".into(),
                image: None,
                reason: "Unschedulable".into(),
                message: "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.".into(),
            })
        };
        set_state(&mut sim, "a", PodState::Running);
        set_state(&mut sim, "b", waiting());
        set_state(&mut sim, "c", waiting());
        sim.step(2);
        sim.step(2 + UNSCHEDULABLE_GRACE_SECONDS * 2);
        assert_eq!(
            sim.phase(),
            Phase::Building,
            "a running stage may free the room"
        );
        let t = 10 + UNSCHEDULABLE_GRACE_SECONDS * 2;
        sim.set(Role::Stage("a".into()), PodState::Succeeded, ok());
        sim.step(t);
        sim.step(t + UNSCHEDULABLE_GRACE_SECONDS - 1);
        assert_eq!(sim.phase(), Phase::Building);
        let actions = sim.step(t + UNSCHEDULABLE_GRACE_SECONDS);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = failure(&sim);
        assert_eq!(f.reason, reason::UNSCHEDULABLE);
        for part in [
            "stage b: pod app-stage-b-g1 cannot be scheduled on node node-1",
            "ReadWriteOnce workspace",
            "for 300s",
            "0/3 nodes are available",
            "it requests cpu 2, memory 4Gi",
            "spec.workspace.accessModes",
            "spec.resources",
        ] {
            assert!(f.message.contains(part), "{part:?} in {}", f.message);
        }
        assert_eq!(deleted(&actions).len(), 2, "both waiting pods are deleted");
    }

    #[test]
    fn a_missing_secret_fails_after_the_grace_period_naming_it_and_the_field() {
        let reference = |name: &str| LocalObjectReference { name: name.into() };
        let cases = [
            (
                (
                    "CreateContainerConfigError",
                    "secret \"git-creds\" not found",
                ),
                None,
                "source pod: container \"source\" of pod app-source-g1 refers to Secret \
                 \"git-creds\", which does not exist in namespace team \
                 (CreateContainerConfigError: secret \"git-creds\" not found); \
                 spec.source.git.secretRef names it: create the Secret or correct the name",
            ),
            (
                (
                    "CreateContainerConfigError",
                    "couldn't find key .dockerconfigjson in Secret team/pull",
                ),
                Some(".dockerconfigjson"),
                "source pod: container \"source\" of pod app-source-g1 refers to key \
                 \".dockerconfigjson\" of Secret \"pull\", which has no such key \
                 (CreateContainerConfigError: couldn't find key .dockerconfigjson in Secret \
                 team/pull); spec.imagePullSecrets[0] names it: add the key to the Secret or \
                 correct the reference",
            ),
        ];
        for (kubelet, key, expected) in cases {
            let mut sim = Sim::new();
            sim.build.spec.source.git.as_mut().expect("git").secret_ref =
                Some(reference("git-creds"));
            sim.build.spec.image_pull_secrets = Some(vec![reference("pull")]);
            sim.step(0);
            let name = if key.is_some() { "pull" } else { "git-creds" };
            let failure_kind = StartFailure::Secret {
                name: name.into(),
                key: key.map(String::from),
            };
            sim.set(
                Role::Source,
                stuck(failure_kind, "source", "builder:1", kubelet),
                None,
            );
            sim.step(5);
            assert_ne!(
                sim.phase(),
                Phase::Failed,
                "a Secret may arrive a moment after the build"
            );
            let actions = sim.step(5 + START_GRACE_SECONDS + 1);
            assert_eq!(sim.phase(), Phase::Failed);
            let f = failure(&sim);
            assert_eq!(
                (f.reason.as_str(), f.stage, f.pod.as_deref()),
                ("SecretNotFound", None, Some("app-source-g1"))
            );
            assert_eq!(f.message, expected);
            assert_eq!(deleted(&actions), ["app-source-g1"]);
        }
    }

    #[test]
    fn a_container_that_cannot_be_created_fails_after_the_grace_period() {
        let mut sim = building();
        let cannot_create = stuck(
            StartFailure::Start,
            "stage",
            BASE,
            (
                "CreateContainerError",
                "failed to generate container \"3f9c\" spec: failed to apply OCI options: \
                 failed to mkdir \"/var/lib/kubelet/pods/u/volumes\": permission denied",
            ),
        );
        set_state(&mut sim, "b", cannot_create);
        sim.step(20);
        assert_eq!(
            blocked(&sim).map(|c| c.reason),
            Some("ContainerStart".into())
        );
        sim.step(100);
        assert_eq!(sim.phase(), Phase::Building);
        sim.step(110);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = failure(&sim);
        assert_eq!(
            (f.reason.as_str(), f.stage.as_deref(), f.pod.as_deref()),
            ("PodStartFailed", Some("b"), Some("app-stage-b-g1"))
        );
        assert_eq!(
            f.message,
            "stage b: container \"stage\" of pod app-stage-b-g1 cannot start for 90s \
             (CreateContainerError: failed to generate container \"3f9c\" spec: failed to \
             apply OCI options: failed to mkdir \"/var/lib/kubelet/pods/u/volumes\": \
             permission denied)"
        );
    }

    #[test]
    fn a_stage_pod_that_cannot_pull_the_builder_image_names_it() {
        let mut sim = building();
        let install = stuck(
            StartFailure::ImagePull,
            "install",
            "builder:1",
            ("ImagePullBackOff", "Back-off pulling image \"builder:1\""),
        );
        set_state(&mut sim, "c", install);
        sim.step(20);
        sim.step(110);
        assert_eq!(sim.phase(), Phase::Failed);
        let f = failure(&sim);
        assert_eq!(
            (f.reason.as_str(), f.stage.as_deref(), f.pod.as_deref()),
            ("ImagePullFailed", Some("c"), Some("app-stage-c-g1"))
        );
        assert_eq!(
            f.message,
            "stage c: container \"install\" of pod app-stage-c-g1 could not pull image \
             \"builder:1\" for 90s (ImagePullBackOff: Back-off pulling image \"builder:1\"); \
             it is the operator's builder image (its --builder-image, the chart's \
             builderImage): check that reference and its tag, and that the nodes may pull it \
             (a Secret in spec.imagePullSecrets, or the nodes' own credentials)"
        );
    }

    #[test]
    fn each_pod_and_container_is_timed_from_when_its_own_problem_was_seen() {
        let mut sim = building();
        set_state(&mut sim, "a", pull_error());
        sim.step(20);
        set_state(&mut sim, "b", pull_error());
        sim.step(50);
        assert!(blocked(&sim).is_some_and(|c| c.message.starts_with("app-stage-a-g1/stage: ")));
        // a starts: b is timed from now, never from before it was the one timed.
        set_state(&mut sim, "a", PodState::Running);
        sim.step(60);
        let c = blocked(&sim).expect("b");
        assert!(
            c.message.starts_with("app-stage-b-g1/stage: "),
            "{}",
            c.message
        );
        assert_eq!(c.last_transition_time.0, at(60));
        sim.step(149);
        assert_eq!(sim.phase(), Phase::Building);
        // b's install container failed to pull; then (unseen in between) the main one.
        set_state(
            &mut sim,
            "b",
            stuck(
                StartFailure::ImagePull,
                "install",
                "builder:1",
                ("ImagePullBackOff", "Back-off pulling image \"builder:1\""),
            ),
        );
        sim.step(150);
        set_state(&mut sim, "b", back_off());
        sim.step(300);
        assert_eq!(
            sim.phase(),
            Phase::Building,
            "another container, another clock"
        );
        assert_eq!(
            blocked(&sim).map(|c| c.last_transition_time.0),
            Some(at(300))
        );
        // A status read from before the condition was written starts the clock again:
        // later, never sooner.
        sim.build
            .status
            .as_mut()
            .expect("status")
            .conditions
            .retain(|c| c.type_ != START_BLOCKED);
        sim.step(390);
        assert_eq!(sim.phase(), Phase::Building);
        sim.step(480);
        assert_eq!(failure(&sim).pod.as_deref(), Some("app-stage-b-g1"));
    }
}
