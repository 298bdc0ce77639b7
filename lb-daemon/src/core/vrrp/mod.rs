//! VRRPv3's election (RFC 5798 section 6.4) for one virtual router, sans-IO: received
//! adverts, the time and the operator's changes in; adverts to send and state changes out;
//! [`Vrrp::poll_timeout`] says when its timers next need it. Who owns the VIPs follows
//! from the state; the wire format is [`wire`], the sockets are a driver's.

pub mod wire;

use std::net::IpAddr;
use std::time::Duration;

use super::Time;

/// One virtual router's settings (`ha` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub vrid: u8,
    /// 1..=254: the highest alive director is master (255, the address owner, is not
    /// offered: a load balancer's VIPs are owned by no director).
    pub priority: u8,
    /// Advertisement_Interval in centiseconds, 1..=4095 (VRRPv3's 12 bits).
    pub interval_cs: u16,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// After start, how long to behave as if preempt were off (keepalived's
    /// preempt_delay): a director that just booted lets its routes and checks settle.
    pub preempt_delay: Duration,
    /// This director's primary address on the HA interface: ties between equal
    /// priorities go to the higher one.
    pub primary: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// The HA interface is down or every `track_ping` node is lost: no VIPs, no adverts.
    Fault,
}

/// An advertisement as the election sees it (addresses are checked by the wire layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    pub priority: u8,
    pub interval_cs: u16,
}

/// A received advertisement and who sent it (the IP source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub from: IpAddr,
    pub advert: Advert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this advertisement now.
    Send(Advert),
    /// The state changed: on Master take the VIPs (and announce them), on anything else
    /// give them up.
    Became { from: State, to: State },
}

#[derive(Debug, Clone)]
pub struct Vrrp {
    settings: Settings,
    state: State,
    /// The interval the master advertises, which a backup adopts (RFC 5798 6.1).
    master_interval_cs: u16,
    adver_at: Option<Time>,
    master_down_at: Option<Time>,
    started: Time,
    since: Time,
    /// The current master's address, when known (ours while master).
    master: Option<IpAddr>,
    /// Whether this director could serve as well as a live master: until it can, it does
    /// not preempt one (it still takes over from a master that is gone or leaving).
    ready: bool,
}

impl Vrrp {
    pub fn new(settings: Settings, now: Time) -> Self {
        Vrrp {
            master_interval_cs: settings.interval_cs,
            settings,
            state: State::Initialize,
            adver_at: None,
            master_down_at: None,
            started: now,
            since: now,
            master: None,
            ready: true,
        }
    }

