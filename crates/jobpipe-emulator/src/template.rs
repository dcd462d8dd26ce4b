//! Reads `template.yaml`: the resources, functions, event sources and WebSocket routes the local stack
//! emulates, and resolves CloudFormation intrinsics (`!Ref`, `!GetAtt`, `!Sub`) against local values.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sources::EventFilter;
use serde_norway::Value as Yaml;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_norway::Error },
    #[error("template: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> TemplateError {
    TemplateError::Invalid(message.into())
}

#[derive(Debug, Clone)]
pub struct Template {
    doc: Yaml,
    /// The directory `CodeUri` paths are relative to.
    pub root: PathBuf,
}

/// A `AWS::Serverless::Function`, with `Globals` applied.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// The Cargo package (and binary) the function is built from: the last part of `CodeUri`.
    pub binary: String,
    pub timeout: Duration,
    pub memory_mb: u64,
    /// Environment variables, still unresolved.
    pub environment: BTreeMap<String, Yaml>,
    pub events: Vec<EventSpec>,
    /// The statements of its inline policies (`Policies: - Statement: [...]`), still unresolved.
    pub statements: Vec<StatementSpec>,
}

/// One `Effect: Allow` statement of a function's inline policy: its `Sid`, actions and resources (the
/// resources still unresolved).
#[derive(Debug, Clone)]
pub struct StatementSpec {
    pub sid: String,
    pub actions: Vec<String>,
    pub resources: Vec<Yaml>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventSpec {
    /// An HTTP API route; `authorized` when a JWT authorizer guards it (the API's `DefaultAuthorizer`,
    /// unless the event says `Auth: { Authorizer: NONE }`).
    HttpApi {
        method: String,
        path: String,
        authorized: bool,
    },
    Sqs {
        queue: String,
        batch_size: usize,
        batching_window: Duration,
        max_concurrency: usize,
        report_failures: bool,
    },
    DynamoDb {
        table: String,
        batch_size: usize,
        report_failures: bool,
        /// `None`: the default; `MaximumRetryAttempts: -1` (until the record expires) is `u32::MAX`.
        max_retries: Option<u32>,
        /// `FilterCriteria`: only records one of these matches are invoked.
        filters: Vec<EventFilter>,
    },
    Schedule {
        every: Duration,
    },
}

/// A WebSocket route and the function its integration invokes.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketRoute {
    pub route_key: String,
    pub function: String,
}

