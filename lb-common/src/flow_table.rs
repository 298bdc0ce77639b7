//! The connection tables' layout: set-associative arrays that the data plane reads and
//! writes with plain loads and stores, no kernel call and no lock (an LRU hash insert cost
//! more than the rest of a new flow's path: docs/BENCHMARKS.md). A flow lives in one of
//! `FLOW_WAYS` ways of the set its hash picks. A way is valid only while its tag matches
//! the hash of its key and what it holds, so a way two CPUs wrote at once reads as empty,
//! never as one flow's key with another flow's real.

use crate::{FlowKey, NatReply};

/// Ways per set: a flow may sit in any of them.
pub const FLOW_WAYS: usize = 4;
/// Sets per table, a power of two: the low bits of the flow hash pick the set.
pub const FLOW_SETS: u32 = 65_536;

/// What the data plane reads first, one cache line per set: a probe for a flow that is not
/// there touches only this line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ways {
    /// 0: empty. Otherwise [`tag`] of the key's hash, the real and the salt.
    pub tags: [u32; FLOW_WAYS],
    /// The real's id.
    pub reals: [u32; FLOW_WAYS],
    /// `SETTINGS[SETTING_CLOCK]` at the way's last packet; the oldest way is replaced first.
    pub last_seen_s: [u32; FLOW_WAYS],
    /// FLOWS: `FLOW_CLOSING`. NAT_REPLIES: the reply's [`NatReply::check`], the salt.
    pub flags: [u32; FLOW_WAYS],
}

/// Value of `FLOWS`: client 5-tuple to real. 256 bytes, four cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: Ways,
    pub keys: [FlowKey; FLOW_WAYS],
    pub _pad: [u8; 32],
}

/// Value of `NAT_REPLIES`: a real's reply 5-tuple to the way back. 448 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatSet {
    pub ways: Ways,
    pub keys: [FlowKey; FLOW_WAYS],
    pub replies: [NatReply; FLOW_WAYS],
    pub _pad: [u8; 32],
}

/// A way's tag. The multiplier is odd, so two reals (or salts) never give the same tag for
/// one hash: a way holding one writer's tag and another's real fails the check. 0 is
/// "empty"; the one flow in 2^32 whose tag comes out 0 just is not remembered.
#[inline(always)]
pub fn tag(hash: u32, real: u32, salt: u32) -> u32 {
    hash ^ (real ^ salt).wrapping_mul(0x9e37_79b1)
}

/// The set of a flow hash.
#[inline(always)]
pub fn set_of(hash: u32) -> u32 {
    hash & (FLOW_SETS - 1)
}

impl NatReply {
    /// A digest of every field, kept in the way's `flags`: a reply half written by one CPU
    /// and half by another does not match it.
    #[inline(always)]
    pub fn check(&self) -> u32 {
        let mut h = 0x2545_f491u32;
        let words = [
            u32::from_ne_bytes([
                self.vip_addr[0],
                self.vip_addr[1],
                self.vip_addr[2],
                self.vip_addr[3],
            ]),
            u32::from_ne_bytes([
                self.vip_addr[4],
                self.vip_addr[5],
                self.vip_addr[6],
                self.vip_addr[7],
            ]),
            u32::from_ne_bytes([
                self.vip_addr[8],
                self.vip_addr[9],
                self.vip_addr[10],
                self.vip_addr[11],
            ]),
            u32::from_ne_bytes([
                self.vip_addr[12],
                self.vip_addr[13],
                self.vip_addr[14],
                self.vip_addr[15],
            ]),
            u32::from_ne_bytes([
                self.client_mac[0],
                self.client_mac[1],
                self.client_mac[2],
                self.client_mac[3],
            ]),
            u32::from_ne_bytes([
                self.client_mac[4],
                self.client_mac[5],
                self.director_mac[0],
                self.director_mac[1],
            ]),
            u32::from_ne_bytes([
                self.director_mac[2],
                self.director_mac[3],
                self.director_mac[4],
                self.director_mac[5],
            ]),
            self.vip_port_be as u32,
            self.ifindex,
            self.vip_index,
            self.real,
        ];
        for w in words {
            h = (h ^ w).wrapping_mul(0x0100_0193).rotate_left(5);
        }
        h
    }
}

const _: () = {
    assert!(core::mem::size_of::<Ways>() == 64);
    assert!(core::mem::size_of::<FlowSet>() == 256);
    assert!(core::mem::size_of::<NatSet>() == 448);
    assert!(FLOW_SETS.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_tells_reals_and_salts_apart() {
        let hash = 0xdead_beef;
        for real in 0..4096 {
            assert_ne!(tag(hash, real, 0), tag(hash, real + 1, 0));
            assert_ne!(tag(hash, real, 7), tag(hash, real, 8));
        }
    }

    #[test]
    fn every_reply_field_changes_the_check() {
        let base = NatReply {
            vip_addr: [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            client_mac: [2, 0, 0, 0, 0, 1],
            director_mac: [2, 0, 0, 0, 0, 2],
            vip_port_be: 80u16.to_be(),
            ifindex: 3,
            vip_index: 1,
            real: 5,
            ..NatReply::default()
        };
        let variants = [
            NatReply { vip_addr: [192, 0, 2, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ..base },
            NatReply { client_mac: [2, 0, 0, 0, 0, 3], ..base },
            NatReply { director_mac: [2, 0, 0, 0, 0, 3], ..base },
            NatReply { vip_port_be: 81u16.to_be(), ..base },
            NatReply { ifindex: 4, ..base },
            NatReply { vip_index: 2, ..base },
            NatReply { real: 6, ..base },
        ];
        for v in variants {
            assert_ne!(v.check(), base.check(), "{v:?}");
        }
    }
}
