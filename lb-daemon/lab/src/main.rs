//! The lab behind `cargo xtask lab`: builds the namespace lab, starts nginx and dnsmasq on
//! three reals and lbd on the director with examples/lab.yaml, sends HTTP and DNS through
//! the VIP, and shows what an operator would look at: lbadm's listing and status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use lb_daemon::config;
use lb_daemon::control::{self, Request, Response};
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, REALS6, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

const PREFIX: &str = "lblab";

#[derive(Parser)]
#[command(name = "lb-lab", about = "Run the load balancer in a lab of network namespaces")]
struct Args {
    /// lbd's config (the lab's addresses are those of examples/lab.yaml).
    #[arg(long, default_value = "examples/lab.yaml")]
    config: PathBuf,
    /// Leave the lab running.
    #[arg(long)]
    keep: bool,
    /// Remove a lab left by --keep, then exit.
    #[arg(long)]
    clean: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.clean { clean() } else { run(&args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no parent directory")?.join(name))
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn run(args: &Args) -> Result<()> {
    let cfg = config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let socket = cfg.director.socket.clone();
    if Path::new("/run/netns").join(format!("{PREFIX}-director")).exists() {
        bail!("a lab is already running (from --keep): remove it with `cargo xtask lab --clean`");
    }
    step(
        "building the lab: client, director, real1-3 on one bridge (198.51.100.0/24, 2001:db8:100::/64)",
    );
    let mut lab = Lab::new(PREFIX)?;
    for i in 0..REALS.len() {
        lab.start_nginx(i)?;
        lab.start_dns(i)?;
        println!(
            "real{}  {} {}  nginx on :80, dnsmasq on :53, VIPs {VIP} {VIP6} on lo (arp_ignore=1, arp_announce=2)",
            i + 1,
            REALS[i],
            REALS6[i]
        );
    }
    step(&format!("starting lbd --config {} in the director namespace", args.config.display()));
    let lbd = sibling("lbd")?;
    let config_path = std::fs::canonicalize(&args.config)?;
    lab.spawn(
        ROLE_DIRECTOR,
        "lbd",
        &[lbd.to_str().context("path")?, "--config", config_path.to_str().context("path")?],
    )?;
    let start = Instant::now();
    loop {
        if let Ok(Response::Status(s)) = control::call(&socket, &Request::Status)
            && s.reals.iter().all(|r| r.health == Health::Up && r.mac.is_some())
        {
            println!("every real server is up and resolved after {:.1?}", start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("reals not up after 30 s; lbd's log:\n{}", lab.log(ROLE_DIRECTOR, "lbd"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    print!("{}", indent(&lab.log(ROLE_DIRECTOR, "lbd")));

    for vip in [SocketAddr::new(VIP.into(), 80), SocketAddr::new(VIP6.into(), 80)] {
        step(&format!("client: 200 HTTP requests to http://{vip}/, one connection each"));
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for answer in lab.http_gets(ROLE_CLIENT, vip, 200)? {
            *served.entry(answer.unwrap_or_else(|e| format!("FAILED ({e})"))).or_default() += 1;
        }
        for (who, n) in &served {
            println!("  {who:<8} {n:>4}");
        }
    }

    step("client: 30 DNS queries (UDP) for whoami.lab TXT at 198.51.100.10");
    let mut dig = vec!["dig", "+short", "+tries=1", "+time=2", "@198.51.100.10"];
    for _ in 0..30 {
        dig.extend(["whoami.lab", "TXT"]);
    }
    let out = lab.exec_ok(ROLE_CLIENT, &dig)?;
    let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
    for line in out.lines() {
        *answered.entry(line.trim_matches('"')).or_default() += 1;
    }
    for (who, n) in &answered {
        println!("  {who:<8} {n:>4}");
    }

    let lbadm = sibling("lbadm")?;
    for cmd in [vec!["-L", "-n", "--stats"], vec!["-L", "-n"], vec!["status"]] {
        step(&format!("lbadm {}", cmd.join(" ")));
        let out = Command::new(&lbadm).arg("--socket").arg(&socket).args(&cmd).output()?;
        print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    if args.keep {
        lab.keep();
        step("the lab keeps running");
        println!(
            "  enter a host:   ip netns exec {PREFIX}-client bash   (also {PREFIX}-director, {PREFIX}-real1..3)"
        );
        println!("  try it:         ip netns exec {PREFIX}-client curl -s http://198.51.100.10/");
        println!(
            "  look:           {} --socket {} -L -n --stats",
            lbadm.display(),
            socket.display()
        );
        println!("  remove it:      cargo xtask lab --clean");
    } else {
        step("removing the lab (use --keep to leave it running)");
    }
    Ok(())
}

/// Removes what a `--keep` lab left: its processes, namespaces and directories.
fn clean() -> Result<()> {
    let list = Command::new("ip").args(["netns", "list"]).output()?;
    let mut removed = 0;
    for ns in
        String::from_utf8_lossy(&list.stdout).lines().filter_map(|l| l.split_whitespace().next())
    {
        if !ns.starts_with(&format!("{PREFIX}-")) {
            continue;
        }
        let pids = Command::new("ip").args(["netns", "pids", ns]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
        // Until they are gone, or 5 s; then whatever is left is killed.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = Command::new("ip").args(["netns", "pids", ns]).output()?;
            if left.stdout.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pids = Command::new("ip").args(["netns", "pids", ns]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        removed += 1;
    }
    for entry in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&format!("{PREFIX}-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    println!("removed {removed} namespaces of the lab");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  | {l}\n")).collect()
}
