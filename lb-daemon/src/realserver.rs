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

pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

impl RealServer {
    /// Pins live per network namespace and interface: two namespaces may both have "eth0".
    fn pin_dir(&self) -> Result<PathBuf> {
        let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.pin_root.join(format!("realserver-net{}-{}", ns.ino(), self.interface)))
    }

    /// Sets the real up; every step is idempotent. Returns what it did, a line each.
    pub fn setup(&self) -> Result<Vec<String>> {
        // Decided before anything changes: a refusal leaves the real as it was.
        let bpffs =
            if self.mode == Mode::Tunnel { Some(plan_bpffs(&self.pin_root)?) } else { None };
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
        if let Some(bpffs) = bpffs {
            // Tunnel mode. The decapsulated packet comes from the client, which may be
            // routed elsewhere.
            let key = format!("net.ipv4.conf.{}.rp_filter", self.interface);
            sysctl(&key, "2")?;
            done.push(format!("{key} = 2 (loose: decapsulated packets come from the clients)"));
            done.extend(self.setup_decap(bpffs)?);
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

    fn setup_decap(&self, bpffs: Bpffs) -> Result<Vec<String>> {
        let mut done = Vec::new();
        if let Bpffs::MountAt(at) = bpffs {
            mount_bpffs(&at)?;
            done.push(format!("mounted a bpffs at {} (there was none)", at.display()));
        }
        std::fs::create_dir_all(&self.pin_root)
            .with_context(|| format!("creating {}", self.pin_root.display()))?;
        let dir = self.pin_dir()?;
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

/// Where a bpffs is mounted by convention, and where lbadm mounts one, as bpftool does,
/// for a pin root below it.
const BPFFS_HOME: &str = "/sys/fs/bpf";

/// What [`RealServer::setup`] has to do for a bpffs under the pin root.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bpffs {
    /// The pin root is on one, or its nearest existing ancestor is.
    Present,
    /// None there: mount one at this directory.
    MountAt(PathBuf),
}

/// Decides, changing nothing, where a bpffs for `root` comes from. Refuses in a private
/// mount namespace (`ip netns exec` makes one per command), where a bpffs lbadm mounted
/// and the pins in it would vanish when lbadm exits.
fn plan_bpffs(root: &Path) -> Result<Bpffs> {
    match bpffs_for(root)? {
        Ok(plan) => Ok(plan),
        Err((why, netns)) => bail!(
            "{} is not on a bpffs, and {why}: a bpffs mounted here, and the decapsulation \
             program pinned in it, would vanish with lbadm. Run it in the network namespace \
             only: `nsenter --net=/run/netns/{} lbadm ...`",
            root.display(),
            netns.as_deref().unwrap_or("NAME")
        ),
    }
}

/// Where a bpffs for pins below `root` comes from: there already, or to be mounted (at
/// `root`, or at /sys/fs/bpf for a root below it, where sysfs allows no directory of
/// ours); or why not (the process's mount namespace goes away with it, and the netns
/// `ip netns exec` made it for, if it can tell).
#[allow(clippy::type_complexity)]
pub(crate) fn bpffs_for(root: &Path) -> Result<Result<Bpffs, (String, Option<String>)>> {
    let existing = nearest_existing(root);
    if is_bpffs(&existing)? {
        return Ok(Ok(Bpffs::Present));
    }
    if let Some(why) = private_mount_namespace() {
        return Ok(Err(why));
    }
    let home = Path::new(BPFFS_HOME);
    let at = if !root.starts_with(home) {
        root.to_path_buf()
    } else if existing.starts_with(home) {
        existing
    } else {
        home.to_path_buf()
    };
    Ok(Ok(Bpffs::MountAt(at)))
}

/// Mounts a bpffs at `at`, creating the directory.
pub(crate) fn mount_bpffs(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    nix::mount::mount(Some("bpf"), at, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting a bpffs at {}", at.display()))
}

pub(crate) fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from(if path.is_absolute() { "/" } else { "." }),
        }
    }
    p.to_path_buf()
}

pub(crate) fn is_bpffs(path: &Path) -> Result<bool> {
    let fs =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(fs.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Why this process's mount namespace is one that goes away with it, if it can tell, and
/// the network namespace's name if `ip netns exec` made it.
pub(crate) fn private_mount_namespace() -> Option<(String, Option<String>)> {
    // `ip netns exec NAME` remounts /sys in its own mount namespace, the netns's name as
    // the sysfs's source: seen even when lbadm runs in a shell below it.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_netns = |name: &str| {
        ["/run/netns", "/var/run/netns"].iter().any(|d| Path::new(d).join(name).exists())
    };
    if let Some(name) = sysfs_of_ip_netns_exec(&mountinfo, is_netns) {
        let why = format!("this is the private mount namespace of `ip netns exec {name}`");
        return Some((why, Some(name)));
    }
    // PID 1's mount namespace may be unreadable (a sandboxed init): then we cannot tell.
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let init = std::fs::read_link("/proc/1/ns/mnt").ok()?;
    let why = "this is a private mount namespace (ip netns exec?), not PID 1's";
    (own != init).then(|| (why.to_string(), None))
}

/// The network namespace whose name is the source of the sysfs on /sys in `mountinfo`
/// (proc(5)), if `is_netns` says one of that name exists: what `ip netns exec` mounts.
fn sysfs_of_ip_netns_exec(mountinfo: &str, is_netns: impl Fn(&str) -> bool) -> Option<String> {
    // The last mount on /sys is the one visible.
    let line = mountinfo.lines().rev().find(|l| l.split(' ').nth(4) == Some("/sys"))?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split(' ');
    let (fstype, source) = (fields.next()?, fields.next()?);
    if fstype != "sysfs" || source == "sysfs" || source.contains('/') || source.is_empty() {
        return None;
    }
    is_netns(source).then(|| source.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysfs_of_ip_netns_exec_is_told_from_the_hosts() {
        let is_netns = |name: &str| name == "lab-real1";
        let host = "23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw\n";
        assert_eq!(sysfs_of_ip_netns_exec(host, is_netns), None);
        // Some hosts mount sysfs as "none" or "sys": not a network namespace's name.
        let other = "23 27 0:22 / /sys rw,relatime - sysfs none rw\n";
        assert_eq!(sysfs_of_ip_netns_exec(other, is_netns), None);
        // ip netns exec: the host's /sys detached, its own on top, named after the netns.
        let exec = format!("{host}48 45 0:39 / /sys rw,relatime master:7 - sysfs lab-real1 rw\n");
        assert_eq!(sysfs_of_ip_netns_exec(&exec, is_netns), Some("lab-real1".into()));
        // Its sysfs shadowed by another mount of the host's kind: that one counts.
        let shadowed = format!("{exec}50 48 0:22 / /sys rw,relatime - sysfs sysfs rw\n");
        assert_eq!(sysfs_of_ip_netns_exec(&shadowed, is_netns), None);
        // A mount below /sys is not /sys.
        let below = format!("{host}30 23 0:40 / /sys/fs/bpf rw - bpf lab-real1 rw\n");
        assert_eq!(sysfs_of_ip_netns_exec(&below, is_netns), None);
    }

    #[test]
    fn the_nearest_existing_ancestor() {
        let tmp = std::env::temp_dir();
        assert_eq!(nearest_existing(&tmp.join("no-such-lb-dir/a/b")), tmp);
        assert_eq!(nearest_existing(Path::new("no-such-lb-dir/a")), PathBuf::from("."));
    }
}
