//! The only module that touches aya: loads the XDP object the build embedded, attaches it,
//! writes the maps the core computes and reads the counters back (the connection tables
//! through [`flow_table`]). Everything above it speaks in lb-common's types.

mod flow_table;
mod mapped;
pub mod pins;

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, IterableMap as _, Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Counters, FAMILY_V4, FAMILY_V6, FENCE_V4, FENCE_V6, FencedAddr, FlowKey, FlowValue, Lease,
    MAGLEV_EMPTY, MAGLEV_LINE_SLOTS, MAGLEV_LINES, MAGLEV_SIZE, MAX_REALS, MAX_VIPS, MaglevLine,
    NO_REAL, REALS_LIMIT, RealInfo, Reason, VIP_SLOTS, VIPS_LIMIT, VipInfo, VipKey, VipSlot,
    XDP_PROGRAM, map_names,
};

use crate::config;
use crate::core::Capacity;
pub use crate::core::tables::vip_slots;
use crate::drivers::ListingReads;
use crate::drivers::dataplane::DataplaneOps;
pub use crate::link::LinkInfo;

/// The compiled data plane, built by build.rs from lb-ebpf: `lb_xdp`, and `floor`, the
/// benchmark's reference program.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The real servers' decapsulation program, `lb_decap` (lb-ebpf/src/decap.rs).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

pub struct Dataplane {
    ebpf: Ebpf,
    vips: Array<MapData, VipSlot>,
    /// The VIPs as the core set them; each change rebuilds the idle generation of VIPS.
    vip_set: BTreeMap<VipKey, VipInfo>,
    /// The live generation of VIPS (SETTINGS[SETTING_VIP_GENERATION]).
    vip_generation: u32,
    /// Every VIP's Maglev table, mapped: a rebuild stores only the slots that differ.
    maglev: mapped::MappedArray<MaglevLine>,
    reals: Array<MapData, RealInfo>,
    /// Shared with the [`Reader`]s: both only ever access it volatile.
    flows: Arc<flow_table::FlowTable>,
    vip_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    /// VIP_STATS and REAL_STATS again, on descriptors of their own: each [`Reader`]'s
    /// handles are duplicated from these.
    stats_for_readers: [MapData; 2],
    reasons: PerCpuArray<MapData, u64>,
    settings: Array<MapData, u32>,
    /// The fence's leases and addresses (lb-ebpf/src/fence.rs).
    fence: Fence,
    /// Interfaces the program is attached to, by ifindex.
    links: StdHashMap<u32, LinkInfo>,
    /// What the maps were sized for.
    capacity: Capacity,
    /// Where the program, its links and maps are pinned; None: they go with lbd.
    pins: Option<pins::Pins>,
}

/// What [`Dataplane::load_pinned`] found of an earlier lbd's data plane.
#[derive(Debug, Default)]
pub struct Kept {
    /// Maps pinned before and used again, contents and all.
    pub maps: Vec<&'static str>,
    /// Maps pinned before whose layout this build or config changes: replaced by empty
    /// ones, and why.
    pub renewed: Vec<(&'static str, String)>,
}

impl Kept {
    /// Every table lbd writes was kept: the core can go on from what they hold.
    pub fn tables(&self) -> bool {
        [map_names::VIPS, map_names::REALS, map_names::MAGLEV, map_names::SETTINGS]
            .iter()
            .all(|name| self.maps.contains(name))
    }
}

/// Every map of the object, in the order they are checked and pinned.
const MAP_NAMES: [&str; 10] = [
    map_names::VIPS,
    map_names::MAGLEV,
    map_names::REALS,
    map_names::FLOWS,
    map_names::VIP_STATS,
    map_names::REAL_STATS,
    map_names::REASONS,
    map_names::SETTINGS,
    map_names::FENCE,
    map_names::FENCED,
];

/// How the program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
    /// A pinned link taken over, in the mode it was attached in.
    Kept,
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// What a listing reads, on handles of its own: the mapped connection table (shared) and
/// second descriptors of the counter maps. It can go to another thread while the
/// [`Dataplane`] goes on writing; a counter read meanwhile is the old value or the new.
pub struct Reader {
    flows: Arc<flow_table::FlowTable>,
    vip_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
}

impl Reader {
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.flows()
    }
}

