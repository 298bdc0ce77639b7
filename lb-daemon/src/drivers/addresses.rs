//! The VIPs on the HA interface, added while master and removed otherwise, over
//! rtnetlink (as `ip addr add|del`). IPv6 VIPs are added deprecated (preferred lifetime 0,
//! so the kernel never picks one as the source of the director's own connections, the
//! health checks among them) and without duplicate address detection (a VIP taken over
//! must answer at once, not after DAD's second; the old master is fenced or gone).

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use tracing::{debug, info};

/// Full-length prefixes: a VIP is one address, and adds no route beyond itself.
fn prefix_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Adds `vips` to interface `ifindex`; one already there is left as it is.
pub async fn add(handle: &rtnetlink::Handle, ifindex: u32, vips: &[IpAddr]) -> Result<()> {
    for &vip in vips {
        if present(handle, ifindex, vip).await? {
            debug!(%vip, "VIP already on the interface");
            continue;
        }
        let mut request = handle.address().add(ifindex, vip, prefix_len(vip));
        if vip.is_ipv6() {
            let message = request.message_mut();
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = u32::MAX;
            message.attributes.push(AddressAttribute::CacheInfo(lifetimes));
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.with_context(|| format!("adding VIP {vip}"))?;
        info!(%vip, ifindex, "VIP added");
    }
    Ok(())
}

/// Removes `vips` from interface `ifindex`; one not there is not an error.
pub async fn remove(handle: &rtnetlink::Handle, ifindex: u32, vips: &[IpAddr]) -> Result<()> {
    for &vip in vips {
        for message in find(handle, ifindex, vip).await? {
            handle
                .address()
                .del(message)
                .execute()
                .await
                .with_context(|| format!("removing VIP {vip}"))?;
            info!(%vip, ifindex, "VIP removed");
        }
    }
    Ok(())
}

async fn present(handle: &rtnetlink::Handle, ifindex: u32, vip: IpAddr) -> Result<bool> {
    Ok(!find(handle, ifindex, vip).await?.is_empty())
}

async fn find(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    vip: IpAddr,
) -> Result<Vec<AddressMessage>> {
    handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .set_address_filter(vip)
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("looking for VIP {vip}"))
}
