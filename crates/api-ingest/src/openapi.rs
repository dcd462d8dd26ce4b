//! The API's OpenAPI 3.1 document, built from the code: paths and methods from the handlers'
//! `#[utoipa::path]` annotations (the same registrations that route requests), response shapes from the
//! types the handlers serialize, and the `POST /jobs` body from the kinds this deployment offers.

use serde_json::{Value, json};
use utoipa::Modify;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use jobpipe_core::kinds::KindRegistry;

/// Where the document is served (without a token).
pub const OPENAPI_PATH: &str = "/openapi.json";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "jobpipe jobs API",
        description = "Submit asynchronous jobs and follow them to completion. Every error answers \
            `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    security(("bearer" = [])),
    modifiers(&BearerToken),
    tags((name = "jobs", description = "Submit, read, list and cancel jobs."))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The base document the router's registrations are added to.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// The finished document as JSON: the `POST /jobs` body is `SubmitJob`, one alternative per offered
/// kind, each with the input schema the kind publishes.
pub fn document(openapi: &OpenApi, kinds: &KindRegistry) -> Value {
    let mut doc = serde_json::to_value(openapi).expect("an OpenAPI document serializes");
    let alternatives: Vec<Value> = kinds
        .names()
        .filter_map(|name| kinds.get(name).map(|kind| (name, kind.input_schema())))
        .map(|(name, input)| {
            let input_required = input.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
            json!({
                "type": "object",
                "title": name,
                "additionalProperties": false,
                "required": if input_required { json!(["kind", "input"]) } else { json!(["kind"]) },
                "properties": {
                    "kind": {"type": "string", "const": name},
                    "input": input,
                },
            })
        })
        .collect();
    doc["components"]["schemas"]["SubmitJob"] = json!({
        "description": "A job to run: its kind and that kind's input (an empty object when left out).",
        "oneOf": alternatives,
    });
    doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        json!({"$ref": "#/components/schemas/SubmitJob"});
    doc
}
