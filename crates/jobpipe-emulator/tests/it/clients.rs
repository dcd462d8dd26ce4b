//! Clients generated from the served OpenAPI document by widely used generators (TypeScript and Python)
//! submit, read and list jobs through the local stack.

use jobpipe_testkit::local_stack::*;
use serde_json::{Value, json};

use jobpipe_emulator::dev::DevStack;

use super::root;

/// Runs one step of a generated-client test (a generator, a compiler, a client program) in
/// `tests/clients` and answers what it printed; a failure shows all of its output.
async fn client_step(what: &str, command: &mut tokio::process::Command) -> String {
    let output = command
        .current_dir(root().join("tests/clients"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Checks what a generated client's program (`tests/clients`) printed: the echo and wifi-qr jobs it
/// submitted completed, the list of completed jobs has them, a missing job's `404` was read as the
/// document's error body; and the API, asked directly, holds those jobs with the inputs the client sent.
async fn check_client_report(stack: &DevStack, token: &str, stdout: &str, ssid: &str) {
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("the client's report: {e}:\n{stdout}"));
    let jobs = report["jobs"].as_array().unwrap_or_else(|| panic!("{report}"));
    let kinds: Vec<&str> = jobs.iter().filter_map(|job| job["kind"].as_str()).collect();
    assert_eq!(kinds, ["echo", "wifi-qr"], "{report}");
    let listed = report["listed"].as_array().unwrap_or_else(|| panic!("{report}"));
    for job in jobs {
        assert_eq!(job["status"], "completed", "{report}");
        assert!(job["completedAt"].is_string(), "the client read completedAt: {report}");
        assert!(listed.contains(&job["jobId"]), "the client listed {}: {report}", job["jobId"]);
        let id = job["jobId"].as_str().unwrap();
        let view =
            json_of(reqwest::Client::new().get(format!("{}/jobs/{id}", stack.base_url())).bearer_auth(token)).await;
        assert_eq!(view["status"], "completed", "{view}");
        match job["kind"].as_str() {
            Some("echo") => assert_eq!(view["input"], json!({"sleepMs": 10, "failTimes": 0}), "{view}"),
            _ => assert_eq!(view["input"]["ssid"], ssid, "{view}"),
        }
    }
    assert_eq!(report["missing"], json!({"status": 404, "code": "not_found"}), "{report}");
}

/// A TypeScript client generated from the served document by @hey-api/openapi-ts type-checks (tsc, strict)
/// with a program that names each kind's request body and input models, and that program submits, reads
/// and lists jobs through the local stack. (With each kind's alternative inlined, the models had no names.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_client_generated_from_the_openapi_document_submits_reads_and_lists_jobs() {
    let clients = root().join("tests/clients");
    let bin = clients.join("node_modules/.bin");
    assert!(
        bin.join("openapi-ts").exists() && bin.join("tsc").exists(),
        "@hey-api/openapi-ts and typescript are installed by `cargo xtask setup` (tests/clients/package-lock.json)"
    );
    let stack = start_stack().await;
    let document = format!("{}/openapi.json", stack.base_url());
    client_step(
        "@hey-api/openapi-ts",
        tokio::process::Command::new(bin.join("openapi-ts"))
            .args(["--file", "openapi-ts.config.mjs"])
            .env("JOBPIPE_OPENAPI_URL", &document),
    )
    .await;
    let _ = std::fs::remove_dir_all(clients.join("generated/typescript-js"));
    client_step("tsc", tokio::process::Command::new(bin.join("tsc")).args(["--project", "tsconfig.json"])).await;
    let token = stack.token("typescript-client");
    let stdout = client_step(
        "the TypeScript client",
        tokio::process::Command::new("node")
            .arg("generated/typescript-js/typescript/jobs.js")
            .arg(stack.base_url())
            .arg(&token),
    )
    .await;
    check_client_report(&stack, &token, &stdout, "jobpipe-ts").await;
    stack.stop().await;
}

/// A Python client generated from the served document by openapi-python-client, with no warning (it used to
/// make duplicate models from the inlined per-kind alternatives and drop those the submit operation
/// imports), imports whole, and a program using each kind's named models submits, reads and lists jobs
/// through the local stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_openapi_document_submits_reads_and_lists_jobs() {
    let venv = root().join(".venv/bin");
    assert!(
        venv.join("openapi-python-client").exists(),
        "openapi-python-client is installed by `cargo xtask setup` (infra/requirements.txt)"
    );
    let stack = start_stack().await;
    let document = format!("{}/openapi.json", stack.base_url());
    client_step(
        "openapi-python-client",
        tokio::process::Command::new(venv.join("openapi-python-client"))
            .args(["generate", "--url", &document, "--meta", "none", "--config", "python/config.yaml"])
            .args(["--output-path", "generated/python/jobpipe_client", "--overwrite", "--fail-on-warning"]),
    )
    .await;
    let token = stack.token("python-client");
    let stdout = client_step(
        "the Python client",
        tokio::process::Command::new(venv.join("python"))
            .arg("python/jobs.py")
            .arg(stack.base_url())
            .arg(&token)
            .env("PYTHONPATH", "generated/python")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )
    .await;
    check_client_report(&stack, &token, &stdout, "jobpipe-py").await;
    stack.stop().await;
}
