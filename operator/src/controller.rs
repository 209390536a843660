//! The Kubernetes shell around the core: observe → decide → apply → report.
//!
//! A `kube::runtime::Controller` watches ImageBuilds and the pods and claims they own;
//! each reconcile lists what the build owns, asks [`core::decide`], applies the actions
//! (creates and deletes, tolerant of "already there" and "already gone"), server-side
//! applies the status with one field manager, and records Events. Nothing lives only in
//! memory: a restarted operator reconstructs everything from status and pods.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::api::{ImageBuild, ImageBuildStatus, Phase, StagePhase};
use crate::core::{self, Action, Observed};
use crate::leader::{self, Elector};
use crate::metrics::{CacheLabels, Metrics, ResultLabels};
use crate::observe::{self, observe_pod};
use crate::render::{self, OperatorConfig};
use k8s_openapi::api::events::v1::Event as KubeEvent;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "stagecoach";

/// Lines of a failed pod's log kept in `status.failure.logTail`, the most of each line,
/// and the most read (the status is an object in etcd, not a log store).
const LOG_TAIL_LINES: i64 = 20;
const LOG_LINE_CHARS: usize = 400;
const LOG_TAIL_BYTES: i64 = 16 * 1024;

/// How often a build in progress is looked at even when nothing it owns changes.
const IN_PROGRESS_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed")]
    Api(#[from] kube::Error),
    #[error("the ImageBuild has no namespace")]
    NoNamespace,
    #[error("the watches of pods and claims have stopped")]
    NotWatching,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The status each build (by uid) was last given, with the resourceVersion the API
    /// server answered: until the watch shows that version, the reflector's copy is
    /// older than what this operator wrote, and deciding on it would repeat transitions.
    written: Mutex<HashMap<String, Written>>,
    /// Reconcile errors in a row per build (by uid), for the backoff of the retries.
    errors: Mutex<HashMap<String, u32>>,
    /// The pods and claims builds own, as the controller's watches hold them (set when
    /// a controller starts: each leadership has watches of its own).
    owned: RwLock<Option<Owned>>,
    /// The pods this operator created per build (by uid) that its pod watch has not
    /// shown yet: until it does, the store is older than our own writes.
    unseen: Mutex<HashMap<String, Vec<(String, Instant)>>>,
}

/// The watch caches a reconcile reads instead of asking the API server each time.
#[derive(Clone, Debug)]
struct Owned {
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
}

/// How long a created pod may be missing from the pod watch before the reconcile goes
/// on without it (it may have been deleted before the watch showed it); and how soon a
/// reconcile waiting for the watch tries again.
const WATCH_CATCH_UP: Duration = Duration::from_secs(10);
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// A status this operator wrote, and where.
struct Written {
    generation: Option<i64>,
    resource_version: Option<String>,
    status: ImageBuildStatus,
}

/// At most this many builds are remembered: past it the memory starts again (stale
/// reads could then repeat a transition once, as without it).
const WRITTEN_LIMIT: usize = 10_000;

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Context {
        let reporter = Reporter {
            controller: "stagecoach".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            written: Mutex::default(),
            errors: Mutex::default(),
            owned: RwLock::default(),
            unseen: Mutex::default(),
        }
    }

    fn watching(&self, owned: Owned) {
        *self.owned.write().unwrap_or_else(|e| e.into_inner()) = Some(owned);
    }

    /// The watch caches, once their first LIST is in.
    async fn owned(&self) -> Result<Owned, Error> {
        let owned = self
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::NotWatching)?;
        owned
            .pods
            .wait_until_ready()
            .await
            .map_err(|_| Error::NotWatching)?;
        owned
            .claims
            .wait_until_ready()
            .await
            .map_err(|_| Error::NotWatching)?;
        Ok(owned)
    }

    fn created(&self, build: &ImageBuild, pod: String) {
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        if unseen.len() >= WRITTEN_LIMIT {
            unseen.clear();
        }
        unseen
            .entry(build.uid().unwrap_or_default())
            .or_default()
            .push((pod, Instant::now()));
    }

    /// Whether the pod watch is behind our own creates for `build`: a pod it made is not
    /// in `pods` yet (for at most [`WATCH_CATCH_UP`]). Deciding then would start it again.
    fn behind(&self, build: &ImageBuild, pods: &[Pod]) -> bool {
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        let uid = build.uid().unwrap_or_default();
        let Some(created) = unseen.get_mut(&uid) else {
            return false;
        };
        created.retain(|(name, at)| {
            at.elapsed() < WATCH_CATCH_UP
                && !pods.iter().any(|p| p.metadata.name.as_ref() == Some(name))
        });
        let behind = !created.is_empty();
        if !behind {
            unseen.remove(&uid);
        }
        behind
    }

    /// `build` with the status this operator last wrote for it when the copy read is
    /// older: we are the only writer of the status, so for one generation what we wrote
    /// last is the truth until the watch catches up (then the memory is dropped).
    fn freshest(&self, build: &ImageBuild) -> ImageBuild {
        let mut build = build.clone();
        let Some(uid) = build.metadata.uid.clone() else {
            return build;
        };
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match written.get(&uid) {
            Some(w) if w.resource_version == build.metadata.resource_version => {
                written.remove(&uid);
            }
            Some(w) if w.generation == build.metadata.generation => {
                build.status = Some(w.status.clone());
            }
            Some(_) => {
                written.remove(&uid);
            }
            None => {}
        }
        build
    }

    fn remember(&self, build: &ImageBuild, written_as: &ImageBuild, status: &ImageBuildStatus) {
        let Some(uid) = build.metadata.uid.clone() else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= WRITTEN_LIMIT {
            written.clear();
        }
        written.insert(
            uid,
            Written {
                generation: build.metadata.generation,
                resource_version: written_as.metadata.resource_version.clone(),
                status: status.clone(),
            },
        );
    }

    /// How long to wait before retrying a build whose reconcile failed: 1 s, doubling
    /// with each failure in a row, at most [`ERROR_BACKOFF_LIMIT`].
    fn backoff(&self, build: &ImageBuild) -> Duration {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let count = errors.entry(build.uid().unwrap_or_default()).or_insert(0);
        *count = count.saturating_add(1);
        Duration::from_secs(1u64 << (*count - 1).min(16)).min(ERROR_BACKOFF_LIMIT)
    }

    fn reconciled(&self, build: &ImageBuild) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.remove(&build.uid().unwrap_or_default());
    }
}

/// The longest wait between retries of a build whose reconciles keep failing.
const ERROR_BACKOFF_LIMIT: Duration = Duration::from_secs(300);

/// Runs the controller until `shutdown` turns true. `namespace` limits it to one
/// namespace; None watches the whole cluster. At most `concurrency` builds reconcile at
/// once. With an elector it reconciles only while holding the lease; `leading` (and the
/// `stagecoach_leader` gauge) is true while it may reconcile.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    elector: Option<Elector>,
    leading: &AtomicBool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), kube::Error> {
    let controller = || {
        let stop = leader::stopped(shutdown.clone());
        let ctx = ctx.clone();
        let namespace = namespace.clone();
        async move {
            let _leader = LeaderGauge::set(&ctx.metrics.leader);
            // Another replica may have led meanwhile: what this one wrote is history.
            ctx.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            reconcile_all(ctx.clone(), namespace, concurrency, stop).await;
        }
    };
    match elector {
        Some(elector) => elector.lead(leading, shutdown.clone(), controller).await,
        None => {
            leading.store(true, Ordering::Relaxed);
            controller().await;
            Ok(())
        }
    }
}

/// `stagecoach_leader` at 1 for as long as it lives: a lost lease drops the controller.
struct LeaderGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> LeaderGauge<'a> {
    fn set(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> LeaderGauge<'a> {
        gauge.set(1);
        LeaderGauge(gauge)
    }
}

