//! The cleanup grace (PROTOCOL §8.4): how long a former owner keeps answering for an execution
//! after its end. The same value §5 passes as `--idle-on-complete`.

use std::time::Duration;

/// The grace when nothing says otherwise (and when the operator's value does not parse).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(45 * 60);

/// `idle_timeout_minutes` when positive; else the operator's `idle_on_complete` as a duration
/// (`0s`: none; unparseable: the default); else the default.
pub fn grace(idle_timeout_minutes: Option<i64>, idle_on_complete: Option<&str>) -> Duration {
    if let Some(m) = idle_timeout_minutes.filter(|m| *m > 0) {
        return Duration::from_secs(u64::try_from(m).unwrap_or(0).saturating_mul(60));
    }
    match idle_on_complete {
        Some(s) => humantime::parse_duration(s.trim()).unwrap_or(DEFAULT_GRACE),
        None => DEFAULT_GRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_wins_then_the_operator_then_45_minutes() {
        let m = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(grace(Some(3), Some("10m")), m(3));
        assert_eq!(grace(Some(0), Some("10m")), m(10));
        assert_eq!(grace(Some(-5), None), m(45));
        assert_eq!(grace(None, Some("0s")), Duration::ZERO);
        assert_eq!(grace(None, Some("1h15m")), m(75));
        assert_eq!(grace(None, Some("soon")), m(45));
        assert_eq!(grace(None, Some("")), m(45));
        assert_eq!(grace(None, None), m(45));
    }
}
