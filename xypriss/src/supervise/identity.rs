//! Who workers run as, and what they inherit from xypriss's environment.
//!
//! xypriss runs as root for its eBPF programs and cgroups; its workers must
//! not. Dropping capabilities does not confine uid 0: it still owns root's
//! files, among them the xypriss binary, the cgroup files and the API token.
//! So without `--user`, a root xypriss runs its workers as the user behind
//! sudo (`SUDO_UID`/`SUDO_GID`, the documented `sudo xypriss run app`), and
//! refuses to start when there is none (a service, a root shell): `--user
//! root` says it on purpose. An xypriss that is not root cannot change user,
//! and its workers run as itself.
//!
//! The environment is an allow-list: a root xypriss's environment holds
//! `SUDO_*`, root's `HOME`, and whatever its service manager set for it.
//! Workers get only what locates and localises a program (`PATH`, the
//! locale, the time zone, the terminal type), `HOME`/`USER`/`LOGNAME`/`SHELL`
//! of the account they run as, xypriss's own `XYPRISS_*`/`LISTEN_*`/
//! `NOTIFY_SOCKET`, and what `--env` gives (`--env NAME` passes one variable
//! of xypriss's environment through).

use std::{
    ffi::{OsStr, OsString},
    path::PathBuf,
};

use nix::unistd::{Uid, User};

/// Variables of xypriss's environment that workers inherit, by exact name.
const PASSED: &[&str] = &["PATH", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR"];

/// Whether workers inherit variable `name` from xypriss's environment.
pub fn passes(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| PASSED.contains(&name) || name.starts_with("LC_"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "workers would run as root: pass --user USER to run them as USER, or --user root if they must run as root (they still get no capability); under sudo they run as the invoking user"
    )]
    Root,
    #[error("SUDO_UID/SUDO_GID ({uid:?}, {gid:?}) are not numeric ids")]
    Sudo { uid: OsString, gid: OsString },
}

/// Who workers run as without `--user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultUser {
    /// xypriss's own user: it is not root, and cannot be another.
    Own,
    /// The user behind sudo.
    Sudo { uid: u32, gid: u32 },
}

/// Who workers run as without `--user`, for an xypriss of effective uid
/// `euid` whose environment says `SUDO_UID` and `SUDO_GID`. sudo run by root
/// itself (`SUDO_UID=0`) names no other user: it is refused like no sudo.
pub fn default_user(
    euid: u32,
    sudo_uid: Option<&OsStr>,
    sudo_gid: Option<&OsStr>,
) -> Result<DefaultUser, IdentityError> {
    if euid != 0 {
        return Ok(DefaultUser::Own);
    }
    let (Some(uid), Some(gid)) = (sudo_uid, sudo_gid) else {
        return Err(IdentityError::Root);
    };
    let id = |v: &OsStr| v.to_str()?.parse::<u32>().ok();
    match (id(uid), id(gid)) {
        (Some(0), _) => Err(IdentityError::Root),
        (Some(uid), Some(gid)) => Ok(DefaultUser::Sudo { uid, gid }),
        _ => Err(IdentityError::Sudo {
            uid: uid.to_owned(),
            gid: gid.to_owned(),
        }),
    }
}

/// The account workers run as, for their `HOME`, `USER`, `LOGNAME` and `SHELL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Account {
    /// Uid `uid`'s account in the password database, if it has one.
    pub fn of(uid: u32) -> Option<Self> {
        let user = User::from_uid(Uid::from_raw(uid)).ok()??;
        Some(Self {
            name: user.name,
            home: user.dir,
            shell: user.shell,
        })
    }

    /// Its variables.
    pub fn env(&self) -> [(&'static str, OsString); 4] {
        [
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
            ("SHELL", self.shell.clone().into_os_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_workers_as_the_sudo_user_or_refuses() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_user(0, os("1000"), os("1001")),
            Ok(DefaultUser::Sudo {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(default_user(0, None, None), Err(IdentityError::Root));
        assert_eq!(default_user(0, os("1000"), None), Err(IdentityError::Root));
        assert_eq!(
            default_user(0, os("0"), os("0")),
            Err(IdentityError::Root),
            "sudo from root names nobody else"
        );
        assert!(matches!(
            default_user(0, os("bob"), os("1")),
            Err(IdentityError::Sudo { .. })
        ));
        assert_eq!(default_user(1000, None, None), Ok(DefaultUser::Own));
        assert_eq!(default_user(1000, os("0"), os("0")), Ok(DefaultUser::Own));
    }

    #[test]
    fn only_allow_listed_variables_pass() {
        for name in ["PATH", "LANG", "LC_ALL", "LC_TIME", "TZ", "TERM"] {
            assert!(passes(OsStr::new(name)), "{name}");
        }
        for name in [
            "HOME",
            "USER",
            "SUDO_UID",
            "SUDO_COMMAND",
            "LD_PRELOAD",
            "NODE_OPTIONS",
            "XYPRISS_LOG",
            "JOURNAL_STREAM",
            "path",
        ] {
            assert!(!passes(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn an_account_gives_its_own_home_and_names() {
        let root = Account::of(0).expect("uid 0 has an account");
        assert_eq!(root.name, "root");
        let env = root.env();
        assert_eq!(env[0], ("HOME", root.home.clone().into_os_string()));
        assert_eq!(env[1], ("USER", "root".into()));
        assert_eq!(env[2], ("LOGNAME", "root".into()));
    }
}
