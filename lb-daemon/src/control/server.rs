//! The control socket's server side: accepts connections, reads one request each and
//! hands it on with a reply channel; the answer goes back as one JSON line.

use std::path::Path;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Call, Request, Response};

/// Serves the bound socket, handing requests to the driver.
pub async fn serve<E: From<Call> + Send + 'static>(
    listener: UnixListener,
    driver: mpsc::Sender<E>,
) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting on the control socket")?;
        let driver = driver.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, driver).await {
                warn!(error = %format!("{e:#}"), "control connection");
            }
        });
    }
}

/// Binds the control socket, replacing one left by a daemon that died.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a daemon that died is removed; a live one is not stolen.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: is another lbd running?", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

async fn answer<E: From<Call>>(stream: UnixStream, driver: mpsc::Sender<E>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            debug!(?request, "control request");
            let (tx, rx) = oneshot::channel();
            driver
                .send((request, tx).into())
                .await
                .map_err(|_| anyhow::anyhow!("the driver stopped"))?;
            rx.await.context("the driver dropped the request")?
        }
        Err(e) => Response::Error { message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}