impl Template {
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read { path: path.into(), source })?;
        let doc: Yaml =
            serde_norway::from_str(&text).map_err(|source| TemplateError::Parse { path: path.into(), source })?;
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Template { doc, root })
    }

    /// Parameter defaults (`None` where the template has no default).
    pub fn parameters(&self) -> BTreeMap<String, Option<String>> {
        mapping(get(&self.doc, "Parameters"))
            .map(|(name, spec)| (name, get(spec, "Default").and_then(scalar)))
            .collect()
    }

    /// `(logical id, properties)` of every resource of a type.
    pub fn resources(&self, kind: &str) -> Vec<(String, &Yaml)> {
        mapping(get(&self.doc, "Resources"))
            .filter(|(_, resource)| get(resource, "Type").and_then(Yaml::as_str) == Some(kind))
            .map(|(id, resource)| (id, get(resource, "Properties").unwrap_or(&Yaml::Null)))
            .collect()
    }

    pub fn resource_type(&self, logical_id: &str) -> Option<&str> {
        get(get(get(&self.doc, "Resources")?, logical_id)?, "Type")?.as_str()
    }

    pub fn functions(&self) -> Result<Vec<FunctionSpec>, TemplateError> {
        let globals = get(get(&self.doc, "Globals").unwrap_or(&Yaml::Null), "Function").unwrap_or(&Yaml::Null);
        let setting = |props: &Yaml, key: &str| get(props, key).or_else(|| get(globals, key)).cloned();
        let mut functions = Vec::new();
        for (logical_id, props) in self.resources("AWS::Serverless::Function") {
            let code_uri = setting(props, "CodeUri")
                .and_then(|v| scalar(&v))
                .ok_or_else(|| invalid(format!("{logical_id} has no CodeUri")))?;
            let binary = Path::new(&code_uri)
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| invalid(format!("{logical_id}: CodeUri {code_uri:?} names no crate")))?
                .to_string();
            let mut environment = BTreeMap::new();
            for source in [globals, props] {
                let vars = get(get(source, "Environment").unwrap_or(&Yaml::Null), "Variables");
                for (name, value) in mapping(vars) {
                    environment.insert(name, value.clone());
                }
            }
            let mut events = Vec::new();
            for (name, event) in mapping(get(props, "Events")) {
                let event_props = get(event, "Properties").unwrap_or(&Yaml::Null);
                if let Some(spec) = self
                    .event_spec(get(event, "Type").and_then(Yaml::as_str).unwrap_or(""), event_props)
                    .map_err(|e| invalid(format!("{logical_id} event {name}: {e}")))?
                {
                    events.push(spec);
                }
            }
            events.extend(self.event_source_mappings(&logical_id)?);
            let statements = policy_statements(get(props, "Policies"))
                .map_err(|e| invalid(format!("{logical_id} Policies: {e}")))?;
            functions.push(FunctionSpec {
                logical_id,
                binary,
                timeout: Duration::from_secs(setting(props, "Timeout").and_then(|v| v.as_u64()).unwrap_or(3)),
                memory_mb: setting(props, "MemorySize").and_then(|v| v.as_u64()).unwrap_or(128),
                environment,
                events,
                statements,
            });
        }
        Ok(functions)
    }

    /// WebSocket routes, following Route -> Target `integrations/${X}` -> X's IntegrationUri -> function.
    pub fn websocket_routes(&self) -> Result<Vec<WebSocketRoute>, TemplateError> {
        let mut routes = Vec::new();
        for (id, route) in self.resources("AWS::ApiGatewayV2::Route") {
            let route_key =
                get(route, "RouteKey").and_then(scalar).ok_or_else(|| invalid(format!("{id}: no RouteKey")))?;
            let target = get(route, "Target").map(sub_text).unwrap_or_default();
            let integration = target
                .strip_prefix("integrations/${")
                .and_then(|t| t.strip_suffix('}'))
                .ok_or_else(|| invalid(format!("{id}: Target {target:?} is not integrations/${{Integration}}")))?;
            let uri = self
                .resources("AWS::ApiGatewayV2::Integration")
                .into_iter()
                .find(|(iid, _)| iid == integration)
                .and_then(|(_, props)| get(props, "IntegrationUri").map(sub_text))
                .ok_or_else(|| invalid(format!("{id}: integration {integration} not found")))?;
            let function = uri
                .split("${")
                .skip(1)
                .filter_map(|part| part.split('}').next())
                .filter_map(|name| name.strip_suffix(".Arn"))
                .find(|name| self.resource_type(name) == Some("AWS::Serverless::Function"))
                .ok_or_else(|| {
                    invalid(format!("{id}: integration {integration} invokes no function of this template"))
                })?;
            routes.push(WebSocketRoute { route_key, function: function.to_string() });
        }
        Ok(routes)
    }
}

/// The path of the HTTP API's catch-all route.
pub const DEFAULT_ROUTE: &str = "$default";

/// An HTTP API's `CorsConfiguration`, values still unresolved (`AllowOrigins` may `!Ref` a parameter).
#[derive(Debug, Clone, Default)]
pub struct CorsSpec {
    pub allow_origins: Vec<Yaml>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

impl Template {
    /// The `CorsConfiguration` of the `AWS::Serverless::HttpApi`, if it has one.
    pub fn http_api_cors(&self) -> Option<CorsSpec> {
        let (_, api) = self.resources("AWS::Serverless::HttpApi").into_iter().next()?;
        let cors = get(api, "CorsConfiguration")?;
        let texts = |key: &str| -> Vec<String> {
            get(cors, key).and_then(Yaml::as_sequence).into_iter().flatten().filter_map(scalar).collect()
        };
        Some(CorsSpec {
            allow_origins: get(cors, "AllowOrigins").and_then(Yaml::as_sequence).cloned().unwrap_or_default(),
            allow_methods: texts("AllowMethods"),
            allow_headers: texts("AllowHeaders"),
            expose_headers: texts("ExposeHeaders"),
            max_age: get(cors, "MaxAge").and_then(|v| v.as_u64()),
            allow_credentials: get(cors, "AllowCredentials").and_then(Yaml::as_bool).unwrap_or(false),
        })
    }

