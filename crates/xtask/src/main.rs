//! Project automation: `cargo xtask setup` installs the pinned Python tools into `.venv`, the browser
//! test's tools and the generated-clients test's TypeScript generator (`setup-python` only the first,
//! `setup-baseline` the benchmark's Python baseline into `.venv-baseline`); `cargo xtask zips` builds the
//! arm64 Lambda zips of the template's functions; `cargo xtask test` is the one command that checks
//! everything (formatting, lints, the template, the zips, every test).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use local_engines::Engine;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup_engines().and_then(|_| setup_browser()).and_then(|_| setup_clients()),
        Some("setup-python") => setup().map(|_| ()),
        Some("setup-engines") => setup_engines().map(|_| ()),
        Some("setup-baseline") => {
            let root = repo_root();
            python_venv(&root.join(".venv-baseline"), &root.join("infra/baseline/requirements.txt")).map(|_| ())
        }
        Some("test") => test(&args[1..]),
        Some("zips") => zips_command(&args[1..]),
        _ => Err("usage: cargo xtask setup | setup-python | setup-engines | setup-baseline | zips [--profile P] \
                  [--lambda-dir D] \
                  [-p PACKAGE]... | test [-- extra cargo test args]"
            .into()),
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

/// What the local engines need: the Python tools (moto and the engines' launch scripts run on the venv's
/// Python), Java (Debian's, as root, where `java` is missing) and DynamoDB Local (npm, from the lock in
/// `infra/dynamodb-local`). Returns the venv's `bin` directory.
fn setup_engines() -> Result<PathBuf> {
    let bin = setup()?;
    let java = Command::new("java").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !java.is_ok_and(|status| status.success()) {
        eprintln!("xtask: installing Debian's Java runtime for DynamoDB Local");
        apt_install("openjdk-17-jre-headless")?;
    }
    npm_ci(&repo_root().join("infra/dynamodb-local"))?;
    Ok(bin)
}

