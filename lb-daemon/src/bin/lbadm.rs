//! lbadm: inspects and changes a running lbd through its control socket, with ipvsadm's
//! flags and ipvsadm's output, so habits and scripts carry over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{ArgGroup, Parser, Subcommand};
use lb_daemon::config::Protocol;
use lb_daemon::control::{self, Request, Response};
use lb_daemon::ipvsadm::{self, Listing};

#[derive(Parser)]
#[command(name = "lbadm", version, about = "ipvsadm-compatible admin command for lbd")]
#[command(group(ArgGroup::new("action").args(["list", "edit_server"])))]
#[command(group(ArgGroup::new("service").args(["tcp_service", "udp_service"])))]
struct Cli {
    /// lbd's control socket.
    #[arg(long, env = "LBD_SOCKET", default_value = "/run/lbd/lbd.sock", global = true)]
    socket: PathBuf,
    /// List services and real servers (-L, --list).
    #[arg(short = 'L', visible_short_alias = 'l', long = "list")]
    list: bool,
    /// Numeric output (lbadm never resolves names; accepted for ipvsadm habits).
    #[arg(short = 'n', long = "numeric")]
    numeric: bool,
    /// Show counters: Conns, InPkts, OutPkts, InBytes, OutBytes.
    #[arg(long)]
    stats: bool,
    /// Edit a real server (with -t|-u, -r and -w).
    #[arg(short = 'e', long = "edit-server")]
    edit_server: bool,
    /// A TCP service VIP:PORT.
    #[arg(short = 't', long = "tcp-service", value_name = "VIP:PORT")]
    tcp_service: Option<SocketAddr>,
    /// A UDP service VIP:PORT.
    #[arg(short = 'u', long = "udp-service", value_name = "VIP:PORT")]
    udp_service: Option<SocketAddr>,
    /// The real server, RIP or RIP:PORT.
    #[arg(short = 'r', long = "real-server", value_name = "RIP[:PORT]")]
    real_server: Option<String>,
    /// The real server's weight, 0 (quiescent) to 65535.
    #[arg(short = 'w', long = "weight")]
    weight: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Health of every real server and HA state of the director.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Reread lbd's config file, as SIGHUP does.
    Reload,
    /// Prepare (or undo) a real server for a mode: VIP on lo, ARP sysctls, and for tunnel
    /// the decapsulation program, pinned so it outlives the command.
    Realserver {
        #[command(subcommand)]
        action: RealserverAction,
    },
}

#[derive(Subcommand)]
enum RealserverAction {
    Setup(RealserverArgs),
    Teardown(RealserverArgs),
}

#[derive(clap::Args)]
struct RealserverArgs {
    /// The VIP this real serves.
    #[arg(long)]
    vip: std::net::IpAddr,
    #[arg(long, value_enum)]
    mode: lb_daemon::realserver::Mode,
    /// The interface the director's packets arrive on.
    #[arg(long)]
    interface: String,
    /// The bpffs directory the decapsulation program is pinned below (mounted if needed).
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    pin_root: PathBuf,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbadm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let service = match (cli.tcp_service, cli.udp_service) {
        (Some(v), _) => Some((Protocol::Tcp, v)),
        (_, Some(v)) => Some((Protocol::Udp, v)),
        _ => None,
    };
    match cli.command {
        Some(Command::Status { json }) => return status(&cli.socket, json),
        Some(Command::Realserver { action }) => {
            let (args, setup) = match action {
                RealserverAction::Setup(a) => (a, true),
                RealserverAction::Teardown(a) => (a, false),
            };
            let real = lb_daemon::realserver::RealServer {
                vip: args.vip,
                mode: args.mode,
                interface: args.interface,
                pin_root: args.pin_root,
            };
            let done = if setup { real.setup()? } else { real.teardown()? };
            for line in done {
                println!("{line}");
            }
            return Ok(());
        }
        Some(Command::Reload) => {
            return match control::call(&cli.socket, &Request::Reload)? {
                Response::Ok { message } => {
                    println!("{message}");
                    Ok(())
                }
                other => fail(other),
            };
        }
        None => {}
    }
    if cli.edit_server {
        let Some((protocol, vip)) = service else { bail!("-e needs -t or -u VIP:PORT") };
        let real = cli.real_server.as_deref().context("-e needs -r RIP[:PORT]")?;
        let weight = cli.weight.context("-e needs -w WEIGHT")?;
        let real = parse_real(real, vip.port())?;
        return match control::call(
            &cli.socket,
            &Request::SetWeight { protocol, vip, real, weight },
        )? {
            Response::Ok { .. } => Ok(()),
            other => fail(other),
        };
    }
    // ipvsadm with no command lists, and so does lbadm.
    let _ = cli.numeric;
    let listing = if cli.stats { Listing::Stats } else { Listing::Default };
    match control::call(&cli.socket, &Request::List)? {
        Response::List { services } => {
            if let Some((p, v)) = service
                && !services.iter().any(|s| s.protocol == p && s.vip == v)
            {
                bail!("No such service");
            }
            print!("{}", ipvsadm::list(&services, listing, service));
            Ok(())
        }
        other => fail(other),
    }
}

