//! Who is calling: the one place that turns a request into a `Caller`, or refuses it.
//!
//! Behind API Gateway the HTTP API's JWT authorizer has already validated the token and we read `sub`
//! from the authorizer claims. Where no authorizer runs (the WebSocket API's `$connect`, the local stack)
//! `JwtVerifier` checks the token as that authorizer does (AWS's "Control access to HTTP APIs with JWT
//! authorizers"): an RSA signature by the key the token's `kid` names in the issuer's JWKS, with an
//! algorithm that key allows; `iss`; `aud` (a string or an array) or, when there is no `aud`,
//! `client_id` (Cognito access tokens) against the configured audiences; `exp` (required), `nbf` and
//! `iat`. Token text is never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use crate::clock::{Clock, Millis, SystemClock};

/// An authenticated caller; `sub` owns the jobs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
}

/// Why a request was not authenticated. `KeysUnavailable` is ours (answer 503, retrying helps); every
/// other reason is the token's (401). The reason is logged, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("Authorization header is not a bearer token")]
    NotBearer,
    #[error("token rejected: {0}")]
    InvalidToken(String),
    #[error("request carries no authorizer claims (is the JWT authorizer attached to this route?)")]
    NoAuthorizerClaims,
    #[error("the issuer's signing keys could not be fetched ({0}); retrying may help")]
    KeysUnavailable(String),
}

impl AuthError {
    /// Whether the same token may pass later: only when the keys could not be fetched.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable(_))
    }
}

#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Trust the claims API Gateway's JWT authorizer put in the request context.
    ApiGatewayAuthorizer,
    /// Verify the bearer token here, with the issuer's published keys.
    Jwt(JwtVerifier),
}

impl Authenticator {
    /// `authorizer_sub` is the `sub` claim from API Gateway's request context, if any; `authorization`
    /// the raw `Authorization` header.
    pub async fn authenticate(
        &self,
        authorizer_sub: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Caller, AuthError> {
        match self {
            Authenticator::ApiGatewayAuthorizer => match authorizer_sub {
                Some(sub) if !sub.is_empty() => Ok(Caller { sub: sub.to_string() }),
                _ => Err(AuthError::NoAuthorizerClaims),
            },
            Authenticator::Jwt(verifier) => verifier.verify(bearer_token(authorization)?).await,
        }
    }

    /// For sources without headers (a WebSocket `?token=`): verifies a token given directly.
    pub async fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        match self {
            Authenticator::ApiGatewayAuthorizer => Err(AuthError::NoAuthorizerClaims),
            Authenticator::Jwt(verifier) => verifier.verify(token).await,
        }
    }
}

fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(AuthError::MissingToken)?;
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}

/// Whom to trust: what an API Gateway JWT authorizer is configured with, plus where the keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The token's `aud` (or, without one, its `client_id`) must be one of these.
    pub audiences: Vec<String>,
    /// The issuer's JWKS; `None` is `{issuer}/.well-known/jwks.json` (where Cognito publishes it).
    pub jwks_url: Option<String>,
}

/// A setting `JwtVerifier::new` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSettingsError {
    #[error("issuer: {0}")]
    Issuer(String),
    #[error("audience: {0}")]
    Audience(String),
    #[error("JWKS URL: {0}")]
    JwksUrl(String),
}

/// The RSA algorithms a key may allow. API Gateway's authorizer accepts only RSA-based ones, so
/// `HS256` (including a token "signed" with the public key as an HMAC secret) and `none` never pass.
const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

/// While the cached keys are younger than this, a token naming a key we do not have is refused without
/// fetching again: a flood of made-up `kid`s costs at most one fetch per interval, and a rotated key
/// (which issuers publish before they sign with it) is picked up by the first token after it.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A JWKS fetch that takes longer than this fails (retryably); `$connect` has 10 s in all.
const FETCH_TIMEOUT: Duration = Duration::from_secs(4);