impl Drop for LeaderGauge<'_> {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// The kube-runtime controller, until `stop` (then in-flight reconciles finish).
async fn reconcile_all(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (builds, pods, claims) = match &namespace {
        Some(ns) => (
            Api::<ImageBuild>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<PersistentVolumeClaim>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let labels = watcher::Config::default().labels("app.kubernetes.io/managed-by=stagecoach");
    let (pod_store, pod_writer) = reflector::store();
    let (claim_store, claim_writer) = reflector::store();
    ctx.watching(Owned {
        pods: pod_store,
        claims: claim_store,
    });
    // The same watches fill the caches reconciles read and trigger the reconciles.
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(pods, labels.clone())
            .default_backoff()
            .modify(|p| p.managed_fields_mut().clear()),
    )
    .touched_objects();
    let claim_events = reflector::reflector(
        claim_writer,
        watcher(claims, labels)
            .default_backoff()
            .modify(|c| c.managed_fields_mut().clear()),
    )
    .touched_objects();
    let controller = Controller::new(builds, watcher::Config::default());
    let _counting = ctx.metrics.builds_in_progress.follow(controller.store());
    controller
        .owns_stream(pod_events)
        .owns_stream(claim_events)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(build: Arc<ImageBuild>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_errors.inc();
    let after = ctx.backoff(&build);
    warn!(%error, retry_in = ?after, "requeue after an error");
    Requeue::requeue(after)
}

/// One reconcile of one build.
#[instrument(skip(build, ctx), fields(build = %build.name_any()))]
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let build = ctx.freshest(&build);
    let requeue = reconcile_fresh(&build, &ctx).await?;
    ctx.reconciled(&build);
    Ok(requeue)
}

async fn reconcile_fresh(build: &ImageBuild, ctx: &Context) -> Result<Requeue, Error> {
    let namespace = build.namespace().ok_or(Error::NoNamespace)?;
    let name = build.name_any();
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &namespace);
    let claims_api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace);
    let builds_api = Api::<ImageBuild>::namespaced(ctx.client.clone(), &namespace);

    let owned = ctx.owned().await?;
    let uid = build.meta().uid.clone();
    let pods: Vec<Pod> = owned
        .pods
        .state_filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect();
    if ctx.behind(build, &pods) {
        return Ok(Requeue::requeue(WATCH_RETRY));
    }
    let claim = ObjectRef::new(&render::claim_name(build)).within(&namespace);
    let claim_exists = owned.claims.get(&claim).is_some();
    let stage_names: Vec<String> = build
        .status
        .iter()
        .flat_map(|s| s.stages.iter().map(|st| st.name.clone()))
        .collect();
    let events_api = Api::<KubeEvent>::namespaced(ctx.client.clone(), &namespace);
    let mut observed = Vec::new();
    for pod in &pods {
        let Some(seen) = observe_pod(pod, &stage_names) else {
            continue;
        };
        let seen = match observe::may_wait_on_a_mount(pod) {
            true => match mount_failure(&events_api, pod).await {
                Some(message) => observe::with_mount_failure(seen, &message),
                None => seen,
            },
            false => seen,
        };
        observed.push(seen);
    }
    let seen = Observed {
        build,
        pods: &observed,
        claim_exists,
        now: Timestamp::now(),
    };
    let mut decision = core::decide(&seen, &ctx.config);
    let mut rejected = None;
    for action in std::mem::take(&mut decision.actions) {
        let creating = match &action {
            Action::CreatePod(pod) => Some(format!("pod {}", pod.name_any())),
            Action::CreateClaim(claim) => Some(format!("claim {}", claim.name_any())),
            _ => None,
        };
        match (
            apply(ctx, build, &pods_api, &claims_api, action).await,
            creating,
        ) {
            (Err(Error::Api(kube::Error::Api(e))), Some(object)) if refused(&e) => {
                rejected = Some((object, e.message.clone()));
                break;
            }
            (result, _) => result?,
        }
    }
    if let Some((object, message)) = rejected {
        warn!(%object, %message, "the API server refused a create");
        decision = core::reject(&seen, &ctx.config, decision.status, &object, &message);
        for action in std::mem::take(&mut decision.actions) {
            apply(ctx, build, &pods_api, &claims_api, action).await?;
        }
    }
    let before = build.status.clone().unwrap_or_default();
    let mut status = decision.status;
    // A build that has just failed gets the failed pod's last log lines, once (a pod
    // that could not start has none). Its container by name: injected sidecars may come
    // first.
    if before.failure.is_none()
        && let Some(failure) = status.failure.as_mut()
        && !core::reason::START_FAILURES.contains(&failure.reason.as_str())
        && let Some(pod) = failure.pod.clone()
    {
        let container = observed
            .iter()
            .find(|p| p.name == pod)
            .map(|p| observe::main_container(&p.role).to_string());
        failure.log_tail = log_tail(&pods_api, &pod, container).await;
    }
    if before != status {
        record_metrics(&ctx.metrics, &before, &status);
        let patch = serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "ImageBuild",
            "status": status,
        });
        let written_as = builds_api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        ctx.remember(build, &written_as, &status);
    }
    Ok(match status.phase {
        Some(Phase::Succeeded | Phase::Failed) => match decision.recheck_after {
            Some(after) => Requeue::requeue(after),
            None => Requeue::await_change(),
        },
        // Pods report through watch events; the requeue catches timeouts, and the end of
        // the grace period of a pod that cannot start.
        _ => Requeue::requeue(
            decision
                .recheck_after
                .map_or(IN_PROGRESS_RECHECK, |after| after.min(IN_PROGRESS_RECHECK)),
        ),
    })
}

/// The message of a pod's latest event when it is a `FailedMount` (a Secret or volume
/// the kubelet cannot mount says so only there); None when a later event (the mount
/// done, an image being pulled) supersedes it, or the events cannot be read. Events are
/// matched by the pod's uid: a pod made again under the same name has none of the old
/// one's.
async fn mount_failure(events: &Api<KubeEvent>, pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    let fields = format!("regarding.kind=Pod,regarding.uid={uid}");
    let list = events
        .list(&ListParams::default().fields(&fields))
        .await
        .ok()?;
    let latest = list.items.into_iter().max_by_key(|e| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
    })?;
    (latest.reason.as_deref() == Some("FailedMount"))
        .then_some(latest.note)
        .flatten()
}

/// The last lines of a failed pod's log; none when the log cannot be read (the pod is
/// gone, or its node is): the failure's reason and message do not depend on it.
async fn log_tail(pods: &Api<Pod>, pod: &str, container: Option<String>) -> Vec<String> {
    let params = LogParams {
        container,
        tail_lines: Some(LOG_TAIL_LINES),
        limit_bytes: Some(LOG_TAIL_BYTES),
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) => text
            .lines()
            .map(|line| line.chars().take(LOG_LINE_CHARS).collect())
            .collect(),
        Err(e) => {
            warn!(pod, error = %e, "cannot read the failed pod's log");
            Vec::new()
        }
    }
}

async fn apply(
    ctx: &Context,
    build: &ImageBuild,
    pods: &Api<Pod>,
    claims: &Api<PersistentVolumeClaim>,
    action: Action,
) -> Result<(), Error> {
    match action {
        Action::CreatePod(pod) => {
            let name = pod.metadata.name.clone().unwrap_or_default();
            ignore(
                pods.create(&PostParams::default(), &pod).await.map(|_| ()),
                409,
            )?;
            info!(pod = %name, "pod created");
            ctx.created(build, name);
        }
        Action::DeletePod(name) => ignore(
            pods.delete(&name, &DeleteParams::background())
                .await
                .map(|_| ()),
            404,
        )?,
        Action::CreateClaim(claim) => ignore(
            claims
                .create(&PostParams::default(), &claim)
                .await
                .map(|_| ()),
            409,
        )?,
        Action::DeleteClaim(name) => ignore(
            claims
                .delete(&name, &DeleteParams::background())
                .await
                .map(|_| ()),
            404,
        )?,
        Action::Event {
            warning,
            reason,
            message,
        } => {
            let event = Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason,
                note: Some(message.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            // Events are best effort: a failure to record one never fails the build.
            if let Err(e) = ctx.recorder.publish(&event, &build.object_ref(&())).await {
                warn!(error = %e, "cannot record an event");
            }
        }
    }
    Ok(())
}

/// Whether the API server refused a create for good: Pod Security admission, a quota or
/// RBAC (403), a webhook's denial (400 or 403), validation (422).
fn refused(status: &kube::core::Status) -> bool {
    matches!(status.code, 400 | 403 | 422)
}

/// Creates that find the object there and deletes that find it gone are fine.
fn ignore(result: Result<(), kube::Error>, code: u16) -> Result<(), Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == code => Ok(()),
        other => other.map_err(Error::Api),
    }
}

