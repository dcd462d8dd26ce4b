//! `jobpipe iam-mutations`: proof by mutation that every permission statement of `template.yaml` is
//! needed and enforced locally. For each statement of each function in turn, a copy of the template
//! without it runs the local stack's role test (`ROLE_TEST`, which drives every path of the pipeline);
//! the test must then fail, and its output must name one of the statement's actions as refused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use jobpipe_emulator::template::Template;

/// The test each mutated template runs: the emulator's `every_statement_of_every_role_is_needed_by_the_pipeline`.
pub const ROLE_TEST: &str = "iam::every_statement_of_every_role_is_needed_by_the_pipeline";

/// One statement to remove.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub function: String,
    pub sid: String,
    pub actions: Vec<String>,
}

/// What the role test made of a template without one statement.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mutation: Mutation,
    /// The test failed.
    pub failed: bool,
    /// The first refusal in its output that names one of the statement's actions.
    pub refusal: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    /// The statement is needed (the test fails without it) and checked (the refusal names its action).
    pub fn proven(&self) -> bool {
        self.failed && self.refusal.is_some()
    }
}

/// Every statement of every function of the template.
pub fn mutations(template: &Template) -> anyhow::Result<Vec<Mutation>> {
    Ok(template
        .functions()?
        .into_iter()
        .flat_map(|function| {
            function.statements.into_iter().map(move |statement| Mutation {
                function: function.logical_id.clone(),
                sid: statement.sid,
                actions: statement.actions,
            })
        })
        .collect())
}

/// The template's text without one statement of one function: the statement's `- Sid:` line and every
/// line indented under it, comments and the rest of the file untouched.
pub fn without_statement(text: &str, function: &str, sid: &str) -> anyhow::Result<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim_end() == format!("  {function}:"))
        .with_context(|| format!("no resource {function}"))?;
    let end = lines[start + 1..]
        .iter()
        .position(|line| !line.trim().is_empty() && indent(line) <= 2 && !line.trim_start().starts_with('#'))
        .map_or(lines.len(), |offset| start + 1 + offset);
    let sid_line = format!("- Sid: {sid}");
    let first = (start..end)
        .find(|&i| {
            let trimmed = lines[i].trim_start();
            trimmed == sid_line || trimmed.starts_with(&format!("{sid_line} "))
        })
        .with_context(|| format!("{function} has no statement {sid}"))?;
    let last = lines[first + 1..end]
        .iter()
        .position(|line| !line.trim().is_empty() && indent(line) <= indent(lines[first]))
        .map_or(end, |offset| first + 1 + offset);
    let kept: Vec<&str> = lines[..first].iter().chain(&lines[last..]).copied().collect();
    Ok(kept.join("\n") + "\n")
}

