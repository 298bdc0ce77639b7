//! Failover against keepalived 2.2.7 from Debian as the other director (VRRPv3, IPv4):
//! lbd as backup takes the VIP when keepalived dies, gives it back when keepalived
//! returns with a higher priority and preempts, takes it after Skew_Time when keepalived
//! stops gracefully, and keepalived takes it when lbd stops gracefully. A reload of lbd's
//! services changes nothing of HA. Bounds are the RFC's intervals with generous slack.

mod e2e;

use std::time::{Duration, Instant};

use e2e::Director;
use lb_lab::{CLIENT, Lab, REALS, REALS6, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

const SLACK: Duration = Duration::from_secs(3);

fn config(socket: &std::path::Path, priority: u8) -> String {
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\nha:\n  interface: eth0\n  vrid: 51\n  \
         priority: {priority}\n  advert_interval: 100ms\n  vips: [{VIP}/32]\nservices:\n  - name: web\n    \
         vip: {VIP}:80\n    protocol: tcp\n    check: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    reals:\n{reals}",
        socket.display()
    )
}

fn wait_log(lab: &Lab, name: &str, text: &str, after: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let log = lab.log(ROLE_CLIENT, name);
        if log.get(after..).is_some_and(|l| l.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "keepalived never said {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `done` until it holds; fails with `otherwise` after SLACK.
fn poll(otherwise: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + SLACK;
    while !done() {
        assert!(Instant::now() < deadline, "{otherwise}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn director_has_vip(d: &Director) -> bool {
    let shown = d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    shown.contains(&format!("inet {VIP}/32"))
}

fn state(d: &Director) -> String {
    d.status().map(|s| s.director.ha_state).unwrap_or_default()
}

#[test]
fn lbd_and_keepalived_fail_over_to_each_other() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("lbv").expect("lab");
    // The VIP is lbd's to add and remove on eth0 now, not the lab's on lo.
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    lab.start_keepalived(ROLE_CLIENT, "keepalived", 200, VIP.into()).unwrap();
    wait_log(&lab, "keepalived", "Entering MASTER STATE", 0, Duration::from_secs(20));

    // The notify script writes down every state it is run with.
    let notified = lab.dir().join("notified");
    let script = lab.dir().join("notify.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" >> {}\n", notified.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let notify = format!("  notify: {}\n  vips: [", script.display());
    let d = Director::start(lab, |socket| config(socket, 150).replace("  vips: [", &notify));
    d.wait_until("lbd backup under keepalived", Duration::from_secs(10), |s| {
        s.director.ha_state == "BACKUP" && s.director.master == Some(CLIENT.into())
    });
    assert!(!director_has_vip(&d), "a backup holds no VIP");
    let status = d.lbadm(&["status"]);
    assert!(status.contains("HA state: BACKUP  priority 150  master 198.51.100.1"), "{status}");

    // keepalived dies (kill -9): lbd is master within Master_Down_Interval (0.34 s here).
    d.lab.signal_keepalived("keepalived", libc::SIGKILL);
    let took = d
        .wait_until("lbd master after keepalived died", SLACK, |s| s.director.ha_state == "MASTER");
    assert!(director_has_vip(&d));
    eprintln!("takeover after kill -9: {took:?} (Master_Down_Interval 341 ms)");

    // A reload that changes a service moves nothing of HA.
    let since = d.status().unwrap().director.since_secs.unwrap();
    let path = d.lab.dir().join("lb.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace("interval: 1s", "interval: 2s");
    std::fs::write(&path, text).unwrap();
    let out = d.lbadm(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    let after = d.status().unwrap().director;
    assert_eq!(after.ha_state, "MASTER");
    assert!(after.since_secs.unwrap() >= since, "the reload reset the HA state");
    assert!(director_has_vip(&d));

    // The HA interface down is FAULT: the VIP goes. Back up, lbd is elected again.
    d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "link", "set", "eth0", "down"]).unwrap();
    d.wait_until("lbd in FAULT with its interface down", SLACK, |s| s.director.ha_state == "FAULT");
    assert!(!director_has_vip(&d), "a FAULT director holds no VIP");
    d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "link", "set", "eth0", "up"]).unwrap();
    d.wait_until("lbd master again with its interface up", SLACK, |s| {
        s.director.ha_state == "MASTER"
    });
    assert!(director_has_vip(&d));

    // keepalived back with a higher priority and preempt: it takes the VIP back.
    let mut lab = d.lab;
    lab.start_keepalived(ROLE_CLIENT, "keepalived2", 200, VIP.into()).unwrap();
    let d = Director { lab, socket: d.socket };
    wait_log(&d.lab, "keepalived2", "Entering MASTER STATE", 0, Duration::from_secs(10));
    d.wait_until("lbd backup after keepalived preempted", SLACK, |s| {
        s.director.ha_state == "BACKUP"
    });
    poll("lbd kept the VIP as backup", || !director_has_vip(&d));

    // keepalived stops gracefully: priority 0, lbd takes over after Skew_Time.
    d.lab.signal_keepalived("keepalived2", libc::SIGTERM);
    let took = d.wait_until("lbd master after keepalived's graceful stop", SLACK, |s| {
        s.director.ha_state == "MASTER"
    });
    eprintln!("takeover after a graceful stop: {took:?} (Skew_Time 41 ms)");
    assert!(director_has_vip(&d));

    // keepalived once more, lower this time; then lbd stops gracefully and hands over.
    let mut lab = d.lab;
    lab.start_keepalived(ROLE_CLIENT, "keepalived3", 100, VIP.into()).unwrap();
    let d = Director { lab, socket: d.socket };
    wait_log(&d.lab, "keepalived3", "Entering BACKUP STATE", 0, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&d), "MASTER", "a lower keepalived does not take over");

    // A reload that lowers lbd's priority below keepalived's goes through the election:
    // lbd stays master and advertises 50, and keepalived preempts it in its own time.
    let reload = |d: &Director, from: &str, to: &str| -> String {
        let path = d.lab.dir().join("lb.yaml");
        let text = std::fs::read_to_string(&path).unwrap().replace(from, to);
        std::fs::write(&path, text).unwrap();
        let out = d.lbadm(&["reload"]);
        assert!(out.contains("reloaded"), "{out}");
        out
    };
    let reprioritise = |d: &Director, from: &str, to: &str| {
        let out = reload(d, from, to);
        assert!(!out.contains("restart"), "a priority is a reload's own: {out}");
    };
    let before = d.lab.log(ROLE_CLIENT, "keepalived3").len();
    reprioritise(&d, "priority: 150", "priority: 50");
    assert_eq!(state(&d), "MASTER", "a lowered priority is no drop to backup");
    wait_log(&d.lab, "keepalived3", "Entering MASTER STATE", before, SLACK);
    d.wait_until("lbd backup under the higher keepalived", SLACK, |s| {
        s.director.ha_state == "BACKUP" && s.director.priority == Some(50)
    });
    // Raised again above keepalived's: lbd preempts it.
    reprioritise(&d, "priority: 50", "priority: 150");
    d.wait_until("lbd master again with priority 150", SLACK, |s| s.director.ha_state == "MASTER");
    assert!(director_has_vip(&d));
    // What a reload cannot change while lbd runs, it applies the rest of and says so.
    let out = reload(&d, "advert_interval: 100ms", "advert_interval: 200ms");
    assert!(out.contains("these changes take effect at restart: ha.advert_interval"), "{out}");
    let out = reload(&d, "advert_interval: 200ms", "advert_interval: 100ms");
    assert!(!out.contains("restart"), "back as lbd started: {out}");

    let before = d.lab.log(ROLE_CLIENT, "keepalived3").len();
    d.lab.signal(ROLE_DIRECTOR, "lbd", libc::SIGTERM).unwrap();
    wait_log(&d.lab, "keepalived3", "Entering MASTER STATE", before, SLACK);
    poll("lbd left the VIP behind on a graceful stop", || !director_has_vip(&d));
    // Every transition ran the script, in order, the last (INIT, on the way out) too:
    // lbd lets the queued runs end before it exits.
    let expected = [
        "BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER", "BACKUP", "MASTER", "BACKUP", "MASTER",
        "INIT",
    ];
    let read = || std::fs::read_to_string(&notified).unwrap_or_default();
    let deadline = Instant::now() + SLACK;
    while read().lines().count() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = read();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, expected, "notify ran with {lines:?}");
}

/// The same over IPv6: a virtual router of IPv6 adverts from the link-local addresses,
/// the IPv6 VIP added deprecated and removed with mastership.
#[test]
fn lbd_and_keepalived_fail_over_to_each_other_over_ipv6() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("lbw").expect("lab");
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP6}/128"), "dev", "eth0"])
        .unwrap();
    lab.start_keepalived(ROLE_CLIENT, "keepalived", 200, VIP6.into()).unwrap();
    wait_log(&lab, "keepalived", "Entering MASTER STATE", 0, Duration::from_secs(20));
    let d = Director::start(lab, |socket| {
        let reals: String =
            REALS6.iter().map(|r| format!("      - address: \"[{r}]:80\"\n")).collect();
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nha:\n  interface: eth0\n  vrid: 51\n  \
             priority: 150\n  advert_interval: 100ms\n  vips: [\"{VIP6}/128\"]\nservices:\n  - name: web6\n    \
             vip: \"[{VIP6}]:80\"\n    protocol: tcp\n    check: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    \
             reals:\n{reals}",
            socket.display()
        )
    });
    let has_vip6 = |d: &Director| {
        let shown = d
            .lab
            .exec_ok(ROLE_DIRECTOR, &["ip", "-o", "-6", "addr", "show", "dev", "eth0"])
            .unwrap();
        shown.lines().find(|l| l.contains(&format!("{VIP6}/128"))).map(str::to_string)
    };
    d.wait_until("lbd backup under keepalived over IPv6", Duration::from_secs(20), |s| {
        s.director.ha_state == "BACKUP" && s.director.master.is_some_and(|m| m.is_ipv6())
    });
    assert!(has_vip6(&d).is_none(), "a backup holds no VIP");

    d.lab.signal_keepalived("keepalived", libc::SIGKILL);
    let took = d
        .wait_until("lbd master after keepalived died", SLACK, |s| s.director.ha_state == "MASTER");
    eprintln!("IPv6 takeover after kill -9: {took:?}");
    let line = has_vip6(&d).expect("the master holds the VIP");
    assert!(line.contains("deprecated") && !line.contains("tentative"), "{line}");

    let mut lab = d.lab;
    lab.start_keepalived(ROLE_CLIENT, "keepalived2", 200, VIP6.into()).unwrap();
    let d = Director { lab, socket: d.socket };
    wait_log(&d.lab, "keepalived2", "Entering MASTER STATE", 0, Duration::from_secs(10));
    d.wait_until("lbd backup after keepalived preempted", SLACK, |s| {
        s.director.ha_state == "BACKUP"
    });
    poll("lbd kept the VIP as backup", || has_vip6(&d).is_none());
}