fn parse_real(s: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    let ip = ip.parse().with_context(|| format!("`{s}` is not RIP or RIP:PORT"))?;
    Ok(SocketAddr::new(ip, default_port))
}

fn status(socket: &std::path::Path, json: bool) -> Result<()> {
    let Response::Status(view) = control::call(socket, &Request::Status)? else {
        bail!("unexpected response to status");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let ifaces: Vec<String> =
        view.director.interfaces.iter().map(|i| format!("{} ({})", i.name, i.xdp_mode)).collect();
    let d = &view.director;
    let mut ha = d.ha_state.clone();
    if let Some(p) = d.priority {
        ha += &format!("  priority {p}");
    }
    if let Some(m) = d.master {
        ha += &format!("  master {m}");
    }
    if let Some(s) = d.since_secs {
        ha += &format!("  since {s}s");
    }
    println!("Director  HA state: {ha}  Interfaces: {}", ifaces.join(", "));
    // With a virtual router per family, each is shown: one may be master while the other
    // is not yet.
    if d.routers.len() > 1 {
        for r in &d.routers {
            let master = r.master.map(|m| format!("  master {m}")).unwrap_or_default();
            println!("  {}: {}{master}  since {}s", r.family, r.state, r.since_secs);
        }
    }
    if !d.transitions.is_empty() {
        let entered: Vec<String> =
            d.transitions.iter().map(|r| format!("{} {}", r.reason, r.packets)).collect();
        println!("HA transitions: {}", entered.join(", "));
    }
    if d.checks_late > 0 {
        println!(
            "Checks started late (past a tenth of their interval) since lbd started: {} (a director too loaded to check on time)",
            d.checks_late
        );
    }
    if !d.adverts_dropped.is_empty() {
        let dropped: Vec<String> =
            d.adverts_dropped.iter().map(|r| format!("{} {}", r.reason, r.packets)).collect();
        println!("VRRP adverts dropped: {}", dropped.join(", "));
    }
    println!(
        "SERVICE      REAL                       HEALTH   WEIGHT MAC                  SINCE  LAST CHECK"
    );
    for r in &view.reals {
        let last = match &r.last_check {
            Some((true, d)) => format!("ok: {d}"),
            Some((false, d)) => format!("failed: {d}"),
            None => "-".into(),
        };
        println!(
            "{:<12} {:<26} {:<8} {:<6} {:<18} {:>6}s  {}",
            r.service,
            r.address.to_string(),
            format!("{:?}", r.health).to_lowercase(),
            r.weight,
            r.mac.as_deref().unwrap_or("unresolved"),
            r.since_secs,
            last
        );
        // Several checks: each on a line of its own, with its own last result.
        if r.checks.len() > 1 {
            for c in &r.checks {
                let last = match &c.last {
                    Some((true, d)) => format!("ok: {d}"),
                    Some((false, d)) => format!("failed: {d}"),
                    None => "-".into(),
                };
                let since = c.since_secs.map_or("-".into(), |s| format!("{s}s"));
                let health = format!("{:?}", c.health).to_lowercase();
                println!(
                    "{:<12} {:<26} check {:<5} {health:<8} {since:>6}  {last}",
                    "", "", c.kind
                );
            }
        }
        if let Some(router) = r.via {
            println!("{:<12} {:<26} reached via {router}", "", "");
        }
        if let Some(why) = &r.unreachable {
            println!("{:<12} {:<26} no new connections: {why}", "", "");
        }
    }
    let counted: Vec<String> = view
        .packets
        .iter()
        .filter(|c| c.packets > 0)
        .map(|c| format!("{} {}", c.reason, c.packets))
        .collect();
    if !counted.is_empty() {
        println!("Data plane packets: {}", counted.join(", "));
    }
    Ok(())
}

fn fail(response: Response) -> Result<()> {
    match response {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected response: {other:?}"),
    }
}
