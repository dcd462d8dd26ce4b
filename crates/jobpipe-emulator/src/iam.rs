//! IAM, enforced per function: each function calls AWS with an access key of its own role, built from
//! its template statements and the managed policy SAM attaches to every function role; the AWS proxy,
//! the Bedrock stand-in and `@connections` judge each call by that role, as AWS's identity-based policy
//! evaluation does (an action and a resource some `Allow` statement matches), and refuse the rest with
//! AWS's own `AccessDenied` answers. The stack's own key (`ADMIN_ACCESS_KEY`) may do anything.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use crate::aws::{ACCOUNT, REGION};
use crate::template::{FunctionSpec, Resolver, TemplateError};

/// The access key of the local stack itself, the tests and the tools: not judged.
pub const ADMIN_ACCESS_KEY: &str = "local";

/// The access key a function's process gets: its role's.
pub fn access_key(function: &str) -> String {
    format!("LOCALROLE{}", function.to_uppercase())
}

/// The statements SAM adds to every function role it creates (the managed policy
/// `AWSLambdaBasicExecutionRole`), under that name.
const BASIC_EXECUTION: (&str, &[&str]) =
    ("AWSLambdaBasicExecutionRole", &["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]);

/// One `Allow` statement of a role, resources resolved to local ARNs.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sid: String,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

impl Statement {
    fn allows(&self, action: &str, resource: &str) -> bool {
        self.actions.iter().any(|pattern| wildcard_match(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase()))
            && self.resources.iter().any(|pattern| wildcard_match(pattern, resource))
    }
}

/// A function's execution role.
#[derive(Debug, Clone)]
pub struct Role {
    pub function: String,
    pub statements: Vec<Statement>,
}

impl Role {
    /// The role's ARN as the caller's identity (`assumed-role/<role>/<function>`), as AWS names it in
    /// an `AccessDenied` message.
    pub fn principal(&self) -> String {
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/jobpipe-local-{0}Role/{0}", self.function)
    }
}

/// What IAM says of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No statement of the caller's role allows `action` on `resource`; `message` is AWS's wording.
    Denied {
        action: String,
        resource: String,
        message: String,
    },
    /// The access key is nobody's (AWS: `UnrecognizedClientException`, `InvalidClientTokenId`).
    UnknownKey,
}

/// Every function role, by access key, and which statements calls have used.
#[derive(Debug)]
pub struct Iam {
    roles: HashMap<String, Role>,
    used: Mutex<BTreeSet<(String, String)>>,
}

impl Iam {
    /// The roles of the template's functions: each function's inline statements, resolved against
    /// the local resources, plus SAM's basic execution policy.
    pub fn from_template(functions: &[FunctionSpec], resolver: &Resolver) -> Result<Iam, TemplateError> {
        let mut roles = Vec::new();
        for function in functions {
            let mut statements = Vec::new();
            for statement in &function.statements {
                let resources = statement
                    .resources
                    .iter()
                    .map(|resource| resolver.resolve(resource))
                    .collect::<Result<Vec<_>, _>>()?;
                statements.push(Statement {
                    sid: statement.sid.clone(),
                    actions: statement.actions.clone(),
                    resources,
                });
            }
            let (sid, actions) = BASIC_EXECUTION;
            statements.push(Statement {
                sid: sid.into(),
                actions: actions.iter().map(|a| a.to_string()).collect(),
                resources: vec!["*".into()],
            });
            roles.push(Role { function: function.logical_id.clone(), statements });
        }
        Ok(Iam::new(roles))
    }

    pub fn new(roles: Vec<Role>) -> Iam {
        let roles = roles.into_iter().map(|role| (access_key(&role.function), role)).collect();
        Iam { roles, used: Mutex::new(BTreeSet::new()) }
    }

    /// Judges a call that asks for every `(action, resource)` of `requested`, made with `key` (`None`:
    /// unsigned). The first pair no statement allows is the one denied, as AWS reports one.
    pub fn judge(&self, key: Option<&str>, requested: &[(String, String)]) -> Verdict {
        if key == Some(ADMIN_ACCESS_KEY) {
            return Verdict::Allowed;
        }
        let Some(role) = key.and_then(|key| self.roles.get(key)) else { return Verdict::UnknownKey };
        // A call that names nothing to authorize (a malformed batch, say) is refused, never waved through.
        if requested.is_empty() {
            let message =
                format!("User: {} made a call that names no resource the local stack can judge", role.principal());
            return Verdict::Denied { action: "unknown".into(), resource: "*".into(), message };
        }
        for (action, resource) in requested {
            match role.statements.iter().find(|statement| statement.allows(action, resource)) {
                Some(statement) => {
                    self.used.lock().expect("not poisoned").insert((role.function.clone(), statement.sid.clone()));
                }
                None => {
                    let message = format!(
                        "User: {} is not authorized to perform: {action} on resource: {resource} because no \
                         identity-based policy allows the {action} action",
                        role.principal()
                    );
                    return Verdict::Denied { action: action.clone(), resource: resource.clone(), message };
                }
            }
        }
        Verdict::Allowed
    }

    /// Whether `key` may do `action` on `resource` (recording nothing).
    pub fn may(&self, key: Option<&str>, action: &str, resource: &str) -> bool {
        key == Some(ADMIN_ACCESS_KEY)
            || key
                .and_then(|key| self.roles.get(key))
                .is_some_and(|role| role.statements.iter().any(|s| s.allows(action, resource)))
    }

    /// The role of a function, by its logical id.
    pub fn role(&self, function: &str) -> Option<&Role> {
        self.roles.get(&access_key(function))
    }

    /// `(function, Sid)` of every statement of every role, but SAM's own.
    pub fn statements(&self) -> BTreeSet<(String, String)> {
        self.roles
            .values()
            .flat_map(|role| role.statements.iter().map(|s| (role.function.clone(), s.sid.clone())))
            .filter(|(_, sid)| sid != BASIC_EXECUTION.0)
            .collect()
    }

    /// `(function, Sid)` of every statement that has allowed a call so far.
    pub fn statements_used(&self) -> BTreeSet<(String, String)> {
        self.used.lock().expect("not poisoned").clone()
    }
}

/// IAM's wildcard match: `*` any run of characters (`/` and `:` included), `?` any one.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The access key a signed request carries: its SigV4 `Authorization` header's credential, or a
/// presigned URL's `X-Amz-Credential`.
pub fn caller_key(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    let from_header = authorization.and_then(|value| {
        let credential = value.split("Credential=").nth(1)?;
        Some(credential.split('/').next()?.to_string())
    });
    from_header.or_else(|| {
        query?.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "X-Amz-Credential")
                .then(|| percent_decode(value).split('/').next().unwrap_or_default().to_string())
        })
    })
}

