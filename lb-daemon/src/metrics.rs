//! The Prometheus endpoint (`director.metrics: ADDR:PORT`): `GET /metrics` answers in the
//! Prometheus text format (0.0.4), made at each scrape from the control API's List and
//! Status answers, the numbers `lbadm -L -n --stats` and `lbadm status` show. Like lbadm,
//! it is only a client of the driver. hyper speaks HTTP; prometheus-client writes the text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::{Call, Request, Response, ServiceView, Stats, StatusView};
use crate::health::Health;

/// Scrapes answered at once; one more is answered 503 at once (Prometheus scrapes one at
/// a time: this bounds what the driver is asked).
const MAX_SCRAPES: usize = 4;
/// Connections held at once, idle keep-alive ones included; one more is closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A client that sends no request head within this (also between requests on a
/// kept-alive connection) is let go.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape waits for the driver's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener for `director.metrics`, bound at start: a port that cannot be had stops
/// lbd with the reason, as its control socket does.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("director.metrics: listening on {addr}"))
}

/// Serves scrapes; it never returns (with the driver gone, every scrape is answered 503).
pub async fn serve<E: From<Call> + Send + 'static>(listener: TcpListener, driver: mpsc::Sender<E>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: the next accept may succeed.
                warn!(error = %e, "metrics: accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!("metrics: {MAX_CONNECTIONS} connections held already, one more closed");
            continue;
        };
        let (driver, scrapes) = (driver.clone(), scrapes.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                service_fn(move |request| answer(request, driver.clone(), scrapes.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(error = %e, "metrics: a connection ended");
            }
        });
    }
}

type Answer = hyper::Response<Full<Bytes>>;

async fn answer<E: From<Call>>(
    request: hyper::Request<Incoming>,
    driver: mpsc::Sender<E>,
    scrapes: Arc<Semaphore>,
) -> Result<Answer, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    let text = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, text, "lbd serves /metrics only\n".into()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, text, "GET /metrics\n".into()));
    }
    let Ok(_scraping) = scrapes.try_acquire() else {
        let busy = format!("busy: {MAX_SCRAPES} scrapes under way, ask again\n");
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, text, busy));
    };
    Ok(match scrape(&driver).await {
        Ok(body) => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
        Err(why) => {
            warn!(%why, "metrics: a scrape could not be answered");
            reply(StatusCode::SERVICE_UNAVAILABLE, text, format!("{why}\n"))
        }
    })
}

/// The driver's List and Status, rendered.
async fn scrape<E: From<Call>>(driver: &mpsc::Sender<E>) -> Result<String, String> {
    let services = match ask(driver, Request::List).await? {
        Response::List { services } => services,
        other => return Err(format!("lbd answered the listing with {other:?}")),
    };
    let status = match ask(driver, Request::Status).await? {
        Response::Status(status) => status,
        other => return Err(format!("lbd answered the status with {other:?}")),
    };
    Ok(render(&services, &status))
}

async fn ask<E: From<Call>>(
    driver: &mpsc::Sender<E>,
    request: Request,
) -> Result<Response, String> {
    // The whole exchange is bounded: a driver too busy to take the request as well.
    let asked = async {
        let (tx, rx) = oneshot::channel();
        driver.send((request, tx).into()).await.map_err(|_| "lbd's driver has stopped")?;
        rx.await.map_err(|_| "lbd's driver dropped the request")
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Ok(answer) => answer.map_err(String::from),
        Err(_) => Err(format!("lbd's driver did not answer within {ANSWER_TIMEOUT:?}")),
    }
}

