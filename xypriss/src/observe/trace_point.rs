//! The raw tracepoints the programs attach to, and which program each gets
//! on this kernel.
//!
//! Every program is a raw tracepoint, attached by name: no tracefs, nothing
//! mounted. A raw tracepoint passes its program the tracepoint's C arguments,
//! which changed across kernels for three of them. The kernel's BTF has each
//! one's prototype (`btf_trace_<name>`), and the layout of the structs the
//! programs read through those arguments, so the choice is made from what the
//! kernel is, never from its version number:
//!
//! | tracepoint | arguments | program | reads, at offsets from BTF |
//! | --- | --- | --- | --- |
//! | `rss_stat` | `(mm, member)` (6.2 on) | `rss_stat` | `mm->rss_stat[member].count` (a `percpu_counter`) |
//! | `rss_stat` | `(mm, member, count)` | `rss_stat_count` | nothing: `count` is the new value |
//! | `page_fault_user` | any | `page_fault_user` | nothing |
//! | `mark_victim` | `(task, …)` | `mark_victim` | `task->tgid` |
//! | `mark_victim` | `(pid)` | `mark_victim_pid` | nothing |
//! | `sched_process_fork` | `(parent, child)` | `sched_process_fork` | `child->pid`, `child->tgid` |
//! | `sched_process_exit` | `(task, group_dead)` (6.16 on) | `sched_process_exit` | nothing |
//! | `sched_process_exit` | `(task)` | `sched_process_exit_live` | `task->signal->live` |
//!
//! Both `rss_stat` programs also read `current->mm`.

use std::fmt;

use xypriss_ebpf::{program_name, rss_stat::NR_MM_COUNTERS, trace_point::KernelLayout};

use super::btf::{Btf, BtfError, Param};

/// Which tracepoint: each has its own rules for choosing a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RssStat,
    PageFaultUser,
    MarkVictim,
    SchedProcessFork,
    SchedProcessExit,
}

/// A raw tracepoint the programs attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracepoint {
    pub kind: Kind,
    /// Its category, for people: raw tracepoints are attached by name alone.
    pub category: &'static str,
    pub name: &'static str,
}

pub const RSS_STAT: Tracepoint = Tracepoint {
    kind: Kind::RssStat,
    category: "kmem",
    name: "rss_stat",
};
pub const PAGE_FAULT_USER: Tracepoint = Tracepoint {
    kind: Kind::PageFaultUser,
    category: "exceptions",
    name: "page_fault_user",
};
pub const MARK_VICTIM: Tracepoint = Tracepoint {
    kind: Kind::MarkVictim,
    category: "oom",
    name: "mark_victim",
};
pub const SCHED_PROCESS_FORK: Tracepoint = Tracepoint {
    kind: Kind::SchedProcessFork,
    category: "sched",
    name: "sched_process_fork",
};
pub const SCHED_PROCESS_EXIT: Tracepoint = Tracepoint {
    kind: Kind::SchedProcessExit,
    category: "sched",
    name: "sched_process_exit",
};

/// Every tracepoint, in the order the programs are attached.
pub const ALL: [Tracepoint; 5] = [
    MARK_VICTIM,
    SCHED_PROCESS_FORK,
    SCHED_PROCESS_EXIT,
    RSS_STAT,
    PAGE_FAULT_USER,
];

impl fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.category, self.name)
    }
}

/// The program a tracepoint gets on this kernel, and what it reads there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub program: &'static str,
    /// The tracepoint's arguments, as BTF gives them.
    pub args: String,
    /// What the program reads, with the offsets found.
    pub reads: String,
}

/// What every tracepoint gets on this kernel.
pub struct Plan {
    /// The offsets the chosen programs read (those not read stay 0).
    pub layout: KernelLayout,
    /// In the order of [`ALL`].
    pub choices: Vec<(Tracepoint, Result<Choice, BtfError>)>,
}

impl Plan {
    /// Chooses each tracepoint's program from `btf`.
    pub fn new(btf: &Btf, page_size: u64) -> Self {
        let mut layout = KernelLayout {
            page_shift: page_size.trailing_zeros(),
            ..KernelLayout::default()
        };
        let choices = ALL
            .iter()
            .map(|&tp| (tp, choose(btf, tp, &mut layout)))
            .collect();
        Self { layout, choices }
    }
}