/// Unicast peers instead of the group, both ways: lbd hears keepalived's unicast adverts
/// (backup under it), and keepalived hears lbd's (it stays backup under lbd).
#[test]
fn lbd_and_keepalived_speak_unicast_to_each_other() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("lbu").expect("lab");
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    let unicast = (CLIENT.into(), lb_lab::DIRECTOR.into());
    lab.start_keepalived_unicast(ROLE_CLIENT, "keepalived", 200, VIP.into(), unicast).unwrap();
    wait_log(&lab, "keepalived", "Entering MASTER STATE", 0, Duration::from_secs(20));
    let d = Director::start(lab, |socket| {
        config(socket, 150).replace("  vips: [", &format!("  peers: [{CLIENT}]\n  vips: ["))
    });
    d.wait_until("lbd backup under unicast keepalived", Duration::from_secs(10), |s| {
        s.director.ha_state == "BACKUP" && s.director.master == Some(CLIENT.into())
    });
    d.lab.signal_keepalived("keepalived", libc::SIGKILL);
    d.wait_until("lbd master after keepalived died", SLACK, |s| s.director.ha_state == "MASTER");
    // A lower keepalived that hears lbd's unicast adverts stays backup: were they lost,
    // it would be master after its Master_Down_Interval (0.36 s).
    let mut lab = d.lab;
    lab.start_keepalived_unicast(ROLE_CLIENT, "keepalived2", 100, VIP.into(), unicast).unwrap();
    let d = Director { lab, socket: d.socket };
    wait_log(&d.lab, "keepalived2", "Entering BACKUP STATE", 0, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let log = d.lab.log(ROLE_CLIENT, "keepalived2");
    assert!(!log.contains("Entering MASTER STATE"), "keepalived did not hear lbd:\n{log}");
    assert_eq!(state(&d), "MASTER");

    // A VRRPv2 speaker and a corrupted advert on the link: dropped, counted by reason,
    // shown, and obeyed by nobody.
    d.lab
        .in_ns(ROLE_CLIENT, || -> anyhow::Result<()> {
            use lb_daemon::core::vrrp::{Advert, wire};
            use lb_daemon::drivers::vrrp::{VrrpSocket, group};
            let link = lb_daemon::link::LinkInfo::read("eth0")?;
            let src: std::net::IpAddr = CLIENT.into();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let socket = VrrpSocket::open_when_ready("eth0", link.ifindex, src, SLACK).await?;
                let advert = Advert { priority: 254, interval_cs: 10 };
                let good = wire::encode(51, advert, &[VIP.into()], src, group(src));
                let mut v2 = good.clone();
                v2[0] = 0x21;
                let mut corrupted = good;
                corrupted[2] ^= 0x01;
                socket.send(&v2, group(src))?;
                socket.send(&corrupted, group(src))?;
                anyhow::Ok(())
            })
        })
        .unwrap()
        .unwrap();
    d.wait_until("the bad adverts counted", SLACK, |s| {
        let n =
            |r: &str| s.director.adverts_dropped.iter().find(|c| c.reason == r).map(|c| c.packets);
        n("version") >= Some(1) && n("checksum") >= Some(1)
    });
    let status = d.lbadm(&["status"]);
    assert!(status.contains("VRRP adverts dropped:") && status.contains("version 1"), "{status}");
    assert_eq!(state(&d), "MASTER", "a bad advert of priority 254 is not obeyed");
}
