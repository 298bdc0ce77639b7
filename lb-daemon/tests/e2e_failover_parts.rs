//! The failover drivers against a real kernel, in a namespace lab: the VIPs added and
//! removed over rtnetlink (IPv6 deprecated, without DAD), and the announcements of a
//! takeover moving a client's neighbour entries for the VIPs to the new master's MAC.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_daemon::drivers::{addresses, announce};
use lb_daemon::link::LinkInfo;
use lb_lab::{Lab, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

const STALE_MAC: &str = "02:00:de:ad:be:ef";

fn neigh(lab: &Lab, vip: IpAddr) -> String {
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    lab.exec_ok(ROLE_CLIENT, &["ip", family, "neigh", "show", &vip.to_string(), "dev", "eth0"])
        .unwrap()
}

#[test]
fn vips_are_added_and_removed_and_a_takeover_moves_the_clients_entries() {
    lb_lab::needs_root!();
    let lab = Lab::bare("lbf").expect("lab");
    let vips: Vec<IpAddr> = vec![VIP.into(), VIP6.into()];

    // The client believes the VIPs are at another MAC (an old master's).
    for vip in &vips {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        lab.exec_ok(
            ROLE_CLIENT,
            &[
                "ip",
                family,
                "neigh",
                "replace",
                &vip.to_string(),
                "lladdr",
                STALE_MAC,
                "dev",
                "eth0",
                "nud",
                "stale",
            ],
        )
        .unwrap();
    }

    let added = vips.clone();
    let mac = lab
        .in_ns(ROLE_DIRECTOR, move || -> anyhow::Result<[u8; 6]> {
            let link = LinkInfo::read("eth0")?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(connection);
                addresses::add(&handle, link.ifindex, &added).await?;
                // Twice is once: a VIP already there is left alone.
                addresses::add(&handle, link.ifindex, &added).await
            })?;
            let announcer = announce::Announcer::new(link.ifindex)?;
            for vip in &added {
                announcer.send(&announce::announcement(link.mac, *vip))?;
            }
            Ok(link.mac)
        })
        .unwrap()
        .expect("VIPs added and announced");

    let shown = lab.exec_ok(ROLE_DIRECTOR, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    let v4 = shown.lines().find(|l| l.contains(&format!("inet {VIP}/32"))).expect(&shown);
    assert!(!v4.contains("tentative"), "{v4}");
    let v6 = shown.lines().find(|l| l.contains(&format!("inet6 {VIP6}/128"))).expect(&shown);
    assert!(v6.contains("deprecated") && !v6.contains("tentative"), "{v6}");

    // The client's entries now name the director: the announcements were heard.
    let want = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let deadline = Instant::now() + Duration::from_secs(10);
    for vip in &vips {
        loop {
            let entry = neigh(&lab, *vip);
            if entry.contains(&want) {
                break;
            }
            assert!(Instant::now() < deadline, "{vip}: {entry} (wanted {want})");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let removed = vips.clone();
    lab.in_ns(ROLE_DIRECTOR, move || -> anyhow::Result<()> {
        let link = LinkInfo::read("eth0")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            addresses::remove(&handle, link.ifindex, &removed).await?;
            addresses::remove(&handle, link.ifindex, &removed).await
        })
    })
    .unwrap()
    .expect("VIPs removed");
    let shown = lab.exec_ok(ROLE_DIRECTOR, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(
        !shown.contains(&format!("{VIP}/32")) && !shown.contains(&format!("{VIP6}/128")),
        "{shown}"
    );
}
