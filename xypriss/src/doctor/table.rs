//! The report for a human: an aligned table of the checks, then each fix
//! with what `run` would do until it is applied, then one line on what `run`
//! would use.

use std::fmt::Write as _;

use super::{Degrades, Report, Status};

pub fn render(report: &Report) -> String {
    let status = |s: Status| match s {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    };
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or_default();
    let mut out = format!("{:width$}  STATUS  DETAIL\n", "CHECK");
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:width$}  {:6}  {}",
            check.name,
            status(check.status),
            check.detail
        );
    }
    let fixes: Vec<_> = report
        .checks
        .iter()
        .filter_map(|c| Some((c, c.fix.as_deref()?)))
        .collect();
    if !fixes.is_empty() {
        out.push_str("\nFixes:\n");
    }
    for (check, fix) in fixes {
        let _ = writeln!(out, "  {} ({})", check.name, status(check.status));
        let _ = writeln!(out, "    fix: {fix}");
        if let Some(degrades) = check.degrades {
            let _ = writeln!(out, "    until then, run {}", degrades.consequence());
        }
    }
    if report.degraded {
        let consequences: Vec<&str> = [Degrades::Observer, Degrades::Cgroups]
            .into_iter()
            .filter(|&what| report.checks.iter().any(|c| c.degrades == Some(what)))
            .map(Degrades::consequence)
            .collect();
        let _ = writeln!(
            out,
            "\nrun would degrade: it {}.",
            consequences.join("; it ")
        );
    } else {
        out.push_str("\nrun would use eBPF and memory cgroups.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Check, Degrades};

    #[test]
    fn columns_align_and_fixes_follow() {
        let report = Report::new(vec![
            Check::ok("kernel", "Linux 6.18.44 on x86_64"),
            Check::fail(
                "tracepoint:oom/mark_victim",
                "this kernel has no oom/mark_victim",
                "upgrade",
                Degrades::Observer,
            ),
            Check::warn("psi", "absent", "boot with psi=1"),
        ]);
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        let detail_column = lines[0].find("DETAIL").unwrap();
        assert_eq!(lines[1].find("Linux"), Some(detail_column), "{text}");
        assert_eq!(lines[2].find("this kernel"), Some(detail_column), "{text}");
        assert!(lines[2].contains("FAIL"), "{text}");
        assert!(
            text.contains(
                "  tracepoint:oom/mark_victim (FAIL)\n    fix: upgrade\n    \
                 until then, run polls /proc instead of using eBPF\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  psi (warn)\n    fix: boot with psi=1\n"),
            "{text}"
        );
        assert!(
            text.ends_with("run would degrade: it polls /proc instead of using eBPF.\n"),
            "{text}"
        );
    }

    #[test]
    fn the_last_line_names_every_degradation() {
        let text = render(&Report::new(vec![
            Check::fail("btf", "absent", "rebuild", Degrades::Observer),
            Check::fail("cgroup", "none", "mount one", Degrades::Cgroups),
        ]));
        assert!(
            text.ends_with(
                "run would degrade: it polls /proc instead of using eBPF; \
                 it starts workers without memory cgroups.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn all_ok_has_no_fixes() {
        let text = render(&Report::new(vec![Check::ok("kernel", "Linux 6.18")]));
        assert!(!text.contains("Fixes"), "{text}");
        assert!(
            text.ends_with("run would use eBPF and memory cgroups.\n"),
            "{text}"
        );
    }
}
