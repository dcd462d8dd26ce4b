//! Paging through a caller's jobs (the `byOwner` index), newest first, with tokens opaque to clients.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;

use super::JobStore;
use super::attr;
use super::item::{Item, from_item, n, s};
use crate::clock::Millis;
use crate::error::AwsError;
use crate::job::{Job, JobId, JobStatus};

/// A position in a caller's job list, opaque to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct PageToken {
    job_id: String,
    created_at: Millis,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let json = serde_json::json!({ "j": self.job_id, "c": self.created_at });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    pub fn decode(token: &str) -> Option<PageToken> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let json: Value = serde_json::from_slice(&bytes).ok()?;
        let job_id = JobId::parse(json.get("j")?.as_str()?)?;
        let created_at = json.get("c")?.as_i64()?;
        Some(PageToken { job_id: job_id.as_str().to_string(), created_at })
    }
}

impl JobStore {
    /// The owner's jobs, newest first, optionally of one status.
    pub async fn list_by_owner(
        &self,
        owner: &str,
        status: Option<JobStatus>,
        limit: usize,
        start: Option<&PageToken>,
    ) -> Result<(Vec<Job>, Option<PageToken>), AwsError> {
        const MAX_PAGES: usize = 10;
        let mut jobs = Vec::new();
        let mut start_key = start.map(|t| {
            HashMap::from([
                (attr::JOB_ID.to_string(), s(&t.job_id)),
                (attr::OWNER.to_string(), s(owner)),
                (attr::CREATED_AT.to_string(), n(t.created_at)),
            ])
        });
        for _ in 0..MAX_PAGES {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(attr::BY_OWNER_INDEX)
                .key_condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", attr::OWNER)
                .expression_attribute_values(":owner", s(owner))
                .scan_index_forward(false)
                .limit(limit as i32)
                .set_exclusive_start_key(start_key.take());
            if let Some(status) = status {
                query = query
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", attr::STATUS)
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            let out = query.send().await.map_err(|e| AwsError::from_sdk("Query (jobs by owner)", e))?;
            for item in out.items() {
                jobs.push(from_item(item)?);
                if jobs.len() == limit {
                    let last = &jobs[limit - 1];
                    let more = out.last_evaluated_key().is_some() || !std::ptr::eq(item, out.items().last().unwrap());
                    let token =
                        more.then(|| PageToken { job_id: last.job_id.as_str().into(), created_at: last.created_at });
                    return Ok((jobs, token));
                }
            }
            match out.last_evaluated_key() {
                Some(lek) => start_key = Some(lek.clone()),
                None => return Ok((jobs, None)),
            }
        }
        // A sparse filter scanned many pages without filling one: hand back where we stopped.
        let token = start_key.and_then(|k| {
            Some(PageToken {
                job_id: k.get(attr::JOB_ID)?.as_s().ok()?.clone(),
                created_at: k.get(attr::CREATED_AT)?.as_n().ok()?.parse().ok()?,
            })
        });
        Ok((jobs, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = PageToken { job_id: JobId::new_random().as_str().into(), created_at: 1_700_000_000_123 };
        assert_eq!(PageToken::decode(&token.encode()), Some(token));
        for bad in
            ["", "!!!", "eyJ4IjoxfQ", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{\"j\":\"x\",\"c\":1}")]
        {
            assert_eq!(PageToken::decode(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_page_token_decodes_or_is_refused(token in ".{0,80}") {
            let _ = PageToken::decode(&token);
        }
    }
}

impl JobStore {
    /// Every job in the table (not batches' progress items), in no particular order: a strongly consistent, paged scan. For operators
    /// and the fault-injection run (which checks every job it submitted), never on a request path.
    pub async fn scan_all(&self) -> Result<Vec<Job>, AwsError> {
        let mut jobs = Vec::new();
        let mut start_key = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Scan (jobs)", e))?;
            // Batches' progress items (`batch#<id>`) are not jobs.
            let is_job = |item: &&Item| {
                item.get(attr::JOB_ID)
                    .and_then(|key| key.as_s().ok())
                    .is_some_and(|key| !key.starts_with(attr::BATCH_ITEM_PREFIX))
            };
            for item in out.items().iter().filter(is_job) {
                jobs.push(from_item(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) => start_key = Some(key.clone()),
                None => return Ok(jobs),
            }
        }
    }
}