impl ListingReads for Reader {
    fn vip_counters(&self, index: u32) -> Result<Counters> {
        sum(self.vip_stats.get(&index, 0)?.iter())
    }
    fn real_counters(&self, id: u32) -> Result<Counters> {
        sum(self.real_stats.get(&id, 0)?.iter())
    }
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        Reader::flows(self)
    }
}

/// Map `name` on a descriptor of its own, beside the one the object keeps.
fn reopen(ebpf: &Ebpf, name: &str) -> Result<MapData> {
    let map = ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    let data = match map {
        Map::PerCpuArray(data) | Map::Array(data) => data,
        _ => anyhow::bail!("map {name} is not an array"),
    };
    dup(data)
}

fn dup(data: &MapData) -> Result<MapData> {
    let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating a map's descriptor")?;
    Ok(MapData::from_fd(fd)?)
}

/// A per-CPU array handle on a descriptor of its own.
fn per_cpu<V: aya::Pod>(data: &MapData) -> Result<PerCpuArray<MapData, V>> {
    Ok(PerCpuArray::try_from(Map::from_map_data(dup(data)?)?)?)
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(take_map(ebpf, name)?).with_context(|| format!("map {name} has an unexpected type"))
}

impl Dataplane {
    /// Loads the object and the XDP program into the kernel (the verifier runs here), with
    /// the maps sized as the program declares them (lb_common's defaults).
    pub fn load() -> Result<Self> {
        Self::load_with(Capacity { vips: MAX_VIPS, reals: MAX_REALS })
    }

    /// Loads the object with its per-VIP and per-real maps sized for `capacity`: what the
    /// config asks for is allocated, no more (docs/ARCHITECTURE.md gives the bytes).
    pub fn load_with(capacity: Capacity) -> Result<Self> {
        Ok(Self::load_inner(capacity, None)?.0)
    }

    /// Loads the object with its maps pinned under `pins`: a map an earlier lbd pinned
    /// there is used again when its layout is this build's (flows, tables and counters
    /// kept), replaced by an empty one otherwise (said in [`Kept`]). [`Dataplane::attach`]
    /// then swaps the new program into a pinned link atomically.
    pub fn load_pinned(capacity: Capacity, pins: pins::Pins) -> Result<(Self, Kept)> {
        Self::load_inner(capacity, Some(pins))
    }