type Labels = Vec<(&'static str, String)>;

/// The Prometheus text of one scrape. Counters are lbd's own since its data plane was
/// loaded (a restart on a pinned data plane keeps them); gauges are as of now.
pub fn render(services: &[ServiceView], status: &StatusView) -> String {
    let mut registry = Registry::with_prefix("lb");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let service_conns = counter(&mut registry, "service_connections", "Connections scheduled");
    let service_packets = counter(&mut registry, "service_packets", "Packets, by direction");
    let service_bytes = counter(&mut registry, "service_bytes", "Bytes, by direction");
    let real_conns = counter(&mut registry, "real_connections", "Connections scheduled to a real");
    let real_packets = counter(&mut registry, "real_packets", "Packets to and from a real");
    let real_bytes = counter(&mut registry, "real_bytes", "Bytes to and from a real");
    let weight = gauge(&mut registry, "real_weight", "The weight in use (0: quiesced or down)");
    let active = gauge(&mut registry, "real_active_connections", "ipvsadm's ActiveConn");
    let inactive = gauge(&mut registry, "real_inactive_connections", "ipvsadm's InActConn");
    let up = gauge(&mut registry, "real_up", "1 while every check passes, 0 once one fails");
    let transitions = counter(&mut registry, "real_health_transitions", "Health changes");
    let check_up = gauge(&mut registry, "real_check_up", "1 while this check passes");
    let ha_state = gauge(&mut registry, "ha_state", "1 for each virtual router's state");
    let ha_transitions = counter(&mut registry, "ha_transitions", "HA states entered");
    let dropped = counter(&mut registry, "vrrp_adverts_dropped", "VRRP adverts dropped");
    let late =
        counter(&mut registry, "checks_late", "Probes started past a tenth of their interval");
    let packets = counter(&mut registry, "dataplane_packets", "Packets by the data plane's action");

    let traffic = |labels: &Labels, stats: &Stats, f: [&Family<Labels, Counter>; 3]| {
        f[0].get_or_create(labels).inc_by(stats.conns);
        for (direction, p, b) in
            [("in", stats.in_packets, stats.in_bytes), ("out", stats.out_packets, stats.out_bytes)]
        {
            let mut with = labels.clone();
            with.push(("direction", direction.into()));
            f[1].get_or_create(&with).inc_by(p);
            f[2].get_or_create(&with).inc_by(b);
        }
    };
    for s in services {
        let service: Labels = vec![
            ("service", s.name.clone()),
            ("vip", s.vip.to_string()),
            ("protocol", format!("{:?}", s.protocol).to_lowercase()),
        ];
        traffic(&service, &s.stats, [&service_conns, &service_packets, &service_bytes]);
        for r in &s.reals {
            let mut real = service.clone();
            real.push(("real", r.address.to_string()));
            traffic(&real, &r.stats, [&real_conns, &real_packets, &real_bytes]);
            weight.get_or_create(&real).set(i64::from(r.weight));
            active.get_or_create(&real).set(i64::try_from(r.active_conns).unwrap_or(i64::MAX));
            inactive.get_or_create(&real).set(i64::try_from(r.inactive_conns).unwrap_or(i64::MAX));
        }
    }
    for r in &status.reals {
        // The labels of the traffic series, so they join: a service's name need not be
        // unique, its VIP and protocol are.
        let real: Labels = vec![
            ("service", r.service.clone()),
            ("vip", r.vip.map(|v| v.to_string()).unwrap_or_default()),
            ("protocol", r.protocol.map(|p| format!("{p:?}").to_lowercase()).unwrap_or_default()),
            ("real", r.address.to_string()),
        ];
        // Before its first result a real is neither: no sample, rather than a 0 that
        // would fire an alert after every start and reload.
        let verdict = |h: Health| (h != Health::Unknown).then_some(i64::from(h == Health::Up));
        if let Some(v) = verdict(r.health) {
            up.get_or_create(&real).set(v);
        }
        transitions.get_or_create(&real).inc_by(r.transitions);
        for (i, c) in r.checks.iter().enumerate() {
            let mut check = real.clone();
            check.extend([("check", c.kind.clone()), ("index", i.to_string())]);
            if let Some(v) = verdict(c.health) {
                check_up.get_or_create(&check).set(v);
            }
        }
    }
    let d = &status.director;
    for router in &d.routers {
        for state in ["INIT", "BACKUP", "MASTER", "FAULT"] {
            let labels = vec![("family", router.family.clone()), ("state", state.into())];
            ha_state.get_or_create(&labels).set(i64::from(router.state == state));
        }
    }
    for (family, counts, label) in
        [(&ha_transitions, &d.transitions, "state"), (&dropped, &d.adverts_dropped, "reason")]
    {
        for c in counts {
            family.get_or_create(&vec![(label, c.reason.clone())]).inc_by(c.packets);
        }
    }
    for c in &status.packets {
        packets.get_or_create(&vec![("action", c.reason.clone())]).inc_by(c.packets);
    }
    late.get_or_create(&Vec::new()).inc_by(d.checks_late);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Forwarding, Protocol};
    use crate::control::{
        CheckStatus, DirectorView, RealStatus, RealView, ReasonCount, RouterView,
    };

    fn stats(conns: u64) -> Stats {
        Stats { conns, in_packets: conns * 5, out_packets: 0, in_bytes: conns * 300, out_bytes: 0 }
    }

    #[test]
    fn a_scrape_says_what_lbadm_lists_and_shows() {
        let real = "10.0.0.11:80".parse().unwrap();
        let services = vec![ServiceView {
            name: "web".into(),
            protocol: Protocol::Tcp,
            vip: "192.0.2.10:80".parse().unwrap(),
            scheduler: "mh".into(),
            stats: stats(20),
            reals: vec![RealView {
                address: real,
                forwarding: Forwarding::Dr,
                weight: 100,
                configured_weight: 100,
                active_conns: 3,
                inactive_conns: 1,
                stats: stats(20),
            }],
        }];
        let count = |reason: &str, packets| ReasonCount { reason: reason.into(), packets };
        let status = StatusView {
            director: DirectorView {
                ha_state: "MASTER".into(),
                priority: Some(200),
                master: None,
                since_secs: Some(3),
                adverts_dropped: vec![count("ttl", 2)],
                transitions: vec![count("BACKUP", 1), count("MASTER", 1)],
                interfaces: Vec::new(),
                routers: vec![RouterView {
                    family: "IPv4".into(),
                    state: "MASTER".into(),
                    master: None,
                    since_secs: 3,
                }],
                checks_late: 4,
            },
            reals: vec![RealStatus {
                service: "web".into(),
                vip: Some("192.0.2.10:80".parse().unwrap()),
                protocol: Some(Protocol::Tcp),
                address: real,
                health: Health::Down,
                weight: 0,
                mac: None,
                via: None,
                unreachable: None,
                last_check: Some((false, "refused".into())),
                since_secs: 1,
                transitions: 2,
                checks: vec![CheckStatus {
                    kind: "http".into(),
                    health: Health::Down,
                    last: Some((false, "refused".into())),
                    since_secs: Some(1),
                }],
            }],
            packets: vec![count("tx", 100), count("pass_not_vip", 7)],
        };
        let text = render(&services, &status);
        let web = r#"service="web",vip="192.0.2.10:80",protocol="tcp""#;
        for line in [
            format!("lb_service_connections_total{{{web}}} 20"),
            format!("lb_service_packets_total{{{web},direction=\"in\"}} 100"),
            format!("lb_service_bytes_total{{{web},direction=\"in\"}} 6000"),
            format!("lb_real_connections_total{{{web},real=\"10.0.0.11:80\"}} 20"),
            format!("lb_real_weight{{{web},real=\"10.0.0.11:80\"}} 100"),
            format!("lb_real_active_connections{{{web},real=\"10.0.0.11:80\"}} 3"),
            format!("lb_real_up{{{web},real=\"10.0.0.11:80\"}} 0"),
            format!("lb_real_health_transitions_total{{{web},real=\"10.0.0.11:80\"}} 2"),
            format!("lb_real_check_up{{{web},real=\"10.0.0.11:80\",check=\"http\",index=\"0\"}} 0"),
            r#"lb_ha_state{family="IPv4",state="MASTER"} 1"#.into(),
            r#"lb_ha_state{family="IPv4",state="BACKUP"} 0"#.into(),
            r#"lb_ha_transitions_total{state="MASTER"} 1"#.into(),
            r#"lb_vrrp_adverts_dropped_total{reason="ttl"} 2"#.into(),
            "lb_checks_late_total 4".into(),
            r#"lb_dataplane_packets_total{action="pass_not_vip"} 7"#.into(),
            "# TYPE lb_real_connections_total counter".into(),
            "# TYPE lb_real_up gauge".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Before its first result a real has no up sample (a 0 would fire alerts at
        // every start), and its transitions are still there.
        let mut status = status;
        status.reals[0].health = Health::Unknown;
        status.reals[0].checks[0].health = Health::Unknown;
        let text = render(&services, &status);
        assert!(!text.lines().any(|l| l.starts_with("lb_real_up{")), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("lb_real_check_up{")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("lb_real_health_transitions_total{")));
    }
}
