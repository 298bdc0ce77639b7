//! What the core shows of its state: the listings behind `lbadm -L -n` and `lbadm status`.
//! The data plane's counters are not the core's: the driver reads them and fills them in
//! ([`Listed`] says which VIP index and real ids to read).

use std::collections::HashMap;

use lb_common::{FLOW_CLOSING, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP};

use super::{Core, Time};
use crate::control::{CheckStatus, DirectorView, RealStatus, RealView, ServiceView, StatusView};

/// One service of a listing, with where its counters are in the data plane.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Counters and connection counts still zero.
    pub view: ServiceView,
    /// VIP_STATS index of the service.
    pub index: u32,
    /// REAL_STATS ids of `view.reals`, in order.
    pub real_ids: Vec<u32>,
}

impl Core {
    pub(super) fn listing(&self) -> Vec<Listed> {
        self.services
            .iter()
            .map(|s| {
                // A fallback shows while it serves, as ldirectord adds it to IPVS.
                let listed: Vec<_> = s
                    .reals
                    .iter()
                    .filter(|r| r.present(s.spec.on_failure) && (!r.sorry || self.in_table(s, r)))
                    .collect();
                Listed {
                    view: ServiceView {
                        name: s.spec.name.clone(),
                        protocol: s.spec.protocol,
                        vip: s.spec.vip,
                        scheduler: "maglev".into(),
                        stats: Default::default(),
                        reals: listed
                            .iter()
                            .map(|r| RealView {
                                address: r.addr,
                                forwarding: s.spec.forwarding,
                                weight: r.effective_weight(),
                                configured_weight: r.weight,
                                active_conns: 0,
                                inactive_conns: 0,
                                stats: Default::default(),
                            })
                            .collect(),
                    },
                    index: s.index,
                    real_ids: listed.iter().map(|r| r.id).collect(),
                }
            })
            .collect()
    }

    pub(super) fn status(&self, now: Time) -> StatusView {
        let reals = self
            .services
            .iter()
            .flat_map(|s| {
                let shown = move |r: &&super::RealState| !r.sorry || self.in_table(s, r);
                s.reals.iter().filter(shown).map(move |r| RealStatus {
                    service: s.spec.name.clone(),
                    vip: Some(s.spec.vip),
                    protocol: Some(s.spec.protocol),
                    address: r.addr,
                    health: r.health,
                    weight: r.effective_weight(),
                    mac: r.hop.and_then(|h| h.mac).map(fmt_mac),
                    via: r.hop.and_then(|h| h.via),
                    unreachable: r.unreachable(s.spec.forwarding, &self.links),
                    // The failing check's result first: it says why the real is down.
                    last_check: r
                        .checks
                        .iter()
                        .filter_map(|c| c.last.clone())
                        .find(|(ok, _)| !ok)
                        .or_else(|| r.checks.first().and_then(|c| c.last.clone())),
                    since_secs: now.since(r.since).as_secs(),
                    transitions: r.transitions,
                    checks: r
                        .checks
                        .iter()
                        .map(|c| CheckStatus {
                            kind: c.spec.probe.name().into(),
                            health: c.hysteresis.state(),
                            last: c.last.clone(),
                            since_secs: c.since.map(|t| now.since(t).as_secs()),
                        })
                        .collect(),
                })
            })
            .collect();
        StatusView {
            director: DirectorView {
                ha_state: "STANDALONE".into(),
                priority: None,
                master: None,
                since_secs: None,
                adverts_dropped: Vec::new(),
                transitions: Vec::new(),
                interfaces: self.interfaces.clone(),
                routers: Vec::new(),
                checks_late: self.checks_late,
            },
            reals,
            packets: Vec::new(),
        }
    }
}

/// ActiveConn and InActConn per real id from the connection table, with IPVS's default
/// timeouts: an established TCP flow is active for 900 s after its last packet, a
/// closing one inactive for 120 s, a UDP flow inactive for 300 s. `now_s` is the data
/// plane's clock.
pub fn connection_counts(flows: &[(FlowKey, FlowValue)], now_s: u32) -> HashMap<u32, (u64, u64)> {
    let mut counts: HashMap<u32, (u64, u64)> = HashMap::new();
    for (key, flow) in flows {
        let age = now_s.saturating_sub(flow.last_seen_s);
        let closing = flow.flags & FLOW_CLOSING != 0;
        let entry = counts.entry(flow.real).or_default();
        if key.proto == PROTO_TCP && !closing && age < 900 {
            entry.0 += 1;
        } else if (key.proto == PROTO_TCP && closing && age < 120)
            || (key.proto == PROTO_UDP && age < 300)
        {
            entry.1 += 1;
        }
    }
    counts
}

/// A MAC as `ip neigh` and ipvsadm's users write it.
pub fn fmt_mac(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
