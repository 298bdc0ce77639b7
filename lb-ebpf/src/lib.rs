//! The eBPF programs are binaries (src/main.rs); this empty library only lets lb-daemon
//! depend on the crate so cargo rebuilds the daemon when the data plane changes.
#![no_std]
