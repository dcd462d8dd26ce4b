//! The local AWS side: the engines that serve AWS APIs (Amazon's DynamoDB Local for DynamoDB and its
//! streams, moto for the rest; or endpoints the user gives, such as their own LocalStack), the SDK
//! configuration that reaches them, and the template's resources created in them (`LocalAws`).

use std::collections::HashMap;
use std::path::Path;

use jobpipe_core::config::AwsClients;
use local_engines::Engine;

use crate::dev_key::{DEV_AUDIENCE, DEV_ISSUER, DevKeyServer};
use crate::resources::{self, Clients, Created};
use crate::template::{Resolver, Template};

/// The Region every local resource lives in (and the ARNs say).
pub const REGION: &str = "us-east-1";
/// The account id of local ARNs (moto's default).
pub const ACCOUNT: &str = "123456789012";

/// Where local AWS calls go: DynamoDB and DynamoDB Streams to one endpoint (DynamoDB Local), every other
/// service to another (moto). The functions get them as `AWS_ENDPOINT_URL_DYNAMODB`,
/// `AWS_ENDPOINT_URL_DYNAMODB_STREAMS` and `AWS_ENDPOINT_URL`, which the SDK reads per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub aws: String,
    pub dynamodb: String,
}

impl Endpoints {
    /// One endpoint for every service (a LocalStack, or a proxy in front of both engines).
    pub fn one(url: impl Into<String>) -> Endpoints {
        let url = url.into();
        Endpoints { aws: url.clone(), dynamodb: url }
    }

    /// What the environment names: `AWS_ENDPOINT_URL`, and `AWS_ENDPOINT_URL_DYNAMODB` when it sends
    /// DynamoDB elsewhere; `None` without `AWS_ENDPOINT_URL` (the local stack then starts its engines).
    pub fn from_env() -> Option<Endpoints> {
        let aws = std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty())?;
        let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok().filter(|e| !e.is_empty());
        Some(Endpoints { dynamodb: dynamodb.unwrap_or_else(|| aws.clone()), aws })
    }
}

/// The clients the functions' code uses (`AwsClients`), reaching these endpoints.
pub fn aws_clients(endpoints: &Endpoints) -> AwsClients {
    let mut clients = AwsClients::from_sdk_config(&sdk_config(&endpoints.aws));
    clients.dynamodb = dynamodb_client(endpoints);
    clients
}

/// A DynamoDB client of these endpoints.
pub fn dynamodb_client(endpoints: &Endpoints) -> aws_sdk_dynamodb::Client {
    let shared = sdk_config(&endpoints.dynamodb);
    aws_sdk_dynamodb::Client::new(&shared)
}

/// A DynamoDB Streams client of these endpoints.
pub fn streams_client(endpoints: &Endpoints) -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config(&endpoints.dynamodb))
}

/// SDK configuration for a local endpoint: its URL, the local Region, and the local stack's own
/// credentials (`iam::ADMIN_ACCESS_KEY`, which may do anything). Every client the local stack, the tests
/// and the tools build for local engines starts from this.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    sdk_config_as(endpoint, crate::iam::ADMIN_ACCESS_KEY)
}

/// `sdk_config` with another access key: a function role's (`iam::access_key`), to call AWS as that
/// function does.
pub fn sdk_config_as(endpoint: &str, access_key: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new(access_key, "local", None, None, "jobpipe-local"),
        ))
        .build()
}

/// The clients the local stack itself uses to create resources (S3 path-style, as any hostname endpoint
/// needs).
pub fn clients(endpoints: &Endpoints) -> Clients {
    let shared = sdk_config(&endpoints.aws);
    Clients {
        dynamodb: dynamodb_client(endpoints),
        sqs: aws_sdk_sqs::Client::new(&shared),
        s3: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build()),
    }
}

/// The local engines, running: DynamoDB Local and moto, with where they serve. Dropping it stops them.
pub struct Engines {
    pub endpoints: Endpoints,
    pub dynamodb_local: Engine,
    pub moto: Engine,
}

/// Starts DynamoDB Local and moto from the checkout, installing or updating the pinned tools first
/// (`cargo xtask setup-engines`, which does nothing when they are current).
pub fn start_engines(root: &Path) -> anyhow::Result<Engines> {
    crate::setup::xtask(root, &["setup-engines"])?;
    let python = local_engines::venv_python(root);
    let (dynamodb_local, moto) = (Engine::dynamodb_local(root, &python)?, Engine::moto(root, &python)?);
    let endpoints = Endpoints { aws: moto.endpoint().to_string(), dynamodb: dynamodb_local.endpoint().to_string() };
    Ok(Engines { endpoints, dynamodb_local, moto })
}

/// The local AWS side: the engines (or given endpoints) with the template's resources created in them.
pub struct LocalAws {
    pub endpoints: Endpoints,
    /// The engines this stack started (none when it was given endpoints); they stop when dropped.
    pub engines: Option<Engines>,
    pub clients: Clients,
    pub resolver: Resolver,
    pub created: Created,
    /// The dev key's JWKS, which the functions that verify tokens fetch: the gateway's in `jobpipe dev`,
    /// otherwise (`invoke`, the bench) `dev_keys`'s.
    pub jwks_url: String,
    /// Held so the key server keeps serving for as long as this stack lives.
    pub(crate) _dev_keys: Option<DevKeyServer>,
}

impl LocalAws {
    pub async fn start(
        root: &Path,
        template: &Template,
        endpoints: Option<Endpoints>,
        prefix: &str,
    ) -> anyhow::Result<LocalAws> {
        let (endpoints, engines) = match endpoints {
            Some(endpoints) => (endpoints, None),
            None => {
                let engines = start_engines(root)?;
                (engines.endpoints.clone(), Some(engines))
            }
        };
        let clients = clients(&endpoints);
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
                    resolver.set(format!("{id}.Arn"), format!("arn:aws:local:{REGION}:{ACCOUNT}:{id}"));
                }
            }
        }
        let dev_keys = DevKeyServer::start().await?;
        Ok(LocalAws {
            endpoints,
            engines,
            clients,
            resolver,
            created,
            jwks_url: dev_keys.url.clone(),
            _dev_keys: Some(dev_keys),
        })
    }
}
