//! The peers the benchmarks measure xypriss against, installed on first use
//! so that `cargo xtask bench` needs nothing else: Debian's packages
//! (stress-ng, wrk, bpftrace) through `apt-get`, and PM2 from the npm
//! registry into `.bench/peers` at the workspace root, which git ignores.
//! Each install is skipped when the tool is already there. `cargo xtask
//! test` installs the Debian tools its tests drive (tmux, stress-ng,
//! chromium) the same way.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A Debian package's binary, installed with `apt-get` when missing.
pub fn debian(binary: &str, package: &str) -> Result<PathBuf> {
    let find = || {
        ["/usr/bin", "/usr/sbin"]
            .into_iter()
            .map(|dir| Path::new(dir).join(binary))
            .find(|p| p.exists())
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("xtask: installing {package} (Debian)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .status()
            .context("running apt-get")
    };
    if !install()?.success() {
        // A fresh machine's package lists may be missing or stale.
        let updated = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("running apt-get update")?;
        let status = install()?;
        if !(updated.success() && status.success()) {
            bail!("apt-get install {package} failed: {status}");
        }
    }
    find().with_context(|| format!("{package} is installed but has no {binary}"))
}

/// PM2's command-line tool, installed from the npm registry into
/// `<root>/.bench/peers` when missing.
pub fn pm2(root: &Path) -> Result<PathBuf> {
    let prefix = root.join(".bench/peers");
    let bin = prefix.join("node_modules/.bin/pm2");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing pm2 (npm) into {}", prefix.display());
    let status = Command::new("npm")
        .args(["install", "--no-fund", "--no-audit", "--prefix"])
        .arg(&prefix)
        .arg("pm2")
        .status()
        .context("running npm (Node.js and npm are needed for the PM2 comparison)")?;
    if !status.success() {
        bail!("npm install pm2 failed: {status}");
    }
    Ok(bin)
}
