//! `image`: text-to-image on Amazon Bedrock, the PNG stored in S3.
//!
//! The models offered are an allow-list (`OFFERED_MODELS`), each with its family's limits, checked at
//! `POST /jobs` so a job Bedrock would refuse is a 422 there. The model's request and response shapes live
//! behind `ImageModel`, so another family (Titan Image v2 shares Nova Canvas's shape; a Stability model
//! would not) is one more adapter. The template grants `bedrock:InvokeModel` on exactly these models (a
//! test holds the two together); a cross-Region inference profile, if one is offered, needs its profile
//! ARN and the foundation-model ARNs of every Region it routes to.

use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{BoxFuture, InputError, JobContext, JobKind, check_fields, optional_string};
use crate::job::JobError;
use crate::kinds::raster;

pub const DEFAULT_MODEL: &str = "amazon.nova-canvas-v1:0";
const MAX_PROMPT_CHARS: usize = 1024;
const MAX_PIXELS: u64 = 4_194_304;
const MAX_SEED: u64 = 858_993_459;

/// What a model family accepts, as Bedrock checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Amazon Nova Canvas: any multiple of 16 from 320 to 4096 a side, at most 4.19 MP, 1:4 to 4:1;
    /// prompts up to 1024 characters.
    NovaCanvas,
    /// Amazon Titan Image Generator v2: one of `TITAN_V2_SIZES`; prompts up to 512 characters.
    TitanImageV2,
}

impl Family {
    fn max_prompt_chars(self) -> usize {
        match self {
            Family::NovaCanvas => MAX_PROMPT_CHARS,
            Family::TitanImageV2 => 512,
        }
    }
}

/// A model the `image` kind offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedModel {
    /// The `modelId` callers pass and Bedrock is invoked with.
    pub id: &'static str,
    pub family: Family,
}

/// Every model the kind offers. Bedrock lists no cross-Region inference profile for either, so both
/// run in the stack's own Region (`samconfig.toml` picks one that has both).
pub const OFFERED_MODELS: [OfferedModel; 2] = [
    OfferedModel { id: "amazon.nova-canvas-v1:0", family: Family::NovaCanvas },
    OfferedModel { id: "amazon.titan-image-generator-v2:0", family: Family::TitanImageV2 },
];

/// The sizes Titan Image Generator v2 generates (width x height), from its documentation, less 1173x640:
/// the API's schema promises multiples of 16.
pub const TITAN_V2_SIZES: [(u32, u32); 24] = [
    (1024, 1024),
    (768, 768),
    (512, 512),
    (768, 1152),
    (384, 576),
    (1152, 768),
    (576, 384),
    (768, 1280),
    (384, 640),
    (1280, 768),
    (640, 384),
    (896, 1152),
    (448, 576),
    (1152, 896),
    (576, 448),
    (768, 1408),
    (384, 704),
    (1408, 768),
    (704, 384),
    (640, 1408),
    (320, 704),
    (1408, 640),
    (704, 320),
    (1152, 640),
];

pub fn offered_model(id: &str) -> Option<&'static OfferedModel> {
    OFFERED_MODELS.iter().find(|model| model.id == id)
}

/// A validated `image` input.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub quality: String,
    pub cfg_scale: f64,
    pub seed: Option<u64>,
    pub model: String,
}

