//! TCP check: the real is up when a connection to its port completes.

use std::net::SocketAddr;

use tokio::net::TcpStream;

pub async fn check(addr: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    drop(stream);
    Ok(format!("connected to {addr}"))
}
