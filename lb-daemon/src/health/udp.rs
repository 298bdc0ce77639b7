//! UDP check: the real is up when the datagram `send` draws an answer (holding `expect`,
//! if given). A port with nothing behind it answers ICMP port unreachable, which the
//! connected socket turns into an error at once, not a timeout.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

use crate::config::UdpCheck;

/// Answers are read up to this size (EDNS's common buffer, for the dns check's).
const MAX_ANSWER: usize = 4096;

pub async fn check(
    addr: SocketAddr,
    from: Option<IpAddr>,
    spec: &UdpCheck,
) -> Result<String, String> {
    let answer = exchange(addr, from, spec.send.as_bytes()).await?;
    judge(&answer, spec.expect.as_deref())
}

/// One datagram to `addr` and its answer (up to [`MAX_ANSWER`] bytes), on a socket
/// connected to it, so only its answers are read (the dns check's UDP transport too).
pub(crate) async fn exchange(
    addr: SocketAddr,
    from: Option<IpAddr>,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    let socket = connected(addr, from).await?;
    socket.send(request).await.map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = vec![0u8; MAX_ANSWER];
    let n = socket.recv(&mut answer).await.map_err(|e| format!("no answer from {addr}: {e}"))?;
    answer.truncate(n);
    Ok(answer)
}

/// A UDP socket of the target's family connected to it.
async fn connected(addr: SocketAddr, from: Option<IpAddr>) -> Result<UdpSocket, String> {
    let any: SocketAddr = match from {
        Some(from) => SocketAddr::new(from, 0),
        None if addr.is_ipv4() => ([0, 0, 0, 0], 0).into(),
        None => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(any).await.map_err(|e| format!("UDP socket: {e}"))?;
    socket.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(socket)
}

/// An answer against what it must hold.
pub fn judge(answer: &[u8], expect: Option<&str>) -> Result<String, String> {
    let text = String::from_utf8_lossy(answer);
    match expect {
        Some(want) if !text.contains(want) => Err(format!("answer lacks {want:?}")),
        _ => Ok(format!("answered, {} bytes", answer.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_up_unless_it_lacks_what_is_expected() {
        assert!(judge(b"PONG\n", None).is_ok());
        assert!(judge(b"PONG\n", Some("PONG")).is_ok());
        assert_eq!(judge(b"ERR", Some("PONG")), Err("answer lacks \"PONG\"".into()));
    }
}
