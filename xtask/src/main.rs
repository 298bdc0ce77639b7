//! `cargo xtask`: the project's own set-up and entry points, so that a fresh machine needs
//! only the two commands of the README. Every step is idempotent and says what it does.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Debian packages the lab and the tests run: real servers, and the tools to drive them.
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nginx-light",
    "dnsmasq-base",
    "dnsutils",
    "curl",
    "bpftool",
    "tshark",
    "util-linux",
    "keepalived",
    "openssl",
    "slapd",
    "ldap-utils",
];

/// debconf's answers for packages that ask at install: slapd makes no directory of its
/// own (the lab runs its own slapd per real, with its own configuration).
const DEBCONF: &str = "slapd slapd/no_configuration boolean true\n";

#[derive(Parser)]
#[command(about = "Set-up, build, test and lab for the load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// Set up, then build the daemon (and with it the XDP program) in release mode.
    Build,
    /// Set up, then run every test: unit, BPF_PROG_TEST_RUN packet tests, end to end.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, for example).
        args: Vec<String>,
    },
    /// Set up, then measure ns per packet of each data plane path, and failover between
    /// directors (see docs/BENCHMARKS.md).
    Bench,
    /// Set up, build, and run the lab: namespaces, real servers, lbd, traffic, lbadm.
    Lab {
        /// Leave the lab running, and print how to enter it and how to remove it.
        #[arg(long)]
        keep: bool,
        /// Remove a lab left running by --keep.
        #[arg(long, conflicts_with = "keep")]
        clean: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Test { args } => {
            setup()?;
            test(&args)
        }
        Cmd::Bench => {
            setup()?;
            require_root("the benchmark")?;
            run(Command::new("cargo")
                .args(["bench", "-p", "lb-daemon", "--bench", "xdp"])
                .current_dir(workspace()))?;
            // Check load: 1,000 and 10,000 reals at 1 s, tcp and http, on loopback.
            run(Command::new("cargo")
                .args(["bench", "-p", "lb-daemon", "--bench", "checks"])
                .current_dir(workspace()))?;
            // Failover: takeover times, broken connections and failed requests per event,
            // two directors at 100 ms and 1 s, and three (tests/e2e_failover.rs prints the
            // tables docs/BENCHMARKS.md records).
            run(Command::new("cargo")
                .args(["test", "--release", "-p", "lb-daemon", "--test", "e2e_failover", "--"])
                .args(["--test-threads=1", "--nocapture"])
                .current_dir(workspace()))
        }
        Cmd::Lab { keep, clean } => {
            setup()?;
            build()?;
            lab(keep, clean)
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").into()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", format!("{cmd:?}").replace('"', ""));
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn require_root(what: &str) -> Result<()> {
    let uid = Command::new("id").arg("-u").output().context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("{what} needs root: it loads XDP programs and creates network namespaces");
    }
    Ok(())
}

fn setup() -> Result<()> {
    // rust-src for -Z build-std=core; `nightly` as installed (RUSTUP_AUTO_INSTALL=0 here).
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    setup_bpf_linker()?;
    setup_packages()
}

/// bpf-linker from crates.io wants LLVM 21+, Debian has 14: link it against the LLVM shared
/// library the nightly toolchain ships (TOOLCHAIN.md). The binary's rpath points at
/// `$prefix/lib`, which holds the library under both names it is asked for.
fn setup_bpf_linker() -> Result<()> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/lb-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let sysroot = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so")))
        .context("the nightly toolchain ships no libLLVM.so")?;
    let soname = lib.file_name().context("library name")?.to_owned();
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let major = soname
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("22")
        .to_string();
    run(Command::new("cargo")
        .args(["install", "--force", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn setup_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root("installing Debian packages")?;
    let mut answers = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("running debconf-set-selections")?;
    if let Some(mut stdin) = answers.stdin.take() {
        std::io::Write::write_all(&mut stdin, DEBCONF.as_bytes())?;
    }
    if !answers.wait()?.success() {
        bail!("debconf-set-selections refused: {DEBCONF}");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--bins"]).current_dir(workspace()))
}

fn test(args: &[String]) -> Result<()> {
    require_root("the test suite")?;
    // One test thread per binary: end-to-end tests each build a lab of namespaces, and two
    // at once would only compete for the two cores.
    let mut child = Command::new("cargo")
        .args(["test", "--release"])
        .args(args)
        .args(["--", "--test-threads=1"])
        .current_dir(workspace())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    // The sum over every test binary, as one closing line.
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn lab(keep: bool, clean: bool) -> Result<()> {
    require_root("the lab")?;
    let mut cmd = Command::new(workspace().join("target/release/lb-lab"));
    cmd.arg("--config").arg(workspace().join("examples/lab.yaml"));
    cmd.arg("--config2").arg(workspace().join("examples/lab-director2.yaml"));
    if keep {
        cmd.arg("--keep");
    }
    if clean {
        cmd.arg("--clean");
    }
    run(&mut cmd)
}
