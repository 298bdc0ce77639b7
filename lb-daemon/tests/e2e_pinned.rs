//! The data plane outlives lbd: pinned under `director.pin_root` (a bpffs the lab mounts),
//! it forwards while lbd is killed with -9 and while it is stopped; a lbd started again
//! takes the pinned program, maps and links over, keeping the flows (a long-lived
//! connection keeps its real and is never broken), the ids and the counters; a build or
//! config whose map layout differs renews that map and says so; `lbd --unpin` removes it
//! all. lbd runs under `nsenter --net`, in the host's mount namespace, as it would under
//! systemd.

mod e2e;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::Director;
use lb_daemon::health::Health;
use lb_lab::failover::Traffic;
use lb_lab::{Lab, REALS, ROLE_CLIENT, ROLE_DIRECTOR, VIP, http_get_on};

fn config(socket: &Path, pin_root: &Path, max_reals: u32) -> String {
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\n  pin_root: {}\n  max_reals: {max_reals}\n\
         services:\n  - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    forwarding: dr\n    \
         check:\n      type: http\n      path: /healthz\n      interval: 200ms\n      timeout: 150ms\n    \
         reals:\n{reals}",
        socket.display(),
        pin_root.display()
    )
}

/// Starts lbd `what` on the director, in the host's mount namespace.
fn start_lbd(d: &mut Director, what: &str, path: &Path) {
    let lbd = env!("CARGO_BIN_EXE_lbd");
    d.lab.spawn_net(ROLE_DIRECTOR, what, &[lbd, "--config", path.to_str().unwrap()]).unwrap();
}

fn xdp_attached(lab: &Lab) -> bool {
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "link", "show", "eth0"]).unwrap().contains("xdp")
}

