//! Configuration, read once in `main` from the environment the SAM template (or the local stack) sets.
//! Handlers never read the environment themselves.

use std::collections::HashMap;
use std::time::Duration;

use crate::auth::{Authenticator, JwtSettings, JwtSettingsError, JwtVerifier};
use crate::backoff::Backoff;
use crate::dispatch::QueueRoutes;
use crate::kinds::KindsConfig;
use crate::webhooks::RetrySchedule;
use crate::webhooks::target::TargetPolicy;

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub jobs_table: String,
    pub payload_bucket: String,
    pub queue_routes: QueueRoutes,
    /// The main queue's dead-letter queue, which the reconciler inspects.
    pub dead_letter_queue_url: Option<String>,
    /// The WebSocket connections table (websocket-connect and notifier).
    pub connections_table: Option<String>,
    /// Recurring schedules (`schedules`): api-ingest serves them, the queue processor fires their ticks.
    pub schedules_table: Option<String>,
    /// Operator controls (`controls`: paused kinds).
    pub control_table: Option<String>,
    /// How often a job of a paused kind is looked at again (how soon a resume drains it).
    pub paused_kind_recheck: Duration,
    /// Submissions a tenant may make per second unless it has its own limit (0: no limit).
    pub tenant_submissions_per_second: u32,
    /// Jobs of one tenant that run at once unless it has its own limit (0: no limit).
    pub tenant_concurrency: u32,
    /// Jobs of one tenant waiting or running unless it has its own limit (0: no limit).
    pub tenant_open_jobs: u32,
    /// Webhook endpoints, signing secrets and dead letters (`webhooks::store`).
    pub webhooks_table: Option<String>,
    /// Where webhook deliveries wait for their (next) attempt.
    pub webhook_queue_url: Option<String>,
    /// The waits between a webhook delivery's attempts (`WEBHOOK_RETRY_DELAYS`, seconds).
    pub webhook_retry: RetrySchedule,
    /// Which URLs webhooks may call (`WEBHOOK_ALLOW_LOOPBACK` only in the local stack).
    pub webhook_targets: TargetPolicy,
    /// The WebSocket API's management endpoint (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`),
    /// where the notifier posts to connections.
    pub websocket_endpoint: Option<String>,
    /// How callers are authenticated; `None` for functions that serve no caller (AUTH_MODE unset).
    pub auth: Option<Authenticator>,
    pub kinds: KindsConfig,
    /// Attempts (claims) a job gets before it fails with its last error.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long a throttled job waits before it runs again, at least (Bedrock's quotas are per minute).
    pub throttle_window: Duration,
    /// Records of one SQS batch processed at the same time.
    pub batch_concurrency: usize,
    /// `POST /jobs` bodies above this answer 413.
    pub max_body_bytes: usize,
    /// Inputs and results up to this size stay in the job item; larger ones go to S3.
    pub inline_payload_max_bytes: usize,
    /// How long after creation an undispatched job is re-sent by the reconciler.
    pub dispatch_grace: Duration,
    /// How often the reconciler looks at a job that has not finished: it sends its message again when
    /// the last one is this old (SQS deletes messages after the queue's retention, without dead-lettering).
    pub dispatch_recheck: Duration,
    /// A job not finished this long after it was accepted fails as `expired`.
    pub job_max_age: Duration,
    /// Lease used when the invocation has no deadline (tests, local invoke).
    pub default_lease: Duration,
    /// How long finished jobs are kept (DynamoDB TTL).
    pub job_retention: Duration,
    /// How long a presigned result URL in `GET /jobs/{id}` stays valid.
    pub result_url_ttl: Duration,
}