/// `apt-get install` of one Debian package (as root).
fn apt_install(package: &str) -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", package]).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The browser test's tools: Debian's Chromium (apt, as root) and playwright-core (npm, from the lock).
fn setup_browser() -> Result<()> {
    let root = repo_root();
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("xtask: installing Debian's chromium for the browser test");
        apt_install("chromium")?;
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

fn test(extra: &[String]) -> Result<()> {
    let root = repo_root();
    let bin = setup_engines()?;
    setup_browser()?;
    setup_clients()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // CI builds a fresh clone once, where incremental compilation's caches only fill the disk (1.4 GB of
    // the 7.5 GB a run left; a CI run once failed with the disk full).
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let incremental = |command: &mut Command| {
        if ci {
            command.env("CARGO_INCREMENTAL", "0");
        }
    };

    run(Command::new(&cargo).current_dir(&root).args(["fmt", "--all", "--check"]))?;
    let mut clippy = Command::new(&cargo);
    clippy.current_dir(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    incremental(&mut clippy);
    run(&mut clippy)?;
    run(Command::new(bin.join("cfn-lint")).current_dir(&root).arg("template.yaml"))?;
    run(Command::new(bin.join("sam"))
        .current_dir(&root)
        .args(["validate", "--lint"])
        .env("SAM_CLI_TELEMETRY", "0")
        .env("__SAM_CLI_APP_DIR", root.join(".sam-cli")))?;
    run(Command::new(bin.join("python")).current_dir(&root).args(["infra/check_template.py", "template.yaml"]))?;
    // Each template rule refuses the defect it was written for, `sam build` shares one target directory,
    // moto's queues lose nothing under concurrent calls, and hand messages out as fair queues do.
    run(Command::new(bin.join("python")).current_dir(&root).args([
        "-m",
        "unittest",
        "infra/test_check_template.py",
        "infra/test_moto_sqs.py",
        "infra/test_sqs_fair_queues.py",
        "infra/test_sam_build.py",
    ]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    zips(&root, &bin, "lambda-check", &target_dir.join("lambda-arm64"), &[])?;
    if ci {
        // The zips are built and checked; on CI their cross build (1.1 GB) is not needed again.
        let cross = target_dir.join("aarch64-unknown-linux-gnu");
        match std::fs::remove_dir_all(&cross) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("removing {cross:?}: {e}")),
            _ => {}
        }
    }

    let moto = Engine::moto(&root, &bin.join("python")).map_err(|e| e.to_string())?;
    let dynamodb_local = Engine::dynamodb_local(&root, &bin.join("python")).map_err(|e| e.to_string())?;
    eprintln!("xtask: moto on {}, DynamoDB Local on {}", moto.endpoint(), dynamodb_local.endpoint());
    let mut tests = Command::new(&cargo);
    tests
        .current_dir(&root)
        .args(["test", "--workspace", "--all-targets"])
        .args(extra)
        .env("JOBPIPE_TEST_AWS_ENDPOINT", moto.endpoint())
        .env("JOBPIPE_TEST_DYNAMODB_ENDPOINT", dynamodb_local.endpoint())
        .env("JOBPIPE_PYTHON", bin.join("python"));
    incremental(&mut tests);
    let totals = run_tests(&mut tests)?;
    drop((moto, dynamodb_local));
    // One closing line for the whole run: cargo's last line speaks only for its last test binary.
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if totals.failed > 0 || totals.passed == 0 {
        return Err("tests failed or none ran".into());
    }
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// `cargo xtask zips [--profile P] [--lambda-dir D] [-p EXTRA]...`: the arm64 zips of the template's
/// functions (and of any extra packages), `lambda-check` profile and `target/lambda-arm64` by default.
fn zips_command(args: &[String]) -> Result<()> {
    let root = repo_root();
    let bin = setup()?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let (mut profile, mut lambda_dir, mut extra) =
        ("lambda-check".to_string(), target_dir.join("lambda-arm64"), vec![]);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--profile" => profile = value()?,
            "--lambda-dir" => lambda_dir = PathBuf::from(value()?),
            "-p" => extra.push(value()?),
            other => return Err(format!("zips: unknown argument {other:?}")),
        }
    }
    zips(&root, &bin, &profile, &lambda_dir, &extra)
}

/// `cargo lambda build --arm64` of every function of the template (and `extra` packages) into Lambda
/// zips under `lambda_dir`, as `sam build` would. The test command uses the `lambda-check` profile: it
/// proves they cross-compile and package without the release profile's fat-LTO build time (`jobpipe
/// bench` builds and measures the release zips through this too). cargo-lambda (and its zig) come from
/// the venv.
fn zips(root: &Path, bin: &Path, profile: &str, lambda_dir: &Path, extra: &[String]) -> Result<()> {
    let mut packages = template_functions(root)?;
    packages.extend(extra.iter().cloned());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .env("PATH", path)
        .args(["lambda", "build", "--profile", profile, "--arm64", "--output-format", "zip", "--lambda-dir"])
        .arg(lambda_dir);
    for package in &packages {
        command.args(["-p", package]);
    }
    run(&mut command)?;
    for package in &packages {
        let zip = lambda_dir.join(package).join("bootstrap.zip");
        let size = std::fs::metadata(&zip).map_err(|e| format!("{zip:?}: {e}"))?.len();
        eprintln!("xtask: {package}: arm64 zip built ({size} bytes, {profile} profile)");
    }
    Ok(())
}

/// The Cargo packages of the template's Lambda functions: the last part of each
/// `AWS::Serverless::Function`'s `CodeUri` (as the local stack reads them too).
fn template_functions(root: &Path) -> Result<Vec<String>> {
    let path = root.join("template.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path:?}: {e}"))?;
    let template: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| format!("{path:?}: {e}"))?;
    let resources = template.get("Resources").and_then(|r| r.as_mapping()).ok_or("template.yaml has no Resources")?;
    let mut packages = Vec::new();
    for (id, resource) in resources {
        if resource.get("Type").and_then(|t| t.as_str()) != Some("AWS::Serverless::Function") {
            continue;
        }
        let code_uri = resource.get("Properties").and_then(|p| p.get("CodeUri")).and_then(|c| c.as_str());
        let package = code_uri.and_then(|c| c.trim_end_matches('/').rsplit('/').next());
        packages.push(package.ok_or_else(|| format!("function {id:?} has no CodeUri naming its crate"))?.to_string());
    }
    if packages.is_empty() {
        return Err("template.yaml declares no AWS::Serverless::Function".into());
    }
    Ok(packages)
}

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