    fn load_inner(capacity: Capacity, pins: Option<pins::Pins>) -> Result<(Self, Kept)> {
        anyhow::ensure!(
            (1..=VIPS_LIMIT).contains(&capacity.vips)
                && (1..=REALS_LIMIT).contains(&capacity.reals),
            "capacity {} VIPs, {} reals: the data plane holds 1 to {VIPS_LIMIT} and 1 to {REALS_LIMIT}",
            capacity.vips,
            capacity.reals
        );
        let sized = [
            (map_names::MAGLEV, capacity.vips * MAGLEV_LINES),
            (map_names::VIP_STATS, capacity.vips),
            (map_names::REALS, capacity.reals),
            (map_names::REAL_STATS, capacity.reals),
        ];
        let mut loader = EbpfLoader::new();
        for (name, entries) in sized {
            loader.map_max_entries(name, entries);
        }
        let mut kept = Kept::default();
        if let Some(pins) = &pins {
            let object = aya_obj::Object::parse(OBJECT).context("reading the eBPF object")?;
            let mut renew = Vec::new();
            for name in MAP_NAMES {
                let path = pins.map(name);
                if path.exists() {
                    let mut wanted = object
                        .maps
                        .get(name)
                        .cloned()
                        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
                    if let Some((_, n)) = sized.iter().find(|(m, _)| *m == name) {
                        wanted.set_max_entries(*n);
                    }
                    match pins::same_layout(&path, &wanted) {
                        Ok(()) => kept.maps.push(name),
                        Err(why) => renew.push((name, why)),
                    }
                }
            }
            // Flows name their reals by id: without the tables that give ids their
            // meaning, a kept flow could find its id given to another real of its VIP.
            if !kept.tables() && kept.maps.contains(&map_names::FLOWS) {
                kept.maps.retain(|m| *m != map_names::FLOWS);
                let why =
                    "kept only with VIPS, REALS, MAGLEV and SETTINGS, whose ids its flows name";
                renew.push((map_names::FLOWS, why.into()));
            }
            for (name, why) in renew {
                // The old program keeps its own map until its link moves to the new
                // program; the pin goes to the new map.
                let path = pins.map(name);
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                kept.renewed.push((name, why));
            }
            for name in MAP_NAMES {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing"))?
            .try_into()?;
        program.load().context("loading the XDP program (verifier)")?;
        if let Some(pins) = &pins {
            let path = pins.program();
            let _ = std::fs::remove_file(&path);
            program
                .pin(&path)
                .with_context(|| format!("pinning the program at {}", path.display()))?;
        }
        let stats_for_readers =
            [reopen(&ebpf, map_names::VIP_STATS)?, reopen(&ebpf, map_names::REAL_STATS)?];
        let mut dp = Dataplane {
            vips: take(&mut ebpf, map_names::VIPS)?,
            vip_set: BTreeMap::new(),
            vip_generation: 0,
            maglev: mapped::MappedArray::take(
                &mut ebpf,
                map_names::MAGLEV,
                capacity.vips * MAGLEV_LINES,
            )?,
            reals: take(&mut ebpf, map_names::REALS)?,
            flows: Arc::new(flow_table::FlowTable::take(&mut ebpf)?),
            vip_stats: take(&mut ebpf, map_names::VIP_STATS)?,
            real_stats: take(&mut ebpf, map_names::REAL_STATS)?,
            stats_for_readers,
            reasons: take(&mut ebpf, map_names::REASONS)?,
            settings: take(&mut ebpf, map_names::SETTINGS)?,
            fence: Fence {
                leases: take(&mut ebpf, map_names::FENCE)?,
                addresses: take(&mut ebpf, map_names::FENCED)?,
            },
            ebpf,
            links: StdHashMap::new(),
            capacity,
            pins,
        };
        let vips_kept =
            [map_names::VIPS, map_names::SETTINGS].iter().all(|m| kept.maps.contains(m));
        if vips_kept {
            // VIPS as the earlier lbd left it: the next change writes the idle generation.
            let live = dp.settings.get(&lb_common::SETTING_VIP_GENERATION, 0).unwrap_or(0) & 1;
            dp.vip_generation = live;
            dp.vip_set = dp.read_vips(live)?;
        }
        Ok((dp, kept))
    }

    /// The VIPs generation `generation` of VIPS holds.
    fn read_vips(&self, generation: u32) -> Result<BTreeMap<VipKey, VipInfo>> {
        let mut vips = BTreeMap::new();
        for i in 0..VIP_SLOTS {
            let slot = self.vips.get(&(generation * VIP_SLOTS + i), 0).context("reading VIPS")?;
            if slot.used != 0 {
                vips.insert(slot.key, slot.info);
            }
        }
        Ok(vips)
    }

    /// What the maps hold for the core to go on from (see [`crate::core::Adopted`]): the
    /// live VIPs, the REALS entries written, each live VIP's Maglev table.
    pub fn adopted(&self) -> Result<crate::core::Adopted> {
        let mut reals = BTreeMap::new();
        for id in 0..self.capacity.reals {
            let info = self.reals.get(&id, 0).context("reading REALS")?;
            if info != RealInfo::default() {
                reals.insert(id, info);
            }
        }
        let mut maglev = BTreeMap::new();
        for info in self.vip_set.values() {
            let index = info.index;
            if index >= self.capacity.vips {
                continue;
            }
            let table: Vec<u32> = (0..MAGLEV_SIZE as usize)
                .map(|slot| match self.maglev_slot(index, slot).load(Ordering::Relaxed) {
                    MAGLEV_EMPTY => NO_REAL,
                    id => u32::from(id),
                })
                .collect();
            maglev.insert(index, table);
        }
        Ok(crate::core::Adopted { vips: self.vip_set.clone(), reals, maglev })
    }

    /// Where the data plane is pinned, if it is.
    pub fn pin_root(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.root())
    }

    /// The XDP program, for attaching and for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing"))?
            .try_into()?)
    }

    /// Attaches to `interface` and returns the mode it got (see [`attach_xdp`]).
    /// Pinned, a link an earlier lbd pinned for `interface` is taken over: this program
    /// replaces the old one in it atomically (BPF_LINK_UPDATE), so no packet meets an
    /// interface without one; its XDP mode stays what it was ([`Attached::Kept`]).
    pub fn attach(&mut self, interface: &str, mode: config::XdpMode) -> Result<Attached> {
        let link = LinkInfo::read(interface)?;
        let has_device = link.has_device;
        self.links.insert(link.ifindex, link);
        let pin = self.pins.as_ref().map(|p| p.link(interface));
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            match self.take_over(pin) {
                Ok(()) => return Ok(Attached::Kept),
                Err(e) => {
                    // Its interface was deleted and made again, say: a new link it is.
                    tracing::warn!(interface, error = %format!("{e:#}"), "the pinned XDP link cannot be taken over: attaching anew");
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let (id, attached) = attach_xdp(self.program()?, interface, has_device, mode)?;
        if let Some(pin) = pin {
            let link = self.program()?.take_link(id)?;
            let fd_link: FdLink = link.try_into().context(
                "this kernel attached XDP through netlink, without a link to pin: the data \
                 plane will not outlive lbd",
            )?;
            fd_link
                .pin(&pin)
                .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        }
        Ok(attached)
    }

    /// Moves the pinned link at `pin` to this program.
    fn take_over(&mut self, pin: &Path) -> Result<()> {
        let pinned = PinnedLink::from_pin(pin).context("opening the pinned link")?;
        let link = XdpLink::try_from(FdLink::from(pinned)).context("not an XDP link")?;
        self.program()?.attach_to_link(link).context("replacing the program in the link")?;
        Ok(())
    }

    /// Unpins the links of interfaces no longer in the config: detached from them.
    pub fn unpin_other_links(&mut self, interfaces: &[String]) -> Vec<String> {
        let Some(pins) = &self.pins else { return Vec::new() };
        let mut gone = Vec::new();
        for name in pins.linked_interfaces() {
            if !interfaces.contains(&name) && std::fs::remove_file(pins.link(&name)).is_ok() {
                gone.push(name);
            }
        }
        gone
    }

    /// How many VIPs and reals the maps hold.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// An interface the program is attached to.
    pub fn link(&self, ifindex: u32) -> Option<&LinkInfo> {
        self.links.get(&ifindex)
    }

    /// The interfaces the program is attached to.
    pub fn links(&self) -> impl Iterator<Item = &LinkInfo> {
        self.links.values()
    }

    /// Turns the data plane's search for NAT replies on or off.
    pub fn set_nat(&mut self, on: bool) -> Result<()> {
        let value = if on { lb_common::SETTING_NAT } else { 0 };
        self.settings.set(lb_common::SETTING_FLAGS, value, 0).context("writing SETTINGS")
    }

    /// Publishes the clock flows are aged by: CLOCK_MONOTONIC in seconds.
    pub fn set_clock(&mut self, seconds: u32) -> Result<()> {
        self.settings.set(lb_common::SETTING_CLOCK, seconds, 0).context("writing SETTINGS")
    }

    /// Adds or changes one VIP (tests; lbd sets the whole table through [`DataplaneOps`]).
    pub fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        let mut vips = self.vip_set.clone();
        vips.insert(key, info);
        self.set_vips(&vips)
    }

    /// Removes one VIP (tests; lbd sets the whole table through [`DataplaneOps`]).
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut vips = self.vip_set.clone();
        vips.remove(key);
        self.set_vips(&vips)
    }

    /// Makes `vips` the VIPS table: writes the whole idle generation, then makes it the
    /// live one. A packet reads one generation from start to end; the one it may still be
    /// reading is rewritten only at the next change.
    pub fn set_vips(&mut self, vips: &BTreeMap<VipKey, VipInfo>) -> Result<()> {
        if *vips == self.vip_set {
            return Ok(());
        }
        let slots = vip_slots(vips)?;
        let idle = self.vip_generation ^ 1;
        for (i, slot) in slots.iter().enumerate() {
            self.vips.set(idle * VIP_SLOTS + i as u32, *slot, 0).context("writing VIPS")?;
        }
        self.settings
            .set(lb_common::SETTING_VIP_GENERATION, idle, 0)
            .context("writing SETTINGS")?;
        self.vip_generation = idle;
        self.vip_set = vips.clone();
        Ok(())
    }

    /// Removes a removed VIP's flows (and with them NAT's ways back); returns how many.
    pub fn purge_vip(&mut self, vip: &VipKey) -> usize {
        self.flows.remove_where(|k| {
            k.dst == vip.addr
                && k.dport_be == vip.port_be
                && k.proto == vip.proto
                && k.family == vip.family
        })
    }

    pub fn set_real(&mut self, id: u32, real: RealInfo) -> Result<()> {
        self.reals.set(id, real, 0).context("writing REALS")
    }

    /// Writes VIP `index`'s Maglev table (real ids, `NO_REAL` for none), storing only the
    /// slots that differ from what the map holds; returns how many. Each slot is one atomic
    /// store of a valid real, so packets in flight see the old or the new choice.
    pub fn set_maglev(&mut self, index: u32, table: &[u32]) -> Result<usize> {
        anyhow::ensure!(
            table.len() == MAGLEV_SIZE as usize && index < self.capacity.vips,
            "Maglev table of {} slots for VIP index {index}",
            table.len()
        );
        let mut changed = 0;
        for (slot, &real) in table.iter().enumerate() {
            let real = match real {
                NO_REAL => MAGLEV_EMPTY,
                id => u16::try_from(id)
                    .ok()
                    .filter(|&id| id != MAGLEV_EMPTY)
                    .with_context(|| format!("real id {id} does not fit a Maglev slot"))?,
            };
            let cell = self.maglev_slot(index, slot);
            if cell.load(Ordering::Relaxed) != real {
                cell.store(real, Ordering::Relaxed);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Slot `slot` of VIP `index`'s Maglev table, in the mapping.
    fn maglev_slot(&self, index: u32, slot: usize) -> &AtomicU16 {
        let line = (index * MAGLEV_LINES) as usize + slot / MAGLEV_LINE_SLOTS as usize;
        let line = self.maglev.ptr(line);
        let at = slot % MAGLEV_LINE_SLOTS as usize;
        // SAFETY: in the mapping (ptr checks the line), aligned, and only ever accessed
        // whole, by us atomically and by the data plane as one 16-bit load.
        unsafe { &*(std::ptr::addr_of_mut!((*line).reals[at]) as *const AtomicU16) }
    }

    pub fn vip_counters(&self, index: u32) -> Result<Counters> {
        sum(self.vip_stats.get(&index, 0)?.iter())
    }

    pub fn real_counters(&self, id: u32) -> Result<Counters> {
        sum(self.real_stats.get(&id, 0)?.iter())
    }

    /// Zeroes a real's counters, when its id is given to another real; returns what they
    /// held, per CPU, so an undone batch can write them back.
    pub fn reset_real_counters(&mut self, id: u32) -> Result<Vec<Counters>> {
        let held =
            self.real_stats.get(&id, 0).context("reading REAL_STATS")?.iter().copied().collect();
        self.real_stats.set(id, zero_counters()?, 0).context("resetting REAL_STATS")?;
        Ok(held)
    }

    /// Zeroes a VIP's counters, when its index is given to another service; returns what
    /// they held, per CPU.
    pub fn reset_vip_counters(&mut self, index: u32) -> Result<Vec<Counters>> {
        let held =
            self.vip_stats.get(&index, 0).context("reading VIP_STATS")?.iter().copied().collect();
        self.vip_stats.set(index, zero_counters()?, 0).context("resetting VIP_STATS")?;
        Ok(held)
    }

    /// Writes back what [`Dataplane::reset_real_counters`] returned.
    pub fn restore_real_counters(&mut self, id: u32, held: &[Counters]) -> Result<()> {
        let values = aya::maps::PerCpuValues::try_from(held.to_vec())?;
        self.real_stats.set(id, values, 0).context("restoring REAL_STATS")
    }

    /// Writes back what [`Dataplane::reset_vip_counters`] returned.
    pub fn restore_vip_counters(&mut self, index: u32, held: &[Counters]) -> Result<()> {
        let values = aya::maps::PerCpuValues::try_from(held.to_vec())?;
        self.vip_stats.set(index, values, 0).context("restoring VIP_STATS")
    }

    /// Packets per reason since the program was loaded, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|&r| Ok((r, self.reasons.get(&(r as u32), 0)?.iter().sum())))
            .collect()
    }

    /// A snapshot of the connection table.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.flows()
    }

    /// The fence, on descriptors of its own: the failover tasks renew the lease with
    /// every advert, apart from the driver.
    pub fn fence(&self) -> Result<Fence> {
        self.fence.try_clone()
    }

    /// No fence: a director without `ha` answers for its VIPs whatever a previous lbd
    /// left in the maps.
    pub fn disarm_fence(&mut self) -> Result<()> {
        self.fence.disarm()
    }

    /// Handles for reading what a listing shows from another thread.
    pub fn reader(&self) -> Result<Reader> {
        let [vip_stats, real_stats] = &self.stats_for_readers;
        Ok(Reader {
            flows: self.flows.clone(),
            vip_stats: per_cpu(vip_stats)?,
            real_stats: per_cpu(real_stats)?,
        })
    }
}

