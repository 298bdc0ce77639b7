//! The director's side of failover, sans-IO: the VRRP election ([`super::vrrp`]) and what
//! follows from it. On becoming master: the VIPs added, announced several times, spaced,
//! and the data plane's fence lease renewed with every advert; on anything else: the VIPs
//! given up and the lease let go. Every transition is counted and handed to the notify
//! script; every dropped advert is counted by reason.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::Time;
use super::vrrp::wire::{self, Drop, Envelope};
use super::vrrp::{self, Advert, Heard, State, Vrrp};

/// How the VIPs are announced after a takeover: keepalived's garp_master_repeat and
/// garp_master_refresh in spirit. A switch or client that missed the first one (a
/// port still coming up, a lost broadcast) gets the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub count: u32,
    pub spacing: Duration,
}

impl Default for Announce {
    fn default() -> Self {
        Announce { count: 5, spacing: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub vrrp: vrrp::Settings,
    /// The addresses that move with mastership (`ha.vips`, default every service VIP).
    pub vips: Vec<IpAddr>,
    pub announce: Announce,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Encode and send this advert (to the group, or to each unicast peer).
    Send(Advert),
    /// Add the VIPs to the HA interface.
    TakeVips,
    /// Gratuitous ARP / unsolicited NA for every VIP.
    Announce,
    /// Remove the VIPs from the HA interface.
    ReleaseVips,
    /// The data plane may answer for the VIPs and take new flows until then (kernel
    /// time); `None`: not at all. Renewed with every advert while master, so a lbd that
    /// dies or hangs stops renewing and the data plane fences itself before a backup's
    /// Master_Down_Interval ends.
    Lease(Option<Time>),
    /// Run the notify script with this state, and log the transition.
    Notify { from: State, to: State },
}

/// What `lbadm status` shows of HA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The virtual router's family: each family has its own.
    pub ipv4: bool,
    pub state: State,
    pub priority: u8,
    pub master: Option<IpAddr>,
    pub since: Time,
    pub transitions: BTreeMap<&'static str, u64>,
    pub dropped: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone)]
pub struct Ha {
    vrrp: Vrrp,
    settings: Settings,
    announce_left: u32,
    announce_at: Option<Time>,
    transitions: BTreeMap<&'static str, u64>,
    dropped: BTreeMap<Drop, u64>,
}

