//! What the local stack runs before it starts: `cargo build` of the functions, and `cargo xtask` for the
//! project's tools (xtask is the one place that installs them).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::template::FunctionSpec;

/// Builds the template's function binaries (debug profile, or release as deployed).
pub fn build(root: &Path, functions: &[FunctionSpec], release: bool) -> anyhow::Result<()> {
    let packages: Vec<&str> = functions.iter().map(|f| f.binary.as_str()).collect();
    build_packages(root, &packages, release)
}

/// `cargo build` of these packages (debug, or release as deployed).
pub fn build_packages(root: &Path, packages: &[&str], release: bool) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).arg("build").arg("--quiet");
    if release {
        command.arg("--release");
    }
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("building {packages:?} failed ({status})");
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
