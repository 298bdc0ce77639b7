//! `ha.track_ping`, sans-IO: this director pings nodes it must reach to be of use (its
//! gateway, a core switch); when it has lost every one of them it is in FAULT, gives the
//! VIPs up and stops advertising, so a director that can still reach them takes over.
//! Echo requests out, replies and the clock in; a node is lost after `lost_after` rounds
//! without a reply, and back at its first reply.

use std::net::IpAddr;
use std::time::Duration;

use super::Time;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub nodes: Vec<IpAddr>,
    /// How often each node is pinged; a reply later than this counts as none.
    pub interval: Duration,
    /// Rounds in a row without a reply before a node is lost.
    pub lost_after: u32,
}

impl Settings {
    /// One echo a second, lost after three missed: FAULT about three seconds after the
    /// last node stopped answering.
    pub fn new(nodes: Vec<IpAddr>) -> Self {
        Settings { nodes, interval: Duration::from_secs(1), lost_after: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send an ICMP or ICMPv6 echo request with this sequence number.
    Ping { node: IpAddr, seq: u16 },
    /// Every node lost (true), or one back (false).
    Fault(bool),
}

#[derive(Debug, Clone)]
struct Node {
    addr: IpAddr,
    /// The echo in flight and unanswered.
    waiting: Option<u16>,
    misses: u32,
    lost: bool,
}

#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    nodes: Vec<Node>,
    seq: u16,
    next_round: Time,
    fault: bool,
}

impl Tracker {
    /// Nodes start reachable: a director is not in FAULT before it has asked.
    pub fn new(settings: Settings, now: Time) -> Self {
        let nodes = settings
            .nodes
            .iter()
            .map(|&addr| Node { addr, waiting: None, misses: 0, lost: false })
            .collect();
        Tracker { settings, nodes, seq: 0, next_round: now, fault: false }
    }

    pub fn fault(&self) -> bool {
        self.fault
    }

    /// The nodes lost so far, for the log.
    pub fn lost(&self) -> Vec<IpAddr> {
        self.nodes.iter().filter(|n| n.lost).map(|n| n.addr).collect()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        (!self.nodes.is_empty()).then_some(self.next_round)
    }

    /// A round: what went unanswered since the last one is a miss, then a new echo to
    /// every node.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<Effect> {
        if now < self.next_round || self.nodes.is_empty() {
            return Vec::new();
        }
        self.next_round = now + self.settings.interval;
        self.seq = self.seq.wrapping_add(1);
        let mut fx = Vec::new();
        for node in &mut self.nodes {
            if node.waiting.take().is_some() {
                node.misses = node.misses.saturating_add(1);
                node.lost |= node.misses >= self.settings.lost_after;
            }
            node.waiting = Some(self.seq);
            fx.push(Effect::Ping { node: node.addr, seq: self.seq });
        }
        self.judge(&mut fx);
        fx
    }

    /// An echo reply from `from` with sequence number `seq`; others are ignored.
    pub fn reply(&mut self, from: IpAddr, seq: u16) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(node) = self.nodes.iter_mut().find(|n| n.addr == from && n.waiting == Some(seq))
        {
            node.waiting = None;
            node.misses = 0;
            node.lost = false;
            self.judge(&mut fx);
        }
        fx
    }

    fn judge(&mut self, fx: &mut Vec<Effect>) {
        let fault = self.nodes.iter().all(|n| n.lost);
        if fault != self.fault {
            self.fault = fault;
            fx.push(Effect::Fault(fault));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<IpAddr> {
        vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]
    }

    /// Runs rounds until `until`, answering every echo of the nodes `answering` says.
    fn run(
        t: &mut Tracker,
        now: &mut Time,
        until: Time,
        answering: impl Fn(IpAddr) -> bool,
    ) -> Vec<(Time, bool)> {
        let mut faults = Vec::new();
        while let Some(at) = t.poll_timeout().filter(|&at| at <= until) {
            *now = at;
            for e in t.handle_timeout(at) {
                match e {
                    Effect::Ping { node, seq } if answering(node) => {
                        for e in t.reply(node, seq) {
                            if let Effect::Fault(f) = e {
                                faults.push((at, f));
                            }
                        }
                    }
                    Effect::Fault(f) => faults.push((at, f)),
                    Effect::Ping { .. } => {}
                }
            }
        }
        faults
    }

    #[test]
    fn every_node_lost_is_fault_and_one_back_clears_it() {
        let t0 = Time::from_secs(100);
        let mut now = t0;
        let mut t = Tracker::new(Settings::new(nodes()), t0);
        assert!(run(&mut t, &mut now, t0 + Duration::from_secs(10), |_| true).is_empty());
        // The IPv4 node goes: one node left, no fault.
        let v6 = |n: IpAddr| n.is_ipv6();
        assert!(run(&mut t, &mut now, t0 + Duration::from_secs(20), v6).is_empty());
        assert_eq!(t.lost(), ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        // Both go: FAULT on the third round without a reply.
        let silent_from = now + Duration::from_secs(1);
        let faults = run(&mut t, &mut now, t0 + Duration::from_secs(30), |_| false);
        assert_eq!(faults, [(silent_from + Duration::from_secs(3), true)]);
        assert!(t.fault());
        // One answers again: the fault clears at its first reply.
        let faults = run(&mut t, &mut now, t0 + Duration::from_secs(40), v6);
        assert_eq!(faults, [(t0 + Duration::from_secs(31), false)]);
    }

    #[test]
    fn a_late_or_foreign_reply_is_no_answer() {
        let t0 = Time::from_secs(0);
        let mut t = Tracker::new(Settings::new(vec!["192.0.2.1".parse().unwrap()]), t0);
        let fx = t.handle_timeout(t0);
        let Effect::Ping { node, seq } = fx[0] else { panic!("{fx:?}") };
        // Another sequence number, another sender: ignored.
        assert!(t.reply(node, seq.wrapping_add(1)).is_empty());
        assert!(t.reply("192.0.2.9".parse().unwrap(), seq).is_empty());
        for i in 1..=3 {
            let fx = t.handle_timeout(t0 + Duration::from_secs(i));
            assert_eq!(fx.contains(&Effect::Fault(true)), i == 3, "round {i}: {fx:?}");
        }
        // The reply to the first echo, long after: ignored; one to the current: back.
        assert!(t.reply(node, seq).is_empty());
        let Some(Effect::Ping { seq: current, .. }) =
            t.handle_timeout(t0 + Duration::from_secs(4)).first().cloned()
        else {
            panic!()
        };
        assert_eq!(t.reply(node, current), [Effect::Fault(false)]);
    }

    #[test]
    fn no_nodes_no_rounds() {
        let t = Tracker::new(Settings::new(Vec::new()), Time::from_secs(0));
        assert_eq!(t.poll_timeout(), None);
        assert!(!t.fault());
    }
}
