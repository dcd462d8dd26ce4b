//! The template's functions as local processes: the environment each gets (the template's, resolved to
//! local resources, plus the one list of what differs locally) and how many execution environments it
//! needs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use crate::aws::{Endpoints, LocalAws, REGION};
use crate::dev_key::{DEV_AUDIENCE, DEV_ISSUER};
use crate::runtime::FunctionProcess;
use crate::template::{EventSpec, FunctionSpec, Resolver};

impl LocalAws {
    /// The process description of one of the template's functions, environment resolved locally.
    pub fn function_process(
        &self,
        spec: &FunctionSpec,
        binaries: &Path,
        base_url: &str,
        extra_env: &BTreeMap<String, String>,
    ) -> anyhow::Result<FunctionProcess> {
        let process = FunctionProcess {
            environment: environment(spec, &self.resolver, &self.endpoints, base_url, &self.jwks_url, extra_env)?,
            timeout: spec.timeout,
            memory_mb: spec.memory_mb,
            instances: instances(spec),
            ..FunctionProcess::new(&spec.logical_id, binaries.join(&spec.binary))
        };
        if !process.program.exists() {
            bail!("{} is not built: {:?} is missing", spec.logical_id, process.program);
        }
        Ok(process)
    }
}

/// How many execution environments a function gets locally: as many as its event sources invoke it at
/// once (each SQS mapping's concurrency, one per stream or schedule, a few for the HTTP API), so an
/// invocation never waits behind another, as on Lambda, which starts environments as they are needed.
pub fn instances(spec: &FunctionSpec) -> usize {
    let mut total = 0;
    let mut http = false;
    for event in &spec.events {
        match event {
            EventSpec::Sqs { max_concurrency, .. } => total += local_sqs_concurrency(*max_concurrency),
            EventSpec::HttpApi { .. } => http = true,
            EventSpec::DynamoDb { .. } | EventSpec::Schedule { .. } => total += 1,
        }
    }
    if http {
        total += 4;
    }
    // Functions without event sources (WebSocket routes) get two.
    total.max(2)
}

/// An SQS mapping's batches in flight locally: its `MaximumConcurrency`, at most 4 on a small machine.
pub fn local_sqs_concurrency(max_concurrency: usize) -> usize {
    max_concurrency.clamp(1, 4)
}

/// The function's environment as the template sets it, resolved to local resources, plus what makes
/// it work locally: the endpoints, its role's access key, and the dev key's JWKS. This is the one list of
/// what the local stack changes about a function's environment.
fn environment(
    spec: &FunctionSpec,
    resolver: &Resolver,
    endpoints: &Endpoints,
    base_url: &str,
    jwks_url: &str,
    extra: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    let access_key = crate::iam::access_key(&spec.logical_id);
    for (name, value) in &spec.environment {
        let resolved = resolver.resolve(value).with_context(|| format!("{}: environment {name}", spec.logical_id))?;
        env.insert(name.clone(), resolved);
    }
    let local = [
        ("AWS_ENDPOINT_URL", endpoints.aws.as_str()),
        // DynamoDB and its streams are served by DynamoDB Local (the SDK reads these per service).
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoints.dynamodb.as_str()),
        ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", endpoints.dynamodb.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        // The function's own role: where the local stack judges calls, it allows what the role does.
        ("AWS_ACCESS_KEY_ID", access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("ECHO_KIND_ENABLED", "true"),
        ("WEBSOCKET_ENDPOINT", base_url),
        // Bedrock is served by the local stand-in on the gateway's port.
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", base_url),
        // Webhooks may go to this machine (plain http to loopback), so tests and `jobpipe dev` users can
        // receive them; deployed, only https to public addresses.
        ("WEBHOOK_ALLOW_LOOPBACK", "true"),
    ];
    for (name, value) in local {
        env.insert(name.to_string(), value.to_string());
    }
    // Locally no API Gateway authorizer runs: the functions that authenticate callers verify tokens
    // as websocket-connect does when deployed, with the keys of a JWKS (the dev key's). Functions the
    // template gives no AUTH_MODE get none here either.
    if env.contains_key("AUTH_MODE") {
        for (name, value) in [
            ("AUTH_MODE", "jwt"),
            ("JWT_ISSUER", DEV_ISSUER),
            ("JWT_AUDIENCE", DEV_AUDIENCE),
            ("JWT_JWKS_URL", jwks_url),
        ] {
            env.insert(name.to_string(), value.to_string());
        }
    }
    env.insert("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    for (name, value) in extra {
        env.insert(name.clone(), value.clone());
    }
    Ok(env)
}