/// Larger JWKS documents are refused (Cognito's is about 1 KB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Verifies tokens against the issuer's JWKS. Keys are fetched on first use, kept for the life of the
/// execution environment, and fetched again (at most once per `MIN_REFRESH_INTERVAL`) when a token
/// names a key that is not among them. Clones share the keys.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audiences: Vec<String>,
    jwks_url: String,
    clock: Arc<dyn Clock>,
    keys: Mutex<KeyCache>,
    /// Held while fetching, so concurrent verifications that miss the cache make one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// Built on the first fetch, not at init: most environments never fetch more than once.
    http: OnceLock<aws_smithy_http_client::Connector>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<SigningKey>>,
    /// The last fetch: when it ran, and why it failed if it did.
    last_fetch: Option<(Millis, Option<String>)>,
    /// Whether any fetch has succeeded: until one has, every verification may try.
    loaded: bool,
}

struct SigningKey {
    key: DecodingKey,
    /// The JWK's `alg` when it names one, otherwise every RSA algorithm: the token's header only
    /// chooses among these.
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences)
            .field("jwks_url", &self.inner.jwks_url)
            .finish()
    }
}

/// The claims we read; `exp`, `nbf` and `iss` are checked by `jsonwebtoken` itself.
#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: Option<String>,
    aud: Option<Audience>,
    client_id: Option<String>,
    iat: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Audience::One(aud) => accepted.contains(aud),
            Audience::Many(auds) => auds.iter().any(|aud| accepted.contains(aud)),
        }
    }
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Result<JwtVerifier, JwtSettingsError> {
        JwtVerifier::with_clock(settings, Arc::new(SystemClock))
    }

    /// With the clock that times key refreshes (tests move it by hand).
    pub fn with_clock(settings: JwtSettings, clock: Arc<dyn Clock>) -> Result<JwtVerifier, JwtSettingsError> {
        let issuer = settings.issuer.trim().to_string();
        check_key_url(&issuer).map_err(JwtSettingsError::Issuer)?;
        let audiences: Vec<String> =
            settings.audiences.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        if audiences.is_empty() {
            return Err(JwtSettingsError::Audience("at least one audience (app client id) is required".into()));
        }
        let jwks_url = match settings.jwks_url.map(|url| url.trim().to_string()).filter(|url| !url.is_empty()) {
            Some(url) => {
                check_key_url(&url).map_err(JwtSettingsError::JwksUrl)?;
                url
            }
            None => format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
        };
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                issuer,
                audiences,
                jwks_url,
                clock,
                keys: Mutex::new(KeyCache::default()),
                fetching: tokio::sync::Mutex::new(()),
                http: OnceLock::new(),
            }),
        })
    }

    /// Where the keys are fetched from.
    pub fn jwks_url(&self) -> &str {
        &self.inner.jwks_url
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let invalid = |reason: &str| AuthError::InvalidToken(reason.into());
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::InvalidToken(describe(e.kind())))?;
        // Checked before anything is fetched: a token no key could verify costs no request.
        if !RSA_ALGORITHMS.contains(&header.alg) {
            return Err(invalid("algorithm not accepted"));
        }
        let kid = header.kid.as_deref().filter(|kid| !kid.is_empty()).ok_or_else(|| invalid("token has no kid"))?;
        let key = self.key(kid).await?;

        let mut validation = Validation::new(header.alg);
        // The key decides which algorithms are acceptable; the header only picks one of them.
        validation.algorithms = key.algorithms.clone();
        validation.set_issuer(&[&self.inner.issuer]);
        // `aud` or `client_id`, checked below the way API Gateway does.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation)
            .map_err(|e| AuthError::InvalidToken(describe(e.kind())))?
            .claims;

        // API Gateway reads `client_id` only when there is no `aud`.
        let audience_matches = match (&claims.aud, &claims.client_id) {
            (Some(aud), _) => aud.contains_any(&self.inner.audiences),
            (None, Some(client_id)) => self.inner.audiences.contains(client_id),
            (None, None) => false,
        };
        if !audience_matches {
            return Err(invalid("wrong audience (aud or client_id)"));
        }
        if claims.iat.is_some_and(|iat| iat > (jsonwebtoken::get_current_timestamp() + LEEWAY_SECS) as f64) {
            return Err(invalid("token issued in the future (iat)"));
        }
        match claims.sub {
            Some(sub) if !sub.trim().is_empty() => Ok(Caller { sub }),
            _ => Err(invalid("empty sub claim")),
        }
    }

    /// The key `kid` names, fetching the JWKS when it is not cached and the policy allows.
    async fn key(&self, kid: &str) -> Result<Arc<SigningKey>, AuthError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _one_fetch_at_a_time = self.inner.fetching.lock().await;
        let now = self.inner.clock.now_ms();
        {
            let cache = self.inner.keys.lock().expect("key cache lock");
            // Another verification may have fetched while this one waited.
            if let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
            if let (true, Some((at, failure))) = (cache.loaded, &cache.last_fetch)
                && now - at < MIN_REFRESH_INTERVAL.as_millis() as Millis
            {
                return Err(match failure {
                    Some(reason) => AuthError::KeysUnavailable(reason.clone()),
                    None => AuthError::InvalidToken("unknown signing key (kid)".into()),
                });
            }
        }
        let fetched = self.fetch().await;
        let mut cache = self.inner.keys.lock().expect("key cache lock");
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %self.inner.jwks_url, keys = keys.len(), "fetched the issuer's signing keys");
                cache.keys = keys;
                cache.loaded = true;
                cache.last_fetch = Some((now, None));
                cache.keys.get(kid).cloned().ok_or_else(|| AuthError::InvalidToken("unknown signing key (kid)".into()))
            }
            Err(reason) => {
                tracing::warn!(url = %self.inner.jwks_url, %reason, "fetching the issuer's signing keys failed");
                cache.last_fetch = Some((now, Some(reason.clone())));
                Err(AuthError::KeysUnavailable(reason))
            }
        }
    }

    fn cached(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.inner.keys.lock().expect("key cache lock").keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<SigningKey>>, String> {
        use aws_smithy_runtime_api::client::http::HttpConnector;
        use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
        use http_body_util::{BodyExt, Limited};

        let url = &self.inner.jwks_url;
        let connector = self.inner.http.get_or_init(jwks_http_client);
        let mut request = HttpRequest::get(url).map_err(|e| format!("GET {url}: {e}"))?;
        request.headers_mut().insert("accept", "application/json");
        let body = tokio::time::timeout(FETCH_TIMEOUT, async {
            let response = connector.call(request).await.map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(format!("GET {url} answered {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading {url}: {e}"))?;
            Ok(body.to_bytes())
        })
        .await
        .map_err(|_| format!("GET {url} took longer than {FETCH_TIMEOUT:?}"))??;
        let keys = parse_jwks(&body).map_err(|problem| format!("{url}: {problem}"))?;
        if keys.is_empty() {
            return Err(format!("{url} lists no RSA signing key with a kid"));
        }
        Ok(keys)
    }
}

