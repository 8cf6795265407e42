//! A worker's lifecycle, written down as a state × input table, as s6 and
//! Einhorn do: every transition the supervisor may make is one row here, and
//! each row names the event it emits. Anything not in the table is refused,
//! so a late or duplicate input (an exit seen twice, a readiness after a stop)
//! cannot move a worker into a state it should not be in.
//!
//! "Spawned" and "ready" are different states: a worker is `Starting` from
//! the moment its process exists until it says it is ready (or its readiness
//! fallback fires); only `Ready` workers count as serving.

use serde::Serialize;

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its process exists; it has not said it is ready.
    Starting,
    /// Serving.
    Ready,
    /// Sent its stop signal; waiting for it to exit.
    Stopping,
    /// No process: exited, and either waiting for a restart or done.
    Stopped,
    /// Failed too often in a row: no more restarts.
    Errored,
}

/// What can happen to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Its process was created.
    Spawned,
    /// It said it is ready (notify), or its readiness fallback fired.
    Ready,
    /// The supervisor asked it to stop (shutdown, scale-down, replacement).
    Stop,
    /// Its process ended.
    Exited,
    /// Its restart delay is over; a new process is being created.
    Restart,
    /// It failed too often in a row.
    GiveUp,
}

/// The table: from, input, to, and the event the transition emits.
pub const TRANSITIONS: &[(State, Input, State, &str)] = &[
    (
        State::Stopped,
        Input::Spawned,
        State::Starting,
        "worker_spawned",
    ),
    (
        State::Stopped,
        Input::Restart,
        State::Stopped,
        "worker_restarted",
    ),
    (
        State::Stopped,
        Input::GiveUp,
        State::Errored,
        "worker_errored",
    ),
    (State::Starting, Input::Ready, State::Ready, "worker_ready"),
    (
        State::Starting,
        Input::Stop,
        State::Stopping,
        "worker_stopping",
    ),
    (
        State::Starting,
        Input::Exited,
        State::Stopped,
        "worker_exited",
    ),
    (
        State::Ready,
        Input::Stop,
        State::Stopping,
        "worker_stopping",
    ),
    (State::Ready, Input::Exited, State::Stopped, "worker_exited"),
    (
        State::Stopping,
        Input::Exited,
        State::Stopped,
        "worker_exited",
    ),
];

/// An input the table has no row for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a worker in state {from:?} cannot take {input:?}")]
pub struct Refused {
    pub from: State,
    pub input: Input,
}

/// Looks up the row for `input` in state `from`: the new state, and the event to emit.
pub fn step(from: State, input: Input) -> Result<(State, &'static str), Refused> {
    TRANSITIONS
        .iter()
        .find(|(f, i, _, _)| *f == from && *i == input)
        .map(|&(_, _, to, event)| (to, event))
        .ok_or(Refused { from, input })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_spawned_then_ready_then_stopped() {
        let (s, e) = step(State::Stopped, Input::Spawned).unwrap();
        assert_eq!((s, e), (State::Starting, "worker_spawned"));
        let (s, e) = step(s, Input::Ready).unwrap();
        assert_eq!((s, e), (State::Ready, "worker_ready"));
        let (s, e) = step(s, Input::Stop).unwrap();
        assert_eq!((s, e), (State::Stopping, "worker_stopping"));
        let (s, e) = step(s, Input::Exited).unwrap();
        assert_eq!((s, e), (State::Stopped, "worker_exited"));
    }

    #[test]
    fn a_crash_is_an_exit_then_a_restart_or_an_error() {
        let (s, _) = step(State::Ready, Input::Exited).unwrap();
        assert_eq!(
            step(s, Input::Restart).unwrap(),
            (State::Stopped, "worker_restarted")
        );
        assert_eq!(
            step(s, Input::GiveUp).unwrap(),
            (State::Errored, "worker_errored")
        );
    }

    #[test]
    fn late_or_duplicate_inputs_are_refused() {
        assert!(step(State::Stopped, Input::Exited).is_err());
        assert!(step(State::Stopping, Input::Ready).is_err());
        assert!(step(State::Errored, Input::Restart).is_err());
        assert!(step(State::Errored, Input::Spawned).is_err());
        assert!(step(State::Ready, Input::Spawned).is_err());
    }

    #[test]
    fn every_row_is_unique() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            for b in &TRANSITIONS[i + 1..] {
                assert!(
                    !(a.0 == b.0 && a.1 == b.1),
                    "two rows for {:?} × {:?}",
                    a.0,
                    a.1
                );
            }
        }
    }
}
