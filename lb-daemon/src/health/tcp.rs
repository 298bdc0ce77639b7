//! TCP check: the real is up when a connection to its port completes.

use std::net::{IpAddr, SocketAddr};

pub async fn check(addr: SocketAddr, from: Option<IpAddr>) -> Result<String, String> {
    let stream = super::connect(addr, from).await.map_err(|e| format!("connect {addr}: {e}"))?;
    drop(stream);
    Ok(format!("connected to {addr}"))
}
