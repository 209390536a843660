//! `stagecoach build --cluster`: the ImageBuild the flags make, created in a cluster
//! under a generated name and followed until it ends: its status through a watch (which
//! lists again after the API server ends or expires it), and with `--progress plain`
//! each stage pod's log as it comes.

use std::collections::BTreeSet;

use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::mpsc;

use crate::api::{ImageBuild, ImageBuildStatus, Phase, StagePhase};

/// How long the end of a build waits for the rest of its stage pods' logs.
const LOG_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How many times a stage pod's log is asked for before its container is up.
const LOG_ATTEMPTS: u32 = 60;

/// What following a build reports, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The ImageBuild was created under this name.
    Created(String),
    Status(Box<ImageBuildStatus>),
    /// A line of a stage pod's log, with the stage's name.
    Log {
        stage: String,
        line: String,
    },
    /// Interrupted: the build is asked to stop (`spec.cancel`) and followed to its end.
    Canceling,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the ImageBuild in namespace {namespace}")]
    Create {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("ImageBuild {namespace}/{name} was deleted before it ended")]
    Deleted { namespace: String, name: String },
    #[error("the watch of ImageBuild {namespace}/{name} ended")]
    WatchEnded { namespace: String, name: String },
    #[error("cannot cancel ImageBuild {namespace}/{name}")]
    Cancel {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("interrupted again: ImageBuild {namespace}/{name} is left to end on its own")]
    Interrupted { namespace: String, name: String },
    #[error("cannot watch ImageBuild {namespace}/{name}")]
    Watch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether the API server refuses the request itself (unauthenticated, forbidden, no
/// such resource), which no retry mends.
fn refused(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if [401, 403, 404].contains(&status.code))
}

/// Creates `build` (its `generateName` set) in `namespace` and follows it to the end;
/// returns its last status. With `logs`, each stage pod's log is followed once the pod
/// runs. The first of `interrupts` (Ctrl-C) cancels the build, as `docker build` stops
/// on it, and the build is followed until it has stopped; the second leaves.
pub async fn follow(
    client: Client,
    namespace: &str,
    build: &ImageBuild,
    logs: bool,
    interrupts: impl futures::Stream<Item = ()>,
    report: &mut (dyn FnMut(Update) + Send),
) -> Result<ImageBuildStatus, Error> {
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), namespace);
    let created = builds
        .create(
            &PostParams {
                field_manager: Some("stagecoach-build".into()),
                ..PostParams::default()
            },
            build,
        )
        .await
        .map_err(|source| Error::Create {
            namespace: namespace.to_string(),
            source,
        })?;
    let name = created.name_any();
    report(Update::Created(name.clone()));
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let (lines, mut received) = mpsc::unbounded_channel();
    let mut followed = BTreeSet::new();
    let mut log_tasks = Vec::new();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(builds.clone(), config).default_backoff());
    let mut interrupts = std::pin::pin!(interrupts);
    let mut canceled = false;
    let mut last = None;
    loop {
        tokio::select! {
            event = events.next() => {
                let objects = match event {
                    Some(Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b))) => vec![b],
                    Some(Ok(watcher::Event::Delete(_))) => {
                        return Err(Error::Deleted { namespace: namespace.into(), name });
                    }
                    // Refused for good: no point watching again.
                    Some(Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)))
                        if refused(&e) =>
                    {
                        return Err(Error::Watch { namespace: namespace.into(), name, source: e });
                    }
                    // Anything else is retried with backoff: the stream goes on.
                    Some(Ok(_)) | Some(Err(_)) => vec![],
                    None => return Err(Error::WatchEnded { namespace: namespace.into(), name }),
                };
                for object in objects {
                    let Some(status) = object.status.clone() else { continue };
                    if logs {
                        for stage in &status.stages {
                            if stage.phase != StagePhase::Waiting
                                && let Some(pod) = &stage.pod
                                && followed.insert(pod.clone())
                            {
                                log_tasks.push(tokio::spawn(follow_log(
                                    pods.clone(),
                                    pod.clone(),
                                    stage.name.clone(),
                                    lines.clone(),
                                )));
                            }
                        }
                    }
                    let done = matches!(status.phase, Some(Phase::Succeeded | Phase::Failed));
                    if last.as_ref() != Some(&status) {
                        report(Update::Status(Box::new(status.clone())));
                        last = Some(status.clone());
                    }
                    if done {
                        // The stage pods ended before the build did: their logs end
                        // soon, unless the API server holds them back.
                        let tasks = futures::future::join_all(std::mem::take(&mut log_tasks));
                        let _ = tokio::time::timeout(LOG_DRAIN, tasks).await;
                        while let Ok(update) = received.try_recv() {
                            report(update);
                        }
                        return Ok(status);
                    }
                }
            }
            Some(update) = received.recv() => report(update),
            Some(()) = interrupts.next() => {
                if canceled {
                    return Err(Error::Interrupted { namespace: namespace.into(), name });
                }
                canceled = true;
                report(Update::Canceling);
                let cancel = Patch::Merge(serde_json::json!({"spec": {"cancel": true}}));
                let params = PatchParams {
                    field_manager: Some("stagecoach-build".into()),
                    ..PatchParams::default()
                };
                if let Err(source) = builds.patch(&name, &params, &cancel).await {
                    return Err(Error::Cancel { namespace: namespace.into(), name, source });
                }
            }
        }
    }
}