fn record_metrics(metrics: &Metrics, before: &ImageBuildStatus, after: &ImageBuildStatus) {
    let started = |s: &ImageBuildStatus| s.observed_generation;
    if started(before) != started(after) {
        metrics.builds_started.inc();
    }
    let finished = |s: &ImageBuildStatus| matches!(s.phase, Some(Phase::Succeeded | Phase::Failed));
    if !finished(before) && finished(after) {
        let reason = after
            .failure
            .as_ref()
            .map_or("Succeeded".to_string(), |f| f.reason.clone());
        let result = format!("{:?}", after.phase.unwrap_or(Phase::Failed));
        metrics
            .builds_finished
            .get_or_create(&ResultLabels { result, reason })
            .inc();
        if let (Some(start), Some(end)) = (&after.start_time, &after.completion_time) {
            metrics
                .build_duration
                .observe((end.0.as_second() - start.0.as_second()) as f64);
        }
    }
    // The plan's stages appear once: count the stage cache's answers then.
    if before.stages.is_empty() {
        for stage in after.stages.iter().filter(|s| s.cache_key.is_some()) {
            let result = if stage.cached { "hit" } else { "miss" };
            metrics
                .stage_cache
                .get_or_create(&CacheLabels {
                    result: result.into(),
                })
                .inc();
        }
    }
    for stage in &after.stages {
        let was_done = before
            .stages
            .iter()
            .any(|s| s.name == stage.name && s.phase == StagePhase::Succeeded);
        if stage.phase == StagePhase::Succeeded
            && !was_done
            && let (Some(start), Some(end)) = (&stage.start_time, &stage.finish_time)
        {
            metrics
                .stage_duration
                .observe((end.0.as_second() - start.0.as_second()) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use stagecoach_plan::contract::{PlanSummary, PodOutcome, PodSummary};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn context() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let config = OperatorConfig {
            builder_image: "builder:1".into(),
            default_workspace_size: "1Gi".into(),
            default_storage_class: None,
            insecure_registries: Vec::new(),
            cache_repository: None,
            run_cache: None,
            build_platform: render::DEFAULT_BUILD_PLATFORM.into(),
            emulated_platforms: Vec::new(),
        };
        let ctx = Arc::new(Context::new(client, config, Arc::new(Metrics::default())));
        holding(&ctx, &[], false);
        (ctx, handle)
    }

    /// Gives the controller's watch caches `pods` and, with `claim`, the build's claim,
    /// as after their first LIST.
    fn holding(ctx: &Context, pods: &[serde_json::Value], claim: bool) {
        let (pod_store, mut pod_writer) = reflector::store::<Pod>();
        let (claim_store, mut claim_writer) = reflector::store::<PersistentVolumeClaim>();
        pod_writer.apply_watcher_event(&watcher::Event::Init);
        for pod in pods {
            let pod = serde_json::from_value(pod.clone()).expect("pod");
            pod_writer.apply_watcher_event(&watcher::Event::InitApply(pod));
        }
        pod_writer.apply_watcher_event(&watcher::Event::InitDone);
        claim_writer.apply_watcher_event(&watcher::Event::Init);
        if claim {
            let claim = serde_json::from_value(serde_json::json!({"apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "app-workspace", "namespace": "team"}}))
            .expect("claim");
            claim_writer.apply_watcher_event(&watcher::Event::InitApply(claim));
        }
        claim_writer.apply_watcher_event(&watcher::Event::InitDone);
        ctx.watching(Owned {
            pods: pod_store,
            claims: claim_store,
        });
    }

    fn build() -> ImageBuild {
        let mut b: ImageBuild = serde_json::from_value(serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "app", "namespace": "team", "uid": "u-1", "generation": 1},
            "spec": {
                "source": {"git": {"url": "https://git.example/app.git"}},
                "output": {"image": "registry.example/app:1"}
            }
        }))
        .expect("build");
        b.status = None;
        b
    }

    fn respond(json: serde_json::Value, status: u16) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&json).expect("json")))
            .expect("response")
    }

    async fn body_json(request: Request<Body>) -> serde_json::Value {
        let bytes = request.into_body().collect_bytes().await.expect("body");
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    fn not_found() -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }

    /// Plays the API server: checks each request in order and answers it.
    async fn expect(
        handle: &mut Handle,
        method: &str,
        path_start: &str,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method().as_str(), method, "{}", request.uri());
        assert!(
            request.uri().path().starts_with(path_start),
            "expected {method} {path_start}…, got {}",
            request.uri()
        );
        (request, send)
    }

    #[tokio::test]
    async fn new_build_creates_claim_and_source_pod_and_reports_cloning() {
        let (ctx, mut handle) = context();
        let server = tokio::spawn(async move {
            // The event of a new build, then the claim, then the source pod.
            let (_, send) = expect(
                &mut handle,
                "POST",
                "/apis/events.k8s.io/v1/namespaces/team/events",
            )
            .await;
            send.send_response(respond(serde_json::json!({}), 201));
            let (req, send) = expect(
                &mut handle,
                "POST",
                "/api/v1/namespaces/team/persistentvolumeclaims",
            )
            .await;
            let claim = body_json(req).await;
            assert_eq!(claim["metadata"]["ownerReferences"][0]["uid"], "u-1");
            send.send_response(respond(claim, 201));
            let (req, send) = expect(&mut handle, "POST", "/api/v1/namespaces/team/pods").await;
            let pod = body_json(req).await;
            assert_eq!(pod["metadata"]["name"], "app-source-g1");
            assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
            send.send_response(respond(pod, 201));
            let (req, send) = expect(
                &mut handle,
                "PATCH",
                "/apis/stagecoach.dev/v1alpha1/namespaces/team/imagebuilds/app/status",
            )
            .await;
            assert!(
                req.uri()
                    .query()
                    .unwrap_or_default()
                    .contains("fieldManager=stagecoach")
            );
            let patch = body_json(req).await;
            assert_eq!(patch["status"]["phase"], "Cloning");
            assert_eq!(patch["status"]["observedGeneration"], 1);
            let mut updated = serde_json::to_value(build()).expect("build");
            updated["status"] = patch["status"].clone();
            send.send_response(respond(updated, 200));
        });
        reconcile(Arc::new(build()), ctx.clone())
            .await
            .expect("reconcile");
        server.await.expect("server");
        assert!(
            ctx.metrics
                .encode()
                .contains("stagecoach_builds_started_total 1")
        );
    }

    #[tokio::test]
    async fn a_restarted_operator_creates_nothing_that_exists() {
        let (ctx, mut handle) = context();
        let mut b = build();
        b.status = Some(ImageBuildStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Cloning),
            start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            ..ImageBuildStatus::default()
        });
        let source = render::render_source_pod(&b, &ctx.config, 0);
        let mut running = serde_json::to_value(&source).expect("pod");
        running["status"] = serde_json::json!({"phase": "Running"});
        holding(&ctx, &[running], true);
        let server = tokio::spawn(async move {
            // Status unchanged except conditions: one status patch, no creates.
            if let Some((request, send)) = handle.next_request().await {
                assert_eq!(
                    request.method().as_str(),
                    "PATCH",
                    "nothing may be created: {}",
                    request.uri()
                );
                send.send_response(respond(serde_json::to_value(build()).expect("build"), 200));
            }
        });
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        server
            .await
            .expect("the API server saw only allowed requests");
    }

    /// A request the fake API server answered: method, path with query, body.
    #[derive(Debug)]
    struct Seen {
        method: String,
        uri: String,
        body: serde_json::Value,
    }

    /// Plays an API server that holds `pods` and the build's claim: answers whatever the
    /// reconcile asks, in any order, and returns every request once the client is gone.
    fn api_server(
        ctx: &Context,
        handle: Handle,
        pods: Vec<serde_json::Value>,
        log: &'static str,
    ) -> tokio::task::JoinHandle<Vec<Seen>> {
        api_server_with_events(ctx, handle, pods, log, Vec::new())
    }

    /// [`api_server`] whose admission refuses every pod create with `code` and `message`,
    /// as Pod Security admission (403), a quota (403) or a webhook does.
    fn api_server_refusing_pods(
        handle: Handle,
        code: u16,
        message: &'static str,
    ) -> tokio::task::JoinHandle<Vec<Seen>> {
        serve(handle, "", Vec::new(), Some((code, message)))
    }

    /// [`api_server`], answering event lists with `events`.
    fn api_server_with_events(
        ctx: &Context,
        handle: Handle,
        pods: Vec<serde_json::Value>,
        log: &'static str,
        events: Vec<serde_json::Value>,
    ) -> tokio::task::JoinHandle<Vec<Seen>> {
        holding(ctx, &pods, true);
        serve(handle, log, events, None)
    }

    /// The mocked API server: event lists answer with `events`, logs with `log`, status
    /// patches with the build at a new resourceVersion, creates with what was sent (or
    /// the refusal), deletes with success. Pods and claims come from the watch caches
    /// ([`holding`]): a reconcile that asks for them gets a 500.
    fn serve(
        mut handle: Handle,
        log: &'static str,
        events: Vec<serde_json::Value>,
        refuse_pods: Option<(u16, &'static str)>,
    ) -> tokio::task::JoinHandle<Vec<Seen>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let path = request.uri().path().to_string();
                let body = body_json(request).await;
                let response = match method.as_str() {
                    "GET" if path.ends_with("/log") => Response::builder()
                        .status(200)
                        .body(Body::from(log.as_bytes().to_vec()))
                        .expect("response"),
                    "GET" if path.ends_with("/events") => respond(
                        serde_json::json!({"kind": "EventList", "apiVersion": "events.k8s.io/v1", "metadata": {}, "items": events}),
                        200,
                    ),
                    "GET" => respond(
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "read from the watch caches", "code": 500}),
                        500,
                    ),
                    "PATCH" => {
                        let mut updated = serde_json::to_value(build()).expect("build");
                        updated["status"] = body["status"].clone();
                        updated["metadata"]["resourceVersion"] =
                            (100 + seen.len()).to_string().into();
                        respond(updated, 200)
                    }
                    "POST" if path.ends_with("/pods") && refuse_pods.is_some() => {
                        let (code, message) = refuse_pods.expect("refusing");
                        respond(
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": message, "reason": "Forbidden", "code": code}),
                            code,
                        )
                    }
                    "DELETE" => respond(
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                        200,
                    ),
                    _ => respond(body.clone(), 201),
                };
                seen.push(Seen { method, uri, body });
                send.send_response(response);
            }
            seen
        })
    }

    /// A rendered pod as the API server shows it: its phase and, once it ended, its
    /// container's termination message.
    fn pod_in(pod: &Pod, phase: &str, outcome: Option<&PodOutcome>) -> serde_json::Value {
        let mut value = serde_json::to_value(pod).expect("pod");
        let container = value["spec"]["containers"][0]["name"].clone();
        let state = match outcome {
            Some(o) => serde_json::json!({"terminated": {
                "exitCode": if o.succeeded { 0 } else { 1 },
                "message": o.to_message().expect("fits"),
            }}),
            None => serde_json::json!({"running": {}}),
        };
        value["status"] = serde_json::json!({"phase": phase, "containerStatuses": [{
            "name": container, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": state,
        }]});
        value
    }

    /// Two independent stages and a final one that copies from both.
    fn planned() -> PodOutcome {
        let pod = |id: &str, waits: &[&str]| PodSummary {
            id: id.into(),
            stages: vec![id.into()],
            image: Some("registry.example/busybox@sha256:1".into()),
            waits_for: waits.iter().map(|s| s.to_string()).collect(),
            cache: None,
            secrets: Vec::new(),
            run_cache: false,
            ssh: Vec::new(),
            platform: None,
            runs_on: None,
        };
        PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("c".repeat(40)),
                commit_time: Some(1_700_000_000),
                target: "final".into(),
                pods: vec![pod("a", &[]), pod("b", &[]), pod("final", &["a", "b"])],
                warnings: Vec::new(),
            }),
            ..PodOutcome::default()
        }
    }

    /// The build as the operator's first decision left it: Pending, its source pod made.
    fn started(ctx: &Context) -> ImageBuild {
        let mut b = build();
        let first = core::decide(
            &Observed {
                build: &b,
                pods: &[],
                claim_exists: false,
                now: Timestamp::now(),
            },
            &ctx.config,
        );
        b.status = Some(first.status);
        b
    }

    /// The build as the operator left it after the source pod: Building, with its stages.
    fn building(ctx: &Context) -> (ImageBuild, serde_json::Value) {
        let mut b = started(ctx);
        let source = pod_in(
            &render::render_source_pod(&b, &ctx.config, 0),
            "Succeeded",
            Some(&planned()),
        );
        let observed: Vec<_> = [&source]
            .into_iter()
            .filter_map(|p| observe_pod(&serde_json::from_value(p.clone()).expect("pod"), &[]))
            .collect();
        let next = core::decide(
            &Observed {
                build: &b,
                pods: &observed,
                claim_exists: true,
                now: Timestamp::now(),
            },
            &ctx.config,
        );
        b.status = Some(next.status);
        assert_eq!(
            b.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Building)
        );
        (b, source)
    }

    fn stage_pod(ctx: &Context, b: &ImageBuild, stage: &str) -> Pod {
        let summary = planned().summary.expect("summary");
        let pod = summary.pods.iter().find(|p| p.id == stage).expect("stage");
        render::render_stage_pod(b, &ctx.config, pod, Some(1_700_000_000), 0)
    }

    fn created_pods(seen: &[Seen]) -> Vec<String> {
        seen.iter()
            .filter(|r| r.method == "POST" && r.uri.starts_with("/api/v1/namespaces/team/pods"))
            .map(|r| {
                r.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    fn status_patch(seen: &[Seen]) -> &serde_json::Value {
        &seen
            .iter()
            .find(|r| r.method == "PATCH" && r.uri.contains("/imagebuilds/app/status"))
            .expect("a status patch")
            .body["status"]
    }

    /// A reconcile on the reflector's copy from before our own status patch (a pod event
    /// can trigger one before the watch shows the patch) repeats no transition: one
    /// BuildStarted, one count, no second patch resetting startTime.
    #[tokio::test]
    async fn a_stale_read_of_our_own_status_repeats_no_transition() {
        let (ctx, handle) = context();
        let server = api_server(&ctx, handle, Vec::new(), "");
        let stale = Arc::new(build());
        reconcile(stale.clone(), ctx.clone()).await.expect("first");
        reconcile(stale, ctx.clone())
            .await
            .expect("on the stale copy");
        let metrics = Arc::clone(&ctx.metrics);
        drop(ctx);
        let seen = server.await.expect("server");
        let started = seen
            .iter()
            .filter(|r| r.method == "POST" && r.body["reason"] == "BuildStarted")
            .count();
        assert_eq!(started, 1, "one BuildStarted event");
        let patches = seen
            .iter()
            .filter(|r| r.method == "PATCH" && r.uri.contains("/status"))
            .count();
        assert_eq!(patches, 1, "the second decision changes nothing");
        let text = metrics.encode();
        assert!(
            text.contains("stagecoach_builds_started_total 1\n"),
            "{text}"
        );
    }

    /// Our own create not yet in the pod watch (the build's watch can deliver our status
    /// patch first): the reconcile waits for the watch instead of deciding the pod is
    /// missing and creating it again; once the watch shows it, it goes on.
    #[tokio::test]
    async fn a_pod_the_watch_has_not_shown_yet_is_not_created_again() {
        let (ctx, handle) = context();
        let server = api_server(&ctx, handle, Vec::new(), "");
        holding(&ctx, &[], false);
        let b = Arc::new(build());
        reconcile(b.clone(), ctx.clone()).await.expect("first");
        let again = reconcile(b.clone(), ctx.clone()).await.expect("second");
        assert_eq!(again, Requeue::requeue(WATCH_RETRY));
        let source = render::render_source_pod(&started(&ctx), &ctx.config, 0);
        holding(&ctx, &[pod_in(&source, "Pending", None)], true);
        let caught_up = reconcile(b, ctx.clone()).await.expect("third");
        assert_ne!(caught_up, Requeue::requeue(WATCH_RETRY));
        drop(ctx);
        let seen = server.await.expect("server");
        assert_eq!(created_pods(&seen), ["app-source-g1"], "created once");
    }

    /// Reconciles read pods and claims from the controller's watches: over minutes of
    /// rechecks the API server sees one LIST of each (the watch's), and no GET.
    #[tokio::test(start_paused = true)]
    async fn reconciles_read_pods_and_claims_from_the_watches() {
        let (ctx, handle) = context();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = cluster(handle, Arc::new(std::sync::Mutex::new(None)), seen.clone());
        let (stop, shutdown) = watch::channel(false);
        let leading = AtomicBool::new(false);
        let running = run(ctx.clone(), None, 2, None, &leading, shutdown);
        let test = async {
            until("the build's source pod", || {
                count(&seen, "POST", "/namespaces/team/pods") > 0
            })
            .await;
            // Three in-progress rechecks.
            tokio::time::sleep(IN_PROGRESS_RECHECK * 3 + Duration::from_secs(1)).await;
            stop.send(true).expect("stop");
        };
        let (result, ()) = tokio::join!(running, test);
        result.expect("run");
        drop(ctx);
        server.await.expect("server");
        assert_eq!(count(&seen, "GET", "/api/v1/pods"), 1, "the watch's LIST");
        assert_eq!(count(&seen, "GET", "/api/v1/persistentvolumeclaims"), 1);
        let reads = seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|r| r.method == "GET" && r.uri.contains("/namespaces/team/"))
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>();
        assert_eq!(reads, Vec::<String>::new(), "no per-build reads");
    }

    /// Admission refusing a pod (Pod Security here; a quota or a webhook alike) fails the
    /// build at once with the API's words, instead of a retry that shows the old phase
    /// forever.
    #[tokio::test]
    async fn a_pod_the_api_server_refuses_fails_the_build_with_its_words() {
        let (ctx, handle) = context();
        let refusal = "pods \"app-source-g1\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
        let server = api_server_refusing_pods(handle, 403, refusal);
        reconcile(Arc::new(build()), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["failure"]["reason"], "PodRejected");
        let message = status["failure"]["message"].as_str().expect("message");
        assert!(
            message.contains("refused to create pod app-source")
                && message.contains("violates PodSecurity"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn failing_reconciles_back_off_exponentially_and_start_over_after_a_success() {
        let (ctx, _server) = context();
        let b = build();
        let waits: Vec<u64> = (0..10).map(|_| ctx.backoff(&b).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        ctx.reconciled(&b);
        assert_eq!(ctx.backoff(&b).as_secs(), 1);
    }

    /// `spec.cancel` on a running build, against the API server: its running pod is
    /// deleted, nothing is created, the status says Failed with reason Canceled.
    #[tokio::test]
    async fn cancel_deletes_the_running_pods_and_fails_the_build() {
        let (ctx, handle) = context();
        let (mut b, source) = building(&ctx);
        let running = pod_in(&stage_pod(&ctx, &b, "a"), "Running", None);
        let running_name = stage_pod(&ctx, &b, "a").metadata.name.expect("name");
        b.spec.cancel = true;
        b.metadata.generation = Some(2);
        let server = api_server(&ctx, handle, vec![source, running], "");
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let deleted: Vec<&str> = seen
            .iter()
            .filter(|r| r.method == "DELETE" && r.uri.contains("/pods/"))
            .map(|r| r.uri.as_str())
            .collect();
        assert!(
            deleted.len() == 1 && deleted[0].contains(&running_name),
            "{deleted:?}"
        );
        assert!(created_pods(&seen).is_empty());
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["failure"]["reason"], "Canceled");
        assert_eq!(status["observedGeneration"], 2);
    }

    /// One decision of the operator on `pods` (the cluster's copy, as JSON): the build's
    /// new status, and the pods it created, as the cluster then holds them (pending).
    fn advance(ctx: &Context, b: &mut ImageBuild, pods: &[serde_json::Value]) -> Vec<Pod> {
        let stages = ["a", "b", "final"].map(String::from);
        let observed: Vec<_> = pods
            .iter()
            .filter_map(|p| observe_pod(&serde_json::from_value(p.clone()).expect("pod"), &stages))
            .collect();
        let decision = core::decide(
            &Observed {
                build: b,
                pods: &observed,
                claim_exists: true,
                now: Timestamp::now(),
            },
            &ctx.config,
        );
        b.status = Some(decision.status);
        decision
            .actions
            .into_iter()
            .filter_map(|a| match a {
                Action::CreatePod(pod) => Some(*pod),
                _ => None,
            })
            .collect()
    }

    /// A new operator process (empty memory, its watches just listed) taking over in the
    /// middle of each phase: it creates no pod, re-runs no stage, and the status it
    /// writes keeps every stage's pod, attempts and start time and the build's phase.
    #[tokio::test]
    async fn an_operator_restarted_in_any_phase_creates_nothing_and_keeps_the_status() {
        let (first, _) = context();
        let mut b = build();
        let done = |pod: &Pod| {
            let succeeded = PodOutcome {
                succeeded: true,
                ..PodOutcome::default()
            };
            pod_in(pod, "Succeeded", Some(&succeeded))
        };
        // Each phase: the build as the last operator left it, and the cluster's pods.
        let mut phases: Vec<(Phase, ImageBuild, Vec<serde_json::Value>)> = Vec::new();
        let source = advance(&first, &mut b, &[]).remove(0);
        phases.push((
            Phase::Cloning,
            b.clone(),
            vec![pod_in(&source, "Running", None)],
        ));
        let source = pod_in(&source, "Succeeded", Some(&planned()));
        let wave = advance(&first, &mut b, std::slice::from_ref(&source));
        let (a, b_pod) = (&wave[0], &wave[1]);
        // Stage b done, stage a still running: the final stage must keep waiting.
        let cluster = vec![source.clone(), pod_in(a, "Running", None), done(b_pod)];
        phases.push((Phase::Building, b.clone(), cluster));
        let finished = vec![source.clone(), done(a), done(b_pod)];
        let last = advance(&first, &mut b, &finished).remove(0);
        let mut all = finished.clone();
        all.push(done(&last));
        let assemble = advance(&first, &mut b, &all).remove(0);
        all.push(pod_in(&assemble, "Running", None));
        phases.push((Phase::Pushing, b.clone(), all));

        let mut patched = Vec::new();
        for (phase, build, pods) in phases {
            // As the API server stored it (times in whole seconds).
            let build: ImageBuild =
                serde_json::from_value(serde_json::to_value(&build).expect("json")).expect("build");
            assert_eq!(build.status.as_ref().and_then(|s| s.phase), Some(phase));
            let (ctx, handle) = context();
            holding(&ctx, &pods, true);
            let server = api_server(&ctx, handle, pods, "");
            let before = build.status.clone().expect("status");
            reconcile(Arc::new(build), ctx).await.expect("reconcile");
            let seen = server.await.expect("server");
            assert_eq!(created_pods(&seen), Vec::<String>::new(), "{phase:?}");
            let Some(patch) = seen
                .iter()
                .find(|r| r.method == "PATCH" && r.uri.contains("/imagebuilds/app/status"))
            else {
                continue;
            };
            let after: ImageBuildStatus =
                serde_json::from_value(patch.body["status"].clone()).expect("status");
            patched.push(phase);
            assert_eq!(after.phase, Some(phase));
            assert_eq!(after.start_time, before.start_time, "{phase:?}");
            assert_eq!(after.stages.len(), before.stages.len(), "{phase:?}");
            for (was, now) in before.stages.iter().zip(&after.stages) {
                let kept =
                    |s: &crate::api::StageStatus| (s.pod.clone(), s.attempts, s.start_time.clone());
                assert_eq!(kept(now), kept(was), "{phase:?} stage {}", was.name);
                // A phase may only move on, with what the pods show (b finished).
                let moved_on = now.phase == was.phase
                    || (was.phase == StagePhase::Running && now.phase == StagePhase::Succeeded);
                assert!(
                    moved_on,
                    "{phase:?} stage {}: {:?} -> {:?}",
                    was.name, was.phase, now.phase
                );
            }
        }
        assert!(
            patched.contains(&Phase::Building),
            "stage b's end is written"
        );
    }

    #[tokio::test]
    async fn a_finished_source_pod_starts_the_first_wave() {
        let (ctx, handle) = context();
        let b = started(&ctx);
        let source = pod_in(
            &render::render_source_pod(&b, &ctx.config, 0),
            "Succeeded",
            Some(&planned()),
        );
        let server = api_server(&ctx, handle, vec![source], "");
        let names: Vec<String> = ["a", "b"]
            .iter()
            .map(|s| stage_pod(&ctx, &b, s).metadata.name.expect("name"))
            .collect();
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        // Both independent stages at once; the final one waits for them.
        assert_eq!(created_pods(&seen), names);
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Building");
        assert_eq!(status["source"]["commit"], "c".repeat(40));
        assert_eq!(status["stages"][2]["name"], "final");
        assert_eq!(status["stages"][2]["phase"], "Waiting");
        let ready = &status["conditions"][0];
        assert_eq!(
            (&ready["type"], &ready["status"]),
            (&"Ready".into(), &"False".into())
        );
    }

    /// A plan for linux/amd64 and linux/arm64: a pod both share, and a pod per platform
    /// on that platform's image.
    fn planned_for_two_platforms() -> PodOutcome {
        let pod = |id: &str, platform: Option<&str>, runs_on: &str, waits: &[&str]| PodSummary {
            id: id.into(),
            stages: vec![id.split('@').next().unwrap_or(id).into()],
            image: Some(format!("registry.example/busybox@sha256:{}", runs_on.len())),
            waits_for: waits.iter().map(|s| s.to_string()).collect(),
            cache: None,
            secrets: Vec::new(),
            run_cache: false,
            ssh: Vec::new(),
            platform: platform.map(str::to_string),
            runs_on: Some(runs_on.into()),
        };
        let (amd, arm) = ("linux/amd64", "linux/arm64");
        PodOutcome {
            succeeded: true,
            summary: Some(PlanSummary {
                commit: Some("c".repeat(40)),
                commit_time: Some(1_700_000_000),
                target: "final".into(),
                pods: vec![
                    pod("assets", None, amd, &[]),
                    pod("final@linux/amd64", Some(amd), amd, &["assets"]),
                    pod("final@linux/arm64", Some(arm), arm, &["assets"]),
                ],
                warnings: Vec::new(),
            }),
            ..PodOutcome::default()
        }
    }

    /// A build for two platforms on ReadWriteMany storage: its pods go to nodes of their
    /// platform, each platform's pod in its part of the workspace, and the status says
    /// which platform each stage pod is for; the pushed index and each platform's image
    /// end in `status.image`.
    #[tokio::test]
    async fn a_two_platform_build_places_pods_by_platform_and_reports_the_index() {
        let (ctx, handle) = context();
        let config = ctx.config.clone();
        let mut b = build();
        b.spec.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        b.spec.workspace = Some(crate::api::WorkspaceSpec {
            access_modes: vec!["ReadWriteMany".into()],
            storage_class_name: None,
            size: None,
        });
        let decide = |b: &ImageBuild, pods: &[serde_json::Value]| {
            core::decide(
                &Observed {
                    build: b,
                    pods: &pods
                        .iter()
                        .filter_map(|p| observed(b, p))
                        .collect::<Vec<_>>(),
                    claim_exists: true,
                    now: Timestamp::now(),
                },
                &config,
            )
        };
        b.status = Some(decide(&b, &[]).status);
        let plan = planned_for_two_platforms();
        let mut pods = vec![pod_in(
            &render::render_source_pod(&b, &config, 0),
            "Succeeded",
            Some(&plan),
        )];
        let server = api_server(&ctx, handle, pods.clone(), "");
        reconcile(Arc::new(b.clone()), ctx)
            .await
            .expect("reconcile");
        let seen = server.await.expect("server");
        let created: Vec<&serde_json::Value> = seen
            .iter()
            .filter(|r| r.method == "POST" && r.uri.starts_with("/api/v1/namespaces/team/pods"))
            .map(|r| &r.body)
            .collect();
        assert_eq!(created.len(), 1, "only the shared pod is ready to start");
        assert_eq!(
            created[0]["spec"]["nodeSelector"]["kubernetes.io/arch"],
            "amd64"
        );
        let status = status_patch(&seen);
        assert_eq!(status["stages"][2]["name"], "final@linux/arm64");
        assert_eq!(status["stages"][2]["platform"], "linux/arm64");
        assert_eq!(status["stages"][2]["runsOn"], "linux/arm64");
        assert!(status["stages"][0].get("platform").is_none());

        // The shared pod done, both platforms' pods start, each on its platform's node.
        b.status = Some(decide(&b, &pods).status);
        let summary = plan.summary.clone().expect("summary");
        let spec_only = b.clone();
        let stage = |id: &str| {
            let pod = summary.pods.iter().find(|p| p.id == id).expect("pod");
            render::render_stage_pod(&spec_only, &config, pod, Some(1_700_000_000), 0)
        };
        pods.push(pod_in(
            &stage("assets"),
            "Succeeded",
            Some(&PodOutcome {
                succeeded: true,
                ..PodOutcome::default()
            }),
        ));
        let next = decide(&b, &pods);
        let archs: Vec<String> = next
            .actions
            .iter()
            .filter_map(|a| match a {
                core::Action::CreatePod(p) => p
                    .spec
                    .as_ref()?
                    .node_selector
                    .as_ref()?
                    .get("kubernetes.io/arch")
                    .cloned(),
                _ => None,
            })
            .collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        b.status = Some(next.status);
        for id in ["final@linux/amd64", "final@linux/arm64"] {
            pods.push(pod_in(
                &stage(id),
                "Succeeded",
                Some(&PodOutcome {
                    succeeded: true,
                    ..PodOutcome::default()
                }),
            ));
        }
        b.status = Some(decide(&b, &pods).status);
        let index = format!("sha256:{}", "e".repeat(64));
        let pushed = PodOutcome {
            succeeded: true,
            image: Some(format!("registry.example/app:1@{index}")),
            platforms: ["linux/amd64", "linux/arm64"]
                .iter()
                .zip(["a", "b"])
                .map(|(p, d)| stagecoach_plan::contract::PlatformImage {
                    platform: p.to_string(),
                    digest: format!("sha256:{}", d.repeat(64)),
                })
                .collect(),
            ..PodOutcome::default()
        };
        let commit = "c".repeat(40);
        let assemble =
            render::render_assemble_pod(&b, &config, Some(&commit), Some(1_700_000_000), 0);
        pods.push(pod_in(&assemble, "Succeeded", Some(&pushed)));

        let (ctx, handle) = context();
        let server = api_server(&ctx, handle, pods, "");
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["image"]["digest"], index);
        assert_eq!(status["image"]["platforms"][1]["platform"], "linux/arm64");
        assert_eq!(
            status["image"]["platforms"][1]["digest"],
            format!("sha256:{}", "b".repeat(64))
        );
    }

    #[tokio::test]
    async fn stages_found_in_the_cache_get_no_pod_and_their_status_says_cached() {
        let (ctx, handle) = context();
        let b = started(&ctx);
        let mut plan = planned();
        for pod in &mut plan.summary.as_mut().expect("summary").pods {
            pod.cache = Some(stagecoach_plan::contract::StageCache {
                key: Some(format!("{:0>64}", pod.id)),
                hit: pod.id == "a",
                uncacheable: None,
            });
        }
        let source = pod_in(
            &render::render_source_pod(&b, &ctx.config, 0),
            "Succeeded",
            Some(&plan),
        );
        let server = api_server(&ctx, handle, vec![source], "");
        let b_pod = stage_pod(&ctx, &b, "b").metadata.name.expect("name");
        let metrics = Arc::clone(&ctx.metrics);
        // The mocked server stops once the last client (in ctx) is gone.
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        assert_eq!(created_pods(&seen), [b_pod], "a came from the cache");
        let status = status_patch(&seen);
        assert_eq!(status["stages"][0]["phase"], "Succeeded");
        assert_eq!(status["stages"][0]["cached"], true);
        assert_eq!(status["stages"][0]["cacheKey"], format!("{:0>64}", "a"));
        assert!(
            status["stages"][0].get("pod").is_none(),
            "{}",
            status["stages"][0]
        );
        assert!(status["stages"][1].get("cached").is_none());
        let hits = metrics.encode();
        assert!(
            hits.contains("stagecoach_stage_cache_lookups_total{result=\"hit\"} 1"),
            "{hits}"
        );
    }

    #[tokio::test]
    async fn a_failed_stage_fails_the_build_with_its_log_tail() {
        let (ctx, handle) = context();
        let (b, source) = building(&ctx);
        let failed = PodOutcome {
            succeeded: false,
            reason: Some("StageFailed".into()),
            message: Some("stage a: Dockerfile:3: RUN make: exit code 2".into()),
            stage: Some("a".into()),
            line: Some(3),
            ..PodOutcome::default()
        };
        let a = stage_pod(&ctx, &b, "a");
        let a_name = a.metadata.name.clone().expect("name");
        let pods = vec![
            source,
            pod_in(&a, "Failed", Some(&failed)),
            pod_in(&stage_pod(&ctx, &b, "b"), "Running", None),
        ];
        let server = api_server(
            &ctx,
            handle,
            pods,
            "[a 2/2] RUN make\nmake: *** [all] Error 2\n",
        );
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let log = seen
            .iter()
            .find(|r| r.uri.contains("/log"))
            .expect("the failed pod's log is read");
        assert!(
            log.uri
                .starts_with(&format!("/api/v1/namespaces/team/pods/{a_name}/log"))
        );
        assert!(log.uri.contains("container=stage") && log.uri.contains("tailLines=20"));
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["failure"]["reason"], "StageFailed");
        assert_eq!(status["failure"]["line"], 3);
        assert_eq!(status["failure"]["pod"], a_name.as_str());
        assert_eq!(
            status["failure"]["logTail"],
            serde_json::json!(["[a 2/2] RUN make", "make: *** [all] Error 2"])
        );
        let ready = &status["conditions"][0];
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "StageFailed");
        assert!(
            created_pods(&seen).is_empty(),
            "nothing starts after a failure"
        );
    }

    /// A stage pod as the API server shows it while its main container cannot start: the
    /// install init container done, the kubelet's waiting reason and message.
    fn pod_waiting(pod: &Pod, reason: &str, message: &str) -> serde_json::Value {
        let mut value = serde_json::to_value(pod).expect("pod");
        let status = |name: &str, state: serde_json::Value| {
            serde_json::json!({"name": name, "ready": false, "restartCount": 0, "image": "i",
                "imageID": "", "started": false, "state": state})
        };
        value["status"] = serde_json::json!({
            "phase": "Pending",
            "startTime": "2025-01-01T10:00:00Z",
            "initContainerStatuses": [status("install", serde_json::json!(
                {"terminated": {"exitCode": 0, "reason": "Completed"}}))],
            "containerStatuses": [status("stage", serde_json::json!(
                {"waiting": {"reason": reason, "message": message}}))],
        });
        value
    }

    /// The status the operator wrote `seconds` ago (it, or the one before a restart) from
    /// what it saw then: the memory a later reconcile starts from.
    fn decided_ago(
        ctx: &Context,
        b: &ImageBuild,
        observed: &[core::ObservedPod],
        seconds: i64,
    ) -> crate::api::ImageBuildStatus {
        let earlier = Timestamp::from_second(Timestamp::now().as_second() - seconds).expect("time");
        let before = core::decide(
            &Observed {
                build: b,
                pods: observed,
                claim_exists: true,
                now: earlier,
            },
            &ctx.config,
        );
        assert_eq!(before.status.phase, Some(Phase::Building));
        before.status
    }

    /// A build pod's JSON as observed, with the build's stage names.
    fn observed(b: &ImageBuild, pod: &serde_json::Value) -> Option<core::ObservedPod> {
        let stages: Vec<String> = b
            .status
            .iter()
            .flat_map(|s| s.stages.iter().map(|st| st.name.clone()))
            .collect();
        observe_pod(&serde_json::from_value(pod.clone()).expect("pod"), &stages)
    }

    /// A volume the kubelet cannot mount shows only in the pod's `FailedMount` events: a
    /// pod held there past the grace period fails the build with the event's words.
    #[tokio::test]
    async fn a_pod_held_by_a_failed_mount_past_the_grace_period_fails_the_build() {
        let (ctx, handle) = context();
        let (mut b, source) = building(&ctx);
        let a = stage_pod(&ctx, &b, "a");
        let mut creating = pod_waiting(&a, "ContainerCreating", "");
        creating["metadata"]["uid"] = "uid-a".into();
        creating["spec"]["nodeName"] = "node-1".into();
        creating["status"]["initContainerStatuses"] = serde_json::json!([{"name": "install",
            "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "PodInitializing"}}}]);
        let note = "MountVolume.SetUp failed for volume \"git\" : secret \"git-creds\" not found";
        let event = |name: &str, reason: &str, at: &str, note: &str| {
            serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": name, "namespace": "team"}, "eventTime": at,
                "reason": reason, "note": note, "type": "Normal",
                "regarding": {"kind": "Pod", "uid": "uid-a"}})
        };
        let events = vec![
            event("e2", "FailedMount", "2025-01-01T10:00:05.000000Z", note),
            event(
                "e1",
                "Scheduled",
                "2025-01-01T10:00:00.000000Z",
                "assigned to node-1",
            ),
        ];
        // What an operator saw 100 s ago, written down in the status.
        let held = observed(&b, &creating).map(|p| observe::with_mount_failure(p, note));
        let seen_then: Vec<_> = observed(&b, &source).into_iter().chain(held).collect();
        b.status = Some(decided_ago(&ctx, &b, &seen_then, 100));
        let server = api_server_with_events(&ctx, handle, vec![source, creating], "", events);
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        assert!(
            seen.iter()
                .any(|r| r.uri.contains("/events?") && r.uri.contains("regarding.uid%3Duid-a")),
            "the pod's own events are read, by uid: {:?}",
            seen.iter().map(|r| &r.uri).collect::<Vec<_>>()
        );
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["failure"]["reason"], "SecretNotFound");
        let message = status["failure"]["message"].as_str().expect("message");
        assert!(message.contains("Secret \"git-creds\""), "{message}");
    }

    #[tokio::test]
    async fn a_pod_that_cannot_pull_past_the_grace_period_fails_the_build() {
        let (ctx, handle) = context();
        let (mut b, source) = building(&ctx);
        let a = stage_pod(&ctx, &b, "a");
        let a_name = a.metadata.name.clone().expect("name");
        let image = "registry.example/busybox@sha256:1";
        let pull_error = pod_waiting(
            &a,
            "ErrImagePull",
            &format!("failed to pull and unpack image \"{image}\": 401 Unauthorized"),
        );
        // What the operator saw 100 s ago (it, or the one before a restart, wrote it down
        // in the status): the first failed pull.
        let seen_then: Vec<_> = [&source, &pull_error]
            .into_iter()
            .filter_map(|p| observed(&b, p))
            .collect();
        b.status = Some(decided_ago(&ctx, &b, &seen_then, 100));
        let b: ImageBuild =
            serde_json::from_value(serde_json::to_value(&b).expect("json")).expect("build");
        // Now it backs off, and b runs.
        let pods = vec![
            source,
            pod_waiting(
                &a,
                "ImagePullBackOff",
                &format!("Back-off pulling image \"{image}\""),
            ),
            pod_in(&stage_pod(&ctx, &b, "b"), "Running", None),
        ];
        let server = api_server(&ctx, handle, pods, "");
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let status = status_patch(&seen);
        assert_eq!(status["phase"], "Failed");
        let failure = &status["failure"];
        assert_eq!(failure["reason"], "ImagePullFailed");
        assert_eq!(failure["stage"], "a");
        assert_eq!(failure["pod"], a_name.as_str());
        let message = failure["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!(
                "stage a: container \"stage\" of pod {a_name} could not pull image \"{image}\" for 10"
            )) && message.contains("401 Unauthorized")
                && message.contains("spec.imagePullSecrets"),
            "{message}"
        );
        let conditions = status["conditions"].as_array().expect("conditions");
        let ready = conditions
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&"False".into(), &"ImagePullFailed".into())
        );
        assert!(
            !conditions.iter().any(|c| c["type"] == core::START_BLOCKED),
            "{conditions:?}"
        );
        let mut deleted: Vec<&str> = seen
            .iter()
            .filter(|r| r.method == "DELETE")
            .filter_map(|r| r.uri.split('?').next()?.rsplit('/').next())
            .collect();
        deleted.sort();
        assert_eq!(deleted, [a_name.as_str(), "app-stage-b-g1"]);
        assert!(
            !seen.iter().any(|r| r.uri.contains("/log")),
            "a pod that never ran has no log to read"
        );
        assert!(created_pods(&seen).is_empty());
    }

    #[tokio::test]
    async fn a_pod_deleted_mid_build_is_recreated() {
        let (ctx, handle) = context();
        let (b, source) = building(&ctx);
        // Stage b's pod was deleted (by a person, or with its node): only a is there.
        let pods = vec![source, pod_in(&stage_pod(&ctx, &b, "a"), "Running", None)];
        let server = api_server(&ctx, handle, pods, "");
        reconcile(Arc::new(b), ctx).await.expect("reconcile");
        let seen = server.await.expect("server");
        let created = created_pods(&seen);
        assert_eq!(created.len(), 1, "{created:?}");
        let recreated = seen
            .iter()
            .find(|r| r.method == "POST" && r.uri.starts_with("/api/v1/namespaces/team/pods"))
            .expect("a pod");
        assert_eq!(
            recreated.body["metadata"]["labels"][render::LABEL_STAGE],
            "b"
        );
        assert_eq!(status_patch(&seen)["phase"], "Building");
    }

    /// The Lease of the leader-election tests, held by `holder` (None: released) and
    /// renewed now by the wall clock, which paused tokio time does not move.
    fn lease(holder: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "stagecoach", "namespace": "system", "resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now())}
        })
    }

    type Shared<T> = Arc<std::sync::Mutex<T>>;

    /// A played cluster ([`cluster`]) whose Lease another replica holds.
    struct Contested {
        lease: Shared<Option<serde_json::Value>>,
        seen: Shared<Vec<Seen>>,
        server: tokio::task::JoinHandle<()>,
    }

    fn held_by_another(handle: Handle) -> Contested {
        let lease = Arc::new(std::sync::Mutex::new(Some(lease(Some("other")))));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = cluster(handle, lease.clone(), seen.clone());
        Contested {
            lease,
            seen,
            server,
        }
    }

    /// Plays a whole cluster for `run`: the Lease in `lease` (which the test may change
    /// meanwhile), one new ImageBuild, no pods or claims, watches that stay open; records
    /// every request in `seen` until the client is gone.
    fn cluster(
        mut handle: Handle,
        lease: Shared<Option<serde_json::Value>>,
        seen: Shared<Vec<Seen>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut watches = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let path = request.uri().path().to_string();
                let body = body_json(request).await;
                seen.lock().expect("seen").push(Seen {
                    method: method.clone(),
                    uri: uri.clone(),
                    body: body.clone(),
                });
                let list = |items: Vec<serde_json::Value>| {
                    respond(
                        serde_json::json!({"apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": "1"}, "items": items}),
                        200,
                    )
                };
                let response = match method.as_str() {
                    _ if path.contains("/leases") => {
                        let mut lease = lease.lock().expect("lease");
                        match method.as_str() {
                            "GET" => match lease.clone() {
                                Some(l) => respond(l, 200),
                                None => respond(not_found(), 404),
                            },
                            _ => {
                                *lease = Some(body.clone());
                                respond(body, if method == "POST" { 201 } else { 200 })
                            }
                        }
                    }
                    "GET" if uri.contains("watch=true") => {
                        watches.push(send);
                        continue;
                    }
                    "GET" if path.ends_with("/imagebuilds") => {
                        list(vec![serde_json::to_value(build()).expect("build")])
                    }
                    "GET"
                        if path.ends_with("/pods") || path.ends_with("/persistentvolumeclaims") =>
                    {
                        list(vec![])
                    }
                    "GET" => respond(not_found(), 404),
                    "PATCH" => {
                        let mut updated = serde_json::to_value(build()).expect("build");
                        updated["status"] = body["status"].clone();
                        respond(updated, 200)
                    }
                    _ => respond(body, 201),
                };
                send.send_response(response);
            }
        })
    }

    fn elector(ctx: &Context) -> Elector {
        Elector {
            api: Api::namespaced(ctx.client.clone(), "system"),
            lease: "stagecoach".into(),
            identity: "me".into(),
            duration: crate::leader::LEASE_DURATION,
        }
    }

    /// Waits (in paused time) until `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never: {what}");
    }

    fn count(seen: &Shared<Vec<Seen>>, method: &str, path_end: &str) -> usize {
        seen.lock()
            .expect("seen")
            .iter()
            .filter(|r| {
                let (path, query) = r.uri.split_once('?').unwrap_or((&r.uri, ""));
                r.method == method && path.ends_with(path_end) && !query.contains("watch=true")
            })
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_without_the_lease_reconciles_nothing_and_does_not_lead() {
        let (ctx, handle) = context();
        let Contested {
            lease: lease_state,
            seen,
            server,
        } = held_by_another(handle);
        let (stop, shutdown) = watch::channel(false);
        let leading = AtomicBool::new(false);
        let running = run(
            ctx.clone(),
            None,
            2,
            Some(elector(&ctx)),
            &leading,
            shutdown,
        );
        let test = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(
                !leading.load(Ordering::Relaxed),
                "leading without the lease"
            );
            stop.send(true).expect("stop");
        };
        let (result, ()) = tokio::join!(running, test);
        result.expect("run");
        drop(ctx);
        server.await.expect("server");
        let seen = seen.lock().expect("seen");
        assert!(seen.len() >= 3, "it contends for the lease: {seen:?}");
        for r in seen.iter() {
            assert_eq!(
                (r.method.as_str(), r.uri.as_str()),
                (
                    "GET",
                    "/apis/coordination.k8s.io/v1/namespaces/system/leases/stagecoach"
                ),
                "only the lease is read: no watch, no pod created"
            );
        }
        assert_eq!(
            lease_state
                .lock()
                .expect("lease")
                .as_ref()
                .map(|l| l["spec"]["holderIdentity"].clone()),
            Some("other".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_reconciles_and_hands_the_lease_back_on_shutdown() {
        let (ctx, handle) = context();
        let lease_state = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = cluster(handle, lease_state.clone(), seen.clone());
        let (stop, shutdown) = watch::channel(false);
        let leading = AtomicBool::new(false);
        let running = run(
            ctx.clone(),
            None,
            2,
            Some(elector(&ctx)),
            &leading,
            shutdown,
        );
        let test = async {
            until("leading", || leading.load(Ordering::Relaxed)).await;
            until("the build's source pod", || {
                count(&seen, "POST", "/namespaces/team/pods") > 0
            })
            .await;
            // Renewals keep the lease.
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert!(leading.load(Ordering::Relaxed));
            assert!(count(&seen, "PUT", "/leases/stagecoach") >= 3, "renewed");
            stop.send(true).expect("stop");
        };
        let (result, ()) = tokio::join!(running, test);
        result.expect("run");
        assert!(!leading.load(Ordering::Relaxed), "not ready once stopped");
        drop(ctx);
        server.await.expect("server");
        let seen = seen.lock().expect("seen");
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[1].method, "POST", "a free lease is created");
        assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
        let last = seen.last().expect("requests");
        assert_eq!(
            (last.method.as_str(), last.uri.trim_end_matches('?')),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/system/leases/stagecoach"
            ),
            "the lease is written last"
        );
        assert!(
            last.body["spec"]["holderIdentity"].is_null(),
            "released: {}",
            last.body
        );
        assert!(last.body["spec"]["renewTime"].is_string());
    }

    #[tokio::test(start_paused = true)]
    async fn leading_and_reconciling_follow_the_lease() {
        let (ctx, handle) = context();
        let Contested {
            lease: lease_state,
            seen,
            server,
        } = held_by_another(handle);
        let (stop, shutdown) = watch::channel(false);
        let leading = AtomicBool::new(false);
        let running = run(
            ctx.clone(),
            None,
            2,
            Some(elector(&ctx)),
            &leading,
            shutdown,
        );
        let builds_listed = || count(&seen, "GET", "/apis/stagecoach.dev/v1alpha1/imagebuilds");
        let test = async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert!(!leading.load(Ordering::Relaxed));
            assert_eq!(builds_listed(), 0);
            // The other replica hands the lease back: this one takes it and reconciles.
            *lease_state.lock().expect("lease") = Some(lease(None));
            until("leading", || leading.load(Ordering::Relaxed)).await;
            until("watching builds", || builds_listed() == 1).await;
            // Another replica takes the lease (as after a partition): this one stops.
            *lease_state.lock().expect("lease") = Some(lease(Some("other")));
            // The next renewal (every 3 s) sees it.
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert!(
                !leading.load(Ordering::Relaxed),
                "still ready without the lease"
            );
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!leading.load(Ordering::Relaxed));
            assert_eq!(builds_listed(), 1, "no controller runs without the lease");
            // Free again: taken again, with a new controller.
            *lease_state.lock().expect("lease") = Some(lease(None));
            until("leading again", || leading.load(Ordering::Relaxed)).await;
            until("watching builds again", || builds_listed() == 2).await;
            stop.send(true).expect("stop");
        };
        let (result, ()) = tokio::join!(running, test);
        result.expect("run");
        drop(ctx);
        server.await.expect("server");
        let holder = lease_state
            .lock()
            .expect("lease")
            .as_ref()
            .map(|l| l["spec"]["holderIdentity"].clone());
        assert_eq!(holder, Some(serde_json::Value::Null), "released at the end");
    }

    #[tokio::test]
    async fn without_leader_election_it_leads_and_reconciles_at_once() {
        let (ctx, handle) = context();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = cluster(handle, Arc::new(std::sync::Mutex::new(None)), seen.clone());
        let (stop, shutdown) = watch::channel(false);
        let leading = AtomicBool::new(false);
        let running = run(ctx.clone(), None, 2, None, &leading, shutdown);
        let test = async {
            until("leading", || leading.load(Ordering::Relaxed)).await;
            until("the build's source pod", || {
                count(&seen, "POST", "/namespaces/team/pods") > 0
            })
            .await;
            stop.send(true).expect("stop");
        };
        let (result, ()) = tokio::join!(running, test);
        result.expect("run");
        drop(ctx);
        server.await.expect("server");
        assert_eq!(
            count(&seen, "GET", "/leases/stagecoach"),
            0,
            "no lease without election"
        );
    }
}
