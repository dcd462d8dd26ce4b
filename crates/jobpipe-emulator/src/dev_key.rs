//! The local stack's dev key: it signs dev tokens shaped like Cognito access tokens, and its JWKS is what
//! the local functions verify tokens with, as deployed functions use their issuer's JWKS. Committed on
//! purpose and NOT FOR PRODUCTION.

use std::sync::OnceLock;

use anyhow::Context;
use jobpipe_core::auth::RsaSigner;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

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