    /// Whether this director is ready to preempt a lower master: a director whose checks
    /// have not yet seen a real of every service answer (just started, or back from a
    /// FAULT that took its checks down too) would take the VIPs only to reset every
    /// connection, where the master it preempts was serving them.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.settings.priority
    }

    /// When the state last changed.
    pub fn since(&self) -> Time {
        self.since
    }

    /// The master's address as last heard (ours while we are master).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// Skew_Time: lower priorities wait longer, so the highest backup takes over first.
    pub fn skew(&self) -> Duration {
        centis((256 - u32::from(self.settings.priority)) * u32::from(self.master_interval_cs)) / 256
    }

    /// Master_Down_Interval: three adverts missed, plus the skew.
    pub fn master_down_interval(&self) -> Duration {
        centis(3 * u32::from(self.master_interval_cs)) + self.skew()
    }

    /// When a timer next needs [`Vrrp::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.state {
            State::Master => self.adver_at,
            State::Backup => self.master_down_at,
            State::Initialize | State::Fault => None,
        }
    }

    /// Startup: wait as a backup for a master's advert.
    pub fn start(&mut self, now: Time) -> Vec<Effect> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.started = now;
        self.become_backup(now, None)
    }

    /// A graceful stop: a master says priority 0, so a backup takes over after Skew_Time
    /// instead of Master_Down_Interval.
    pub fn shutdown(&mut self, now: Time) -> Vec<Effect> {
        self.stand_down(now, State::Initialize)
    }

    /// The interface or the tracked nodes failed (`true`) or came back (`false`).
    pub fn set_fault(&mut self, now: Time, fault: bool) -> Vec<Effect> {
        match (fault, self.state) {
            (true, State::Fault) | (false, State::Initialize | State::Backup | State::Master) => {
                Vec::new()
            }
            (true, _) => self.stand_down(now, State::Fault),
            (false, State::Fault) => self.become_backup(now, None),
        }
    }

    /// Gives the VIPs up: a master first says priority 0, so its backup need not wait.
    fn stand_down(&mut self, now: Time, to: State) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.state == State::Master {
            fx.push(Effect::Send(Advert { priority: 0, interval_cs: self.settings.interval_cs }));
        }
        self.adver_at = None;
        self.master_down_at = None;
        self.master = None;
        self.transition(now, to, &mut fx);
        fx
    }

    /// A new priority from a reload: applied through the election, never by dropping
    /// to backup. A master keeps the VIPs and advertises the new priority, so a higher
    /// backup with preempt takes them in its own time; a backup now above the master
    /// takes over when it may preempt.
    pub fn set_priority(&mut self, now: Time, priority: u8) -> Vec<Effect> {
        let was = std::mem::replace(&mut self.settings.priority, priority);
        if was == priority {
            return Vec::new();
        }
        match self.state {
            State::Master => {
                self.adver_at = Some(now + self.interval());
                vec![Effect::Send(self.advert())]
            }
            _ => Vec::new(),
        }
    }

    /// Timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<Effect> {
        let mut fx = Vec::new();
        match self.state {
            State::Master if self.adver_at.is_some_and(|t| t <= now) => {
                fx.push(Effect::Send(self.advert()));
                self.adver_at = Some(now + self.interval());
            }
            State::Backup if self.master_down_at.is_some_and(|t| t <= now) => {
                self.become_master(now, &mut fx);
            }
            _ => {}
        }
        fx
    }

    /// An advert for our virtual router, already checked by the wire layer.
    pub fn receive(&mut self, now: Time, heard: Heard) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Heard { from, advert } = heard;
        match self.state {
            State::Backup if advert.priority == 0 => {
                // The master is leaving: take over after Skew_Time.
                self.master_down_at = Some(now + self.skew());
                self.master = None;
            }
            State::Backup => {
                if !self.may_preempt(now) || advert.priority >= self.settings.priority {
                    self.master_interval_cs = advert.interval_cs.max(1);
                    self.master_down_at = Some(now + self.master_down_interval());
                    self.master = Some(from);
                }
                // Otherwise a lower master: let the down timer run out and preempt it.
            }
            State::Master if advert.priority == 0 => {
                // Another master left: say at once who is master now.
                fx.push(Effect::Send(self.advert()));
                self.adver_at = Some(now + self.interval());
            }
            State::Master => {
                let theirs = (advert.priority, from);
                let ours = (self.settings.priority, self.settings.primary);
                if theirs > ours {
                    self.master_interval_cs = advert.interval_cs.max(1);
                    fx.extend(self.become_backup(now, Some(from)));
                } else {
                    // A lower master (a healed partition, a restarted peer): answer at once
                    // so it yields now, not after its own next advert.
                    fx.push(Effect::Send(self.advert()));
                    self.adver_at = Some(now + self.interval());
                }
            }
            State::Initialize | State::Fault => {}
        }
        fx
    }

    fn may_preempt(&self, now: Time) -> bool {
        self.settings.preempt
            && self.ready
            && now.since(self.started) >= self.settings.preempt_delay
    }

    fn become_backup(&mut self, now: Time, master: Option<IpAddr>) -> Vec<Effect> {
        let mut fx = Vec::new();
        if master.is_none() {
            self.master_interval_cs = self.settings.interval_cs;
        }
        self.master_down_at = Some(now + self.master_down_interval());
        self.adver_at = None;
        self.master = master;
        self.transition(now, State::Backup, &mut fx);
        fx
    }

    fn become_master(&mut self, now: Time, fx: &mut Vec<Effect>) {
        fx.push(Effect::Send(self.advert()));
        self.adver_at = Some(now + self.interval());
        self.master_down_at = None;
        self.master = Some(self.settings.primary);
        self.transition(now, State::Master, fx);
    }

    fn transition(&mut self, now: Time, to: State, fx: &mut Vec<Effect>) {
        if self.state != to {
            fx.push(Effect::Became { from: self.state, to });
            self.state = to;
            self.since = now;
        }
    }

    fn advert(&self) -> Advert {
        Advert { priority: self.settings.priority, interval_cs: self.settings.interval_cs }
    }

    fn interval(&self) -> Duration {
        centis(u32::from(self.settings.interval_cs))
    }
}

