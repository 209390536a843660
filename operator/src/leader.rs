//! Leader election with a `coordination.k8s.io` Lease, so that with several replicas
//! only one reconciles. Optimistic concurrency (resourceVersion) settles races; a leader
//! that cannot renew in time stops reconciling and contends again, and one that shuts
//! down hands the lease back so that its successor need not wait for it to expire.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// How long a lease holds without renewal (client-go's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// One contender for the lease.
#[derive(Debug, Clone)]
pub struct Elector {
    pub api: Api<Lease>,
    pub lease: String,
    pub identity: String,
    pub duration: Duration,
}

impl Elector {
    /// Takes the lease when it is free, expired or already ours; true when we hold it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(current) = self.api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, None)),
            };
            return settle(self.api.create(&PostParams::default(), &lease).await);
        };
        let held = current.spec.clone().unwrap_or_default();
        let ours = held.holder_identity.as_deref() == Some(self.identity.as_str());
        // A released lease has no holder.
        let free = held.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = match (&held.renew_time, held.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                renewed.0.as_second() + i64::from(secs) < now.as_second()
            }
            _ => true,
        };
        if !ours && !free && !expired {
            return Ok(false);
        }
        let transitions = held.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            held.acquire_time.clone()
        } else {
            None
        };
        let mut next = current;
        next.spec = Some(spec(transitions, acquired));
        // The resourceVersion in `next` makes a concurrent taker lose with 409.
        settle(
            self.api
                .replace(&self.lease, &PostParams::default(), &next)
                .await,
        )
    }

    /// Waits until this replica leads; API errors are logged and tried again.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(lease = %self.lease, error = %e, "cannot take the lease"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the lease; returns when leadership is lost: another replica holds it, or no
    /// renewal succeeded within two thirds of the lease, so that this replica stops before
    /// another may take over.
    pub async fn keep(&self) {
        let mut renewed = Instant::now();
        loop {
            let deadline = renewed + self.duration * 2 / 3;
            tokio::time::sleep_until((Instant::now() + self.duration / 5).min(deadline)).await;
            let attempt = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(true)) => renewed = attempt,
                Ok(Ok(false)) | Err(_) => return,
                Ok(Err(e)) => warn!(lease = %self.lease, error = %e, "cannot renew the lease"),
            }
        }
    }

    /// Hands the lease back (no holder) when it is ours.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.lease).await? else {
            return Ok(());
        };
        let Some(spec) = lease
            .spec
            .as_mut()
            .filter(|s| s.holder_identity.as_deref() == Some(self.identity.as_str()))
        else {
            return Ok(());
        };
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        settle(
            self.api
                .replace(&self.lease, &PostParams::default(), &lease)
                .await,
        )
        .map(|_| ())
    }

    /// Runs `work` only while this replica holds the lease, with `leading` true meanwhile
    /// (`/readyz`). A lost lease drops `work` at once (every reconcile starts again from
    /// what the cluster holds) and contends again. On `shutdown` `work` is expected to end
    /// by itself; then the lease is handed back.
    pub async fn lead<W, F>(
        &self,
        leading: &AtomicBool,
        shutdown: watch::Receiver<bool>,
        mut work: W,
    ) -> Result<(), kube::Error>
    where
        W: FnMut() -> F,
        F: Future<Output = ()>,
    {
        loop {
            tokio::select! {
                biased;
                () = stopped(shutdown.clone()) => return Ok(()),
                () = self.acquire() => {}
            }
            leading.store(true, Ordering::Relaxed);
            info!(lease = %self.lease, identity = %self.identity, "holding the lease");
            let lost = tokio::select! {
                () = work() => false,
                () = self.keep() => true,
            };
            leading.store(false, Ordering::Relaxed);
            if !lost {
                info!(lease = %self.lease, "handing the lease back");
                return self.release().await;
            }
            warn!(lease = %self.lease, "lost the lease: reconciling stopped");
        }
    }
}

