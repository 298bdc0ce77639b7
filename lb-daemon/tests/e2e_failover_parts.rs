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

/// keepalived 2.2.7 from Debian as the other director: its VRRPv3 adverts pass our
/// decoder (checksum over the pseudo-header included), and ours, of a higher priority,
/// make it give the VIP up, its log naming our address and priority.
#[test]
fn keepalived_and_lbd_hear_each_others_vrrpv3_adverts() {
    lb_lab::needs_root!();
    both_hear_each_other(false);
}

#[test]
fn keepalived_and_lbd_hear_each_others_vrrpv3_adverts_over_ipv6() {
    lb_lab::needs_root!();
    both_hear_each_other(true);
}

fn both_hear_each_other(v6: bool) {
    use lb_daemon::core::vrrp::Advert;
    use lb_daemon::core::vrrp::wire;
    use lb_daemon::drivers::vrrp::{VrrpSocket, group};

    let mut lab = Lab::bare(if v6 { "lbk6" } else { "lbk" }).expect("lab");
    let vip: IpAddr = if v6 { VIP6.into() } else { VIP.into() };
    let prefix = if v6 { 128 } else { 32 };
    lab.start_keepalived(ROLE_CLIENT, "keepalived", 200, vip).unwrap();

    // keepalived becomes master (nobody else speaks) and advertises every 100 ms.
    let vips: Vec<IpAddr> = vec![vip];
    let ours = vips.clone();
    let heard = lab
        .in_ns(ROLE_DIRECTOR, move || -> anyhow::Result<(Advert, wire::Envelope)> {
            let link = LinkInfo::read("eth0")?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let src = lb_daemon::drivers::ha::source("eth0", !v6, &ours)?;
                let socket =
                    VrrpSocket::open_when_ready("eth0", link.ifindex, src, Duration::from_secs(20))
                        .await?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let (message, envelope) =
                        tokio::time::timeout_at(deadline, socket.recv()).await??;
                    if let Ok(advert) = wire::decode(&message, envelope, 51, &ours) {
                        return Ok((advert, envelope));
                    }
                }
            })
        })
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("no advert from keepalived: {e:#}\n{}", lab.log(ROLE_CLIENT, "keepalived"))
        });
    assert_eq!(heard.0, Advert { priority: 200, interval_cs: 10 });
    if v6 {
        assert!(matches!(heard.1.src, IpAddr::V6(a) if a.segments()[0] == 0xfe80), "{:?}", heard.1);
    } else {
        assert_eq!(heard.1.src, IpAddr::from(lb_lab::CLIENT));
    }
    assert_eq!(heard.1.dst, group(heard.1.src));
    assert_eq!(heard.1.ttl, 255);

    // Now we advertise priority 250 every 100 ms: keepalived must take us for the master.
    let keepalived_log = lab.dir().join(format!("{ROLE_CLIENT}-keepalived.log"));
    let ours = vips.clone();
    lab.in_ns(ROLE_DIRECTOR, move || -> anyhow::Result<()> {
        let link = LinkInfo::read("eth0")?;
        let socket_src = lb_daemon::drivers::ha::source("eth0", !v6, &ours)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let socket = VrrpSocket::open_when_ready(
                "eth0",
                link.ifindex,
                socket_src,
                Duration::from_secs(20),
            )
            .await?;
            let advert = Advert { priority: 250, interval_cs: 10 };
            let message = wire::encode(51, advert, &ours, socket_src, group(socket_src));
            // Every 100 ms, as an advert_interval of 100 ms would, until keepalived has
            // given the VIP up (or 20 s).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                socket.send(&message, group(socket_src))?;
                let log = std::fs::read_to_string(&keepalived_log).unwrap_or_default();
                let master = log.find("Entering MASTER STATE").unwrap_or(log.len());
                if log[master..].contains("Entering BACKUP STATE")
                    || tokio::time::Instant::now() > deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    })
    .unwrap()
    .unwrap();
    let log = lab.log(ROLE_CLIENT, "keepalived");
    // It was master (it advertised to us), and gave way to our higher priority.
    let master = log.find("Entering MASTER STATE").unwrap_or_else(|| panic!("{log}"));
    assert!(log[master..].contains("Entering BACKUP STATE"), "{log}");
    assert!(log[master..].contains("higher priority 250"), "{log}");
    assert!(!log.to_lowercase().contains("checksum"), "keepalived found a bad checksum: {log}");
    let shown = lab.exec_ok(ROLE_CLIENT, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(
        !shown.contains(&format!("{vip}/{prefix}")),
        "keepalived kept the VIP as backup: {shown}"
    );
}