impl Config {
    /// The authenticator, for functions that serve callers: an error naming AUTH_MODE when it is unset.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        self.auth.clone().ok_or(ConfigError {
            variable: "AUTH_MODE",
            problem: "this function authenticates callers: set it to apigateway or jwt".into(),
        })
    }

    /// A setting only some functions need, as an error naming it when it is missing.
    pub fn require<'a>(value: &'a Option<String>, variable: &'static str) -> Result<&'a str, ConfigError> {
        value.as_deref().ok_or(ConfigError { variable, problem: "is required by this function but not set".into() })
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| map.get(name).cloned())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            get(name).ok_or(ConfigError { variable: name, problem: "is required but not set".into() })
        };
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError { variable: name, problem: format!("{v:?} is not a whole number") }),
            }
        };
        let flag = |name: &'static str| -> Result<bool, ConfigError> {
            match get(name).as_deref().map(str::trim) {
                None | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") => Ok(true),
                Some(v) => Err(ConfigError { variable: name, problem: format!("{v:?} is not true or false") }),
            }
        };

        // Only the functions that serve callers (api-ingest, websocket-connect) set AUTH_MODE; the others
        // need no token settings at all.
        let auth = match get("AUTH_MODE").as_deref() {
            None => None,
            Some("apigateway") => Some(Authenticator::ApiGatewayAuthorizer),
            Some("jwt") => {
                // As API Gateway's JWT authorizer is configured: an issuer and its audiences (a comma-separated
                // list); the keys come from the issuer's JWKS.
                let settings = JwtSettings {
                    issuer: required("JWT_ISSUER")?,
                    audiences: required("JWT_AUDIENCE")?.split(',').map(String::from).collect(),
                    jwks_url: get("JWT_JWKS_URL"),
                };
                let verifier = JwtVerifier::new(settings).map_err(|error| {
                    let variable = match error {
                        JwtSettingsError::Issuer(_) => "JWT_ISSUER",
                        JwtSettingsError::Audience(_) => "JWT_AUDIENCE",
                        JwtSettingsError::JwksUrl(_) => "JWT_JWKS_URL",
                    };
                    ConfigError { variable, problem: error.to_string() }
                })?;
                Some(Authenticator::Jwt(verifier))
            }
            Some(other) => {
                return Err(ConfigError {
                    variable: "AUTH_MODE",
                    problem: format!("{other:?} is not jwt or apigateway"),
                });
            }
        };

        let mut queue_routes = QueueRoutes::single(required("JOBS_QUEUE_URL")?);
        // KIND_QUEUE_URLS=image=https://...,other=https://... routes kinds to their own queues.
        if let Some(routes) = get("KIND_QUEUE_URLS") {
            for pair in routes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (kind, url) = pair.split_once('=').ok_or(ConfigError {
                    variable: "KIND_QUEUE_URLS",
                    problem: format!("{pair:?} is not kind=queue-url"),
                })?;
                queue_routes.by_kind.insert(kind.trim().to_string(), url.trim().to_string());
            }
        }

        let max_attempts = number("MAX_ATTEMPTS", 5)? as u32;
        if max_attempts == 0 {
            return Err(ConfigError { variable: "MAX_ATTEMPTS", problem: "must be at least 1".into() });
        }
        Ok(Config {
            jobs_table: required("JOBS_TABLE")?,
            payload_bucket: required("PAYLOAD_BUCKET")?,
            queue_routes,
            dead_letter_queue_url: get("DEAD_LETTER_QUEUE_URL"),
            connections_table: get("CONNECTIONS_TABLE"),
            schedules_table: get("SCHEDULES_TABLE"),
            control_table: get("CONTROL_TABLE"),
            paused_kind_recheck: Duration::from_secs(number("PAUSED_KIND_RECHECK_SECONDS", 60)?.clamp(1, 900)),
            tenant_submissions_per_second: number("TENANT_SUBMISSIONS_PER_SECOND", 0)?.min(u32::MAX as u64) as u32,
            tenant_concurrency: number("TENANT_CONCURRENCY", 0)?.min(u32::MAX as u64) as u32,
            tenant_open_jobs: number("TENANT_OPEN_JOBS", 0)?.min(u32::MAX as u64) as u32,
            websocket_endpoint: get("WEBSOCKET_ENDPOINT"),
            webhooks_table: get("WEBHOOKS_TABLE"),
            webhook_queue_url: get("WEBHOOK_QUEUE_URL"),
            webhook_retry: match get("WEBHOOK_RETRY_DELAYS") {
                None => RetrySchedule::default(),
                Some(text) => RetrySchedule::parse(&text)
                    .map_err(|problem| ConfigError { variable: "WEBHOOK_RETRY_DELAYS", problem })?,
            },
            webhook_targets: TargetPolicy { allow_loopback: flag("WEBHOOK_ALLOW_LOOPBACK")? },
            auth,
            kinds: KindsConfig { echo_enabled: flag("ECHO_KIND_ENABLED")? },
            max_attempts,
            backoff: Backoff {
                base: Duration::from_secs(number("RETRY_BASE_SECONDS", 2)?),
                max: Duration::from_secs(number("RETRY_MAX_SECONDS", 900)?),
            },
            throttle_window: Duration::from_secs(number("THROTTLE_WINDOW_SECONDS", 60)?),
            batch_concurrency: number("BATCH_CONCURRENCY", 10)?.max(1) as usize,
            max_body_bytes: number("MAX_BODY_BYTES", 1024 * 1024)? as usize,
            inline_payload_max_bytes: number("INLINE_PAYLOAD_MAX_BYTES", 16 * 1024)? as usize,
            dispatch_grace: Duration::from_secs(number("DISPATCH_GRACE_SECONDS", 60)?),
            // A day: the newest message of an unfinished job always has 3 of the queue's 4 days left.
            dispatch_recheck: Duration::from_secs(number("DISPATCH_RECHECK_SECONDS", 24 * 60 * 60)?.max(1)),
            job_max_age: Duration::from_secs(number("JOB_MAX_AGE_SECONDS", 3 * 24 * 60 * 60)?.max(1)),
            default_lease: Duration::from_secs(number("DEFAULT_LEASE_SECONDS", 900)?),
            job_retention: Duration::from_secs(number("JOB_RETENTION_DAYS", 7)? * 24 * 60 * 60),
            result_url_ttl: Duration::from_secs(number("RESULT_URL_TTL_SECONDS", 900)?.clamp(1, 7 * 24 * 60 * 60)),
        })
    }
}

