//! Starts the local engines that stand in for AWS services (moto, and Amazon's DynamoDB Local for
//! DynamoDB), each as a child process that stops when its [`Engine`] handle is dropped, and also when the
//! process that started it dies (its launch script watches its stdin).
//!
//! This is the one place that knows how an engine is launched and how it says it is ready; the test
//! command (`xtask`), the test harness and the local stack all start engines through it.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running engine. Dropping it stops the engine and waits for it to exit.
pub struct Engine {
    name: &'static str,
    endpoint: String,
    child: Child,
}

/// Why an engine did not start. Retrying helps only when the machine was short of resources.
#[derive(Debug)]
pub struct EngineError {
    pub engine: &'static str,
    pub message: String,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not start: {}", self.engine, self.message)
    }
}

impl std::error::Error for EngineError {}

impl Engine {
    /// moto (`infra/moto_server.py` of the checkout at `root`, run by `python`, which must have the
    /// pinned `infra/requirements.txt` installed) on a free port of 127.0.0.1. It serves SQS, S3, IAM,
    /// STS, CloudFormation and the other services the project uses, except DynamoDB.
    pub fn moto(root: &Path, python: &Path) -> Result<Engine, EngineError> {
        Engine::launch("moto", python, &root.join("infra/moto_server.py"), "run `cargo xtask setup` first")
    }

    /// Amazon's DynamoDB Local (`infra/dynamodb_local.py` starts the jar that `cargo xtask setup`
    /// installs into `infra/dynamodb-local`, on Java) on a free port of 127.0.0.1: DynamoDB and
    /// DynamoDB Streams, as the official engine serves them.
    pub fn dynamodb_local(root: &Path, python: &Path) -> Result<Engine, EngineError> {
        let hint = "run `cargo xtask setup` first (it installs Java and DynamoDB Local)";
        Engine::launch("DynamoDB Local", python, &root.join("infra/dynamodb_local.py"), hint)
    }

    /// Runs a launch script that prints `READY <port>` once its engine serves, and stops the engine when
    /// its stdin closes.
    fn launch(name: &'static str, python: &Path, script: &Path, hint: &str) -> Result<Engine, EngineError> {
        let failed = |message: String| EngineError { engine: name, message };
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(format!("running {python:?} ({hint}): {e}")))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        BufReader::new(stdout).read_line(&mut line).map_err(|e| failed(format!("reading its READY line: {e}")))?;
        let Some(port) = line.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("{script:?} printed {line:?} instead of READY ({hint})")));
        };
        Ok(Engine { name, endpoint: format!("http://127.0.0.1:{port}"), child })
    }

    /// Where the engine serves AWS API calls (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The engine's process id (benchmarks read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The engine exits when its stdin closes (the launch scripts read it until then).
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The Python of the checkout's `.venv` (made by `cargo xtask setup-python`).
pub fn venv_python(root: &Path) -> PathBuf {
    root.join(".venv/bin/python")
}
