//! `jobpipe dev`: the whole pipeline on one machine. Builds the functions, starts moto (or uses
//! `AWS_ENDPOINT_URL`), creates what `template.yaml` declares, runs every function through the local
//! Runtime API, and wires the template's event sources and APIs to them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use jobpipe_core::auth::RsaSigner;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::gateway::{Cors, DevHelpers, Gateway, HttpRoute, SocketRoute};
use crate::resources::{self, Clients, Created, REGION};
use crate::runtime::{Function, FunctionProcess};
use crate::sources::{SqsMapping, StreamMapping, run_schedule};
use crate::template::{EventSpec, FunctionSpec, Resolver, Template};

/// The RSA key the local stack signs dev tokens with. It is committed on purpose and is NOT FOR
/// PRODUCTION: anyone can read it, so anyone can sign tokens with it. Only the local stack trusts it,
/// through the JWKS it serves at `DEV_JWKS_PATH`; a deployed stack trusts its `JwtIssuer`'s keys only.
const DEV_JWT_KEY_PEM: &str = include_str!("dev-jwt-key.NOT-FOR-PRODUCTION.pem");
/// The dev key's `kid`, which says what it is in every dev token's header.
pub const DEV_JWT_KID: &str = "jobpipe-local-dev-NOT-FOR-PRODUCTION";
/// The `iss` of dev tokens. Fixed, not the gateway's URL, so the tokens in `events/` stay valid on any
/// port; the functions are pointed at the dev JWKS with `JWT_JWKS_URL`.
pub const DEV_ISSUER: &str = "https://jobpipe.local/dev";
pub const DEV_AUDIENCE: &str = "jobpipe-local";
/// Where the gateway (or, without one, `DevKeyServer`) serves the dev key's JWKS.
pub const DEV_JWKS_PATH: &str = "/dev/jwks.json";

#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The repository root (template.yaml, web/, infra/).
    pub root: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    /// Use this AWS endpoint instead of starting moto.
    pub endpoint: Option<String>,
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
        DevOptions {
            root,
            port: 3000,
            endpoint: std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty()),
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
        }
    }
}

/// The local AWS side: moto (or a given endpoint) with the template's resources created in it.
pub struct LocalAws {
    pub endpoint: String,
    pub moto: Option<Child>,
    pub shared: aws_config::SdkConfig,
    pub clients: Clients,
    pub resolver: Resolver,
    pub created: Created,
    /// The dev key's JWKS, which the functions that verify tokens fetch: the gateway's in `jobpipe dev`,
    /// otherwise (`invoke`, the bench) `dev_keys`'s.
    pub jwks_url: String,
    /// Held so the key server keeps serving for as long as this stack lives.
    _dev_keys: Option<DevKeyServer>,
}

impl LocalAws {
    pub async fn start(
        root: &Path,
        template: &Template,
        endpoint: Option<String>,
        prefix: &str,
    ) -> anyhow::Result<LocalAws> {
        let (endpoint, moto) = match endpoint {
            Some(endpoint) => (endpoint, None),
            None => {
                let (endpoint, child) = start_moto(root)?;
                (endpoint, Some(child))
            }
        };
        let shared = sdk_config(&endpoint);
        let clients = Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build(),
            ),
        };
        let mut resolver = Resolver::default();
        let parameters = HashMap::from([
            ("JwtIssuer".to_string(), DEV_ISSUER.to_string()),
            ("JwtAudience".to_string(), DEV_AUDIENCE.to_string()),
            ("Stage".to_string(), "local".to_string()),
            ("EchoKindEnabled".to_string(), "true".to_string()),
        ]);
        resources::parameters(template, &parameters, &mut resolver);
        let created = resources::create_all(template, &clients, prefix, &mut resolver).await?;
        // Everything else (APIs, functions, log groups) resolves to a local placeholder.
        for kind in
            ["AWS::Serverless::Function", "AWS::Serverless::HttpApi", "AWS::ApiGatewayV2::Api", "AWS::Logs::LogGroup"]
        {
            for (id, _) in template.resources(kind) {
                if resolver.get(&id).is_none() {
                    resolver.set(&id, format!("{prefix}-{id}"));
                    resolver.set(format!("{id}.Arn"), format!("arn:aws:local:{REGION}:{}:{id}", resources::ACCOUNT));
                }
            }
        }
        let dev_keys = DevKeyServer::start().await?;
        Ok(LocalAws {
            endpoint,
            moto,
            shared,
            clients,
            resolver,
            created,
            jwks_url: dev_keys.url.clone(),
            _dev_keys: Some(dev_keys),
        })
    }

    /// The process description of one of the template's functions, environment resolved locally.
    pub fn function_process(
        &self,
        spec: &FunctionSpec,
        binaries: &Path,
        base_url: &str,
        extra_env: &BTreeMap<String, String>,
    ) -> anyhow::Result<FunctionProcess> {
        let process = FunctionProcess {
            name: spec.logical_id.clone(),
            binary: binaries.join(&spec.binary),
            environment: environment(spec, &self.resolver, &self.endpoint, base_url, &self.jwks_url, extra_env)?,
            timeout: spec.timeout,
            memory_mb: spec.memory_mb,
            instances: instances(spec),
        };
        if !process.binary.exists() {
            bail!("{} is not built: {:?} is missing", spec.logical_id, process.binary);
        }
        Ok(process)
    }
}

