//! A local implementation of the Lambda Runtime API: each function runs as a pool of child processes
//! (its real binary), each polling its own Runtime API endpoint for invocations, like Lambda execution
//! environments. A child that crashes fails its invocation and is restarted; one that outlives the
//! function's timeout is killed and restarted, as Lambda would. `api` serves the Runtime API itself.
//!
//! The same pool serves `jobpipe dev`, `jobpipe invoke` and the benchmarks (which read each
//! environment's init time and process id from `Function::ready`).

mod api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use api::RUNTIME_API;

/// How long an invocation may wait for an execution environment to take it: environments may be busy
/// or (re)starting. Lambda limits an environment's init phase to 10 s; this leaves room for a slow machine.
const START_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why an invocation did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The handler returned an error (`/invocation/{id}/error`).
    #[error("{function} returned an error: {error_type}: {message}")]
    Function { function: String, error_type: String, message: String },
    #[error("{function} timed out after {timeout:?}")]
    Timeout { function: String, timeout: Duration },
    #[error("{function}'s process exited during the invocation ({status})")]
    Crashed { function: String, status: String },
    /// No execution environment took the invocation (all busy, or none could start), as Lambda throttles.
    #[error("no execution environment of {function} took the invocation within {waited:?}")]
    NotStarted { function: String, waited: Duration },
    #[error("{function} is stopped")]
    Stopped { function: String },
    /// The event is larger than Lambda accepts for a synchronous invocation (`RequestTooLargeException`):
    /// the function never saw it.
    #[error("the event of {bytes} bytes exceeds {function}'s invocation payload limit of {MAX_PAYLOAD_BYTES} bytes")]
    RequestTooLarge { function: String, bytes: usize },
    /// The function's answer is larger than Lambda returns for a synchronous invocation.
    #[error("{function}'s response of {bytes} bytes exceeds the payload limit of {MAX_PAYLOAD_BYTES} bytes")]
    ResponseTooLarge { function: String, bytes: usize },
    /// The process used more memory than the function's `MemorySize` and was killed, as Lambda kills it.
    #[error("{function} ran out of memory: it used {used_mb} MB of its {limit_mb} MB")]
    OutOfMemory { function: String, used_mb: u64, limit_mb: u64 },
}

/// The largest event, and the largest response, of a synchronous invocation: Lambda's 6 MB quota.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// How often a process's memory is read against its `MemorySize`.
const MEMORY_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Where an invocation's outcome goes.
type Reply = oneshot::Sender<Result<Bytes, InvokeError>>;

/// An invocation waiting for an execution environment. Its deadline is set when an environment takes it,
/// as Lambda's is: time spent waiting for an environment never counts against the function's timeout.
struct Invocation {
    request_id: String,
    payload: Bytes,
    /// Told when an environment takes the invocation.
    taken: oneshot::Sender<()>,
    reply: Reply,
}

impl Invocation {
    /// Whether the caller stopped waiting (then nobody may run it).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// How to start a function's processes.
#[derive(Debug, Clone)]
pub struct FunctionProcess {
    pub name: String,
    /// The executable (the function's `bootstrap`, or an interpreter for a runtime client).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The working directory (default: this process's).
    pub dir: Option<PathBuf>,
    pub environment: BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory_mb: u64,
    /// Execution environments (processes) kept running: as many as the function's event sources invoke
    /// it at once, so an invocation never waits for another to finish.
    pub instances: usize,
}

impl FunctionProcess {
    /// One environment of `program` with no arguments or environment, a 60 s timeout and 128 MB.
    pub fn new(name: &str, program: PathBuf) -> FunctionProcess {
        FunctionProcess {
            name: name.to_string(),
            program,
            args: Vec::new(),
            dir: None,
            environment: BTreeMap::new(),
            timeout: Duration::from_secs(60),
            memory_mb: 128,
            instances: 1,
        }
    }
}

/// An execution environment whose process has asked for its first invocation: its init is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    /// From exec to the first `GET /runtime/invocation/next`: the environment's init duration.
    pub init: Duration,
}

/// Where an execution environment is in its life, as `Function::ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Its process is starting (or about to be restarted).
    Starting,
    Ready(Ready),
    /// Its process exited before it asked for an invocation (it will be started again).
    ExitedDuringInit(String),
}

/// Each environment's phase, by index.
type Board = watch::Sender<Vec<Phase>>;

