//! The benchmark floor: the least an L4 balancer must do to a packet (parse Ethernet and
//! IP, swap the MACs, send it back out). `cargo xtask bench` reports every path of lb_xdp
//! as a ratio to this program, measured in the same run.

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};

use crate::parse::bytes_at;

#[xdp]
pub fn floor(ctx: XdpContext) -> u32 {
    let Ok(eth) = bytes_at::<14>(&ctx, 0) else {
        return XDP_PASS;
    };
    let eth = unsafe { &mut *eth };
    let ip_version = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => 4,
        0x86dd => 6,
        _ => return XDP_PASS,
    };
    let Ok(ip) = bytes_at::<1>(&ctx, 14) else {
        return XDP_PASS;
    };
    if unsafe { (*ip)[0] } >> 4 != ip_version {
        return XDP_PASS;
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&dst);
    XDP_TX
}
