//! Who is calling: the one place that turns a request into a `Caller`, or refuses it.
//!
//! Behind API Gateway the HTTP API's JWT authorizer has already validated the token and we read `sub`
//! from the authorizer claims. Everywhere else (the local stack, tests) we validate the bearer token
//! ourselves against the configured key, issuer and audience. Token text is never logged.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// An authenticated caller; `sub` owns the jobs it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
}

/// Why a request was not authenticated. All of these are `401`; the reason is logged, not the token.
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// The key tokens are verified with.
#[derive(Clone)]
pub enum VerificationKey {
    /// A shared secret (the local stack's dev key).
    Hs256(Vec<u8>),
    /// An RSA public key in PEM (an identity provider's signing key).
    Rs256Pem(String),
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerificationKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            VerificationKey::Rs256Pem(_) => f.write_str("Rs256Pem(<public key>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Trust the claims API Gateway's JWT authorizer put in the request context.
    ApiGatewayAuthorizer,
    /// Verify the bearer token here.
    Jwt(Box<JwtVerifier>),
}

#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

impl JwtVerifier {
    pub fn new(key: &VerificationKey, issuer: &str, audience: &str) -> Result<Self, String> {
        let (key, algorithm) = match key {
            VerificationKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            VerificationKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("JWT public key: {e}"))?,
                Algorithm::RS256,
            ),
        };
        // Only the configured algorithm is accepted, so `alg: none` and algorithm confusion fail.
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(JwtVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::InvalidToken(describe(e.kind())))?;
        if data.claims.sub.trim().is_empty() {
            return Err(AuthError::InvalidToken("empty sub claim".into()));
        }
        Ok(Caller { sub: data.claims.sub })
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "algorithm not accepted".into(),
        K::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        other => format!("{other:?}"),
    }
}

impl Authenticator {
    /// `authorizer_sub` is the `sub` claim from API Gateway's request context, if any; `authorization`
    /// the raw `Authorization` header.
    pub fn authenticate(&self, authorizer_sub: Option<&str>, authorization: Option<&str>) -> Result<Caller, AuthError> {
        match self {
            Authenticator::ApiGatewayAuthorizer => match authorizer_sub {
                Some(sub) if !sub.is_empty() => Ok(Caller { sub: sub.to_string() }),
                _ => Err(AuthError::NoAuthorizerClaims),
            },
            Authenticator::Jwt(verifier) => verifier.verify(bearer_token(authorization)?),
        }
    }

    /// For sources without headers (a WebSocket `?token=`): verifies a token given directly.
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        match self {
            Authenticator::ApiGatewayAuthorizer => Err(AuthError::NoAuthorizerClaims),
            Authenticator::Jwt(verifier) => verifier.verify(token),
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

/// Signs an HS256 token: the local stack's `POST /dev/token` and the tests use it.
pub fn issue_hs256(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &[u8] = b"test-secret";

    fn verifier() -> Authenticator {
        Authenticator::Jwt(Box::new(JwtVerifier::new(&VerificationKey::Hs256(SECRET.to_vec()), "iss", "aud").unwrap()))
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn claims() -> Claims {
        Claims { sub: "alice".into(), iss: "iss".into(), aud: "aud".into(), exp: now() + 600, nbf: None, iat: None }
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn accepts_a_valid_token() {
        let token = issue_hs256(SECRET, &claims());
        assert_eq!(verifier().authenticate(None, Some(&bearer(&token))), Ok(Caller { sub: "alice".into() }));
        assert_eq!(verifier().authenticate(None, Some(&format!("bearer  {token}"))).unwrap().sub, "alice");
    }

    #[test]
    fn rejects_every_kind_of_bad_token() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let valid = issue_hs256(SECRET, &claims());
        let payload = valid.split('.').nth(1).unwrap();
        let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        let check = |header: Option<String>, expected: AuthError| {
            assert_eq!(verifier().authenticate(None, header.as_deref()), Err(expected), "{header:?}");
        };
        let invalid = |reason: &str| AuthError::InvalidToken(reason.into());
        check(None, AuthError::MissingToken);
        check(Some("".into()), AuthError::MissingToken);
        check(Some(valid.clone()), AuthError::NotBearer);
        check(Some(format!("Basic {valid}")), AuthError::NotBearer);
        check(Some(bearer("not.a.jwt")), invalid("malformed token"));
        // jsonwebtoken does not even parse a header with `alg: none`.
        check(Some(bearer(&alg_none)), invalid("malformed token"));
        check(Some(bearer(&issue_hs256(b"other", &claims()))), invalid("bad signature"));
        check(Some(bearer(&issue_hs256(SECRET, &Claims { iss: "evil".into(), ..claims() }))), invalid("wrong issuer"));
        check(
            Some(bearer(&issue_hs256(SECRET, &Claims { aud: "other".into(), ..claims() }))),
            invalid("wrong audience"),
        );
        check(Some(bearer(&issue_hs256(SECRET, &Claims { exp: now() - 3600, ..claims() }))), invalid("token expired"));
        check(
            Some(bearer(&issue_hs256(SECRET, &Claims { nbf: Some(now() + 3600), ..claims() }))),
            invalid("token not yet valid (nbf)"),
        );
        check(Some(bearer(&issue_hs256(SECRET, &Claims { sub: "".into(), ..claims() }))), invalid("empty sub claim"));
    }

    #[test]
    fn api_gateway_mode_trusts_only_authorizer_claims() {
        let auth = Authenticator::ApiGatewayAuthorizer;
        assert_eq!(auth.authenticate(Some("bob"), None).unwrap().sub, "bob");
        // A token alone is not enough: the authorizer must have run.
        let token = issue_hs256(SECRET, &claims());
        assert_eq!(auth.authenticate(None, Some(&bearer(&token))), Err(AuthError::NoAuthorizerClaims));
        assert_eq!(auth.authenticate(Some(""), None), Err(AuthError::NoAuthorizerClaims));
    }
}