/// A running function: invoke it with a payload, get its response.
#[derive(Clone)]
pub struct Function {
    spec: Arc<FunctionProcess>,
    queue: mpsc::Sender<Invocation>,
    stopping: Arc<AtomicBool>,
    kill: tokio::sync::broadcast::Sender<()>,
    board: Arc<Board>,
    supervisors: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    /// Counts starts beyond the first, for `jobpipe dev`'s crash reports and tests.
    pub restarts: Arc<AtomicU64>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.spec.name).finish()
    }
}

/// One process of an execution environment, as its Runtime API endpoint sees it. Each process gets an
/// endpoint of its own, closed when the process exits, so a `next` the dead process left pending can
/// never take an invocation.
struct Instance {
    function: String,
    /// Which of the function's environments this is.
    index: usize,
    /// The process's id and when it was exec'd, once it was.
    launched: watch::Sender<Option<(u32, Instant)>>,
    /// Whether the process has asked for an invocation yet (its first ask ends its init).
    asked: AtomicBool,
    board: Arc<Board>,
    timeout: Duration,
    incoming: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    /// The invocation this process is handling, if any.
    current: Mutex<Option<(String, Reply)>>,
    /// Set (while `current` is locked) once the process has exited.
    closed: watch::Sender<bool>,
    /// Fires when the process takes an invocation, with its deadline, so the supervisor can time it out.
    started: mpsc::UnboundedSender<(String, Duration)>,
    /// Notified whenever an invocation is answered.
    finished: tokio::sync::Notify,
}

impl Instance {
    /// Waits until `request_id` is no longer the invocation in progress.
    async fn answered(&self, request_id: &str) {
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.current.lock().await.as_ref().is_none_or(|(id, _)| id != request_id) {
                return;
            }
            notified.await;
        }
    }

    /// The next invocation its caller still waits for; `None` once the process has exited or the
    /// function stops.
    async fn take(&self) -> Option<Invocation> {
        let mut closed = self.closed.subscribe();
        let closing = async move {
            let _ = closed.wait_for(|closed| *closed).await;
        };
        tokio::pin!(closing);
        let mut incoming = tokio::select! {
            incoming = self.incoming.lock() => incoming,
            () = &mut closing => return None,
        };
        loop {
            let invocation = tokio::select! {
                invocation = incoming.recv() => invocation?,
                () = &mut closing => return None,
            };
            if !invocation.abandoned() {
                return Some(invocation);
            }
        }
    }

    /// Marks the process exited and fails the invocation it was handling, if any.
    async fn close(&self, status: &str) {
        let mut current = self.current.lock().await;
        self.closed.send_replace(true);
        if let Some((_, reply)) = current.take() {
            let _ = reply.send(Err(InvokeError::Crashed { function: self.function.clone(), status: status.into() }));
        }
    }
}

