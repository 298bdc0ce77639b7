//! What the end-to-end tests share: a lab with real nginx and dnsmasq on every real,
//! lbd on the director from a config the test writes, and the ways a test looks at it
//! (the control socket, lbadm, requests from the client).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lb_daemon::control::{self, Request, Response, StatusView};
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, ROLE_CLIENT, ROLE_DIRECTOR};

pub struct Director {
    pub lab: Lab,
    pub socket: PathBuf,
}

impl Director {
    /// Starts nginx and dnsmasq on every real of `lab`, then lbd with the config
    /// `config(socket)` returns, and waits until every real is up and resolved.
    pub fn start(mut lab: Lab, config: impl Fn(&Path) -> String) -> Director {
        for i in 0..REALS.len() {
            lab.start_nginx(i).expect("nginx");
            lab.start_dns(i).expect("dnsmasq");
        }
        let socket = lab.dir().join("lbd.sock");
        let path = lab.dir().join("lb.yaml");
        std::fs::write(&path, config(&socket)).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        lab.spawn(
            ROLE_DIRECTOR,
            "lbd",
            &[env!("CARGO_BIN_EXE_lbd"), "--config", path.to_str().unwrap()],
        )
        .unwrap();
        let d = Director { lab, socket };
        d.wait_until("every real up and resolved", Duration::from_secs(20), |s| {
            s.reals.iter().all(|r| r.health == Health::Up && r.mac.is_some())
        });
        d
    }

    pub fn status(&self) -> Option<StatusView> {
        match control::call(&self.socket, &Request::Status) {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Polls the status until `ok`; returns how long that took.
    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&StatusView) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if self.status().as_ref().is_some_and(&ok) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not within {limit:?}\nstatus: {:#?}\nlbd log:\n{}",
                    self.status(),
                    self.lab.log(ROLE_DIRECTOR, "lbd")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lbadm(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_lbadm"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "lbadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

pub fn tally(answers: &[Result<String, String>]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for a in answers {
        match a {
            Ok(name) => *count.entry(name.clone()).or_default() += 1,
            Err(e) => panic!("a request through the VIP failed: {e}"),
        }
    }
    count
}

/// `n` DNS queries for whoami.lab TXT at `server` from the client, in one dig run; the
/// answers (the reals' names).
pub fn dig(lab: &Lab, server: IpAddr, n: usize) -> Vec<String> {
    let family = if server.is_ipv6() { "-6" } else { "-4" };
    let at = format!("@{server}");
    let mut args = vec!["dig", family, "+short", "+tries=1", "+time=2", &at];
    for _ in 0..n {
        args.extend(["whoami.lab", "TXT"]);
    }
    let out = lab.exec_ok(ROLE_CLIENT, &args).unwrap();
    out.lines()
        .filter(|l| l.starts_with("\"real"))
        .map(|l| l.trim_matches('"').to_string())
        .collect()
}

/// Asserts that every real's share of `count` is within 30 % of its weight's share.
pub fn assert_shares(count: &HashMap<String, usize>, weights: &[f64]) {
    let n: usize = count.values().sum();
    let total: f64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let want = n as f64 * w / total;
        let got = *count.get(&lb_lab::real_role(i)).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= want * 0.3,
            "real{}: {got} of {n}, want {want:.0} +-30% ({count:?})",
            i + 1
        );
    }
}
