//! One Lambda execution environment for benchmarks: a function of the local runtime with a single
//! environment, its init duration (exec to the first `GET /runtime/invocation/next`, as the runtime
//! reports it), invocations driven one at a time, and its process's memory and CPU read from `/proc`.

use std::time::Duration;

use anyhow::{Context, bail};
use jobpipe_emulator::runtime::{Function, FunctionProcess};
use tokio::sync::mpsc;

/// How long a process may take to reach its first `next` (Lambda's init phase limit is 10 s).
const INIT_LIMIT: Duration = Duration::from_secs(10);

/// CPU time and peak memory of a process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_kb: u64,
}

pub struct Environment {
    function: Function,
    pid: u32,
    pub init: Duration,
}

impl Environment {
    /// Starts the process and waits until it asks for its first invocation.
    pub async fn start(process: &FunctionProcess) -> anyhow::Result<Environment> {
        let name = process.name.clone();
        let (log, mut lines) = mpsc::unbounded_channel();
        let function = Function::start(FunctionProcess { instances: 1, ..process.clone() }, log).await?;
        let ready = tokio::time::timeout(INIT_LIMIT, function.ready(0)).await;
        let ready = match ready {
            Ok(Ok(ready)) => ready,
            failed => {
                function.stop_and_wait().await;
                let mut printed = Vec::new();
                while let Ok((_, line)) = lines.try_recv() {
                    printed.push(line);
                }
                let printed = printed.join("\n");
                match failed {
                    Ok(Err(error)) => bail!("{error}: {printed}"),
                    _ => bail!("{name} did not ask for an invocation within {INIT_LIMIT:?}: {printed}"),
                }
            }
        };
        // What the function prints is not measured; keep reading it so its pipes never fill.
        tokio::spawn(async move { while lines.recv().await.is_some() {} });
        Ok(Environment { function, pid: ready.pid, init: ready.init })
    }

    /// Sends one event and waits for the function's answer (an error answer is an `Err`).
    pub async fn invoke(&self, payload: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.function.invoke_json(payload).await.with_context(|| format!("invoking {}", self.function.name()))
    }

    /// CPU time (user + system, all threads) and peak resident memory so far.
    pub fn usage(&self) -> Usage {
        usage_of(self.pid)
    }

    pub async fn stop(self) {
        self.function.stop_and_wait().await;
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