fn args_text(args: &[Param]) -> String {
    args.iter()
        .map(Param::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn pointer_to(param: Option<&Param>, strukt: &str) -> bool {
    matches!(param, Some(Param::Pointer(to)) if to == strukt)
}

fn is_int(param: Option<&Param>) -> bool {
    matches!(param, Some(Param::Int { .. }))
}

/// Chooses `tp`'s program, and writes the offsets it reads into `layout`.
fn choose(btf: &Btf, tp: Tracepoint, layout: &mut KernelLayout) -> Result<Choice, BtfError> {
    let args = btf.tracepoint_args(tp.name)?;
    let text = args_text(&args);
    let unknown = |expected| BtfError::Prototype {
        name: tp.name.into(),
        found: text.clone(),
        expected,
    };
    let choice = |program, reads: String| Choice {
        program,
        args: text.clone(),
        reads,
    };
    let task_field = |field| btf.offset("task_struct", field);
    match tp.kind {
        Kind::RssStat => {
            if !(pointer_to(args.first(), "mm_struct") && is_int(args.get(1))) {
                return Err(unknown("(struct mm_struct *, int[, long])"));
            }
            layout.task_mm = task_field("mm")?;
            match args.len() {
                3 if is_int(args.get(2)) => Ok(choice(
                    program_name::RSS_STAT_COUNT,
                    format!(
                        "the new count from the arguments; current->mm at +{}",
                        layout.task_mm
                    ),
                )),
                2 => {
                    let (counter, size, len) = btf.array_field("mm_struct", "rss_stat")?;
                    if counter != Param::Composite("percpu_counter".into())
                        || len < NR_MM_COUNTERS as u32
                    {
                        return Err(BtfError::FieldType {
                            path: "mm_struct.rss_stat".into(),
                            found: format!("{counter}[{len}]"),
                            expected: "struct percpu_counter[4]",
                        });
                    }
                    layout.mm_rss_stat = btf.offset("mm_struct", "rss_stat")?;
                    layout.counter_size = size;
                    layout.counter_count = btf.offset("percpu_counter", "count")?;
                    Ok(choice(
                        program_name::RSS_STAT,
                        format!(
                            "mm->rss_stat[member].count at +{} + member × {size} + {}; \
                             current->mm at +{}",
                            layout.mm_rss_stat, layout.counter_count, layout.task_mm
                        ),
                    ))
                }
                _ => Err(unknown("(struct mm_struct *, int[, long])")),
            }
        }
        Kind::PageFaultUser => Ok(choice(program_name::PAGE_FAULT_USER, "nothing".into())),
        Kind::MarkVictim => match args.first() {
            Some(Param::Pointer(to)) if to == "task_struct" => {
                layout.task_tgid = task_field("tgid")?;
                Ok(choice(
                    program_name::MARK_VICTIM,
                    format!("task->tgid at +{}", layout.task_tgid),
                ))
            }
            Some(Param::Int { size: 4, .. }) if args.len() == 1 => Ok(choice(
                program_name::MARK_VICTIM_PID,
                "the pid from the arguments".into(),
            )),
            _ => Err(unknown("(struct task_struct *, …) or (int pid)")),
        },
        Kind::SchedProcessFork => {
            if !(args.len() == 2
                && pointer_to(args.first(), "task_struct")
                && pointer_to(args.get(1), "task_struct"))
            {
                return Err(unknown("(struct task_struct *, struct task_struct *)"));
            }
            layout.task_pid = task_field("pid")?;
            layout.task_tgid = task_field("tgid")?;
            Ok(choice(
                program_name::SCHED_PROCESS_FORK,
                format!(
                    "child->pid at +{}, child->tgid at +{}",
                    layout.task_pid, layout.task_tgid
                ),
            ))
        }
        Kind::SchedProcessExit => {
            if !pointer_to(args.first(), "task_struct") {
                return Err(unknown("(struct task_struct *[, bool])"));
            }
            match args.len() {
                2 if matches!(args.get(1), Some(Param::Int { size: 1, .. })) => Ok(choice(
                    program_name::SCHED_PROCESS_EXIT,
                    "group_dead from the arguments".into(),
                )),
                1 => {
                    layout.task_signal = task_field("signal")?;
                    layout.signal_live = btf.offset("signal_struct", "live")?;
                    Ok(choice(
                        program_name::SCHED_PROCESS_EXIT_LIVE,
                        format!(
                            "no group_dead: task->signal at +{}, signal->live at +{}",
                            layout.task_signal, layout.signal_live
                        ),
                    ))
                }
                _ => Err(unknown("(struct task_struct *[, bool])")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::btf::builder::Builder;

    /// What the programs read of a kernel, with `rss_stat`'s and
    /// `sched_process_exit`'s prototypes as given, `mark_victim(int pid)` or
    /// `(task, uid)`, and `signal_struct.live` or not.
    fn kernel(per_cpu_rss: bool, group_dead: bool, victim_task: bool, live: bool) -> Btf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long int", 8);
        let boolean = b.int("_Bool", 1);
        let ulong = b.int("long unsigned int", 8);
        let counter = b.strukt("percpu_counter", 40, &[("count", long, 8)]);
        let atomic = b.strukt("atomic_long_t", 8, &[("counter", long, 0)]);
        let counters = b.array(if per_cpu_rss { counter } else { atomic }, 4);
        let mm = b.strukt("mm_struct", 1000, &[("rss_stat", counters, 816)]);
        let signal = if live {
            b.strukt("signal_struct", 100, &[("live", int, 4)])
        } else {
            b.strukt("signal_struct", 100, &[("nr_threads", int, 8)])
        };
        let signal_ptr = b.pointer(signal);
        let mm_ptr = b.pointer(mm);
        let task = b.strukt(
            "task_struct",
            4000,
            &[
                ("mm", mm_ptr, 2304),
                ("pid", int, 2432),
                ("tgid", int, 2436),
                ("signal", signal_ptr, 3072),
            ],
        );
        let task_ptr = b.pointer(task);
        if per_cpu_rss {
            b.tracepoint("rss_stat", &[mm_ptr, int]);
        } else {
            b.tracepoint("rss_stat", &[mm_ptr, int, long]);
        }
        b.tracepoint("page_fault_user", &[ulong, ulong, ulong]);
        if victim_task {
            b.tracepoint("mark_victim", &[task_ptr, int]);
        } else {
            b.tracepoint("mark_victim", &[int]);
        }
        b.tracepoint("sched_process_fork", &[task_ptr, task_ptr]);
        if group_dead {
            b.tracepoint("sched_process_exit", &[task_ptr, boolean]);
        } else {
            b.tracepoint("sched_process_exit", &[task_ptr]);
        }
        Btf::parse(&b.build()).unwrap()
    }

    fn programs(plan: &Plan) -> Vec<&'static str> {
        plan.choices
            .iter()
            .map(|(tp, choice)| {
                choice
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{tp}: {e}"))
                    .program
            })
            .collect()
    }

    #[test]
    fn a_6_18_kernel_gets_the_programs_for_its_arguments() {
        let plan = Plan::new(&kernel(true, true, true, true), 4096);
        assert_eq!(
            programs(&plan),
            [
                program_name::MARK_VICTIM,
                program_name::SCHED_PROCESS_FORK,
                program_name::SCHED_PROCESS_EXIT,
                program_name::RSS_STAT,
                program_name::PAGE_FAULT_USER,
            ]
        );
        let l = plan.layout;
        assert_eq!((l.task_mm, l.task_pid, l.task_tgid), (2304, 2432, 2436));
        assert_eq!(
            (l.mm_rss_stat, l.counter_size, l.counter_count),
            (816, 40, 8)
        );
        assert_eq!(l.page_shift, 12);
        // group_dead is an argument: signal->live is not read.
        assert_eq!((l.task_signal, l.signal_live), (0, 0));
    }

    #[test]
    fn a_kernel_before_6_2_and_6_16_gets_the_older_variants() {
        let plan = Plan::new(&kernel(false, false, false, true), 4096);
        assert_eq!(
            programs(&plan),
            [
                program_name::MARK_VICTIM_PID,
                program_name::SCHED_PROCESS_FORK,
                program_name::SCHED_PROCESS_EXIT_LIVE,
                program_name::RSS_STAT_COUNT,
                program_name::PAGE_FAULT_USER,
            ]
        );
        let l = plan.layout;
        assert_eq!((l.task_signal, l.signal_live), (3072, 4));
        // The count is an argument: the counters are not read.
        assert_eq!((l.mm_rss_stat, l.counter_size), (0, 0));
        assert_eq!(l.task_mm, 2304);
    }

    #[test]
    fn a_missing_fact_fails_its_tracepoint_alone_and_is_named() {
        let plan = Plan::new(&kernel(true, false, true, false), 4096);
        for (tp, choice) in &plan.choices {
            if *tp == SCHED_PROCESS_EXIT {
                let err = choice.as_ref().unwrap_err().to_string();
                assert!(
                    err.contains("signal_struct") && err.contains("live"),
                    "{err}"
                );
            } else {
                assert!(choice.is_ok(), "{tp}: {choice:?}");
            }
        }
    }

    #[test]
    fn unknown_arguments_are_named_with_what_was_found() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.tracepoint("sched_process_fork", &[int, int]);
        let btf = Btf::parse(&b.build()).unwrap();
        let plan = Plan::new(&btf, 4096);
        let (_, fork) = &plan.choices[1];
        let err = fork.as_ref().unwrap_err().to_string();
        assert!(err.contains("passes (int, int)"), "{err}");
        let (_, rss_stat) = &plan.choices[3];
        assert!(matches!(
            rss_stat,
            Err(BtfError::NoTracepoint { name }) if name == "rss_stat"
        ));
    }

    #[test]
    fn this_kernels_btf_gives_every_tracepoint_a_program() {
        let path = std::path::Path::new(crate::observe::btf::VMLINUX);
        if !path.exists() && std::env::var_os("CI").is_none() {
            return; // No BTF here: the loader says so at run time, and falls back.
        }
        let plan = Plan::new(&Btf::from_file(path).unwrap(), 4096);
        assert_eq!(programs(&plan).len(), ALL.len());
        assert!(plan.layout.task_mm > 0, "{:?}", plan.layout);
    }
}