/// The AWS SDK clients, built once per execution environment.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub bedrock: aws_sdk_bedrockruntime::Client,
    /// The endpoint override (`AWS_ENDPOINT_URL`), when the clients talk to a local stand-in.
    pub endpoint_url: Option<String>,
}

/// The roots of Amazon Trust Services (Amazon Root CA 1-4, Starfield Services Root G2), which every AWS
/// endpoint's certificate chains to. Trusting only these is stricter than the system store, and it
/// takes 5 certificates to parse at start instead of the system's ~150 (about 3 ms of a 6.5 ms init,
/// measured by `jobpipe bench`).
const AMAZON_TRUST_SERVICES_ROOTS: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// `JOBPIPE_TLS_ROOTS=native` trusts the system's store instead (behind a proxy that re-signs TLS).
pub const TLS_ROOTS_VAR: &str = "JOBPIPE_TLS_ROOTS";

/// The SDK configuration from the usual environment: region, credentials and `AWS_ENDPOINT_URL` (moto,
/// locally), with an HTTPS client that trusts the Amazon Trust Services roots.
pub async fn sdk_config_from_env() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if std::env::var(TLS_ROOTS_VAR).as_deref() != Ok("native") {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
        let trust = TrustStore::empty().with_pem_certificate(AMAZON_TRUST_SERVICES_ROOTS);
        let context = TlsContext::builder().with_trust_store(trust).build().expect("the bundled roots are valid");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context)
            .build_https();
        loader = loader.http_client(http);
    }
    // On Lambda the region and the execution role's credentials are environment variables: reading them
    // directly skips building the rest of the provider chains (profile files, SSO, IMDS).
    if let (Ok(region), Some(_)) = (std::env::var("AWS_REGION"), std::env::var_os("AWS_ACCESS_KEY_ID")) {
        loader = loader
            .region(aws_config::Region::new(region))
            .credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new());
    }
    loader.load().await
}