    /// The `AWS::Lambda::EventSourceMapping` resources that invoke `function` (declared directly rather
    /// than as SAM events, so no managed policy with `Resource: "*"` comes with them), as event specs.
    fn event_source_mappings(&self, function: &str) -> Result<Vec<EventSpec>, TemplateError> {
        let mut events = Vec::new();
        for (id, props) in self.resources("AWS::Lambda::EventSourceMapping") {
            if get(props, "FunctionName").and_then(reference).map(|(name, _)| name).as_deref() != Some(function) {
                continue;
            }
            let source = get(props, "EventSourceArn").ok_or_else(|| invalid(format!("{id}: no EventSourceArn")))?;
            let (source_id, _) = reference(source)
                .ok_or_else(|| invalid(format!("{id}: EventSourceArn is not a !GetAtt of this template")))?;
            // The SAM event of the same kind names its source `Queue` or `Stream`; the rest is alike.
            let (kind, key) = match self.resource_type(&source_id) {
                Some("AWS::SQS::Queue") => ("SQS", "Queue"),
                Some("AWS::DynamoDB::Table") => ("DynamoDB", "Stream"),
                other => return Err(invalid(format!("{id}: event source {source_id} ({other:?}) is not emulated"))),
            };
            let mut as_event = props.as_mapping().cloned().unwrap_or_default();
            as_event.insert(Yaml::String(key.into()), source.clone());
            if let Some(spec) =
                self.event_spec(kind, &Yaml::Mapping(as_event)).map_err(|e| invalid(format!("{id}: {e}")))?
            {
                events.push(spec);
            }
        }
        Ok(events)
    }

    /// Whether an `HttpApi` event's route is guarded by a JWT authorizer: its own `Auth.Authorizer`, else
    /// the API's `DefaultAuthorizer`, which SAM puts on every method but `OPTIONS`.
    fn route_authorized(&self, props: &Yaml) -> bool {
        let auth = get(props, "Auth");
        if let Some(authorizer) = auth.and_then(|a| get(a, "Authorizer")).and_then(scalar) {
            return authorizer != "NONE";
        }
        if get(props, "Method").and_then(scalar).is_some_and(|method| method.eq_ignore_ascii_case("OPTIONS")) {
            return false;
        }
        let api = get(props, "ApiId").and_then(reference).map(|(id, _)| id);
        self.resources("AWS::Serverless::HttpApi")
            .into_iter()
            .filter(|(id, _)| api.as_ref().is_none_or(|api| api == id))
            .any(|(_, api)| get(api, "Auth").and_then(|a| get(a, "DefaultAuthorizer")).is_some())
    }

    fn event_spec(&self, kind: &str, props: &Yaml) -> Result<Option<EventSpec>, String> {
        let spec = event_spec(kind, props)?;
        Ok(spec.map(|spec| match spec {
            EventSpec::HttpApi { method, path, .. } => {
                EventSpec::HttpApi { method, path, authorized: self.route_authorized(props) }
            }
            other => other,
        }))
    }
}

/// An event source's `FilterCriteria.Filters[].Pattern`s.
fn filters(props: &Yaml) -> Result<Vec<EventFilter>, String> {
    let Some(criteria) = get(props, "FilterCriteria") else { return Ok(Vec::new()) };
    let filters = get(criteria, "Filters").and_then(Yaml::as_sequence).ok_or("FilterCriteria without Filters")?;
    filters
        .iter()
        .map(|filter| {
            let pattern = get(filter, "Pattern").and_then(scalar).ok_or("a filter without a Pattern string")?;
            EventFilter::parse(&pattern)
        })
        .collect()
}

fn event_spec(kind: &str, props: &Yaml) -> Result<Option<EventSpec>, String> {
    let number = |key: &str, default: u64| get(props, key).and_then(|v| v.as_u64()).unwrap_or(default);
    let reports = || {
        get(props, "FunctionResponseTypes")
            .and_then(Yaml::as_sequence)
            .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("ReportBatchItemFailures")))
    };
    Ok(Some(match kind {
        "HttpApi" => match (get(props, "Method").and_then(scalar), get(props, "Path").and_then(scalar)) {
            (Some(method), Some(path)) => EventSpec::HttpApi { method: method.to_uppercase(), path, authorized: false },
            // Neither: SAM makes it the API's `$default` route, taking what no other route matches.
            (None, None) => EventSpec::HttpApi { method: "ANY".into(), path: DEFAULT_ROUTE.into(), authorized: false },
            _ => return Err("an HttpApi event needs both Method and Path, or neither (the $default route)".into()),
        },
        "SQS" => EventSpec::Sqs {
            queue: get(props, "Queue").and_then(reference).ok_or("SQS event whose Queue is not a !GetAtt")?.0,
            batch_size: number("BatchSize", 10) as usize,
            batching_window: Duration::from_secs(number("MaximumBatchingWindowInSeconds", 0)),
            max_concurrency: get(get(props, "ScalingConfig").unwrap_or(&Yaml::Null), "MaximumConcurrency")
                .and_then(|v| v.as_u64())
                .unwrap_or(5) as usize,
            report_failures: reports(),
        },
        "DynamoDB" => EventSpec::DynamoDb {
            table: get(props, "Stream").and_then(reference).ok_or("DynamoDB event whose Stream is not a !GetAtt")?.0,
            batch_size: number("BatchSize", 100) as usize,
            report_failures: reports(),
            max_retries: get(props, "MaximumRetryAttempts")
                .and_then(|v| v.as_i64())
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            filters: filters(props)?,
        },
        "Schedule" => {
            let expression = get(props, "Schedule").and_then(scalar).ok_or("Schedule event without Schedule")?;
            EventSpec::Schedule { every: parse_rate(&expression)? }
        }
        _ => return Ok(None),
    }))
}

