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
use lb_daemon::dataplane::pins::Pins;
use lb_daemon::dataplane::{Dataplane, Fence, Kept};
use lb_daemon::drivers::{Driver, Event, ha, neighbor, pmtu};
use lb_daemon::systemd::{self, NotifyState};
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
    /// Remove the data plane pinned under the config's `director.pin_root` for good: its
    /// XDP links (detaching it from the interfaces), program and maps. Refused while lbd
    /// runs.
    #[arg(long, conflicts_with = "check")]
    unpin: bool,
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
    if args.unpin {
        return unpin(&config);
    }
    // Warnings change nothing: the config is valid, and lbd runs with it.
    let text = std::fs::read_to_string(&args.config).unwrap_or_default();
    for warning in config::warnings(&args.config, &text, &config) {
        if args.check {
            eprintln!("{warning}");
        } else {
            warn!("{warning}");
        }
    }
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
    let (mut dp, kept) = load(capacity, &config.director.pin_root)?;
    let mut interfaces = Vec::new();
    for name in &config.director.interfaces {
        let mode = dp.attach(name, config.director.xdp_mode)?;
        info!(interface = %name, mode = ?mode, requested = ?config.director.xdp_mode, "XDP attached");
        interfaces.push(InterfaceView {
            name: name.clone(),
            xdp_mode: format!("{mode:?}").to_lowercase(),
        });
    }
    for gone in dp.unpin_other_links(&config.director.interfaces) {
        info!(interface = %gone, "no longer in the config: its pinned XDP link removed");
    }
    let kept_pins = dp.pin_root().is_some();
    let links = dp.links().cloned().collect();
    let reader = dp.reader()?;
    let adopted = if kept.tables() { Some(dp.adopted()?) } else { None };
    let fence = dp.fence()?;
    if config.ha.is_none() {
        dp.disarm_fence()?;
    }
    let listener = Arc::new(control::bind(&config.director.socket)?);
    let metrics = match config.director.metrics {
        Some(addr) => Some(lb_daemon::metrics::bind(addr).await?),
        None => None,
    };
    let (events, inbox) = mpsc::channel::<Event>(1024);
    let mut core = Core::new(capacity, links, interfaces, seed());
    if let Some(adopted) = adopted {
        info!(
            vips = adopted.vips.len(),
            reals = adopted.reals.len(),
            "going on from the pinned data plane: ids, flows and counters kept"
        );
        core.adopt(adopted);
    }
    let (mut driver, targets) = Driver::new(core, dp, path.into(), events.clone());
    driver.list_with(reader)?;
    if let Some(ha) = &config.ha {
        // No VIP is live in the data plane before this director is elected master, and
        // none on the interface either (a lbd killed as master left them there).
        let vips = ha.vips(&config.services);
        if let Err(e) = ha::release_vips(&ha.interface, &vips).await {
            warn!(error = %format!("{e:#}"), "removing the VIPs from the HA interface at start");
        }
        // A family without a virtual router (none of its VIPs at start; a reload may add
        // one) is served as without `ha`: nothing would ever say it may be.
        for ipv4 in [true, false] {
            if vips.iter().any(|v| v.is_ipv4() == ipv4) {
                driver.serve_family(ipv4, false);
            }
        }
    }
    driver.start(config.clone())?;
    let ha_tasks = match &config.ha {
        Some(ha) => start_ha(ha, &config, &events, &fence, driver.readiness())?,
        None => Vec::new(),
    };
    let ha_stops: Vec<_> = ha_tasks.iter().map(|(commands, _)| commands.clone()).collect();
    if let Some(ha) = &config.ha {
        driver.ha_with(ha.priority, ha_tasks);
    }
    let pinned = config.director.pin_root.clone();
    let pinned = kept_pins.then_some(pinned);
    let mut driver = tokio::spawn(driver.run(inbox));
    let (learnt_tx, learnt) = mpsc::channel(64);
    tokio::spawn(pmtu::run(learnt_tx));
    tokio::spawn(neighbor::run(targets, learnt, events.clone()));
    // The control server never returns; should it end anyway (a bug: a panic), it is
    // started again on the same socket, and the data plane goes on meanwhile.
    let mut control = tokio::spawn(control::serve(listener.clone(), events.clone()));
    if let Some(metrics) = metrics {
        info!(address = %config.director.metrics.map(|a| a.to_string()).unwrap_or_default(), "metrics served at /metrics");
        tokio::spawn(lb_daemon::metrics::serve(metrics, events.clone()));
    }
    info!(config = %path.display(), socket = %config.director.socket.display(), services = config.services.len(), "lbd running");
    // Type=notify: `systemctl start` returns once the control socket answers and the
    // first config is in the data plane.
    systemd::ready(&format!("serving {} services from {}", config.services.len(), path.display()));
    watchdog(events.clone());

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let outcome = loop {
        tokio::select! {
            _ = hup.recv() => {
                // Answered in a task of its own: a driver that hangs must not hold up
                // SIGTERM, and with it the hand-over of the VIPs.
                let (tx, rx) = oneshot::channel();
                if events.send(Event::Control(Request::Reload, tx)).await.is_err() {
                    break Err(anyhow::anyhow!("the driver stopped"));
                }
                tokio::spawn(async move {
                    match rx.await {
                        Ok(Response::Ok { message }) => info!(%message, "SIGHUP"),
                        Ok(other) => warn!(response = ?other, "SIGHUP reload refused"),
                        Err(_) => warn!("SIGHUP: the driver dropped the reload"),
                    }
                });
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); systemd::tell(&[NotifyState::Stopping]); break Ok(()) }
            _ = int.recv() => { info!("SIGINT: stopping"); systemd::tell(&[NotifyState::Stopping]); break Ok(()) }
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
    // Dropping the driver drops the data plane: pinned, it goes on forwarding without
    // lbd; unpinned, XDP is detached from the interfaces.
    if !driver.is_finished() {
        driver.abort();
        let _ = driver.await;
    }
    let _ = std::fs::remove_file(&config.director.socket);
    match pinned {
        Some(root) => {
            info!(pin_root = %root.display(), "socket removed; the data plane stays pinned and forwarding (lbd --unpin removes it)")
        }
        None => info!("XDP detached, socket removed"),
    }
    outcome
}