pub fn parse_input(input: &Value) -> Result<ImageInput, InputError> {
    check_fields(input, &["prompt", "negativePrompt", "width", "height", "quality", "cfgScale", "seed", "model"])?;
    let model = optional_string(input, "model")?.unwrap_or_else(|| DEFAULT_MODEL.into());
    let Some(offered) = offered_model(&model) else {
        let ids: Vec<&str> = OFFERED_MODELS.iter().map(|m| m.id).collect();
        return Err(InputError::new(
            "input.model",
            format!("{model:?} is not offered; choose one of {}", ids.join(", ")),
        ));
    };
    let max_chars = offered.family.max_prompt_chars();
    let text = |field: &str| -> Result<Option<String>, InputError> {
        let value = optional_string(input, field)?;
        match &value {
            Some(v) if v.trim().is_empty() || v.chars().count() > max_chars => Err(InputError::new(
                format!("input.{field}"),
                format!("must be 1 to {max_chars} characters for {model}"),
            )),
            _ => Ok(value),
        }
    };
    let prompt = text("prompt")?.ok_or_else(|| InputError::new("input.prompt", "is required"))?;
    let negative_prompt = text("negativePrompt")?;
    let side = |field: &str, default: u32| -> Result<u32, InputError> {
        match input.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => {
                v.as_u64().filter(|n| (320..=4096).contains(n) && n % 16 == 0).map(|n| n as u32).ok_or_else(|| {
                    InputError::new(format!("input.{field}"), "must be a multiple of 16 from 320 to 4096")
                })
            }
        }
    };
    let (width, height) = match offered.family {
        Family::NovaCanvas => {
            let (width, height) = (side("width", 1280)?, side("height", 720)?);
            if u64::from(width) * u64::from(height) > MAX_PIXELS {
                return Err(InputError::new(
                    "input.width",
                    format!("width x height must be at most {MAX_PIXELS} pixels"),
                ));
            }
            if width > 4 * height || height > 4 * width {
                return Err(InputError::new("input.height", "the aspect ratio must be between 1:4 and 4:1"));
            }
            (width, height)
        }
        Family::TitanImageV2 => {
            let size = |field: &str, default: u32| -> Result<u32, InputError> {
                match input.get(field) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => v
                        .as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| InputError::new(format!("input.{field}"), "must be a whole number of pixels")),
                }
            };
            let (width, height) = (size("width", 1024)?, size("height", 1024)?);
            if !TITAN_V2_SIZES.contains(&(width, height)) {
                let sizes: Vec<String> = TITAN_V2_SIZES.iter().map(|(w, h)| format!("{w}x{h}")).collect();
                return Err(InputError::new(
                    "input.width",
                    format!("{width}x{height} is not a size {model} generates; one of {}", sizes.join(", ")),
                ));
            }
            (width, height)
        }
    };
    let quality = optional_string(input, "quality")?.unwrap_or_else(|| "standard".into());
    if !["standard", "premium"].contains(&quality.as_str()) {
        return Err(InputError::new("input.quality", "must be standard or premium"));
    }
    let cfg_scale = match input.get("cfgScale") {
        None | Some(Value::Null) => 6.5,
        Some(v) => v
            .as_f64()
            .filter(|c| (1.1..=10.0).contains(c))
            .ok_or_else(|| InputError::new("input.cfgScale", "must be a number from 1.1 to 10"))?,
    };
    let seed =
        match input.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|s| *s <= MAX_SEED).ok_or_else(|| {
                InputError::new("input.seed", format!("must be a whole number from 0 to {MAX_SEED}"))
            })?),
        };
    Ok(ImageInput { prompt, negative_prompt, width, height, quality, cfg_scale, seed, model })
}

/// A model family's request and response shapes.
pub trait ImageModel: Send + Sync {
    fn request_body(&self, input: &ImageInput, seed: u64) -> Value;
    /// The PNG bytes of the first image, or why there is none.
    fn image_from_response(&self, body: &Value) -> Result<Vec<u8>, JobError>;
}

/// Amazon Nova Canvas (and Titan Image Generator v2, which shares the shape): `taskType: TEXT_IMAGE`.
pub struct AmazonTextImage;

/// The adapter of an offered model.
pub fn adapter_for(model: &str) -> Option<&'static dyn ImageModel> {
    offered_model(model).map(|offered| match offered.family {
        Family::NovaCanvas | Family::TitanImageV2 => &AmazonTextImage as &'static dyn ImageModel,
    })
}

impl ImageModel for AmazonTextImage {
    fn request_body(&self, input: &ImageInput, seed: u64) -> Value {
        let mut params = json!({ "text": input.prompt });
        if let Some(negative) = &input.negative_prompt {
            params["negativeText"] = json!(negative);
        }
        json!({
            "taskType": "TEXT_IMAGE",
            "textToImageParams": params,
            "imageGenerationConfig": {
                "numberOfImages": 1,
                "width": input.width,
                "height": input.height,
                "quality": input.quality,
                "cfgScale": input.cfg_scale,
                "seed": seed,
            }
        })
    }

