//! `jobpipe invoke FUNCTION -e EVENT`: runs one function of the template once with an event file, like
//! `sam local invoke`, but without Docker: the real binary under the local Runtime API, against the local
//! engines, with its own role's permissions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::aws::{Endpoints, LocalAws};
use crate::dev::DevOptions;
use crate::faults::FaultProxy;
use crate::iam::Iam;
use crate::runtime::{Function, InvokeError};
use crate::setup::build;
use crate::template::Template;

#[derive(Debug, Clone)]
pub struct InvokeOptions {
    /// Build the function first.
    pub build: bool,
    /// Use these AWS endpoints instead of fresh local engines (default: `AWS_ENDPOINT_URL`).
    pub endpoints: Option<crate::aws::Endpoints>,
    /// Resource name prefix.
    pub prefix: String,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        InvokeOptions { build: true, endpoints: None, prefix: "jobpipe-invoke".into() }
    }
}

/// What the function answered, or its error as `{"errorType", "errorMessage"}` (as `sam local invoke`
/// prints it).
pub async fn invoke_once(root: &Path, function: &str, event: Value, options: InvokeOptions) -> anyhow::Result<Value> {
    let template = Template::load(&root.join("template.yaml"))?;
    let functions = template.functions()?;
    let spec = functions.iter().find(|f| f.logical_id == function || f.binary == function).with_context(|| {
        let names: Vec<_> = functions.iter().map(|f| f.logical_id.as_str()).collect();
        format!("no function {function:?} in template.yaml; there is {}", names.join(", "))
    })?;
    if options.build {
        build(root, std::slice::from_ref(spec), false)?;
    }
    let defaults = DevOptions::new(root.to_path_buf());
    let endpoints = options.endpoints.or(defaults.endpoints);
    let mut local = LocalAws::start(root, &template, endpoints, &options.prefix).await?;
    // The function's AWS calls go through a proxy that judges them by its role, as in `jobpipe dev`.
    let proxy = FaultProxy::new(&local.endpoints, 0.0, 0.0);
    proxy.set_iam(Arc::new(Iam::from_template(&functions, &local.resolver)?));
    let (proxy_url, serving) = proxy.serve().await?;
    local.endpoints = Endpoints::one(proxy_url);
    let mut process = local.function_process(spec, &defaults.binaries, "http://127.0.0.1:9", &BTreeMap::new())?;
    process.instances = 1;
    let (log, mut lines) = mpsc::unbounded_channel::<(String, String)>();
    // Function logs go to stderr, so stdout carries only the response.
    let printer = tokio::spawn(async move {
        while let Some((label, line)) = lines.recv().await {
            eprintln!("[{label}] {line}");
        }
    });
    let running = Function::start(process, log).await?;
    let result = running.invoke_json(&event).await;
    running.stop_and_wait().await;
    printer.abort();
    serving.abort();
    drop(local);
    match result {
        Ok(value) => Ok(value),
        Err(InvokeError::Function { error_type, message, .. }) => {
            Ok(serde_json::json!({"errorType": error_type, "errorMessage": message}))
        }
        Err(other) => Err(other.into()),
    }
}
