//! The runtime directory, where xypriss keeps its sockets: each pool's control
//! socket (`<name>.sock`) and its workers' notify sockets.
//!
//! As root it is /run/xypriss, as systemd would give a service; otherwise the
//! user's own runtime directory, so that a user's pools and root's never
//! share a name. The CLI looks in both when it is not root: an operator asks
//! about a pool they started with sudo without sudo, and the control socket,
//! which then belongs to them, lets them in.

use std::{
    fs::{DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::PathBuf,
};

use nix::unistd::geteuid;

/// Root's runtime directory.
const SYSTEM: &str = "/run/xypriss";

#[derive(Debug, thiserror::Error)]
#[error("cannot create the runtime directory {}: {source}", dir.display())]
pub struct RuntimeDirError {
    dir: PathBuf,
    source: io::Error,
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

/// This process's runtime directory, created if need be. Workers that run as
/// another user must reach their notify socket in it, so it is
/// world-searchable; the sockets set their own modes.
pub fn create() -> Result<PathBuf, RuntimeDirError> {
    let dir = path();
    let failed = |source| RuntimeDirError {
        dir: dir.clone(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(failed)?;
    std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).map_err(failed)?;
    Ok(dir)
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
