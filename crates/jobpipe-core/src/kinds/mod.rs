//! Job kinds: what a job of each kind accepts and how it runs. Adding a kind is one module here and
//! one line in `registry`.

mod echo;
pub mod image;
pub mod raster;
pub mod wifi_qr;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::clock::Millis;
use crate::job::{Job, JobError};
use crate::payload::PayloadStore;

pub use echo::Echo;
pub use image::Image;
pub use wifi_qr::WifiQr;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Input that a kind rejects, naming the field (a JSON pointer-like path such as `input.sleepMs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError { field: field.into(), message: message.into() }
    }
}

/// Lets a running job record how far it got (0-100).
pub trait ProgressReporter: Send + Sync {
    fn report(&self, percent: u8) -> BoxFuture<'_, ()>;
}

/// Everything a running job may use.
pub struct JobContext<'a> {
    pub job: &'a Job,
    /// The job's input, already fetched from S3 when it was stored there.
    pub input: &'a Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the invocation will be stopped, if known.
    pub deadline: Option<Millis>,
    pub progress: &'a dyn ProgressReporter,
    /// Where result files go (`put_result_object`: `results/{jobId}/...`).
    pub results: &'a PayloadStore,
}

pub trait JobKind: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checked at `POST /jobs`, before anything is stored or queued.
    fn validate(&self, input: &Value) -> Result<(), InputError>;

    /// The JSON Schema of `input` that the API's OpenAPI document publishes. It states every rule of
    /// `validate` that JSON Schema can; rules across fields are in its description (and answer `422`).
    fn input_schema(&self) -> Value;

    /// Runs one attempt. A retryable error is retried with backoff; a permanent one fails the job.
    fn run<'a>(&'a self, ctx: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>>;
}

/// Which kinds a deployment offers.
#[derive(Debug, Clone, Default)]
pub struct KindsConfig {
    /// The `echo` test kind with its fault knobs: on in tests and the local stack, off when deployed.
    pub echo_enabled: bool,
}

#[derive(Clone, Default)]
pub struct KindRegistry {
    kinds: BTreeMap<&'static str, Arc<dyn JobKind>>,
}

impl KindRegistry {
    /// The kinds this deployment offers. Adding a kind: a module above and a line here.
    pub fn from_config(config: &KindsConfig, bedrock: &aws_sdk_bedrockruntime::Client) -> Self {
        let mut registry = KindRegistry::default();
        if config.echo_enabled {
            registry.register(Echo);
        }
        registry.register(Image { bedrock: bedrock.clone() });
        registry.register(WifiQr);
        registry
    }

    pub fn register(&mut self, kind: impl JobKind + 'static) {
        self.kinds.insert(kind.name(), Arc::new(kind));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn JobKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}

impl std::fmt::Debug for KindRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Reads an optional non-negative integer field of an input object, at most `max`.
pub(crate) fn optional_uint(input: &Value, field: &str, max: u64) -> Result<Option<u64>, InputError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(InputError::new(format!("input.{field}"), format!("must be an integer from 0 to {max}"))),
        },
    }
}

/// Rejects fields a kind does not know, naming the first (a typo would otherwise be silently ignored).
pub(crate) fn check_fields(input: &Value, known: &[&str]) -> Result<(), InputError> {
    let object = input.as_object().ok_or_else(|| InputError::new("input", "must be a JSON object"))?;
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => {
            Err(InputError::new(format!("input.{unknown}"), format!("unknown field; known: {}", known.join(", "))))
        }
        None => Ok(()),
    }
}

pub(crate) fn optional_string(input: &Value, field: &str) -> Result<Option<String>, InputError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(InputError::new(format!("input.{field}"), "must be a string")),
    }
}

pub(crate) fn optional_bool(input: &Value, field: &str) -> Result<Option<bool>, InputError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(InputError::new(format!("input.{field}"), "must be true or false")),
    }
}
