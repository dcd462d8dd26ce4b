//! Project automation: `cargo xtask setup` installs the pinned Python tools into `.venv`, the browser
//! test's tools and the generated-clients test's TypeScript generator (`setup-python` only the first,
//! `setup-baseline` the benchmark's Python baseline into `.venv-baseline`); `cargo xtask test` is the one
//! command that checks everything (formatting, lints, the template, every test).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().and_then(|_| setup_browser()).and_then(|_| setup_clients()),
        Some("setup-python") => setup().map(|_| ()),
        Some("setup-baseline") => {
            let root = repo_root();
            python_venv(&root.join(".venv-baseline"), &root.join("infra/baseline/requirements.txt")).map(|_| ())
        }
        Some("test") => test(&args[1..]),
        _ => Err("usage: cargo xtask setup | setup-python | setup-baseline | test [-- extra cargo test args]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root exists")
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command.status().map_err(|e| format!("could not start {command:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed with {status}")) }
}

/// Creates `.venv` and installs `infra/requirements.txt` into it, unless it is already up to date.
/// Returns the venv's `bin` directory.
fn setup() -> Result<PathBuf> {
    let root = repo_root();
    python_venv(&root.join(".venv"), &root.join("infra/requirements.txt"))
}

/// Creates the venv and installs the pinned requirements into it, again whenever the file changed (a
/// stamp in the venv remembers what was installed). Returns the venv's `bin` directory.
fn python_venv(venv: &Path, requirements: &Path) -> Result<PathBuf> {
    let bin = venv.join("bin");
    let wanted = std::fs::read_to_string(requirements).map_err(|e| format!("reading {requirements:?}: {e}"))?;
    let stamp = venv.join(".installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && bin.join("python").exists() {
        return Ok(bin);
    }
    if !bin.join("python").exists() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(python).args(["-m", "venv"]).arg(venv))?;
    }
    run(Command::new(bin.join("python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("writing {stamp:?}: {e}"))?;
    Ok(bin)
}

/// The browser test's tools: Debian's Chromium (apt, as root) and playwright-core (npm, from the lock).
fn setup_browser() -> Result<()> {
    let root = repo_root();
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("xtask: installing Debian's chromium for the browser test");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    npm_ci(&root.join("tests/browser"))
}

/// The generated-clients test's TypeScript tools (@hey-api/openapi-ts, typescript) from the lock in
/// `tests/clients`; its Python generator (openapi-python-client) is pinned in `infra/requirements.txt`.
fn setup_clients() -> Result<()> {
    npm_ci(&repo_root().join("tests/clients"))
}

/// `npm ci` in `dir` from its `package-lock.json`, again whenever the lock changed (a stamp in
/// `node_modules` remembers what was installed).
fn npm_ci(dir: &Path) -> Result<()> {
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .map_err(|e| format!("reading {:?}: {e}", dir.join("package-lock.json")))?;
    let stamp = dir.join("node_modules/.installed-lock.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        run(Command::new("npm").current_dir(dir).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]))?;
        std::fs::write(&stamp, lock).map_err(|e| format!("writing {stamp:?}: {e}"))?;
    }
    Ok(())
}

/// A moto server for the whole test run; it exits when its stdin (held here) closes.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(bin: &Path) -> Result<Moto> {
        let mut child = Command::new(bin.join("python"))
            .arg(repo_root().join("infra/moto_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting moto: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).map_err(|e| e.to_string())?;
        let port = line.strip_prefix("READY ").map(str::trim).ok_or_else(|| format!("moto did not start: {line:?}"))?;
        Ok(Moto { endpoint: format!("http://127.0.0.1:{port}"), child })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn test(extra: &[String]) -> Result<()> {
    let root = repo_root();
    let bin = setup()?;
    setup_browser()?;
    setup_clients()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    run(Command::new(&cargo).current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(Command::new(&cargo).current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new(bin.join("cfn-lint")).current_dir(&root).arg("template.yaml"))?;
    run(Command::new(bin.join("sam"))
        .current_dir(&root)
        .args(["validate", "--lint"])
        .env("SAM_CLI_TELEMETRY", "0")
        .env("__SAM_CLI_APP_DIR", root.join(".sam-cli")))?;
    run(Command::new(bin.join("python")).current_dir(&root).args(["infra/check_template.py", "template.yaml"]))?;
    // Each template rule refuses the defect it was written for.
    run(Command::new(bin.join("python")).current_dir(&root).args(["-m", "unittest", "infra/test_check_template.py"]))?;
    lambda_builds(&root, &bin, &cargo)?;

    let moto = Moto::start(&bin)?;
    eprintln!("xtask: moto on {}", moto.endpoint);
    let totals = run_tests(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["test", "--workspace", "--all-targets"])
            .args(extra)
            .env("JOBPIPE_TEST_AWS_ENDPOINT", &moto.endpoint)
            .env("JOBPIPE_PYTHON", bin.join("python")),
    )?;
    drop(moto);
    // One closing line for the whole run: cargo's last line speaks only for its last test binary.
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if totals.failed > 0 || totals.passed == 0 {
        return Err("tests failed or none ran".into());
    }
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// `cargo lambda build --arm64` of every function into Lambda zips, as `sam build` would, with the
/// `lambda-check` profile: it proves they cross-compile and package without the release profile's
/// fat-LTO build time (`jobpipe bench` builds and measures the release zips). cargo-lambda (and its zig)
/// come from the venv.
fn lambda_builds(root: &Path, bin: &Path, cargo: &str) -> Result<()> {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let lambda_dir = target_dir.join("lambda-arm64");
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .env("PATH", path)
        .args(["lambda", "build", "--profile", "lambda-check", "--arm64", "--output-format", "zip", "--lambda-dir"])
        .arg(&lambda_dir);
    for function in FUNCTIONS {
        command.args(["-p", function]);
    }
    run(&mut command)?;
    for function in FUNCTIONS {
        let zip = lambda_dir.join(function).join("bootstrap.zip");
        let size = std::fs::metadata(&zip).map_err(|e| format!("{zip:?}: {e}"))?.len();
        eprintln!(
            "xtask: {function}: arm64 zip built ({size} bytes, lambda-check profile; release sizes: jobpipe bench)"
        );
    }
    Ok(())
}

/// The Lambda functions (their Cargo packages).
const FUNCTIONS: [&str; 4] = ["api-ingest", "queue-processor", "notifier", "websocket-connect"];

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, passing its output through while adding up its `test result:` lines.
fn run_tests(command: &mut Command) -> Result<Totals> {
    eprintln!("xtask: running {command:?}");
    let mut child = command.stdout(Stdio::piped()).spawn().map_err(|e| format!("could not start {command:?}: {e}"))?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            totals.passed += count_before(summary, " passed");
            totals.failed += count_before(summary, " failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        println!("{} passed, {} failed", totals.passed, totals.failed.max(1));
        return Err(format!("{command:?} failed with {status}"));
    }
    Ok(totals)
}

/// In `ok. 13 passed; 0 failed; ...`, the number before `label`.
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
