//! When a checker probes: its first probe within a tenth of the interval of its start, so
//! reals added together are not checked in the same millisecond, then every interval
//! ±5 %, so they drift apart. Seeded, so the spacing is reproducible and testable.

use std::time::Duration;

pub struct Schedule {
    interval: Duration,
    rng: fastrand::Rng,
}

impl Schedule {
    pub fn new(interval: Duration, seed: u64) -> Self {
        Schedule { interval, rng: fastrand::Rng::with_seed(seed) }
    }

    /// The wait before the first probe: in [0, interval / 10).
    pub fn first(&mut self) -> Duration {
        self.jitter(self.interval / 10)
    }

    /// The wait after a probe before the next: in [interval - 5 %, interval + 5 %).
    pub fn after_probe(&mut self) -> Duration {
        let spread = self.interval / 10;
        self.interval - spread / 2 + self.jitter(spread)
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
        assert!(s.first() < Duration::from_millis(200));
        for _ in 0..1000 {
            let next = s.after_probe();
            assert!(
                next >= Duration::from_millis(1900) && next < Duration::from_millis(2100),
                "{next:?}"
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_spacing_and_seeds_spread_checks() {
        let interval = Duration::from_secs(1);
        let waits = |seed| {
            let mut s = Schedule::new(interval, seed);
            (s.first(), s.after_probe(), s.after_probe())
        };
        assert_eq!(waits(1), waits(1));
        // 100 checkers started together: their first probes spread over the window, not
        // bunched in a few milliseconds of it.
        let mut firsts: Vec<Duration> =
            (0..100).map(|seed| Schedule::new(interval, seed).first()).collect();
        firsts.sort();
        assert!(firsts[0] < Duration::from_millis(10), "{firsts:?}");
        assert!(firsts[99] > Duration::from_millis(90), "{firsts:?}");
        let distinct = firsts.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(distinct, 99);
    }
}