/// The statements of a function's `Policies`. Only inline `Allow` statements with `Action` and
/// `Resource` are understood; anything else (a managed policy, a SAM policy template, `Deny`,
/// `NotAction`, `Condition`) is refused, so the local roles never silently differ from the deployed ones.
fn policy_statements(policies: Option<&Yaml>) -> Result<Vec<StatementSpec>, String> {
    let list = |value: Option<&Yaml>| -> Vec<Yaml> {
        match value {
            Some(Yaml::Sequence(items)) => items.clone(),
            Some(other) => vec![other.clone()],
            None => vec![],
        }
    };
    let mut statements = Vec::new();
    for policy in list(policies) {
        let Some(document) = get(&policy, "Statement") else {
            return Err(format!("only inline policies (`- Statement: [...]`) are emulated, not {policy:?}"));
        };
        for statement in list(Some(document)) {
            let sid = get(&statement, "Sid").and_then(scalar).ok_or("every statement needs a Sid")?;
            let keys: Vec<String> = mapping(Some(&statement)).map(|(key, _)| key).collect();
            if let Some(key) = keys.iter().find(|k| !["Sid", "Effect", "Action", "Resource"].contains(&k.as_str())) {
                return Err(format!("statement {sid}: {key} is not emulated"));
            }
            if get(&statement, "Effect").and_then(scalar).as_deref() != Some("Allow") {
                return Err(format!("statement {sid}: only Effect: Allow is emulated"));
            }
            let actions = list(get(&statement, "Action"))
                .iter()
                .map(|action| scalar(action).ok_or_else(|| format!("statement {sid}: an action is not a string")))
                .collect::<Result<Vec<_>, _>>()?;
            let resources = list(get(&statement, "Resource"));
            if actions.is_empty() || resources.is_empty() {
                return Err(format!("statement {sid}: needs an Action and a Resource"));
            }
            statements.push(StatementSpec { sid, actions, resources });
        }
    }
    Ok(statements)
}

/// `rate(1 minute)`, `rate(5 minutes)`, `rate(30 seconds)` (not valid on AWS, handy locally), `rate(2 hours)`.
pub fn parse_rate(expression: &str) -> Result<Duration, String> {
    let inner = expression
        .trim()
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("only rate(...) schedules run locally, not {expression:?}"))?;
    let (amount, unit) = inner.trim().split_once(' ').ok_or_else(|| format!("bad rate {expression:?}"))?;
    let amount: u64 = amount.parse().map_err(|_| format!("bad rate {expression:?}"))?;
    let seconds = match unit.trim().trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(format!("bad rate unit in {expression:?}")),
    };
    Ok(Duration::from_secs(amount * seconds))
}

/// Values that intrinsics resolve to: `"X"` for `!Ref X`, `"X.Attr"` for `!GetAtt X.Attr`, and pseudo
/// parameters such as `"AWS::Region"`.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    pub values: HashMap<String, String>,
}

