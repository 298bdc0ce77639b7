//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly toolchain, so
//! `cargo build` yields a daemon that embeds the object it loads.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building lb-ebpf (run `cargo xtask setup` for nightly rust-src and bpf-linker)")
}
