//! The local AWS side: the engines that serve AWS APIs (moto, or an endpoint the user gives, such as
//! their own LocalStack), the SDK configuration that reaches them, and the template's resources created
//! in them (`LocalAws`).

use std::collections::HashMap;
use std::path::Path;

use local_engines::Engine;

use crate::dev_key::{DEV_AUDIENCE, DEV_ISSUER, DevKeyServer};
use crate::resources::{self, Clients, Created};
use crate::template::{Resolver, Template};

/// The Region every local resource lives in (and the ARNs say).
pub const REGION: &str = "us-east-1";
/// The account id of local ARNs (moto's default).
pub const ACCOUNT: &str = "123456789012";

/// SDK configuration for a local endpoint: its URL, the local Region, and dummy credentials. Every
/// client the local stack, the tests and the tools build for local engines starts from this.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("local", "local", None, None, "jobpipe-local"),
        ))
        .build()
}

/// The clients the local stack itself uses (S3 path-style, as any hostname endpoint needs).
pub fn clients(shared: &aws_config::SdkConfig) -> Clients {
    Clients {
        dynamodb: aws_sdk_dynamodb::Client::new(shared),
        sqs: aws_sdk_sqs::Client::new(shared),
        s3: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(shared).force_path_style(true).build()),
    }
}

/// Starts moto from the checkout's `.venv`, installing or updating the pinned Python tools first
/// (`cargo xtask setup-python`, which does nothing when they are current).
pub fn start_moto(root: &Path) -> anyhow::Result<Engine> {
    crate::setup::xtask(root, &["setup-python"])?;
    Ok(Engine::moto(root, &local_engines::venv_python(root))?)
}

/// The local AWS side: moto (or a given endpoint) with the template's resources created in it.
pub struct LocalAws {
    pub endpoint: String,
    /// The moto this stack started (none when it was given an endpoint); stops when dropped.
    pub moto: Option<Engine>,
    pub shared: aws_config::SdkConfig,
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
        endpoint: Option<String>,
        prefix: &str,
    ) -> anyhow::Result<LocalAws> {
        let (endpoint, moto) = match endpoint {
            Some(endpoint) => (endpoint, None),
            None => {
                let moto = start_moto(root)?;
                (moto.endpoint().to_string(), Some(moto))
            }
        };
        let shared = sdk_config(&endpoint);
        let clients = clients(&shared);
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
}