impl Resolver {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A property value as a string, with intrinsics resolved.
    pub fn resolve(&self, value: &Yaml) -> Result<String, TemplateError> {
        if let Some(text) = scalar(value) {
            return Ok(text);
        }
        if let Some((id, attribute)) = reference(value) {
            let key = match &attribute {
                Some(attribute) => format!("{id}.{attribute}"),
                None => id.clone(),
            };
            return self.get(&key).map(String::from).ok_or_else(|| invalid(format!("nothing local for {key}")));
        }
        let (text, variables) = match value {
            Yaml::Tagged(tagged) if tagged.tag == "!Sub" => sub_parts(&tagged.value),
            Yaml::Mapping(m) if m.len() == 1 && get(value, "Fn::Sub").is_some() => {
                sub_parts(get(value, "Fn::Sub").unwrap())
            }
            _ => return Err(invalid(format!("cannot resolve {value:?} locally"))),
        };
        let text = text.ok_or_else(|| invalid(format!("malformed !Sub {value:?}")))?;
        let mut local = self.clone();
        for (name, v) in mapping(variables) {
            local.set(name, self.resolve(v)?);
        }
        local.substitute(&text)
    }

    fn substitute(&self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').ok_or_else(|| invalid(format!("unclosed ${{ in {text:?}")))? + start;
            let name = &rest[start + 2..end];
            let value = self.get(name).ok_or_else(|| invalid(format!("nothing local for ${{{name}}} in {text:?}")))?;
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

pub fn get<'a>(value: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    value.as_mapping()?.get(key)
}

/// The entries of a mapping (none for anything else), keys as strings.
pub fn mapping(value: Option<&Yaml>) -> impl Iterator<Item = (String, &Yaml)> {
    value
        .and_then(Yaml::as_mapping)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
}

/// Plain scalars as text (numbers and booleans too).
pub fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `!Ref X` -> (X, None); `!GetAtt X.Y` or `Fn::GetAtt: [X, Y]` -> (X, Some(Y)).
pub fn reference(value: &Yaml) -> Option<(String, Option<String>)> {
    let split = |text: &str| match text.split_once('.') {
        Some((id, attribute)) => (id.to_string(), Some(attribute.to_string())),
        None => (text.to_string(), None),
    };
    match value {
        Yaml::Tagged(tagged) if tagged.tag == "!Ref" => Some((tagged.value.as_str()?.to_string(), None)),
        Yaml::Tagged(tagged) if tagged.tag == "!GetAtt" => match &tagged.value {
            Yaml::String(text) => Some(split(text)),
            Yaml::Sequence(parts) => Some((parts.first()?.as_str()?.into(), Some(parts.get(1)?.as_str()?.into()))),
            _ => None,
        },
        Yaml::Mapping(_) => {
            if let Some(id) = get(value, "Ref").and_then(Yaml::as_str) {
                return Some((id.to_string(), None));
            }
            match get(value, "Fn::GetAtt")? {
                Yaml::String(text) => Some(split(text)),
                Yaml::Sequence(parts) => Some((parts.first()?.as_str()?.into(), Some(parts.get(1)?.as_str()?.into()))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The text of a `!Sub` (short or long form), for reading references out of it.
fn sub_text(value: &Yaml) -> String {
    match value {
        Yaml::Tagged(tagged) if tagged.tag == "!Sub" => sub_parts(&tagged.value).0.unwrap_or_default(),
        _ => get(value, "Fn::Sub")
            .map(|v| sub_parts(v).0.unwrap_or_default())
            .or_else(|| scalar(value))
            .unwrap_or_default(),
    }
}

fn sub_parts(value: &Yaml) -> (Option<String>, Option<&Yaml>) {
    match value {
        Yaml::String(text) => (Some(text.clone()), None),
        Yaml::Sequence(parts) => (parts.first().and_then(scalar), parts.get(1)),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_template() -> Template {
        Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml")).unwrap()
    }

    /// The processor's role may invoke exactly the models the `image` kind offers: a model offered but
    /// not granted fails every job as access denied (it happened with inference profiles); one granted
    /// but not offered is privilege nobody uses.
    #[test]
    fn the_role_may_invoke_exactly_the_offered_image_models() {
        let template = repo_template();
        let (_, processor) = template
            .resources("AWS::Serverless::Function")
            .into_iter()
            .find(|(id, _)| id == "QueueProcessorFunction")
            .unwrap();
        let statements: Vec<&Yaml> = get(processor, "Policies")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|policy| get(policy, "Statement")?.as_sequence())
            .flatten()
            .collect();
        let invoke = statements.iter().find(|s| get(s, "Sid").and_then(scalar).as_deref() == Some("GenerateImages"));
        let mut granted: Vec<String> = get(invoke.expect("a GenerateImages statement"), "Resource")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .map(sub_text)
            .collect();
        let mut offered: Vec<String> = jobpipe_core::kinds::image::OFFERED_MODELS
            .iter()
            .map(|model| format!("arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}::foundation-model/{}", model.id))
            .collect();
        granted.sort();
        offered.sort();
        assert_eq!(granted, offered);
    }

    #[test]
    fn reads_the_functions_and_their_event_sources() {
        let template = repo_template();
        let functions = template.functions().unwrap();
        let by_id = |id: &str| functions.iter().find(|f| f.logical_id == id).unwrap_or_else(|| panic!("{id}"));
        let api = by_id("ApiIngestFunction");
        assert_eq!(api.binary, "api-ingest");
        let route = |method: &str, path: &str, authorized: bool| EventSpec::HttpApi {
            method: method.into(),
            path: path.into(),
            authorized,
        };
        assert!(api.events.contains(&route("POST", "/jobs", true)));
        assert!(api.events.contains(&route("GET", "/openapi.json", false)));
        assert!(api.events.contains(&route("ANY", DEFAULT_ROUTE, true)));
        // Preflights no other route takes must reach no authorizer (AWS: CORS for HTTP APIs).
        assert!(api.events.contains(&route("OPTIONS", "/{proxy+}", false)));
        assert!(api.environment.contains_key("JOBS_TABLE"), "globals apply");
        let processor = by_id("QueueProcessorFunction");
        assert_eq!(processor.timeout, Duration::from_secs(150));
        assert!(processor.events.iter().any(|e| matches!(e,
            EventSpec::Sqs { queue, report_failures: true, batch_size: 10, .. } if queue == "JobsQueue")));
        assert!(processor.events.contains(&EventSpec::Schedule { every: Duration::from_secs(60) }));
        let notifier = by_id("NotifierFunction");
        assert!(notifier.events.iter().any(|e| matches!(e, EventSpec::DynamoDb { table, .. } if table == "JobsTable")));

        let routes = template.websocket_routes().unwrap();
        let keys: Vec<_> = routes.iter().map(|r| r.route_key.as_str()).collect();
        for key in ["$connect", "$disconnect", "$default"] {
            assert!(keys.contains(&key), "{key}");
        }
        assert!(routes.iter().all(|r| r.function == "WebsocketConnectFunction"));
    }

    #[test]
    fn resolves_intrinsics() {
        let mut resolver = Resolver::default();
        resolver.set("Queue", "https://q");
        resolver.set("Table.Arn", "arn:table");
        resolver.set("AWS::Region", "us-east-1");
        let yaml = |text: &str| -> Yaml { serde_norway::from_str(text).unwrap() };
        let check = |text: &str, expected: &str| assert_eq!(resolver.resolve(&yaml(text)).unwrap(), expected, "{text}");
        check("plain", "plain");
        check("42", "42");
        check("!Ref Queue", "https://q");
        check("!GetAtt Table.Arn", "arn:table");
        check("{Ref: Queue}", "https://q");
        check("{'Fn::GetAtt': [Table, Arn]}", "arn:table");
        check("!Sub '${Table.Arn}/index/x in ${AWS::Region}'", "arn:table/index/x in us-east-1");
        check("!Sub ['${A}-${Queue}', {A: !Ref Queue}]", "https://q-https://q");
        assert!(resolver.resolve(&yaml("!Ref Missing")).is_err());
        assert!(resolver.resolve(&yaml("!Sub '${Missing}'")).is_err());
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("rate(1 minute)"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_rate("rate(5 minutes)"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_rate("rate(30 seconds)"), Ok(Duration::from_secs(30)));
        assert!(parse_rate("cron(0 * * * ? *)").is_err());
        assert!(parse_rate("rate(x minutes)").is_err());
    }
}
