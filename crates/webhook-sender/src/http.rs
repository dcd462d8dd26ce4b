//! One attempt of a delivery over HTTP: a POST with the Standard Webhooks headers, through a client that
//! resolves every host itself and refuses addresses the `TargetPolicy` forbids (so a name that points at a
//! private address is refused when it is called, not only when it was registered; the refusal, found in
//! the request's error, dead-letters the delivery), follows no redirects, and bounds the time (name
//! resolution included) and the bytes an answer may take.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jobpipe_core::clock::Millis;
use jobpipe_core::webhooks::signing::SigningSecrets;
use jobpipe_core::webhooks::target::{TargetError, TargetPolicy};
use jobpipe_core::webhooks::{AttemptOutcome, Delivery};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long a receiver may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole attempt may take, answer included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body read (it is only logged).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Resolves names and answers only addresses webhooks may use; a name with any forbidden address is
/// refused whole (a mixed answer is how rebinding attacks start).
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: TargetPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let addresses = allowed_addresses(name.as_str(), policy).await?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// A host's addresses, if webhooks may use every one of them.
async fn allowed_addresses(
    host: &str,
    policy: TargetPolicy,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    if addresses.is_empty() {
        return Err(Box::new(TargetError(format!("{host} has no address"))));
    }
    for address in &addresses {
        // A `TargetError` boxed once, so a caller can downcast it.
        policy.check_ip(address.ip()).map_err(|e| TargetError(format!("{host}: {e}")))?;
    }
    Ok(addresses)
}

/// The HTTP side of the sender.
#[derive(Debug, Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    policy: TargetPolicy,
}

impl HttpSender {
    pub fn new(policy: TargetPolicy) -> Result<HttpSender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("jobpipe-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpSender { client, policy })
    }

    /// Makes one attempt of `delivery`, signed with `secrets`, at `now`.
    pub async fn attempt(&self, delivery: &Delivery, secrets: &SigningSecrets, now: Millis) -> AttemptOutcome {
        let url = match self.policy.check_url(&delivery.url) {
            Ok(url) => url,
            Err(e) => return AttemptOutcome::Refused { status: None, error: format!("the URL {e}") },
        };
        let body = delivery.body();
        let timestamp = now / 1000;
        let signature = match secrets.signature(&delivery.webhook_id, timestamp, &body, now) {
            Ok(signature) => signature,
            Err(e) => return AttemptOutcome::Failed { status: None, error: e.to_string() },
        };
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return outcome_of_error(&error),
        };
        let status = response.status().as_u16();
        // Read a bounded part of the answer, so the connection can be reused and a huge answer costs nothing.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        AttemptOutcome::of_status(status)
    }
}

/// A request that got no answer: refused when our own resolver refused the address, otherwise a failure
/// a later attempt may not meet (timeouts, connections refused or reset, TLS).
fn outcome_of_error(error: &reqwest::Error) -> AttemptOutcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<TargetError>() {
            return AttemptOutcome::Refused { status: None, error: format!("not called: {refused}") };
        }
        source = current.source();
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    AttemptOutcome::Failed { status: None, error: format!("the request {what}{}", causes(error)) }
}

/// What caused a request's failure, without the request's own line: that names the URL, whose query may
/// carry a receiver's token, and this text is logged, kept on the job and in dead letters.
fn causes(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL check lets a name through; the resolver refuses it when its address is forbidden, and the
    /// attempt is a refusal (dead-lettered), not a failure to retry.
    #[tokio::test]
    async fn a_name_resolving_to_a_forbidden_address_is_refused_when_called() {
        let deployed = HttpSender::new(TargetPolicy { allow_loopback: false }).unwrap();
        let refusal = allowed_addresses("localhost", deployed.policy).await.unwrap_err();
        let refusal = refusal.downcast::<TargetError>().expect("a TargetError, as `attempt` tells them apart");
        assert!(refusal.0.contains("loopback"), "{refusal}");
        // The connection is refused by the resolver, and the attempt is a refusal, not a failure to retry.
        let error = deployed.client.post("http://localhost:9/hook").send().await.unwrap_err();
        let outcome = outcome_of_error(&error);
        assert!(
            matches!(&outcome, AttemptOutcome::Refused { status: None, error } if error.contains("loopback")),
            "{outcome:?}"
        );
        let local = HttpSender::new(TargetPolicy { allow_loopback: true }).unwrap();
        let error = local.client.post("http://localhost:9/hook?token=secret").send().await.unwrap_err();
        match outcome_of_error(&error) {
            AttemptOutcome::Failed { error, .. } => {
                assert!(!error.contains("secret"), "the URL is not repeated: {error}")
            }
            other => panic!("nothing listens: a failure to retry, not {other:?}"),
        }
    }
}
