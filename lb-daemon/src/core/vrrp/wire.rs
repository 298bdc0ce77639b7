//! VRRPv3 advertisements on the wire (RFC 5798 section 5): encoding, and a decoder that
//! says why it drops what it drops, so the driver can count each reason. The checksum
//! covers the IP pseudo-header for both families, as keepalived 2.2.7 computes it for
//! IPv4 too (it has no option to leave it out).

use std::net::IpAddr;

use super::Advert;

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// Adverts are sent, and must arrive, with TTL / hop limit 255: one from another link
/// has been through a router.
pub const TTL: u8 = 255;
/// Where adverts go without unicast peers.
pub const GROUP_V4: [u8; 4] = [224, 0, 0, 18];
pub const GROUP_V6: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];

const VERSION: u8 = 3;
const TYPE_ADVERTISEMENT: u8 = 1;
const HEADER: usize = 8;

/// Why an advert was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Shorter than its header or than its addresses.
    Truncated,
    /// Not version 3 (a VRRPv2 speaker, for one).
    Version,
    /// Not an advertisement.
    Type,
    /// Another virtual router's: normal on a shared link, counted apart.
    OtherVrid,
    /// Not 255: it crossed a router.
    Ttl,
    Checksum,
    /// Its length does not match its address count.
    Length,
    /// Its address count, or its addresses, differ from ours: the two sides are
    /// configured differently (keepalived drops these too).
    Addresses,
    /// An address of the other family.
    Family,
}

impl Drop {
    pub const ALL: [Drop; 9] = [
        Drop::Truncated,
        Drop::Version,
        Drop::Type,
        Drop::OtherVrid,
        Drop::Ttl,
        Drop::Checksum,
        Drop::Length,
        Drop::Addresses,
        Drop::Family,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::Version => "version",
            Drop::Type => "type",
            Drop::OtherVrid => "other_vrid",
            Drop::Ttl => "ttl",
            Drop::Checksum => "checksum",
            Drop::Length => "length",
            Drop::Addresses => "addresses",
            Drop::Family => "family",
        }
    }
}

/// The IP header fields the decoder needs (from the socket's ancillary data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
}