impl Ha {
    pub fn new(settings: Settings, now: Time) -> Self {
        Ha {
            vrrp: Vrrp::new(settings.vrrp.clone(), now),
            settings,
            announce_left: 0,
            announce_at: None,
            transitions: BTreeMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> State {
        self.vrrp.state()
    }

    /// The VIPs that move, for the driver's address changes, announcements and adverts.
    pub fn vips(&self) -> &[IpAddr] {
        &self.settings.vips
    }

    /// How long the fence lease runs past each advert: two intervals, so one late advert
    /// does not fence a live master, and a dead one is fenced a whole interval before
    /// the backup's Master_Down_Interval (three intervals and the skew) ends.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.settings.vrrp.interval_cs) * 20)
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        [self.vrrp.poll_timeout(), self.announce_at].into_iter().flatten().min()
    }

    pub fn start(&mut self, now: Time) -> Vec<Effect> {
        // A fresh start holds no lease and no VIPs, whatever a previous lbd left.
        let mut fx = vec![Effect::ReleaseVips, Effect::Lease(None)];
        let v = self.vrrp.start(now);
        self.follow(now, v, &mut fx);
        fx
    }

    pub fn shutdown(&mut self, now: Time) -> Vec<Effect> {
        let v = self.vrrp.shutdown(now);
        let mut fx = Vec::new();
        self.follow(now, v, &mut fx);
        fx
    }

    pub fn set_fault(&mut self, now: Time, fault: bool) -> Vec<Effect> {
        let v = self.vrrp.set_fault(now, fault);
        let mut fx = Vec::new();
        self.follow(now, v, &mut fx);
        fx
    }

    /// Whether every service has a real taking new connections (see [`Vrrp::set_ready`]).
    pub fn set_ready(&mut self, ready: bool) {
        self.vrrp.set_ready(ready);
    }

    /// A reload's priority: through the election, never a drop to backup.
    pub fn set_priority(&mut self, now: Time, priority: u8) -> Vec<Effect> {
        self.settings.vrrp.priority = priority;
        let v = self.vrrp.set_priority(now, priority);
        let mut fx = Vec::new();
        self.follow(now, v, &mut fx);
        fx
    }

    /// A VRRP message from the socket, with its IP header's fields.
    pub fn heard(&mut self, now: Time, message: &[u8], envelope: Envelope) -> Vec<Effect> {
        let mut fx = Vec::new();
        match wire::decode(message, envelope, self.settings.vrrp.vrid, &self.settings.vips) {
            Ok(advert) => {
                let v = self.vrrp.receive(now, Heard { from: envelope.src, advert });
                self.follow(now, v, &mut fx);
            }
            Err(why) => *self.dropped.entry(why).or_default() += 1,
        }
        fx
    }

    pub fn handle_timeout(&mut self, now: Time) -> Vec<Effect> {
        let mut fx = Vec::new();
        let v = self.vrrp.handle_timeout(now);
        self.follow(now, v, &mut fx);
        if self.announce_at.is_some_and(|t| t <= now) {
            fx.push(Effect::Announce);
            self.announce_left = self.announce_left.saturating_sub(1);
            self.announce_at =
                (self.announce_left > 0).then(|| now + self.settings.announce.spacing);
        }
        fx
    }

    pub fn view(&self) -> View {
        View {
            ipv4: self.settings.vrrp.primary.is_ipv4(),
            state: self.vrrp.state(),
            priority: self.vrrp.priority(),
            master: self.vrrp.master(),
            since: self.vrrp.since(),
            transitions: self.transitions.clone(),
            dropped: self.dropped.iter().map(|(d, n)| (d.name(), *n)).collect(),
        }
    }

    /// Turns the election's effects into the director's.
    fn follow(&mut self, now: Time, election: Vec<vrrp::Effect>, fx: &mut Vec<Effect>) {
        for e in election {
            match e {
                vrrp::Effect::Send(advert) => {
                    fx.push(Effect::Send(advert));
                    if self.vrrp.state() == State::Master && advert.priority > 0 {
                        fx.push(Effect::Lease(Some(now + self.lease())));
                    }
                }
                vrrp::Effect::Became { from, to } => {
                    *self.transitions.entry(state_name(to)).or_default() += 1;
                    match to {
                        State::Master => {
                            // Forwarding first (the lease: the data plane serves the VIPs),
                            // then the VIPs on the interface, so the kernel answers ARP for
                            // them, then the announcements. The other way round, a client
                            // that moves to this director meets a kernel that holds the VIP
                            // and no forwarding yet, and its connections are reset.
                            let lease = fx.iter().position(|e| matches!(e, Effect::Lease(Some(_))));
                            let at = lease.map_or(fx.len(), |i| i + 1);
                            fx.splice(at..at, [Effect::TakeVips, Effect::Announce]);
                            self.announce_left = self.settings.announce.count.saturating_sub(1);
                            self.announce_at = (self.announce_left > 0)
                                .then(|| now + self.settings.announce.spacing);
                        }
                        _ => {
                            self.announce_left = 0;
                            self.announce_at = None;
                            if from == State::Master {
                                // The VIPs off the interface first: once forwarding stops,
                                // the kernel must not be the one answering for them.
                                fx.push(Effect::ReleaseVips);
                                fx.push(Effect::Lease(None));
                            }
                        }
                    }
                    fx.push(Effect::Notify { from, to });
                }
            }
        }
    }
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Initialize => "INIT",
        State::Backup => "BACKUP",
        State::Master => "MASTER",
        State::Fault => "FAULT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(priority: u8) -> Settings {
        Settings {
            vrrp: vrrp::Settings {
                vrid: 51,
                priority,
                interval_cs: 100,
                preempt: true,
                preempt_delay: Duration::ZERO,
                primary: "192.0.2.2".parse().unwrap(),
            },
            vips: vec!["192.0.2.10".parse().unwrap()],
            announce: Announce { count: 3, spacing: Duration::from_secs(1) },
        }
    }

    /// Runs `ha` alone on the link until `until`, collecting its effects with their times.
    fn run(ha: &mut Ha, from: Time, until: Time) -> Vec<(Time, Effect)> {
        let mut out = Vec::new();
        let mut now = from;
        while let Some(t) = ha.poll_timeout().filter(|&t| t <= until) {
            now = t.max(now);
            out.extend(ha.handle_timeout(now).into_iter().map(|e| (now, e)));
        }
        out
    }

