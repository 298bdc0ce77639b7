//! Every map of the data plane, in one place. "Writer" is who changes the entries; the data
//! plane reads all of them per packet. Sizes and types come from lb-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lb_common::{
    Counters, FENCE_LEN, FencedAddr, Lease, MAGLEV_LINES, MAX_FENCED, MAX_REALS, MAX_VIPS,
    MaglevLine, RealInfo, Reason, SETTINGS_LEN, VIP_SLOTS, VipSlot,
    flow_table::{FLOW_SETS, FlowSet},
};

/// Services by (address, port, protocol): two generations of `VIP_SLOTS` slots, the live
/// one named by `SETTINGS[SETTING_VIP_GENERATION]`. Probed inline (an array, not a hash
/// map: no kernel call per packet). Writer: daemon.
#[map]
pub static VIPS: Array<VipSlot> = Array::with_max_entries(2 * VIP_SLOTS, 0);

/// Every VIP's Maglev table, back to back, in lines of 32 slots (lb_common::MaglevLine):
/// slot `s` of VIP `i` is in entry `i * MAGLEV_LINES + s / 32`, a real id or
/// `MAGLEV_EMPTY`. Writer: daemon, through mmap, one atomic 16-bit store per changed slot.
#[map]
pub static MAGLEV: Array<MaglevLine> =
    Array::with_max_entries(MAX_VIPS * MAGLEV_LINES, BPF_F_MMAPABLE);

/// Reals by id: address, MAC, interface. Writer: daemon (MACs from the neighbour table).
#[map]
pub static REALS: Array<RealInfo> = Array::with_max_entries(MAX_REALS, 0);

/// The connection table: 5-tuple to real, so established flows ignore weight changes, and
/// NAT flows' ways back. Sets of ways chosen by the client's address and port
/// (lb_common::flow_table, lb-ebpf/src/flows.rs), shared by all CPUs. Writer: data plane
/// (new flows); the daemon reads it through mmap (ActiveConn) and empties the ways of a
/// removed VIP.
#[map]
pub static FLOWS: Array<FlowSet> = Array::with_max_entries(FLOW_SETS, BPF_F_MMAPABLE);

/// Index `SETTING_CLOCK`: the daemon's clock in seconds, for flow ages: an array read is
/// cheaper per packet than the kernel's clock helpers (measured in docs/BENCHMARKS.md).
/// Index `SETTING_FLAGS`: `SETTING_NAT` while some VIP uses NAT, so hosts without NAT pay no
/// reverse-flow lookup for their own traffic. Writer: daemon.
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(SETTINGS_LEN, 0);

/// The fence's lease per address family (`FENCE_V4`, `FENCE_V6`): with `ha`, how long this
/// director answers for the VIPs after lbd's last advert as master. Read only by packets
/// that would open a flow and by ARP and neighbour solicitations. Writer: daemon.
#[map]
pub static FENCE: Array<Lease> = Array::with_max_entries(FENCE_LEN, 0);

/// The addresses the fence guards: the `ha` VIPs. Looked up only for ARP requests and
/// neighbour solicitations while a lease has lapsed. Writer: daemon.
#[map]
pub static FENCED: HashMap<FencedAddr, u32> = HashMap::with_max_entries(MAX_FENCED, 0);

/// The daemon maps the connection table and the Maglev tables into its memory: no
/// syscall per set or slot.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Per-VIP counters, by `VipInfo::index`. Writer: data plane.
#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-real counters, by real id. Writer: data plane.
#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets by [`Reason`]. Writer: data plane.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
