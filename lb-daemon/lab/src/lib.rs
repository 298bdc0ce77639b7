//! A lab of network namespaces: a client, a director and real servers on one bridged L2
//! segment, the reals running Debian's nginx, dnsmasq and slapd with the VIP on their loopback
//! (the classic LVS-DR set-up). The end-to-end tests and `cargo xtask lab` both use it.
//! It owns every namespace and process it creates and removes them on drop, also when a
//! test fails.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub mod failover;

/// The MAC of `interface` in the calling thread's network namespace.
pub fn mac(interface: &str) -> Result<[u8; 6]> {
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        if ifa.interface_name == interface
            && let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr())
            && let Some(mac) = link.addr()
        {
            return Ok(mac);
        }
    }
    bail!("{interface} has no MAC")
}

/// Whether this process may load XDP programs and create namespaces.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the calling test unless it runs as root, saying why on stderr (written
/// straight to it, past the harness's capture, so the skip shows). `cargo xtask test`
/// runs as root; a plain `cargo test` as another user runs the rest.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::is_root() {
            use std::io::Write as _;
            fn here() {}
            let test = std::any::type_name_of_val(&here).trim_end_matches("::here");
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test} needs root (it loads XDP programs or builds namespaces)"
            );
            return;
        }
    };
}

/// The lab's segment (TEST-NET-2, RFC 5737: never routed anywhere).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const DIRECTOR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The other directors of failover labs ([`Lab::add_director`]).
pub const DIRECTOR2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
pub const DIRECTOR3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 4);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const REALS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 11),
    Ipv4Addr::new(198, 51, 100, 12),
    Ipv4Addr::new(198, 51, 100, 13),
];

/// The same hosts over IPv6 (documentation prefix, RFC 3849).
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const DIRECTOR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
pub const DIRECTOR2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 3);
pub const DIRECTOR3_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 4);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const REALS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x13),
];

/// The reals' own segment in the split topology (TEST-NET-3, RFC 5737; 2001:db8:200::/64),
/// where the director's second interface is their default gateway.
pub const DIRECTOR_BACK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const DIRECTOR_BACK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);
pub const BACK_REALS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 11),
    Ipv4Addr::new(203, 0, 113, 12),
    Ipv4Addr::new(203, 0, 113, 13),
];
pub const BACK_REALS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x13),
];

/// The router between the two segments in the routed topology: its address on the
/// client's segment and on the reals'.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0xfe);
pub const ROUTER_BACK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
pub const ROUTER_BACK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0xfe);

/// How the hosts are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One segment for all, reals carrying the VIP on lo: direct routing.
    Shared,
    /// Client and director's eth0 on one segment, director's eth1 and the reals on
    /// another, the director their gateway: NAT.
    Split,
    /// One segment, the reals bare: `lbadm realserver setup --mode tunnel` prepares them.
    Bare,
    /// Client and director on one segment, the reals bare on another, a router between:
    /// reals in another network, reached by tunnel.
    Routed,
}

/// The router's namespace in the routed topology.
pub const ROLE_ROUTER: &str = "router";

/// Namespace roles; their names carry a per-lab prefix so labs never collide.
pub const ROLE_CLIENT: &str = "client";
pub const ROLE_DIRECTOR: &str = "director";

/// The lab's LDAP directory (slapd on each real): its suffix, its administrator, and the
/// administrator's password.
pub const LDAP_BASE: &str = "dc=lab";
pub const LDAP_ADMIN: &str = "cn=admin,dc=lab";
pub const LDAP_PASSWORD: &str = "lab-secret";

pub fn real_role(i: usize) -> String {
    format!("real{}", i + 1)
}

pub struct Lab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    /// (role, what, process), killed on drop in reverse order.
    processes: Vec<(String, String, Child)>,
    keep: bool,
    topology: Topology,
    /// Filesystems mounted for the lab (bpffs for pins), unmounted on drop.
    mounts: Vec<PathBuf>,
    /// Switch ports made so far; `port_of[i]` is the role plugged into `port{i}`.
    ports: usize,
    port_of: Vec<String>,
}

