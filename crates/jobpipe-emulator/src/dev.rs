//! `jobpipe dev`: the whole pipeline on one machine. Builds the functions, starts the local engines
//! (DynamoDB Local and moto; or uses `AWS_ENDPOINT_URL`), creates what `template.yaml` declares, runs every function through the local
//! Runtime API, and wires the template's event sources and APIs to them (`DevStack`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::aws::{ACCOUNT, Endpoints, Engines, LocalAws, REGION};
use crate::dev_key::{DEV_JWKS_PATH, dev_token};
use crate::faults::FaultProxy;
use crate::functions::local_sqs_concurrency;
use crate::gateway::{Cors, DevHelpers, Gateway, GatewayAccess, HttpRoute, SocketRoute};
use crate::iam::{Iam, access_key};
use crate::resources::Created;
use crate::runtime::Function;
use crate::setup::build;
use crate::sources::{SqsMapping, StreamMapping, run_schedule};
use crate::template::{EventSpec, Resolver, Template};

#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The repository root (template.yaml, web/, infra/).
    pub root: PathBuf,
    /// The template the stack is made from: the root's `template.yaml`, or `JOBPIPE_TEMPLATE` (the IAM
    /// mutation run points it at a copy with one statement removed).
    pub template: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    /// Use these AWS endpoints instead of starting the local engines.
    pub endpoints: Option<Endpoints>,
    /// Resource names start with this (unique per stack when sharing an endpoint).
    pub prefix: String,
    /// Build the function binaries first (`cargo build`).
    pub build: bool,
    /// Build and run the release profile (what is deployed; benchmarks use it).
    pub release: bool,
    /// Where the binaries are (`<target>/debug`, or `<target>/release` with `release`).
    pub binaries: PathBuf,
    /// Overrides the schedule of scheduled functions (tests make the reconciler run often).
    pub schedule_override: Option<std::time::Duration>,
    /// Extra environment for every function.
    pub extra_env: BTreeMap<String, String>,
    /// Overrides every function's timeout (fault runs use short ones so killed work is retried soon).
    pub function_timeout: Option<std::time::Duration>,
    /// Overrides the visibility timeout of every queue that has a dead-letter queue.
    pub queue_visibility: Option<std::time::Duration>,
    /// Also receives every line the functions log, as printed (`[Function#n] line`): tests read it.
    pub log_tap: Option<mpsc::UnboundedSender<String>>,
    /// Template parameters to set (`CorsAllowedOrigin`, say), over the local defaults.
    pub parameters: BTreeMap<String, String>,
    /// How far global secondary indexes lag behind writes, as on AWS, where they are eventually
    /// consistent (`index_lag`); none by default.
    pub index_lag: Option<std::time::Duration>,
}

impl DevOptions {
    /// Runs the release builds instead of the debug ones.
    pub fn release(mut self) -> DevOptions {
        self.release = true;
        self.binaries = self.binaries.with_file_name("release");
        self
    }

    pub fn new(root: PathBuf) -> DevOptions {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let template =
            std::env::var_os("JOBPIPE_TEMPLATE").map(PathBuf::from).unwrap_or_else(|| root.join("template.yaml"));
        DevOptions {
            template,
            root,
            port: 3000,
            endpoints: Endpoints::from_env(),
            prefix: "jobpipe-local".into(),
            build: true,
            release: false,
            binaries: target.join("debug"),
            schedule_override: None,
            extra_env: BTreeMap::new(),
            function_timeout: None,
            queue_visibility: None,
            log_tap: None,
            parameters: BTreeMap::new(),
            index_lag: None,
        }
    }
}

/// A running local stack. Dropping it stops the functions and the engines it started.
pub struct DevStack {
    pub address: SocketAddr,
    /// Where the stack's AWS calls go: its AWS proxy, which judges them by the callers' roles.
    pub endpoints: Endpoints,
    /// The proxy every AWS call of the stack goes through (tests script faults and hooks on it).
    pub proxy: Arc<FaultProxy>,
    /// The functions' roles, as the proxy and the gateway judge calls by them.
    pub iam: Arc<Iam>,
    pub created: Created,
    pub functions: HashMap<String, Function>,
    pub gateway: Arc<Gateway>,
    tasks: Vec<JoinHandle<()>>,
    engines: Option<Engines>,
}

impl DevStack {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn websocket_url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    /// A token for `sub`, as `POST /dev/token` hands out.
    pub fn token(&self, sub: &str) -> String {
        dev_token(sub)
    }