impl Function {
    /// Starts the function's processes. `log` receives each line they print, prefixed by the caller.
    pub async fn start(
        spec: FunctionProcess,
        log: mpsc::UnboundedSender<(String, String)>,
    ) -> std::io::Result<Function> {
        let (queue, incoming) = mpsc::channel::<Invocation>(1024);
        let incoming = Arc::new(Mutex::new(incoming));
        let board = Arc::new(watch::channel(vec![Phase::Starting; spec.instances.max(1)]).0);
        let function = Function {
            spec: Arc::new(spec),
            queue,
            stopping: Arc::new(AtomicBool::new(false)),
            kill: tokio::sync::broadcast::channel(4).0,
            board,
            supervisors: Arc::default(),
            restarts: Arc::new(AtomicU64::new(0)),
        };
        for index in 0..function.spec.instances.max(1) {
            function.supervise(index, incoming.clone(), log.clone());
        }
        Ok(function)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Invokes the function and waits for its response. The function's timeout runs from when an
    /// execution environment takes the invocation; the supervisor of that environment enforces it.
    pub async fn invoke(&self, payload: Bytes) -> Result<Bytes, InvokeError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(InvokeError::RequestTooLarge { function: self.spec.name.clone(), bytes: payload.len() });
        }
        let (reply, response) = oneshot::channel();
        let (taken, started) = oneshot::channel();
        let invocation = Invocation { request_id: uuid::Uuid::new_v4().to_string(), payload, taken, reply };
        let stopped = || InvokeError::Stopped { function: self.spec.name.clone() };
        self.queue.send(invocation).await.map_err(|_| stopped())?;
        match tokio::time::timeout(START_ALLOWANCE, started).await {
            Ok(Ok(())) => {}
            // Dropped untaken: the function is stopping, or the environment that took it exited first.
            Ok(Err(_)) if self.stopping.load(Ordering::SeqCst) => return Err(stopped()),
            Ok(Err(_)) => {
                return Err(InvokeError::Crashed {
                    function: self.spec.name.clone(),
                    status: "exited as it took the invocation".into(),
                });
            }
            // Dropping `response` marks the invocation abandoned; no environment runs it later.
            Err(_) => {
                return Err(InvokeError::NotStarted { function: self.spec.name.clone(), waited: START_ALLOWANCE });
            }
        }
        response.await.map_err(|_| stopped())?
    }

    /// Kills every process of the function at once, as a crash or an out-of-memory kill would; each is
    /// restarted like a new execution environment. For fault injection.
    pub fn kill_all(&self) {
        let _ = self.kill.send(());
    }

    /// Invokes with a JSON payload and parses the JSON response.
    pub async fn invoke_json(&self, payload: &serde_json::Value) -> Result<serde_json::Value, InvokeError> {
        let bytes = self.invoke(Bytes::from(payload.to_string())).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Stops restarting processes; running ones are killed when their supervisors see this.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.kill.send(());
    }

    /// Stops the function and waits until every one of its processes has exited.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let supervisors: Vec<JoinHandle<()>> = std::mem::take(&mut *self.supervisors.lock().expect("not poisoned"));
        for supervisor in supervisors {
            let _ = supervisor.await;
        }
    }

    /// Waits until environment `index` (0-based) has finished its init (its process asked for an
    /// invocation), or its process exited before that (`InvokeError::Crashed`). A restarted environment
    /// is ready again once its new process asks.
    pub async fn ready(&self, index: usize) -> Result<Ready, InvokeError> {
        let mut board = self.board.subscribe();
        let settled =
            board.wait_for(|board| board.get(index).is_none_or(|phase| !matches!(phase, Phase::Starting))).await;
        let crashed = |status: String| InvokeError::Crashed { function: self.spec.name.clone(), status };
        match settled.map(|board| board.get(index).cloned()) {
            Ok(Some(Phase::Ready(ready))) => Ok(ready),
            Ok(Some(Phase::ExitedDuringInit(status))) => Err(crashed(format!("exited during init ({status})"))),
            _ => Err(crashed(format!("has no execution environment {index}"))),
        }
    }

    /// Keeps one execution environment running: starts its process behind a Runtime API endpoint of its
    /// own, enforces the timeout of each invocation it takes, and starts a new one when it exits.
    fn supervise(
        &self,
        index: usize,
        incoming: Arc<Mutex<mpsc::Receiver<Invocation>>>,
        log: mpsc::UnboundedSender<(String, String)>,
    ) {
        let function = self.clone();
        let mut kills = self.kill.subscribe();
        let supervisor = tokio::spawn(async move {
            let label = if function.spec.instances > 1 {
                format!("{}#{index}", function.spec.name)
            } else {
                function.spec.name.clone()
            };
            let mut first = true;
            while !function.stopping.load(Ordering::SeqCst) {
                if !first {
                    function.restarts.fetch_add(1, Ordering::SeqCst);
                }
                first = false;
                let started_at = Instant::now();
                let (started_tx, mut started_rx) = mpsc::unbounded_channel();
                let instance = Arc::new(Instance {
                    function: function.spec.name.clone(),
                    index,
                    launched: watch::channel(None).0,
                    asked: AtomicBool::new(false),
                    board: function.board.clone(),
                    timeout: function.spec.timeout,
                    incoming: incoming.clone(),
                    current: Mutex::new(None),
                    closed: watch::channel(false).0,
                    started: started_tx,
                    finished: tokio::sync::Notify::new(),
                });
                function.board.send_modify(|board| board[index] = Phase::Starting);
                let launched = match api::serve(instance.clone()).await {
                    Ok((address, endpoint)) => {
                        let exec = Instant::now();
                        function.spawn(address, &label, &log).map(|child| {
                            instance.launched.send_replace(child.id().map(|pid| (pid, exec)));
                            (child, endpoint)
                        })
                    }
                    Err(error) => Err(error),
                };
                let (mut child, endpoint) = match launched {
                    Ok(launched) => launched,
                    Err(error) => {
                        let _ =
                            log.send((label.clone(), format!("could not start {:?}: {error}", function.spec.program)));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                };
                let out_of_memory = memory_exceeded(child.id(), function.spec.memory_mb);
                tokio::pin!(out_of_memory);
                let status = loop {
                    tokio::select! {
                        status = child.wait() => break status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                        used_mb = &mut out_of_memory => break function.kill_out_of_memory(&instance, &mut child, used_mb, &label, &log).await,
                        Some((request_id, budget)) = started_rx.recv() => {
                            // The process took an invocation: it must answer before the deadline.
                            let instance = instance.clone();
                            let answered = tokio::time::timeout(budget + Duration::from_millis(200), instance.answered(&request_id));
                            tokio::select! {
                                status = child.wait() => break status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                                used_mb = &mut out_of_memory => break function.kill_out_of_memory(&instance, &mut child, used_mb, &label, &log).await,
                                result = answered => if result.is_err() {
                                    let _ = log.send((label.clone(), format!("invocation {request_id} timed out after {:?}; stopping this environment", function.spec.timeout)));
                                    if let Some((_, reply)) = instance.current.lock().await.take() {
                                        let _ = reply.send(Err(InvokeError::Timeout { function: function.spec.name.clone(), timeout: function.spec.timeout }));
                                    }
                                    let _ = child.kill().await;
                                    break "killed after timeout".to_string();
                                },
                                Ok(()) = kills.recv() => {
                                    let _ = child.kill().await;
                                    break "killed during an invocation".to_string();
                                }
                            }
                        }
                        Ok(()) = kills.recv() => {
                            let _ = child.kill().await;
                            break "killed (fault injection)".to_string();
                        }
                    }
                };
                // The endpoint goes with its process: a `next` it left pending takes nothing more.
                instance.close(&status).await;
                function.board.send_modify(|board| {
                    board[index] = match board[index] {
                        Phase::Ready(_) => Phase::Starting,
                        _ => Phase::ExitedDuringInit(status.clone()),
                    }
                });
                endpoint.abort();
                if function.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let _ = log
                    .send((label.clone(), format!("process exited ({status}); starting a new execution environment")));
                // A process that dies at once would otherwise spin.
                if started_at.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        self.supervisors.lock().expect("not poisoned").push(supervisor);
    }

    /// Kills a process that used more than its `MemorySize`, failing the invocation it was handling with
    /// `OutOfMemory`. Answers the exit status to report.
    async fn kill_out_of_memory(
        &self,
        instance: &Instance,
        child: &mut Child,
        used_mb: u64,
        label: &str,
        log: &mpsc::UnboundedSender<(String, String)>,
    ) -> String {
        let limit_mb = self.spec.memory_mb;
        let _ =
            log.send((label.to_string(), format!("used {used_mb} MB of its {limit_mb} MB; killed (out of memory)")));
        if let Some((_, reply)) = instance.current.lock().await.take() {
            let _ = reply.send(Err(InvokeError::OutOfMemory { function: self.spec.name.clone(), used_mb, limit_mb }));
        }
        let _ = child.kill().await;
        "killed: out of memory".to_string()
    }

    fn spawn(
        &self,
        address: SocketAddr,
        label: &str,
        log: &mpsc::UnboundedSender<(String, String)>,
    ) -> std::io::Result<Child> {
        let mut command = Command::new(&self.spec.program);
        if let Some(dir) = &self.spec.dir {
            command.current_dir(dir);
        }
        command
            .args(&self.spec.args)
            .env_clear()
            .envs(&self.spec.environment)
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", self.spec.memory_mb.to_string())
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", self.spec.name))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", label)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let (log, label) = (log.clone(), label.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = log.send((label.clone(), line));
                }
            });
        }
        Ok(child)
    }
}

/// Resolves, with the megabytes it uses, once the process's resident memory exceeds `limit_mb` (its
/// `MemorySize`); never for a process without an id (it has exited).
async fn memory_exceeded(pid: Option<u32>, limit_mb: u64) -> u64 {
    let Some(pid) = pid else { return std::future::pending().await };
    loop {
        if let Some(used_kb) = resident_kb(pid)
            && used_kb > limit_mb * 1024
        {
            return used_kb / 1024;
        }
        tokio::time::sleep(MEMORY_CHECK_EVERY).await;
    }
}

/// The process's resident memory (`VmRSS`), from `/proc`.
fn resident_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}
