//! The HTTP API as API Gateway runs it: route matching (`$default` for what no route takes), the JWT
//! authorizer's refusal of a request without a token, payload format 2.0 events and responses, and the
//! API's `CorsConfiguration` (preflights answered, CORS headers replaced).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Gateway, gateway_error, now_ms, rfc3339, static_file};
use crate::aws::ACCOUNT;
use crate::runtime::Function;
use crate::template::DEFAULT_ROUTE;

/// The largest body the HTTP API accepts (API Gateway's limit).
const MAX_HTTP_BODY: usize = 10 * 1024 * 1024;
/// An HTTP API route from the template and the function behind it.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub method: String,
    pub path: String,
    pub function: Function,
    /// Guarded by the API's JWT authorizer: a request without a token is refused before the function.
    pub authorized: bool,
}

/// The HTTP API's `CorsConfiguration`, resolved. API Gateway answers preflights no route takes, adds these
/// headers to what the integration answers, and drops any CORS headers the integration sets.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

impl Cors {
    fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }

    /// Replaces the response's CORS headers with the configured ones, for a request from `origin`.
    fn apply(&self, origin: Option<&str>, preflight: bool, headers: &mut HeaderMap) {
        let names: Vec<_> =
            headers.keys().filter(|name| name.as_str().starts_with("access-control-")).cloned().collect();
        for name in names {
            headers.remove(name);
        }
        let Some(origin) = origin.filter(|origin| self.allows(origin)) else { return };
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        let any_origin = self.allow_origins.iter().any(|o| o == "*") && !self.allow_credentials;
        set("access-control-allow-origin", if any_origin { "*".into() } else { origin.to_string() });
        if self.allow_credentials {
            set("access-control-allow-credentials", "true".into());
        }
        if preflight {
            set("access-control-allow-methods", self.allow_methods.join(","));
            set("access-control-allow-headers", self.allow_headers.join(","));
            if let Some(max_age) = self.max_age {
                set("access-control-max-age", max_age.to_string());
            }
        } else if !self.expose_headers.is_empty() {
            set("access-control-expose-headers", self.expose_headers.join(","));
        }
    }
}

/// Matches a template path (`/jobs/{jobId}`, `/{proxy+}`) against a request path.
pub fn match_path(template: &str, path: &str) -> Option<HashMap<String, String>> {
    let pattern: Vec<&str> = template.trim_matches('/').split('/').collect();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut parameters = HashMap::new();
    for (index, part) in pattern.iter().enumerate() {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
            parameters.insert(name.to_string(), segments.get(index..)?.join("/"));
            return Some(parameters);
        }
        let segment = segments.get(index)?;
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !segment.is_empty() => {
                parameters.insert(name.to_string(), segment.to_string());
            }
            Some(_) => return None,
            None if part == segment => {}
            None => return None,
        }
    }
    (segments.len() == pattern.len()).then_some(parameters)
}

