//! Nanoseconds per packet for each path of lb_xdp, measured as Katran's tester measures:
//! BPF_PROG_TEST_RUN with repeat = 1 in a loop, averaging the kernel-reported duration
//! (with repeat > 1 the kernel would rerun the program on the already rewritten frame).
//! The `floor` program (parse Ethernet and IP, swap MACs, XDP_TX) runs in the same rounds,
//! so every path also reads as a ratio to it. Needs root; run by `cargo xtask bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use common::*;

/// Runs per path and round; rounds interleave the paths so drift hits them all alike.
const RUNS: usize = 4000;
const ROUNDS: usize = 5;

/// A frame source: the same frame each time, or a new flow each time.
enum Frames {
    Same(Vec<u8>),
    /// A template whose source address/port bytes at `at` are overwritten by a counter.
    NewFlow {
        template: Vec<u8>,
        at: usize,
        next: u32,
    },
}

impl Frames {
    fn next(&mut self) -> &[u8] {
        match self {
            Frames::Same(f) => f,
            Frames::NewFlow { template, at, next } => {
                *next += 1;
                template[*at..*at + 4].copy_from_slice(&next.to_be_bytes());
                template
            }
        }
    }
}

struct Path {
    name: &'static str,
    frames: Frames,
    want: u32,
    samples: Vec<u64>,
}

fn floor_program(ebpf: &mut aya::Ebpf) -> &mut Xdp {
    ebpf.program_mut("floor").expect("floor program").try_into().expect("an XDP program")
}

fn main() {
    // The floor first: loaded after the data plane, whose size changes with every build,
    // the floor's JIT image landed elsewhere and its cost moved by up to 10 ns from build
    // to build (74-83 ns for one, 70-72 for the next); loaded first it stayed at 71-75.
    let mut floor_obj = aya::Ebpf::load(lb_daemon::dataplane::OBJECT).expect("load object");
    floor_program(&mut floor_obj).load().expect("load floor");
    let mut dp = dataplane();

    let established_tcp = tcp4(VIP4, 80, false);
    let established_udp6 = udp6(VIP6, 53);
    let client: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let nat_vip =
        std::net::SocketAddr::new(std::net::Ipv4Addr::from(VIP4).into(), NAT_VIP_PORT_TCP);
    let nat_real =
        std::net::SocketAddr::new(std::net::Ipv4Addr::from(NAT_REAL4).into(), NAT_REAL_PORT_TCP);
    let request = Frame {
        src_mac: CLIENT_MAC,
        dst_mac: DIRECTOR_MAC,
        src: client,
        dst: nat_vip,
        udp: false,
        syn: true,
        payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    };
    let nat_syn = request.build();
    let nat_established = Frame { syn: false, ..request }.build();
    let nat_reply = Frame {
        src_mac: REAL_MAC,
        dst_mac: DIRECTOR_MAC,
        src: nat_real,
        dst: client,
        udp: false,
        syn: false,
        payload: b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
    }
    .build();
    let tunnel_request = |vip: std::net::IpAddr, client: &str, syn| {
        Frame {
            src_mac: CLIENT_MAC,
            dst_mac: DIRECTOR_MAC,
            src: client.parse().unwrap(),
            dst: std::net::SocketAddr::new(vip, TUNNEL_VIP_PORT),
            udp: false,
            syn,
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        }
        .build()
    };
    let vip4 = std::net::IpAddr::from(VIP4);
    let vip6 = std::net::IpAddr::from(VIP6);
    let tunnel_syn = tunnel_request(vip4, "198.51.100.8:40000", true);
    let tunnel_established = tunnel_request(vip4, "198.51.100.8:40000", false);
    let tunnel6_established = tunnel_request(vip6, "[2001:db8:1::8]:40000", false);
    run(&mut dp, &tunnel_syn);
    run(&mut dp, &tunnel_request(vip6, "[2001:db8:1::8]:40000", true));
    // Open the flows the "established" paths reuse.
    run(&mut dp, &tcp4(VIP4, 80, true));
    run(&mut dp, &established_udp6);
    run(&mut dp, &nat_syn);

    // IPv4 source address (26..30) and IPv6 source's last 4 bytes + ports region (34..38).
    let mut paths = vec![
        Path {
            name: "floor (parse, swap MACs, XDP_TX)",
            frames: Frames::Same(tcp4(VIP4, 80, false)),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "not a VIP (IPv4 TCP)",
            frames: Frames::Same(tcp4([192, 0, 2, 11], 80, false)),
            want: XDP_PASS,
            samples: vec![],
        },
        Path {
            name: "dr, new flow (IPv4 TCP SYN)",
            frames: Frames::NewFlow { template: tcp4(VIP4, 80, true), at: 26, next: 0 },
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "dr, established flow (IPv4 TCP)",
            frames: Frames::Same(established_tcp),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "dr, new flow (IPv6 UDP)",
            frames: Frames::NewFlow { template: udp6(VIP6, 53), at: 34, next: 0 },
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "dr, established flow (IPv6 UDP)",
            frames: Frames::Same(established_udp6),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "nat, new flow (IPv4 TCP SYN)",
            frames: Frames::NewFlow { template: nat_syn, at: 26, next: 0 },
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "nat, established flow (IPv4 TCP)",
            frames: Frames::Same(nat_established),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "nat, reply (IPv4 TCP)",
            frames: Frames::Same(nat_reply),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "tunnel, new flow (IPv4 TCP SYN)",
            frames: Frames::NewFlow { template: tunnel_syn, at: 26, next: 0 },
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "tunnel, established flow (IPv4 TCP)",
            frames: Frames::Same(tunnel_established),
            want: XDP_TX,
            samples: vec![],
        },
        Path {
            name: "tunnel, established flow (IPv6 TCP)",
            frames: Frames::Same(tunnel6_established),
            want: XDP_TX,
            samples: vec![],
        },
    ];

    for _ in 0..ROUNDS {
        for (i, path) in paths.iter_mut().enumerate() {
            for _ in 0..RUNS {
                let frame = path.frames.next().to_vec();
                let (verdict, took) = if i == 0 {
                    run_floor(floor_program(&mut floor_obj), &frame)
                } else {
                    run_timed(&mut dp, &frame)
                };
                assert_eq!(verdict, path.want, "{}: unexpected verdict", path.name);
                path.samples.push(took.as_nanos() as u64);
            }
        }
    }

    let stats: Vec<Summary> = paths.iter_mut().map(|p| summarize(&mut p.samples)).collect();
    let floor = &stats[0];
    println!(
        "BPF_PROG_TEST_RUN, repeat = 1, {} runs per path in {ROUNDS} interleaved rounds",
        RUNS * ROUNDS
    );
    println!();
    println!("| path | mean ns | median ns | p90 ns | p99 ns | mean / floor | median / floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (p, s) in paths.iter().zip(&stats) {
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.2} | {:.2} |",
            p.name,
            s.mean,
            s.median,
            s.p90,
            s.p99,
            s.mean / floor.mean,
            s.median as f64 / floor.median as f64
        );
    }
}

fn run_floor(program: &mut Xdp, frame: &[u8]) -> (u32, Duration) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts =
        TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() };
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (result.return_value, result.duration)
}

fn summarize(samples: &mut [u64]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Summary {
        mean: samples.iter().sum::<u64>() as f64 / samples.len() as f64,
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// One path's samples: the mean is the measure; the median and the tail show how
/// much of it this VM's noise and cache misses make.
struct Summary {
    mean: f64,
    median: u64,
    p90: u64,
    p99: u64,
}