#[test]
fn the_pinned_data_plane_outlives_lbd_and_a_new_lbd_takes_it_over() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("pn").expect("lab");
    let bpffs = lab.bpffs().unwrap();
    let pin_root = bpffs.join("lbd");
    for i in 0..REALS.len() {
        lab.start_nginx(i).unwrap();
    }
    let socket = lab.dir().join("lbd.sock");
    let path = lab.dir().join("lb.yaml");
    std::fs::write(&path, config(&socket, &pin_root, 64)).unwrap();
    let mut d = Director { lab, socket };
    start_lbd(&mut d, "lbd", &path);
    let all_up = |s: &lb_daemon::control::StatusView| {
        s.reals.len() == REALS.len()
            && s.reals.iter().all(|r| r.health == Health::Up && r.mac.is_some())
    };
    d.wait_until("every real up and resolved", Duration::from_secs(20), all_up);
    for entry in ["maps/FLOWS", "maps/MAGLEV", "lb_xdp", "links/eth0"] {
        assert!(pin_root.join(entry).exists(), "{entry} pinned");
    }

    // A long-lived connection, and new ones all along, from here to the end.
    let vip = SocketAddr::new(IpAddr::V4(VIP), 80);
    let mut held = d.lab.connect(ROLE_CLIENT, vip).unwrap();
    let real = http_get_on(&mut held).unwrap();
    let conns_before = conns(&d);
    let load = Traffic::start(&d.lab, vip, 0, 1, false).unwrap();

    // lbd killed: the data plane goes on, the held connection keeps its real.
    assert_eq!(d.lab.signal_named(ROLE_DIRECTOR, "lbd", libc::SIGKILL), 1);
    d.lab.stop(ROLE_DIRECTOR, "lbd").unwrap();
    assert!(d.status().is_none(), "lbd is gone");
    let answered = d.lab.http_gets(ROLE_CLIENT, vip, 20).unwrap();
    assert!(answered.iter().all(|a| a.is_ok()), "while lbd is down: {answered:?}");
    assert_eq!(http_get_on(&mut held).unwrap(), real);

    // lbd again: it takes the pinned data plane over; flows, ids and counters go on.
    start_lbd(&mut d, "lbd-again", &path);
    d.lab.wait_log(ROLE_DIRECTOR, "lbd-again", "going on from the pinned data plane", 0).unwrap();
    d.wait_until("every real up again", Duration::from_secs(20), all_up);
    assert_eq!(http_get_on(&mut held).unwrap(), real);
    let log = d.lab.log(ROLE_DIRECTOR, "lbd-again");
    assert!(log.contains("data plane pinned by an earlier lbd taken over"), "{log}");
    // Every connection since the snapshot is in the counters on top of what they held:
    // none was zeroed by the restart.
    let early_failures = load.errors();
    let sent = load.stop();
    let conns_after = conns(&d);
    assert!(
        conns_after >= conns_before + sent.new_ok + 20,
        "counters kept: {conns_after} after {conns_before}, with {} + 20 connections since",
        sent.new_ok
    );

    // A graceful stop leaves it forwarding too.
    let load_through_stop = Traffic::start(&d.lab, vip, 0, 1, false).unwrap();
    d.lab.stop(ROLE_DIRECTOR, "lbd-again").unwrap();
    assert!(xdp_attached(&d.lab));
    assert_eq!(http_get_on(&mut held).unwrap(), real);
    let failures = [early_failures, load_through_stop.errors()].concat();
    let stopped = load_through_stop.stop();
    eprintln!(
        "new connections through a kill -9, a restart and a stop: {} answered, {} failed",
        sent.new_ok + stopped.new_ok,
        sent.new_failed + stopped.new_failed
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(sent.new_ok > 0 && stopped.new_ok > 0, "{sent:?} {stopped:?}");

    // Another layout (REALS and REAL_STATS sized for more reals): those maps are renewed and
    // said to be, the rest kept; the held connection survives (FLOWS kept).
    std::fs::write(&path, config(&d.socket, &pin_root, 128)).unwrap();
    start_lbd(&mut d, "lbd-resized", &path);
    d.wait_until("every real up after the resize", Duration::from_secs(20), all_up);
    let log = d.lab.log(ROLE_DIRECTOR, "lbd-resized");
    let renewed: Vec<&str> =
        log.lines().filter(|l| l.contains("replaced by an empty one")).collect();
    // REALS and REAL_STATS for their size; FLOWS with them, whose flows name REALS ids.
    assert_eq!(renewed.len(), 3, "{log}");
    assert!(
        renewed
            .iter()
            .any(|l| l.contains("REALS") && l.contains("max_entries 64, this build's 128")),
        "{log}"
    );
    assert!(renewed.iter().any(|l| l.contains("FLOWS")), "{log}");
    assert!(!log.contains("going on from the pinned data plane"), "no adoption: {log}");
    // The held connection's flow was renewed with the table: its next packet is scheduled
    // again by the same Maglev table, to the same real.
    assert_eq!(http_get_on(&mut held).unwrap(), real);

    // A second lbd on the same pin root is refused before it touches anything.
    let lbd = env!("CARGO_BIN_EXE_lbd");
    let second = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.lab.ns(ROLE_DIRECTOR)))
        .args([lbd, "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && said.contains("another lbd holds"), "{said}");
    assert_eq!(http_get_on(&mut held).unwrap(), real);

    // --unpin is refused while a lbd runs; then it removes it all, and XDP leaves the
    // interface.
    let netns = format!("--net=/run/netns/{}", d.lab.ns(ROLE_DIRECTOR));
    let unpin = || {
        Command::new("nsenter")
            .arg(&netns)
            .args([env!("CARGO_BIN_EXE_lbd"), "--config", path.to_str().unwrap(), "--unpin"])
            .output()
            .unwrap()
    };
    let out = unpin();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop it first")
    );
    assert!(pin_root.join("links/eth0").exists());
    d.lab.stop(ROLE_DIRECTOR, "lbd-resized").unwrap();
    let out = unpin();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pin_root.exists());
    assert!(!xdp_attached(&d.lab), "XDP detached with its link");
    assert!(http_get_on(&mut held).is_err(), "nothing forwards for the VIP any more");
}

fn conns(d: &Director) -> u64 {
    let listing = d.lbadm(&["-L", "-n", "--stats"]);
    let line = listing.lines().find(|l| l.starts_with("TCP")).expect(&listing);
    line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).expect(line)
}