/// What a DynamoDB or DynamoDB Streams call (`target`: its `X-Amz-Target`) asks IAM for: one
/// `(action, resource)` per table, index or stream it touches.
pub fn dynamodb_requests(target: &str, body: &Value) -> Vec<(String, String)> {
    let operation = target.rsplit('.').next().unwrap_or_default();
    let table_arn = |name: &str| {
        if name.starts_with("arn:") {
            name.to_string()
        } else {
            format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}")
        }
    };
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    let action = |operation: &str| format!("dynamodb:{operation}");
    match operation {
        "BatchWriteItem" | "BatchGetItem" => body
            .get("RequestItems")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(table, _)| (action(operation), table_arn(table)))
            .collect(),
        "TransactWriteItems" | "TransactGetItems" => body
            .get("TransactItems")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let (kind, request) = item.as_object()?.iter().next()?;
                let operation = match kind.as_str() {
                    "Put" => "PutItem",
                    "Update" => "UpdateItem",
                    "Delete" => "DeleteItem",
                    "ConditionCheck" => "ConditionCheckItem",
                    _ => "GetItem",
                };
                Some((action(operation), table_arn(request.get("TableName")?.as_str()?)))
            })
            .collect(),
        "ListTables" | "ListStreams" => vec![(action(operation), "*".into())],
        // A shard iterator starts with its stream's ARN (`<stream arn>|...`), on AWS and DynamoDB Local.
        "GetRecords" => {
            vec![(action(operation), text("ShardIterator").and_then(|i| i.split('|').next()).unwrap_or("*").into())]
        }
        _ => {
            let resource = match (text("StreamArn"), text("TableName"), text("IndexName")) {
                (Some(stream), _, _) => stream.to_string(),
                (None, Some(table), Some(index)) => format!("{}/index/{index}", table_arn(table)),
                (None, Some(table), None) => table_arn(table),
                (None, None, _) => "*".into(),
            };
            vec![(action(operation), resource)]
        }
    }
}

