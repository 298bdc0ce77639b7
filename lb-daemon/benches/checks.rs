//! Check load: lbd's checkers (health::spawn, as the driver starts them) probing 1,000
//! and 10,000 reals at a 1 s interval, tcp and http, against servers on loopback
//! addresses (127.1.0.0/16; 127.0.0.0/8 is all local). The checkers run on one thread (a
//! current-thread runtime, so at most one core); the servers on others, not counted. For a
//! window after a warm-up: the checkers' CPU (that thread's getrusage), the process's
//! memory, and how late each probe started against when it was due (each checker's own
//! measure, `Observation::late`): the target is none more than 10 % of its interval
//! late. `cargo xtask bench` runs it; docs/BENCHMARKS.md keeps it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_daemon::config::{Check, HttpCheck, Probe};
use lb_daemon::core::{CheckTarget, Observation};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

const INTERVAL: Duration = Duration::from_secs(1);
const WARMUP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(10);
const TCP_PORT: u16 = 19_001;
const HTTP_PORT: u16 = 19_002;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !lb_lab::is_root() {
        // Not needed for loopback, but thousands of sockets want the root's file limit.
        eprintln!("skipped: the check benchmark raises RLIMIT_NOFILE, which needs root");
        return;
    }
    raise_nofile(65_536);
    servers();
    println!("\nCheck load, interval 1s, timeout 500ms, one checker thread\n");
    println!(
        "| reals | type | CPU of the checker thread | RSS | late p50 | late p99 | late max | started > 100 ms late | failed |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for reals in [1_000u32, 10_000] {
        for http in [false, true] {
            run(reals, http);
        }
    }
}

/// A TCP server that closes each connection at once, and an HTTP one that answers 200 ok;
/// on a runtime of their own, on two threads.
fn servers() {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // A deep backlog: ten thousand connections a second arrive in bursts.
            let listen = |port: u16| {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
                socket.listen(4096).unwrap()
            };
            let (tcp, http) = (listen(TCP_PORT), listen(HTTP_PORT));
            ready_tx.send(()).unwrap();
            tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = tcp.accept().await {
                        drop(s);
                    }
                }
            });
            loop {
                if let Ok((mut s, _)) = http.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        let _ =
                            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    });
                }
            }
        });
    });
    ready.recv().unwrap();
}

fn run(reals: u32, http: bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rss_before = rss_kib();
    let (seen, cpu) = rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<Observation>(65_536);
        let probe = if http {
            Probe::Http(HttpCheck {
                path: "/".into(),
                host: None,
                expect_status: 200,
                expect_body: None,
            })
        } else {
            Probe::Tcp
        };
        let check = Check {
            probe,
            port: None,
            interval: INTERVAL,
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            initial: None,
        };
        let vips = Arc::new(HashSet::new());
        let port = if http { HTTP_PORT } else { TCP_PORT };
        let mut tasks = Vec::new();
        for i in 0..reals {
            let ip = Ipv4Addr::new(127, 1, (i >> 8) as u8, (i & 0xff) as u8 + 1);
            let target = CheckTarget {
                addr: SocketAddr::new(IpAddr::V4(ip), port),
                check: check.clone(),
                seed: u64::from(i) * 0x9e37_79b9_7f4a_7c15,
                service: "bench".into(),
                vip: SocketAddr::from(([192, 0, 2, 10], port)),
                vips: vips.clone(),
            };
            tasks.push(lb_daemon::health::spawn(u64::from(i), target, tx.clone()));
        }
        let start = Instant::now();
        let mut seen: Vec<(Duration, bool)> = Vec::new();
        let mut cpu_at_window = None;
        while start.elapsed() < WARMUP + WINDOW {
            if cpu_at_window.is_none() && start.elapsed() >= WARMUP {
                cpu_at_window = Some((thread_cpu(), Instant::now()));
            }
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Some(o)) if start.elapsed() >= WARMUP => {
                    seen.push((o.late, o.success));
                }
                _ => {}
            }
        }
        let (cpu0, t0) = cpu_at_window.unwrap_or((thread_cpu(), Instant::now()));
        let cpu = (thread_cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        for t in tasks {
            t.abort();
        }
        (seen, cpu)
    });
    let rss = rss_kib().saturating_sub(rss_before);
    let failed = seen.iter().filter(|(_, ok)| !ok).count();
    let mut late: Vec<Duration> = seen.iter().map(|(l, _)| *l).collect();
    late.sort();
    let pct =
        |p: f64| late.get(((late.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    let over = late.iter().filter(|l| **l > INTERVAL / 10).count();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {reals} | {} | {:.0} % of a core | {} MiB | {:.2} ms | {:.2} ms | {:.1} ms | {over} of {} ({:.2} %) | {failed} |",
        if http { "http" } else { "tcp" },
        cpu * 100.0,
        rss / 1024,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(late.last().copied().unwrap_or_default()),
        late.len(),
        over as f64 * 100.0 / late.len().max(1) as f64,
    );
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn raise_nofile(n: u64) {
    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}