fn centis(cs: u32) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

#[cfg(test)]
mod tests {
    //! Two and three directors on a simulated link (1 ms of latency, multicast to every
    //! live director in the same partition) and a virtual clock stepped from event to
    //! event.

    use super::*;

    const LATENCY: Duration = Duration::from_millis(1);

    struct Link {
        nodes: Vec<Vrrp>,
        alive: Vec<bool>,
        /// Directors hear each other only within one group (a partition splits them).
        group: Vec<u8>,
        in_flight: Vec<(Time, usize, Heard)>,
        now: Time,
        /// Every state change and advert sent, by director.
        log: Vec<(Time, usize, Effect)>,
    }

    fn addr(i: usize) -> IpAddr {
        IpAddr::from([192, 0, 2, 1 + i as u8])
    }

    fn settings(i: usize, priority: u8, preempt: bool) -> Settings {
        Settings {
            vrid: 51,
            priority,
            interval_cs: 100,
            preempt,
            preempt_delay: Duration::ZERO,
            primary: addr(i),
        }
    }

    impl Link {
        fn new(nodes: Vec<Settings>) -> Self {
            let now = Time::from_secs(100);
            let n = nodes.len();
            Link {
                nodes: nodes.into_iter().map(|s| Vrrp::new(s, now)).collect(),
                alive: vec![false; n],
                group: vec![0; n],
                in_flight: Vec::new(),
                now,
                log: Vec::new(),
            }
        }

        fn start(&mut self, i: usize) {
            self.alive[i] = true;
            let fx = self.nodes[i].start(self.now);
            self.apply(i, fx);
        }

        fn start_all(&mut self) {
            for i in 0..self.nodes.len() {
                self.start(i);
            }
        }

        fn apply(&mut self, i: usize, fx: Vec<Effect>) {
            for e in fx {
                if let Effect::Send(advert) = e {
                    for j in 0..self.nodes.len() {
                        if j != i && self.alive[j] && self.group[j] == self.group[i] {
                            let heard = Heard { from: addr(i), advert };
                            self.in_flight.push((self.now + LATENCY, j, heard));
                        }
                    }
                }
                self.log.push((self.now, i, e));
            }
        }

        /// Runs every event up to `until`.
        fn run_until(&mut self, until: Time) {
            loop {
                let timers = (0..self.nodes.len())
                    .filter(|&i| self.alive[i])
                    .filter_map(|i| self.nodes[i].poll_timeout());
                let deliveries = self.in_flight.iter().map(|(t, _, _)| *t);
                let Some(next) = timers.chain(deliveries).min().filter(|&t| t <= until) else {
                    break;
                };
                self.now = next;
                let (due, later): (Vec<_>, Vec<_>) =
                    self.in_flight.drain(..).partition(|(t, _, _)| *t <= next);
                self.in_flight = later;
                for (_, j, heard) in due {
                    if self.alive[j] {
                        let fx = self.nodes[j].receive(self.now, heard);
                        self.apply(j, fx);
                    }
                }
                for i in 0..self.nodes.len() {
                    if self.alive[i] && self.nodes[i].poll_timeout().is_some_and(|t| t <= next) {
                        let fx = self.nodes[i].handle_timeout(self.now);
                        self.apply(i, fx);
                    }
                }
            }
            self.now = until;
        }

