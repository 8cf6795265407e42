//! Installs the BPF toolchain: the nightly pinned in
//! `xypriss-ebpf/rust-toolchain.toml` with `rust-src`, and `bpf-linker` built
//! against that nightly's own libLLVM (no system LLVM matches it).
//!
//! The recipe: a prefix whose `bin/llvm-config` prints the nightly's LLVM
//! version, and whose `lib/` links `libLLVM.so` and its versioned soname to the
//! nightly's sysroot. `cargo install` with `LLVM_PREFIX` pointing there builds
//! a `bpf-linker` whose rpath is that `lib/`, so the prefix must outlive the
//! build: it is kept under `$CARGO_HOME/xypriss/`. A stamp records what was
//! built, so a second run does nothing.

use std::{
    env, fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The bpf-linker release we build.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the BPF build needs, once installed.
pub struct Tools {
    /// The nightly toolchain's name, for `rustup run`.
    pub nightly: String,
}

pub fn ensure(root: &Path) -> Result<Tools> {
    let nightly = pinned_nightly(root)?;
    install_nightly(&nightly)?;
    install_bpf_linker(&nightly)?;
    Ok(Tools { nightly })
}

/// Reads the channel from `xypriss-ebpf/rust-toolchain.toml`.
fn pinned_nightly(root: &Path) -> Result<String> {
    let path = root.join("xypriss-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    file.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{}: no toolchain.channel", path.display()))
}

/// Runs `cmd` and returns its stdout; its stderr goes in the error when it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn install_nightly(nightly: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to install the BPF toolchain: see https://rustup.rs")?;
    let has_toolchain = installed
        .lines()
        .any(|line| line.starts_with(&format!("{nightly}-")));
    let has_components = has_toolchain && {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            nightly,
        ]))?;
        ["rust-src", "clippy"]
            .iter()
            .all(|want| installed.lines().any(|c| c.trim().starts_with(want)))
    };
    if has_components {
        return Ok(());
    }
    eprintln!("xtask: installing {nightly} with rust-src and clippy");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "--quiet",
        "toolchain",
        "install",
        nightly,
        "--no-self-update",
    ])
    .args(["--profile", "minimal", "--component", "rust-src,clippy"]);
    output(&mut cmd).with_context(|| {
        format!(
            "could not install the BPF toolchain {nightly}: rustup must reach its \
             distribution server, or install it yourself with `rustup toolchain install \
             {nightly} --component rust-src,clippy`"
        )
    })?;
    Ok(())
}

pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn install_bpf_linker(nightly: &str) -> Result<()> {
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args([format!("+{nightly}").as_str(), "--print", "sysroot"]))?
            .trim(),
    );
    let lib = sysroot.join("lib");
    let soname = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("{nightly} ships no libLLVM.so.* in {}", lib.display()))?;
    // "libLLVM.so.23.1-rust-1.99.0-nightly" → "23.1.0", major 23.
    let version = soname
        .trim_start_matches("libLLVM.so.")
        .split('-')
        .next()
        .unwrap_or_default();
    let major = version.split('.').next().unwrap_or_default();
    if major.parse::<u32>().is_err() {
        bail!("cannot read the LLVM version from {soname}");
    }

    let cargo_home = cargo_home()?;
    let prefix = cargo_home.join("xypriss").join(format!("llvm-{nightly}"));
    let stamp_path = prefix.join("bpf-linker.stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} {soname}\n");
    let linker = cargo_home.join("bin/bpf-linker");
    if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }

    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {soname} (about a minute)");
    let bin = prefix.join("bin");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(&prefix_lib)?;
    let llvm_config = bin.join("llvm-config");
    fs::write(&llvm_config, format!("#!/bin/sh\necho {version}.0\n"))?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(lib.join(&soname), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let path = env::join_paths(
        std::iter::once(bin.clone())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "--force",
        "--locked",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .args([
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ])
    .arg("--root")
    .arg(&cargo_home)
    .env("LLVM_PREFIX", &prefix)
    .env("PATH", path);
    let status = cmd.status().context("could not start cargo install")?;
    if !status.success() {
        bail!(
            "could not build bpf-linker {BPF_LINKER_VERSION} with feature llvm-{major}: \
             cargo must reach crates.io, and gcc must be installed"
        );
    }
    fs::write(&stamp_path, stamp)?;
    Ok(())
}
