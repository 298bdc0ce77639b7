//! End to end, the control socket under abuse: the real lbd in a namespace lab with a low
//! RLIMIT_NOFILE, more idle clients than it has descriptors, a request of many megabytes,
//! garbage and non-UTF-8 requests, and a burst of listings while a real's health changes.
//! lbd must stay up, keep forwarding and keep answering (docs/ARCHITECTURE.md, "Input
//! policy: control requests"). Needs root; run by `cargo xtask test`.

mod e2e;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Director, tally};
use lb_daemon::control::{self, Request, Response};
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, ROLE_CLIENT, ROLE_DIRECTOR, VIP};

const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 300;
const FALL: u64 = 2;

fn config(socket: &Path) -> String {
    let reals: String = REALS.iter().map(|a| format!("      - address: {a}:80\n")).collect();
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    forwarding: dr\n    on_failure: quiesce\n    check:\n      type: http\n      path: /healthz\n      expect_body: ok\n      interval: {INTERVAL_MS}ms\n      timeout: {TIMEOUT_MS}ms\n      rise: 2\n      fall: {FALL}\n    reals:\n{reals}",
        socket.display()
    )
}

/// nginx on every real, then lbd under `prlimit --nofile=N:N` (systemd's default soft
/// limit is 1024), and waits until every real is up and resolved.
fn start(prefix: &str, nofile: u32) -> (Director, i32) {
    let mut lab = Lab::new(prefix).expect("lab");
    for i in 0..REALS.len() {
        lab.start_nginx(i).expect("nginx");
    }
    let socket = lab.dir().join("lbd.sock");
    let path = lab.dir().join("lb.yaml");
    std::fs::write(&path, config(&socket)).unwrap();
    let limit = format!("--nofile={nofile}:{nofile}");
    let lbd = env!("CARGO_BIN_EXE_lbd");
    lab.spawn(
        ROLE_DIRECTOR,
        "lbd",
        &["prlimit", &limit, "--", lbd, "--config", path.to_str().unwrap()],
    )
    .unwrap();
    let d = Director { lab, socket };
    d.wait_until("every real up and resolved", Duration::from_secs(20), |s| {
        s.reals.iter().all(|r| r.health == Health::Up && r.mac.is_some())
    });
    let pid = lbd_pid(&d);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open = limits.lines().find(|l| l.starts_with("Max open files")).expect(&limits);
    assert_eq!(
        open.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        [nofile.to_string(), nofile.to_string()],
        "{open}"
    );
    (d, pid)
}

/// The pid of the lbd running in the lab's director namespace.
fn lbd_pid(d: &Director) -> i32 {
    let out = Command::new("ip").args(["netns", "pids", &d.lab.ns(ROLE_DIRECTOR)]).output();
    let out = String::from_utf8(out.unwrap().stdout).unwrap();
    out.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "lbd")
        })
        .expect("lbd running in the director's namespace")
}

/// lbd's process is there and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).expect(&status);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises this test process's soft RLIMIT_NOFILE to at least `n` (within the hard
/// limit): the test holds more sockets than lbd may.
fn raise_nofile(n: u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process, with a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_cur < n {
            l.rlim_cur = n.min(l.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        }
    }
    assert!(l.rlim_cur >= n, "this test needs {n} descriptors, the hard limit is {}", l.rlim_max);
}

/// Sends `bytes` as one connection's request (the write side is shut after it) and
/// reads the one line that answers it.
fn raw(socket: &Path, bytes: &[u8]) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // lbd may answer and close before reading everything: its answer is still there.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("reading the answer: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("not a JSON response ({e}): {line:?}"))
}

fn error_of(what: &str, answer: Result<Response, String>) -> String {
    match answer {
        Ok(Response::Error { message }) => message,
        other => panic!("{what}: want an error answer, got {other:?}"),
    }
}

fn web() -> SocketAddr {
    SocketAddr::new(VIP.into(), 80)
}

