//! The API's OpenAPI 3.1 document, built from the code: paths and methods from the handlers'
//! `#[utoipa::path]` annotations (the same registrations that route requests), response shapes from the
//! types the handlers serialize, and the `POST /jobs` body from the kinds this deployment offers.

use serde_json::{Map, Value, json};
use utoipa::Modify;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use jobpipe_core::intake::MAX_SCHEDULE_AHEAD;
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
    // The 401 body is one of two shapes; utoipa does not collect what an enum's variants refer to.
    components(schemas(
        crate::error::UnauthorizedBody,
        crate::error::GatewayMessage,
        crate::error::ErrorBody,
        crate::error::ErrorDetail
    )),
    modifiers(&BearerToken),
    tags(
        (name = "jobs", description = "Submit, read, list and cancel jobs."),
        (name = "schedules", description = "Recurring jobs: a job created at every tick of a cron expression or a rate."),
        (name = "batches", description = "Many jobs as one: submitted together, all or none, followed as one."),
        (name = "webhooks", description = "Be told when jobs end: endpoints for events, and the secret deliveries are signed with \
            (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`).")
    )
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

/// The finished document as JSON. The `POST /jobs` body is `SubmitJob`: one named alternative per offered
/// kind (`Submit{Kind}Job`, whose `input` is the named `{Kind}Input`, the schema the kind publishes), with
/// a discriminator on `kind`. Client generators name a model after its component: alternatives inlined
/// without names made openapi-python-client generate duplicate models and drop the ones the submit
/// operation imports.
pub fn document(openapi: &OpenApi, kinds: &KindRegistry) -> Value {
    let mut doc = serde_json::to_value(openapi).expect("an OpenAPI document serializes");
    let schemas = &mut doc["components"]["schemas"];
    if schemas.is_null() {
        *schemas = json!({});
    }
    let schemas = schemas.as_object_mut().expect("component schemas are an object");
    let mut alternatives = Vec::new();
    let mut mapping = Map::new();
    for name in kinds.names() {
        let Some(kind) = kinds.get(name) else { continue };
        let mut input = kind.input_schema();
        plain_enums(&mut input);
        let input_required = input.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
        let model = model_name(name);
        let (input_name, job_name) = (format!("{model}Input"), format!("Submit{model}Job"));
        let job = json!({
            "type": "object",
            "description": format!("A job of kind `{name}`."),
            "additionalProperties": false,
            "required": if input_required { json!(["kind", "input"]) } else { json!(["kind"]) },
            // A start is given one way or the other, never both.
            "not": {"required": ["runAt", "delaySeconds"]},
            "properties": {
                "kind": {"type": "string", "const": name},
                "input": {"$ref": format!("#/components/schemas/{input_name}")},
                "runAt": {
                    "type": "string", "format": "date-time",
                    "description": "Start at this time, not before (up to 365 days ahead); the job is \
                        `scheduled` until then. Not with `delaySeconds`.",
                },
                "delaySeconds": {
                    "type": "integer", "minimum": 0, "maximum": MAX_SCHEDULE_AHEAD.as_secs(),
                    "description": "Start this many seconds after acceptance. Not with `runAt`.",
                },
                "callback": {
                    "type": "object", "additionalProperties": false, "required": ["url"],
                    "description": "Deliver the job's end (`job.completed` or `job.failed`) to this URL, signed \
                        as Standard Webhooks says with your secret (`GET /webhooks/secret`).",
                    "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2048,
                        "description": "An `https` URL on a public host."}},
                },
            },
        });
        for (component, schema) in [(&input_name, input), (&job_name, job)] {
            let clash = schemas.insert(component.clone(), schema);
            assert!(clash.is_none(), "kind {name:?}: the schema name {component} is taken");
        }
        let reference = format!("#/components/schemas/{job_name}");
        alternatives.push(json!({"$ref": reference}));
        mapping.insert(name.to_owned(), Value::String(reference));
    }
    let clash = schemas.insert(
        "SubmitJob".into(),
        json!({
            "description": "A job to run: its kind and that kind's input (an empty object when left out).",
            "oneOf": alternatives,
            "discriminator": {"propertyName": "kind", "mapping": mapping},
        }),
    );
    assert!(clash.is_none(), "the schema name SubmitJob is taken");
    doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        json!({"$ref": "#/components/schemas/SubmitJob"});
    // A batch's jobs are jobs as `POST /jobs` takes them.
    if let Some(new_batch) = doc["components"]["schemas"].get_mut("NewBatch") {
        new_batch["properties"]["jobs"]["items"] = json!({"$ref": "#/components/schemas/SubmitJob"});
    }
    // A schedule ticks by a cron expression or a rate: exactly one (a rule its fields cannot state).
    if let Some(new_schedule) = doc["components"]["schemas"].get_mut("NewSchedule") {
        new_schedule["oneOf"] = json!([{"required": ["cron"]}, {"required": ["rate"]}]);
    }
    doc
}

