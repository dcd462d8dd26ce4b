//! Signing secrets (`whsec_` and 32 random bytes in base64) and the `webhook-signature` header, computed by
//! the Standard Webhooks specification's own crate. While a tenant rotates, its previous secret stays valid
//! for a while and every delivery carries both signatures, so a receiver may switch at its own pace.

use base64::Engine as _;
use rand::RngCore as _;

use crate::clock::Millis;

/// How long a rotated-out secret still signs deliveries.
pub const ROTATION_OVERLAP_MS: Millis = 24 * 60 * 60 * 1000;

/// A tenant's secrets: the current one, and the previous one until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    pub previous: Option<(String, Millis)>,
}

/// A secret that does not decode (a corrupt item): nothing can be signed with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook signing secret is unusable: {0}")]
pub struct SigningError(pub String);

impl SigningSecrets {
    /// A new random secret.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// The secrets that sign a delivery at `now`: the current one first.
    pub fn valid_at(&self, now: Millis) -> Vec<&str> {
        let mut secrets = vec![self.current.as_str()];
        if let Some((previous, until)) = &self.previous
            && *until > now
        {
            secrets.push(previous);
        }
        secrets
    }

    /// The `webhook-signature` header: `v1,<base64>` for each valid secret, separated by spaces.
    pub fn signature(&self, webhook_id: &str, timestamp: i64, body: &str, now: Millis) -> Result<String, SigningError> {
        let signatures = self
            .valid_at(now)
            .into_iter()
            .map(|secret| {
                standardwebhooks::Webhook::new(secret)
                    .and_then(|hook| hook.sign(webhook_id, timestamp, body.as_bytes()))
                    .map_err(|e| SigningError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(signatures.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, timestamp: i64, signature: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers
    }

    #[test]
    fn both_secrets_verify_while_a_rotation_overlaps_and_only_the_new_one_after() {
        let (old, new) = (SigningSecrets::generate(), SigningSecrets::generate());
        assert!(old.starts_with("whsec_") && old != new);
        let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
        let now = now_s * 1000;
        let secrets = SigningSecrets { current: new.clone(), previous: Some((old.clone(), now + 1000)) };
        let body = r#"{"type":"job.completed"}"#;
        let signature = secrets.signature("msg_1", now_s, body, now).unwrap();
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        for secret in [&old, &new] {
            let verifier = standardwebhooks::Webhook::new(secret).unwrap();
            verifier.verify(body.as_bytes(), &headers("msg_1", now_s, &signature)).unwrap();
            assert!(verifier.verify(b"{}", &headers("msg_1", now_s, &signature)).is_err(), "another body fails");
            assert!(
                verifier.verify(body.as_bytes(), &headers("msg_2", now_s, &signature)).is_err(),
                "another id fails"
            );
        }
        let later = secrets.signature("msg_1", now_s, body, now + 1000).unwrap();
        assert_eq!(later.split(' ').count(), 1, "the previous secret expired");
        let old_verifier = standardwebhooks::Webhook::new(&old).unwrap();
        assert!(old_verifier.verify(body.as_bytes(), &headers("msg_1", now_s, &later)).is_err());
    }
}
