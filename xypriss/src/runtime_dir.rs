//! The runtime directory, where xypriss keeps its sockets: each pool's control
//! socket (`<name>.sock`) and its workers' notify sockets.
//!
//! As root it is /run/xypriss, as systemd would give a service; otherwise the
//! user's own runtime directory, so that a user's pools and root's never
//! share a name. Without `XDG_RUNTIME_DIR` that is `/tmp/xypriss-<uid>`, a
//! name anybody could have taken first: so the directory is used only if it
//! is a real directory of this user's that nobody else could write to, and
//! is then made private (0700; 0711 for root, whose `--user` workers must
//! reach their notify socket in it). The CLI looks in both when it is not root: an operator asks
//! about a pool they started with sudo without sudo, and the control socket,
//! which then belongs to them, lets them in.

use std::{
    fs::DirBuilder,
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    sys::stat::{Mode, fchmod, fstat},
    unistd::geteuid,
};

/// Root's runtime directory.
const SYSTEM: &str = "/run/xypriss";

/// The runtime directory's mode as root: workers that run as another user
/// reach their notify socket through it, and list nothing.
const ROOT_MODE: u32 = 0o711;
/// The runtime directory's mode as any other user, whose workers are itself.
const USER_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("cannot create the runtime directory {}: {source}", dir.display())]
    Create { dir: PathBuf, source: io::Error },
    #[error("the runtime directory {} cannot be trusted: {reason}; remove it", dir.display())]
    Unsafe { dir: PathBuf, reason: String },
}

/// This process's runtime directory, not created.
pub fn path() -> PathBuf {
    if geteuid().is_root() {
        PathBuf::from(SYSTEM)
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("xypriss")
    } else {
        std::env::temp_dir().join(format!("xypriss-{}", geteuid()))
    }
}

/// This process's runtime directory, created if need be, and checked: see
/// [`secure`].
pub fn create() -> Result<PathBuf, RuntimeDirError> {
    let dir = path();
    let euid = geteuid();
    let mode = if euid.is_root() { ROOT_MODE } else { USER_MODE };
    let failed = |source| RuntimeDirError::Create {
        dir: dir.clone(),
        source,
    };
    match DirBuilder::new().mode(mode).create(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            // Its parent is missing (an XDG_RUNTIME_DIR not made yet): the
            // parents are made as any directory, the last one as ours.
            if let Some(parent) = dir.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(failed)?;
            }
            match DirBuilder::new().mode(mode).create(&dir) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(failed(err));
                }
                _ => {}
            }
        }
        Err(err) => return Err(failed(err)),
    }
    secure(&dir, euid.as_raw(), mode)?;
    Ok(dir)
}

/// Checks that `dir` is ours alone to trust, then gives it `mode`: not a
/// symbolic link (a fallback under /tmp may have been made by anybody), a
/// directory owned by `euid`, that nobody else could write to (or they could
/// have put a socket or a link of theirs in it). The mode is set through the
/// directory opened without following a link, so what was checked is what
/// changes.
pub fn secure(dir: &Path, euid: u32, mode: u32) -> Result<(), RuntimeDirError> {
    let unsafe_dir = |reason: String| RuntimeDirError::Unsafe {
        dir: dir.to_owned(),
        reason,
    };
    let fd = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::ELOOP | Errno::ENOTDIR
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            unsafe_dir("it is a symbolic link".into())
        }
        Errno::ELOOP | Errno::ENOTDIR => unsafe_dir("it is not a directory".into()),
        errno => RuntimeDirError::Create {
            dir: dir.to_owned(),
            source: errno.into(),
        },
    })?;
    let stat = fstat(&fd).map_err(|errno| RuntimeDirError::Create {
        dir: dir.to_owned(),
        source: errno.into(),
    })?;
    if stat.st_uid != euid {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to uid {euid}",
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode {:o} lets others write in it",
            stat.st_mode & 0o7777
        )));
    }
    if stat.st_mode & 0o7777 != mode {
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|errno| RuntimeDirError::Create {
            dir: dir.to_owned(),
            source: errno.into(),
        })?;
    }
    Ok(())
}

/// Where a client looks for pools, in order: its own runtime directory, then
/// root's, which holds the pools started with sudo.
pub fn search_path() -> Vec<PathBuf> {
    let own = path();
    let system = PathBuf::from(SYSTEM);
    if own == system {
        vec![own]
    } else {
        vec![own, system]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xypriss-rt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn only_a_private_directory_of_ours_is_used() {
        let base = scratch("secure");
        let me = geteuid().as_raw();
        let mine = base.join("mine");
        DirBuilder::new().mode(0o755).create(&mine).unwrap();
        secure(&mine, me, 0o700).expect("ours, written by nobody else");
        let mode = std::fs::metadata(&mine).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "made private");

        let link = base.join("link");
        symlink(&mine, &link).unwrap();
        let err = secure(&link, me, 0o700).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let open_to_all = base.join("open");
        DirBuilder::new().mode(0o700).create(&open_to_all).unwrap();
        std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = secure(&open_to_all, me, 0o700).unwrap_err().to_string();
        assert!(err.contains("lets others write"), "{err}");

        let err = secure(&mine, me + 1, 0o700).unwrap_err().to_string();
        assert!(err.contains(&format!("belongs to uid {me}")), "{err}");

        let file = base.join("file");
        std::fs::write(&file, "").unwrap();
        let err = secure(&file, me, 0o700).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
