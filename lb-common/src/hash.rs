//! The flow hashes: the client's (its set in the connection table, its ways' tags) and the
//! whole 5-tuple's (a new connection's Maglev slot). They live here, not in the eBPF crate, so
//! the daemon and the tests compute exactly what the data plane does. MurmurHash3's 32-bit
//! mixing: a few multiplies and rotates, no loop, no table. An established flow's packet
//! pays for the client hash only; an IPv4 address is one word (the other twelve bytes are
//! zero, as the parser leaves them).

use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Bytes `i..i + 4` of an address as a word. Read as one 4-byte value, not four bytes: the
/// data plane's key is written a word at a time, and byte reads of it made the compiler
/// split the key into sixteen-odd byte variables, reassembled with shifts at every use.
#[inline(always)]
pub(crate) fn word(a: &[u8; 16], i: usize) -> u32 {
    a[i..i + 4].try_into().map_or(0, u32::from_le_bytes)
}

/// Mixes an address in: one word for IPv4, four for IPv6.
#[inline(always)]
fn mix_addr(mut h: u32, addr: &[u8; 16], family: u8) -> u32 {
    h = mix(h, word(addr, 0));
    if family != crate::FAMILY_V4 {
        h = mix(h, word(addr, 4));
        h = mix(h, word(addr, 8));
        h = mix(h, word(addr, 12));
    }
    h
}

/// The client side's state, before finishing.
#[inline(always)]
fn client_state(addr: &[u8; 16], port_be: u16, proto: u8, family: u8) -> u32 {
    let h = mix_addr(0x2f69_3bd5, addr, family);
    mix(h, ((port_be as u32) << 16) | ((family as u32) << 8) | proto as u32)
}

/// Hash of a flow's client side (address, port, protocol, family): it picks the flow's set
/// in the connection table, where a NAT reply, which has the client as its destination,
/// must find it too.
#[inline(always)]
pub fn client_hash(addr: &[u8; 16], port_be: u16, proto: u8, family: u8) -> u32 {
    finish(client_state(addr, port_be, proto, family))
}

/// The client hash of a flow (its source side).
#[inline(always)]
pub fn flow_client_hash(key: &FlowKey) -> u32 {
    client_hash(&key.src, key.sport_be, key.proto, key.family)
}

/// Hash of a flow's 5-tuple: the client side's state, then the VIP side.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let client = client_state(&key.src, key.sport_be, key.proto, key.family);
    finish(mix(mix_addr(client, &key.dst, key.family), key.dport_be as u32))
}

/// The Maglev slot of a flow.
#[inline(always)]
pub fn maglev_slot(key: &FlowKey) -> u32 {
    flow_hash(key) % crate::MAGLEV_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 198.51.100.7:40000 -> 192.0.2.10:80, TCP.
    fn client_to_vip() -> FlowKey {
        FlowKey {
            src: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = client_to_vip();
        let h = flow_hash(&base);
        let variants = [
            FlowKey { sport_be: 40001u16.to_be(), ..base },
            FlowKey { dport_be: 81u16.to_be(), ..base },
            FlowKey { proto: crate::PROTO_UDP, ..base },
            FlowKey { family: crate::FAMILY_V6, ..base },
            FlowKey {
                src: {
                    let mut s = base.src;
                    s[3] = 2;
                    s
                },
                ..base
            },
            FlowKey {
                dst: {
                    let mut d = base.dst;
                    d[3] = 11;
                    d
                },
                ..base
            },
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), h, "{v:?}");
        }
        // IPv6: every word of both addresses counts.
        let base6 = FlowKey { family: crate::FAMILY_V6, ..base };
        for i in [0, 4, 8, 12, 15] {
            let mut src = base6;
            src.src[i] ^= 1;
            let mut dst = base6;
            dst.dst[i] ^= 1;
            assert_ne!(flow_hash(&src), flow_hash(&base6), "source byte {i}");
            assert_ne!(flow_hash(&dst), flow_hash(&base6), "destination byte {i}");
        }
    }

    #[test]
    fn a_reply_has_the_client_hash_of_its_request() {
        // A NAT reply (real -> client) finds its request's set: the client side decides.
        let key = client_to_vip();
        let reply = FlowKey {
            src: [10, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: key.src,
            sport_be: 8080u16.to_be(),
            dport_be: key.sport_be,
            ..key
        };
        assert_eq!(
            flow_client_hash(&key),
            client_hash(&reply.dst, reply.dport_be, reply.proto, reply.family)
        );
        let other_client = FlowKey { sport_be: 40001u16.to_be(), ..key };
        assert_ne!(flow_client_hash(&key), flow_client_hash(&other_client));
    }

    #[test]
    fn source_ports_spread_over_the_ring() {
        // 10 000 client ports must land in every tenth of the ring about equally.
        let mut buckets = [0u32; 10];
        for port in 20000u16..30000 {
            let key = FlowKey { sport_be: port.to_be(), proto: 6, family: 4, ..FlowKey::default() };
            buckets[(maglev_slot(&key) as usize * 10) / crate::MAGLEV_SIZE as usize] += 1;
        }
        for b in buckets {
            assert!((850..=1150).contains(&b), "{buckets:?}");
        }
    }
}