/// The HTTPS client for JWKS documents: the SDK's own (hyper and rustls with aws-lc, already in every
/// function, so no second HTTP stack), trusting the system's root certificates. The SDK's clients
/// trust only the Amazon Trust Services roots, which Cognito's endpoint chains to but other issuers'
/// do not. Loading the system store costs a few milliseconds, once per environment, on the first fetch.
fn jwks_http_client() -> aws_smithy_http_client::Connector {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_native_roots(true))
        .build()
        .expect("a TLS context without extra server names builds");
    aws_smithy_http_client::Connector::builder()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build()
}

/// The RSA signing keys of a JWKS document, by `kid`. Keys of other types or uses, without a `kid`,
/// or for a non-RSA algorithm are skipped rather than failing the whole set.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<SigningKey>>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let Some(kid) = jwk.common.key_id.clone().filter(|kid| !kid.is_empty()) else { continue };
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            || jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            continue;
        }
        let algorithms = match jwk.common.key_algorithm {
            None => RSA_ALGORITHMS.to_vec(),
            Some(named) => match named.to_string().parse::<Algorithm>() {
                Ok(algorithm) if RSA_ALGORITHMS.contains(&algorithm) => vec![algorithm],
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        keys.insert(kid, Arc::new(SigningKey { key, algorithms }));
    }
    Ok(keys)
}

/// Keys are fetched over HTTPS; plain HTTP only from this machine (the local stack, tests).
fn check_key_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if ["127.0.0.1", "localhost", "[::1]"].contains(&host) => Ok(()),
        _ => Err(format!("{url:?} must be an https:// URL (plain http only on 127.0.0.1)")),
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience (aud or client_id)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm not accepted".into(),
        K::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        other => format!("{other:?}"),
    }
}