    fn image_from_response(&self, body: &Value) -> Result<Vec<u8>, JobError> {
        if let Some(error) = body.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            return Err(JobError::permanent("model_error", format!("the model reported: {error}")));
        }
        let image = body
            .get("images")
            .and_then(Value::as_array)
            .and_then(|images| images.first())
            .and_then(Value::as_str)
            .ok_or_else(|| JobError::permanent("model_bad_response", "the model's answer held no image"))?;
        base64::engine::general_purpose::STANDARD
            .decode(image)
            .map_err(|_| JobError::permanent("model_bad_response", "the model's image is not base64"))
    }
}

pub struct Image {
    pub bedrock: aws_sdk_bedrockruntime::Client,
}

/// A seed that stays the same across retries of one job, so a retried job draws the same picture.
fn seed_for(input: &ImageInput, job_id: &str) -> u64 {
    input
        .seed
        .unwrap_or_else(|| job_id.bytes().fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64)) % MAX_SEED)
}

/// Turns a Bedrock error into a job error a person can act on, retryable where waiting helps.
fn classify(error: aws_sdk_bedrockruntime::error::SdkError<InvokeModelError>) -> JobError {
    use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
    let message = error.as_service_error().and_then(|e| e.message()).unwrap_or_default().to_string();
    match error.as_service_error() {
        // Image quotas are per minute: the job waits the window out, without spending an attempt.
        Some(InvokeModelError::ThrottlingException(_)) | Some(InvokeModelError::ServiceQuotaExceededException(_)) => {
            JobError::throttled("model_throttled", "Bedrock is throttling requests; retrying after the quota window")
        }
        Some(InvokeModelError::ServiceUnavailableException(_))
        | Some(InvokeModelError::InternalServerException(_))
        | Some(InvokeModelError::ModelNotReadyException(_)) => {
            JobError::retryable("model_unavailable", "Bedrock is unavailable for now; retrying with backoff")
        }
        Some(InvokeModelError::ModelTimeoutException(_)) => {
            JobError::retryable("model_timeout", "the model took too long; retrying")
        }
        Some(InvokeModelError::ValidationException(_)) if message.to_lowercase().contains("content filter") => {
            JobError::permanent(
                "prompt_blocked",
                "The prompt was blocked by the model's content filters. Change the prompt and submit a new job.",
            )
        }
        Some(InvokeModelError::ValidationException(_)) => {
            JobError::permanent("invalid_request", format!("Bedrock rejected the request: {message}"))
        }
        // AWS's reason names the role and account, so it goes to the operator's log, not to the job.
        Some(InvokeModelError::AccessDeniedException(_)) => {
            tracing::warn!(reason = %message, "Bedrock refused access to the model");
            JobError::permanent(
                "model_access_denied",
                "Bedrock refused access to the model: the function's role may not invoke it, or the account has \
                 no access to it (Bedrock console, Model access). The function's log has AWS's reason.",
            )
        }
        Some(InvokeModelError::ResourceNotFoundException(_)) => {
            JobError::permanent("model_not_found", format!("The model does not exist in this region: {message}"))
        }
        Some(_) => JobError::permanent("model_error", format!("Bedrock failed: {message}")),
        // No answer at all (network, timeout): worth another try.
        None => JobError::retryable("model_unreachable", "could not reach Bedrock; retrying"),
    }
}

