//! lbd's view of the data plane's connection tables (FLOWS, NAT_REPLIES). Both are arrays
//! of sets mapped into lbd's memory (BPF_F_MMAPABLE): counting ActiveConn or purging a
//! removed VIP is one pass over memory, not a syscall per flow. A way counts only when it
//! passes the data plane's own tag check (lb_common::flow_table).

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::{addr_of_mut, read_volatile, write_volatile};

use anyhow::{Context, Result, ensure};
use aya::maps::{Map, MapData};
use lb_common::{
    FlowKey, FlowValue, NatReply,
    flow_table::{FLOW_SETS, FLOW_WAYS, FlowSet, NatSet, Ways, tag},
    hash::flow_hash,
};
use memmap2::{MmapOptions, MmapRaw};

/// A set type of a connection table: where its ways are, and whether way `w` is valid.
pub trait Set: Copy {
    fn ways_mut(set: *mut Self) -> *mut Ways;
    fn valid(&self, w: usize) -> bool;
    fn key(&self, w: usize) -> &FlowKey;
}

impl Set for FlowSet {
    fn ways_mut(set: *mut Self) -> *mut Ways {
        unsafe { addr_of_mut!((*set).ways) }
    }
    fn valid(&self, w: usize) -> bool {
        let ways = &self.ways;
        ways.tags[w] != 0 && ways.tags[w] == tag(flow_hash(&self.keys[w]), ways.reals[w], 0)
    }
    fn key(&self, w: usize) -> &FlowKey {
        &self.keys[w]
    }
}

impl Set for NatSet {
    fn ways_mut(set: *mut Self) -> *mut Ways {
        unsafe { addr_of_mut!((*set).ways) }
    }
    fn valid(&self, w: usize) -> bool {
        let ways = &self.ways;
        let salt = ways.flags[w];
        ways.tags[w] != 0
            && ways.tags[w] == tag(flow_hash(&self.keys[w]), ways.reals[w], salt)
            && self.replies[w].check() == salt
    }
    fn key(&self, w: usize) -> &FlowKey {
        &self.keys[w]
    }
}

/// One connection table, mapped.
pub struct Table<S: Set> {
    mem: MmapRaw,
    /// Keeps the map's fd open beside the mapping.
    _map: MapData,
    _set: PhantomData<S>,
}

impl<S: Set> Table<S> {
    /// Maps `map`, after checking it is the array of sets this build expects.
    pub fn new(map: Map, name: &str) -> Result<Self> {
        let Map::Array(map) = map else { anyhow::bail!("map {name} is not an array") };
        let info = map.info().with_context(|| format!("reading map {name}'s info"))?;
        ensure!(
            info.value_size() as usize == size_of::<S>() && info.max_entries() == FLOW_SETS,
            "map {name}: {} sets of {} bytes, this lbd expects {FLOW_SETS} of {}",
            info.max_entries(),
            info.value_size(),
            size_of::<S>()
        );
        let len = size_of::<S>() * FLOW_SETS as usize;
        let mem = MmapOptions::new()
            .len(len)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .with_context(|| format!("mapping {name} into memory"))?;
        Ok(Table { mem, _map: map, _set: PhantomData })
    }

    fn set_ptr(&self, i: usize) -> *mut S {
        debug_assert!(i < FLOW_SETS as usize);
        unsafe { (self.mem.as_mut_ptr() as *mut S).add(i) }
    }

    /// Every valid way: set index, way index and a copy of its set. The data plane may be
    /// writing meanwhile; a way caught half written fails its check and is left out.
    pub fn valid_ways(&self) -> impl Iterator<Item = (usize, usize, S)> + '_ {
        (0..FLOW_SETS as usize).flat_map(move |i| {
            let set = unsafe { read_volatile(self.set_ptr(i)) };
            (0..FLOW_WAYS).filter(move |&w| set.valid(w)).map(move |w| (i, w, set))
        })
    }

    /// Empties the ways whose key `remove` picks; returns how many.
    pub fn remove_where(&self, remove: impl Fn(&S, usize) -> bool) -> usize {
        let doomed: Vec<(usize, usize)> = self
            .valid_ways()
            .filter(|(_, w, set)| remove(set, *w))
            .map(|(i, w, _)| (i, w))
            .collect();
        for &(i, w) in &doomed {
            // A tag of 0 is an empty way, to the data plane as to us.
            unsafe { write_volatile(addr_of_mut!((*S::ways_mut(self.set_ptr(i))).tags[w]), 0) };
        }
        doomed.len()
    }
}

impl Table<FlowSet> {
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
                (*set.key(w), value)
            })
            .collect()
    }
}

impl Table<NatSet> {
    /// A snapshot of the NAT ways back, by reply 5-tuple.
    pub fn replies(&self) -> Vec<(FlowKey, NatReply)> {
        self.valid_ways().map(|(_, w, set)| (set.keys[w], set.replies[w])).collect()
    }
}
