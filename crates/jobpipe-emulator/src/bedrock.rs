//! A local stand-in for Bedrock runtime's `InvokeModel`, for the Nova Canvas text-to-image shape, so the
//! real SDK path runs without AWS. It draws a deterministic picture of the requested size from the prompt
//! and seed, labelled LOCAL STAND-IN. Faults for tests: `POST /bedrock/faults
//! {"throttleNext": n, "latencyMs": ms}` makes the next n calls answer ThrottlingException and every call
//! wait; a prompt containing `[blocked]` is refused as the content filter would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::font::{draw_text, text_width};

#[derive(Debug, Default)]
pub struct BedrockStandIn {
    faults: Mutex<Faults>,
    /// Calls answered so far (any outcome).
    pub invocations: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    throttle_next: u64,
    latency_ms: u64,
}

impl BedrockStandIn {
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/model/{model_id}/invoke", post(invoke_model))
            .route("/bedrock/faults", post(set_faults))
            .with_state(self.clone())
    }

    /// The next `calls` invocations answer ThrottlingException; every call waits `latency`.
    pub async fn set_faults(&self, throttle_next: u64, latency: Duration) {
        *self.faults.lock().await = Faults { throttle_next, latency_ms: latency.as_millis() as u64 };
    }
}

fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let mut response =
        (status, [(header::CONTENT_TYPE, "application/json")], json!({ "message": message }).to_string())
            .into_response();
    response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}

async fn set_faults(State(stand_in): State<Arc<BedrockStandIn>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let throttle = body.get("throttleNext").and_then(Value::as_u64).unwrap_or(0);
    let latency = body.get("latencyMs").and_then(Value::as_u64).unwrap_or(0);
    stand_in.set_faults(throttle, Duration::from_millis(latency)).await;
    axum::Json(json!({"throttleNext": throttle, "latencyMs": latency})).into_response()
}

async fn invoke_model(
    State(stand_in): State<Arc<BedrockStandIn>>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Response {
    stand_in.invocations.fetch_add(1, Ordering::SeqCst);
    let faults = {
        let mut faults = stand_in.faults.lock().await;
        let now = *faults;
        faults.throttle_next = faults.throttle_next.saturating_sub(1);
        now
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.throttle_next > 0 {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        );
    }
    if !model_id.contains("nova-canvas") && !model_id.contains("titan-image-generator") {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "the local stand-in only knows the Nova Canvas shape",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        );
    };
    let prompt = request["textToImageParams"]["text"].as_str().unwrap_or_default();
    let config = &request["imageGenerationConfig"];
    let width = config["width"].as_u64().unwrap_or(1024);
    let height = config["height"].as_u64().unwrap_or(1024);
    let seed = config["seed"].as_u64().unwrap_or(12);
    if request["taskType"] != "TEXT_IMAGE"
        || prompt.is_empty()
        || !(320..=4096).contains(&width)
        || !(320..=4096).contains(&height)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request: taskType, text, width or height",
        );
    }
    if prompt.contains("[blocked]") {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "This request has been blocked by our content filters. Please adjust your text prompt to submit a new request.",
        );
    }
    let png = picture(prompt, seed, width as u32, height as u32);
    axum::Json(json!({
        "images": [base64::engine::general_purpose::STANDARD.encode(png)],
        "error": null,
    }))
    .into_response()
}

/// A deterministic picture: a gradient whose colours come from the prompt and seed, and a label.
pub fn picture(prompt: &str, seed: u64, width: u32, height: u32) -> Vec<u8> {
    let hash =
        prompt.bytes().fold(seed.wrapping_add(1469598103934665603), |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
    let channel = |shift: u32| 60 + ((hash >> shift) & 0x7F) as u32;
    let (from, to) = ([channel(0), channel(8), channel(16)], [channel(24), channel(32), channel(40)]);
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    for y in 0..height {
        for x in 0..width {
            let t = (x + y) as f32 / (width + height) as f32;
            let at = ((y * width + x) * 3) as usize;
            for c in 0..3 {
                pixels[at + c] = (from[c] as f32 * (1.0 - t) + to[c] as f32 * t) as u8;
            }
        }
    }
    let scale = (width / 160).clamp(1, 8);
    let label = "LOCAL STAND-IN";
    draw_text(
        &mut pixels,
        width,
        (width.saturating_sub(text_width(label, scale))) / 2,
        height / 3,
        scale,
        [255, 255, 255],
        label,
    );
    let max_chars = (width / (6 * scale.max(1) / 2).max(1)).saturating_sub(2) as usize;
    let caption: String = prompt.chars().take(max_chars.min(60)).collect();
    let small = (scale / 2).max(1);
    draw_text(
        &mut pixels,
        width,
        (width.saturating_sub(text_width(&caption, small))) / 2,
        height / 2,
        small,
        [255, 255, 255],
        &caption,
    );
    jobpipe_core::kinds::raster::encode_rgb(width, height, &pixels).expect("the buffer matches the size")
}