/// Signs tokens with an RSA key and publishes its public half as a JWK: the local stack's dev key and
/// the tests' keys. Nothing deployed signs tokens; this is the identity provider's side.
#[derive(Clone)]
pub struct RsaSigner {
    header: Header,
    key: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner").field("kid", &self.header.kid).finish()
    }
}

impl RsaSigner {
    /// A signer for an RSA private key in PEM, publishing it under `kid` for RS256.
    pub fn from_pem(kid: &str, pem: &[u8]) -> Result<RsaSigner, String> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| format!("RSA private key: {e}"))?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).map_err(|e| format!("RSA public key: {e}"))?;
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        Ok(RsaSigner { header, key, jwk })
    }

    /// A token carrying exactly these claims (a JSON object).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.key).expect("RS256 signing with a parsed key cannot fail")
    }

    /// The public key, as the issuer's JWKS lists it.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }
}

/// A JWKS document listing these keys.
pub fn jwks(signers: &[&RsaSigner]) -> serde_json::Value {
    serde_json::json!({ "keys": signers.iter().map(|signer| signer.jwk()).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    use base64::Engine as _;
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::ManualClock;

    const AUDIENCE: &str = "app-client-id";

    fn key_a() -> RsaSigner {
        RsaSigner::from_pem("key-a", include_bytes!("../testdata/jwt-test-key-a.pem")).unwrap()
    }

    fn key_b() -> RsaSigner {
        RsaSigner::from_pem("key-b", include_bytes!("../testdata/jwt-test-key-b.pem")).unwrap()
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn b64(value: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// An identity provider: its JWKS at `{url}/.well-known/jwks.json`, with the requests counted.
    struct Issuer {
        url: String,
        jwks: Arc<Mutex<Value>>,
        status: Arc<AtomicU16>,
        fetches: Arc<AtomicUsize>,
    }

    impl Issuer {
        async fn start(keys: &[&RsaSigner]) -> Issuer {
            let (jwks, status, fetches) =
                (Arc::new(Mutex::new(jwks(keys))), Arc::new(AtomicU16::new(200)), Arc::new(AtomicUsize::new(0)));
            let serve = {
                let (jwks, status, fetches) = (jwks.clone(), status.clone(), fetches.clone());
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let status = axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                    (status, axum::Json(jwks.lock().unwrap().clone()))
                }
            };
            let app = axum::Router::new().route("/issuer/.well-known/jwks.json", axum::routing::get(serve));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/issuer", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Issuer { url, jwks, status, fetches }
        }

        fn publish(&self, keys: &[&RsaSigner]) {
            *self.jwks.lock().unwrap() = jwks(keys);
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        /// A verifier trusting this issuer, and the clock that times its refreshes.
        fn verifier(&self) -> (JwtVerifier, ManualClock) {
            let clock = ManualClock::starting_now();
            let settings = JwtSettings {
                issuer: self.url.clone(),
                audiences: vec!["other-client".into(), AUDIENCE.into()],
                jwks_url: None,
            };
            (JwtVerifier::with_clock(settings, Arc::new(clock.clone())).unwrap(), clock)
        }

        /// What an ID token of this issuer carries; tests edit it.
        fn claims(&self) -> Value {
            json!({"sub": "alice", "iss": self.url, "aud": AUDIENCE, "exp": now() + 600, "iat": now()})
        }
    }

    fn with(mut claims: Value, changes: Value) -> Value {
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(name),
                value => claims.as_object_mut().unwrap().insert(name.clone(), value.clone()),
            };
        }
        claims
    }

    const A_MINUTE_AND_A_BIT: i64 = MIN_REFRESH_INTERVAL.as_millis() as i64 + 1_000;

    #[tokio::test]
    async fn accepts_cognito_access_tokens_and_aud_as_a_string_or_an_array() {
        let a = key_a();
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, _) = issuer.verifier();
        let cognito_access_token = with(
            issuer.claims(),
            json!({"aud": null, "client_id": AUDIENCE, "token_use": "access", "scope": "aws.cognito.signin.user.admin"}),
        );
        for claims in [
            issuer.claims(),
            cognito_access_token,
            with(issuer.claims(), json!({"aud": ["someone-else", AUDIENCE]})),
            with(issuer.claims(), json!({"nbf": now() - 10})),
        ] {
            assert_eq!(verifier.verify(&a.sign(&claims)).await, Ok(Caller { sub: "alice".into() }), "{claims}");
        }
    }

    #[tokio::test]
    async fn refuses_every_kind_of_bad_token() {
        let (a, b) = (key_a(), key_b());
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, _) = issuer.verifier();
        let claims = issuer.claims();
        let valid = a.sign(&claims);
        let payload_of = |token: &str| token.split('.').nth(1).unwrap().to_string();
        let [header, _, signature] = <[&str; 3]>::try_from(valid.split('.').collect::<Vec<_>>()).unwrap();
        let tampered = format!("{header}.{}.{signature}", b64(&with(claims.clone(), json!({"sub": "mallory"}))));
        let public_pem = include_bytes!("../testdata/jwt-test-key-a.pub.pem");
        let mut hs256 = Header::new(Algorithm::HS256);
        hs256.kid = Some("key-a".into());
        let mut rs512 = Header::new(Algorithm::RS512);
        rs512.kid = Some("key-a".into());
        let mut no_kid = Header::new(Algorithm::RS256);
        no_kid.kid = None;

        let cases: Vec<(String, &str)> = vec![
            ("not.a.jwt".into(), "malformed token"),
            (format!("{}.{}.", b64(&json!({"alg": "none", "kid": "key-a"})), payload_of(&valid)), "malformed token"),
            (tampered, "bad signature"),
            // Signed by a key the issuer does not publish, claiming to be its key.
            (jsonwebtoken::encode(&a.header, &claims, &b.key).unwrap(), "bad signature"),
            // Algorithm confusion: HMAC "signed" with the issuer's public key as the secret.
            (
                jsonwebtoken::encode(&hs256, &claims, &EncodingKey::from_secret(public_pem)).unwrap(),
                "algorithm not accepted",
            ),
            // The JWK says RS256; the header may not pick another algorithm, even an RSA one.
            (jsonwebtoken::encode(&rs512, &claims, &a.key).unwrap(), "algorithm not accepted"),
            (jsonwebtoken::encode(&no_kid, &claims, &a.key).unwrap(), "token has no kid"),
            (a.sign(&with(claims.clone(), json!({"iss": "https://evil.example"}))), "wrong issuer"),
            (a.sign(&with(claims.clone(), json!({"aud": "someone-else"}))), "wrong audience"),
            (a.sign(&with(claims.clone(), json!({"aud": ["someone-else", "another"]}))), "wrong audience"),
            (a.sign(&with(claims.clone(), json!({"aud": null, "client_id": "someone-else"}))), "wrong audience"),
            // When both are present API Gateway judges `aud` alone.
            (a.sign(&with(claims.clone(), json!({"aud": "someone-else", "client_id": AUDIENCE}))), "wrong audience"),
            (a.sign(&with(claims.clone(), json!({"aud": null}))), "wrong audience"),
            (a.sign(&with(claims.clone(), json!({"exp": now() - 3600}))), "token expired"),
            (a.sign(&with(claims.clone(), json!({"exp": null}))), "missing claim exp"),
            (a.sign(&with(claims.clone(), json!({"nbf": now() + 3600}))), "token not yet valid (nbf)"),
            (a.sign(&with(claims.clone(), json!({"iat": now() + 3600}))), "token issued in the future (iat)"),
            (a.sign(&with(claims.clone(), json!({"sub": ""}))), "empty sub claim"),
            (a.sign(&with(claims.clone(), json!({"sub": null}))), "empty sub claim"),
        ];
        for (token, reason) in cases {
            match verifier.verify(&token).await {
                Err(AuthError::InvalidToken(message)) => {
                    assert!(message.starts_with(reason), "{message:?} is not {reason:?}")
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
        assert_eq!(issuer.fetches(), 1);
    }

    #[tokio::test]
    async fn an_hs256_token_costs_no_fetch_and_a_key_with_another_use_is_ignored() {
        let a = key_a();
        let mut encryption_only = a.jwk().clone();
        encryption_only.common.public_key_use = Some(PublicKeyUse::Encryption);
        let issuer = Issuer::start(&[]).await;
        *issuer.jwks.lock().unwrap() = json!({"keys": [encryption_only, {"kty": "EC", "kid": "ec", "crv": "P-256"}]});
        let (verifier, _) = issuer.verifier();
        let mut hs256 = Header::new(Algorithm::HS256);
        hs256.kid = Some("key-a".into());
        let forged = jsonwebtoken::encode(&hs256, &issuer.claims(), &EncodingKey::from_secret(b"anything")).unwrap();
        assert_eq!(verifier.verify(&forged).await, Err(AuthError::InvalidToken("algorithm not accepted".into())));
        assert_eq!(issuer.fetches(), 0);
        // A JWKS with no RSA signing key is the issuer's problem, not the token's.
        let refused = verifier.verify(&a.sign(&issuer.claims())).await.unwrap_err();
        assert!(refused.is_retryable() && refused.to_string().contains("no RSA signing key"), "{refused}");
    }

    #[tokio::test]
    async fn the_keys_are_fetched_once_for_many_verifications() {
        let a = key_a();
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, clock) = issuer.verifier();
        let token = a.sign(&issuer.claims());
        // Concurrent first verifications share one fetch.
        let mut concurrent = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (verifier, token) = (verifier.clone(), token.clone());
            concurrent.spawn(async move { verifier.verify(&token).await });
        }
        while let Some(verified) = concurrent.join_next().await {
            assert_eq!(verified.unwrap().unwrap().sub, "alice");
        }
        for _ in 0..50 {
            verifier.verify(&token).await.unwrap();
        }
        // Known keys are never fetched again, however long the environment lives.
        clock.advance_ms(24 * 60 * 60 * 1000);
        verifier.verify(&token).await.unwrap();
        assert_eq!(issuer.fetches(), 1);
    }

    #[tokio::test]
    async fn an_unknown_kid_is_refused_after_one_refresh_and_a_flood_of_them_fetches_nothing() {
        let (a, b) = (key_a(), key_b());
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, clock) = issuer.verifier();
        verifier.verify(&a.sign(&issuer.claims())).await.unwrap();
        assert_eq!(issuer.fetches(), 1);
        let unknown = |kid: &str| {
            let mut header = b.header.clone();
            header.kid = Some(kid.into());
            jsonwebtoken::encode(&header, &issuer.claims(), &b.key).unwrap()
        };
        let refused = Err(AuthError::InvalidToken("unknown signing key (kid)".into()));
        clock.advance_ms(A_MINUTE_AND_A_BIT);
        assert_eq!(verifier.verify(&unknown("key-x")).await, refused);
        assert_eq!(issuer.fetches(), 2, "one refresh for an unknown kid");
        for n in 0..200 {
            assert_eq!(verifier.verify(&unknown(&format!("random-{n}"))).await, refused);
        }
        assert_eq!(issuer.fetches(), 2, "made-up kids cost nothing more within the interval");
        verifier.verify(&a.sign(&issuer.claims())).await.unwrap();
    }

    #[tokio::test]
    async fn a_rotated_key_is_accepted_after_a_refresh_and_a_retired_one_is_dropped() {
        let (a, b) = (key_a(), key_b());
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, clock) = issuer.verifier();
        verifier.verify(&a.sign(&issuer.claims())).await.unwrap();
        // The issuer publishes its next key, then signs with it.
        issuer.publish(&[&a, &b]);
        clock.advance_ms(A_MINUTE_AND_A_BIT);
        assert_eq!(verifier.verify(&b.sign(&issuer.claims())).await.unwrap().sub, "alice");
        verifier.verify(&a.sign(&issuer.claims())).await.unwrap();
        assert_eq!(issuer.fetches(), 2);
        // The old key is withdrawn: after the next refresh its tokens no longer pass.
        issuer.publish(&[&b]);
        clock.advance_ms(A_MINUTE_AND_A_BIT);
        let mut header = b.header.clone();
        header.kid = Some("key-c".into());
        let _ = verifier.verify(&jsonwebtoken::encode(&header, &issuer.claims(), &b.key).unwrap()).await;
        assert_eq!(issuer.fetches(), 3);
        assert_eq!(
            verifier.verify(&a.sign(&issuer.claims())).await,
            Err(AuthError::InvalidToken("unknown signing key (kid)".into()))
        );
        verifier.verify(&b.sign(&issuer.claims())).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_fetch_is_retryable_and_the_next_request_fetches_again() {
        let a = key_a();
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, _) = issuer.verifier();
        let token = a.sign(&issuer.claims());
        issuer.status.store(503, Ordering::SeqCst);
        let failed = verifier.verify(&token).await.unwrap_err();
        assert!(failed.is_retryable(), "{failed}");
        assert!(failed.to_string().contains("answered 503") && !failed.to_string().contains(&token), "{failed}");
        issuer.status.store(200, Ordering::SeqCst);
        assert_eq!(verifier.verify(&token).await.unwrap().sub, "alice");
        assert_eq!(issuer.fetches(), 2);

        let (nobody, _) = Issuer { url: "http://127.0.0.1:9/issuer".into(), ..issuer }.verifier();
        assert!(nobody.verify(&token).await.unwrap_err().is_retryable(), "a refused connection is retryable");
    }

    #[test]
    fn settings_need_https_an_audience_and_give_the_jwks_url() {
        let settings = |issuer: &str, audiences: &[&str], jwks_url: Option<&str>| JwtSettings {
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            jwks_url: jwks_url.map(String::from),
        };
        let url = |s: JwtSettings| JwtVerifier::new(s).map(|v| v.jwks_url().to_string());
        let cognito = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_EXAMPLE";
        assert_eq!(url(settings(cognito, &["client"], None)), Ok(format!("{cognito}/.well-known/jwks.json")));
        assert_eq!(
            url(settings("https://tenant.example.com/", &["client"], None)),
            Ok("https://tenant.example.com/.well-known/jwks.json".into())
        );
        assert_eq!(
            url(settings("https://jobpipe.local/dev", &["client"], Some("http://127.0.0.1:3000/dev/jwks.json"))),
            Ok("http://127.0.0.1:3000/dev/jwks.json".into())
        );
        assert!(matches!(url(settings("http://idp.example.com", &["c"], None)), Err(JwtSettingsError::Issuer(_))));
        assert!(matches!(url(settings("not a url", &["c"], None)), Err(JwtSettingsError::Issuer(_))));
        assert!(matches!(url(settings(cognito, &[" ", ""], None)), Err(JwtSettingsError::Audience(_))));
        assert!(matches!(
            url(settings(cognito, &["c"], Some("http://keys.example.com/jwks.json"))),
            Err(JwtSettingsError::JwksUrl(_))
        ));
    }

    #[tokio::test]
    async fn bearer_headers_are_read_and_api_gateway_mode_trusts_only_authorizer_claims() {
        let a = key_a();
        let issuer = Issuer::start(&[&a]).await;
        let (verifier, _) = issuer.verifier();
        let auth = Authenticator::Jwt(verifier);
        let token = a.sign(&issuer.claims());
        assert_eq!(auth.authenticate(None, Some(&format!("bearer  {token}"))).await.unwrap().sub, "alice");
        assert_eq!(auth.authenticate_token(&token).await.unwrap().sub, "alice");
        for (header, expected) in [
            (None, AuthError::MissingToken),
            (Some(String::new()), AuthError::MissingToken),
            (Some(token.clone()), AuthError::NotBearer),
            (Some(format!("Basic {token}")), AuthError::NotBearer),
        ] {
            assert_eq!(auth.authenticate(None, header.as_deref()).await, Err(expected), "{header:?}");
        }

        let gateway = Authenticator::ApiGatewayAuthorizer;
        assert_eq!(gateway.authenticate(Some("bob"), None).await.unwrap().sub, "bob");
        // A token alone is not enough: the authorizer must have run.
        let header = format!("Bearer {token}");
        assert_eq!(gateway.authenticate(None, Some(&header)).await, Err(AuthError::NoAuthorizerClaims));
        assert_eq!(gateway.authenticate(Some(""), None).await, Err(AuthError::NoAuthorizerClaims));
    }
}
