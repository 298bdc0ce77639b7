//! Rise/fall hysteresis, as ldirectord and keepalived apply it: a real goes up after `rise`
//! consecutive successes and down after `fall` consecutive failures. Sans-IO: results in,
//! transitions out, so it is tested without sockets or clocks.

/// Health of one real for one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No result yet.
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Health,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    pub fn new(rise: u32, fall: u32) -> Self {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// Starts from `state` instead of waiting for a first result: a restarted lbd takes a
    /// real its data plane was still sending to as up, until `fall` failures say otherwise.
    pub fn assume(&mut self, state: Health) {
        self.state = state;
    }

    /// Whether the state stands on a full count of results: up after at least `rise`
    /// successes in a row, down after at least `fall` failures. A first result decides at
    /// once but is not settled, nor is a state that the last results argue against.
    pub fn settled(&self) -> bool {
        match self.state {
            Health::Up => self.successes >= self.rise,
            Health::Down => self.failures >= self.fall,
            Health::Unknown => false,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one check result; returns the new state when it changes. The very first result
    /// decides at once: a director that starts (or reloads) should neither wait `rise`
    /// intervals before serving nor send traffic to a real it has never seen answer.
    pub fn observe(&mut self, success: bool) -> Option<Health> {
        if success {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match self.state {
            Health::Unknown if success => Health::Up,
            Health::Unknown => Health::Down,
            Health::Down if self.successes >= self.rise => Health::Up,
            Health::Up if self.failures >= self.fall => Health::Down,
            same => same,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.observe(true), Some(Health::Up));
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.observe(false), Some(Health::Down));
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Hysteresis::new(2, 3);
        h.observe(true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(Health::Down));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(Health::Up));
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        // Four billion results of a check every 10 ms: 16 months up.
        let mut h = Hysteresis::new(2, u32::MAX);
        h.observe(true);
        h.successes = u32::MAX;
        assert_eq!(h.observe(true), None);
        assert_eq!(h.successes, u32::MAX);
        h.observe(false);
        h.failures = u32::MAX - 1;
        assert_eq!(h.observe(false), Some(Health::Down));
        assert_eq!(h.observe(false), None);
        assert_eq!(h.failures, u32::MAX);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut h = Hysteresis::new(1, 2);
        h.observe(true);
        for _ in 0..5 {
            assert_eq!(h.observe(false), None);
            assert_eq!(h.observe(true), None);
        }
        assert_eq!(h.state(), Health::Up);
    }

    #[test]
    fn a_state_is_settled_on_a_full_count_only() {
        let mut h = Hysteresis::new(2, 3);
        assert!(!h.settled(), "no result yet");
        h.observe(true);
        assert!(!h.settled(), "up on a first result");
        h.observe(true);
        assert!(h.settled());
        h.observe(false);
        assert!(!h.settled(), "up, but the last result says otherwise");
        h.observe(false);
        h.observe(false);
        assert_eq!((h.state(), h.settled()), (Health::Down, true));
        h.observe(true);
        assert!(!h.settled(), "down, and rising");
        let mut adopted = Hysteresis::new(2, 3);
        adopted.assume(Health::Up);
        assert!(!adopted.settled(), "assumed, not seen");
    }
}
