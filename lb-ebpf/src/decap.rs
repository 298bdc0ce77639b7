//! The real server's side of tunnel mode: strips the outer IPv4 (protocol 4) or IPv6
//! (next header 41) header of packets whose inner destination is one of this real's VIPs,
//! and passes the inner packet to the kernel, which delivers it to the VIP on lo. It
//! stands in for the ipip / ip6_tunnel modules, which many real servers (and this
//! project's test machines) do not have. Everything else passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
};

/// The VIPs this real accepts tunnelled packets for: 16-byte addresses (IPv4 in the first
/// four). Writer: `lbadm realserver setup`; pinned with the program.
#[map]
static DECAP_VIPS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);

const ETH: usize = 14;

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let _ = decap(&ctx);
    XDP_PASS
}

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    (start + offset + N <= end).then_some((start + offset) as *mut [u8; N])
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<()> {
    let eth: [u8; 14] = unsafe { *bytes_at::<14>(ctx, 0)? };
    let (outer_len, inner_dst_at, ethertype) = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => {
            let ip = unsafe { &*bytes_at::<20>(ctx, ETH)? };
            // Option-less, unfragmented IP-in-IP only.
            if ip[0] != 0x45 || ip[9] != 4 || (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
                return None;
            }
            (20, ETH + 20 + 16, [0x08, 0x00])
        }
        0x86dd => {
            let ip = unsafe { &*bytes_at::<40>(ctx, ETH)? };
            if ip[6] != 41 {
                return None;
            }
            (40, ETH + 40 + 24, [0x86, 0xdd])
        }
        _ => return None,
    };
    let mut vip = [0u8; 16];
    if outer_len == 20 {
        vip[..4].copy_from_slice(unsafe { &*bytes_at::<4>(ctx, inner_dst_at)? });
    } else {
        vip = unsafe { *bytes_at::<16>(ctx, inner_dst_at)? };
    }
    unsafe { DECAP_VIPS.get(&vip) }?;
    // The Ethernet header moves to just before the inner packet, then the head follows.
    let l2 = unsafe { &mut *bytes_at::<14>(ctx, outer_len)? };
    l2[..12].copy_from_slice(&eth[..12]);
    l2[12..14].copy_from_slice(&ethertype);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return None;
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
