//! The data plane's tables as the core wants them, and the ordered operations that turn
//! one set of tables into another. The core keeps a copy of what the data plane holds
//! ([`Tables`]); every change is a diff against it, so a batch writes only what differs and
//! carries what it overwrites, which lets the driver undo a batch that fails halfway.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_common::{MAGLEV_SIZE, RealInfo, VIP_PROBES, VIP_SLOTS, VipInfo, VipKey, VipSlot, maglev};

/// A real's slot in REALS, with the (VIP, address) it was written for: an id that passes
/// to another real is a new real to the data plane (its counters start at zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealEntry {
    pub owner: (VipKey, SocketAddr),
    pub info: RealInfo,
}

/// A VIP's Maglev table, with the inputs it was built from: equal inputs give an equal
/// table, so the core rebuilds one only when a real's weight or eligibility changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevEntry {
    pub owner: VipKey,
    /// (key, weight, real id) of every real that takes new connections, in config order.
    pub inputs: Vec<(String, u32, u32)>,
    pub table: Arc<Vec<u32>>,
}

impl MaglevEntry {
    pub fn build(owner: VipKey, inputs: Vec<(String, u32, u32)>) -> Self {
        let entries: Vec<maglev::Entry<'_>> = inputs
            .iter()
            .map(|(key, weight, id)| maglev::Entry {
                key: key.as_bytes(),
                weight: *weight,
                id: *id,
            })
            .collect();
        let table = Arc::new(maglev::build(&entries, MAGLEV_SIZE));
        MaglevEntry { owner, inputs, table }
    }

    /// Reals with a slot in the table.
    pub fn serving(&self) -> usize {
        self.inputs.iter().filter(|(_, w, _)| *w > 0).count()
    }
}

/// Everything the core writes to the data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub reals: BTreeMap<u32, RealEntry>,
    /// By VIP index.
    pub maglev: BTreeMap<u32, MaglevEntry>,
    /// Whether the data plane looks for NAT replies (some VIP uses NAT).
    pub nat: bool,
}

/// One write to the data plane. Each carries what it overwrites (`was`), so a batch that
/// fails can be undone in reverse order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetClock(u32),
    SetNat {
        on: bool,
        was: bool,
    },
    SetReal {
        id: u32,
        info: RealInfo,
        was: RealInfo,
    },
    /// `was: None`: the core had written no table there (all slots empty, or a VIP's
    /// removed by an earlier batch).
    SetMaglev {
        index: u32,
        table: Arc<Vec<u32>>,
        was: Option<Arc<Vec<u32>>>,
    },
    /// The whole VIPS table (the data plane writes its idle generation, then flips).
    SetVips {
        vips: BTreeMap<VipKey, VipInfo>,
        was: BTreeMap<VipKey, VipInfo>,
    },
    ResetRealCounters(u32),
    ResetVipCounters(u32),
    /// Delete a removed VIP's flows; cannot be undone, so always a batch's last ops.
    PurgeVip(VipKey),
}

/// A group of operations the driver applies whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    pub ops: Vec<Op>,
}

/// The operations from `old` to `new`, in the order that keeps every packet's view
/// consistent: a removed VIP leaves VIPS before its reals are cleared; a new VIP's reals
/// and table are written before the VIP; NAT replies are looked for before a NAT VIP goes
/// live and after the last one has gone; flows of removed VIPs go last.
pub fn diff(old: &Tables, new: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    let removed: Vec<VipKey> =
        old.vips.keys().filter(|k| !new.vips.contains_key(k)).copied().collect();
    let mut vips = old.vips.clone();
    if !removed.is_empty() {
        for key in &removed {
            vips.remove(key);
        }
        ops.push(Op::SetVips { vips: vips.clone(), was: old.vips.clone() });
    }
    for (id, entry) in &old.reals {
        if !new.reals.contains_key(id) {
            ops.push(Op::SetReal { id: *id, info: RealInfo::default(), was: entry.info });
        }
    }
    for (id, entry) in &new.reals {
        match old.reals.get(id) {
            Some(was) if was == entry => {}
            Some(was) if was.owner == entry.owner => {
                ops.push(Op::SetReal { id: *id, info: entry.info, was: was.info });
            }
            was => {
                ops.push(Op::ResetRealCounters(*id));
                let was = was.map(|w| w.info).unwrap_or_default();
                ops.push(Op::SetReal { id: *id, info: entry.info, was });
            }
        }
    }
    for (index, entry) in &new.maglev {
        let was = old.maglev.get(index);
        if was.is_some_and(|w| w.owner != entry.owner) || was.is_none() {
            ops.push(Op::ResetVipCounters(*index));
        }
        match was {
            Some(w) if w.table == entry.table => {}
            was => ops.push(Op::SetMaglev {
                index: *index,
                table: entry.table.clone(),
                // Another VIP's table too: a batch that fails after it is undone puts that
                // VIP back in VIPS, and it must find its own table there again.
                was: was.map(|w| w.table.clone()),
            }),
        }
    }
    if new.nat && !old.nat {
        ops.push(Op::SetNat { on: true, was: false });
    }
    if new.vips != vips {
        ops.push(Op::SetVips { vips: new.vips.clone(), was: vips });
    }
    if !new.nat && old.nat {
        ops.push(Op::SetNat { on: false, was: true });
    }
    ops.extend(removed.into_iter().map(Op::PurgeVip));
    ops
}

/// Why a set of VIPs cannot be laid out in VIPS: this VIP found no free slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} finds no free slot within {VIP_PROBES} of its home in VIPS: too many VIPs hash alike there",
    describe_vip(.0)
)]
pub struct VipsFull(pub VipKey);

/// A VIP as people write it: `TCP 192.0.2.10:80`, `UDP [2001:db8::10]:53`.
pub fn describe_vip(key: &VipKey) -> String {
    let ip = if key.family == lb_common::FAMILY_V4 {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
    };
    let proto = match key.proto {
        lb_common::PROTO_TCP => "TCP".to_string(),
        lb_common::PROTO_UDP => "UDP".to_string(),
        other => format!("protocol {other}"),
    };
    format!("{proto} {}", SocketAddr::new(ip, u16::from_be(key.port_be)))
}

/// Lays VIPs out as the data plane probes them: each in the first unused slot from its
/// home, at most `VIP_PROBES` away (linear probing; with at most a quarter of the slots
/// used, a VIP further away is all but impossible, and refused rather than unreachable).
/// Pure, so a plan is refused before anything is written.
pub fn vip_slots(vips: &BTreeMap<VipKey, VipInfo>) -> Result<Vec<VipSlot>, VipsFull> {
    let mut slots = vec![VipSlot::default(); VIP_SLOTS as usize];
    for (key, info) in vips {
        let home = lb_common::vip_home(key);
        let free = (0..VIP_PROBES)
            .map(|p| ((home + p) & (VIP_SLOTS - 1)) as usize)
            .find(|&i| slots[i].used == 0)
            .ok_or(VipsFull(*key))?;
        slots[free] = VipSlot { key: *key, info: *info, used: 1 };
    }
    Ok(slots)
}
