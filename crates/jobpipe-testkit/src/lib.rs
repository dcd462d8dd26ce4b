//! Test harness: one moto server per test process, tokens signed by a test issuer that publishes its
//! JWKS, fresh AWS resources per test created from template.yaml (`TestStack`, with the local stack's SQS
//! event source mapping for handlers that tests call directly), the local stack itself on those engines
//! (`local_stack`), and the Bedrock stand-in (`BedrockServer`).

mod bedrock;
pub mod local_stack;
mod stack;

pub use bedrock::BedrockServer;
pub use stack::{StackOptions, TestStack, receive_batch};

use std::path::PathBuf;
use std::sync::OnceLock;

use jobpipe_core::config::AwsClients;
use jobpipe_emulator::aws::Endpoints;
pub use jobpipe_emulator::faults::{FaultProxy, ScriptedFault};
use local_engines::Engine;

/// The app client id test tokens are for (`aud`, or `client_id` in Cognito-style access tokens).
pub const TEST_AUDIENCE: &str = "jobpipe-test";

/// The engines the tests use: started by the test command for the whole run, or by this process.
struct TestEngines {
    endpoints: Endpoints,
    // Held so the engines keep running: they exit when this process does.
    _engines: Vec<Engine>,
}

/// The repository checkout (fixtures in `events/`, the venv in `.venv/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the tests' AWS calls go: `JOBPIPE_TEST_AWS_ENDPOINT` (moto) and `JOBPIPE_TEST_DYNAMODB_ENDPOINT`
/// (DynamoDB Local) when the test command started the engines for the whole run, otherwise engines of
/// this process's own on free ports.
pub fn endpoints() -> &'static Endpoints {
    static ENGINES: OnceLock<TestEngines> = OnceLock::new();
    &ENGINES
        .get_or_init(|| {
            if let (Ok(aws), Ok(dynamodb)) =
                (std::env::var("JOBPIPE_TEST_AWS_ENDPOINT"), std::env::var("JOBPIPE_TEST_DYNAMODB_ENDPOINT"))
            {
                return TestEngines { endpoints: Endpoints { aws, dynamodb }, _engines: Vec::new() };
            }
            let (engines, endpoints) = own_engines();
            TestEngines { endpoints, _engines: engines }
        })
        .endpoints
}

/// Engines of the caller's own (moto and DynamoDB Local, on free ports), running while the returned
/// engines are held: for a test whose load would slow every other test sharing the run's engines, or be
/// slowed by what they left behind.
pub fn own_engines() -> (Vec<Engine>, Endpoints) {
    let venv_python = local_engines::venv_python(&repo_root());
    let python = std::env::var_os("JOBPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| if venv_python.exists() { venv_python } else { "python3".into() });
    let start = |engine: Result<Engine, local_engines::EngineError>| engine.unwrap_or_else(|e| panic!("{e}"));
    let moto = start(Engine::moto(&repo_root(), &python));
    let dynamodb_local = start(Engine::dynamodb_local(&repo_root(), &python));
    let endpoints = Endpoints { aws: moto.endpoint().to_string(), dynamodb: dynamodb_local.endpoint().to_string() };
    (vec![moto, dynamodb_local], endpoints)
}

/// moto's endpoint (every service but DynamoDB).
pub fn moto_endpoint() -> &'static str {
    &endpoints().aws
}

/// SDK configuration for moto with dummy credentials (clients of every service but DynamoDB; those
/// come from `clients()`).
pub fn sdk_config() -> aws_config::SdkConfig {
    jobpipe_emulator::aws::sdk_config(moto_endpoint())
}

/// The functions' clients, reaching the tests' engines.
pub fn clients() -> AwsClients {
    jobpipe_emulator::aws::aws_clients(endpoints())
}

/// A fault proxy in front of the engines, and clients that reach them through it: script a fault on one
/// call (`FaultProxy::script`) to see what the code under test makes of it. It serves until the test ends.
pub async fn through_fault_proxy() -> (std::sync::Arc<FaultProxy>, AwsClients) {
    let proxy = FaultProxy::new(endpoints(), 0.0, 0.0);
    let (url, _serving) = proxy.serve().await.expect("serving the fault proxy");
    (proxy, jobpipe_emulator::aws::aws_clients(&Endpoints::one(url)))
}

/// The issuer `TestStack::config` trusts: a server of this process that publishes the signing key's
/// JWKS at `{issuer}/.well-known/jwks.json`, as Cognito does, so tests verify tokens the deployed way.
/// It runs on a thread of its own, so it outlives each test's runtime.
pub fn test_issuer() -> &'static str {
    static ISSUER: OnceLock<String> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the test issuer");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let issuer = format!("http://{}/issuer", listener.local_addr().expect("the test issuer's address"));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let jwks = jobpipe_emulator::dev_key::dev_jwks();
                let app = axum::Router::new().route(
                    "/issuer/.well-known/jwks.json",
                    axum::routing::get(move || async move { axum::Json(jwks) }),
                );
                axum::serve(listener, app).await.expect("serving the test issuer's JWKS");
            })
        });
        issuer
    })
}

/// What `token` signs for `sub`: an ID-token shape (`aud`), valid for ten minutes. Tests edit it.
pub fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "iss": test_issuer(),
        "aud": TEST_AUDIENCE,
        "iat": now_secs(),
        "exp": now_secs() + 600,
    })
}

/// A token for `sub`, trusted by `TestStack::config`.
pub fn token(sub: &str) -> String {
    token_with(&claims(sub))
}

/// A token carrying exactly these claims, signed by the test issuer's key (the local stack's dev key).
pub fn token_with(claims: &serde_json::Value) -> String {
    jobpipe_emulator::dev_key::dev_signer().sign(claims)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
