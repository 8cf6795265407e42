//! How sizes, rates and durations read in `xypriss status`, `recommend` and
//! `top`: short, fixed units (sizes always in MiB, so that columns compare at
//! a glance), and the same everywhere.

use crate::report::Leak;

const MIB: f64 = (1u64 << 20) as f64;

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// An allocation rate in bytes per second, signed: `+1.5 MiB/s`, `-0.2 MiB/s`, `0`.
pub fn byte_rate(bytes_per_sec: f64) -> String {
    let mib = bytes_per_sec / MIB;
    if !mib.is_finite() || mib.abs() < 0.05 {
        "0".into()
    } else {
        format!("{mib:+.1} MiB/s")
    }
}

/// A count per second: `12`, `3.4k`, `1.2M`.
pub fn per_sec(rate: f64) -> String {
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    if rate < 1e3 {
        format!("{rate:.0}")
    } else if rate < 1e6 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{:.1}M", rate / 1e6)
    }
}

/// The two largest units of `secs`: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{m}m{:02}s", secs % 60)
    } else if secs < 86_400 {
        format!("{h}h{:02}m", m % 60)
    } else {
        format!("{d}d{:02}h", h % 24)
    }
}

/// The leak detector's verdict: `no`, `off`, or `yes +1.0 MiB/s (97%)`.
pub fn leak(leak: &Leak) -> String {
    match (leak.enabled, leak.leaking) {
        (false, _) => "off".into(),
        (true, false) => "no".into(),
        (true, true) => {
            let mut text = "yes".to_owned();
            if let Some(slope) = leak.slope_bytes_per_sec {
                text.push(' ');
                text.push_str(&byte_rate(slope));
            }
            if let Some(confidence) = leak.confidence {
                text.push_str(&format!(" ({:.0}%)", confidence * 100.0));
            }
            text
        }
    }
}

/// `on` or `off`.
pub fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_mib() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(12 << 20 | 300 << 10), "12.3 MiB");
        assert_eq!(mib(3 << 30), "3072.0 MiB");
    }

    #[test]
    fn rates_are_short_and_signed_where_they_can_shrink() {
        assert_eq!(byte_rate(1.5 * MIB), "+1.5 MiB/s");
        assert_eq!(byte_rate(-0.3 * MIB), "-0.3 MiB/s");
        assert_eq!(byte_rate(1000.0), "0");
        assert_eq!(byte_rate(f64::NAN), "0");
        assert_eq!(per_sec(12.4), "12");
        assert_eq!(per_sec(3_456.0), "3.5k");
        assert_eq!(per_sec(1_200_000.0), "1.2M");
        assert_eq!(per_sec(-1.0), "0");
    }

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn leak_verdicts() {
        let mut verdict = Leak {
            leaking: false,
            enabled: false,
            slope_bytes_per_sec: None,
            confidence: None,
        };
        assert_eq!(leak(&verdict), "off");
        verdict.enabled = true;
        assert_eq!(leak(&verdict), "no");
        verdict.leaking = true;
        verdict.slope_bytes_per_sec = Some(MIB);
        verdict.confidence = Some(0.971);
        assert_eq!(leak(&verdict), "yes +1.0 MiB/s (97%)");
    }
}
