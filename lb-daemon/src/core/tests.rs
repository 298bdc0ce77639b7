//! The core on a virtual clock against the fake data plane: no root, no kernel, no
//! sockets. Batches go through the driver's own `apply`, as in lbd.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use lb_common::{NO_REAL, REAL_DOWN, REAL_PRESENT};

use super::*;
use crate::config;
use crate::control::Request;
use crate::drivers::dataplane::apply;
use crate::drivers::fake::FakeDataplane;

const IFINDEX: u32 = 2;

struct Harness {
    core: Core,
    dp: FakeDataplane,
    now: Time,
    /// Checkers running, as the driver would have them.
    checkers: BTreeMap<CheckerId, CheckTarget>,
    started: Vec<CheckerId>,
    stopped: Vec<CheckerId>,
    resolving: Vec<IpAddr>,
    answers: Vec<(Token, Answer)>,
    /// The ops of every batch, applied or not.
    batches: Vec<Vec<Op>>,
    /// Scripts run, with when.
    hooks: Vec<(Time, HookRun)>,
    next_token: Token,
}

fn link() -> LinkInfo {
    LinkInfo { ifindex: IFINDEX, mac: [2, 0, 0, 0, 0, 1], mtu: 1500, has_device: false }
}

impl Harness {
    fn new(capacity: Capacity) -> Self {
        Harness {
            core: Core::new(capacity, vec![link()], Vec::new(), 42),
            dp: FakeDataplane::default(),
            now: Time::from_secs(1000),
            checkers: BTreeMap::new(),
            started: Vec::new(),
            stopped: Vec::new(),
            resolving: Vec::new(),
            answers: Vec::new(),
            batches: Vec::new(),
            hooks: Vec::new(),
            next_token: 0,
        }
    }