/// The data plane, pinned under `pin_root` when it can be (taking over what an earlier
/// lbd pinned there), else as lbd's alone, said in the log.
fn load(capacity: Capacity, pin_root: &Path) -> Result<(Dataplane, Kept)> {
    match Pins::prepare(pin_root)? {
        Ok(pins) => {
            let (dp, kept) = Dataplane::load_pinned(capacity, pins)?;
            for (map, why) in &kept.renewed {
                warn!(map, %why, "a map pinned by an earlier lbd has another layout: replaced by an empty one");
            }
            if kept.maps.is_empty() {
                info!(pin_root = %pin_root.display(), "data plane pinned");
            } else {
                info!(pin_root = %pin_root.display(), kept = ?kept.maps, "data plane pinned by an earlier lbd taken over");
            }
            Ok((dp, kept))
        }
        Err(why) => {
            warn!(%why, "the data plane is not pinned: it stops with lbd");
            Ok((Dataplane::load_with(capacity)?, Kept::default()))
        }
    }
}

/// `lbd --unpin`: removes the pinned data plane, unless a lbd answers on the socket.
fn unpin(config: &Config) -> ExitCode {
    if std::os::unix::net::UnixStream::connect(&config.director.socket).is_ok() {
        eprintln!(
            "lbd: a lbd is running on {}: stop it first, then unpin",
            config.director.socket.display()
        );
        return ExitCode::FAILURE;
    }
    match lb_daemon::dataplane::pins::remove(&config.director.pin_root) {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    ready: watch::Receiver<bool>,
) -> Result<Vec<(mpsc::Sender<ha::Command>, watch::Receiver<Option<core_ha::View>>)>> {
    let vips = ha.vips(&config.services);
    let mut tasks = Vec::new();
    // One tracker for both families' virtual routers: every node lost is FAULT for both.
    let track = (!ha.track_ping.is_empty()).then(|| {
        let (lost, track) = watch::channel(false);
        tokio::spawn(lb_daemon::drivers::track::run(ha.track_ping.clone(), lost));
        track
    });
    for ipv4 in [true, false] {
        let family: Vec<IpAddr> = vips.iter().copied().filter(|v| v.is_ipv4() == ipv4).collect();
        if family.is_empty() {
            // No virtual router for this family: nothing of an earlier config's fence
            // (pinned) may keep its addresses quiet.
            let mut unused = fence.try_clone()?;
            unused.guard(ipv4, &[])?;
            unused.disarm_family(ipv4)?;
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
            ready: Some(ready.clone()),
            track: track.clone(),
        };
        let (commands, inbox) = mpsc::channel(8);
        let (view, state) = watch::channel(None);
        tokio::spawn(ha::run(setup, inbox, view, events.clone()));
        tasks.push((commands, state));
    }
    Ok(tasks)
}

/// systemd's watchdog (`WatchdogSec=`): WATCHDOG=1 at half its interval, each only once
/// the driver has answered a status, so a driver that hangs (nothing checked, nothing
/// written) is restarted by systemd while the pinned data plane forwards meanwhile.
fn watchdog(events: mpsc::Sender<Event>) {
    let Some(period) = systemd::watchdog() else { return };
    let every = period / 2;
    info!(?every, "systemd's watchdog is on: the driver is asked for its status, and systemd told");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let (tx, rx) = oneshot::channel();
            if events.send(Event::Control(Request::Status, tx)).await.is_err() {
                return;
            }
            // Half the period at most, so two pings are never a whole WatchdogSec apart.
            match tokio::time::timeout(every / 2, rx).await {
                Ok(Ok(Response::Status(_))) => systemd::tell(&[NotifyState::Watchdog]),
                _ => warn!(?every, "the driver did not answer a status in time: no watchdog ping"),
            }
        }
    });
}