    pub async fn start(options: DevOptions) -> anyhow::Result<DevStack> {
        let template = Template::load(&options.template)?;
        let mut functions = template.functions()?;
        if let Some(timeout) = options.function_timeout {
            for function in &mut functions {
                function.timeout = timeout;
            }
        }
        if options.build {
            build(&options.root, &functions, options.release)?;
        }

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", options.port))?;
        let address = listener.local_addr()?;
        let base_url = format!("http://{address}");
        let (endpoints, engines) = match options.endpoints.clone() {
            Some(endpoints) => (endpoints, None),
            None => {
                let engines = crate::aws::start_engines(&options.root)?;
                (engines.endpoints.clone(), Some(engines))
            }
        };
        let mut tasks = Vec::new();
        // Every AWS call goes through the stack's proxy: it judges calls by the callers' roles, and with
        // an index lag holds fresh writes out of index reads from the tables' creation on (it learns
        // their keys from it).
        let proxy = FaultProxy::new(&endpoints, 0.0, 0.0);
        if let Some(lag) = options.index_lag {
            proxy.set_index_lag(lag);
        }
        let (url, serving) = proxy.serve().await.context("serving the AWS proxy")?;
        tasks.push(serving);
        let endpoints = Endpoints::one(url);
        // The gateway serves the dev JWKS here, so the key server of its own is dropped.
        let LocalAws { endpoints, clients, mut resolver, created, .. } =
            LocalAws::start(&options.root, &template, Some(endpoints), &options.prefix).await?;
        for (name, value) in &options.parameters {
            resolver.set(name, value);
        }
        let cors = template.http_api_cors().map(|spec| cors(&spec, &resolver)).transpose()?;
        let iam = Arc::new(Iam::from_template(&functions, &resolver).context("building the functions' roles")?);
        proxy.set_iam(iam.clone());
        let websocket_stage_arn = format!(
            "arn:aws:execute-api:{REGION}:{ACCOUNT}:{}/{}",
            resolver.get("WebSocketApi").unwrap_or("WebSocketApi"),
            resolver.get("Stage").unwrap_or("local"),
        );

        let (log, mut lines) = mpsc::unbounded_channel::<(String, String)>();
        let tap = options.log_tap.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((label, line)) = lines.recv().await {
                let line = format!("[{label}] {line}");
                println!("{line}");
                if let Some(tap) = &tap {
                    let _ = tap.send(line);
                }
            }
        }));

        if let Some(visibility) = options.queue_visibility {
            for (id, props) in template.resources("AWS::SQS::Queue") {
                if crate::template::get(props, "RedrivePolicy").is_some() {
                    clients
                        .sqs
                        .set_queue_attributes()
                        .queue_url(&created.queues[&id].0)
                        .attributes(
                            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                            visibility.as_secs().to_string(),
                        )
                        .send()
                        .await
                        .with_context(|| format!("setting the visibility timeout of {id}"))?;
                }
            }
        }
        let local = LocalAws {
            endpoints: endpoints.clone(),
            engines: None,
            clients,
            resolver,
            created,
            jwks_url: format!("{base_url}{DEV_JWKS_PATH}"),
            _dev_keys: None,
        };
        let mut running = HashMap::new();
        for spec in &functions {
            let process = local.function_process(spec, &options.binaries, &base_url, &options.extra_env)?;
            running.insert(spec.logical_id.clone(), Function::start(process, log.clone()).await?);
        }
        let LocalAws { created, .. } = local;

        let mut http_routes = Vec::new();
        for spec in &functions {
            let function = running[&spec.logical_id].clone();
            // The mappings poll with the function's role, as Lambda's do.
            let as_function = crate::aws::sdk_config_as(&endpoints.aws, &access_key(&spec.logical_id));
            for event in &spec.events {
                match event.clone() {
                    EventSpec::HttpApi { method, path, authorized } => {
                        http_routes.push(HttpRoute { method, path, function: function.clone(), authorized })
                    }
                    EventSpec::Sqs { queue, batch_size, batching_window, max_concurrency, report_failures } => {
                        let (url, arn) =
                            created.queues.get(&queue).cloned().with_context(|| format!("queue {queue}"))?;
                        mapping_allowed(&iam, &spec.logical_id, SQS_MAPPING_ACTIONS, &arn)?;
                        let mapping = SqsMapping {
                            batch_size,
                            batching_window,
                            report_failures,
                            ..SqsMapping::new(aws_sdk_sqs::Client::new(&as_function), url, arn)
                        };
                        tasks.push(tokio::spawn(mapping.run(function.clone(), local_sqs_concurrency(max_concurrency))));
                    }
                    EventSpec::DynamoDb { table, batch_size, report_failures, max_retries, filters } => {
                        let stream_arn =
                            created.stream_arns.get(&table).cloned().with_context(|| format!("stream of {table}"))?;
                        mapping_allowed(&iam, &spec.logical_id, STREAM_MAPPING_ACTIONS, &stream_arn)?;
                        let mapping = StreamMapping {
                            streams: aws_sdk_dynamodbstreams::Client::new(&as_function),
                            stream_arn,
                            batch_size,
                            report_failures,
                            max_retries: max_retries.unwrap_or(10),
                            filters,
                        };
                        let iterators = mapping
                            .enable()
                            .await
                            .map_err(|error| anyhow::anyhow!("enabling the stream mapping of {table}: {error}"))?;
                        tasks.push(tokio::spawn(mapping.run(function.clone(), iterators)));
                    }
                    EventSpec::Schedule { every } => {
                        let every = options.schedule_override.unwrap_or(every);
                        tasks.push(tokio::spawn(run_schedule(function.clone(), spec.logical_id.clone(), every)));
                    }
                }
            }
        }
        // Longer, literal paths first, so `/jobs/{id}` never shadows a fixed route.
        http_routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));

        let socket_routes = template
            .websocket_routes()?
            .into_iter()
            .map(|route| {
                let function =
                    running.get(&route.function).cloned().with_context(|| format!("function {}", route.function))?;
                let replies = route.route_key == "$default" || route.route_key.starts_with(|c: char| c != '$');
                Ok(SocketRoute { route_key: route.route_key, function, replies })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let dev = Arc::new(LocalDev {
            endpoints: endpoints.clone(),
            base_url: base_url.clone(),
            created: created.clone(),
            functions: functions.iter().map(|f| f.logical_id.clone()).collect(),
        });
        let access = GatewayAccess { iam: iam.clone(), websocket_stage_arn };
        let gateway = Gateway::new(http_routes, cors, socket_routes, options.root.join("web"), dev, Some(access));
        let app = gateway.router().into_make_service_with_connect_info::<SocketAddr>();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "local gateway stopped");
            }
        }));

        Ok(DevStack { address, endpoints, proxy, iam, created, functions: running, gateway, tasks, engines })
    }

    /// Stops every event source and function process (waiting until each has exited), then the engines.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for function in self.functions.values() {
            function.stop_and_wait().await;
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for function in self.functions.values() {
            function.stop();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        drop(self.engines.take());
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What Lambda checks a function's role may do on an SQS queue before it creates a mapping of it.
const SQS_MAPPING_ACTIONS: &[&str] = &["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"];
/// What Lambda checks a function's role may do on a DynamoDB stream before it creates a mapping of it
/// (`ListStreams` is granted on `*`).
const STREAM_MAPPING_ACTIONS: &[&str] =
    &["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"];

/// Refuses an event source mapping whose function's role lacks what Lambda requires of it, as
/// `CreateEventSourceMapping` (and so the deployment) fails on AWS.
fn mapping_allowed(iam: &Iam, function: &str, actions: &[&str], source_arn: &str) -> anyhow::Result<()> {
    let key = access_key(function);
    for action in actions {
        let resource = if *action == "dynamodb:ListStreams" { "*" } else { source_arn };
        if iam.judge(Some(&key), &[(action.to_string(), resource.to_string())]) != crate::iam::Verdict::Allowed {
            anyhow::bail!(
                "InvalidParameterValueException: the event source mapping of {function} on {source_arn} cannot be created: the provided execution role does not have permissions to call {action} on {resource}"
            );
        }
    }
    Ok(())
}

struct LocalDev {
    endpoints: Endpoints,
    base_url: String,
    created: Created,
    functions: Vec<String>,
}

impl DevHelpers for LocalDev {
    fn token(&self, sub: &str) -> String {
        dev_token(sub)
    }

    fn resources(&self) -> Value {
        let queues: serde_json::Map<String, Value> =
            self.created.queues.iter().map(|(id, (url, arn))| (id.clone(), json!({"url": url, "arn": arn}))).collect();
        json!({
            "endpointUrl": self.endpoints.aws,
            "dynamodbEndpointUrl": self.endpoints.dynamodb,
            "region": REGION,
            "httpApiUrl": self.base_url,
            "webSocketUrl": format!("{}/ws", self.base_url.replacen("http", "ws", 1)),
            "tables": self.created.tables,
            "queues": queues,
            "buckets": self.created.buckets,
            "functions": self.functions,
        })
    }
}

/// The HTTP API's CORS configuration with its parameters resolved.
fn cors(spec: &crate::template::CorsSpec, resolver: &Resolver) -> anyhow::Result<Cors> {
    Ok(Cors {
        allow_origins: spec
            .allow_origins
            .iter()
            .map(|origin| resolver.resolve(origin))
            .collect::<Result<_, _>>()
            .context("resolving the HTTP API's CorsConfiguration.AllowOrigins")?,
        allow_methods: spec.allow_methods.clone(),
        allow_headers: spec.allow_headers.clone(),
        expose_headers: spec.expose_headers.clone(),
        max_age: spec.max_age,
        allow_credentials: spec.allow_credentials,
    })
}
