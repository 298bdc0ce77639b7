//! Finding and recording flows in a set of the connection table (layout and tags in
//! lb_common::flow_table). Every loop runs over the set's `FLOW_WAYS` ways, nothing else.
//! Fields other CPUs may be writing are read and written volatile, one word each, so the
//! compiler neither merges nor reorders them; the tag check then rejects any mix.

use core::ptr::{read_volatile, write_volatile};

use lb_common::{
    FlowKey,
    flow_table::{FLOW_WAYS, Ways, tag},
};

/// A flow found in a set.
pub struct Found {
    pub way: usize,
    pub real: u32,
    pub flags: u32,
}

/// The way holding `key`, whose client hash is `client`. The caller still checks that the
/// real serves the packet's VIP (lb_common::flow_table::tag says why).
#[inline(always)]
pub fn find(ways: &Ways, keys: &[FlowKey; FLOW_WAYS], key: &FlowKey, client: u32) -> Option<Found> {
    for way in 0..FLOW_WAYS {
        let t = unsafe { read_volatile(&ways.tags[way]) };
        if t == 0 {
            continue;
        }
        let real = unsafe { read_volatile(&ways.reals[way]) };
        let flags = unsafe { read_volatile(&ways.flags[way]) };
        if t == tag(client, real) && same(&keys[way], key) {
            return Some(Found { way, real, flags });
        }
    }
    None
}

/// The way a new flow replaces: an empty one, else the one idle longest.
#[inline(always)]
pub fn victim(ways: &Ways, now: u32) -> usize {
    let mut oldest = 0;
    let mut oldest_age = 0;
    for w in 0..FLOW_WAYS {
        if unsafe { read_volatile(&ways.tags[w]) } == 0 {
            return w;
        }
        let age = now.wrapping_sub(unsafe { read_volatile(&ways.last_seen_s[w]) });
        if age > oldest_age {
            oldest = w;
            oldest_age = age;
        }
    }
    oldest
}

/// Writes a flow into way `w`. The tag goes last; until then the way reads as empty, and
/// a way another CPU writes at the same moment fails its tag check afterwards.
#[inline(always)]
pub fn record(
    ways: &mut Ways,
    keys: &mut [FlowKey; FLOW_WAYS],
    w: usize,
    key: &FlowKey,
    client: u32,
    real: u32,
    flags: u32,
    now: u32,
) {
    if w >= FLOW_WAYS {
        return;
    }
    unsafe {
        write_volatile(&mut ways.tags[w], 0);
        let to = &mut keys[w] as *mut FlowKey as *mut u64;
        let from = key as *const FlowKey as *const u64;
        for i in 0..5 {
            write_volatile(to.add(i), *from.add(i));
        }
        write_volatile(&mut ways.reals[w], real);
        write_volatile(&mut ways.last_seen_s[w], now);
        write_volatile(&mut ways.flags[w], flags);
        write_volatile(&mut ways.tags[w], tag(client, real));
    }
}

/// Marks a found flow as seen now, with `flags` added. Stores only what changed, so a busy
/// flow does not dirty its cache line on every packet.
#[inline(always)]
pub fn touch(ways: &mut Ways, found: &Found, now: u32, flags: u32) {
    let w = found.way;
    if w >= FLOW_WAYS {
        return;
    }
    if unsafe { read_volatile(&ways.last_seen_s[w]) } != now {
        unsafe { write_volatile(&mut ways.last_seen_s[w], now) };
    }
    if found.flags | flags != found.flags {
        unsafe { write_volatile(&mut ways.flags[w], found.flags | flags) };
    }
}

/// Whether two keys are equal, compared a 32-bit word at a time. Only for values whose size
/// is a multiple of 4 and that sit 4-aligned: FlowKey, VipKey (aligned by their types), and
/// the addresses at the start of FlowKey's halves and of RealInfo.
#[inline(always)]
pub fn same<T>(stored: &T, key: &T) -> bool {
    let a = stored as *const T as *const u32;
    let b = key as *const T as *const u32;
    let mut diff = 0;
    for i in 0..size_of::<T>() / 4 {
        diff |= unsafe { read_volatile(a.add(i)) ^ *b.add(i) };
    }
    diff == 0
}
