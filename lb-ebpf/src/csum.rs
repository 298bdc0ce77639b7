//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), for
//! rewriting addresses and ports without summing the whole packet again.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
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
    !fold(sum)
}
