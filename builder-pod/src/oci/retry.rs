//! When a request is tried again and after how long: the [`RetryPolicy`] (attempts,
//! doubling backoff with jitter), a registry's `Retry-After`, which transport errors are
//! transient, and `Retries`, which carries one request or upload through its
//! attempts. Kept apart from the requests so that the waiting rules read in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_client::RegistryOperation;
use reqwest::Response;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{Error, Reference, Registry, Result};

/// The longest wait a `Retry-After` header gets: a registry asking for more is down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Retries of requests that failed for a moment (connection errors, 5xx, 429, 408).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failures, with up to a quarter more so that pods that
    /// failed together do not retry together.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        let base = doubled.min(self.max_delay);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 250) / 1000.0)
    }
}

/// How one attempt at a request ended, when it did not fail for good.
pub(super) enum Attempt {
    Done(Response),
    /// A transient failure: try again, after the registry's `Retry-After` if it gave one.
    Again {
        retry_after: Option<Duration>,
        why: String,
    },
    /// Our authorization was refused: fetch a new one once (tokens expire).
    Unauthorized {
        detail: String,
    },
}

/// Counts the failures of one request (or upload) and waits between attempts.
pub(super) struct Retries<'a> {
    registry: &'a Registry,
    reference: &'a Reference,
    op: RegistryOperation,
    failures: u32,
    reauthorized: bool,
}

impl<'a> Retries<'a> {
    pub(super) fn new(
        registry: &'a Registry,
        reference: &'a Reference,
        op: RegistryOperation,
    ) -> Self {
        Retries {
            registry,
            reference,
            op,
            failures: 0,
            reauthorized: false,
        }
    }

    /// The response when the attempt succeeded; None after waiting when it may be tried
    /// again; an error when it may not.
    pub(super) async fn after(&mut self, attempt: Attempt) -> Result<Option<Response>> {
        match attempt {
            Attempt::Done(response) => Ok(Some(response)),
            Attempt::Unauthorized { detail } => {
                if self.reauthorized {
                    return Err(self.registry.denied(self.reference, self.op, detail));
                }
                self.reauthorized = true;
                self.registry.forget(self.reference, self.op);
                Ok(None)
            }
            Attempt::Again { retry_after, why } => {
                self.failures += 1;
                let policy = &self.registry.retry;
                if self.failures >= policy.attempts {
                    return Err(Error::Unavailable {
                        registry: self.reference.registry().to_string(),
                        attempts: self.failures,
                        last: why,
                    });
                }
                let wait = retry_after
                    .map(|d| d.min(MAX_RETRY_AFTER))
                    .unwrap_or_else(|| policy.backoff(self.failures));
                eprintln!("{why}; retrying in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                Ok(None)
            }
        }
    }
}

/// Whether a transport error may go away when tried again (connection refused or reset,
/// a timeout, a body cut short).
pub(super) fn transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// `Retry-After` in seconds (HTTP dates are not used by registries; they get backoff).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_is_seconds() {
        let p = RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base * 5 / 4)
        };
        assert!(within(p.backoff(1), 100));
        assert!(within(p.backoff(2), 200));
        assert!(within(p.backoff(3), 350));
        assert!(within(p.backoff(30), 350));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
