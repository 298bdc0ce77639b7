//! Preparing a real server, the classic LVS chores done for the operator: the VIP on lo,
//! arp_ignore=1 / arp_announce=2 so the real never answers ARP for it (the "ARP problem"),
//! and for tunnel mode the decapsulation program, attached and pinned so that it outlives
//! the command (this kernel, like many, has no ipip module to do it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
    programs::{Xdp, links::FdLink, links::PinnedLink},
};
use futures_util::TryStreamExt as _;

use crate::config::XdpMode;
use crate::dataplane::{DECAP_OBJECT, LinkInfo, attach_xdp};

/// How the real is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Direct routing: the VIP on lo, ARP kept quiet.
    Dr,
    /// IP-in-IP: as dr, plus the decapsulation program on the interface.
    Tunnel,
}

pub struct RealServer {
    pub vip: IpAddr,
    pub mode: Mode,
    pub interface: String,
    /// A bpffs directory; this real's pins go in a folder of their own below it.
    pub pin_root: PathBuf,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

impl RealServer {
    /// Pins live per network namespace and interface: two namespaces may both have "eth0".
    fn pin_dir(&self) -> Result<PathBuf> {
        let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.pin_root.join(format!("realserver-net{}-{}", ns.ino(), self.interface)))
    }

    /// Sets the real up; every step is idempotent. Returns what it did, a line each.
    pub fn setup(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let plen = if self.vip.is_ipv4() { 32 } else { 128 };
        if block_on(add_to_lo(self.vip, plen))? {
            done.push(format!("added {}/{plen} to lo", self.vip));
        } else {
            done.push(format!("{}/{plen} already on lo", self.vip));
        }
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            (&format!("net.ipv4.conf.{}.arp_ignore", self.interface), "1"),
            (&format!("net.ipv4.conf.{}.arp_announce", self.interface), "2"),
        ] {
            sysctl(key, value)?;
            done.push(format!("{key} = {value}"));
        }
        if self.mode == Mode::Tunnel {
            // The decapsulated packet comes from the client, which may be routed elsewhere.
            let key = format!("net.ipv4.conf.{}.rp_filter", self.interface);
            sysctl(&key, "2")?;
            done.push(format!("{key} = 2 (loose: decapsulated packets come from the clients)"));
            done.extend(self.setup_decap()?);
        }
        Ok(done)
    }

    /// Undoes [`RealServer::setup`] for this VIP: off lo, out of the decap program, which
    /// is detached with the last VIP. The ARP sysctls stay (other VIPs may need them).
    pub fn teardown(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let plen = if self.vip.is_ipv4() { 32 } else { 128 };
        if block_on(del_from_lo(self.vip))? {
            done.push(format!("removed {}/{plen} from lo", self.vip));
        }
        let dir = self.pin_dir()?;
        if self.mode == Mode::Tunnel && dir.exists() {
            let map =
                MapData::from_pin(dir.join("DECAP_VIPS")).context("opening the pinned VIPs")?;
            let mut vips: HashMap<_, [u8; 16], u8> = HashMap::try_from(Map::HashMap(map))?;
            let _ = vips.remove(&addr16(self.vip));
            done.push(format!("{} no longer decapsulated", self.vip));
            if vips.keys().next().is_none() {
                let link =
                    PinnedLink::from_pin(dir.join("link")).context("opening the pinned link")?;
                drop(link.unpin().context("unpinning the link")?);
                std::fs::remove_file(dir.join("DECAP_VIPS"))?;
                std::fs::remove_dir(&dir)?;
                done.push(format!("lb_decap detached from {}", self.interface));
            }
        }
        done.push("arp_ignore / arp_announce left as they are".into());
        Ok(done)
    }

    fn setup_decap(&self) -> Result<Vec<String>> {
        ensure_bpffs(&self.pin_root)?;
        let dir = self.pin_dir()?;
        let mut done = Vec::new();
        if !dir.join("link").exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut ebpf = Ebpf::load(DECAP_OBJECT).context("loading lb_decap")?;
            let program: &mut Xdp =
                ebpf.program_mut("lb_decap").context("no lb_decap")?.try_into()?;
            program.load().context("loading lb_decap (verifier)")?;
            let link = LinkInfo::read(&self.interface)?;
            let (id, mode) = attach_xdp(program, &self.interface, link.has_device, XdpMode::Auto)?;
            let fd_link: FdLink =
                program.take_link(id)?.try_into().context("XDP link without fd")?;
            fd_link.pin(dir.join("link")).context("pinning the XDP link")?;
            let map = ebpf.map("DECAP_VIPS").context("no DECAP_VIPS")?;
            map.pin(dir.join("DECAP_VIPS")).context("pinning DECAP_VIPS")?;
            done.push(format!(
                "lb_decap attached to {} ({mode:?} mode), pinned in {}",
                self.interface,
                dir.display()
            ));
        }
        let map = MapData::from_pin(dir.join("DECAP_VIPS")).context("opening the pinned VIPs")?;
        let mut vips: HashMap<_, [u8; 16], u8> = HashMap::try_from(Map::HashMap(map))?;
        vips.insert(addr16(self.vip), 1, 0).context("adding the VIP")?;
        done.push(format!("{} is decapsulated on {}", self.vip, self.interface));
        Ok(done)
    }
}

/// Mounts a bpffs at `root` unless one is there. Refuses in a private mount namespace
/// (`ip netns exec` makes one per command), where the pins would vanish when lbadm exits.
fn ensure_bpffs(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let fs = nix::sys::statfs::statfs(root).context("statfs")?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // PID 1's mount namespace may be unreadable (a sandboxed init): then we cannot tell.
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let init = std::fs::read_link("/proc/1/ns/mnt").ok();
    if own.is_some() && init.is_some() && own != init {
        bail!(
            "{} is not a bpffs, and this is a private mount namespace (ip netns exec?) where a \
             bpffs would vanish with lbadm: run it with `nsenter --net=/run/netns/NAME lbadm ...`",
            root.display()
        );
    }
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting a bpffs at {}", root.display()))
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key} ({})", path.display()))
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

async fn netlink() -> Result<(rtnetlink::Handle, u32)> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    let lo = nix::net::if_::if_nametoindex("lo").context("no lo")?;
    Ok((handle, lo))
}

/// Adds the VIP to lo; false if it was there.
async fn add_to_lo(vip: IpAddr, plen: u8) -> Result<bool> {
    let (handle, lo) = netlink().await?;
    let mut present =
        handle.address().get().set_link_index_filter(lo).set_address_filter(vip).execute();
    if present.try_next().await?.is_some() {
        return Ok(false);
    }
    handle
        .address()
        .add(lo, vip, plen)
        .execute()
        .await
        .with_context(|| format!("adding {vip} to lo"))?;
    Ok(true)
}

/// Removes the VIP from lo; false if it was not there.
async fn del_from_lo(vip: IpAddr) -> Result<bool> {
    let (handle, lo) = netlink().await?;
    let mut found =
        handle.address().get().set_link_index_filter(lo).set_address_filter(vip).execute();
    let Some(message) = found.try_next().await? else { return Ok(false) };
    handle
        .address()
        .del(message)
        .execute()
        .await
        .with_context(|| format!("removing {vip} from lo"))?;
    Ok(true)
}
