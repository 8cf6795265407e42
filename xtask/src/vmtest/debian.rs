//! What a VM run needs from outside the project, fetched with the ordinary
//! clients and cached so that a second run downloads nothing:
//!
//! - Debian's `qemu-system-x86` (the emulator), `kmod` (`depmod`),
//!   `busybox-static` (virtme-ng builds its initramfs with it) and
//!   `python3-venv`, through `apt-get install`, when missing;
//! - virtme-ng, pinned, from PyPI, into a venv of the cache;
//! - the kernels: Debian's own packages, by name, with `apt-get download`,
//!   unpacked with `dpkg -x` (never installed) into the cache, their modules
//!   indexed with `depmod` and linked at `/lib/modules/<release>`, where
//!   virtme-ng's guest looks for them.
//!
//! The cache lives beside the BPF toolchain's, in `$CARGO_HOME/xypriss/vmtest`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::bootstrap;

/// The virtme-ng release the VM runs are made with (PyPI `virtme-ng`).
const VIRTME_NG_VERSION: &str = "1.42";
/// Debian's python, whose `venv` module `python3-venv` provides (not
/// whichever `python3` comes first on `PATH`).
const PYTHON: &str = "/usr/bin/python3";
/// The suite the 6.12 kernels come from: the same archive as bookworm's.
const BACKPORTS: &str = "bookworm-backports";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
/// Debian packages (or alternatives, any of which will do) a VM run needs.
const TOOLS: [&[&str]; 4] = [
    &["qemu-system-x86"],
    &["kmod"],
    &["busybox-static", "busybox"],
    &["python3-venv"],
];
/// Waits for another apt or dpkg (another helper's install) instead of failing.
const LOCK_TIMEOUT: &str = "DPkg::Lock::Timeout=600";
/// Files `apt-get download` writes are ours, not the `_apt` sandbox user's.
const SANDBOX: &str = "APT::Sandbox::User=root";

/// A kernel series the VM runs boot, as Debian packages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Series {
    /// Debian 12's `linux-image-6.1.0-<abi>-amd64-unsigned`.
    #[value(name = "6.1")]
    Linux6_1,
    /// bookworm-backports' `linux-image-6.12.<n>+deb12-amd64-unsigned`.
    #[value(name = "6.12")]
    Linux6_12,
}

impl Series {
    pub const ALL: [Self; 2] = [Self::Linux6_1, Self::Linux6_12];

    pub fn label(self) -> &'static str {
        match self {
            Self::Linux6_1 => "6.1",
            Self::Linux6_12 => "6.12",
        }
    }

    /// `apt-cache search --names-only`'s pattern for the series' packages.
    fn pattern(self) -> &'static str {
        match self {
            Self::Linux6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
            Self::Linux6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        }
    }

    /// The number that orders the series' packages (ABI or stable release),
    /// if `package` is one of them.
    fn rank(self, package: &str) -> Option<u32> {
        let (prefix, suffix) = match self {
            Self::Linux6_1 => ("linux-image-6.1.0-", "-amd64-unsigned"),
            Self::Linux6_12 => ("linux-image-6.12.", "+deb12-amd64-unsigned"),
        };
        package
            .strip_prefix(prefix)?
            .strip_suffix(suffix)?
            .parse()
            .ok()
    }
}

/// A kernel unpacked in the cache, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// The Debian package and its version, e.g. `linux-image-6.1.0-57-amd64-unsigned 6.1.192-3`.
    pub package: String,
    pub version: String,
    /// `uname -r` inside: the name of its modules' directory.
    pub release: String,
    pub vmlinuz: PathBuf,
}

/// Where VM runs keep what they fetch.
pub fn cache_dir() -> Result<PathBuf> {
    Ok(bootstrap::cargo_home()?.join("xypriss").join("vmtest"))
}

/// Runs `cmd`, failing with `what` when it does.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what}: {cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(["-q", "-o", LOCK_TIMEOUT, "-o", SANDBOX]);
    cmd
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

/// Installs the Debian tools that are missing, in one `apt-get install`.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|choices| !choices.iter().any(|p| installed(p)))
        .map(|choices| choices[0])
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} (Debian)", missing.join(" "));
    let install = || {
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .status()
            .context("running apt-get")
    };
    if !install()?.success() {
        // A fresh machine's package lists may be missing or stale.
        run(apt_get().arg("update"), "updating apt's package lists")?;
        run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
            "installing the VM tools",
        )?;
    }
    Ok(())
}

/// Adds bookworm-backports (same archive) to apt's sources, once, and
/// updates the package lists when it does.
fn ensure_backports() -> Result<()> {
    let listed = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
        .iter()
        .flat_map(|path| {
            let path = Path::new(path);
            if path.is_dir() {
                fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect()
            } else {
                vec![path.to_owned()]
            }
        })
        .filter_map(|file| fs::read_to_string(file).ok())
        .any(|text| {
            text.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains(BACKPORTS))
        });
    if listed {
        return Ok(());
    }
    eprintln!("xtask: adding {BACKPORTS} to apt's sources ({BACKPORTS_SOURCES})");
    fs::write(
        BACKPORTS_SOURCES,
        format!(
            "# Added by xypriss's `cargo xtask vmtest`, which boots its 6.12 kernel in a VM.\n\
             Types: deb\n\
             URIs: http://deb.debian.org/debian\n\
             Suites: {BACKPORTS}\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    run(apt_get().arg("update"), "updating apt's package lists")
}

/// The series' newest package apt can download, and its version.
fn newest(series: Series) -> Result<Option<(String, String)>> {
    let names = bootstrap::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        series.pattern(),
    ]))?;
    let mut names: Vec<(u32, &str)> = names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((series.rank(name)?, name)))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    if names.is_empty() {
        return Ok(None);
    }
    // Lists keep names whose packages are gone; madison shows only what can be fetched.
    let madison = bootstrap::output(
        Command::new("apt-cache")
            .arg("madison")
            .args(names.iter().map(|(_, n)| n)),
    )?;
    let candidates: Vec<(&str, &str)> = madison
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            Some((fields.next()?, fields.next()?))
        })
        .collect();
    Ok(names.iter().find_map(|(_, name)| {
        candidates
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
    }))
}

