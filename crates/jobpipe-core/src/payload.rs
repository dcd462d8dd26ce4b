//! Job inputs and results: small ones live in the job item, large ones in S3 and travel by reference.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;

use crate::error::AwsError;
use crate::job::{JobError, JobId, Payload};

/// The error code of a payload that is not in the bucket (removed by the lifecycle rule).
pub const NO_SUCH_KEY: &str = "NoSuchKey";

#[derive(Debug, Clone)]
pub struct PayloadStore {
    s3: Client,
    bucket: String,
    /// Payloads up to this many bytes of JSON stay in the DynamoDB item. Every state transition rewrites
    /// the item and DynamoDB bills writes per KiB of item, so this is kept small.
    inline_max_bytes: usize,
}

impl PayloadStore {
    pub fn new(s3: Client, bucket: impl Into<String>, inline_max_bytes: usize) -> Self {
        PayloadStore { s3, bucket: bucket.into(), inline_max_bytes }
    }

    /// The largest payload kept inline in an item rather than in S3.
    pub fn inline_max_bytes(&self) -> usize {
        self.inline_max_bytes
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn s3(&self) -> &Client {
        &self.s3
    }

    /// `version` tells submissions apart (the request hash): a replayed idempotency key with a different
    /// body must not overwrite the input of the job that key already names.
    pub async fn put_input(&self, job_id: &JobId, version: &str, value: &Value) -> Result<Payload, AwsError> {
        self.put(value, format!("payloads/{job_id}/input-{version}.json")).await
    }

    /// Stores a result at a key derived from the job, so a retried attempt overwrites, never duplicates.
    pub async fn put_result(&self, job_id: &JobId, value: &Value) -> Result<Payload, AwsError> {
        self.put(value, format!("payloads/{job_id}/result.json")).await
    }

    async fn put(&self, value: &Value, key: String) -> Result<Payload, AwsError> {
        let body = value.to_string();
        if body.len() <= self.inline_max_bytes {
            return Ok(Payload::Inline(value.clone()));
        }
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(format!("PutObject s3://{}/{key}", self.bucket), e))?;
        Ok(Payload::S3 { key })
    }

    pub async fn resolve(&self, payload: &Payload) -> Result<Value, AwsError> {
        let key = match payload {
            Payload::Inline(value) => return Ok(value.clone()),
            Payload::S3 { key } => key,
        };
        let operation = || format!("GetObject s3://{}/{key}", self.bucket);
        let out = self.s3.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| {
            let missing = e.as_service_error().is_some_and(|e| e.is_no_such_key());
            let mut error = AwsError::from_sdk(operation(), e);
            if missing {
                error.code = NO_SUCH_KEY.into();
            }
            error
        })?;
        let bytes = out.body.collect().await.map_err(|e| AwsError {
            operation: operation(),
            code: "Transport".into(),
            message: e.to_string(),
            retryability: crate::Retryability::Retryable,
        })?;
        serde_json::from_slice(&bytes.into_bytes())
            .map_err(|e| AwsError::corrupt(operation(), format!("payload is not JSON: {e}")))
    }

    /// Stores a file a job produced at `results/{jobId}/{name}` (a retry overwrites it), with its content
    /// type and metadata. S3 errors come back classified for the job.
    pub async fn put_result_object(
        &self,
        job_id: &JobId,
        name: &str,
        bytes: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, String)],
    ) -> Result<StoredObject, JobError> {
        let key = result_object_key(job_id, name);
        let size = bytes.len();
        let mut request = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type(content_type)
            .body(ByteStream::from(bytes));
        for (name, value) in metadata {
            request = request.metadata(*name, value);
        }
        request.send().await.map_err(|e| {
            let error = AwsError::from_sdk(format!("PutObject s3://{}/{key}", self.bucket), e);
            let message = "could not store the result; it will be retried";
            if error.is_retryable() {
                JobError::retryable("result_store_unavailable", message)
            } else {
                tracing::error!(%error, "storing a result failed");
                JobError::permanent("result_store_failed", "could not store the result")
            }
        })?;
        Ok(StoredObject { key, content_type: content_type.to_string(), size })
    }

    /// A GET URL for an object, valid for `ttl`. The bucket stays private; the URL is the only way in.
    pub async fn presign_get(&self, key: &str, ttl: std::time::Duration) -> Result<String, AwsError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| AwsError::corrupt("presigning", e.to_string()))?;
        let request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| AwsError::from_sdk(format!("presign s3://{}/{key}", self.bucket), e))?;
        Ok(request.uri().to_string())
    }
}

/// Where a job's result files live; the API only presigns keys under the job's own prefix.
pub fn result_object_key(job_id: &JobId, name: &str) -> String {
    format!("{}{name}", result_prefix(job_id))
}

pub fn result_prefix(job_id: &JobId) -> String {
    format!("results/{job_id}/")
}

/// A file a job stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub content_type: String,
    pub size: usize,
}