    #[test]
    fn a_takeover_forwards_then_adds_the_vips_and_announces_them_three_times() {
        let t0 = Time::from_secs(100);
        let mut ha = Ha::new(settings(200), t0);
        assert_eq!(ha.start(t0)[..2], [Effect::ReleaseVips, Effect::Lease(None)]);
        let fx = run(&mut ha, t0, t0 + Duration::from_secs(10));
        let down = t0 + Duration::from_micros(3_218_750);
        let first: Vec<&Effect> = fx.iter().filter(|(t, _)| *t == down).map(|(_, e)| e).collect();
        assert_eq!(
            first,
            [
                &Effect::Send(Advert { priority: 200, interval_cs: 100 }),
                &Effect::Lease(Some(down + Duration::from_secs(2))),
                &Effect::TakeVips,
                &Effect::Announce,
                &Effect::Notify { from: State::Backup, to: State::Master },
            ]
        );
        let announced: Vec<Time> =
            fx.iter().filter(|(_, e)| *e == Effect::Announce).map(|(t, _)| *t).collect();
        assert_eq!(announced, [down, down + Duration::from_secs(1), down + Duration::from_secs(2)]);
        // Every advert renews the lease, two intervals ahead.
        let adverts = fx.iter().filter(|(_, e)| matches!(e, Effect::Send(_))).count();
        let leases = fx.iter().filter(|(_, e)| matches!(e, Effect::Lease(Some(_)))).count();
        assert_eq!(adverts, leases);
        assert!(adverts >= 6);
        assert_eq!(ha.view().transitions.get("MASTER"), Some(&1));
    }

    #[test]
    fn the_lease_lapses_before_a_backup_would_take_over() {
        let ha = Ha::new(settings(200), Time::from_secs(0));
        let backup = Vrrp::new(settings(100).vrrp, Time::from_secs(0));
        assert!(ha.lease() < backup.master_down_interval());
        // And outlives one late advert.
        assert!(ha.lease() > Duration::from_millis(1000));
    }

    #[test]
    fn hearing_a_higher_master_gives_everything_up_and_counts_bad_adverts() {
        let t0 = Time::from_secs(100);
        let mut ha = Ha::new(settings(100), t0);
        ha.start(t0);
        run(&mut ha, t0, t0 + Duration::from_secs(5));
        assert_eq!(ha.state(), State::Master);
        let now = t0 + Duration::from_secs(5);
        let peer: IpAddr = "192.0.2.3".parse().unwrap();
        let env = Envelope { src: peer, dst: IpAddr::from(wire::GROUP_V4), ttl: 255 };
        let higher = wire::encode(
            51,
            Advert { priority: 200, interval_cs: 100 },
            ha.vips(),
            env.src,
            env.dst,
        );
        let fx = ha.heard(now, &higher, env);
        assert_eq!(
            fx,
            [
                Effect::ReleaseVips,
                Effect::Lease(None),
                Effect::Notify { from: State::Master, to: State::Backup }
            ]
        );
        assert_eq!(ha.view().master, Some(peer));
        // A router's copy (TTL 254) and a v2 speaker are dropped and counted, not obeyed.
        let _ = ha.heard(now, &higher, Envelope { ttl: 254, ..env });
        let mut v2 = higher.clone();
        v2[0] = 0x21;
        let _ = ha.heard(now, &v2, env);
        let dropped = ha.view().dropped;
        assert_eq!((dropped.get("ttl"), dropped.get("version")), (Some(&1), Some(&1)));
        // No announcement left over from the mastership that ended.
        assert!(
            run(&mut ha, now, now + Duration::from_secs(3))
                .iter()
                .all(|(_, e)| *e != Effect::Announce)
        );
    }

    #[test]
    fn a_graceful_stop_says_priority_0_then_gives_the_vips_up() {
        let t0 = Time::from_secs(100);
        let mut ha = Ha::new(settings(200), t0);
        ha.start(t0);
        run(&mut ha, t0, t0 + Duration::from_secs(5));
        let fx = ha.shutdown(t0 + Duration::from_secs(5));
        assert_eq!(
            fx,
            [
                Effect::Send(Advert { priority: 0, interval_cs: 100 }),
                Effect::ReleaseVips,
                Effect::Lease(None),
                Effect::Notify { from: State::Master, to: State::Initialize },
            ]
        );
    }
}