        fn run_for(&mut self, d: Duration) {
            self.run_until(self.now + d);
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| self.alive[i] && self.nodes[i].state() == State::Master)
                .collect()
        }

        /// Dies without a word, as with kill -9 or a cut cable.
        fn crash(&mut self, i: usize) {
            self.alive[i] = false;
            self.in_flight.retain(|(_, j, _)| *j != i);
        }

        fn shutdown(&mut self, i: usize) {
            let fx = self.nodes[i].shutdown(self.now);
            self.apply(i, fx);
            self.alive[i] = false;
        }

        /// When director `i` last became master.
        fn became_master(&self, i: usize) -> Option<Time> {
            self.log
                .iter()
                .rev()
                .find(|(_, n, e)| *n == i && matches!(e, Effect::Became { to: State::Master, .. }))
                .map(|(t, _, _)| *t)
        }
    }

    #[test]
    fn timers_are_those_of_rfc_5798() {
        let v = Vrrp::new(settings(0, 200, true), Time::from_secs(0));
        // Skew_Time = (256 - 200) * 100 cs / 256 = 21.875 cs.
        assert_eq!(v.skew(), Duration::from_micros(218_750));
        assert_eq!(v.master_down_interval(), Duration::from_micros(3_218_750));
    }

    #[test]
    fn the_highest_priority_is_elected_and_the_others_stay_backup() {
        let mut link =
            Link::new(vec![settings(0, 100, true), settings(1, 200, true), settings(2, 150, true)]);
        link.start_all();
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [1]);
        assert_eq!(link.nodes[0].state(), State::Backup);
        assert_eq!(link.nodes[2].state(), State::Backup);
        assert_eq!(link.nodes[0].master(), Some(addr(1)));
        // Elected after its own Master_Down_Interval, the shortest of the three.
        let started = Time::from_secs(100);
        assert_eq!(link.became_master(1), Some(started + link.nodes[1].master_down_interval()));
    }

    #[test]
    fn a_dead_master_is_replaced_by_the_highest_backup_within_master_down_interval() {
        let mut link =
            Link::new(vec![settings(0, 200, true), settings(1, 150, true), settings(2, 100, true)]);
        link.start_all();
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [0]);
        // The master's last advert went out at some t; it dies right after.
        let last = link
            .log
            .iter()
            .rev()
            .find(|(_, n, e)| *n == 0 && matches!(e, Effect::Send(_)))
            .unwrap()
            .0;
        link.crash(0);
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [1], "the highest backup takes over");
        assert_eq!(link.nodes[2].state(), State::Backup, "the third stays backup");
        let took = link.became_master(1).unwrap();
        // Master_Down_Interval after the last advert it heard (1 ms on the link).
        assert_eq!(took, last + LATENCY + link.nodes[1].master_down_interval());
        assert!(link.became_master(2).is_none());
    }

    #[test]
    fn a_graceful_stop_hands_over_after_skew_time() {
        let mut link = Link::new(vec![settings(0, 200, true), settings(1, 100, true)]);
        link.start_all();
        link.run_for(Duration::from_millis(5500));
        assert_eq!(link.masters(), [0]);
        let stop = link.now;
        link.shutdown(0);
        assert!(link.log.iter().any(|(t, n, e)| *t == stop
            && *n == 0
            && *e == Effect::Send(Advert { priority: 0, interval_cs: 100 })));
        link.run_for(Duration::from_secs(5));
        assert_eq!(link.masters(), [1]);
        assert_eq!(link.became_master(1), Some(stop + LATENCY + link.nodes[1].skew()));
    }

    #[test]
    fn a_higher_priority_with_preempt_takes_over_and_without_it_waits() {
        for preempt in [true, false] {
            let mut link = Link::new(vec![settings(0, 100, true), settings(1, 200, preempt)]);
            link.start(0);
            link.run_for(Duration::from_secs(10));
            assert_eq!(link.masters(), [0]);
            link.start(1);
            link.run_for(Duration::from_secs(10));
            if preempt {
                assert_eq!(link.masters(), [1]);
                assert_eq!(link.nodes[0].state(), State::Backup, "the lower master yields");
            } else {
                assert_eq!(link.masters(), [0]);
                assert_eq!(link.nodes[1].master(), Some(addr(0)));
            }
        }
    }

    #[test]
    fn a_director_not_ready_does_not_preempt_but_takes_over_a_dead_master() {
        let mut link = Link::new(vec![settings(0, 100, true), settings(1, 200, true)]);
        link.nodes[1].set_ready(false);
        link.start(0);
        link.run_for(Duration::from_secs(10));
        link.start(1);
        link.run_for(Duration::from_secs(20));
        assert_eq!(link.masters(), [0], "not ready: the lower master keeps serving");
        link.nodes[1].set_ready(true);
        link.run_for(Duration::from_secs(5));
        assert_eq!(link.masters(), [1], "ready: it preempts");
        // Not ready, a backup still takes over from a master that is gone.
        link.nodes[0].set_ready(false);
        link.crash(1);
        link.run_for(Duration::from_secs(5));
        assert_eq!(link.masters(), [0], "the dead master's backup took over");
    }

    #[test]
    fn preempt_delay_holds_a_new_director_back_that_long() {
        let mut s = settings(1, 200, true);
        s.preempt_delay = Duration::from_secs(30);
        let mut link = Link::new(vec![settings(0, 100, true), s]);
        link.start(0);
        link.run_for(Duration::from_secs(10));
        let started = link.now;
        link.start(1);
        link.run_for(Duration::from_secs(29));
        assert_eq!(link.masters(), [0], "still within preempt_delay");
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [1]);
        let took = link.became_master(1).unwrap();
        assert!(took >= started + Duration::from_secs(30), "{took:?}");
        assert!(
            took <= started
                + Duration::from_secs(30)
                + link.nodes[1].master_down_interval()
                + LATENCY
        );
    }

    #[test]
    fn a_partition_makes_two_masters_and_healing_leaves_the_higher() {
        let mut link = Link::new(vec![settings(0, 200, true), settings(1, 100, true)]);
        link.start_all();
        link.run_for(Duration::from_secs(10));
        link.group[1] = 1;
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [0, 1], "each side elects itself");
        // Heal just before the lower master's advert, so it speaks first.
        let mut lower_next = None;
        for _ in 0..4 {
            let a = link.nodes[0].poll_timeout().unwrap();
            let b = link.nodes[1].poll_timeout().unwrap();
            if a > b + 2 * LATENCY {
                lower_next = Some(b);
                break;
            }
            // Let the higher master's advert pass unheard first.
            link.run_until(a.min(b) + LATENCY);
        }
        let lower_next = lower_next.expect("the two masters advertise more than 2 ms apart");
        link.run_until(lower_next - Duration::from_micros(500));
        link.group[1] = 0;
        let healed = link.now;
        link.run_for(Duration::from_secs(3));
        assert_eq!(link.masters(), [0]);
        // The higher master answered the lower one's first advert after the healing at
        // once, and the lower one yielded on hearing it.
        let first = link
            .log
            .iter()
            .find(|(t, n, e)| *t >= healed && *n == 1 && matches!(e, Effect::Send(_)))
            .expect("the lower master advertises")
            .0;
        let answered = link.log.iter().any(|(t, n, e)| {
            *t == first + LATENCY
                && *n == 0
                && *e == Effect::Send(Advert { priority: 200, interval_cs: 100 })
        });
        assert!(
            answered,
            "{:?}",
            link.log.iter().filter(|(t, _, _)| *t >= healed).collect::<Vec<_>>()
        );
        let yielded = link
            .log
            .iter()
            .find(|(t, n, e)| {
                *t >= healed && *n == 1 && matches!(e, Effect::Became { to: State::Backup, .. })
            })
            .expect("the lower master yields")
            .0;
        assert_eq!(yielded, first + 2 * LATENCY);
    }

    #[test]
    fn equal_priorities_go_to_the_higher_primary_address() {
        let mut link = Link::new(vec![settings(0, 150, true), settings(1, 150, true)]);
        link.group[1] = 1;
        link.start_all();
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [0, 1]);
        link.group[1] = 0;
        link.run_for(Duration::from_secs(3));
        assert_eq!(link.masters(), [1], "192.0.2.2 is above 192.0.2.1");
    }

    #[test]
    fn a_backup_adopts_the_masters_interval() {
        let mut slow = settings(0, 200, true);
        slow.interval_cs = 300;
        let mut fast = settings(1, 100, true);
        fast.interval_cs = 50;
        let mut link = Link::new(vec![slow, fast]);
        link.start(0);
        link.run_for(Duration::from_secs(20));
        assert_eq!(link.masters(), [0]);
        // The backup starts just before an advert. On its own 0.5 s it would take over
        // 1.5 s + skew after it; the master advertises every 3 s, so it must adopt 3 s.
        let next = link.nodes[0].poll_timeout().unwrap();
        link.run_until(next - Duration::from_micros(500));
        link.start(1);
        link.run_for(Duration::from_secs(30));
        assert_eq!(link.masters(), [0]);
        assert!(link.became_master(1).is_none(), "{:?}", link.log);
        assert_eq!(
            link.nodes[1].master_down_interval(),
            Duration::from_secs(9) + link.nodes[1].skew()
        );
    }

    #[test]
    fn fault_gives_the_vips_up_and_recovery_rejoins_as_backup() {
        let mut link = Link::new(vec![settings(0, 200, true), settings(1, 100, true)]);
        link.start_all();
        link.run_for(Duration::from_secs(10));
        let fx = link.nodes[0].set_fault(link.now, true);
        assert_eq!(fx[0], Effect::Send(Advert { priority: 0, interval_cs: 100 }));
        assert_eq!(fx[1], Effect::Became { from: State::Master, to: State::Fault });
        link.apply(0, fx);
        link.run_for(Duration::from_secs(2));
        assert_eq!(link.masters(), [1]);
        assert_eq!(link.nodes[0].poll_timeout(), None, "no adverts, no timers in fault");
        let fx = link.nodes[0].set_fault(link.now, false);
        assert_eq!(fx, [Effect::Became { from: State::Fault, to: State::Backup }]);
        link.apply(0, fx);
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [0], "preempts again once back");
    }

    #[test]
    fn a_priority_change_goes_through_the_election() {
        let mut link = Link::new(vec![settings(0, 200, true), settings(1, 100, true)]);
        link.start_all();
        link.run_for(Duration::from_secs(10));
        // Lowered on the master by a reload: it stays master until the backup preempts it.
        let fx = link.nodes[0].set_priority(link.now, 50);
        assert_eq!(fx, [Effect::Send(Advert { priority: 50, interval_cs: 100 })]);
        assert_eq!(link.nodes[0].state(), State::Master, "no drop to backup");
        link.apply(0, fx);
        link.run_for(Duration::from_secs(10));
        assert_eq!(link.masters(), [1]);
        // Unchanged priority: nothing at all.
        assert!(link.nodes[1].set_priority(link.now, 100).is_empty());
    }
}
