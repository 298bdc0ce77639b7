//! HTTP check, as ldirectord's `negotiate` with `request`/`receive`: a GET of `path`, up
//! when the status matches and the body holds `expect_body`. HTTP/1.0 with
//! `Connection: close`, so a check is one short connection, as a real's logs expect.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::HttpCheck;

/// Responses are read up to this size: a health page is small, a check must stay cheap.
const MAX_RESPONSE: u64 = 64 * 1024;

pub async fn check(
    addr: SocketAddr,
    from: Option<IpAddr>,
    spec: &HttpCheck,
) -> Result<String, String> {
    let stream = super::connect(addr, from).await.map_err(|e| format!("connect {addr}: {e}"))?;
    exchange(stream, addr, spec).await
}

/// The GET on `stream` (plain, or TLS for https), its response read and judged.
pub(crate) async fn exchange<S>(
    mut stream: S,
    addr: SocketAddr,
    spec: &HttpCheck,
) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = spec.host.clone().unwrap_or_else(|| match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    });
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lbd-healthcheck\r\nConnection: close\r\n\r\n",
        spec.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify once the response is whole: judged as read.
    let read = (&mut stream).take(MAX_RESPONSE).read_to_end(&mut response).await;
    if let Err(e) = read
        && response.is_empty()
    {
        return Err(format!("read from {addr}: {e}"));
    }
    judge(&response, spec)
}

/// Judges a complete response against the check's expectations.
pub fn judge(response: &[u8], spec: &HttpCheck) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let body_at = match parsed.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete HTTP response".into()),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let status = parsed.code.unwrap_or(0);
    if status != spec.expect_status {
        return Err(format!("status {status}, expected {}", spec.expect_status));
    }
    if let Some(want) = &spec.expect_body {
        let body = String::from_utf8_lossy(&response[body_at..]);
        if !body.contains(want.as_str()) {
            return Err(format!("body lacks {want:?}"));
        }
    }
    Ok(format!("status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: Option<&str>) -> HttpCheck {
        HttpCheck {
            path: "/".into(),
            host: None,
            expect_status: 200,
            expect_body: body.map(Into::into),
        }
    }

    #[test]
    fn status_and_body_are_judged() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(judge(ok, &spec(Some("ok"))).is_ok());
        assert_eq!(judge(ok, &spec(Some("ready"))), Err("body lacks \"ready\"".into()));
        let err = b"HTTP/1.1 503 Service Unavailable\r\n\r\n";
        assert_eq!(judge(err, &spec(None)), Err("status 503, expected 200".into()));
        assert!(judge(b"SSH-2.0-OpenSSH\r\n", &spec(None)).is_err());
    }
}