/// The newest kernel of `series`, fetched and unpacked unless it is cached.
pub fn kernel(series: Series) -> Result<Kernel> {
    if series == Series::Linux6_12 {
        ensure_backports()?;
    }
    let (package, version) = match newest(series)? {
        Some(found) => found,
        None => {
            run(apt_get().arg("update"), "updating apt's package lists")?;
            newest(series)?.with_context(|| {
                format!(
                    "apt knows no package matching {} that it can download",
                    series.pattern()
                )
            })?
        }
    };
    let dir = cache_dir()?
        .join("kernels")
        .join(format!("{package}_{version}"));
    let stamp = dir.join(".unpacked");
    if !stamp.exists() {
        unpack(&package, &version, &dir)?;
        fs::write(&stamp, format!("{package} {version}\n"))?;
    }
    let modules = dir.join("lib/modules");
    let release = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} has no modules in {}", modules.display()))?;
    link_modules(&modules.join(&release), &release)?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    Ok(Kernel {
        series,
        package,
        version,
        release,
        vmlinuz,
    })
}

/// Downloads `package` at `version` and unpacks it into `dir`, modules indexed.
fn unpack(package: &str, version: &str, dir: &Path) -> Result<()> {
    let downloads = dir.with_extension("download");
    let partial = dir.with_extension("partial");
    for stale in [&downloads, &partial, &dir.to_owned()] {
        if stale.exists() {
            fs::remove_dir_all(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    fs::create_dir_all(&downloads)?;
    eprintln!("xtask: downloading {package} {version} (Debian)");
    run(
        apt_get()
            .current_dir(&downloads)
            .args(["download", &format!("{package}={version}")]),
        "downloading the kernel",
    )?;
    let deb = fs::read_dir(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", downloads.display()))?;
    run(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&partial),
        "unpacking the kernel",
    )?;
    let modules = partial.join("lib/modules");
    for entry in fs::read_dir(&modules).with_context(|| format!("reading {}", modules.display()))? {
        let release = entry?.file_name();
        run(
            Command::new("depmod").arg("-b").arg(&partial).arg(&release),
            "indexing the kernel's modules",
        )?;
    }
    fs::rename(&partial, dir)?;
    fs::remove_dir_all(&downloads)?;
    Ok(())
}

/// Makes `/lib/modules/<release>` lead to `modules`, unless it already holds
/// indexed modules of that release (installed, or linked by someone else).
fn link_modules(modules: &Path, release: &str) -> Result<()> {
    let link = Path::new("/lib/modules").join(release);
    if fs::read_link(&link).is_ok_and(|to| to == modules) {
        return Ok(());
    }
    if link.join("modules.dep").exists() {
        return Ok(());
    }
    if fs::symlink_metadata(&link).is_ok_and(|m| m.is_symlink()) {
        // A dangling link (its cache was removed): ours to replace.
        fs::remove_file(&link)?;
    } else if link.exists() {
        bail!(
            "{} exists without modules.dep: index it (depmod {release}) or remove it",
            link.display()
        );
    }
    fs::create_dir_all("/lib/modules")?;
    symlink(modules, &link).with_context(|| format!("linking {}", link.display()))
}

/// virtme-ng, installed from PyPI into the cache's venv when it is not there
/// at the pinned version. Returns the venv's `bin`, which must come first on
/// `PATH`: `vng` runs `virtme-run` from there.
pub fn virtme_ng() -> Result<PathBuf> {
    let venv = cache_dir()?.join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let bin = venv.join("bin");
    let works = Command::new(bin.join("vng"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim()
                    == format!("virtme-ng {VIRTME_NG_VERSION}")
        });
    if works {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing virtme-ng {VIRTME_NG_VERSION} (PyPI) into {}",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv)?;
    }
    run(
        Command::new(PYTHON).args(["-m", "venv"]).arg(&venv),
        "making virtme-ng's venv",
    )?;
    run(
        Command::new(bin.join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]),
        "installing virtme-ng from PyPI",
    )?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_ranked_within_their_series_only() {
        let s61 = Series::Linux6_1;
        assert_eq!(s61.rank("linux-image-6.1.0-57-amd64-unsigned"), Some(57));
        assert_eq!(s61.rank("linux-image-6.1.0-57-cloud-amd64-unsigned"), None);
        assert_eq!(s61.rank("linux-image-6.1.0-57-rt-amd64-unsigned"), None);
        let s612 = Series::Linux6_12;
        assert_eq!(
            s612.rank("linux-image-6.12.117+deb12-amd64-unsigned"),
            Some(117)
        );
        assert_eq!(s612.rank("linux-image-6.1.0-57-amd64-unsigned"), None);
        assert_eq!(
            s612.rank("linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            None
        );
    }
}
