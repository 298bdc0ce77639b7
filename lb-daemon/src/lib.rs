//! The director: configuration, the engine that folds config and health into data plane
//! tables, the data plane loader, health checks, neighbour resolution and the control API.
//! `lbd` and `lbadm` are thin binaries over this library.

pub mod config;
pub mod dataplane;