impl Lab {
    /// The shared segment of direct routing: namespaces, bridge, links, addresses, the VIP
    /// on the reals' lo with arp_ignore=1 / arp_announce=2, and on the director.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::build_with(prefix, Topology::Shared)
    }

    /// The split segments of NAT: the reals behind the director, no VIP on them.
    pub fn split(prefix: &str) -> Result<Self> {
        Self::build_with(prefix, Topology::Split)
    }

    /// One segment with bare reals, for the test to prepare (tunnel mode).
    pub fn bare(prefix: &str) -> Result<Self> {
        Self::build_with(prefix, Topology::Bare)
    }

    /// Bare reals behind a router, for the test to prepare (tunnel mode).
    pub fn routed(prefix: &str) -> Result<Self> {
        Self::build_with(prefix, Topology::Routed)
    }

    fn build_with(prefix: &str, topology: Topology) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            prefix: prefix.into(),
            dir,
            namespaces: Vec::new(),
            processes: Vec::new(),
            keep: false,
            topology,
            mounts: Vec::new(),
            ports: 0,
            port_of: Vec::new(),
        };
        lab.build().context("building the lab's network")?;
        Ok(lab)
    }

    /// Real `i`'s addresses, on the segment the topology puts it.
    pub fn real(&self, i: usize) -> (Ipv4Addr, Ipv6Addr) {
        match self.topology {
            Topology::Shared | Topology::Bare => (REALS[i], REALS6[i]),
            Topology::Split | Topology::Routed => (BACK_REALS[i], BACK_REALS6[i]),
        }
    }

    /// The directory for the lab's configs, logs and sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Leaves everything in place when dropped (`cargo xtask lab --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Namespaces in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        let ns = self.ns(role);
        // A namespace of that name left by a crashed run of the same prefix is replaced.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.exec_ok(role, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn build(&mut self) -> Result<()> {
        self.add_ns("switch")?;
        for bridge in ["br0", "br1"] {
            self.exec_ok("switch", &["ip", "link", "add", bridge, "type", "bridge"])?;
            self.exec_ok("switch", &["ip", "link", "set", bridge, "up"])?;
        }
        let split = self.topology == Topology::Split;
        let routed = self.topology == Topology::Routed;
        let real_bridge = if split || routed { "br1" } else { "br0" };
        // (role, interface, bridge, IPv4, IPv6)
        let mut links: Vec<(String, &str, &str, Ipv4Addr, Ipv6Addr)> = vec![
            (ROLE_CLIENT.into(), "eth0", "br0", CLIENT, CLIENT6),
            (ROLE_DIRECTOR.into(), "eth0", "br0", DIRECTOR, DIRECTOR6),
        ];
        if split {
            links.push((ROLE_DIRECTOR.into(), "eth1", "br1", DIRECTOR_BACK, DIRECTOR_BACK6));
        }
        if routed {
            links.push((ROLE_ROUTER.into(), "eth0", "br0", ROUTER, ROUTER6));
            links.push((ROLE_ROUTER.into(), "eth1", "br1", ROUTER_BACK, ROUTER_BACK6));
        }
        for i in 0..REALS.len() {
            let (a4, a6) = self.real(i);
            links.push((real_role(i), "eth0", real_bridge, a4, a6));
        }
        for (role, dev, bridge, addr, addr6) in &links {
            self.plug(role, dev, bridge, *addr, *addr6)?;
        }
        self.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        // IPv6 answers neighbour solicitations only for addresses of the asking interface,
        // so the director carries the IPv6 VIP on eth0 (the reals' lo copies stay silent).
        // Deprecated (preferred_lft 0), or the kernel would pick it as the source of the
        // director's own connections to the reals (longest matching prefix), and the reals
        // would answer their health checks to themselves.
        let vip6 = format!("{VIP6}/128");
        self.exec_ok(
            ROLE_DIRECTOR,
            &["ip", "addr", "add", &vip6, "dev", "eth0", "nodad", "preferred_lft", "0"],
        )?;
        if routed {
            self.route_through_router()?;
        }
        for i in 0..REALS.len() {
            let role = real_role(i);
            if matches!(self.topology, Topology::Bare | Topology::Routed) {
                continue;
            }
            if split {
                // NAT: the director is the reals' way back; they never see the VIP.
                self.exec_ok(
                    &role,
                    &["ip", "route", "add", "default", "via", &DIRECTOR_BACK.to_string()],
                )?;
                let via6 = DIRECTOR_BACK6.to_string();
                self.exec_ok(&role, &["ip", "-6", "route", "add", "default", "via", &via6])?;
                continue;
            }
            self.exec_ok(&role, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            self.exec_ok(&role, &["ip", "addr", "add", &vip6, "dev", "lo"])?;
            // The LVS "ARP problem": reals must not answer ARP for the VIP they carry.
            for (key, value) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.eth0.arp_ignore", "1"),
                ("net.ipv4.conf.eth0.arp_announce", "2"),
            ] {
                self.exec_ok(&role, &["sysctl", "-q", "-w", &format!("{key}={value}")])?;
            }
        }
        Ok(())
    }

    /// Connects `role` (its namespace made if new) to `bridge` of the switch by a veth
    /// `dev`, with these addresses; the switch's side is the next `portN`.
    fn plug(
        &mut self,
        role: &str,
        dev: &str,
        bridge: &str,
        addr: Ipv4Addr,
        addr6: Ipv6Addr,
    ) -> Result<()> {
        let ns = self.ns(role);
        if !self.namespaces.contains(&ns) {
            self.add_ns(role)?;
        }
        let port = format!("port{}", self.ports);
        self.ports += 1;
        let sw = self.ns("switch");
        ip(&[
            "link", "add", dev, "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw,
        ])?;
        self.exec_ok("switch", &["ip", "link", "set", &port, "master", bridge, "up"])?;
        self.exec_ok(role, &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        let addr6 = format!("{addr6}/64");
        self.exec_ok(role, &["ip", "addr", "add", &addr6, "dev", dev, "nodad"])?;
        self.exec_ok(role, &["ip", "link", "set", dev, "up"])?;
        // Generic XDP sees TSO/GSO super-packets whole; keep frames at MTU size, and
        // compute checksums in software so a rewriting bug cannot hide (TOOLCHAIN.md).
        self.exec_ok(role, &["ethtool", "-K", dev, "tso", "off", "gso", "off", "tx", "off"])?;
        self.port_of.push(role.to_string());
        Ok(())
    }

    /// Another director on the clients' segment (`eth0`, with these addresses), for
    /// failover between directors; it carries no VIP: with `ha`, lbd adds it.
    pub fn add_director(&mut self, role: &str, addr: Ipv4Addr, addr6: Ipv6Addr) -> Result<()> {
        self.plug(role, "eth0", "br0", addr, addr6)
    }

    /// The switch's port (in the "switch" namespace) `role`'s first link is plugged into:
    /// where a test cuts a host's cable, or watches what it sends.
    pub fn switch_port(&self, role: &str) -> Option<String> {
        self.port_of.iter().position(|r| r == role).map(|i| format!("port{i}"))
    }

    /// The routed topology's routes: the router forwards between the segments (no reverse
    /// path filter: the reals answer from the VIP, an address of the other side), the
    /// director reaches the reals' network through it, the reals everything else.
    fn route_through_router(&self) -> Result<()> {
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth1.rp_filter=0",
        ] {
            self.exec_ok(ROLE_ROUTER, &["sysctl", "-q", "-w", key])?;
        }
        let (net4, net6) = ("203.0.113.0/24", "2001:db8:200::/64");
        self.exec_ok(ROLE_DIRECTOR, &["ip", "route", "add", net4, "via", &ROUTER.to_string()])?;
        let via6 = ROUTER6.to_string();
        self.exec_ok(ROLE_DIRECTOR, &["ip", "-6", "route", "add", net6, "via", &via6])?;
        for i in 0..REALS.len() {
            let role = real_role(i);
            let via = ROUTER_BACK.to_string();
            self.exec_ok(&role, &["ip", "route", "add", "default", "via", &via])?;
            let via6 = ROUTER_BACK6.to_string();
            self.exec_ok(&role, &["ip", "-6", "route", "add", "default", "via", &via6])?;
        }
        Ok(())
    }

    /// Runs a command in a role's network namespace only (nsenter --net), keeping the
    /// host's mount namespace: what it mounts or pins outlives the command.
    pub fn exec_net(&self, role: &str, args: &[&str]) -> Result<Output> {
        let ns = format!("--net=/run/netns/{}", self.ns(role));
        Command::new("nsenter")
            .arg(ns)
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {role}'s network namespace"))
    }

    /// Records a mount below the lab's directory, to be lazily unmounted on drop.
    pub fn track_mount(&mut self, path: PathBuf) {
        self.mounts.push(path);
    }

    /// Runs a command in a role's namespace and waits for it.
    pub fn exec(&self, role: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {role}"))
    }

    pub fn exec_ok(&self, role: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(role, args)?;
        if !out.status.success() {
            bail!("{args:?} in {role} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// keepalived (Debian's 2.2.7) in `role`'s namespace as another director: VRRPv3,
    /// VRID 51, advert_int 0.1, preempting, the one address `vip` on eth0; its log is
    /// `self.log(role, name)`, its pid files in the lab's dir under `name`.
    pub fn start_keepalived(
        &mut self,
        role: &str,
        name: &str,
        priority: u8,
        vip: IpAddr,
    ) -> Result<()> {
        self.start_keepalived_with(role, name, priority, vip, "")
    }

    /// The same, speaking unicast from `src` to `peer` instead of to the group.
    pub fn start_keepalived_unicast(
        &mut self,
        role: &str,
        name: &str,
        priority: u8,
        vip: IpAddr,
        (src, peer): (IpAddr, IpAddr),
    ) -> Result<()> {
        let unicast = format!("  unicast_src_ip {src}\n  unicast_peer {{\n    {peer}\n  }}\n");
        self.start_keepalived_with(role, name, priority, vip, &unicast)
    }

    fn start_keepalived_with(
        &mut self,
        role: &str,
        name: &str,
        priority: u8,
        vip: IpAddr,
        extra: &str,
    ) -> Result<()> {
        let prefix = if vip.is_ipv4() { 32 } else { 128 };
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  \
                 interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n  \
                 virtual_ipaddress {{\n    {vip}/{prefix}\n  }}\n{extra}}}\n"
            ),
        )?;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let (conf, pid, vrrp_pid) = (
            path(conf),
            path(self.dir.join(format!("{name}.pid"))),
            path(self.dir.join(format!("{name}-vrrp.pid"))),
        );
        let args = ["keepalived", "-n", "-l", "-D", "-P", "-f", &conf, "-p", &pid, "-r", &vrrp_pid];
        self.spawn(role, name, &args)
    }

    /// Sends `signal` to keepalived `name`'s processes: its VRRP child, then itself.
    pub fn signal_keepalived(&self, name: &str, signal: i32) {
        for file in [format!("{name}-vrrp.pid"), format!("{name}.pid")] {
            let pid = std::fs::read_to_string(self.dir.join(file)).ok();
            if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process this lab started.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Starts a long-running process in a role's namespace, its output in the lab's dir.
    pub fn spawn(&mut self, role: &str, what: &str, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role)]).args(args);
        self.spawn_command(role, what, cmd)
    }

    /// The same in the role's network namespace only (nsenter --net), in the host's mount
    /// namespace: what it pins on a bpffs outlives it (lbd's data plane).
    pub fn spawn_net(&mut self, role: &str, what: &str, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns(role))).args(args);
        self.spawn_command(role, what, cmd)
    }

    /// A bpffs mounted at the lab's `bpf` directory, unmounted (and what is pinned in it
    /// released) when the lab goes.
    pub fn bpffs(&mut self) -> Result<PathBuf> {
        let at = self.dir.join("bpf");
        std::fs::create_dir_all(&at)?;
        nix::mount::mount(
            Some("bpf"),
            &at,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpffs at {}", at.display()))?;
        self.track_mount(at.clone());
        Ok(at)
    }

    fn spawn_command(&mut self, role: &str, what: &str, mut cmd: Command) -> Result<()> {
        let log = File::create(self.dir.join(format!("{role}-{what}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what} in {role}"))?;
        self.processes.push((role.into(), what.into(), child));
        Ok(())
    }

    /// Stops a process started by [`Lab::spawn`] (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self, role: &str, what: &str) -> Result<()> {
        let i = self
            .processes
            .iter()
            .position(|(r, w, _)| r == role && w == what)
            .with_context(|| format!("no {what} running in {role}"))?;
        let (_, _, mut child) = self.processes.remove(i);
        terminate(&mut child);
        Ok(())
    }

    /// Sends `signal` to every process named `comm` in `role`'s network namespace (a
    /// process `nsenter` or a shell started, whose pid the lab does not hold); how many.
    pub fn signal_named(&self, role: &str, comm: &str, signal: i32) -> usize {
        let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns(role)]).output() else {
            return 0;
        };
        let mut sent = 0;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let Ok(pid) = pid.parse::<i32>() else { continue };
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // SAFETY: kill(2) of a process inside a namespace this lab created.
            if name.trim() == comm && unsafe { libc::kill(pid, signal) } == 0 {
                sent += 1;
            }
        }
        sent
    }

    /// Sends a signal to a process started by [`Lab::spawn`].
    pub fn signal(&self, role: &str, what: &str, signal: i32) -> Result<()> {
        let (_, _, child) = self
            .processes
            .iter()
            .find(|(r, w, _)| r == role && w == what)
            .with_context(|| format!("no {what} running in {role}"))?;
        // SAFETY: kill(2) on a child we own and have not reaped.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!("kill {}: {}", child.id(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn log(&self, role: &str, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{role}-{what}.log"))).unwrap_or_default()
    }

    /// Waits until the log of `what` in `role` says `text` more than `seen` times (20 s at
    /// most); returns how many times it does.
    pub fn wait_log(&self, role: &str, what: &str, text: &str, seen: usize) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.log(role, what).matches(text).count();
            if n > seen {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("{what} never said {text:?}:\n{}", self.log(role, what));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// nginx on real `i`, on ports 80 and 8080, and 8443 with TLS (a self-signed
    /// certificate for `lab`, made once per lab), answering `/` with its role name and
    /// `/healthz` with `ok`.
    pub fn start_nginx(&mut self, i: usize) -> Result<()> {
        let role = real_role(i);
        let tmp = self.dir.join(format!("{role}-nginx"));
        std::fs::create_dir_all(&tmp)?;
        let (cert, key) = self.tls_certificate()?;
        let (cert, key) = (cert.display(), key.display());
        let t = tmp.display();
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {t}/nginx.pid;\nerror_log {t}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n\
               fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
               keepalive_timeout 120s;\n  keepalive_requests 1000000;\n\
               server {{\n    listen 80;\n    listen [::]:80;\n    listen 8080;\n    listen [::]:8080;\n    \
                 listen 8443 ssl;\n    listen [::]:8443 ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    default_type text/plain;\n\
                 location = /healthz {{ return 200 \"ok\\n\"; }}\n\
                 location / {{ return 200 \"{role}\\n\"; }}\n  }}\n}}\n"
        );
        let path = tmp.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let p = path.display().to_string();
        let prefix = tmp.display().to_string();
        let err = format!("{prefix}/error.log");
        self.spawn(&role, "nginx", &["nginx", "-p", &prefix, "-e", &err, "-c", &p])?;
        self.wait_port(&role, self.real(i).0, 80)?;
        self.wait_port(&role, self.real(i).0, 8080)
    }

    /// The lab's self-signed certificate and key for `lab` (openssl, made at the first call).
    pub fn tls_certificate(&self) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (self.dir.join("tls.crt"), self.dir.join("tls.key"));
        if !cert.exists() {
            run(Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args([
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=lab",
                    "-addext",
                    "subjectAltName=DNS:lab",
                ])
                // A server's certificate, its own trust anchor: not a CA, which a
                // verifier refuses as an end entity.
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .args(["-addext", "extendedKeyUsage=serverAuth"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert))?;
        }
        Ok((cert, key))
    }

    /// dnsmasq on real `i`, answering TXT `whoami.lab` with its role name, UDP and TCP.
    pub fn start_dns(&mut self, i: usize) -> Result<()> {
        let role = real_role(i);
        let pid = self.dir.join(format!("{role}-dnsmasq.pid")).display().to_string();
        let txt = format!("--txt-record=whoami.lab,{role}");
        let pid = format!("--pid-file={pid}");
        self.spawn(
            &role,
            "dnsmasq",
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--port=53",
                "--log-facility=-",
                &pid,
                &txt,
                "--address=/www.lab/198.51.100.10",
            ],
        )?;
        self.wait_port(&role, self.real(i).0, 53)
    }

    /// slapd on real `i`, its own mdb database holding `dc=lab` with the real's name as
    /// its `description` (so a search through the VIP says which real answered), and
    /// `cn=admin,dc=lab` bound with [`LDAP_PASSWORD`]. The database is made at the first
    /// start and kept across a stop and a start.
    pub fn start_ldap(&mut self, i: usize) -> Result<()> {
        let role = real_role(i);
        let dir = self.dir.join(format!("{role}-slapd"));
        let conf = dir.join("slapd.conf");
        if !conf.exists() {
            std::fs::create_dir_all(dir.join("db"))?;
            let d = dir.display();
            std::fs::write(
                &conf,
                format!(
                    "include /etc/ldap/schema/core.schema\npidfile {d}/slapd.pid\n\
                     modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                     database mdb\nsuffix \"{LDAP_BASE}\"\nrootdn \"{LDAP_ADMIN}\"\n\
                     rootpw {LDAP_PASSWORD}\ndirectory {d}/db\n"
                ),
            )?;
            let ldif = dir.join("lab.ldif");
            std::fs::write(
                &ldif,
                format!(
                    "dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\n\
                     dc: lab\no: lab\ndescription: {role}\n"
                ),
            )?;
            run(Command::new("slapadd").arg("-f").arg(&conf).arg("-l").arg(&ldif))?;
        }
        let conf = conf.display().to_string();
        // -d 0: in the foreground, so the lab holds its pid; it runs as root, as the lab's
        // other servers do.
        self.spawn(&role, "slapd", &["slapd", "-d", "0", "-h", "ldap:///", "-f", &conf])?;
        self.wait_port(&role, self.real(i).0, 389)
    }

    fn wait_port(&self, role: &str, addr: Ipv4Addr, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = SocketAddr::new(IpAddr::V4(addr), port);
        loop {
            let up = self.in_ns(role, move || {
                TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{role}: nothing listens on {target} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` on a thread that has entered the role's network namespace: sockets it
    /// creates live there, even when used from other threads later.
    pub fn in_ns<T: Send + 'static>(
        &self,
        role: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = PathBuf::from("/run/netns").join(self.ns(role));
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// `n` HTTP/1.0 requests through `vip`, each on a new connection; the body of each
    /// answer (the real's name), or the error.
    pub fn http_gets(
        &self,
        role: &str,
        vip: SocketAddr,
        n: usize,
    ) -> Result<Vec<Result<String, String>>> {
        self.in_ns(role, move || (0..n).map(|_| http_get(vip)).collect())
    }

    /// `n` LDAP searches of [`LDAP_BASE`] through `vip` from the client, each on its own
    /// connection (Debian's ldapsearch); the description of each answer (the real's name).
    /// A search that failed gives no line, and its error is on the list as `Err`.
    pub fn ldap_searches(&self, vip: IpAddr, n: usize) -> Result<Vec<Result<String, String>>> {
        let url = match vip {
            IpAddr::V4(a) => format!("ldap://{a}"),
            IpAddr::V6(a) => format!("ldap://[{a}]"),
        };
        let search = format!(
            "ldapsearch -x -LLL -o nettimeout=3 -H {url} -b {LDAP_BASE} -s base description \
             | grep '^description: '"
        );
        self.client_runs(n, &search, |l| l.strip_prefix("description: "))
    }

    /// `n` HTTPS GETs of `/` through `vip` from the client, each its own connection
    /// (curl; the reals' certificate is self-signed, taken as it comes); the body of
    /// each answer (the real's name), or the error.
    pub fn https_gets(&self, vip: SocketAddr, n: usize) -> Result<Vec<Result<String, String>>> {
        let get = format!("curl -sk --max-time 3 https://{vip}/");
        self.client_runs(n, &get, |l| l.starts_with("real").then_some(l))
    }

    /// `command` run `n` times from the client, one after another, each expected to print
    /// one line that `answer` reads; a run that fails prints its exit status instead.
    fn client_runs(
        &self,
        n: usize,
        command: &str,
        answer: impl Fn(&str) -> Option<&str>,
    ) -> Result<Vec<Result<String, String>>> {
        let script = format!("for i in $(seq {n}); do {command} || echo \"failed: exit $?\"; done");
        let out = self.exec(ROLE_CLIENT, &["sh", "-c", &script])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| answer(l).map(str::to_string).ok_or_else(|| l.to_string()))
            .collect())
    }

    /// Opens a keep-alive HTTP/1.1 connection from a role's namespace.
    pub fn connect(&self, role: &str, vip: SocketAddr) -> Result<TcpStream> {
        self.in_ns(role, move || TcpStream::connect_timeout(&vip, Duration::from_secs(3)))?
            .with_context(|| format!("connecting to {vip}"))
    }
}

/// One HTTP/1.0 GET of `/`; the body, trimmed.
pub fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {:?}", head.lines().next()));
    }
    Ok(body.trim().to_string())
}

/// One GET on an open keep-alive connection, waiting 3 s at most; the body, trimmed.
pub fn http_get_on(s: &mut TcpStream) -> Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    request_on(s)
}

/// One GET on an open keep-alive connection, within its read timeout; the body, trimmed.
pub fn request_on(s: &mut TcpStream) -> Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse())
                })
                .context("no Content-Length")??;
            if body.len() >= len {
                return Ok(body[..len].trim().to_string());
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

/// Runs `cmd` to its end; an error names it and says what it said on stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        while let Some((_, _, mut child)) = self.processes.pop() {
            terminate(&mut child);
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still inside (a worker whose master died) goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) of a process inside a namespace this lab created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // Unmounting a bpffs releases what is pinned in it (a decap program's link too).
        for mount in self.mounts.drain(..) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