/// The data plane's fence (lb-ebpf/src/fence.rs): the leases by family and the addresses
/// they guard. With `ha`, each family's failover task holds one.
pub struct Fence {
    leases: Array<MapData, Lease>,
    addresses: BpfHashMap<MapData, FencedAddr, u32>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fence")
    }
}

impl Fence {
    /// The same maps on descriptors of their own.
    pub fn try_clone(&self) -> Result<Fence> {
        Ok(Fence {
            leases: Array::try_from(Map::from_map_data(dup(self.leases.map())?)?)?,
            addresses: BpfHashMap::try_from(Map::from_map_data(dup(self.addresses.map())?)?)?,
        })
    }

    /// Guards `vips` (one family's): their ARP requests or neighbour solicitations are
    /// dropped while the family's lease has lapsed. Replaces what that family had.
    pub fn guard(&mut self, ipv4: bool, vips: &[IpAddr]) -> Result<()> {
        let family = if ipv4 { FAMILY_V4 } else { FAMILY_V6 };
        let stale: Vec<FencedAddr> =
            self.addresses.keys().filter_map(|k| k.ok()).filter(|k| k.family == family).collect();
        for key in stale {
            self.addresses.remove(&key).context("writing FENCED")?;
        }
        for vip in vips.iter().filter(|v| v.is_ipv4() == ipv4) {
            let key = fenced_addr(*vip);
            self.addresses.insert(key, 1, 0).context("writing FENCED")?;
        }
        Ok(())
    }