/// Runs `lbadm -L -n` until it succeeds; its output.
fn list_when_served(d: &Director, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_lbadm"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["-L", "-n"])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            start.elapsed() < limit,
            "lbadm -L -n did not answer within {limit:?}: {}\nlbd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.lab.log(ROLE_DIRECTOR, "lbd")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn idle_clients_beyond_the_descriptor_limit_stop_neither_lbd_nor_forwarding() {
    lb_lab::needs_root!();
    raise_nofile(2048);
    let (d, pid) = start("lbca", 256);
    // More idle connections than lbd has descriptors: each sends nothing.
    let mut idle: Vec<UnixStream> =
        (0..400).filter_map(|_| UnixStream::connect(&d.socket).ok()).collect();
    assert_eq!(
        idle.len(),
        400,
        "lbd stopped accepting\nlbd log:\n{}",
        d.lab.log(ROLE_DIRECTOR, "lbd")
    );
    // The last is told busy at once, so lbd went through all of them (in order).
    let mut last = idle.pop().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut told = String::new();
    let _ = BufReader::new(&mut last).read_line(&mut told);
    let message = error_of(
        "the 400th idle client",
        serde_json::from_str(&told).map_err(|e| format!("{e}: {told:?}")),
    );
    assert!(message.starts_with(control::BUSY), "{message}");
    assert!(alive(pid), "lbd exited\nlbd log:\n{}", d.lab.log(ROLE_DIRECTOR, "lbd"));
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    eprintln!("lbd holds {open} descriptors of its 256 with 399 clients connected");
    assert!(open < 256 - 16, "{open} descriptors open");
    // The data plane forwards meanwhile, and the checks (which need descriptors) keep
    // the reals up.
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 20).unwrap());
    assert_eq!(count.values().sum::<usize>(), 20, "{count:?}");
    assert!(alive(pid), "lbd exited\nlbd log:\n{}", d.lab.log(ROLE_DIRECTOR, "lbd"));

    // The idle ones time out (lbd closes them, the client keeps them open), and lbd
    // answers again: the read timeout is 5 s.
    let list = list_when_served(&d, Duration::from_secs(20));
    assert!(list.contains(&format!("TCP  {VIP}:80 mh\n")), "{list}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answered = 0;
    for mut s in idle {
        let left =
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            // lbd closed it with our (empty) request unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle connection lbd should have closed: {e}"),
        }
        // What lbd said, if anything, is a JSON error line (busy, or no request in time).
        if !got.is_empty() {
            let line = String::from_utf8(got).unwrap();
            let answer = serde_json::from_str::<Response>(line.trim_end());
            assert!(matches!(answer, Ok(Response::Error { .. })), "{line:?}");
            answered += 1;
        }
    }
    assert!(answered > 0, "lbd closed the idle connections without a word");
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 10).unwrap());
    assert_eq!(count.values().sum::<usize>(), 10, "{count:?}");
    assert!(d.status().is_some_and(|s| s.reals.iter().all(|r| r.health == Health::Up)));
    assert!(alive(pid));
}

