//! Pressure stall information (PSI) for memory: how long tasks waited on
//! memory. `run` does not use it, so its absence is only a warning; it is
//! checked because it is how an operator tells a host short of memory from
//! one worker's own growth.

use std::io;

use super::Check;

const NAME: &str = "psi";

/// `text`: /proc/pressure/memory.
pub fn pressure(text: &io::Result<String>) -> Check {
    match text {
        Ok(text) => Check::ok(
            NAME,
            format!("memory {}", text.lines().next().unwrap_or_default()),
        ),
        Err(err) => Check::warn(
            NAME,
            format!("/proc/pressure/memory: {err}; run does not need it"),
            "boot a kernel built with CONFIG_PSI=y with psi=1",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn present_it_shows_the_some_line() {
        let check = pressure(&Ok("some avg10=0.00 avg60=0.00 avg300=0.00 total=44306\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=11718\n"
            .into()));
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.detail,
            "memory some avg10=0.00 avg60=0.00 avg300=0.00 total=44306"
        );
    }

    #[test]
    fn absent_it_is_only_a_warning() {
        // Without CONFIG_PSI, or booted with psi=0, there is no /proc/pressure.
        let check = pressure(&Err(io::ErrorKind::NotFound.into()));
        assert_eq!(check.status, Status::Warn);
        assert_eq!(check.degrades, None);
        assert!(check.fix.unwrap().contains("psi=1"));
    }
}