    /// Arms the family's fence: the data plane answers for its VIPs until `until_ns`
    /// (CLOCK_MONOTONIC), and not at all for `None`.
    pub fn lease(&mut self, ipv4: bool, until_ns: Option<u64>) -> Result<()> {
        let index = if ipv4 { FENCE_V4 } else { FENCE_V6 };
        let lease = Lease { until_ns: until_ns.unwrap_or(0), armed: 1, _pad: 0 };
        self.leases.set(index, lease, 0).context("writing FENCE")
    }

    /// One family unfenced.
    pub fn disarm_family(&mut self, ipv4: bool) -> Result<()> {
        let index = if ipv4 { FENCE_V4 } else { FENCE_V6 };
        self.leases.set(index, Lease::default(), 0).context("writing FENCE")
    }

    /// Both families unfenced.
    pub fn disarm(&mut self) -> Result<()> {
        self.disarm_family(true)?;
        self.disarm_family(false)
    }
}

fn fenced_addr(ip: IpAddr) -> FencedAddr {
    let mut key = FencedAddr::default();
    match ip {
        IpAddr::V4(a) => {
            key.addr[..4].copy_from_slice(&a.octets());
            key.family = FAMILY_V4;
        }
        IpAddr::V6(a) => {
            key.addr = a.octets();
            key.family = FAMILY_V6;
        }
    }
    key
}