/// A running local stack. Dropping it stops the functions and moto.
pub struct DevStack {
    pub address: SocketAddr,
    pub endpoint: String,
    pub created: Created,
    pub functions: HashMap<String, Function>,
    pub gateway: Arc<Gateway>,
    tasks: Vec<JoinHandle<()>>,
    moto: Option<Child>,
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
        let template = Template::load(&options.root.join("template.yaml"))?;
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
        // The gateway serves the dev JWKS here, so the key server of its own is dropped.
        let LocalAws { endpoint, moto, shared, clients, mut resolver, created, .. } =
            LocalAws::start(&options.root, &template, options.endpoint.clone(), &options.prefix).await?;
        for (name, value) in &options.parameters {
            resolver.set(name, value);
        }
        let cors = template.http_api_cors().map(|spec| cors(&spec, &resolver)).transpose()?;

        let (log, mut lines) = mpsc::unbounded_channel::<(String, String)>();
        let tap = options.log_tap.clone();
        let mut tasks = vec![tokio::spawn(async move {
            while let Some((label, line)) = lines.recv().await {
                let line = format!("[{label}] {line}");
                println!("{line}");
                if let Some(tap) = &tap {
                    let _ = tap.send(line);
                }
            }
        })];

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
            endpoint: endpoint.clone(),
            moto: None,
            shared: shared.clone(),
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
        let LocalAws { clients, created, .. } = local;

        let mut http_routes = Vec::new();
        let streams = aws_sdk_dynamodbstreams::Client::new(&shared);
        for spec in &functions {
            let function = running[&spec.logical_id].clone();
            for event in &spec.events {
                match event.clone() {
                    EventSpec::HttpApi { method, path, authorized } => {
                        http_routes.push(HttpRoute { method, path, function: function.clone(), authorized })
                    }
                    EventSpec::Sqs { queue, batch_size, batching_window, max_concurrency, report_failures } => {
                        let (url, arn) =
                            created.queues.get(&queue).cloned().with_context(|| format!("queue {queue}"))?;
                        let mapping = SqsMapping {
                            sqs: clients.sqs.clone(),
                            queue_url: url,
                            queue_arn: arn,
                            batch_size,
                            batching_window,
                            report_failures,
                        };
                        tasks.push(tokio::spawn(mapping.run(function.clone(), local_sqs_concurrency(max_concurrency))));
                    }
                    EventSpec::DynamoDb { table, batch_size, report_failures, max_retries } => {
                        let stream_arn =
                            created.stream_arns.get(&table).cloned().with_context(|| format!("stream of {table}"))?;
                        let mapping = StreamMapping {
                            streams: streams.clone(),
                            stream_arn,
                            batch_size,
                            report_failures,
                            max_retries: max_retries.unwrap_or(10),
                        };
                        tasks.push(tokio::spawn(mapping.run(function.clone())));
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
            endpoint: endpoint.clone(),
            base_url: base_url.clone(),
            created: created.clone(),
            functions: functions.iter().map(|f| f.logical_id.clone()).collect(),
        });
        let gateway = Gateway::new(http_routes, cors, socket_routes, options.root.join("web"), dev);
        let app = gateway.router().into_make_service_with_connect_info::<SocketAddr>();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "local gateway stopped");
            }
        }));

        Ok(DevStack { address, endpoint, created, functions: running, gateway, tasks, moto })
    }

    /// Stops every function process, every event source, and moto.
    pub async fn stop(mut self) {
        self.shutdown();
        // Give supervisors a moment to kill their processes.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    fn shutdown(&mut self) {
        for function in self.functions.values() {
            function.stop();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(mut moto) = self.moto.take() {
            drop(moto.stdin.take());
            let _ = moto.wait();
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct LocalDev {
    endpoint: String,
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
            "endpointUrl": self.endpoint,
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

/// The dev key, which signs the local stack's tokens.
pub fn dev_signer() -> &'static RsaSigner {
    static SIGNER: OnceLock<RsaSigner> = OnceLock::new();
    SIGNER.get_or_init(|| RsaSigner::from_pem(DEV_JWT_KID, DEV_JWT_KEY_PEM.as_bytes()).expect("the dev key is valid"))
}

/// The JWKS the local functions verify dev tokens with.
pub fn dev_jwks() -> Value {
    jobpipe_core::auth::jwks(&[dev_signer()])
}

/// What `POST /dev/token` hands out for `sub`: shaped like a Cognito access token (`client_id` and
/// `token_use`, no `aud`), the tokens users of a deployed stack have, valid for 12 hours.
pub fn dev_claims(sub: &str) -> Value {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    json!({
        "sub": sub,
        "iss": DEV_ISSUER,
        "client_id": DEV_AUDIENCE,
        "token_use": "access",
        "scope": "openid",
        "iat": now,
        "exp": now + 12 * 60 * 60,
    })
}

pub fn dev_token(sub: &str) -> String {
    dev_signer().sign(&dev_claims(sub))
}

/// Serves the dev key's JWKS at `DEV_JWKS_PATH` on a port of its own, for functions run without the
/// gateway (`jobpipe invoke`, the bench, a `cargo lambda watch` environment). Stops when dropped.
pub struct DevKeyServer {
    pub url: String,
    task: JoinHandle<()>,
}

impl DevKeyServer {
    pub async fn start() -> anyhow::Result<DevKeyServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("binding the dev key server")?;
        let url = format!("http://{}{DEV_JWKS_PATH}", listener.local_addr()?);
        let app = axum::Router::new().route(DEV_JWKS_PATH, axum::routing::get(|| async { axum::Json(dev_jwks()) }));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the dev key server stopped");
            }
        });
        Ok(DevKeyServer { url, task })
    }
}

