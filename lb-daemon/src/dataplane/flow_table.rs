//! lbd's view of the data plane's connection table (FLOWS): an array of sets mapped into
//! lbd's memory (BPF_F_MMAPABLE), so counting ActiveConn or purging a removed VIP is one
//! pass over memory, not a syscall per flow. A way counts only when it passes the data
//! plane's own tag check (lb_common::flow_table).

use std::ptr::{addr_of_mut, read_volatile, write_volatile};

use anyhow::Result;
use aya::Ebpf;
use lb_common::{
    FlowKey, FlowValue,
    flow_table::{FLOW_SETS, FLOW_WAYS, FlowSet, tag},
    hash::flow_client_hash,
    map_names,
};

use super::mapped::MappedArray;

/// The connection table, mapped.
pub struct FlowTable {
    sets: MappedArray<FlowSet>,
}

fn valid(set: &FlowSet, w: usize) -> bool {
    let ways = &set.ways;
    ways.tags[w] != 0 && ways.tags[w] == tag(flow_client_hash(&set.keys[w]), ways.reals[w])
}

impl FlowTable {
    /// Takes FLOWS out of `ebpf` and maps it, after checking it is the array of sets this
    /// build expects.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(FlowTable { sets: MappedArray::take(ebpf, map_names::FLOWS, FLOW_SETS)? })
    }

    /// Every valid way: set index, way index and a copy of its set. The data plane may be
    /// writing meanwhile; a way caught half written fails its check and is left out.
    fn valid_ways(&self) -> impl Iterator<Item = (usize, usize, FlowSet)> + '_ {
        (0..FLOW_SETS as usize).flat_map(move |i| {
            let set = unsafe { read_volatile(self.sets.ptr(i)) };
            (0..FLOW_WAYS).filter(move |&w| valid(&set, w)).map(move |w| (i, w, set))
        })
    }

    /// A snapshot of the flows.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.valid_ways()
            .map(|(_, w, set)| {
                let ways = &set.ways;
                let value = FlowValue {
                    real: ways.reals[w],
                    flags: ways.flags[w],
                    last_seen_s: ways.last_seen_s[w],
                    _pad: 0,
                };
                (set.keys[w], value)
            })
            .collect()
    }

    /// Empties the ways whose key `remove` picks (with a NAT flow, its way back goes too);
    /// returns how many.
    pub fn remove_where(&self, remove: impl Fn(&FlowKey) -> bool) -> usize {
        let doomed: Vec<(usize, usize)> = self
            .valid_ways()
            .filter(|(_, w, set)| remove(&set.keys[*w]))
            .map(|(i, w, _)| (i, w))
            .collect();
        for &(i, w) in &doomed {
            // A tag of 0 is an empty way, to the data plane as to us.
            unsafe { write_volatile(addr_of_mut!((*self.sets.ptr(i)).ways.tags[w]), 0) };
        }
        doomed.len()
    }
}