/// Runs the role test once per statement, each with a template copy under `work_dir` that lacks it
/// (its output beside it, `<function>-<sid>.log`). `environment` is what the test process needs besides
/// (the engines' endpoints). `only` (`Function/Sid`), when not empty, picks the statements. The role
/// test bounds its own waits, so every run ends.
pub async fn run(
    root: &Path,
    work_dir: &Path,
    environment: &[(String, String)],
    only: &[String],
    mut progress: impl FnMut(&Outcome),
) -> anyhow::Result<Vec<Outcome>> {
    let template_path = root.join("template.yaml");
    let text = std::fs::read_to_string(&template_path).with_context(|| format!("reading {template_path:?}"))?;
    let mut all = mutations(&Template::load(&template_path)?)?;
    if !only.is_empty() {
        all.retain(|m| only.contains(&format!("{}/{}", m.function, m.sid)));
        if all.len() != only.len() {
            bail!("--only names statements the template does not have: {only:?}");
        }
    }
    std::fs::create_dir_all(work_dir)?;
    let test_binary = build_role_test(root).await?;
    let mut outcomes = Vec::new();
    for mutation in all {
        let name = format!("{}-{}", mutation.function, mutation.sid);
        let copy: PathBuf = work_dir.join(format!("{name}.yaml"));
        std::fs::write(&copy, without_statement(&text, &mutation.function, &mutation.sid)?)?;
        if mutations(&Template::load(&copy)?)?.iter().any(|m| m.function == mutation.function && m.sid == mutation.sid)
        {
            bail!("{copy:?} still has {name}");
        }
        let log_path = work_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let status = tokio::process::Command::new(&test_binary)
            // cargo runs a package's tests in its directory.
            .current_dir(root.join("crates/jobpipe-emulator"))
            .args(["--exact", ROLE_TEST, "--nocapture"])
            .env("JOBPIPE_TEMPLATE", &copy)
            .envs(environment.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await
            .with_context(|| format!("running {test_binary:?}"))?;
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let refusal = refusal_naming(&output, &mutation.actions);
        let outcome =
            Outcome { mutation, failed: !status.success(), refusal, seconds: started.elapsed().as_secs_f64() };
        progress(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Builds the emulator's test binary; answers its path.
async fn build_role_test(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = tokio::process::Command::new(cargo)
        .current_dir(root)
        .args(["test", "-p", "jobpipe-emulator", "--test", "it", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !output.status.success() {
        bail!("building the emulator's tests failed");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| message["target"]["name"] == "it" && message["executable"].is_string())
        .and_then(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for the emulator's `it` tests")
}

/// The first refusal in `output` that names one of `actions`: an `AccessDenied` ("is not authorized to
/// perform: <action>") or an event source mapping Lambda would not create ("permissions to call
/// <action>").
pub fn refusal_naming(output: &str, actions: &[String]) -> Option<String> {
    for marker in ["is not authorized to perform: ", "does not have permissions to call "] {
        for (at, _) in output.match_indices(marker) {
            let rest = &output[at + marker.len()..];
            let action: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-').collect();
            if actions.iter().any(|a| a.eq_ignore_ascii_case(&action)) {
                let resource = rest.split(" on resource: ").nth(1).or_else(|| rest.split(" on ").nth(1));
                let resource: String = resource
                    .unwrap_or_default()
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\\')
                    .collect();
                return Some(format!("{action} on {resource}"));
            }
        }
    }
    None
}

/// The table of outcomes.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| function | statement removed | role test | refused (action on resource) | s |\n|---|---|---|---|---|\n",
    );
    for outcome in outcomes {
        out += &format!(
            "| {} | {} | {} | {} | {:.0} |\n",
            outcome.mutation.function,
            outcome.mutation.sid,
            if outcome.failed { "fails" } else { "PASSES" },
            outcome.refusal.as_deref().unwrap_or("NONE"),
            outcome.seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_removed_with_its_lines_only() {
        let text = "Resources:\n  A:\n    Properties:\n      Policies:\n        - Statement:\n            - Sid: One # why\n              Effect: Allow\n              Action: [s3:GetObject]\n              Resource:\n                - x\n            - Sid: Two\n              Effect: Allow\n\n  B:\n    Properties:\n      Policies:\n        - Statement:\n            - Sid: One\n";
        let without = without_statement(text, "A", "One").unwrap();
        assert!(!without.contains("Sid: One # why") && without.contains("Sid: Two"), "{without}");
        assert!(without.contains("  B:\n") && without.ends_with("- Sid: One\n"), "B keeps its own One: {without}");
        assert!(without_statement(text, "A", "Three").is_err());
    }

    #[test]
    fn a_refusal_counts_only_when_it_names_the_statements_action() {
        let output = "x is not authorized to perform: dynamodb:Query on resource: arn:t/index/byJob because no";
        let actions = vec!["dynamodb:Query".to_string()];
        assert_eq!(refusal_naming(output, &actions).as_deref(), Some("dynamodb:Query on arn:t/index/byJob"));
        assert_eq!(refusal_naming(output, &["dynamodb:GetItem".to_string()]), None);
        let mapping = "the provided execution role does not have permissions to call sqs:ReceiveMessage on arn:q";
        assert!(refusal_naming(mapping, &["sqs:ReceiveMessage".to_string()]).is_some());
    }
}
