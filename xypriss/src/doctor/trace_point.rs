//! Each tracepoint the programs attach to: which program this kernel's BTF
//! calls for, and what it reads there, found with the code `run` loads
//! them with. A tracepoint that fails says which BTF fact was missing.

use super::{Check, Degrades};
use crate::observe::{
    btf::BtfError,
    trace_point::{Choice, Kind, Tracepoint},
};

/// `choice`: what [`Plan`](crate::observe::trace_point::Plan) found for it.
pub fn tracepoint(tracepoint: &Tracepoint, choice: &Result<Choice, BtfError>) -> Check {
    let name = format!("tracepoint:{tracepoint}");
    match choice {
        Ok(choice) => Check::ok(
            name,
            format!(
                "raw tracepoint ({}): program `{}` reads {}",
                choice.args, choice.program, choice.reads
            ),
        ),
        Err(err) => {
            let fix = match (tracepoint.kind, err) {
                (Kind::PageFaultUser, BtfError::NoTracepoint { .. }) => {
                    "none on this architecture: the tracepoint is x86-64's; elsewhere run polls /proc"
                }
                (_, BtfError::NoTracepoint { .. }) => {
                    "run a kernel with this tracepoint (every kernel from 5.5 on has it)"
                }
                _ => {
                    "this kernel's layout is one the programs do not know: report it with \
                     the output of `xypriss doctor --json`"
                }
            };
            Check::fail(name, err.to_string(), fix, Degrades::Observer)
        }
    }
}

/// When BTF could not be read, no tracepoint could be checked.
pub fn unchecked(tracepoint: &Tracepoint) -> Check {
    Check::fail(
        format!("tracepoint:{tracepoint}"),
        "not checked: no BTF to read its arguments from",
        "see the btf check",
        Degrades::Observer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        doctor::Status,
        observe::trace_point::{PAGE_FAULT_USER, SCHED_PROCESS_EXIT},
    };

    #[test]
    fn a_chosen_program_is_named_with_what_it_reads() {
        let check = tracepoint(
            &SCHED_PROCESS_EXIT,
            &Ok(Choice {
                program: "sched_process_exit_live",
                args: "struct task_struct *".into(),
                reads: "task->signal at +2000".into(),
            }),
        );
        assert_eq!(check.status, Status::Ok);
        assert_eq!(check.name, "tracepoint:sched/sched_process_exit");
        assert!(
            check.detail.contains("sched_process_exit_live"),
            "{check:?}"
        );
        assert!(check.detail.contains("+2000"), "{check:?}");
    }

    #[test]
    fn a_missing_fact_is_named_and_means_proc_polling() {
        let check = tracepoint(
            &SCHED_PROCESS_EXIT,
            &Err(BtfError::NoField {
                strukt: "signal_struct".into(),
                field: "live".into(),
            }),
        );
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.detail.contains("signal_struct"), "{check:?}");
        assert!(check.detail.contains("live"), "{check:?}");
        let missing = tracepoint(
            &PAGE_FAULT_USER,
            &Err(BtfError::NoTracepoint {
                name: "page_fault_user".into(),
            }),
        );
        assert!(missing.fix.unwrap().contains("x86-64"));
    }
}
