//! Internet checksums: incremental updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), for
//! rewriting addresses and ports without summing the whole packet again, and the fold and
//! IPv4 header sum of the headers the data plane writes.

/// A ones' complement sum of 16- or 32-bit words folded to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of an IPv4 header (20 bytes) whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < h.len() {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    !fold(sum)
}

/// `csum` (the value stored in the header) after the bytes `old` became `new`; N is even
/// and at most 16, so the loop unrolls into straight-line code.
#[inline(always)]
pub fn update<const N: usize>(csum: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = (!csum) as u32;
    let mut i = 0;
    while i < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += (!o) as u32 + n as u32;
        i += 2;
    }
    !fold(sum as u64)
}