pub(super) async fn http_api(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let origin = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(String::from);
    let preflight = parts.method == Method::OPTIONS
        && origin.is_some()
        && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let route = gateway.http_routes.iter().filter(|route| route.path != DEFAULT_ROUTE).find_map(|route| {
        let method_matches = route.method == "ANY" || route.method == parts.method.as_str();
        let parameters = match_path(&route.path, &path)?;
        method_matches.then_some((route, parameters))
    });
    // What no route takes: the web UI's files (served here, not by API Gateway), then `$default`.
    let route = match route {
        Some(route) => route,
        None => {
            if parts.method == Method::GET
                && let Some(file) = static_file(&gateway.web_dir, &path).await
            {
                return file;
            }
            match gateway.http_routes.iter().find(|route| route.path == DEFAULT_ROUTE) {
                Some(route) => (route, HashMap::new()),
                // With CORS configured, API Gateway answers a preflight no route takes by itself.
                None if preflight && gateway.cors.is_some() => {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    if let Some(cors) = &gateway.cors {
                        cors.apply(origin.as_deref(), true, response.headers_mut());
                    }
                    return response;
                }
                None => return gateway_error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
    };
    let (route, path_parameters) = route;
    // The JWT authorizer's identity source is the Authorization header: without it API Gateway answers
    // 401 itself, before the function and without CORS headers (so a browser sees a CORS failure).
    if route.authorized && !parts.headers.contains_key(header::AUTHORIZATION) {
        return gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let body = match axum::body::to_bytes(body, MAX_HTTP_BODY).await {
        Ok(body) => body,
        Err(_) => return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
    };
    let source_ip = ConnectInfo::<std::net::SocketAddr>::from_request_parts(&mut parts, &())
        .await
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let event = http_event(&parts, &route.method, &route.path, path_parameters, &body, &source_ip);
    let mut response = match route.function.invoke_json(&event).await {
        Ok(response) => http_response(response),
        Err(error) => {
            tracing::warn!(%error, "HTTP API integration failed");
            gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    if let Some(cors) = &gateway.cors {
        cors.apply(origin.as_deref(), preflight, response.headers_mut());
    }
    response
}

/// The API Gateway HTTP API (payload format 2.0) event for a request.
fn http_event(
    parts: &http::request::Parts,
    route_method: &str,
    route_path: &str,
    path_parameters: HashMap<String, String>,
    body: &Bytes,
    source_ip: &str,
) -> Value {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).to_string();
        if name == header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_string()));
            continue;
        }
        let entry = headers.entry(name.as_str().to_string()).or_insert(Value::String(String::new()));
        let joined = match entry.as_str() {
            Some("") => value,
            Some(existing) => format!("{existing},{value}"),
            None => value,
        };
        *entry = Value::String(joined);
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let mut query = serde_json::Map::new();
    for (key, value) in url_pairs(&raw_query) {
        let entry = query.entry(key).or_insert(Value::String(String::new()));
        let joined = match entry.as_str() {
            Some("") => value,
            Some(existing) => format!("{existing},{value}"),
            None => value,
        };
        *entry = Value::String(joined);
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = now_ms();
    let request_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&uuid::Uuid::new_v4().as_bytes()[..10]);
    let route_key =
        if route_path == DEFAULT_ROUTE { DEFAULT_ROUTE.to_string() } else { format!("{route_method} {route_path}") };
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": parts.headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": rfc3339(now),
            "timeEpoch": now,
        },
        "isBase64Encoded": is_base64,
    });
    if !body.is_empty() {
        event["body"] = json!(body);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !path_parameters.is_empty() {
        event["pathParameters"] = json!(path_parameters);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    event
}

/// Splits and percent-decodes a query string.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Turns the function's answer into an HTTP response as API Gateway does (format 2.0).
fn http_response(response: Value) -> Response {
    let Some(status) = response.get("statusCode").and_then(Value::as_u64) else {
        // Without statusCode API Gateway infers 200 and a JSON body.
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], response.to_string()).into_response();
    };
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in response.get("headers").and_then(Value::as_object).into_iter().flatten() {
        if let Some(value) = value.as_str() {
            builder = builder.header(name.as_str(), value);
        }
    }
    for (name, values) in response.get("multiValueHeaders").and_then(Value::as_object).into_iter().flatten() {
        for value in values.as_array().into_iter().flatten().filter_map(Value::as_str) {
            builder = builder.header(name.as_str(), value);
        }
    }
    for cookie in response.get("cookies").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        builder = builder.header(header::SET_COOKIE, cookie);
    }
    let body = response.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if response.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    builder.body(Body::from(body)).unwrap_or_else(|_| gateway_error(StatusCode::BAD_GATEWAY, "Bad Gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_template_paths() {
        let check = |template: &str, path: &str, expected: Option<&[(&str, &str)]>| {
            let expected = expected.map(|pairs| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            assert_eq!(match_path(template, path), expected, "{template} ~ {path}");
        };
        check("/jobs", "/jobs", Some(&[]));
        check("/jobs", "/jobs/", Some(&[]));
        check("/jobs/{jobId}", "/jobs/abc", Some(&[("jobId", "abc")]));
        check("/jobs/{jobId}", "/jobs", None);
        check("/jobs/{jobId}", "/jobs/a/b", None);
        check("/jobs", "/other", None);
        check("/{proxy+}", "/a/b/c", Some(&[("proxy", "a/b/c")]));
    }

    #[test]
    fn decodes_query_strings() {
        assert_eq!(
            url_pairs("status=queued&limit=2&nextToken=a%3Db&x&q=a+b"),
            vec![
                ("status".into(), "queued".into()),
                ("limit".into(), "2".into()),
                ("nextToken".into(), "a=b".into()),
                ("x".into(), String::new()),
                ("q".into(), "a b".into()),
            ]
        );
    }
}
