//! What a failover is measured by, from the outside: client traffic through the VIP (long-
//! lived connections exchanging a request every 50 ms, and loops of new requests), and a
//! watch on the switch's ports of the directors that records when each forwarded a frame
//! to the VIP's reals. The takeover is the time from the last frame through the old master
//! to the first through the new one. Used by tests/e2e_failover.rs and the lab.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{Lab, ROLE_CLIENT, http_get};

/// How long a long-lived connection waits for an answer before it counts as broken:
/// longer than TCP's retransmissions take to cross a takeover of a few seconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Client traffic through `vip`, running until [`Traffic::stop`] (or 10 minutes).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Long-lived connections that failed (error, closed, or no answer in time).
    broken: Arc<AtomicU64>,
    exchanges: Arc<AtomicU64>,
    new_ok: Arc<AtomicU64>,
    new_failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Each long-lived connection's last answer; None once it broke.
    last: Arc<Mutex<Vec<Option<Instant>>>>,
    /// The new requests' last answer.
    last_new: Arc<Mutex<Option<Instant>>>,
}

/// Counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub broken: u64,
    pub exchanges: u64,
    pub new_ok: u64,
    pub new_failed: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            broken: self.broken - o.broken,
            exchanges: self.exchanges - o.exchanges,
            new_ok: self.new_ok - o.new_ok,
            new_failed: self.new_failed - o.new_failed,
        }
    }
}