    fn feed(&mut self, input: Input) {
        let mut inputs = std::collections::VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for effect in self.core.handle(self.now, input) {
                match effect {
                    Effect::Apply(batch) => {
                        let result = apply(&mut self.dp, &batch);
                        self.batches.push(batch.ops.clone());
                        inputs.push_back(Input::Applied { batch: batch.id, result });
                    }
                    Effect::StartCheck { id, target } => {
                        self.started.push(id);
                        self.checkers.insert(id, target);
                    }
                    Effect::StopCheck(id) => {
                        self.stopped.push(id);
                        self.checkers.remove(&id);
                    }
                    Effect::Resolve(targets) => self.resolving = targets,
                    Effect::Hook(run) => self.hooks.push((self.now, run)),
                    Effect::Answer(token, answer) => self.answers.push((token, answer)),
                }
            }
        }
    }

    /// Applies a config; returns the answer's message, Err for a refusal.
    fn config(&mut self, yaml: &str) -> Result<String, String> {
        let config = config::parse(Path::new("lb.yaml"), yaml).expect("a valid config");
        let token = self.token();
        self.feed(Input::Config {
            config: Box::new(config),
            source: "lb.yaml".into(),
            reply: Some(token),
        });
        self.done(token)
    }

    fn control(&mut self, request: Request) -> Answer {
        let token = self.token();
        self.feed(Input::Control(token, request));
        self.take(token)
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    fn take(&mut self, token: Token) -> Answer {
        let at = self.answers.iter().position(|(t, _)| *t == token).expect("an answer");
        self.answers.remove(at).1
    }

    fn done(&mut self, token: Token) -> Result<String, String> {
        match self.take(token) {
            Answer::Done(Response::Ok { message }) => Ok(message),
            Answer::Done(Response::Error { message }) => Err(message),
            other => panic!("{other:?}"),
        }
    }

    /// The kernel knows every address the core asked for, on the attached link.
    fn resolve_all(&mut self) {
        for ip in self.resolving.clone() {
            self.feed(Input::Resolved(hop(ip)));
        }
    }

    /// One result from every running checker of `real`.
    fn observe(&mut self, real: &str, success: bool) {
        let ip: IpAddr = real.parse().unwrap();
        let ids: Vec<CheckerId> =
            self.checkers.iter().filter(|(_, t)| t.addr.ip() == ip).map(|(id, _)| *id).collect();
        assert!(!ids.is_empty(), "no checker of {real}");
        for checker in ids {
            let detail = if success { "ok" } else { "refused" }.to_string();
            self.feed(Input::Observation(Observation {
                checker,
                success,
                detail,
                weight: None,
                late: Duration::ZERO,
            }));
        }
    }

    /// Both families' virtual routers master (`on`), or neither.
    fn serve(&mut self, on: bool) {
        for ipv4 in [true, false] {
            self.feed(Input::Serving { ipv4, on });
        }
    }

    fn observe_all(&mut self, success: bool) {
        let ips: std::collections::BTreeSet<IpAddr> =
            self.checkers.values().map(|t| t.addr.ip()).collect();
        for ip in ips {
            self.observe(&ip.to_string(), success);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.feed(Input::Tick);
    }

    fn service(&self, vip: &str) -> &ServiceState {
        let vip: SocketAddr = vip.parse().unwrap();
        self.core.services.iter().find(|s| s.spec.vip == vip).expect("service")
    }

    fn real(&self, vip: &str, real: &str) -> &RealState {
        let s = self.service(vip);
        s.reals.iter().find(|r| r.addr.ip().to_string() == real).expect("real")
    }

    /// The real id of `real` in the service at `vip`.
    fn id(&self, vip: &str, real: &str) -> u32 {
        self.real(vip, real).id
    }

    fn index(&self, vip: &str) -> u32 {
        self.service(vip).index
    }

    fn health(&self, vip: &str, real: &str) -> Health {
        self.real(vip, real).health
    }

    /// Reals with slots in `vip`'s table, as the fake data plane holds it.
    fn serving(&self, vip: &str) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.dp.table(self.index(vip)).into_iter().filter(|&r| r != NO_REAL).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

fn hop(ip: IpAddr) -> Resolved {
    let last = match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    Resolved {
        ip,
        mac: Some([2, 0, 0, 0, 1, last]),
        ifindex: IFINDEX,
        via: None,
        src: Some("10.0.0.1".parse().unwrap()),
        mtu: None,
    }
}

fn capacity() -> Capacity {
    Capacity { vips: 8, reals: 16 }
}

const WEB: &str = "
  - name: web
    vip: 192.0.2.10:80
    protocol: tcp
    check: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
    reals:
      - address: 10.0.0.11
      - address: 10.0.0.12
";

const DNS: &str = "
  - name: dns
    vip: 192.0.2.53:53
    protocol: udp
    check: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
    reals:
      - address: 10.0.0.21
      - address: 10.0.0.22
";

fn yaml(services: &[&str]) -> String {
    format!("director:\n  interfaces: [eth0]\nservices:{}", services.concat())
}

/// A director with `services` applied, every real resolved and up.
fn running(services: &[&str]) -> Harness {
    let mut h = Harness::new(capacity());
    h.config(&yaml(services)).expect("applied");
    h.resolve_all();
    h.observe_all(true);
    h
}

#[test]
fn the_first_config_writes_the_clock_first_then_reals_tables_and_vips_last() {
    let mut h = Harness::new(capacity());
    assert_eq!(h.config(&yaml(&[WEB])), Ok("reloaded lb.yaml".into()));
    let ops: Vec<&Op> = h.batches.iter().flatten().collect();
    assert_eq!(ops[0], &Op::SetClock(1000));
    let kinds: Vec<&str> = ops[1..].iter().map(|op| op_kind(op)).collect();
    assert_eq!(
        kinds,
        ["reset_real", "set_real", "reset_real", "set_real", "reset_vip", "set_maglev", "set_vips"]
    );
    // Unknown health: listed, in the table of nobody yet.
    assert_eq!(h.serving("192.0.2.10:80"), Vec::<u32>::new());
    assert_eq!(h.started.len(), 2);
    assert_eq!(h.resolving, ["10.0.0.11".parse::<IpAddr>().unwrap(), "10.0.0.12".parse().unwrap()]);
    assert_eq!(h.core.poll_timeout(), Some(Time::from_secs(1001)));
}

#[test]
fn a_real_serves_once_resolved_and_up() {
    let mut h = Harness::new(capacity());
    h.config(&yaml(&[WEB])).unwrap();
    h.observe_all(true);
    assert_eq!(h.serving("192.0.2.10:80"), Vec::<u32>::new(), "up but unresolved");
    h.resolve_all();
    let (a, b) = (h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12"));
    assert_eq!(h.serving("192.0.2.10:80"), [a, b]);
    assert_eq!(h.dp.reals[&a].mac, [2, 0, 0, 0, 1, 11]);
    assert_eq!(h.dp.reals[&a].src_mac, link().mac);
    assert_eq!(h.dp.reals[&a].ifindex, IFINDEX);
}

#[test]
fn health_transitions_become_exactly_the_expected_writes() {
    let mut h = running(&[WEB]);
    let index = h.index("192.0.2.10:80");
    let (a, b) = (h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12"));
    // fall 2: one failure changes nothing at all.
    h.batches.clear();
    h.observe("10.0.0.11", false);
    assert!(h.batches.is_empty(), "{:?}", h.batches);
    // The second marks it down in REALS (its UDP flows are scheduled again) and takes it
    // out of the Maglev table, and does nothing else: quiesced, it stays present, so its
    // established TCP flows stay.
    h.observe("10.0.0.11", false);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Down);
    assert_eq!(h.batches.len(), 1);
    assert!(
        matches!(&h.batches[0][..], [Op::SetReal { id, .. }, Op::SetMaglev { index: i, .. }] if *id == a && *i == index),
        "{:?}",
        h.batches
    );
    assert_eq!(h.serving("192.0.2.10:80"), [b]);
    assert_eq!(h.dp.reals[&a].flags, REAL_PRESENT | REAL_DOWN);
    // rise 2: back after two successes, in one write of the table.
    h.batches.clear();
    h.observe("10.0.0.11", true);
    assert!(h.batches.is_empty());
    h.observe("10.0.0.11", true);
    assert!(
        matches!(&h.batches[..], [ops] if matches!(&ops[..], [Op::SetReal { .. }, Op::SetMaglev { .. }]))
    );
    assert_eq!(h.serving("192.0.2.10:80"), [a, b]);
    assert_eq!(h.dp.reals[&a].flags, REAL_PRESENT, "up again: no longer marked down");
    assert_eq!(h.real("192.0.2.10:80", "10.0.0.11").transitions, 2, "down and up, counted");
}

#[test]
fn on_failure_remove_also_takes_the_real_out_of_reals() {
    let web = WEB.replace("protocol: tcp\n", "protocol: tcp\n    on_failure: remove\n");
    let mut h = running(&[&web]);
    let a = h.id("192.0.2.10:80", "10.0.0.11");
    h.batches.clear();
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    let kinds: Vec<&str> = h.batches.iter().flatten().map(op_kind).collect();
    assert_eq!(kinds, ["set_real", "set_maglev"]);
    assert_eq!(h.dp.reals[&a].flags, REAL_DOWN, "its flows are scheduled again");
    let Answer::List(list) = h.control(Request::List) else { panic!() };
    assert_eq!(list[0].view.reals.len(), 1, "a removed real is not listed");
}

#[test]
fn a_reload_keeps_what_stays_and_removes_a_vip_before_its_reals() {
    let mut h = running(&[WEB, DNS]);
    let web_ids = (h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12"));
    let dns_index = h.index("192.0.2.53:53");
    let dns_ids = [h.id("192.0.2.53:53", "10.0.0.21"), h.id("192.0.2.53:53", "10.0.0.22")];
    let web_checkers: Vec<CheckerId> =
        h.checkers.iter().filter(|(_, t)| t.addr.port() == 80).map(|(id, _)| *id).collect();
    let table_before = h.dp.table(h.index("192.0.2.10:80"));
    h.batches.clear();
    h.started.clear();
    let web3 = WEB.replace(
        "      - address: 10.0.0.12\n",
        "      - address: 10.0.0.12\n      - address: 10.0.0.13\n",
    );
    assert!(h.config(&yaml(&[&web3])).is_ok());

    // Kept: ids, health, checkers.
    assert_eq!((h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12")), web_ids);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Up);
    assert!(web_checkers.iter().all(|id| !h.stopped.contains(id)));
    assert_eq!(h.started.len(), 1, "only the new real is checked anew");
    // The new real is not yet up: the old table stands.
    assert_eq!(h.dp.table(h.index("192.0.2.10:80")), table_before);

    // The removed VIP left VIPS first, then its reals were cleared, its flows last.
    let ops: Vec<&Op> = h.batches.iter().flatten().collect();
    let first_vips = ops.iter().position(|op| matches!(op, Op::SetVips { .. })).unwrap();
    let Op::SetVips { vips, .. } = ops[first_vips] else { unreachable!() };
    assert_eq!(vips.len(), 1, "the first VIPS write removes dns and adds nothing");
    // The first freed id goes to the new real in the same batch; the other is cleared.
    // Either way, only once no packet can reach the removed VIP.
    assert_eq!(h.id("192.0.2.10:80", "10.0.0.13"), dns_ids[0]);
    for id in dns_ids {
        let writes: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::SetReal { id: i, .. } if *i == id))
            .map(|(at, _)| at)
            .collect();
        assert!(!writes.is_empty() && writes.iter().all(|&at| at > first_vips), "{ops:?}");
    }
    assert!(ops.iter().any(|op| matches!(op, Op::SetReal { id, info, .. } if *id == dns_ids[1] && *info == RealInfo::default())));
    assert!(!h.dp.reals.contains_key(&dns_ids[1]));
    assert!(matches!(ops.last(), Some(Op::PurgeVip(_))));
    assert!(!h.core.services.iter().any(|s| s.index == dns_index));
    assert_eq!(h.dp.vips.len(), 1);
}

#[test]
fn freed_ids_are_reused_lowest_first_with_their_counters_zeroed() {
    let mut h = running(&[WEB, DNS]);
    let dns_ids = [h.id("192.0.2.53:53", "10.0.0.21"), h.id("192.0.2.53:53", "10.0.0.22")];
    let dns_index = h.index("192.0.2.53:53");
    for id in dns_ids {
        h.dp.real_counters.insert(id, lb_common::Counters { conns: 9, ..Default::default() });
    }
    h.config(&yaml(&[WEB])).unwrap();
    let ldap =
        DNS.replace("dns", "ldap").replace("192.0.2.53:53", "192.0.2.89:389").replace("udp", "tcp");
    h.batches.clear();
    h.config(&yaml(&[WEB, &ldap])).unwrap();
    assert_eq!(h.index("192.0.2.89:389"), dns_index);
    assert_eq!([h.id("192.0.2.89:389", "10.0.0.21"), h.id("192.0.2.89:389", "10.0.0.22")], dns_ids);
    let ops: Vec<&Op> = h.batches.iter().flatten().collect();
    for id in dns_ids {
        assert!(ops.contains(&&Op::ResetRealCounters(id)));
        assert!(!h.dp.real_counters.contains_key(&id));
    }
    assert!(ops.contains(&&Op::ResetVipCounters(dns_index)));
}

#[test]
fn a_weight_set_by_lbadm_holds_until_the_next_reload() {
    let mut h = running(&[WEB]);
    let b = h.id("192.0.2.10:80", "10.0.0.12");
    let answer = h.control(Request::SetWeight {
        protocol: Protocol::Tcp,
        vip: "192.0.2.10:80".parse().unwrap(),
        real: "10.0.0.11:80".parse().unwrap(),
        weight: 0,
    });
    assert!(matches!(answer, Answer::Done(Response::Ok { .. })), "{answer:?}");
    assert_eq!(h.serving("192.0.2.10:80"), [b], "weight 0: no new connections");
    // A health report does not undo it.
    h.observe("10.0.0.11", true);
    assert_eq!(h.serving("192.0.2.10:80"), [b]);
    let Answer::List(list) = h.control(Request::List) else { panic!() };
    assert_eq!(list[0].view.reals[0].configured_weight, 0);
    // The reload restores the config's weight.
    h.config(&yaml(&[WEB])).unwrap();
    assert_eq!(h.serving("192.0.2.10:80").len(), 2);
}

#[test]
fn an_unknown_service_or_real_is_refused_by_name() {
    let mut h = running(&[WEB]);
    let before = h.dp.state();
    let answer = h.control(Request::SetWeight {
        protocol: Protocol::Udp,
        vip: "192.0.2.10:80".parse().unwrap(),
        real: "10.0.0.11:80".parse().unwrap(),
        weight: 5,
    });
    assert!(
        matches!(answer, Answer::Done(Response::Error { message }) if message == "no service UDP 192.0.2.10:80")
    );
    assert_eq!(h.dp.state(), before);
}

#[test]
fn a_plan_the_data_plane_refuses_halfway_changes_nothing() {
    let mut h = running(&[WEB]);
    let before = h.dp.state();
    let services_before = format!("{:?}", h.control(Request::Status));
    h.started.clear();
    // The third write of the reload fails: the two before it are undone.
    h.dp.fail_after = Some(2);
    let err = h.config(&yaml(&[WEB, DNS])).unwrap_err();
    assert!(
        err.contains("refused, nothing changed") && err.contains("refused by the fake"),
        "{err}"
    );
    h.dp.fail_after = None;
    assert_eq!(h.dp.state(), before);
    assert_eq!(format!("{:?}", h.control(Request::Status)), services_before);
    assert!(h.started.is_empty(), "no checker of the refused plan runs");
    assert_eq!(h.core.services.len(), 1);
    // The same reload, now taken, uses the ids the refused one would have.
    assert!(h.config(&yaml(&[WEB, DNS])).is_ok());
    assert_eq!(h.index("192.0.2.53:53"), 1);
    assert_eq!(h.started.len(), 2);
}

const LDAP: &str = "
  - name: ldap
    vip: 192.0.2.89:389
    protocol: tcp
    check: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
    reals:
      - address: 10.0.0.31
      - address: 10.0.0.32
";

/// What a packet sees of the fake data plane: its state without the counters.
fn packet_view(dp: &FakeDataplane) -> FakeDataplane {
    FakeDataplane {
        real_counters: Default::default(),
        vip_counters: Default::default(),
        ..dp.state()
    }
}

/// What differs between two states of the fake data plane, readably (a Maglev table is
/// 65537 slots).
fn differences(a: &FakeDataplane, b: &FakeDataplane) -> Vec<String> {
    let mut out = Vec::new();
    if (a.clock, a.nat) != (b.clock, b.nat) {
        out.push(format!("clock, nat: {:?} / {:?}", (a.clock, a.nat), (b.clock, b.nat)));
    }
    let ids: std::collections::BTreeSet<&u32> = a.reals.keys().chain(b.reals.keys()).collect();
    for id in ids {
        if a.reals.get(id) != b.reals.get(id) {
            out.push(format!("REALS[{id}]: {:?} / {:?}", a.reals.get(id), b.reals.get(id)));
        }
    }
    let indexes: std::collections::BTreeSet<&u32> =
        a.maglev.keys().chain(b.maglev.keys()).collect();
    for index in indexes {
        if a.table(*index) != b.table(*index) {
            out.push(format!("MAGLEV[{index}] differs"));
        }
    }
    if a.vips != b.vips {
        out.push(format!("VIPS: {:?} / {:?}", a.vips, b.vips));
    }
    if a.real_counters != b.real_counters || a.vip_counters != b.vip_counters {
        out.push(format!(
            "counters: {:?} {:?} / {:?} {:?}",
            a.real_counters, a.vip_counters, b.real_counters, b.vip_counters
        ));
    }
    if a.flows != b.flows {
        out.push("flows differ".into());
    }
    out
}

#[test]
fn a_large_reload_refused_at_any_write_changes_nothing() {
    // From web, dns and ldap to: web with a real replaced and another added, ldap as it
    // was, dns gone, and three new services, one of them NAT (the NAT switch flips too).
    let before = [WEB, DNS, LDAP];
    let web = WEB.replace("10.0.0.12", "10.0.0.13\n      - address: 10.0.0.14");
    let nat = WEB
        .replace("name: web", "name: nat")
        .replace("192.0.2.10:80", "192.0.2.20:80")
        .replace("protocol: tcp\n", "protocol: tcp\n    forwarding: nat\n")
        .replace("10.0.0.11", "10.0.0.41:8080")
        .replace("10.0.0.12", "10.0.0.42:8080");
    let api = WEB.replace("name: web", "name: api").replace("192.0.2.10:80", "192.0.2.30:443");
    let dns6 = DNS.replace("name: dns", "name: dns2").replace("192.0.2.53:53", "192.0.2.54:53");
    let after = yaml(&[&web, LDAP, &nat, &api, &dns6]);

    // The reload taken whole: how many writes it makes that can fail, and what it leaves.
    let mut whole = running(&before);
    let logged = whole.dp.log.len();
    whole.config(&after).expect("applied");
    let writes = whole.dp.log[logged..].iter().filter(|w| *w != "purge_vip").count();
    assert!(writes >= 25, "{:?}", &whole.dp.log[logged..]);
    // Ids that pass from a removed service to a new one in the reload.
    let owners =
        |h: &Harness| -> (BTreeMap<u32, (SocketAddr, SocketAddr)>, BTreeMap<u32, SocketAddr>) {
            let reals = h
                .core
                .services
                .iter()
                .flat_map(|s| s.reals.iter().map(move |r| (r.id, (s.spec.vip, r.addr))))
                .collect();
            let vips = h.core.services.iter().map(|s| (s.index, s.spec.vip)).collect();
            (reals, vips)
        };
    let (reals_before, vips_before) = owners(&running(&before));
    let (reals_after, vips_after) = owners(&whole);
    let handed_reals: Vec<u32> = reals_before
        .iter()
        .filter(|(id, owner)| reals_after.get(id).is_some_and(|o| o != *owner))
        .map(|(id, _)| *id)
        .collect();
    let handed_vips: Vec<u32> = vips_before
        .iter()
        .filter(|(index, vip)| vips_after.get(index).is_some_and(|v| v != *vip))
        .map(|(index, _)| *index)
        .collect();
    assert!(!handed_reals.is_empty() && !handed_vips.is_empty(), "the reload hands ids over");

    for k in 0..writes {
        let mut h = running(&before);
        // Every live real and VIP has counted something.
        let counted = lb_common::Counters { conns: 7, packets: 70, ..Default::default() };
        for id in h.dp.reals.keys().copied().collect::<Vec<_>>() {
            h.dp.real_counters.insert(id, counted);
        }
        for s in &h.core.services {
            h.dp.vip_counters.insert(s.index, counted);
        }
        // Counters included: an id the reload hands from a removed service to a new one
        // has its counters zeroed, and written back when the batch is undone.
        let state = h.dp.state();
        let status = format!("{:?}", h.control(Request::Status));
        let listing = format!("{:?}", h.control(Request::List));
        let checkers = h.checkers.clone();
        h.batches.clear();
        h.started.clear();
        h.stopped.clear();
        h.dp.fail_after = Some(k);
        let err = h.config(&after).unwrap_err();
        assert!(err.starts_with("refused, nothing changed: "), "write {k}: {err}");
        assert!(err.contains("refused by the fake data plane"), "write {k}: {err}");
        let now = h.dp.state();
        assert_eq!(differences(&now, &state), Vec::<String>::new(), "write {k} refused: {err}");
        assert_eq!(format!("{:?}", h.control(Request::Status)), status, "write {k}");
        assert_eq!(format!("{:?}", h.control(Request::List)), listing, "write {k}");
        assert_eq!(h.checkers, checkers, "write {k}");
        assert!(h.started.is_empty() && h.stopped.is_empty(), "write {k}");
        // Then the same reload is taken, and leaves what it leaves when taken at once.
        assert!(h.config(&after).is_ok(), "write {k}");
        assert_eq!(
            differences(&packet_view(&h.dp), &packet_view(&whole.dp)),
            Vec::<String>::new(),
            "after write {k} was refused"
        );
        assert_eq!(
            format!("{:?}", h.control(Request::List)),
            format!("{:?}", whole.control(Request::List)),
            "write {k}"
        );
    }
}

#[test]
fn a_config_beyond_capacity_is_refused_before_anything_is_written() {
    let mut h = Harness::new(Capacity { vips: 8, reals: 3 });
    h.config(&yaml(&[WEB])).unwrap();
    let before = h.dp.state();
    h.batches.clear();
    let err = h.config(&yaml(&[WEB, DNS])).unwrap_err();
    assert_eq!(
        err,
        "reload refused, nothing changed: no free real slot: the data plane holds 3 reals"
    );
    assert!(h.batches.is_empty());
    assert_eq!(h.dp.state(), before);
    let mut h = Harness::new(Capacity { vips: 1, reals: 16 });
    h.config(&yaml(&[WEB])).unwrap();
    let err = h.config(&yaml(&[WEB, DNS])).unwrap_err();
    assert!(err.ends_with("no free VIP slot: the data plane holds 1 VIPs"), "{err}");
    assert_eq!(h.core.services.len(), 1);
}

/// `services` applied as given, without `lbd --check`'s validation (as if the core's
/// own layout and validation's could disagree).
fn unchecked(h: &mut Harness, services: Vec<config::Service>) -> Result<String, String> {
    let mut config = config::parse(Path::new("lb.yaml"), &yaml(&[WEB])).unwrap();
    config.services = services;
    let token = h.token();
    h.feed(Input::Config {
        config: Box::new(config),
        source: "lb.yaml".into(),
        reply: Some(token),
    });
    h.done(token)
}

#[test]
fn a_reload_whose_vips_do_not_fit_vips_changes_nothing() {
    let mut h = Harness::new(Capacity { vips: 16, reals: 32 });
    h.config(&yaml(&[WEB])).unwrap();
    h.resolve_all();
    h.observe_all(true);
    let before = h.dp.state();
    let status = format!("{:?}", h.control(Request::Status));
    let web = config::parse(Path::new("lb.yaml"), &yaml(&[WEB])).unwrap().services[0].clone();
    // Nine VIPs with one home: VIPS is probed at most 8 slots from it.
    let ports = crate::config::tests::colliding_ports(lb_common::VIP_PROBES as usize + 1);
    let mut services = vec![web.clone()];
    for (i, port) in ports.iter().enumerate() {
        let vip = SocketAddr::new(web.vip.ip(), *port);
        services.push(config::Service { name: format!("s{i}"), vip, ..web.clone() });
    }
    h.batches.clear();
    h.started.clear();
    let err = unchecked(&mut h, services).unwrap_err();
    assert!(
        err.starts_with(
            "reload refused, nothing changed: the VIPs do not fit the data plane's VIPS table: TCP 192.0.2.10:"
        ) && err.ends_with(
            " finds no free slot within 8 of its home in VIPS: too many VIPs hash alike there; give that service another address or port (lbd --check names it)"
        ),
        "{err}"
    );
    assert!(h.batches.is_empty(), "{:?}", h.batches);
    assert!(h.started.is_empty() && h.stopped.is_empty());
    assert_eq!(h.dp.state(), before);
    assert_eq!(format!("{:?}", h.control(Request::Status)), status);
    assert_eq!(h.core.services.len(), 1);
    // Eight of them fit.
    let mut services = vec![web.clone()];
    for (i, port) in ports.iter().take(8).enumerate() {
        let vip = SocketAddr::new(web.vip.ip(), *port);
        services.push(config::Service { name: format!("s{i}"), vip, ..web.clone() });
    }
    assert!(unchecked(&mut h, services).is_ok());
    assert_eq!(h.dp.vips.len(), 9);
}

#[test]
fn a_config_of_tens_of_thousands_of_reals_is_planned_in_linear_time() {
    // Ids were found by scanning from 0 for every new real: 20,000 reals took 2 * 10^8
    // probes (65,534, the most max_reals allows, ten times that), blocking the driver.
    let mut h = Harness::new(Capacity { vips: 8, reals: lb_common::REALS_LIMIT });
    let web = config::parse(Path::new("lb.yaml"), &yaml(&[WEB])).unwrap().services[0].clone();
    let real = |i: u32| config::Real {
        address: config::RealAddress {
            ip: IpAddr::from([10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            port: None,
        },
        weight: 1,
    };
    let services: Vec<config::Service> = (0..2)
        .map(|s| config::Service {
            name: format!("s{s}"),
            vip: SocketAddr::new(web.vip.ip(), 80 + s as u16),
            check: None,
            reals: (0..20_000).map(|i| real(s * 20_000 + i)).collect(),
            ..web.clone()
        })
        .collect();
    let started = std::time::Instant::now();
    assert!(unchecked(&mut h, services).is_ok());
    let took = started.elapsed();
    assert_eq!(h.core.services[1].reals[19_999].id, 39_999);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_new_real_at_an_address_already_resolved_starts_resolved() {
    // The neighbour task reports changes only: a real added later at an address it already
    // resolved for another service must not wait for a change that never comes.
    let mut h = running(&[WEB]);
    let other =
        WEB.replace("name: web", "name: web8080").replace("192.0.2.10:80", "192.0.2.10:8080");
    h.config(&yaml(&[WEB, &other])).unwrap();
    let id = h.id("192.0.2.10:8080", "10.0.0.11");
    assert_eq!(h.dp.reals[&id].mac, [2, 0, 0, 0, 1, 11]);
    h.observe("10.0.0.11", true);
    h.observe("10.0.0.12", true);
    assert_eq!(h.serving("192.0.2.10:8080").len(), 2);
}

#[test]
fn a_stopped_checkers_late_report_is_ignored() {
    let mut h = running(&[WEB]);
    let old: Vec<CheckerId> = h.checkers.keys().copied().collect();
    // Other checks: every real is checked anew, by new checkers.
    h.config(&yaml(&[&WEB.replace("fall: 2", "fall: 1")])).unwrap();
    assert_eq!(h.stopped, old);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Unknown);
    h.batches.clear();
    h.feed(Input::Observation(Observation {
        checker: old[0],
        success: false,
        detail: "late".into(),
        weight: None,
        late: Duration::ZERO,
    }));
    assert!(h.batches.is_empty());
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Unknown);
}

#[test]
fn the_clock_ticks_each_second_and_a_failed_sync_is_retried() {
    let mut h = running(&[WEB]);
    h.batches.clear();
    h.advance(Duration::from_millis(400));
    assert!(h.batches.is_empty(), "not due yet");
    h.advance(Duration::from_millis(600));
    assert_eq!(h.batches, [vec![Op::SetClock(1001)]]);
    assert_eq!(h.dp.clock, 1001);
    // A health change the data plane refuses stays wanted, and is written at the next tick.
    h.dp.fail_after = Some(0);
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    assert_eq!(h.serving("192.0.2.10:80").len(), 2, "refused");
    h.dp.fail_after = None;
    h.advance(Duration::from_secs(1));
    assert_eq!(h.serving("192.0.2.10:80").len(), 1, "written at the tick");
}

#[test]
fn status_says_since_when_on_the_virtual_clock() {
    let mut h = running(&[WEB]);
    h.advance(Duration::from_secs(5));
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    h.advance(Duration::from_secs(7));
    let Answer::Status(status) = h.control(Request::Status) else { panic!() };
    let r = status.reals.iter().find(|r| r.address.ip().to_string() == "10.0.0.11").unwrap();
    assert_eq!((r.health, r.since_secs, r.weight), (Health::Down, 7, 0));
    assert_eq!(r.last_check, Some((false, "refused".into())));
    assert_eq!(r.mac.as_deref(), Some("02:00:00:00:01:0b"));
}

#[test]
fn connections_are_counted_with_ipvs_timeouts() {
    use lb_common::{FLOW_CLOSING, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP};
    let flow = |proto, flags, last_seen_s| {
        (
            FlowKey { proto, ..Default::default() },
            FlowValue { real: 1, flags, last_seen_s, _pad: 0 },
        )
    };
    let flows = [
        flow(PROTO_TCP, 0, 1000),            // active
        flow(PROTO_TCP, 0, 100),             // idle past 900 s: not counted
        flow(PROTO_TCP, FLOW_CLOSING, 1000), // closing: inactive
        flow(PROTO_UDP, 0, 900),             // udp within 300 s: inactive
        flow(PROTO_UDP, 0, 600),             // udp past 300 s: not counted
    ];
    assert_eq!(connection_counts(&flows, 1001)[&1], (1, 2));
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::SetClock(_) => "set_clock",
        Op::SetNat { .. } => "set_nat",
        Op::SetReal { .. } => "set_real",
        Op::SetMaglev { .. } => "set_maglev",
        Op::SetVips { .. } => "set_vips",
        Op::ResetRealCounters(_) => "reset_real",
        Op::ResetVipCounters(_) => "reset_vip",
        Op::PurgeVip(_) => "purge",
    }
}

#[test]
fn a_director_that_is_not_master_keeps_its_vips_out_of_the_data_plane() {
    let mut h = Harness::new(capacity());
    h.serve(false);
    h.config(&yaml(&[WEB, DNS])).unwrap();
    h.resolve_all();
    h.observe_all(true);
    // Reals and tables are written, so a takeover flips VIPS alone; no VIP is live.
    assert!(h.dp.vips.is_empty());
    assert_eq!(h.dp.reals.len(), 4);
    assert_eq!(h.serving("192.0.2.10:80").len(), 2);
    h.batches.clear();
    h.serve(true);
    assert_eq!(h.dp.vips.len(), 2);
    let ops: Vec<&Op> = h.batches.iter().flatten().collect();
    assert!(matches!(&ops[..], [Op::SetVips { .. }]), "{ops:?}");
    // Master no more: the VIPs leave, their flows with them; reals and tables stay.
    h.batches.clear();
    h.serve(false);
    assert!(h.dp.vips.is_empty());
    assert_eq!(h.dp.reals.len(), 4);
    let kinds: Vec<&str> = h.batches.iter().flatten().map(op_kind).collect();
    assert_eq!(kinds, ["set_vips", "purge", "purge"]);
    // A reload meanwhile keeps them out, and health goes on being written.
    h.config(&yaml(&[WEB])).unwrap();
    assert!(h.dp.vips.is_empty());
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    assert_eq!(h.serving("192.0.2.10:80").len(), 1);
}

/// What a pinned data plane holds, read back as lbd reads it at start.
fn adopted(dp: &FakeDataplane) -> Adopted {
    Adopted { vips: dp.vips.clone(), reals: dp.reals.clone(), maglev: dp.maglev.clone() }
}

#[test]
fn a_restarted_core_adopts_a_pinned_data_plane_and_writes_nothing_that_holds() {
    // The first lbd: DNS's second real down (out of its table), everything else up.
    let mut first = running(&[WEB, DNS]);
    first.observe("10.0.0.22", false);
    first.observe("10.0.0.22", false);
    let pinned = first.dp.state();
    // The second lbd starts on the maps the first left, with the services listed the other
    // way round and a real added: ids follow the data plane, not the config's order.
    let mut second = Harness::new(capacity());
    second.dp = pinned.clone();
    second.core.adopt(adopted(&pinned));
    let web = WEB.replace(
        "      - address: 10.0.0.12\n",
        "      - address: 10.0.0.12\n      - address: 10.0.0.13\n",
    );
    second.config(&yaml(&[DNS, &web])).expect("applied");
    for (vip, real) in [
        ("192.0.2.10:80", "10.0.0.11"),
        ("192.0.2.10:80", "10.0.0.12"),
        ("192.0.2.53:53", "10.0.0.21"),
        ("192.0.2.53:53", "10.0.0.22"),
    ] {
        assert_eq!(second.id(vip, real), first.id(vip, real), "{vip} {real}");
        assert_eq!(second.index(vip), first.index(vip));
    }
    // Only the new real is written (and its counters zeroed): no table, VIP or counter of
    // what stays is touched, so flows keep their reals and counters their values.
    let new = second.id("192.0.2.10:80", "10.0.0.13");
    assert!(!first.dp.reals.contains_key(&new));
    let written: Vec<String> =
        second.dp.log.iter().filter(|w| !w.starts_with("set_clock")).cloned().collect();
    assert_eq!(written, [format!("reset_real_counters {new}"), format!("set_real {new}")]);
    // What the data plane sent to starts up; what it did not waits for its first check.
    assert_eq!(second.health("192.0.2.10:80", "10.0.0.11"), Health::Up);
    assert_eq!(second.health("192.0.2.53:53", "10.0.0.21"), Health::Up);
    assert_eq!(second.health("192.0.2.53:53", "10.0.0.22"), Health::Down, "marked down");
    assert_eq!(second.health("192.0.2.10:80", "10.0.0.13"), Health::Unknown);
    // Adopted up means up until `fall` failures, as if lbd had never stopped.
    second.observe("10.0.0.11", false);
    assert_eq!(second.health("192.0.2.10:80", "10.0.0.11"), Health::Up);
    second.observe("10.0.0.11", false);
    assert_eq!(second.health("192.0.2.10:80", "10.0.0.11"), Health::Down);
}

#[test]
fn adoption_serves_only_the_first_config() {
    let first = running(&[WEB]);
    let mut second = Harness::new(capacity());
    second.dp = first.dp.state();
    second.core.adopt(adopted(&first.dp));
    second.config(&yaml(&[DNS])).expect("applied");
    // WEB went with the reload that dropped it; DNS took the lowest free ids, and a
    // later reload bringing WEB back gets new ones, not the adopted ones.
    assert_eq!(second.dp.vips.len(), 1);
    second.config(&yaml(&[DNS, WEB])).expect("applied");
    assert_eq!(second.health("192.0.2.10:80", "10.0.0.11"), Health::Unknown);
}

#[test]
fn ready_to_preempt_once_every_check_stands_on_a_full_count() {
    let mut h = Harness::new(capacity());
    h.config(&yaml(&[WEB])).unwrap();
    assert!(!h.core.ready(), "nothing checked yet");
    h.resolve_all();
    h.observe_all(true);
    assert!(!h.core.ready(), "up on first results (rise 2)");
    h.observe_all(true);
    assert!(h.core.ready());
    // One failure: a view in motion, not ready.
    h.observe("10.0.0.11", false);
    assert!(!h.core.ready());
    // Down on a full count (fall 2), the other real serving: settled again.
    h.observe("10.0.0.11", false);
    assert!(h.core.ready());
    // Every real down: no service to offer, not ready.
    h.observe("10.0.0.12", false);
    h.observe("10.0.0.12", false);
    assert!(!h.core.ready());
}

#[test]
fn an_adopted_id_is_not_handed_to_another_real_by_the_first_config() {
    let first = running(&[WEB]);
    let gone = first.id("192.0.2.10:80", "10.0.0.12");
    let mut second = Harness::new(capacity());
    second.dp = first.dp.state();
    second.core.adopt(adopted(&first.dp));
    // 10.0.0.12 left the config while lbd was down, 10.0.0.13 came: the flows that name
    // 10.0.0.12's id must not find it given to 10.0.0.13 in the same batch.
    second.config(&yaml(&[&WEB.replace("10.0.0.12", "10.0.0.13")])).expect("applied");
    assert_ne!(second.id("192.0.2.10:80", "10.0.0.13"), gone);
    assert_eq!(second.dp.reals.get(&gone).copied().unwrap_or_default(), RealInfo::default());
}

#[test]
fn initial_up_serves_before_any_result_and_initial_down_waits_for_rise() {
    let up = WEB.replace("rise: 2, fall: 2 }", "rise: 2, fall: 2, initial: up }");
    let mut h = Harness::new(capacity());
    h.config(&yaml(&[&up])).unwrap();
    h.resolve_all();
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Up, "before any result");
    assert_eq!(h.serving("192.0.2.10:80").len(), 2);
    h.observe("10.0.0.11", false);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Up, "one failure of fall 2");
    let down = WEB.replace("rise: 2, fall: 2 }", "rise: 2, fall: 2, initial: down }");
    let mut h = Harness::new(capacity());
    h.config(&yaml(&[&down])).unwrap();
    h.resolve_all();
    h.observe_all(true);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Down, "one success of rise 2");
    h.observe_all(true);
    assert_eq!(h.health("192.0.2.10:80", "10.0.0.11"), Health::Up);
}

#[test]
fn a_weight_an_exec_check_reports_rebuilds_the_table_and_a_failure_keeps_it() {
    let mut h = running(&[WEB]);
    let (a, b) = (h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12"));
    let checker = h.real("192.0.2.10:80", "10.0.0.11").checks[0].checker;
    let report = |h: &mut Harness, success, weight| {
        let detail = "exit 0".to_string();
        h.feed(Input::Observation(Observation {
            checker,
            success,
            detail,
            weight,
            late: Duration::ZERO,
        }));
    };
    h.batches.clear();
    report(&mut h, true, Some(3));
    assert!(
        matches!(&h.batches[..], [ops] if matches!(&ops[..], [Op::SetMaglev { .. }])),
        "{:?}",
        h.batches
    );
    let table = h.dp.table(h.index("192.0.2.10:80"));
    let share = |id| table.iter().filter(|&&r| r == id).count() as f64 / table.len() as f64;
    assert!((share(a) - 0.75).abs() < 0.01 && (share(b) - 0.25).abs() < 0.01, "3:1");
    // The same weight again writes nothing; a failure reports none and keeps it.
    h.batches.clear();
    report(&mut h, true, Some(3));
    report(&mut h, false, None);
    assert!(h.batches.is_empty(), "{:?}", h.batches);
    let Answer::Status(s) = h.control(Request::Status) else { panic!() };
    assert_eq!(
        s.reals.iter().find(|r| r.address.ip().to_string() == "10.0.0.11").unwrap().weight,
        3
    );
}

#[test]
fn notify_runs_on_each_transition_and_recover_escalates_while_a_real_stays_down() {
    let web = WEB.replace(
        "    check:",
        "    notify: /etc/lbd/real.sh\n    recover:\n      - { after: 30s, command: restart-service }\n      - { after: 5m, command: reboot-host }\n    check:",
    );
    let mut h = running(&[&web]);
    assert!(h.hooks.is_empty(), "reals found up at start are no news");
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    let down_at = h.now;
    let env = |real: &str| {
        vec![
            ("LBD_SERVICE".to_string(), "web".to_string()),
            ("LBD_VIP".into(), "192.0.2.10:80".into()),
            ("LBD_REAL".into(), real.to_string()),
        ]
    };
    assert_eq!(
        h.hooks,
        [(
            down_at,
            HookRun {
                what: HookKind::Notify,
                program: "/etc/lbd/real.sh".into(),
                args: vec!["DOWN".into()],
                env: env("10.0.0.11:80")
            }
        )]
    );
    // The first step 30 s into the outage, the second at 5 minutes, each once.
    assert_eq!(h.core.poll_timeout(), Some(down_at + Duration::from_secs(1)), "the clock first");
    for _ in 0..400 {
        h.advance(Duration::from_secs(1));
    }
    let steps: Vec<(Duration, Vec<String>)> = h
        .hooks
        .iter()
        .filter(|(_, r)| r.what == HookKind::Recover)
        .map(|(t, r)| (t.since(down_at), r.args.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (Duration::from_secs(30), vec!["-c".to_string(), "restart-service".into()]),
            (Duration::from_secs(300), vec!["-c".to_string(), "reboot-host".into()]),
        ]
    );
    // Back up: notified, and a new outage starts over from the first step.
    h.hooks.clear();
    h.observe("10.0.0.11", true);
    h.observe("10.0.0.11", true);
    assert_eq!(h.hooks.len(), 1);
    assert_eq!(h.hooks[0].1.args, ["UP"]);
    h.observe("10.0.0.11", false);
    h.observe("10.0.0.11", false);
    let again = h.now;
    for _ in 0..31 {
        h.advance(Duration::from_secs(1));
    }
    let recovered: Vec<Duration> = h
        .hooks
        .iter()
        .filter(|(_, r)| r.what == HookKind::Recover)
        .map(|(t, _)| t.since(again))
        .collect();
    assert_eq!(recovered, [Duration::from_secs(30)]);
    // Up before a step is due: it never runs.
    h.observe("10.0.0.11", true);
    h.observe("10.0.0.11", true);
    h.hooks.clear();
    for _ in 0..400 {
        h.advance(Duration::from_secs(1));
    }
    assert!(h.hooks.is_empty(), "{:?}", h.hooks);
}

#[test]
fn the_fallback_serves_only_while_no_real_can_and_shows_only_then() {
    let web = WEB.replace("    check:", "    fallback: 10.0.0.99\n    check:");
    let mut h = running(&[&web]);
    let listed = |h: &mut Harness| -> Vec<String> {
        let Answer::List(list) = h.control(Request::List) else { panic!() };
        list[0].view.reals.iter().map(|r| r.address.ip().to_string()).collect()
    };
    let (a, b) = (h.id("192.0.2.10:80", "10.0.0.11"), h.id("192.0.2.10:80", "10.0.0.12"));
    let sorry = h.id("192.0.2.10:80", "10.0.0.99");
    assert_eq!(h.serving("192.0.2.10:80"), [a, b]);
    assert_eq!(listed(&mut h), ["10.0.0.11", "10.0.0.12"], "not while the reals serve");
    for real in ["10.0.0.11", "10.0.0.12"] {
        h.observe(real, false);
        h.observe(real, false);
    }
    assert_eq!(h.serving("192.0.2.10:80"), [sorry], "every real down: the fallback");
    assert_eq!(h.dp.reals[&sorry].flags, REAL_PRESENT);
    assert!(listed(&mut h).contains(&"10.0.0.99".to_string()));
    h.observe("10.0.0.12", true);
    h.observe("10.0.0.12", true);
    assert_eq!(h.serving("192.0.2.10:80"), [b], "a real back: the fallback leaves");
    assert!(!listed(&mut h).contains(&"10.0.0.99".to_string()));
}

#[test]
fn status_shows_each_check_with_its_last_result_and_since_when() {
    let two = WEB.replace(
        "    check: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }",
        "    checks:\n      - { type: tcp, interval: 1s, timeout: 500ms }\n      - { type: ping, interval: 1s, timeout: 500ms }",
    );
    let mut h = running(&[&two]);
    let ids: Vec<CheckerId> =
        h.real("192.0.2.10:80", "10.0.0.11").checks.iter().map(|c| c.checker).collect();
    h.advance(Duration::from_secs(5));
    let detail = "no answer".to_string();
    h.feed(Input::Observation(Observation {
        checker: ids[1],
        success: false,
        detail,
        weight: None,
        late: Duration::ZERO,
    }));
    h.advance(Duration::from_secs(2));
    let Answer::Status(s) = h.control(Request::Status) else { panic!() };
    let real = s.reals.iter().find(|r| r.address.ip().to_string() == "10.0.0.11").unwrap();
    let shown: Vec<String> =
        real.checks.iter().map(|c| format!("{} {:?} {:?}", c.kind, c.last, c.since_secs)).collect();
    assert_eq!(
        shown,
        ["tcp Some((true, \"ok\")) Some(7)", "ping Some((false, \"no answer\")) Some(2)",]
    );
    // The real's own last check is the failing one: it says why.
    assert_eq!(real.last_check, Some((false, "no answer".into())));
}

/// A probe that started past a tenth of its interval (1 s here) counts as late in the
/// status: the director is too loaded to check on time. One within it does not.
#[test]
fn probes_started_late_are_counted_in_the_status() {
    let mut h = running(&[WEB]);
    let checker = *h.checkers.keys().next().unwrap();
    for late in [Duration::from_millis(100), Duration::from_millis(101), Duration::from_secs(2)] {
        h.feed(Input::Observation(Observation {
            checker,
            success: true,
            detail: "ok".into(),
            weight: None,
            late,
        }));
    }
    let Answer::Status(s) = h.control(Request::Status) else { panic!() };
    assert_eq!(s.director.checks_late, 2);
}

/// Each family has its own virtual router, and one may be master while the other is not
/// (the IPv6 one starts later, waiting for a link-local address): the IPv6 router's
/// BACKUP must not take the IPv4 VIPs out of the data plane (it did, with one flag for
/// both: the lab's IPv4 VIP refused connections until the IPv6 router became master).
#[test]
fn each_family_is_served_while_its_own_virtual_router_is_master() {
    let web6 =
        WEB.replace("web", "web6").replace("192.0.2.10:80", "\"[2001:db8::10]:80\"").replace(
            "10.0.0.11\n      - address: 10.0.0.12",
            "\"2001:db8::11\"\n      - address: \"2001:db8::12\"",
        );
    let mut h = Harness::new(capacity());
    h.serve(false);
    h.config(&yaml(&[WEB, &web6])).unwrap();
    h.resolve_all();
    h.observe_all(true);
    assert!(h.dp.vips.is_empty());
    let families = |h: &Harness| -> Vec<u8> { h.dp.vips.keys().map(|k| k.family).collect() };
    h.feed(Input::Serving { ipv4: true, on: true });
    assert_eq!(families(&h), [lb_common::FAMILY_V4]);
    h.feed(Input::Serving { ipv4: false, on: false });
    assert_eq!(families(&h), [lb_common::FAMILY_V4], "IPv6 BACKUP leaves IPv4 served");
    h.feed(Input::Serving { ipv4: false, on: true });
    assert_eq!(h.dp.vips.len(), 2);
    h.feed(Input::Serving { ipv4: true, on: false });
    assert_eq!(families(&h), [lb_common::FAMILY_V6]);
    // A family no virtual router moves is served as without ha (lbd says nothing of it).
    let mut h = Harness::new(capacity());
    h.feed(Input::Serving { ipv4: true, on: false });
    h.config(&yaml(&[WEB, &web6])).unwrap();
    h.resolve_all();
    h.observe_all(true);
    assert_eq!(families(&h), [lb_common::FAMILY_V6]);
}
