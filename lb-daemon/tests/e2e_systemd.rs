//! lbd under systemd's Type=notify (examples/lbd.service), with the notification socket
//! systemd would give it: NOTIFY_SOCKET names a datagram socket this test binds. lbd says
//! READY=1 once its control socket answers, RELOADING=1 (with MONOTONIC_USEC, as
//! Type=notify-reload wants) then READY=1 around a SIGHUP reload, with the reload's answer
//! as STATUS=, WATCHDOG=1 at half of WatchdogSec while its driver answers, and STOPPING=1
//! on SIGTERM. Needs root; run by `cargo xtask test`.

use std::cell::Cell;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use lb_daemon::control::{self, Request, Response};
use lb_lab::{Lab, REALS, ROLE_DIRECTOR, VIP};

/// The next notification lbd sent (20 s at most: lbd starting on a busy machine).
fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification from lbd within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next notification but the watchdog's pings, which it counts.
fn next(socket: &UnixDatagram, pings: &Cell<usize>) -> String {
    loop {
        let said = recv(socket);
        if said.trim() != "WATCHDOG=1" {
            return said;
        }
        pings.set(pings.get() + 1);
    }
}

#[test]
fn lbd_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("sdn").expect("lab");
    for i in 0..REALS.len() {
        lab.start_nginx(i).expect("nginx");
    }
    let notify = lab.dir().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let socket = lab.dir().join("lbd.sock");
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    let path = lab.dir().join("lb.yaml");
    std::fs::write(
        &path,
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: web\n    vip: {VIP}:80\n    \
             protocol: tcp\n    check: {{ type: http, path: /healthz, interval: 200ms, timeout: 150ms }}\n    \
             reals:\n{reals}",
            socket.display()
        ),
    )
    .unwrap();
    // As systemd starts it with WatchdogSec=400ms: the watchdog's pid is lbd's own (the
    // shell's, which execs lbd).
    let start = format!(
        "export NOTIFY_SOCKET={} WATCHDOG_USEC=400000 WATCHDOG_PID=$$; exec {} --config {}",
        notify.display(),
        env!("CARGO_BIN_EXE_lbd"),
        path.display()
    );
    lab.spawn(ROLE_DIRECTOR, "lbd", &["sh", "-c", &start]).unwrap();
    let pings = Cell::new(0);
    let next = |socket: &UnixDatagram| next(socket, &pings);

    let ready = next(&systemd);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving 1 services"), "{ready}");
    // Ready means ready: the control socket answers now, not after a retry.
    assert!(matches!(control::call(&socket, &Request::Status), Ok(Response::Status(_))));

    lab.signal(ROLE_DIRECTOR, "lbd", libc::SIGHUP).unwrap();
    let reloading = next(&systemd);
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let reloaded = next(&systemd);
    assert!(reloaded.contains("READY=1") && reloaded.contains("STATUS=reloaded"), "{reloaded}");

    // `lbadm reload` (the unit's ExecReload) tells systemd the same, through the driver.
    let answer = control::call(&socket, &Request::Reload).unwrap();
    assert!(matches!(&answer, Response::Ok { message } if message.contains("reloaded")));
    assert!(next(&systemd).contains("RELOADING=1"));
    assert!(next(&systemd).contains("STATUS=reloaded"));

    // A reload refused says why, and lbd is ready still, with the config it had.
    std::fs::write(&path, "director: [").unwrap();
    lab.signal(ROLE_DIRECTOR, "lbd", libc::SIGHUP).unwrap();
    let _reloading = next(&systemd);
    let refused = next(&systemd);
    assert!(refused.contains("READY=1") && refused.contains("STATUS=reload refused"), "{refused}");
    assert!(refused.contains("lb.yaml:1:"), "the problem, located: {refused}");

    // The watchdog's pings, every 200 ms once the driver answered: two more come.
    for _ in 0..2 {
        let said = recv(&systemd);
        assert_eq!(said.trim(), "WATCHDOG=1", "only the watchdog's pings now");
    }

    lab.signal(ROLE_DIRECTOR, "lbd", libc::SIGTERM).unwrap();
    let stopping = next(&systemd);
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
}