impl JobKind for Image {
    fn name(&self) -> &'static str {
        "image"
    }

    fn validate(&self, input: &Value) -> Result<(), InputError> {
        parse_input(input).map(|_| ())
    }

    fn input_schema(&self) -> Value {
        let text = |description: &str| {
            json!({"type": ["string", "null"], "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": "\\S",
                "description": description})
        };
        let side = |default: u32| json!({"type": ["integer", "null"], "minimum": 320, "maximum": 4096, "multipleOf": 16, "default": default});
        json!({
            "type": "object",
            "description": format!(
                "A text-to-image request. Width x height is at most {MAX_PIXELS} pixels, with an aspect ratio \
                 from 1:4 to 4:1 (else 422). The PNG lands in S3; the result links to it."
            ),
            "required": ["prompt"],
            "additionalProperties": false,
            "properties": {
                "prompt": text("What to draw."),
                "negativePrompt": text("What to leave out."),
                "width": side(1280),
                "height": side(720),
                "quality": {"type": ["string", "null"], "enum": ["standard", "premium", null], "default": "standard"},
                "cfgScale": {"type": ["number", "null"], "minimum": 1.1, "maximum": 10, "default": 6.5},
                "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
                "model": {"type": ["string", "null"], "enum": [OFFERED_MODELS[0].id, OFFERED_MODELS[1].id, null],
                    "default": DEFAULT_MODEL,
                    "description": "Titan Image Generator v2 takes prompts up to 512 characters and a fixed list of \
                        sizes (1024x1024, 768x1152, 1152x768, 512x512, ...)."}
            }
        })
    }

    fn run<'a>(&'a self, ctx: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let input = parse_input(ctx.input).map_err(|e| JobError::permanent("invalid_input", e.to_string()))?;
            let adapter = adapter_for(&input.model).expect("validated");
            let seed = seed_for(&input, ctx.job.job_id.as_str());
            ctx.progress.report(10).await;
            let response = self
                .bedrock
                .invoke_model()
                .model_id(&input.model)
                .content_type("application/json")
                .accept("application/json")
                .body(Blob::new(adapter.request_body(&input, seed).to_string()))
                .send()
                .await
                .map_err(classify)?;
            ctx.progress.report(80).await;
            let body: Value = serde_json::from_slice(response.body().as_ref())
                .map_err(|_| JobError::permanent("model_bad_response", "the model's answer is not JSON"))?;
            let png = adapter.image_from_response(&body)?;
            let (width, height) =
                raster::png_dimensions(&png).map_err(|e| JobError::permanent("model_bad_response", e))?;
            if (width, height) != (input.width, input.height) {
                return Err(JobError::permanent(
                    "model_bad_response",
                    format!("the model returned {width}x{height}, not the {}x{} asked for", input.width, input.height),
                ));
            }
            let metadata = [
                ("job-id", ctx.job.job_id.to_string()),
                ("owner", ctx.job.owner.clone()),
                ("model", input.model.clone()),
                ("seed", seed.to_string()),
            ];
            let stored =
                ctx.results.put_result_object(&ctx.job.job_id, "image.png", png, "image/png", &metadata).await?;
            Ok(json!({
                "key": stored.key,
                "contentType": stored.content_type,
                "bytes": stored.size,
                "width": width,
                "height": height,
                "model": input.model,
                "seed": seed,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_every_field() {
        let check = |input: Value, expected: Result<(), &str>| {
            assert_eq!(parse_input(&input).map(|_| ()).map_err(|e| e.field), expected.map_err(String::from), "{input}");
        };
        let ok = |extra: Value| {
            let mut input = json!({"prompt": "a lighthouse at dusk"});
            input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            input
        };
        check(ok(json!({})), Ok(()));
        check(
            ok(
                json!({"negativePrompt": "people", "width": 1024, "height": 1024, "quality": "premium", "cfgScale": 8.0, "seed": 42}),
            ),
            Ok(()),
        );
        check(ok(json!({"width": 320, "height": 1280})), Ok(()));
        check(ok(json!({"width": 2048, "height": 2048})), Ok(()));
        let titan = |extra: Value| {
            let mut input = ok(json!({"model": "amazon.titan-image-generator-v2:0"}));
            input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            input
        };
        check(titan(json!({})), Ok(()));
        check(titan(json!({"width": 1152, "height": 640})), Ok(()));
        // Titan's own limits: its size list and 512-character prompts (Nova Canvas takes both).
        check(titan(json!({"width": 1280, "height": 720})), Err("input.width"));
        check(ok(json!({"width": 1280, "height": 720})), Ok(()));
        check(titan(json!({"prompt": "x".repeat(513)})), Err("input.prompt"));
        check(ok(json!({"prompt": "x".repeat(513)})), Ok(()));
        // Inference profiles the role may not invoke are refused here, not failed at Bedrock.
        check(ok(json!({"model": "us.amazon.nova-canvas-v1:0"})), Err("input.model"));
        check(ok(json!({"model": "eu.amazon.titan-image-generator-v2:0"})), Err("input.model"));
        check(ok(json!({"model": "xx.amazon.nova-canvas-v1:0"})), Err("input.model"));
        check(ok(json!({"cfgScale": 1.1, "seed": 858993459})), Ok(()));
        check(json!({}), Err("input.prompt"));
        check(json!({"prompt": ""}), Err("input.prompt"));
        check(json!({"prompt": "   "}), Err("input.prompt"));
        check(json!({"prompt": "x".repeat(1025)}), Err("input.prompt"));
        check(json!({"prompt": 5}), Err("input.prompt"));
        check(ok(json!({"negativePrompt": ""})), Err("input.negativePrompt"));
        check(ok(json!({"width": 300})), Err("input.width"));
        check(ok(json!({"width": 1000})), Err("input.width"));
        check(ok(json!({"width": 4112})), Err("input.width"));
        check(ok(json!({"height": "720"})), Err("input.height"));
        check(ok(json!({"width": 4096, "height": 2048})), Err("input.width"));
        check(ok(json!({"width": 320, "height": 1296})), Err("input.height"));
        check(ok(json!({"quality": "ultra"})), Err("input.quality"));
        check(ok(json!({"cfgScale": 1.0})), Err("input.cfgScale"));
        check(ok(json!({"cfgScale": 10.5})), Err("input.cfgScale"));
        check(ok(json!({"seed": -1})), Err("input.seed"));
        check(ok(json!({"seed": 858993460})), Err("input.seed"));
        check(ok(json!({"model": "stability.sd3-large-v1:0"})), Err("input.model"));
        check(ok(json!({"style": "noir"})), Err("input.style"));
    }

    #[test]
    fn builds_the_nova_canvas_body() {
        let input =
            parse_input(&json!({"prompt": "a fox", "negativePrompt": "text", "width": 512, "height": 512})).unwrap();
        let body = AmazonTextImage.request_body(&input, 42);
        assert_eq!(body["taskType"], "TEXT_IMAGE");
        assert_eq!(body["textToImageParams"], json!({"text": "a fox", "negativeText": "text"}));
        assert_eq!(body["imageGenerationConfig"]["width"], 512);
        assert_eq!(body["imageGenerationConfig"]["seed"], 42);
        assert_eq!(body["imageGenerationConfig"]["numberOfImages"], 1);
        assert!(AmazonTextImage.image_from_response(&json!({"images": [], "error": null})).is_err());
        assert_eq!(AmazonTextImage.image_from_response(&json!({"images": ["AAE="]})).unwrap(), vec![0, 1]);
    }

    #[test]
    fn a_job_keeps_its_seed_across_retries() {
        let input = parse_input(&json!({"prompt": "x"})).unwrap();
        assert_eq!(seed_for(&input, "job-1"), seed_for(&input, "job-1"));
        assert!(seed_for(&input, "job-1") <= MAX_SEED);
        assert_eq!(seed_for(&ImageInput { seed: Some(9), ..input }, "job-1"), 9);
    }
}

#[cfg(test)]
mod refusals {
    use aws_sdk_bedrockruntime::error::SdkError;
    use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
    use aws_sdk_bedrockruntime::types::error::AccessDeniedException;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    /// Bedrock's AccessDenied comes both from the role (IAM) and from model access; the job's error must
    /// not send the operator to the console when the role is what refused (it once did), and AWS's
    /// reason, which names the role and account, stays out of what the job's owner sees.
    #[test]
    fn an_access_refusal_names_both_causes_and_keeps_awss_reason_from_the_job() {
        let reason =
            "User: arn:aws:sts::123456789012:assumed-role/r/f is not authorized to perform: bedrock:InvokeModel";
        let error = SdkError::service_error(
            InvokeModelError::AccessDeniedException(AccessDeniedException::builder().message(reason).build()),
            Response::new(StatusCode::try_from(403).unwrap(), SdkBody::empty()),
        );
        let job_error = super::classify(error);
        let info = job_error.info();
        assert_eq!(info.code, "model_access_denied");
        assert!(info.message.contains("role may not invoke it"), "{}", info.message);
        assert!(!info.message.contains("123456789012"), "{}", info.message);
    }
}