/// Attaches an XDP program. `auto` takes native mode on interfaces backed by a device
/// driver and generic mode on virtual ones: on veth, native XDP_TX frames are only delivered
/// when the peer runs an XDP program itself (see TOOLCHAIN.md), so generic is the mode that
/// forwards. A driver that refuses native mode under `auto` gets generic, with a warning.
pub fn attach_xdp(
    program: &mut Xdp,
    interface: &str,
    has_device: bool,
    mode: config::XdpMode,
) -> Result<(aya::programs::xdp::XdpLinkId, Attached)> {
    let wanted = match mode {
        config::XdpMode::Native => Attached::Native,
        config::XdpMode::Generic => Attached::Generic,
        config::XdpMode::Auto if has_device => Attached::Native,
        config::XdpMode::Auto => Attached::Generic,
    };
    let flags = match wanted {
        Attached::Native => XdpMode::Driver,
        _ => XdpMode::Skb,
    };
    match program.attach(interface, flags) {
        Ok(id) => Ok((id, wanted)),
        Err(e) if mode == config::XdpMode::Auto && wanted == Attached::Native => {
            tracing::warn!(interface, error = %e, "native XDP refused by the driver, using generic");
            let id = program
                .attach(interface, XdpMode::Skb)
                .with_context(|| format!("attaching XDP to {interface}"))?;
            Ok((id, Attached::Generic))
        }
        Err(e) => Err(e).with_context(|| format!("attaching XDP ({wanted:?}) to {interface}")),
    }
}

