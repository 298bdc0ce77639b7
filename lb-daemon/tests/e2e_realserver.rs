//! End to end, `lbadm realserver setup --mode tunnel` with the default pin root on a host
//! that has no bpffs at /sys/fs/bpf (as on a machine without systemd): lbadm mounts one
//! there itself, as bpftool does, and says so; and under `ip netns exec`, whose private
//! mount namespace would take the mount and the pins with it, it refuses before changing
//! anything. Root.
//!
//! The host's /sys/fs/bpf is never touched: the mounting test runs lbadm in a mount
//! namespace of its own (`unshare --mount --propagation private`), which the kernel
//! removes, with the bpffs and what is pinned in it, when its last process exits.

use std::process::Command;

use lb_lab::{self as lab, Lab, VIP};

const BPF_FS_MAGIC: &str = "cafe4a11";

/// The host's view of /sys/fs/bpf: its filesystem type and the mounts on and below it.
fn host_bpffs() -> (String, Vec<String>) {
    let fs = Command::new("stat").args(["-f", "-c", "%t", "/sys/fs/bpf"]).output().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts =
        mounts.lines().filter(|l| l.contains(" /sys/fs/bpf")).map(str::to_string).collect();
    (String::from_utf8_lossy(&fs.stdout).trim().to_string(), mounts)
}

fn own_mount_ns() -> String {
    std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string()
}

/// Runs in real1's network namespace, in a new mount namespace (a private copy of the
/// host's mounts) and a new PID namespace whose PID 1 is this script, so that lbadm sees a
/// mount namespace that lives on after it (PID 1's), as on a host. $1 lbadm, $2 the VIP,
/// $3 the test's own mount namespace.
const SCRIPT: &str = r#"
set -eu
# Never the host's mounts: stop unless unshare really gave this script a namespace.
[ "$(readlink /proc/self/ns/mnt)" != "$3" ] || { echo "not in a new mount namespace"; exit 99; }
# The copy of a host bpffs goes, in this namespace only: /sys/fs/bpf is sysfs's bare directory.
while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
echo "before: $(stat -f -c %t /sys/fs/bpf)"
"$1" realserver setup --vip "$2" --mode tunnel --interface eth0
echo "after: $(stat -f -c %t /sys/fs/bpf)"
ip -o link show dev eth0 | grep -q ' xdp' && echo "attached: yes"
"$1" realserver teardown --vip "$2" --mode tunnel --interface eth0
ip -o link show dev eth0 | grep -q ' xdp' || echo "detached: yes"
"#;

#[test]
fn setup_mounts_a_bpffs_at_sys_fs_bpf_when_none_is_there() {
    lb_lab::needs_root!();
    let lab = Lab::bare("lbm").expect("lab");
    let host_before = host_bpffs();
    let vip = VIP.to_string();
    let own = own_mount_ns();
    let unshare = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        SCRIPT,
        "sh",
        env!("CARGO_BIN_EXE_lbadm"),
        &vip,
        &own,
    ];
    let out = lab.exec_net(&lab::real_role(0), &unshare).unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(&format!("before: {BPF_FS_MAGIC}")), "{text}");
    assert!(text.contains("mounted a bpffs at /sys/fs/bpf"), "{text}");
    assert!(text.contains(&format!("after: {BPF_FS_MAGIC}")), "{text}");
    assert!(text.contains("lb_decap attached to eth0"), "{text}");
    assert!(text.contains(&format!("{vip} is decapsulated on eth0")), "{text}");
    assert!(text.contains("attached: yes") && text.contains("detached: yes"), "{text}");
    assert!(text.contains("lb_decap detached from eth0"), "{text}");
    assert_eq!(host_bpffs(), host_before, "the host's /sys/fs/bpf changed");
}

#[test]
fn setup_under_ip_netns_exec_refuses_before_changing_anything() {
    lb_lab::needs_root!();
    let lab = Lab::bare("lbx").expect("lab");
    let host_before = host_bpffs();
    let real = lab::real_role(0);
    let sysctls = || {
        let keys = ["arp_ignore", "arp_announce", "rp_filter"];
        let paths: Vec<String> =
            keys.iter().map(|k| format!("/proc/sys/net/ipv4/conf/eth0/{k}")).collect();
        let mut cat = vec!["cat"];
        cat.extend(paths.iter().map(String::as_str));
        lab.exec_ok(&real, &cat).unwrap()
    };
    let before = sysctls();
    let vip = VIP.to_string();
    let args = [
        env!("CARGO_BIN_EXE_lbadm"),
        "realserver",
        "setup",
        "--vip",
        &vip,
        "--mode",
        "tunnel",
        "--interface",
        "eth0",
    ];
    // Lab::exec is `ip netns exec`.
    let out = lab.exec(&real, &args).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lbadm succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let ns = lab.ns(&real);
    assert!(err.contains(&format!("the private mount namespace of `ip netns exec {ns}`")), "{err}");
    assert!(err.contains(&format!("nsenter --net=/run/netns/{ns} lbadm")), "{err}");
    assert!(!err.contains("creating /sys/fs/bpf"), "{err}");
    // Nothing changed: no VIP on lo, no sysctl, no program on eth0, no mount anywhere.
    let lo = lab.exec_ok(&real, &["ip", "-o", "addr", "show", "dev", "lo"]).unwrap();
    assert!(!lo.contains(&vip), "{lo}");
    assert_eq!(sysctls(), before);
    let link = lab.exec_ok(&real, &["ip", "-o", "link", "show", "dev", "eth0"]).unwrap();
    assert!(!link.contains(" xdp"), "{link}");
    assert_eq!(host_bpffs(), host_before, "the host's /sys/fs/bpf changed");
}
