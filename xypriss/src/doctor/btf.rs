//! The kernel's BTF: every program is chosen, and every offset it reads is
//! found, from it at load time ([`trace_point`](super::trace_point) checks
//! each). Here: that it is there and is BTF.

use std::{io, path::Path};

use super::{Check, Degrades};
use crate::observe::btf::Btf;

const NAME: &str = "btf";

/// `data`: the contents of the BTF file at `path`. The parsed BTF comes back
/// with the check, for the tracepoint checks.
pub fn btf(path: &Path, data: &io::Result<Vec<u8>>) -> (Check, Option<Btf>) {
    let at = path.display();
    let data = match data {
        Ok(data) => data,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return (
                Check::fail(
                    NAME,
                    format!("{at} is absent: the kernel was built without CONFIG_DEBUG_INFO_BTF"),
                    "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions' are)",
                    Degrades::Observer,
                ),
                None,
            );
        }
        Err(err) => {
            return (
                Check::fail(
                    NAME,
                    format!("cannot read {at}: {err}"),
                    format!("make {at} readable to xypriss (run it as root)"),
                    Degrades::Observer,
                ),
                None,
            );
        }
    };
    match Btf::parse(data) {
        Ok(btf) => (
            Check::ok(NAME, format!("{at}: {} types", btf.type_count())),
            Some(btf),
        ),
        Err(reason) => (
            Check::fail(
                NAME,
                format!("{at} is not BTF ({reason})"),
                "point at the kernel's own BTF, /sys/kernel/btf/vmlinux",
                Degrades::Observer,
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{doctor::Status, observe::btf::VMLINUX};

    #[test]
    fn missing_btf_means_proc_polling() {
        let (check, btf) = btf(Path::new(VMLINUX), &Err(io::ErrorKind::NotFound.into()));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.fix.unwrap().contains("CONFIG_DEBUG_INFO_BTF=y"));
        assert!(btf.is_none());
    }

    #[test]
    fn what_is_not_btf_fails() {
        let (check, _) = btf(
            Path::new("/tmp/x"),
            &Ok(b"this is not BTF, not at all".to_vec()),
        );
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("not BTF"), "{check:?}");
    }
}
