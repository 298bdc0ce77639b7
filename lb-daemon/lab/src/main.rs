//! The lab behind `cargo xtask lab`: builds the namespace lab, starts nginx, dnsmasq and
//! slapd on three reals and lbd on two directors (examples/lab.yaml, priority 200, and
//! examples/lab-director2.yaml, priority 100), sends HTTP, DNS and LDAP through the VIP, shows
//! what an operator would look at (lbadm's listing and status), one real dying and coming
//! back in `lbadm status`, then cuts the master's
//! cable while 50 long-lived connections and new requests flow, and shows the takeover,
//! the unbroken connections, and the fail-back when the cable is back.

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
use lb_lab::failover::{Traffic, Watch};
use lb_lab::{DIRECTOR2, DIRECTOR2_6, Lab, REALS, REALS6, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

/// The second director's namespace role.
const ROLE_DIRECTOR2: &str = "director2";

const PREFIX: &str = "lblab";

#[derive(Parser)]
#[command(name = "lb-lab", about = "Run the load balancer in a lab of network namespaces")]
struct Args {
    /// The first director's config (the lab's addresses are those of examples/lab.yaml).
    #[arg(long, default_value = "examples/lab.yaml")]
    config: PathBuf,
    /// The second director's config: the same services, a lower priority.
    #[arg(long, default_value = "examples/lab-director2.yaml")]
    config2: PathBuf,
    /// Leave the lab running.
    #[arg(long)]
    keep: bool,
    /// Remove a lab left by --keep, then exit.
    #[arg(long)]
    clean: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.clean { clean(&args) } else { run(&args) };
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

/// Prints how many answers each real gave, and the failures.
fn tally(answers: impl IntoIterator<Item = Result<String, String>>) {
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for answer in answers {
        *served.entry(answer.unwrap_or_else(|e| format!("FAILED ({e})"))).or_default() += 1;
    }
    for (who, n) in &served {
        println!("  {who:<8} {n:>4}");
    }
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn run(args: &Args) -> Result<()> {
    let cfg = config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg2 = config::load(&args.config2).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sockets = [cfg.director.socket.clone(), cfg2.director.socket.clone()];
    if Path::new("/run/netns").join(format!("{PREFIX}-director")).exists() {
        bail!("a lab is already running (from --keep): remove it with `cargo xtask lab --clean`");
    }
    step(
        "building the lab: client, two directors, real1-3 on one bridge (198.51.100.0/24, 2001:db8:100::/64)",
    );
    // Dropped after the lab (which stops lbd first): the pins go also when a step fails.
    let mut unpinning = UnpinAtEnd { args, keep: false };
    let mut lab = Lab::new(PREFIX)?;
    // The VIPs are the master's to add (ha), not the lab's.
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"])?;
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP6}/128"), "dev", "eth0"])?;
    lab.add_director(ROLE_DIRECTOR2, DIRECTOR2, DIRECTOR2_6)?;
    println!("director   198.51.100.2  priority 200   director2  {DIRECTOR2}  priority 100");
    for i in 0..REALS.len() {
        lab.start_nginx(i)?;
        lab.start_dns(i)?;
        lab.start_ldap(i)?;
        println!(
            "real{}  {} {}  nginx on :80 and :8443, dnsmasq on :53, slapd on :389, VIPs {VIP} {VIP6} on lo (arp_ignore=1, arp_announce=2)",
            i + 1,
            REALS[i],
            REALS6[i]
        );
    }
    let lbd = sibling("lbd")?;
    let lbd = lbd.to_str().context("path")?;
    let configs = [std::fs::canonicalize(&args.config)?, std::fs::canonicalize(&args.config2)?];
    for (role, path) in [ROLE_DIRECTOR, ROLE_DIRECTOR2].iter().zip(&configs) {
        step(&format!(
            "starting lbd --config {} on {role} (its own network namespace, the host's mounts: the data plane is pinned)",
            path.display()
        ));
        lab.spawn_net(role, "lbd", &[lbd, "--config", path.to_str().context("path")?])?;
    }
    let start = Instant::now();
    let ready = |i: usize, state: &str| {
        matches!(control::call(&sockets[i], &Request::Status), Ok(Response::Status(s))
            if s.director.ha_state == state
                && s.director.routers.iter().all(|r| r.state == state)
                && s.reals.iter().all(|r| r.health == Health::Up && r.mac.is_some()))
    };
    while !(ready(0, "MASTER") && ready(1, "BACKUP")) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "no master with every real up after 30 s; lbd's logs:\n{}\n{}",
                lab.log(ROLE_DIRECTOR, "lbd"),
                lab.log(ROLE_DIRECTOR2, "lbd")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "director is MASTER, director2 BACKUP, every real up and resolved after {:.1?}",
        start.elapsed()
    );
    print!("{}", indent(&lab.log(ROLE_DIRECTOR, "lbd")));

    for vip in [SocketAddr::new(VIP.into(), 80), SocketAddr::new(VIP6.into(), 80)] {
        step(&format!("client: 200 HTTP requests to http://{vip}/, one connection each"));
        tally(lab.http_gets(ROLE_CLIENT, vip, 200)?);
    }

    for (transport, flag) in [("UDP", "+notcp"), ("TCP", "+tcp")] {
        step(&format!("client: 30 DNS queries ({transport}) for whoami.lab TXT at 198.51.100.10"));
        let mut dig = vec!["dig", flag, "+short", "+tries=1", "+time=2", "@198.51.100.10"];
        for _ in 0..30 {
            dig.extend(["whoami.lab", "TXT"]);
        }
        let out = lab.exec_ok(ROLE_CLIENT, &dig)?;
        tally(out.lines().map(|l| Ok(l.trim_matches('"').to_string())));
    }

    step(
        "client: 30 HTTPS requests to https://198.51.100.10:8443/ (curl, the reals' certificate is self-signed)",
    );
    tally(lab.https_gets(SocketAddr::new(VIP.into(), 8443), 30)?);

    step(
        "client: 30 LDAP searches of dc=lab at ldap://198.51.100.10 (ldapsearch), one connection each",
    );
    tally(lab.ldap_searches(VIP.into(), 30)?);

    let lbadm = sibling("lbadm")?;
    let show = |socket: &Path, cmd: &[&str]| -> Result<()> {
        step(&format!("lbadm --socket {} {}", socket.display(), cmd.join(" ")));
        let out = Command::new(&lbadm).arg("--socket").arg(socket).args(cmd).output()?;
        print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    show(&sockets[0], &["-L", "-n", "--stats"])?;
    show(&sockets[0], &["-L", "-n"])?;
    show(&sockets[0], &["status"])?;
    show(&sockets[1], &["status"])?;
    if let Some(addr) = cfg.director.metrics {
        step(&format!("client: curl http://{addr}/metrics (Prometheus text; a few of its series)"));
        let url = format!("http://{addr}/metrics");
        let text = lab.exec_ok(ROLE_CLIENT, &["curl", "-s", "--max-time", "5", &url])?;
        let shown = ["lb_service_connections_total", "lb_real_up{", "lb_ha_state{"];
        for line in text.lines().filter(|l| shown.iter().any(|s| l.starts_with(s))) {
            println!("  {line}");
        }
    }

    // One real dies and comes back: its checks take it out of every service and back in.
    let real1 = std::net::IpAddr::V4(REALS[0]);
    let real1_state = |want: Health| {
        matches!(control::call(&sockets[0], &Request::Status), Ok(Response::Status(s))
            if s.reals.iter().filter(|r| r.address.ip() == real1 && (r.service.starts_with("web") || r.service == "ldap")).all(|r| r.health == want))
    };
    let wait = |what: &str, want: Health| -> Result<Duration> {
        let start = Instant::now();
        while !real1_state(want) {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("real1 not {what} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(start.elapsed())
    };
    step("real1's nginx and slapd stopped (its http, https and ldap checks fail)");
    lab.stop(&lb_lab::real_role(0), "nginx")?;
    lab.stop(&lb_lab::real_role(0), "slapd")?;
    println!("  real1 down in web, web-tls and ldap after {:.1?}", wait("down", Health::Down)?);
    show(&sockets[0], &["status"])?;
    step("real1's nginx and slapd started again");
    lab.start_nginx(0)?;
    lab.start_ldap(0)?;
    println!("  real1 up again after {:.1?}", wait("up", Health::Up)?);
    show(&sockets[0], &["status"])?;

    failover(&mut lab, &sockets)?;
    show(&sockets[0], &["status"])?;
    show(&sockets[1], &["status"])?;

    if args.keep {
        lab.keep();
        unpinning.keep = true;
        step("the lab keeps running");
        println!(
            "  enter a host:   ip netns exec {PREFIX}-client bash   (also {PREFIX}-director, {PREFIX}-director2, {PREFIX}-real1..3)"
        );
        println!("  try it:         ip netns exec {PREFIX}-client curl -s http://198.51.100.10/");
        println!(
            "  look:           {} --socket {} -L -n --stats",
            lbadm.display(),
            sockets[0].display()
        );
        println!("  remove it:      cargo xtask lab --clean");
    } else {
        step("removing the lab (use --keep to leave it running)");
    }
    Ok(())
}

/// Removes the directors' pins when dropped, unless the lab is kept.
struct UnpinAtEnd<'a> {
    args: &'a Args,
    keep: bool,
}

impl Drop for UnpinAtEnd<'_> {
    fn drop(&mut self) {
        if !self.keep {
            unpin(self.args);
        }
    }
}

/// Cuts the master's cable while traffic flows; shows the takeover and the connections;
/// plugs it back and shows the fail-back.
fn failover(lab: &mut Lab, sockets: &[PathBuf; 2]) -> Result<()> {
    let state = |i: usize| match control::call(&sockets[i], &Request::Status) {
        Ok(Response::Status(s)) => s.director.ha_state,
        _ => String::new(),
    };
    let wait = |i: usize, want: &str| -> Result<Duration> {
        let start = Instant::now();
        while state(i) != want {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("director{} not {want} within 20 s", i + 1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(start.elapsed())
    };
    let vip = SocketAddr::new(VIP.into(), 80);
    step("client: 50 long-lived connections (a request every 50 ms each), 4 loops of new requests");
    let watch = Watch::start(lab, &[ROLE_DIRECTOR, ROLE_DIRECTOR2], VIP)?;
    let traffic = Traffic::start(lab, vip, 50, 4, true)?;
    if !traffic.wait_answered_since(Instant::now(), Duration::from_secs(10)) {
        bail!("the traffic does not come through: {:?}", traffic.errors());
    }
    let port = lab.switch_port(ROLE_DIRECTOR).context("no switch port")?;
    for (what, up, from, to) in
        [("cutting the master's cable", "down", 0, 1), ("plugging it back", "up", 1, 0)]
    {
        step(&format!("{what} (ip link set {port} {up}, in the switch)"));
        let before = traffic.counts();
        let since = Instant::now();
        lab.exec_ok("switch", &["ip", "link", "set", &port, up])?;
        let took = wait(to, "MASTER")?;
        let crossed = Instant::now();
        while !watch.forwarded_since(since, to) && crossed.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        traffic.wait_answered_since(Instant::now(), Duration::from_secs(30));
        let d = traffic.counts() - before;
        println!("  director{} MASTER after {took:.0?} (lbadm status polled)", to + 1);
        match watch.takeover(since, from, to) {
            Some(t) => println!(
                "  takeover: {t:.0?} from the last frame through director{} to the first through director{}",
                from + 1,
                to + 1
            ),
            None => println!("  takeover: director{} forwarded nothing yet", to + 1),
        }
        println!(
            "  long-lived connections broken: {} of 50 ({} exchanges meanwhile); new requests: {} answered, {} failed",
            d.broken, d.exchanges, d.new_ok, d.new_failed
        );
    }
    let total = traffic.stop();
    println!(
        "  in all: {} long-lived exchanges, {} broken connections, {} new requests answered, {} failed",
        total.exchanges, total.broken, total.new_ok, total.new_failed
    );
    Ok(())
}

/// Removes the directors' pinned data planes (lbd --unpin), saying what it did.
fn unpin(args: &Args) {
    let Ok(lbd) = sibling("lbd") else { return };
    for config in [&args.config, &args.config2] {
        match Command::new(&lbd).arg("--config").arg(config).arg("--unpin").output() {
            Ok(out) => print!(
                "{}{}",
                indent(&String::from_utf8_lossy(&out.stdout)),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("lbd --unpin: {e}"),
        }
    }
}

/// Removes what a `--keep` lab left: its processes, namespaces, pinned data planes and
/// directories.
fn clean(args: &Args) -> Result<()> {
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
    unpin(args);
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  | {l}\n")).collect()
}