/// The VRRP message (IP payload) of an advert from `src` to `dst`.
pub fn encode(vrid: u8, advert: Advert, addresses: &[IpAddr], src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + addresses.len() * 16);
    out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
    out.push(vrid);
    out.push(advert.priority);
    out.push(addresses.len().min(255) as u8);
    out.extend_from_slice(&(advert.interval_cs & 0x0fff).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for a in addresses.iter().take(255) {
        match a {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    let sum = checksum(&out, src, dst);
    out[6..8].copy_from_slice(&sum.to_be_bytes());
    out
}

/// Checks an advert as RFC 5798 section 7.1 asks, against our virtual router (`vrid`,
/// `addresses`); returns what the election needs.
pub fn decode(
    message: &[u8],
    envelope: Envelope,
    vrid: u8,
    addresses: &[IpAddr],
) -> Result<Advert, Drop> {
    if message.len() < HEADER {
        return Err(Drop::Truncated);
    }
    if message[0] >> 4 != VERSION {
        return Err(Drop::Version);
    }
    if message[0] & 0x0f != TYPE_ADVERTISEMENT {
        return Err(Drop::Type);
    }
    if envelope.ttl != TTL {
        return Err(Drop::Ttl);
    }
    if envelope.src.is_ipv4() != envelope.dst.is_ipv4() {
        return Err(Drop::Family);
    }
    let width = if envelope.src.is_ipv4() { 4 } else { 16 };
    let count = usize::from(message[3]);
    let wanted = HEADER + count * width;
    if message.len() < wanted {
        return Err(Drop::Truncated);
    }
    if message.len() != wanted {
        return Err(Drop::Length);
    }
    if checksum(message, envelope.src, envelope.dst) != 0 {
        return Err(Drop::Checksum);
    }
    if message[1] != vrid {
        return Err(Drop::OtherVrid);
    }
    if addresses.iter().any(|a| a.is_ipv4() != envelope.src.is_ipv4()) {
        return Err(Drop::Family);
    }
    let mut theirs: Vec<&[u8]> = message[HEADER..].chunks(width).collect();
    let mut ours: Vec<Vec<u8>> = addresses
        .iter()
        .map(|a| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        })
        .collect();
    theirs.sort();
    ours.sort();
    if theirs.len() != ours.len() || theirs.iter().zip(&ours).any(|(t, o)| *t != o.as_slice()) {
        return Err(Drop::Addresses);
    }
    let interval_cs = u16::from_be_bytes([message[4], message[5]]) & 0x0fff;
    Ok(Advert { priority: message[2], interval_cs })
}

/// The Internet checksum over the pseudo-header (source, destination, protocol 112,
/// length) and `message`; over a message that carries its checksum it is 0.
fn checksum(message: &[u8], src: IpAddr, dst: IpAddr) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    for a in [src, dst] {
        match a {
            IpAddr::V4(a) => add(&a.octets()),
            IpAddr::V6(a) => add(&a.octets()),
        }
    }
    let len = message.len() as u32;
    match src {
        // IPv4: zero, protocol, 16-bit length. IPv6 (RFC 8200 8.1): 32-bit length,
        // three zero bytes, next header. Both sum to the same words.
        IpAddr::V4(_) => add(&[0, PROTO_VRRP, (len >> 8) as u8, len as u8]),
        IpAddr::V6(_) => add(&[
            (len >> 24) as u8,
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0,
            PROTO_VRRP,
        ]),
    }
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn envelope() -> Envelope {
        Envelope { src: v4("192.0.2.2"), dst: IpAddr::from(GROUP_V4), ttl: 255 }
    }

    const VIPS: [&str; 2] = ["192.0.2.10", "192.0.2.11"];

    fn vips() -> Vec<IpAddr> {
        VIPS.iter().map(|a| v4(a)).collect()
    }

    fn advert() -> Vec<u8> {
        let e = envelope();
        encode(51, Advert { priority: 150, interval_cs: 100 }, &vips(), e.src, e.dst)
    }

    #[test]
    fn an_advert_is_laid_out_as_rfc_5798_says() {
        let m = advert();
        // Version 3, type 1; VRID; priority; two addresses; rsvd + 100 cs; checksum.
        assert_eq!(&m[..6], &[0x31, 51, 150, 2, 0x00, 100]);
        assert_eq!(&m[8..], &[192, 0, 2, 10, 192, 0, 2, 11]);
        // Sum over pseudo-header and message, computed by hand: the words of 192.0.2.2,
        // 224.0.0.18, (0, 112), length 16, and the message with a zero checksum.
        let words: u32 = [
            0xc000, 0x0202, 0xe000, 0x0012, 0x0070, 0x0010, 0x3133, 0x9602, 0x0064, 0x0000, 0xc000,
            0x020a, 0xc000, 0x020b,
        ]
        .iter()
        .sum();
        let folded = (words & 0xffff) + (words >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), !(folded as u16));
        assert_eq!(
            decode(&m, envelope(), 51, &vips()),
            Ok(Advert { priority: 150, interval_cs: 100 })
        );
    }

    #[test]
    fn ipv6_adverts_round_trip_with_their_pseudo_header() {
        let src: IpAddr = "fe80::2".parse().unwrap();
        let dst = IpAddr::from(GROUP_V6);
        let vips: Vec<IpAddr> = vec!["2001:db8::10".parse().unwrap()];
        let m = encode(7, Advert { priority: 200, interval_cs: 10 }, &vips, src, dst);
        assert_eq!(m.len(), 8 + 16);
        let e = Envelope { src, dst, ttl: 255 };
        assert_eq!(decode(&m, e, 7, &vips), Ok(Advert { priority: 200, interval_cs: 10 }));
        // The same message from another source fails its checksum.
        let other = Envelope { src: "fe80::3".parse().unwrap(), ..e };
        assert_eq!(decode(&m, other, 7, &vips), Err(Drop::Checksum));
    }

    #[test]
    fn every_malformed_advert_is_dropped_for_its_reason() {
        let e = envelope();
        let ours = vips();
        let check = |m: &[u8], env: Envelope| decode(m, env, 51, &ours);
        let m = advert();
        for cut in 0..m.len() {
            let why = check(&m[..cut], e).unwrap_err();
            assert!(matches!(why, Drop::Truncated | Drop::Length), "cut at {cut}: {why:?}");
        }
        assert_eq!(check(&m[..7], e), Err(Drop::Truncated));
        assert_eq!(check(&m[..12], e), Err(Drop::Truncated));
        let mut longer = m.clone();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(check(&longer, e), Err(Drop::Length));
        let mut v2 = m.clone();
        v2[0] = 0x21;
        assert_eq!(check(&v2, e), Err(Drop::Version));
        let mut t = m.clone();
        t[0] = 0x32;
        assert_eq!(check(&t, e), Err(Drop::Type));
        assert_eq!(check(&m, Envelope { ttl: 254, ..e }), Err(Drop::Ttl));
        let mut flipped = m.clone();
        flipped[2] ^= 1;
        assert_eq!(check(&flipped, e), Err(Drop::Checksum));
        let other = encode(52, Advert { priority: 150, interval_cs: 100 }, &ours, e.src, e.dst);
        assert_eq!(check(&other, e), Err(Drop::OtherVrid));
        let fewer =
            encode(51, Advert { priority: 150, interval_cs: 100 }, &ours[..1], e.src, e.dst);
        assert_eq!(check(&fewer, e), Err(Drop::Addresses));
        let wrong = [v4("192.0.2.10"), v4("192.0.2.99")];
        let wrong = encode(51, Advert { priority: 150, interval_cs: 100 }, &wrong, e.src, e.dst);
        assert_eq!(check(&wrong, e), Err(Drop::Addresses));
        // The same addresses in another order are the same virtual router.
        let reversed: Vec<IpAddr> = ours.iter().rev().copied().collect();
        let reversed =
            encode(51, Advert { priority: 150, interval_cs: 100 }, &reversed, e.src, e.dst);
        assert!(check(&reversed, e).is_ok());
        assert_eq!(
            check(&m, Envelope { dst: "ff02::12".parse().unwrap(), ..e }),
            Err(Drop::Family)
        );
    }

    #[test]
    fn the_reserved_bits_are_ignored_and_the_interval_kept_to_12_bits() {
        let e = envelope();
        let m = encode(51, Advert { priority: 1, interval_cs: 0xffff }, &vips(), e.src, e.dst);
        assert_eq!(decode(&m, e, 51, &vips()).unwrap().interval_cs, 0x0fff);
    }
}
