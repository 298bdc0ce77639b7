//! The director: configuration, the engine that folds config and health into data plane
//! tables, the data plane loader, health checks, neighbour resolution and the control API.
//! `lbd` and `lbadm` are thin binaries over this library.

pub mod config;
pub mod control;
pub mod core;
pub mod dataplane;
pub mod drivers;
pub mod health;
pub mod ipvsadm;
pub mod lab;
pub mod link;
pub mod neighbor;
pub mod pmtu;
pub mod realserver;
