//! The kernel's BTF: the `rss_stat` program reads `current->mm` and
//! `mm->rss_stat[member].count` at offsets `run` takes from it at load time.
//! Its presence is not enough: the check resolves those very fields, with
//! the reader `run` uses.

use std::{io, path::Path};

use super::{Check, Degrades};
use crate::observe::btf::Btf;

const NAME: &str = "btf";

/// `data`: the contents of the BTF file at `path`.
pub fn btf(path: &Path, data: &io::Result<Vec<u8>>, page_size: u64) -> Check {
    let at = path.display();
    let data = match data {
        Ok(data) => data,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Check::fail(
                NAME,
                format!("{at} is absent: the kernel was built without CONFIG_DEBUG_INFO_BTF"),
                "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions' are)",
                Degrades::Observer,
            );
        }
        Err(err) => {
            return Check::fail(
                NAME,
                format!("cannot read {at}: {err}"),
                format!("make {at} readable to xypriss (run it as root)"),
                Degrades::Observer,
            );
        }
    };
    let btf = match Btf::parse(data) {
        Ok(btf) => btf,
        Err(reason) => {
            return Check::fail(
                NAME,
                format!("{at} is not BTF ({reason})"),
                "point at the kernel's own BTF, /sys/kernel/btf/vmlinux",
                Degrades::Observer,
            );
        }
    };
    match btf.kernel_layout(page_size) {
        Ok(layout) => Check::ok(
            NAME,
            format!(
                "{at}: task_struct.mm at +{}, mm_struct.rss_stat at +{} ({}-byte counters), \
                 percpu_counter.count at +{}",
                layout.task_mm, layout.mm_rss_stat, layout.counter_size, layout.counter_count
            ),
        ),
        Err(err) => Check::fail(
            NAME,
            format!("{at}: {err}: not the memory counters the rss_stat program reads"),
            "upgrade the kernel to Linux 6.16 or later (per-CPU rss_stat counters came in 6.2)",
            Degrades::Observer,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{doctor::Status, observe::btf::VMLINUX};

    #[test]
    fn missing_btf_means_proc_polling() {
        let check = btf(
            Path::new(VMLINUX),
            &Err(io::ErrorKind::NotFound.into()),
            4096,
        );
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.fix.unwrap().contains("CONFIG_DEBUG_INFO_BTF=y"));
    }

    #[test]
    fn what_is_not_btf_fails() {
        let check = btf(
            Path::new("/tmp/x"),
            &Ok(b"this is not BTF, not at all".to_vec()),
            4096,
        );
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("not BTF"), "{check:?}");
    }

    #[test]
    fn btf_without_the_counters_fails() {
        // The smallest valid BTF: a header, no types, one empty string.
        let mut empty = vec![0x9f, 0xeb, 1, 0];
        for word in [24u32, 0, 0, 0, 1] {
            empty.extend_from_slice(&word.to_le_bytes());
        }
        empty.push(0);
        let check = btf(Path::new("/tmp/empty"), &Ok(empty), 4096);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("mm_struct"), "{check:?}");
        assert!(check.fix.unwrap().contains("6.16"));
    }
}
