//! One Lambda execution environment for benchmarks: a process started under a Runtime API of its own,
//! with its init duration (exec to the first `GET /runtime/invocation/next`), its invocations driven
//! one at a time, and its memory and CPU read from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::runtime::RUNTIME_API;
/// How long a process may take to reach its first `next` (Lambda's init phase limit is 10 s).
const INIT_LIMIT: Duration = Duration::from_secs(10);

/// How to start a function: program, arguments, environment and working directory.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
}

type Reply = oneshot::Sender<Result<Bytes, String>>;

struct Shared {
    /// Invocations waiting for the process to ask for them.
    queue: Mutex<mpsc::Receiver<(String, Bytes, Reply)>>,
    /// Answers owed, by request id.
    pending: Mutex<HashMap<String, Reply>>,
    /// Fires at the first `next`.
    first_next: Mutex<Option<oneshot::Sender<Instant>>>,
}

/// CPU time and peak memory of a process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_kb: u64,
}

pub struct Environment {
    child: Child,
    pid: u32,
    pub init: Duration,
    invocations: mpsc::Sender<(String, Bytes, Reply)>,
    server: tokio::task::JoinHandle<()>,
}

impl Environment {
    /// Starts the process and waits until it asks for its first invocation.
    pub async fn start(launch: &Launch, name: &str) -> anyhow::Result<Environment> {
        let (invocations, queue) = mpsc::channel(16);
        let (first_tx, first_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            pending: Mutex::new(HashMap::new()),
            first_next: Mutex::new(Some(first_tx)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route(&format!("{RUNTIME_API}/invocation/next"), get(next))
            .route(&format!("{RUNTIME_API}/invocation/{{id}}/response"), post(respond))
            .route(&format!("{RUNTIME_API}/invocation/{{id}}/error"), post(fail))
            .route(&format!("{RUNTIME_API}/init/error"), post(init_error))
            .with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .env_clear()
            .envs(&launch.env)
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &launch.dir {
            command.current_dir(dir);
        }
        let exec = Instant::now();
        let mut child = command.spawn().with_context(|| format!("starting {:?}", launch.program))?;
        let pid = child.id().context("the process has no pid")?;
        let stderr = child.stderr.take();
        let first = tokio::select! {
            first = tokio::time::timeout(INIT_LIMIT, first_rx) => first,
            status = child.wait() => {
                let mut text = String::new();
                if let Some(mut stderr) = stderr {
                    use tokio::io::AsyncReadExt;
                    let _ = stderr.read_to_string(&mut text).await;
                }
                bail!("{name} exited during init ({status:?}): {}", text.trim());
            }
        };
        let Ok(Ok(first)) = first else {
            bail!("{name} did not ask for an invocation within {INIT_LIMIT:?}");
        };
        // Keep draining stderr so a chatty process never blocks on a full pipe.
        if let Some(stderr) = stderr {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(_)) = lines.next_line().await {}
            });
        }
        Ok(Environment { child, pid, init: first - exec, invocations, server })
    }

    /// Sends one event and waits for the function's answer (an error answer is an `Err`).
    pub async fn invoke(&self, payload: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let (reply, answer) = oneshot::channel();
        let request_id = uuid::Uuid::new_v4().to_string();
        self.invocations.send((request_id, Bytes::from(payload.to_string()), reply)).await?;
        let answer = tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .context("no answer within 60 s")?
            .context("the environment stopped")?;
        match answer {
            Ok(body) => Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)),
            Err(error) => bail!("the function answered an error: {error}"),
        }
    }

    /// CPU time (user + system, all threads) and peak resident memory so far.
    pub fn usage(&self) -> Usage {
        usage_of(self.pid)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.server.abort();
    }
}

/// Reads `/proc`: CPU from each thread's `schedstat` (nanoseconds), or from `stat`'s clock ticks when
/// those say more (threads that already ended count only there); peak RSS is `VmHWM`.
pub fn usage_of(pid: u32) -> Usage {
    let mut cpu_ns: u64 = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                cpu_ns += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    let ticks_ns = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 10_000_000) // USER_HZ is 100 on Linux
        })
        .unwrap_or(0);
    let peak_rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        })
        .unwrap_or(0);
    Usage { cpu: Duration::from_nanos(cpu_ns.max(ticks_ns)), peak_rss_kb }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(first) = shared.first_next.lock().await.take() {
        let _ = first.send(Instant::now());
    }
    let Some((request_id, payload, reply)) = shared.queue.lock().await.recv().await else {
        return StatusCode::GONE.into_response();
    };
    shared.pending.lock().await.insert(request_id.clone(), reply);
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(60);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", request_id);
    set("lambda-runtime-deadline-ms", deadline.as_millis().to_string());
    set("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:bench".into());
    set("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0".into());
    set("content-type", "application/json".into());
    (headers, payload).into_response()
}

async fn respond(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match shared.pending.lock().await.remove(&id) {
        Some(reply) => {
            let _ = reply.send(Ok(body));
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn fail(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match shared.pending.lock().await.remove(&id) {
        Some(reply) => {
            let _ = reply.send(Err(String::from_utf8_lossy(&body).into_owned()));
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn init_error(body: Bytes) -> StatusCode {
    tracing::warn!(error = %String::from_utf8_lossy(&body), "a function failed to initialize");
    StatusCode::ACCEPTED
}