/// Sends each line of the stage container's log until the pod ends.
async fn follow_log(
    pods: Api<Pod>,
    pod: String,
    stage: String,
    lines: mpsc::UnboundedSender<Update>,
) {
    let params = LogParams {
        follow: true,
        container: Some("stage".into()),
        ..LogParams::default()
    };
    // The container may still be starting: its log opens a little later.
    let mut attempts = 0;
    let stream = loop {
        match pods.log_stream(&pod, &params).await {
            Ok(stream) => break stream,
            Err(e) if refused(&e) || attempts >= LOG_ATTEMPTS => return,
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut stream = std::pin::pin!(stream.lines());
    while let Some(Ok(line)) = stream.next().await {
        let update = Update::Log {
            stage: stage.clone(),
            line,
        };
        if lines.send(update).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn respond(status: u16, body: Vec<u8>) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(body))
            .expect("response")
    }

    fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
        respond(status, serde_json::to_vec(value).expect("json"))
    }

    fn build() -> ImageBuild {
        let mut b: ImageBuild = serde_json::from_value(serde_json::json!({
            "apiVersion": "stagecoach.dev/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"generateName": "app-"},
            "spec": {
                "source": {"oci": {"image": format!("registry.example/app/context@sha256:{}", "c".repeat(64))}},
                "output": {"image": "registry.example/app:1"}
            }
        }))
        .expect("build");
        b.status = None;
        b
    }

    /// The build as the API server holds it at `rv` with `status`.
    fn stored(rv: &str, status: serde_json::Value) -> serde_json::Value {
        let mut b = serde_json::to_value(build()).expect("build");
        b["metadata"] = serde_json::json!({"name": "app-x7k2p", "namespace": "team",
            "uid": "u-1", "generation": 1, "resourceVersion": rv});
        b["status"] = status;
        b
    }

    /// A LIST answer holding `items` at resource version `rv`.
    fn list(rv: &str, items: Vec<serde_json::Value>) -> Response<Body> {
        json(
            200,
            &serde_json::json!({"apiVersion": "stagecoach.dev/v1alpha1",
                "kind": "ImageBuildList", "metadata": {"resourceVersion": rv}, "items": items}),
        )
    }

    /// A WATCH answer: one MODIFIED event per (resource version, status), a line each.
    fn modified(events: Vec<(&str, serde_json::Value)>) -> Response<Body> {
        let mut body = Vec::new();
        for (rv, status) in events {
            let event = serde_json::json!({"type": "MODIFIED", "object": stored(rv, status)});
            body.extend(serde_json::to_vec(&event).expect("json"));
            body.push(b'\n');
        }
        respond(200, body)
    }

    fn running() -> serde_json::Value {
        serde_json::json!({"observedGeneration": 1, "phase": "Building", "stages": [
            {"name": "build", "pod": "app-x7k2p-build-g1", "phase": "Running", "attempts": 0}]})
    }

    fn succeeded() -> serde_json::Value {
        serde_json::json!({"observedGeneration": 1, "phase": "Succeeded", "stages": [
            {"name": "build", "pod": "app-x7k2p-build-g1", "phase": "Succeeded", "attempts": 0}],
            "image": {"reference": "registry.example/app:1",
                      "digest": format!("sha256:{}", "d".repeat(64)), "shortDigest": "dddddddddddd"}})
    }

    /// Plays the API server: the create, a list, a watch that expires (410 Gone, as after
    /// compaction), the list again, a watch that carries the build to its end, and the
    /// stage pod's log. Returns the requests' method and URI.
    async fn api_server(mut handle: Handle) -> Vec<String> {
        let mut seen = Vec::new();
        let mut lists = 0;
        let mut watches = 0;
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            seen.push(format!("{} {uri}", request.method()));
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            if request.method() == "POST" {
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                assert_eq!(body["metadata"]["generateName"], "app-");
                assert!(body["metadata"]["name"].is_null(), "{body}");
                send.send_response(json(201, &stored("1", serde_json::Value::Null)));
            } else if path.ends_with("/pods/app-x7k2p-build-g1/log") {
                assert!(query.contains("follow=true"), "{query}");
                assert!(query.contains("container=stage"), "{query}");
                send.send_response(respond(200, b"compiling\nlinked\n".to_vec()));
            } else if query.contains("watch=true") {
                watches += 1;
                if watches == 1 {
                    let gone = serde_json::json!({"type": "ERROR", "object": {"kind": "Status",
                        "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                        "message": "too old resource version"}});
                    send.send_response(respond(200, serde_json::to_vec(&gone).expect("json")));
                } else {
                    send.send_response(modified(vec![("3", running()), ("4", succeeded())]));
                }
            } else {
                assert!(
                    query.contains("fieldSelector=metadata.name%3Dapp-x7k2p"),
                    "{query}"
                );
                lists += 1;
                let items = if lists == 1 {
                    vec![stored(
                        "2",
                        serde_json::json!({"observedGeneration": 1, "phase": "Cloning"}),
                    )]
                } else {
                    vec![stored("3", running())]
                };
                send.send_response(list("3", items));
            }
        }
        seen
    }

    #[tokio::test]
    async fn an_interrupt_cancels_the_build_and_follows_it_until_it_stopped() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut patched = None;
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                let bytes = request.into_body().collect_bytes().await.expect("body");
                match method.as_str() {
                    "POST" => send.send_response(json(201, &stored("1", serde_json::Value::Null))),
                    "PATCH" => {
                        patched = Some(
                            serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"),
                        );
                        send.send_response(json(200, &stored("2", running())));
                    }
                    _ if query.contains("watch=true") => {
                        // The operator ends the build only once spec.cancel is set.
                        let status = match patched {
                            Some(_) => {
                                serde_json::json!({"observedGeneration": 2, "phase": "Failed",
                                "failure": {"reason": "Canceled", "message": "canceled"}})
                            }
                            None => running(),
                        };
                        send.send_response(modified(vec![("3", status)]));
                    }
                    _ => send.send_response(list("2", vec![stored("2", running())])),
                }
            }
            patched
        });
        let client = Client::new(service, "team");
        let mut updates = Vec::new();
        let status = follow(
            client,
            "team",
            &build(),
            false,
            futures::stream::iter([()]),
            &mut |u| updates.push(u),
        )
        .await
        .expect("followed to the end");
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(
            status.failure.map(|f| f.reason).as_deref(),
            Some("Canceled")
        );
        assert!(updates.contains(&Update::Canceling), "{updates:?}");
        drop(updates);
        let patched = server.await.expect("server");
        assert_eq!(patched, Some(serde_json::json!({"spec": {"cancel": true}})));
    }

    #[tokio::test]
    async fn a_forbidden_watch_ends_the_follow_instead_of_retrying_forever() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("the create");
            send.send_response(json(201, &stored("1", serde_json::Value::Null)));
            let (request, send) = handle.next_request().await.expect("the list");
            assert_eq!(request.method(), "GET");
            let forbidden = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "imagebuilds.stagecoach.dev is forbidden: User \"dev\" cannot list"});
            send.send_response(json(403, &forbidden));
        });
        let client = Client::new(service, "team");
        let err = follow(
            client,
            "team",
            &build(),
            false,
            futures::stream::pending(),
            &mut |_| {},
        )
        .await
        .expect_err("forbidden");
        assert!(
            matches!(&err, Error::Watch { name, .. } if name == "app-x7k2p"),
            "{err:?}"
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_build_is_created_and_followed_across_an_expired_watch_to_its_end() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(api_server(handle));
        let client = Client::new(service, "team");
        let mut updates = Vec::new();
        let status = follow(
            client,
            "team",
            &build(),
            true,
            futures::stream::pending(),
            &mut |u| updates.push(u),
        )
        .await
        .expect("followed");
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(
            status.image.map(|i| i.digest),
            Some(format!("sha256:{}", "d".repeat(64)))
        );
        assert_eq!(updates[0], Update::Created("app-x7k2p".into()));
        let phases: Vec<Phase> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Status(s) => s.phase,
                _ => None,
            })
            .collect();
        assert_eq!(
            phases,
            [Phase::Cloning, Phase::Building, Phase::Succeeded],
            "each change once, in order, across the expired watch"
        );
        let logs: Vec<(&str, &str)> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Log { stage, line } => Some((stage.as_str(), line.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(logs, [("build", "compiling"), ("build", "linked")]);
        drop(updates);
        let seen = server.await.expect("server");
        assert_eq!(
            seen.iter().filter(|r| r.starts_with("POST")).count(),
            1,
            "one create: {seen:#?}"
        );
        let lists = seen
            .iter()
            .filter(|r| {
                r.starts_with("GET") && r.contains("/imagebuilds?") && !r.contains("watch=true")
            })
            .count();
        assert_eq!(
            lists, 2,
            "the expired watch is followed by a new list: {seen:#?}"
        );
    }
}