fn zero_counters() -> Result<aya::maps::PerCpuValues<Counters>> {
    let cpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
    Ok(aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])?)
}

fn sum<'a>(values: impl Iterator<Item = &'a Counters>) -> Result<Counters> {
    Ok(values.fold(Counters::default(), |a, c| Counters {
        conns: a.conns + c.conns,
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        out_packets: a.out_packets + c.out_packets,
        out_bytes: a.out_bytes + c.out_bytes,
    }))
}

/// lbd's writes and reads go through the same seam as the tests' fake.
impl DataplaneOps for Dataplane {
    fn set_clock(&mut self, seconds: u32) -> Result<()> {
        Dataplane::set_clock(self, seconds)
    }
    fn set_nat(&mut self, on: bool) -> Result<()> {
        Dataplane::set_nat(self, on)
    }
    fn set_real(&mut self, id: u32, real: RealInfo) -> Result<()> {
        Dataplane::set_real(self, id, real)
    }
    fn set_maglev(&mut self, index: u32, table: &[u32]) -> Result<usize> {
        Dataplane::set_maglev(self, index, table)
    }
    fn set_vips(&mut self, vips: &BTreeMap<VipKey, VipInfo>) -> Result<()> {
        Dataplane::set_vips(self, vips)
    }
    fn reset_real_counters(&mut self, id: u32) -> Result<Vec<Counters>> {
        Dataplane::reset_real_counters(self, id)
    }
    fn reset_vip_counters(&mut self, index: u32) -> Result<Vec<Counters>> {
        Dataplane::reset_vip_counters(self, index)
    }
    fn restore_real_counters(&mut self, id: u32, held: &[Counters]) -> Result<()> {
        Dataplane::restore_real_counters(self, id, held)
    }
    fn restore_vip_counters(&mut self, index: u32, held: &[Counters]) -> Result<()> {
        Dataplane::restore_vip_counters(self, index, held)
    }
    fn purge_vip(&mut self, vip: &VipKey) -> usize {
        Dataplane::purge_vip(self, vip)
    }
    fn vip_counters(&self, index: u32) -> Result<Counters> {
        Dataplane::vip_counters(self, index)
    }
    fn real_counters(&self, id: u32) -> Result<Counters> {
        Dataplane::real_counters(self, id)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Dataplane::reasons(self)
    }
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        Dataplane::flows(self)
    }
}