impl Drop for DevKeyServer {
    fn drop(&mut self) {
        self.task.abort();
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

/// How many execution environments a function gets locally: as many as its event sources invoke it at
/// once (each SQS mapping's concurrency, one per stream or schedule, a few for the HTTP API), so an
/// invocation never waits behind another, as on Lambda, which starts environments as they are needed.
fn instances(spec: &FunctionSpec) -> usize {
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
fn local_sqs_concurrency(max_concurrency: usize) -> usize {
    max_concurrency.clamp(1, 4)
}

/// The function's environment as the template sets it, resolved to local resources, plus what makes
/// it work locally: the endpoint, dummy credentials, and the dev key's JWKS.
fn environment(
    spec: &FunctionSpec,
    resolver: &Resolver,
    endpoint: &str,
    base_url: &str,
    jwks_url: &str,
    extra: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (name, value) in &spec.environment {
        let resolved = resolver.resolve(value).with_context(|| format!("{}: environment {name}", spec.logical_id))?;
        env.insert(name.clone(), resolved);
    }
    let local = [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("ECHO_KIND_ENABLED", "true"),
        ("WEBSOCKET_ENDPOINT", base_url),
        // Bedrock is served by the local stand-in on the gateway's port.
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", base_url),
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

fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("local", "local", None, None, "jobpipe-dev"),
        ))
        .build()
}

/// Builds the template's function binaries (debug profile).
pub fn build(root: &Path, functions: &[FunctionSpec], release: bool) -> anyhow::Result<()> {
    let packages: Vec<&str> = functions.iter().map(|f| f.binary.as_str()).collect();
    build_packages(root, &packages, release)
}

/// `cargo build` of these packages (debug, or release as deployed).
pub fn build_packages(root: &Path, packages: &[&str], release: bool) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).arg("build").arg("--quiet");
    if release {
        command.arg("--release");
    }
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("building {packages:?} failed ({status})");
    }
    Ok(())
}

/// Starts moto from the repository's venv (installing it first if needed) on a free port. It exits
/// when the returned child's stdin closes.
/// Runs `cargo xtask <task>` (the one place that installs the project's tools).
pub fn xtask(root: &Path, task: &str) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["xtask", task])
        .status()
        .with_context(|| format!("running cargo xtask {task}"))?;
    if !status.success() {
        bail!("cargo xtask {task} failed ({status})");
    }
    Ok(())
}

pub fn start_moto(root: &Path) -> anyhow::Result<(String, Child)> {
    // Installs `.venv` if it is missing, and again when `infra/requirements.txt` changed since.
    xtask(root, "setup-python")?;
    let python = root.join(".venv/bin/python");
    let mut child = Command::new(&python)
        .arg(root.join("infra/moto_server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("moto stdout")?).read_line(&mut line)?;
    let port = line.strip_prefix("READY ").map(str::trim).with_context(|| format!("moto did not start: {line:?}"))?;
    Ok((format!("http://127.0.0.1:{port}"), child))
}