/// A kind's name as a model name: `wifi-qr` is `WifiQr`.
fn model_name(kind: &str) -> String {
    kind.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase()).into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

/// Drops `type` from schemas whose `enum` already lists every allowed value (`null` included), here and
/// in every schema inside. The same rule, but generators read `"type": ["string", "null"]` with an
/// `enum` as one enum per type: openapi-python-client made three identical enum classes of one field.
fn plain_enums(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.contains_key("enum") && object.get("type").is_some_and(Value::is_array) {
                object.remove("type");
            }
            // Values, not schemas, live under these keys.
            for (key, value) in object.iter_mut() {
                if !["const", "default", "enum", "examples"].contains(&key.as_str()) {
                    plain_enums(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_enums),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use jobpipe_core::job::JobError;
    use jobpipe_core::kinds::{BoxFuture, Echo, InputError, JobContext, JobKind, WifiQr};

    use super::*;

    /// A kind with any name and input schema; it is never run.
    struct Fake(&'static str, Value);

    impl JobKind for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn validate(&self, _: &Value) -> Result<(), InputError> {
            Ok(())
        }
        fn input_schema(&self) -> Value {
            self.1.clone()
        }
        fn run<'a>(&'a self, _: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
            unreachable!("documents never run jobs")
        }
    }

    fn document_for(register: impl FnOnce(&mut KindRegistry)) -> Value {
        let mut registry = KindRegistry::default();
        register(&mut registry);
        document(&base(), &registry)
    }

    #[test]
    fn each_kind_is_a_named_alternative_with_its_input_named() {
        let doc = document_for(|kinds| {
            kinds.register(Echo);
            kinds.register(WifiQr);
        });
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["SubmitJob"]["oneOf"],
            json!([{"$ref": "#/components/schemas/SubmitEchoJob"}, {"$ref": "#/components/schemas/SubmitWifiQrJob"}])
        );
        assert_eq!(
            schemas["SubmitJob"]["discriminator"],
            json!({"propertyName": "kind", "mapping": {
                "echo": "#/components/schemas/SubmitEchoJob", "wifi-qr": "#/components/schemas/SubmitWifiQrJob"}})
        );
        let wifi = &schemas["SubmitWifiQrJob"];
        assert_eq!(wifi["properties"]["kind"], json!({"type": "string", "const": "wifi-qr"}));
        assert_eq!(wifi["properties"]["input"], json!({"$ref": "#/components/schemas/WifiQrInput"}));
        assert_eq!(wifi["required"], json!(["kind", "input"]));
        assert_eq!(schemas["SubmitEchoJob"]["required"], json!(["kind"]), "echo's input may be left out");
        assert_eq!(schemas["WifiQrInput"]["properties"]["ssid"], WifiQr.input_schema()["properties"]["ssid"]);
        assert_eq!(
            doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"],
            json!({"$ref": "#/components/schemas/SubmitJob"})
        );
    }

    #[test]
    fn kind_names_become_model_names() {
        let check = |kind: &str, expected: &str| assert_eq!(model_name(kind), expected, "{kind}");
        check("echo", "Echo");
        check("wifi-qr", "WifiQr");
        check("text_to_speech", "TextToSpeech");
        check("pdf2png", "Pdf2png");
        check("a.b--c", "ABC");
    }

    #[test]
    #[should_panic(expected = "kind \"wifi_qr\": the schema name WifiQrInput is taken")]
    fn kinds_whose_model_names_clash_are_refused() {
        document_for(|kinds| {
            kinds.register(WifiQr);
            kinds.register(Fake("wifi_qr", json!({"type": "object"})));
        });
    }

    #[test]
    fn a_nullable_enum_is_one_enum() {
        let input = json!({
            "type": "object",
            "properties": {
                "quality": {"type": ["string", "null"], "enum": ["standard", "premium", null], "default": "standard"},
                "status": {"type": "string", "enum": ["a", "b"]},
                "nested": {"type": "array", "items": {"type": ["string", "null"], "enum": ["x", null]}},
                "value": {"type": ["object", "null"], "default": {"enum": [1], "type": ["integer"]}}
            }
        });
        let doc = document_for(|kinds| kinds.register(Fake("fake", input)));
        assert_eq!(
            doc["components"]["schemas"]["FakeInput"]["properties"],
            json!({
                "quality": {"enum": ["standard", "premium", null], "default": "standard"},
                "status": {"type": "string", "enum": ["a", "b"]},
                "nested": {"type": "array", "items": {"enum": ["x", null]}},
                "value": {"type": ["object", "null"], "default": {"enum": [1], "type": ["integer"]}}
            })
        );
    }
}
