//! The director: configuration, the core that folds config, health and next hops into the
//! data plane's tables (sans-IO), the drivers that run it, the data plane loader, the
//! checkers, neighbour resolution and the control API. `lbd` and `lbadm` are thin
//! binaries over this library; the namespace lab is a crate of its own (lab/), for
//! development only.

pub mod config;
pub mod control;
pub mod core;
pub mod dataplane;
pub mod drivers;
pub mod health;
pub mod ipvsadm;
pub mod link;
pub mod metrics;
pub mod realserver;
pub mod systemd;