impl AwsClients {
    pub async fn from_env() -> AwsClients {
        AwsClients::from_sdk_config(&sdk_config_from_env().await)
    }

    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> AwsClients {
        // Path-style addressing works with any endpoint; virtual-host style needs DNS for every bucket,
        // which a local endpoint such as `localhost` does not have.
        let s3_config =
            aws_sdk_s3::config::Builder::from(shared).force_path_style(shared.endpoint_url().is_some()).build();
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::new(shared),
            sqs: aws_sdk_sqs::Client::new(shared),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            bedrock: bedrock_client(shared, None),
            endpoint_url: shared.endpoint_url().map(String::from),
        }
    }
}

/// The Bedrock runtime client, without SDK-level retries: image quotas are per minute, so a throttled call
/// is retried by the job (SQS visibility backoff, seconds to minutes) rather than within the invocation.
pub fn bedrock_client(shared: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_bedrockruntime::Client {
    let mut config = aws_sdk_bedrockruntime::config::Builder::from(shared)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1));
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_bedrockruntime::Client::from_conf(config.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        [
            ("JOBS_TABLE", "jobs"),
            ("PAYLOAD_BUCKET", "bucket"),
            ("JOBS_QUEUE_URL", "http://q/jobs"),
            ("JWT_ISSUER", "https://issuer.example.com"),
            ("JWT_AUDIENCE", "a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map = base();
        for (k, v) in pairs {
            map.insert(k.to_string(), v.to_string());
        }
        Config::from_map(&map)
    }

    #[test]
    fn defaults_apply_and_errors_name_the_variable() {
        let config = with(&[]).unwrap();
        assert_eq!(config.max_attempts, 5);
        assert!(!config.kinds.echo_enabled);
        assert_eq!(config.queue_routes.queue_for("echo"), "http://q/jobs");

        let config = with(&[("KIND_QUEUE_URLS", "image=http://q/images"), ("ECHO_KIND_ENABLED", "true")]).unwrap();
        assert_eq!(config.queue_routes.queue_for("image"), "http://q/images");
        assert!(config.kinds.echo_enabled);

        let variable = |pairs: &[(&str, &str)]| with(pairs).unwrap_err().variable;
        assert_eq!(variable(&[("MAX_ATTEMPTS", "x")]), "MAX_ATTEMPTS");
        assert_eq!(variable(&[("MAX_ATTEMPTS", "0")]), "MAX_ATTEMPTS");
        assert_eq!(variable(&[("ECHO_KIND_ENABLED", "maybe")]), "ECHO_KIND_ENABLED");
        assert_eq!(variable(&[("AUTH_MODE", "none")]), "AUTH_MODE");
        assert_eq!(variable(&[("JOBS_TABLE", " ")]), "JOBS_TABLE");
        assert_eq!(variable(&[("KIND_QUEUE_URLS", "image")]), "KIND_QUEUE_URLS");
        assert!(matches!(
            with(&[("AUTH_MODE", "apigateway")]).unwrap().auth,
            Some(Authenticator::ApiGatewayAuthorizer)
        ));
        // AUTH_MODE=jwt verifies with the issuer's JWKS; a bad setting names its variable.
        let jwt = with(&[("AUTH_MODE", "jwt"), ("JWT_AUDIENCE", "web, cli")]).unwrap();
        let Some(Authenticator::Jwt(verifier)) = jwt.auth else { panic!("{:?}", jwt.auth) };
        assert_eq!(verifier.jwks_url(), "https://issuer.example.com/.well-known/jwks.json");
        assert_eq!(variable(&[("AUTH_MODE", "jwt"), ("JWT_ISSUER", "http://issuer.example.com")]), "JWT_ISSUER");
        assert_eq!(variable(&[("AUTH_MODE", "jwt"), ("JWT_AUDIENCE", ",")]), "JWT_AUDIENCE");
        assert_eq!(variable(&[("AUTH_MODE", "jwt"), ("JWT_JWKS_URL", "ftp://keys")]), "JWT_JWKS_URL");
        // Functions that serve no caller need no token settings.
        let mut bare = base();
        for key in ["JWT_ISSUER", "JWT_AUDIENCE"] {
            bare.remove(key);
        }
        let config = Config::from_map(&bare).unwrap();
        assert!(config.auth.is_none());
        assert_eq!(config.authenticator().unwrap_err().variable, "AUTH_MODE");
    }
}
