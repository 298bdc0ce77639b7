//! When a checker probes: its first probe within an interval of its start, so reals
//! added together are not checked in the same millisecond, then every interval
//! ±5 % after the last was due (not after it ended: a slow answer does not push every
//! later probe back), so they drift apart. Seeded, so the spacing is reproducible and
//! testable; instants in, instants out.

use std::time::{Duration, Instant};

pub struct Schedule {
    interval: Duration,
    rng: fastrand::Rng,
}

impl Schedule {
    pub fn new(interval: Duration, seed: u64) -> Self {
        Schedule { interval, rng: fastrand::Rng::with_seed(seed) }
    }

    /// When the first probe is due, for a checker started at `now`: in [now, now +
    /// interval). Spread over the whole interval, as keepalived spreads its checkers: ten
    /// thousand reals started together would otherwise be probed in one burst, and the
    /// fixed-rate schedule below would keep them bunched.
    pub fn first(&mut self, now: Instant) -> Instant {
        now + self.jitter(self.interval)
    }

    /// When the probe after one due at `due` and started at `started` is due: the
    /// interval ±5 % after `due`, fixed-rate; after `started` instead when that probe
    /// started more than a tenth of the interval late, so a checker that fell behind
    /// moves on rather than probing back to back to catch up. A probe that ran past the
    /// time returned starts as soon as it ends, and counts as late.
    pub fn next(&mut self, due: Instant, started: Instant) -> Instant {
        let spread = self.interval / 10;
        let base = if started.saturating_duration_since(due) > spread { started } else { due };
        base + self.interval - spread / 2 + self.jitter(spread)
    }

    /// A duration in [0, max).
    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.u64(0..nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_within_their_bounds() {
        let interval = Duration::from_secs(2);
        let mut s = Schedule::new(interval, 7);
        let start = Instant::now();
        let mut due = s.first(start);
        assert!(due - start < interval);
        for _ in 0..1000 {
            // Started on time: the next is due from when this one was, however long it
            // takes.
            let next = s.next(due, due + Duration::from_millis(1));
            let after = next - due;
            assert!(
                after >= Duration::from_millis(1900) && after < Duration::from_millis(2100),
                "{after:?}"
            );
            due = next;
        }
        // Started 3 s late (a stalled director): the next is due an interval after it
        // started, not at once to catch up.
        let started = due + Duration::from_secs(3);
        let after = s.next(due, started) - started;
        assert!(after >= Duration::from_millis(1900), "{after:?}");
    }

    #[test]
    fn a_seed_gives_the_same_spacing_and_seeds_spread_checks() {
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        let waits = |seed| {
            let mut s = Schedule::new(interval, seed);
            let first = s.first(start);
            let second = s.next(first, first);
            (first, second, s.next(second, second))
        };
        assert_eq!(waits(1), waits(1));
        // 100 checkers started together: their first probes spread over the window, not
        // bunched in a few milliseconds of it.
        let mut firsts: Vec<Duration> =
            (0..100).map(|seed| Schedule::new(interval, seed).first(start) - start).collect();
        firsts.sort();
        assert!(firsts[0] < Duration::from_millis(100), "{firsts:?}");
        assert!(firsts[99] > Duration::from_millis(900), "{firsts:?}");
        let distinct = firsts.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(distinct, 99);
    }
}
