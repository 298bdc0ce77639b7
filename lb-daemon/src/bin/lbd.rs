//! lbd, the director daemon: loads the XDP data plane, health-checks the real servers of
//! its YAML config and serves the control socket. Runs in the foreground, logs to stderr.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use lb_daemon::config::{self, Config};
use lb_daemon::control::{self, InterfaceView, Request, Response};
use lb_daemon::core::{Capacity, Core, ha as core_ha, vrrp};
use lb_daemon::dataplane::{Dataplane, Fence};
use lb_daemon::drivers::{Driver, Event, ha, neighbor, pmtu};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "lbd", version, about = "XDP load balancer director")]
struct Args {
    /// The YAML service definitions.
    #[arg(long, short = 'f', value_name = "FILE")]
    config: PathBuf,
    /// Validate the config and exit: 0 if valid, 1 with every problem as FILE:LINE:COLUMN.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LBD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(invalid) => {
            eprintln!("{invalid}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        eprintln!(
            "{}: configuration is valid ({} services)",
            args.config.display(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args.config, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &Path, config: Config) -> Result<()> {
    let capacity = Capacity { vips: config.director.max_vips, reals: config.director.max_reals };
    let mut dp = Dataplane::load_with(capacity)?;
    let mut interfaces = Vec::new();
    for name in &config.director.interfaces {
        let mode = dp.attach(name, config.director.xdp_mode)?;
        info!(interface = %name, mode = ?mode, requested = ?config.director.xdp_mode, "XDP attached");
        interfaces.push(InterfaceView {
            name: name.clone(),
            xdp_mode: format!("{mode:?}").to_lowercase(),
        });
    }
    let links = dp.links().cloned().collect();
    let reader = dp.reader()?;
    let fence = dp.fence()?;
    if config.ha.is_none() {
        dp.disarm_fence()?;
    }
    let listener = Arc::new(control::bind(&config.director.socket)?);
    let (events, inbox) = mpsc::channel::<Event>(1024);
    let core = Core::new(capacity, links, interfaces, seed());
    let (mut driver, targets) = Driver::new(core, dp, path.into(), events.clone());
    driver.list_with(reader)?;
    if config.ha.is_some() {
        // No VIP is live in the data plane before this director is elected master.
        driver.serve_vips(false);
    }
    driver.start(config.clone())?;
    let ha_tasks = match &config.ha {
        Some(ha) => start_ha(ha, &config, &events, &fence)?,
        None => Vec::new(),
    };
    let ha_stops: Vec<_> = ha_tasks.iter().map(|(commands, _)| commands.clone()).collect();
    if let Some(ha) = &config.ha {
        driver.ha_with(ha.priority, ha_tasks);
    }
    let mut driver = tokio::spawn(driver.run(inbox));
    let (learnt_tx, learnt) = mpsc::channel(64);
    tokio::spawn(pmtu::run(learnt_tx));
    tokio::spawn(neighbor::run(targets, learnt, events.clone()));
    // The control server never returns; should it end anyway (a bug: a panic), it is
    // started again on the same socket, and the data plane goes on meanwhile.
    let mut control = tokio::spawn(control::serve(listener.clone(), events.clone()));
    info!(config = %path.display(), socket = %config.director.socket.display(), services = config.services.len(), "lbd running");

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let outcome = loop {
        tokio::select! {
            _ = hup.recv() => {
                let (tx, rx) = oneshot::channel();
                if events.send(Event::Control(Request::Reload, tx)).await.is_err() {
                    break Err(anyhow::anyhow!("the driver stopped"));
                }
                match rx.await {
                    Ok(Response::Ok { message }) => info!(%message, "SIGHUP"),
                    Ok(other) => warn!(response = ?other, "SIGHUP reload refused"),
                    Err(_) => break Err(anyhow::anyhow!("the driver stopped")),
                }
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
            _ = int.recv() => { info!("SIGINT: stopping"); break Ok(()) }
            served = &mut control => {
                let why = match served {
                    Err(e) => format!("{e}"),
                    Ok(()) => "returned".into(),
                };
                error!(%why, "the control server stopped: starting it again in 1 s; the data plane goes on");
                tokio::time::sleep(Duration::from_secs(1)).await;
                control = tokio::spawn(control::serve(listener.clone(), events.clone()));
            }
            // Without the driver nothing is checked or written: the data plane it owned
            // is gone already, so lbd says why and ends.
            ran = &mut driver => {
                break Err(match ran {
                    Err(e) => anyhow::anyhow!("the driver failed: {e}"),
                    Ok(()) => anyhow::anyhow!("the driver stopped"),
                });
            }
        }
    };
    // A master says priority 0 and gives the VIPs up, so a backup takes over after
    // Skew_Time, not Master_Down_Interval.
    for commands in ha_stops {
        let (done, stopped) = oneshot::channel();
        if commands.send(ha::Command::Shutdown(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), stopped).await;
        }
    }
    // Dropping the driver drops the data plane, which detaches XDP from the interfaces.
    if !driver.is_finished() {
        driver.abort();
        let _ = driver.await;
    }
    let _ = std::fs::remove_file(&config.director.socket);
    info!("XDP detached, socket removed");
    outcome
}

/// Seeds the checkers' jitter: different on every start, so directors do not probe in step.
fn seed() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// One failover task per address family of the VIPs (VRRPv3 carries one family an
/// advert), each with this director's own address on the HA interface as its source.
#[allow(clippy::type_complexity)]
fn start_ha(
    ha: &config::Ha,
    config: &Config,
    events: &mpsc::Sender<Event>,
    fence: &Fence,
) -> Result<Vec<(mpsc::Sender<ha::Command>, watch::Receiver<Option<core_ha::View>>)>> {
    let vips = ha.vips(&config.services);
    let mut tasks = Vec::new();
    for ipv4 in [true, false] {
        let family: Vec<IpAddr> = vips.iter().copied().filter(|v| v.is_ipv4() == ipv4).collect();
        if family.is_empty() {
            continue;
        }
        let primary = ha::source(&ha.interface, ipv4, &vips)?;
        let setup = ha::Setup {
            interface: ha.interface.clone(),
            settings: core_ha::Settings {
                vrrp: vrrp::Settings {
                    vrid: ha.vrid,
                    priority: ha.priority,
                    interval_cs: ha.interval_cs(),
                    preempt: ha.preempt,
                    preempt_delay: ha.preempt_delay,
                    primary,
                },
                vips: family,
                announce: core_ha::Announce::default(),
            },
            peers: ha.peers.iter().copied().filter(|p| p.is_ipv4() == ipv4).collect(),
            notify: ha.notify.clone(),
            fence: Some(fence.try_clone()?),
        };
        let (commands, inbox) = mpsc::channel(8);
        let (view, state) = watch::channel(None);
        tokio::spawn(ha::run(setup, inbox, view, events.clone()));
        tasks.push((commands, state));
    }
    Ok(tasks)
}
