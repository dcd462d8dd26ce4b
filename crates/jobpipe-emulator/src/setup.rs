//! What the local stack runs before it starts: `cargo build` of the functions, and `cargo xtask` for the
//! project's tools (xtask is the one place that installs them).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::template::FunctionSpec;

/// Builds the template's function binaries.
///
/// A debug build names them with `--bin`, as `cargo run --bin` does: without `-p`, features resolve over
/// the whole workspace, so the local stack, the tests and `cargo lambda watch` (which runs `cargo run
/// --bin <function>`) share one build of the dependencies. Naming the packages instead resolves features
/// over those packages alone, a second build of nearly every dependency (and a third for watch).
/// A release build names the packages, as the deployed zips are built (`cargo lambda build -p ...`), so
/// what the bench measures is what ships.
pub fn build(root: &Path, functions: &[FunctionSpec], release: bool) -> anyhow::Result<()> {
    let names: Vec<&str> = functions.iter().map(|f| f.binary.as_str()).collect();
    if release {
        return build_packages(root, &names, true);
    }
    cargo_build(root, names.iter().flat_map(|name| ["--bin", name]))
}

/// `cargo build` of these packages (debug, or release as deployed).
pub fn build_packages(root: &Path, packages: &[&str], release: bool) -> anyhow::Result<()> {
    let profile = release.then_some("--release");
    cargo_build(root, profile.into_iter().chain(packages.iter().flat_map(|package| ["-p", package])))
}

fn cargo_build<'a>(root: &Path, args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["build", "--quiet"]).args(args);
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cargo xtask <args>` in the checkout at `root`.
pub fn xtask(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .arg("xtask")
        .args(args)
        .status()
        .with_context(|| format!("running cargo xtask {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo xtask {} failed ({status})", args.join(" "));
    }
    Ok(())
}
