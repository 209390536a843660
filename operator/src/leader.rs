//! Leader election with a `coordination.k8s.io` Lease, so that with several replicas
//! only one reconciles. Optimistic concurrency (resourceVersion) settles races; a
//! leader that cannot renew in time exits, and its successor takes over from status.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

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
        let expired = match (&held.renew_time, held.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                renewed.0.as_second() + i64::from(secs) < now.as_second()
            }
            _ => true,
        };
        if !ours && !expired {
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

    /// Waits until this replica leads.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        while !self.try_acquire().await? {
            tokio::time::sleep(self.duration / 3).await;
        }
        Ok(())
    }

    /// Renews the lease until that fails; returns when leadership is lost.
    pub async fn keep(&self) {
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
    }
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
}