/// Resolves once `shutdown` turns true, or its sender is gone.
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A conflict means someone else got there first.
fn settle(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;

    fn elector() -> (
        Elector,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "system");
        let elector = Elector {
            api: Api::namespaced(client, "system"),
            lease: "stagecoach".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
        };
        (elector, handle)
    }

    fn respond(json: serde_json::Value, status: u16) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&json).expect("json")))
            .expect("response")
    }

    fn lease(holder: &str, renewed_ago: i64) -> serde_json::Value {
        let renewed =
            Timestamp::from_second(Timestamp::now().as_second() - renewed_ago).expect("time");
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "stagecoach", "namespace": "system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": MicroTime(renewed), "leaseTransitions": 2}
        })
    }

    #[tokio::test]
    async fn a_free_lease_is_created_and_taken() {
        let (e, mut handle) = elector();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("get");
            assert_eq!(req.method(), "GET");
            send.send_response(respond(serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}), 404));
            let (req, send) = handle.next_request().await.expect("create");
            assert_eq!(req.method(), "POST");
            send.send_response(respond(lease("me", 0), 201));
        });
        assert!(e.try_acquire().await.expect("acquire"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_held_lease_is_left_alone_and_an_expired_one_taken() {
        let (e, mut handle) = elector();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(respond(lease("other", 2), 200));
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(respond(lease("other", 60), 200));
            let (req, send) = handle.next_request().await.expect("replace");
            assert_eq!(req.method(), "PUT");
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(
                body["metadata"]["resourceVersion"], "7",
                "optimistic concurrency"
            );
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            send.send_response(respond(lease("me", 0), 200));
        });
        assert!(!e.try_acquire().await.expect("held"));
        assert!(e.try_acquire().await.expect("expired"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_ours_is_handed_back() {
        let (e, mut handle) = elector();
        let server = tokio::spawn(async move {
            let body = |req: Request<Body>| async move {
                let bytes = req.into_body().collect_bytes().await.expect("body");
                serde_json::from_slice::<serde_json::Value>(&bytes).expect("json")
            };
            // Released a moment ago: no holder, not expired.
            let mut released = lease("other", 0);
            released["spec"]["holderIdentity"] = serde_json::Value::Null;
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(respond(released, 200));
            let (req, send) = handle.next_request().await.expect("take");
            assert_eq!(req.method(), "PUT");
            assert_eq!(body(req).await["spec"]["holderIdentity"], "me");
            send.send_response(respond(lease("me", 0), 200));
            // Released: the holder is cleared, on the version read.
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(respond(lease("me", 0), 200));
            let (req, send) = handle.next_request().await.expect("release");
            assert_eq!(req.method(), "PUT");
            let released = body(req).await;
            assert_eq!(released["metadata"]["resourceVersion"], "7");
            assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
            assert_eq!(released["spec"]["leaseTransitions"], 2);
            send.send_response(respond(released, 200));
            // Someone else's lease is left alone.
            let (_, send) = handle.next_request().await.expect("get");
            send.send_response(respond(lease("other", 0), 200));
            assert!(handle.next_request().await.is_none(), "no write");
        });
        assert!(e.try_acquire().await.expect("free"));
        e.release().await.expect("release");
        e.release().await.expect("not ours");
        drop(e);
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_gives_up_before_the_lease_could_expire() {
        let (e, mut handle) = elector();
        let server = tokio::spawn(async move {
            // One renewal fails, the next hangs.
            let (_, send) = handle.next_request().await.expect("renew");
            send.send_response(respond(serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500}), 500));
            let (_, _hung) = handle.next_request().await.expect("renew");
            handle.next_request().await.is_none()
        });
        let start = tokio::time::Instant::now();
        tokio::time::timeout(e.duration, e.keep())
            .await
            .expect("keep gives up before the lease expires");
        let took = start.elapsed();
        assert_eq!(took, e.duration * 2 / 3, "gave up at the renew deadline");
        drop(e);
        assert!(server.await.expect("server"), "no renewal after giving up");
    }
}
