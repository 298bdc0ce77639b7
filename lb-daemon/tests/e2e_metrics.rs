//! The Prometheus endpoint end to end: lbd in the namespace lab with `director.metrics` on
//! the director's own address, scraped from the client with curl, as a Prometheus server
//! elsewhere on the network would: the connections sent through the VIP are counted per
//! service and real, each real's health and checks are gauges, and a real whose nginx is
//! stopped reads 0. Needs root; run by `cargo xtask test`.

mod e2e;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{Director, tally};
use lb_daemon::health::Health;
use lb_lab::{DIRECTOR, Lab, REALS, ROLE_CLIENT, VIP, real_role};

const PORT: u16 = 9469;

fn scrape(d: &Director, path: &str) -> (String, String) {
    let url = format!("http://{DIRECTOR}:{PORT}{path}");
    let out = d
        .lab
        .exec_ok(ROLE_CLIENT, &["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", &url])
        .unwrap();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.to_string(), body.to_string())
}

/// The value of the sample `name{labels}` in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_counts_what_went_through_the_vip_and_shows_each_reals_health() {
    lb_lab::needs_root!();
    let lab = Lab::new("met").expect("lab");
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    let mut d = Director::start(lab, |socket| {
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\n  metrics: {DIRECTOR}:{PORT}\nservices:\n  - name: web\n    \
             vip: {VIP}:80\n    protocol: tcp\n    \
             check: {{ type: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }}\n    \
             reals:\n{reals}",
            socket.display()
        )
    });
    let (code, before) = scrape(&d, "/metrics");
    assert_eq!(code, "200", "{before}");
    let web = format!(r#"service="web",vip="{VIP}:80",protocol="tcp""#);
    let conns = format!("lb_service_connections_total{{{web}}}");
    let start = sample(&before, &conns).unwrap_or_else(|| panic!("no {conns} in:\n{before}"));
    let served = tally(&d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(VIP.into(), 80), 30).unwrap());
    let (_, after) = scrape(&d, "/metrics");
    assert_eq!(sample(&after, &conns), Some(start + 30.0), "{after}");
    // Each real's own count is what it served.
    for (i, real) in REALS.iter().enumerate() {
        let series = format!("lb_real_connections_total{{{web},real=\"{real}:80\"}}");
        let had = sample(&before, &series).unwrap_or(0.0);
        let got = served.get(&real_role(i)).copied().unwrap_or(0) as f64;
        assert_eq!(sample(&after, &series), Some(had + got), "{series}: {after}");
        let up = format!("lb_real_up{{{web},real=\"{real}:80\"}}");
        assert_eq!(sample(&after, &up), Some(1.0), "{up}: {after}");
    }

    // A real found down reads 0, its check too, and its weight is 0 (quiesced).
    d.lab.stop(&real_role(0), "nginx").unwrap();
    d.wait_until("real1 down", Duration::from_secs(10), |s| {
        s.reals.iter().any(|r| r.address.ip() == REALS[0] && r.health == Health::Down)
    });
    let real1 = format!("real=\"{}:80\"", REALS[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let (_, text) = scrape(&d, "/metrics");
        if sample(&text, &format!("lb_real_up{{{web},{real1}}}")) == Some(0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "real1 not 0 in the scrape:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let check = format!("lb_real_check_up{{{web},{real1},check=\"http\",index=\"0\"}}");
    assert_eq!(sample(&down, &check), Some(0.0), "{down}");
    assert_eq!(sample(&down, &format!("lb_real_weight{{{web},{real1}}}")), Some(0.0), "{down}");
    assert!(
        sample(&down, &format!("lb_real_health_transitions_total{{{web},{real1}}}"))
            .is_some_and(|n| n >= 1.0),
        "{down}"
    );
    // What the data plane did with packets is there, and another path is not served.
    assert!(sample(&down, r#"lb_dataplane_packets_total{action="tx"}"#).is_some_and(|n| n >= 30.0));
    assert_eq!(scrape(&d, "/").0, "404");
    let url = format!("http://{DIRECTOR}:{PORT}/metrics");
    let post = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", &url];
    assert_eq!(d.lab.exec_ok(ROLE_CLIENT, &post).unwrap().trim(), "405");
}