/// What an SQS call (JSON protocol; `target`: `AmazonSQS.<Operation>`) asks IAM for. A batch call needs
/// the action of its single form.
pub fn sqs_requests(target: &str, body: &Value) -> Vec<(String, String)> {
    let operation = target.rsplit('.').next().unwrap_or_default();
    let action = format!("sqs:{}", operation.strip_suffix("Batch").unwrap_or(operation));
    let queue_arn = match (body.get("QueueUrl").and_then(Value::as_str), body.get("QueueName").and_then(Value::as_str))
    {
        // Local queue ARNs always carry the local account (`resources`), whatever account the engine puts
        // in its URLs (LocalStack's 000000000000, ElasticMQ's `/queue/`).
        (Some(url), _) => {
            let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
        }
        (None, Some(name)) => format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"),
        (None, None) => "*".into(),
    };
    vec![(action, queue_arn)]
}

/// What an S3 call (path-style: `/<bucket>[/<key>]`) asks IAM for.
pub fn s3_requests(method: &http::Method, path: &str, query: Option<&str>) -> Vec<(String, String)> {
    let path = percent_decode(path.trim_start_matches('/'));
    let (bucket, key) = match path.split_once('/') {
        Some((bucket, key)) if !key.is_empty() => (bucket.to_string(), Some(key.to_string())),
        _ => (path.trim_end_matches('/').to_string(), None),
    };
    let subresource = query.unwrap_or_default();
    let action = match (method.as_str(), &key) {
        ("GET" | "HEAD", Some(_)) => "s3:GetObject",
        ("PUT" | "POST", Some(_)) => "s3:PutObject",
        ("DELETE", Some(_)) if subresource.contains("uploadId") => "s3:AbortMultipartUpload",
        ("DELETE", Some(_)) => "s3:DeleteObject",
        ("GET" | "HEAD", None) => "s3:ListBucket",
        ("PUT", None) => "s3:CreateBucket",
        ("DELETE", None) => "s3:DeleteBucket",
        ("POST", None) if subresource.contains("delete") => "s3:DeleteObject",
        _ => "s3:*",
    };
    let resource = match key {
        Some(key) => format!("arn:aws:s3:::{bucket}/{key}"),
        None => format!("arn:aws:s3:::{bucket}"),
    };
    vec![(action.to_string(), resource)]
}

