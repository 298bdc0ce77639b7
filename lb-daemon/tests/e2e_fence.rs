//! The fence against a split brain: lbd master, pinned, keepalived 2.2.7 the backup. lbd
//! killed with -9 leaves its VIP on its interface (as keepalived does) and its data plane
//! running; once the lease lapses, the data plane drops ARP requests for the VIP, so every
//! ARP request a host sends is answered by the new master alone. lbd started again
//! preempts under the election's rules, and the dead data plane's drops are in its
//! counters. ARP replies are counted on the wire, every one of them (a client's kernel
//! keeps the first and hides the second: TOOLCHAIN.md).

mod e2e;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::Director;
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, ROLE_CLIENT, ROLE_DIRECTOR, VIP};

fn config(socket: &Path, pin_root: &Path) -> String {
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\n  pin_root: {}\nha:\n  interface: eth0\n  \
         vrid: 51\n  priority: 200\n  advert_interval: 100ms\n  vips: [{VIP}/32]\nservices:\n  \
         - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    check: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    \
         reals:\n{reals}",
        socket.display(),
        pin_root.display()
    )
}

/// Every MAC that answers ARP requests for the VIP, asked from real 1's eth0 (a host that
/// does not answer for its own copy of the VIP).
fn arp_answerers(lab: &Lab, probes: usize, window: Duration) -> BTreeSet<[u8; 6]> {
    lb_lab::failover::arp_answerers(lab, &lb_lab::real_role(0), REALS[0], VIP, probes, window)
        .unwrap()
}

fn mac_of(lab: &Lab, role: &str) -> [u8; 6] {
    lab.in_ns(role, || lb_daemon::link::LinkInfo::read("eth0").unwrap().mac).unwrap()
}

#[test]
fn a_master_killed_with_9_fences_itself_and_only_the_new_master_answers_arp() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("fen").expect("lab");
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    let bpffs = lab.bpffs().unwrap();
    let pin_root = bpffs.join("lbd");
    for i in 0..REALS.len() {
        lab.start_nginx(i).unwrap();
    }
    let socket = lab.dir().join("lbd.sock");
    let path = lab.dir().join("lb.yaml");
    std::fs::write(&path, config(&socket, &pin_root)).unwrap();
    let lbd = env!("CARGO_BIN_EXE_lbd");
    let args = [lbd, "--config", path.to_str().unwrap()];
    lab.spawn_net(ROLE_DIRECTOR, "lbd", &args).unwrap();
    let mut d = Director { lab, socket };
    d.wait_until("lbd master, its reals up", Duration::from_secs(20), |s| {
        s.director.ha_state == "MASTER" && s.reals.iter().all(|r| r.health == Health::Up)
    });
    d.lab.start_keepalived(ROLE_CLIENT, "keepalived", 100, VIP.into()).unwrap();
    let backups = d.lab.wait_log(ROLE_CLIENT, "keepalived", "Entering BACKUP STATE", 0).unwrap();
    let (director, other) = (mac_of(&d.lab, ROLE_DIRECTOR), mac_of(&d.lab, ROLE_CLIENT));
    let window = Duration::from_millis(300);
    assert_eq!(arp_answerers(&d.lab, 3, window), BTreeSet::from([director]), "lbd master");

    // kill -9: the VIP stays on the dead director's eth0, its data plane runs on.
    assert_eq!(d.lab.signal_named(ROLE_DIRECTOR, "lbd", libc::SIGKILL), 1);
    d.lab.stop(ROLE_DIRECTOR, "lbd").unwrap();
    d.lab.wait_log(ROLE_CLIENT, "keepalived", "Entering MASTER STATE", 0).unwrap();
    let shown = d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(shown.contains(&format!("inet {VIP}/32")), "the dead master keeps its VIP: {shown}");
    assert!(d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "link", "show", "eth0"]).unwrap().contains("xdp"));
    // Every request, many times over: the new master alone answers.
    assert_eq!(arp_answerers(&d.lab, 10, window), BTreeSet::from([other]), "split brain");

    // lbd again, on its pinned data plane: backup first, then it preempts (priority 200
    // over 100) and answers alone again; the dead data plane's drops were counted.
    d.lab.spawn_net(ROLE_DIRECTOR, "lbd-again", &args).unwrap();
    d.wait_until("lbd master again", Duration::from_secs(20), |s| s.director.ha_state == "MASTER");
    d.lab.wait_log(ROLE_CLIENT, "keepalived", "Entering BACKUP STATE", backups).unwrap();
    let status = d.lbadm(&["status"]);
    assert!(status.contains("drop_fenced_neighbour"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let heard = arp_answerers(&d.lab, 3, window);
        if heard == BTreeSet::from([director]) {
            break;
        }
        // keepalived gives the VIP up when it hears the higher priority, within an advert.
        assert!(Instant::now() < deadline, "after lbd came back: {heard:?}");
    }
}
