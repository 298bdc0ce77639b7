//! The connection table's layout: a set-associative array that the data plane reads and
//! writes with plain loads and stores, no kernel call and no lock (an LRU hash insert cost
//! more than the rest of a new flow's path: docs/BENCHMARKS.md). A flow lives in one of
//! `FLOW_WAYS` ways of the set its client's address and port pick (as IPVS hashes its
//! connections), so a NAT reply, addressed to the client, finds its flow's set too. A way
//! is valid only while its tag matches its client's hash and its real, so a way two CPUs
//! wrote at once reads as empty, never as one flow's client with another flow's real.

use crate::{FlowKey, hash};

/// Ways per set: a flow may sit in any of them.
pub const FLOW_WAYS: usize = 4;
/// Sets per table, a power of two: the low bits of the flow hash pick the set.
pub const FLOW_SETS: u32 = 65_536;

/// What the data plane reads first, one cache line per set: a probe for a flow that is not
/// there touches only this line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ways {
    /// 0: empty. Otherwise [`tag`] of the key's client hash and the real.
    pub tags: [u32; FLOW_WAYS],
    /// The real's id.
    pub reals: [u32; FLOW_WAYS],
    /// `SETTINGS[SETTING_CLOCK]` at the way's last packet; the oldest way is replaced first.
    pub last_seen_s: [u32; FLOW_WAYS],
    /// `FLOW_CLOSING`, `FLOW_NAT`.
    pub flags: [u32; FLOW_WAYS],
}

/// How a NAT flow's replies go back to its client, taken from the request's first frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WayBack {
    /// The client side's next hop (the request's source MAC) and our MAC on that side.
    pub client_mac: [u8; 6],
    pub director_mac: [u8; 6],
    /// The interface the request came in on, where replies leave.
    pub ifindex: u32,
    /// [`WayBack::digest`] of the fields above, the flow's VIP side and its real: a way
    /// whose fields two CPUs wrote at once does not match it.
    pub check: u32,
}

impl WayBack {
    /// What `check` must be, for a way back beside the flow to `vip`:`vip_port_be` on
    /// `real`: the reply is rewritten from that VIP, so the digest covers it too.
    #[inline(always)]
    pub fn digest(&self, vip: &[u8; 16], vip_port_be: u16, real: u32) -> u32 {
        let (c, d) = (&self.client_mac, &self.director_mac);
        let words = [
            u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
            u32::from_ne_bytes([c[4], c[5], d[0], d[1]]),
            u32::from_ne_bytes([d[2], d[3], d[4], d[5]]),
            self.ifindex,
            hash::word(vip, 0),
            hash::word(vip, 4),
            hash::word(vip, 8),
            hash::word(vip, 12),
            vip_port_be as u32,
            real,
        ];
        // A checksum, not a hash to spread keys, computed on every NAT reply: each word
        // times its own odd multiplier, summed. The multiplies do not wait for each other
        // (a chained hash took five times as long), and a word torn from another writer
        // always changes the sum: an odd multiplier is invertible modulo 2^32.
        let mut h = 0x2545_f491u32;
        for (w, k) in words.into_iter().zip(DIGEST_MULTIPLIERS) {
            h = h.wrapping_add(w.wrapping_mul(k));
        }
        h | 1 // never 0, the check of a way back never written
    }
}

/// One odd multiplier per word of [`WayBack::digest`].
const DIGEST_MULTIPLIERS: [u32; 10] = [
    0x9e37_79b1,
    0x85eb_ca6b,
    0xc2b2_ae35,
    0x27d4_eb2f,
    0x1656_67b1,
    0xcc9e_2d51,
    0x1b87_3593,
    0xe654_6b65,
    0x0100_0193,
    0x2f69_3bd5,
];

/// Value of `FLOWS`: four flows (client 5-tuple to real) and, for NAT flows, their ways
/// back. 320 bytes, five cache lines, the ways' header first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: Ways,
    pub keys: [FlowKey; FLOW_WAYS],
    pub backs: [WayBack; FLOW_WAYS],
    pub _pad: [u8; 16],
}

/// A way's tag, of its client's hash and its real. The multiplier is odd, so two reals
/// never give the same tag for one hash: a way holding one writer's tag and another's real
/// fails the check. The VIP side of the key needs no hash: the key is compared whole, and
/// a real serves one VIP, so a VIP side torn from another flow's key names a VIP the
/// real does not serve (the data plane checks), or is this flow's own. 0 is "empty"; the
/// one flow in 2^32 whose tag comes out 0 just is not remembered.
#[inline(always)]
pub fn tag(client_hash: u32, real: u32) -> u32 {
    client_hash ^ real.wrapping_mul(0x9e37_79b1)
}

/// The set of a client hash ([`hash::client_hash`]: the request's source, the reply's
/// destination).
#[inline(always)]
pub fn set_of_hash(client_hash: u32) -> u32 {
    client_hash & (FLOW_SETS - 1)
}

/// The set of a flow.
#[inline(always)]
pub fn set_of(key: &FlowKey) -> u32 {
    set_of_hash(hash::flow_client_hash(key))
}

const _: () = {
    assert!(core::mem::size_of::<Ways>() == 64);
    assert!(core::mem::size_of::<WayBack>() == 20);
    // Destination then source MAC, as the Ethernet header holds them.
    assert!(core::mem::offset_of!(WayBack, director_mac) == 6);
    assert!(core::mem::size_of::<FlowSet>() == 320);
    assert!(FLOW_SETS.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_tells_reals_apart() {
        let hash = 0xdead_beef;
        for real in 0..4096 {
            assert_ne!(tag(hash, real), tag(hash, real + 1));
        }
    }

    #[test]
    fn every_field_of_a_way_back_changes_its_digest() {
        let base = WayBack {
            client_mac: [2, 0, 0, 0, 0, 1],
            director_mac: [2, 0, 0, 0, 0, 2],
            ifindex: 3,
            check: 0,
        };
        let vip = [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let digest = |b: &WayBack| b.digest(&vip, 80u16.to_be(), 5);
        let mut other_vip = vip;
        other_vip[3] = 11;
        let mut other_vip6 = vip;
        other_vip6[15] = 1;
        assert_ne!(base.digest(&other_vip, 80u16.to_be(), 5), digest(&base));
        assert_ne!(base.digest(&other_vip6, 80u16.to_be(), 5), digest(&base));
        assert_ne!(base.digest(&vip, 81u16.to_be(), 5), digest(&base));
        assert_ne!(base.digest(&vip, 80u16.to_be(), 6), digest(&base));
        let variants = [
            WayBack { client_mac: [2, 0, 0, 0, 0, 3], ..base },
            WayBack { client_mac: [3, 0, 0, 0, 0, 1], ..base },
            WayBack { director_mac: [2, 0, 0, 0, 0, 3], ..base },
            WayBack { director_mac: [3, 0, 0, 0, 0, 2], ..base },
            WayBack { ifindex: 4, ..base },
        ];
        for v in variants {
            assert_ne!(digest(&v), digest(&base), "{v:?}");
        }
    }
}