impl Traffic {
    /// `long_lived` keep-alive connections, each sending a GET every 50 ms, and `loops`
    /// threads each opening a new connection for one GET after another (20 ms apart);
    /// with `probe`, also a SYN every 10 ms for a [`Watch`] to time the path by (it adds
    /// connections the data plane counts).
    pub fn start(
        lab: &Lab,
        vip: SocketAddr,
        long_lived: usize,
        loops: usize,
        probe: bool,
    ) -> Result<Traffic> {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            broken: Arc::default(),
            exchanges: Arc::default(),
            new_ok: Arc::default(),
            new_failed: Arc::default(),
            errors: Arc::default(),
            last: Arc::new(Mutex::new(vec![Some(Instant::now()); long_lived])),
            last_new: Arc::default(),
        };
        let mut t = t;
        let deadline = Instant::now() + Duration::from_secs(600);
        for i in 0..long_lived {
            let mut conn = lab.connect(ROLE_CLIENT, vip)?;
            conn.set_read_timeout(Some(ANSWER_WITHIN))?;
            let (stop, broken, exchanges, errors) =
                (t.stop.clone(), t.broken.clone(), t.exchanges.clone(), t.errors.clone());
            let last = t.last.clone();
            t.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match exchange(&mut conn) {
                        Ok(()) => {
                            last.lock().unwrap()[i] = Some(Instant::now());
                            exchanges.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("long-lived: {e:#}"));
                            last.lock().unwrap()[i] = None;
                            broken.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        let netns = PathBuf::from("/run/netns").join(lab.ns(ROLE_CLIENT));
        for _ in 0..loops {
            let (stop, ok, failed, errors) =
                (t.stop.clone(), t.new_ok.clone(), t.new_failed.clone(), t.errors.clone());
            let (netns, last_new) = (netns.clone(), t.last_new.clone());
            t.threads.push(std::thread::spawn(move || {
                if enter(&netns).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match http_get(vip) {
                        Ok(_) => {
                            *last_new.lock().unwrap() = Some(Instant::now());
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("new request: {e}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        // A probe: a SYN through the VIP every 10 ms, abandoned after 10 ms, so the watch
        // sees the path come back within 10 ms of it, not when a stalled connection's
        // retransmission timer next fires.
        let (stop, netns) = (t.stop.clone(), netns.clone());
        t.threads.extend(probe.then(|| {
            std::thread::spawn(move || {
                if enter(&netns).is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = TcpStream::connect_timeout(&vip, Duration::from_millis(10));
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        }));
        Ok(t)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            broken: self.broken.load(Ordering::Relaxed),
            exchanges: self.exchanges.load(Ordering::Relaxed),
            new_ok: self.new_ok.load(Ordering::Relaxed),
            new_failed: self.new_failed.load(Ordering::Relaxed),
        }
    }

    /// Every connection that is not broken has had an answer after `t`, and so has a new
    /// request: the traffic has crossed whatever happened at `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        let long = self.last.lock().unwrap().iter().all(|l| l.is_none_or(|l| l > t));
        let new = self.last_new.lock().unwrap().is_some_and(|l| l > t);
        long && new
    }

    /// Waits until [`Traffic::answered_since`] `t`, at most `limit`; false if not.
    pub fn wait_answered_since(&self, t: Instant, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.answered_since(t) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// What went wrong so far, each failure once.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One GET on a keep-alive connection, its whole answer read.
fn exchange(s: &mut TcpStream) -> Result<()> {
    crate::request_on(s).map(|_| ())
}

fn enter(netns: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(netns)?;
    // SAFETY: setns on this thread only, with a namespace fd we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// When each director forwarded frames to the VIP's reals, seen on its switch port.
pub struct Watch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// (when, director's index in the list given to `start`).
    seen: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Watch {
    /// Watches the switch ports of `directors` (roles) for frames from their own MAC to
    /// the IPv4 address `vip`: what their data planes forward.
    pub fn start(lab: &Lab, directors: &[&str], vip: Ipv4Addr) -> Result<Watch> {
        let w = Watch { stop: Arc::default(), threads: Vec::new(), seen: Arc::default() };
        let mut w = w;
        let netns = PathBuf::from("/run/netns").join(lab.ns("switch"));
        for (i, role) in directors.iter().enumerate() {
            let port =
                lab.switch_port(role).with_context(|| format!("{role} has no switch port"))?;
            let mac = lab.in_ns(role, || crate::mac("eth0"))??;
            let (stop, seen, netns) = (w.stop.clone(), w.seen.clone(), netns.clone());
            let (ready_tx, ready) = std::sync::mpsc::channel();
            w.threads.push(std::thread::spawn(move || {
                let socket = match enter(&netns).and_then(|()| PacketSocket::bind(&port)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let Some(n) = socket.recv(&mut buf) else { continue };
                    let forwarded = n >= 34
                        && buf[6..12] == mac
                        && buf[12..14] == [0x08, 0x00]
                        && buf[30..34] == vip.octets();
                    if forwarded {
                        seen.lock().unwrap().push((Instant::now(), i));
                    }
                }
            }));
            ready.recv().context("watch thread")??;
        }
        Ok(w)
    }

    /// Frames so far, in order.
    pub fn seen(&self) -> Vec<(Instant, usize)> {
        self.seen.lock().unwrap().clone()
    }

    /// After `since`: the time from the last frame through director `from` to the first
    /// through `to` after it; None if `to` forwarded nothing after `from` stopped.
    pub fn takeover(&self, since: Instant, from: usize, to: usize) -> Option<Duration> {
        let seen: Vec<(Instant, usize)> =
            self.seen().into_iter().filter(|(t, _)| *t >= since).collect();
        let first_new = seen.iter().find(|(_, d)| *d == to)?.0;
        let last_old =
            seen.iter().filter(|(t, d)| *d == from && *t <= first_new).map(|(t, _)| *t).max();
        // Nothing through the old one after `since` (cut before anything was sent): from
        // `since`.
        Some(first_new.duration_since(last_old.unwrap_or(since)))
    }

    /// Whether director `to` forwarded anything after `since`.
    pub fn forwarded_since(&self, since: Instant, to: usize) -> bool {
        self.seen().iter().any(|(t, d)| *t >= since && *d == to)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A raw packet socket on one interface, reading with a short timeout.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn bind(interface: &str) -> Result<PacketSocket> {
        use std::os::fd::FromRawFd as _;
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .with_context(|| format!("no interface {interface}"))?;
        let all = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: a new socket, owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all) };
        if fd < 0 {
            bail!("AF_PACKET: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is ours and open.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: addr is a valid sockaddr_ll of len bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) }
            != 0
        {
            bail!("binding to {interface}: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(PacketSocket(fd))
    }

    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        (n > 0).then_some(n as usize)
    }
}

/// Sends `probes` ARP requests for `target` from `role`'s eth0 (`from` its address there)
/// and returns the MAC of every reply, each collected for `window` after its request:
/// every answer counts, where a kernel would keep the first (TOOLCHAIN.md).
pub fn arp_answerers(
    lab: &Lab,
    role: &str,
    from: Ipv4Addr,
    target: Ipv4Addr,
    probes: usize,
    window: Duration,
) -> Result<std::collections::BTreeSet<[u8; 6]>> {
    lab.in_ns(role, move || -> Result<std::collections::BTreeSet<[u8; 6]>> {
        let mac = crate::mac("eth0")?;
        let socket = PacketSocket::bind("eth0")?;
        let request = [
            &[0xff; 6][..],
            &mac,
            &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1],
            &mac,
            &from.octets(),
            &[0; 6],
            &target.octets(),
        ]
        .concat();
        let mut answerers = std::collections::BTreeSet::new();
        for _ in 0..probes {
            // SAFETY: a bound packet socket, the frame's own length.
            let sent = unsafe {
                libc::send(
                    socket.0.as_raw_fd(),
                    request.as_ptr() as *const libc::c_void,
                    request.len(),
                    0,
                )
            };
            if sent != request.len() as isize {
                bail!("sending an ARP request: {}", std::io::Error::last_os_error());
            }
            let until = Instant::now() + window;
            while Instant::now() < until {
                let mut buf = [0u8; 64];
                let Some(n) = socket.recv(&mut buf) else { continue };
                // An ARP reply (op 2) from `target`: its sender's MAC.
                if n >= 42
                    && buf[12..14] == [0x08, 0x06]
                    && buf[20..22] == [0, 2]
                    && buf[28..32] == target.octets()
                {
                    answerers.insert(<[u8; 6]>::try_from(&buf[22..28]).unwrap_or_default());
                }
            }
        }
        Ok(answerers)
    })?
}
