//! Builds the BPF programs with aya-build, so that a plain `cargo build` works.
//!
//! The object lands in `$OUT_DIR/xypriss` and is embedded in the binary. It is
//! built with the nightly pinned in `xypriss-ebpf/rust-toolchain.toml` and
//! linked by `bpf-linker`; `cargo xtask bootstrap` installs both.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use aya_build::{Package, Toolchain};

fn main() -> Result<()> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir
        .parent()
        .context("xypriss lives one level below the workspace root")?
        .join("xypriss-ebpf");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", toolchain_file.display());
    let text = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let file: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", toolchain_file.display()))?;
    let nightly = file
        .get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(toml::Value::as_str)
        .with_context(|| format!("{}: no toolchain.channel", toolchain_file.display()))?;
    if which::which("bpf-linker").is_err() {
        bail!(
            "bpf-linker is not on PATH, so the BPF programs cannot be linked: \
             run `cargo xtask bootstrap` (it installs {nightly} and bpf-linker)"
        );
    }
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "xypriss-ebpf",
            root_dir: ebpf_dir,
            features: &["programs"],
            ..Package::default()
        }],
        Toolchain::Custom(nightly),
    )
    .with_context(|| {
        format!("building the BPF programs with {nightly} failed: `cargo xtask bootstrap` installs what they need")
    })
}
