//! Reconnect delays: exponential from 1 s, doubling, capped at 60 s, with jitter so a fleet
//! that lost its control plane at the same instant does not redial in lockstep.

use std::time::Duration;

/// First delay.
pub const BASE: Duration = Duration::from_secs(1);
/// Largest delay.
pub const MAX: Duration = Duration::from_secs(60);

/// The nominal (un-jittered) delay before redial number `attempt` (0-based).
pub fn nominal(attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
    BASE.checked_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .unwrap_or(MAX)
        .min(MAX)
}

/// The delay for `attempt` with "equal jitter": half the nominal delay, plus `unit` (a number
/// in `[0, 1)`) times the other half. Never more than the nominal delay, never less than half.
pub fn delay(attempt: u32, unit: f64) -> Duration {
    delay_capped(attempt, unit, MAX)
}

/// [`delay`] with the nominal delay capped at `cap` (jitter still applies below the cap).
pub fn delay_capped(attempt: u32, unit: f64, cap: Duration) -> Duration {
    let n = nominal(attempt).min(cap);
    let half = n / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Stateful backoff over [`delay`] with a random jitter source.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
    cap: Option<Duration>,
}

impl Backoff {
    /// A backoff whose nominal delay never exceeds `cap` (e.g. polling a local engine).
    pub fn capped(cap: Duration) -> Self {
        Backoff {
            attempt: 0,
            cap: Some(cap),
        }
    }

    /// The next delay; each call counts one failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay_capped(self.attempt, rand::random::<f64>(), self.cap.unwrap_or(MAX));
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first delay (after a successful handshake).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nominal_doubles_from_one_second_to_the_cap() {
        let secs: Vec<u64> = (0..9).map(|a| nominal(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(nominal(u32::MAX), MAX);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn a_capped_backoff_stays_under_its_cap() {
        let mut b = Backoff::capped(Duration::from_secs(5));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[11] >= Duration::from_millis(2500));
        assert_eq!(delay_capped(0, 1.0, Duration::from_secs(5)), BASE);
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_half_and_full_nominal(attempt in 0u32..100, unit in 0.0f64..1.0) {
            let d = delay(attempt, unit);
            let n = nominal(attempt);
            prop_assert!(d <= n && d >= n / 2 && d <= MAX);
        }
    }
}