#[test]
fn huge_garbage_and_non_utf8_requests_get_json_errors() {
    lb_lab::needs_root!();
    let (d, pid) = start("lbcb", 1024);

    // A request of 32 MiB without a newline: refused once it passes the limit, and lbd's
    // peak RSS does not grow by anything like its size.
    let hwm = status_kb(pid, "VmHWM:");
    let size = 32 << 20;
    let mut big = br#"{"request":"list","pad":""#.to_vec();
    big.resize(size, b'a');
    let s = UnixStream::connect(&d.socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = w.write_all(&big);
        let _ = w.shutdown(Shutdown::Write);
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("an answer to the huge request");
    writer.join().unwrap();
    let message =
        error_of("32 MiB", serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")));
    assert!(message.contains("too large"), "{message}");
    let grown = status_kb(pid, "VmHWM:").saturating_sub(hwm);
    assert!(grown < 8 << 10, "lbd's peak RSS grew by {grown} kB for a {size}-byte request");

    // Just under the limit is still a request.
    let mut padded = br#"{"request":"status""#.to_vec();
    padded.resize(60_000, b' ');
    padded.extend_from_slice(b"}\n");
    assert!(matches!(raw(&d.socket, &padded), Ok(Response::Status(_))));

    // Garbage of every kind gets an error in JSON, never silence or a crash.
    let vip = format!("{VIP}:80");
    let real = format!("{}:80", REALS[0]);
    let set_weight = |vip: &str, real: &str, weight: &str| {
        format!(
            r#"{{"request":"set_weight","protocol":"tcp","vip":"{vip}","real":"{real}","weight":{weight}}}"#
        )
        .into_bytes()
    };
    let deep = [vec![b'['; 50_000], b"\n".to_vec()].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"hello\n".to_vec(), "bad request"),
        ("not UTF-8", b"\xff\xfe\x00\x80garbage\n".to_vec(), "UTF-8"),
        ("not UTF-8 in a string", b"{\"request\":\"li\xffst\"}\n".to_vec(), "UTF-8"),
        ("empty", Vec::new(), "empty"),
        ("NULs", b"\0\0\0\0\n".to_vec(), "bad request"),
        ("an unknown request", br#"{"request":"shutdown"}"#.to_vec(), "bad request"),
        ("nested 50000 deep", deep, "bad request"),
        ("weight beyond u32", set_weight(&vip, &real, "99999999999999"), "bad request"),
        ("a negative weight", set_weight(&vip, &real, "-1"), "bad request"),
        ("weight u32::MAX", set_weight(&vip, &real, "4294967295"), "65535"),
        ("an unknown VIP", set_weight("198.51.100.99:80", &real, "1"), "no service"),
        ("an unknown real", set_weight(&vip, "10.9.9.9:80", "1"), "no real"),
        ("a VIP that is no address", set_weight("no:where", &real, "1"), "bad request"),
    ];
    for (what, bytes, want) in cases {
        let message = error_of(what, raw(&d.socket, &bytes));
        assert!(message.contains(want), "{what}: {message:?} does not say {want:?}");
    }

    // Nothing changed, lbd is whole.
    assert!(alive(pid));
    let list = d.lbadm(&["-L", "-n"]);
    for r in REALS {
        assert!(
            list.contains(&format!("  -> {:<28} Route   1      ", format!("{r}:80"))),
            "{list}"
        );
    }
    assert_eq!(
        tally(&d.lab.http_gets(ROLE_CLIENT, web(), 10).unwrap()).values().sum::<usize>(),
        10
    );
}

#[test]
fn a_burst_of_listings_holds_up_neither_status_nor_a_health_change() {
    lb_lab::needs_root!();
    raise_nofile(4096);
    let (mut d, pid) = start("lbcd", 4096);
    let socket = d.socket.clone();
    let list = br#"{"request":"list"}
"#;

    // Clients listing in a loop for the whole test...
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, socket) = (stop.clone(), socket.clone());
            std::thread::spawn(move || {
                let mut listed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match raw(&socket, list) {
                        Ok(Response::List { .. }) => listed += 1,
                        Ok(Response::Error { message }) if message.starts_with("busy") => {}
                        other => panic!("a listing: {other:?}"),
                    }
                }
                listed
            })
        })
        .collect();
    // ...and a burst of 2000 listings at once, left waiting for their answers.
    let burst: Vec<UnixStream> = (0..2000)
        .filter_map(|_| {
            let mut s = UnixStream::connect(&socket).ok()?;
            let _ = s.write_all(list);
            Some(s)
        })
        .collect();

    // Meanwhile status answers promptly, and a real's failure is seen in its bound.
    d.lab.stop(&lb_lab::real_role(0), "nginx").unwrap();
    for _ in 0..5 {
        let asked = Instant::now();
        let status = d.status();
        let took = asked.elapsed();
        assert!(status.is_some(), "no status during the burst");
        assert!(took < Duration::from_secs(3), "status took {took:?} during the burst");
    }
    let bound = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 3000);
    let took = d.wait_until("real1 down during the burst", bound, |s| {
        s.reals.iter().any(|r| r.address.ip() == REALS[0] && r.health == Health::Down)
    });
    eprintln!("real1 went down {took:?} into the burst (bound {bound:?})");

    stop.store(true, Ordering::Relaxed);
    let listed: usize = loops.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(listed > 0, "the looping clients got no listing");
    // Every burst connection got an answer: a listing, or busy (try again).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut lists, mut busy) = (0, 0);
    for s in burst {
        let left =
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::List { .. }) => lists += 1,
            Ok(Response::Error { message }) if message.starts_with("busy") => busy += 1,
            other => panic!("a burst listing: {other:?} ({line:?})"),
        }
    }
    eprintln!("burst: {lists} listings, {busy} told busy; looping clients: {listed} listings");
    assert!(lists > 0);
    assert!(alive(pid));
    // The listing's output is the usual one.
    let out = d.lbadm(&["-L", "-n"]);
    assert!(
        out.contains(&format!("  -> {:<28} Route   0      ", format!("{}:80", REALS[0]))),
        "{out}"
    );
    let _ = control::call(&d.socket, &Request::Status).unwrap();
}
