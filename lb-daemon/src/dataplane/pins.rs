//! The data plane pinned under `director.pin_root`, so it outlives lbd as IPVS's table
//! outlives ipvsadm: the maps (`maps/NAME`), the program (`lb_xdp`) and each interface's
//! XDP link (`links/IFNAME`). A link pinned holds its program and maps; while it is
//! there, packets are forwarded whether lbd runs or not. `lbd --unpin` removes it all.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapInfo;
use aya_obj::Map as MapDef;

use crate::realserver::{Bpffs, bpffs_for, mount_bpffs};

/// A pin root on a bpffs, ready for pins, and held: one lbd at a time.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
    /// The root directory, flock'ed while this lbd runs: a second lbd on the same pin
    /// root would take the first one's links and maps over from under it.
    _lock: std::sync::Arc<std::fs::File>,
}

/// Takes `root`'s lock, or says who holds it.
fn lock(root: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another lbd holds the data plane pinned at {} (each director, each network \
             namespace, needs a pin_root of its own): {}",
            root.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(dir)
}

impl Pins {
    /// Makes `root` ready: mounts a bpffs where there is none (as bpftool does, said in
    /// the log) and creates the directories. `Ok(Err(why))` when pins there would not
    /// outlive lbd: this process's mount namespace is private (`ip netns exec`) and `root`
    /// is on no bpffs, so lbd runs unpinned and says so.
    pub fn prepare(root: &Path) -> Result<Result<Pins, String>> {
        match bpffs_for(root)? {
            Ok(Bpffs::Present) => {}
            Ok(Bpffs::MountAt(at)) => {
                mount_bpffs(&at)?;
                tracing::info!(at = %at.display(), "mounted a bpffs for the data plane's pins (there was none)");
            }
            Err((why, netns)) => {
                let how = match netns {
                    Some(ns) => format!("run lbd with `nsenter --net=/run/netns/{ns}`"),
                    None => "run lbd in the host's mount namespace".into(),
                };
                return Ok(Err(format!(
                    "{} is on no bpffs and {why}, where pins would vanish with lbd: {how}, or \
                     give a pin_root on a bpffs",
                    root.display()
                )));
            }
        }
        for dir in [root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = lock(root)?;
        Ok(Ok(Pins { root: root.to_path_buf(), _lock: std::sync::Arc::new(lock) }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.root.join(lb_common::XDP_PROGRAM)
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.root.join("links").join(interface)
    }

    /// The interfaces with a pinned link.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.root.join("links")) else { return Vec::new() };
        dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    }
}

/// Whether the map pinned at `path` has the layout `wanted` (what this build's object
/// declares, sized for the config): `Err` says what differs.
pub fn same_layout(path: &Path, wanted: &MapDef) -> Result<(), String> {
    let info = MapInfo::from_pin(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let kind = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let pairs = [
        ("map type", kind, wanted.map_type()),
        ("key size", info.key_size(), wanted.key_size()),
        ("value size", info.value_size(), wanted.value_size()),
        ("max_entries", info.max_entries(), wanted.max_entries()),
        ("flags", info.map_flags(), wanted.map_flags()),
    ];
    let differ: Vec<String> = pairs
        .iter()
        .filter(|(_, have, want)| have != want)
        .map(|(what, have, want)| format!("{what} {have}, this build's {want}"))
        .collect();
    if differ.is_empty() { Ok(()) } else { Err(differ.join(", ")) }
}

/// Removes everything pinned under `root` for good: the links (which detaches the program
/// from their interfaces), the program and the maps. Returns what it did, for the operator.
pub fn remove(root: &Path) -> Result<Vec<String>> {
    if !root.exists() {
        return Ok(vec![format!("nothing pinned at {}", root.display())]);
    }
    let _held = lock(root)?;
    let mut done = Vec::new();
    for (dir, what) in [("links", "XDP link"), ("maps", "map")] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            done.push(format!("removed {what} {}", path.display()));
        }
        let _ = std::fs::remove_dir(root.join(dir));
    }
    let program = root.join(lb_common::XDP_PROGRAM);
    if program.exists() {
        std::fs::remove_file(&program)
            .with_context(|| format!("unpinning {}", program.display()))?;
        done.push(format!("removed program {}", program.display()));
    }
    match std::fs::remove_dir(root) {
        Ok(()) => done.push(format!("removed {}", root.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            bail!("{} still holds what lbd did not pin: {e}", root.display())
        }
        // A mount point (a bpffs mounted right there) stays, empty.
        Err(e) => done.push(format!("left {} in place: {e}", root.display())),
    }
    Ok(done)
}