/// The bucket ARN of an S3 object ARN.
pub fn bucket_of(object_arn: &str) -> &str {
    match object_arn.strip_prefix("arn:aws:s3:::").and_then(|rest| rest.find('/')) {
        Some(slash) => &object_arn[..("arn:aws:s3:::".len() + slash)],
        None => object_arn,
    }
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(statements: Vec<Statement>) -> Iam {
        Iam::new(vec![Role { function: "Fn".into(), statements }])
    }

    fn statement(sid: &str, actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            sid: sid.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            resources: resources.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard_match("arn:aws:s3:::b/payloads/*", "arn:aws:s3:::b/payloads/x/y"));
        assert!(!wildcard_match("arn:aws:s3:::b/payloads/*", "arn:aws:s3:::b/results/x"));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("arn:aws:dynamodb:r:a:table/t", "arn:aws:dynamodb:r:a:table/t/index/i"));
        assert!(wildcard_match("x*y*z", "xaaybbz"));
        assert!(!wildcard_match("x*y*z", "xaaybb"));
    }

    #[test]
    fn a_role_allows_what_a_statement_allows_and_names_what_it_denies() {
        let table = "arn:aws:dynamodb:us-east-1:123456789012:table/jobs";
        let iam = role(vec![statement("Jobs", &["dynamodb:GetItem", "dynamodb:PutItem"], &[table])]);
        let key = access_key("Fn");
        let get = vec![("dynamodb:GetItem".to_string(), table.to_string())];
        assert_eq!(iam.judge(Some(&key), &get), Verdict::Allowed);
        assert!(iam.statements_used().contains(&("Fn".into(), "Jobs".into())));
        // Actions match case-insensitively, resources exactly.
        assert!(iam.may(Some(&key), "DynamoDB:getitem", table));
        assert!(!iam.may(Some(&key), "dynamodb:GetItem", &format!("{table}/index/byOwner")));
        let scan = vec![("dynamodb:Scan".to_string(), table.to_string())];
        match iam.judge(Some(&key), &scan) {
            Verdict::Denied { action, message, .. } => {
                assert_eq!(action, "dynamodb:Scan");
                assert!(message.contains("is not authorized to perform: dynamodb:Scan on resource: "), "{message}");
                assert!(message.contains("assumed-role/jobpipe-local-FnRole/Fn"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(iam.judge(Some(&key), &[]), Verdict::Denied { .. }), "a call naming nothing is refused");
        assert_eq!(iam.judge(Some("SOMEONEELSE"), &get), Verdict::UnknownKey);
        assert_eq!(iam.judge(None, &get), Verdict::UnknownKey);
        assert_eq!(iam.judge(Some(ADMIN_ACCESS_KEY), &scan), Verdict::Allowed);
    }

    #[test]
    fn calls_name_the_resources_aws_authorizes_them_on() {
        let table = "arn:aws:dynamodb:us-east-1:123456789012:table/jobs";
        assert_eq!(
            dynamodb_requests("DynamoDB_20120810.Query", &json!({"TableName": "jobs", "IndexName": "byOwner"})),
            vec![("dynamodb:Query".to_string(), format!("{table}/index/byOwner"))]
        );
        assert_eq!(
            dynamodb_requests("DynamoDB_20120810.BatchWriteItem", &json!({"RequestItems": {"jobs": []}})),
            vec![("dynamodb:BatchWriteItem".to_string(), table.to_string())]
        );
        assert_eq!(
            dynamodb_requests(
                "DynamoDB_20120810.TransactWriteItems",
                &json!({"TransactItems": [{"ConditionCheck": {"TableName": "jobs"}}, {"Put": {"TableName": "jobs"}}]})
            ),
            vec![
                ("dynamodb:ConditionCheckItem".to_string(), table.to_string()),
                ("dynamodb:PutItem".to_string(), table.to_string())
            ]
        );
        let stream = "arn:aws:dynamodb:ddblocal:000000000000:table/jobs/stream/2026-12-02T18:53:02.741";
        assert_eq!(
            dynamodb_requests(
                "DynamoDBStreams_20120810.GetRecords",
                &json!({"ShardIterator": format!("{stream}|001|abc")})
            ),
            vec![("dynamodb:GetRecords".to_string(), stream.to_string())]
        );
        assert_eq!(
            sqs_requests(
                "AmazonSQS.DeleteMessageBatch",
                &json!({"QueueUrl": "http://127.0.0.1:1/123456789012/jobs-dlq", "Entries": []})
            ),
            vec![("sqs:DeleteMessage".to_string(), "arn:aws:sqs:us-east-1:123456789012:jobs-dlq".to_string())]
        );
        assert_eq!(
            sqs_requests("AmazonSQS.SendMessage", &json!({"QueueUrl": "http://localhost:4566/000000000000/jobs"})),
            vec![("sqs:SendMessage".to_string(), "arn:aws:sqs:us-east-1:123456789012:jobs".to_string())],
            "local queue ARNs carry the local account, whatever the engine's URLs say"
        );
        assert_eq!(
            s3_requests(&http::Method::GET, "/bucket/results/a%2Fb.png", Some("X-Amz-Credential=K")),
            vec![("s3:GetObject".to_string(), "arn:aws:s3:::bucket/results/a/b.png".to_string())]
        );
        assert_eq!(
            s3_requests(&http::Method::GET, "/bucket", Some("list-type=2")),
            vec![("s3:ListBucket".to_string(), "arn:aws:s3:::bucket".to_string())]
        );
        assert_eq!(bucket_of("arn:aws:s3:::bucket/results/x"), "arn:aws:s3:::bucket");
    }

    #[test]
    fn the_caller_is_the_key_it_signed_with() {
        let header = "AWS4-HMAC-SHA256 Credential=LOCALROLEFN/20261202/us-east-1/dynamodb/aws4_request, \
                      SignedHeaders=host, Signature=abc";
        assert_eq!(caller_key(Some(header), None).as_deref(), Some("LOCALROLEFN"));
        let query =
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=LOCALROLEFN%2F20261202%2Fus-east-1%2Fs3%2Faws4_request";
        assert_eq!(caller_key(None, Some(query)).as_deref(), Some("LOCALROLEFN"));
        assert_eq!(caller_key(None, Some("a=b")), None);
    }
}
