//! The control socket's server side: accepts connections, reads one request each and
//! hands it on with a reply channel; the answer goes back as one JSON line.
//!
//! What a client can make lbd spend is bounded ([`Limits`]; docs/ARCHITECTURE.md, "Input
//! policy: control requests"): a request is one line of at most 64 KiB, read within 5 s,
//! its answer written within 5 s; at most 64 connections are served at once (a quarter
//! of RLIMIT_NOFILE when that is lower) and the ones beyond are told `busy` and closed at
//! once. Whatever a client sends is answered in JSON (an error says what was wrong), and
//! nothing it does ends [`serve`]: failures to accept (EMFILE, ENFILE, ENOBUFS, ENOMEM,
//! ECONNABORTED, ...) are logged, at most once per 10 s, and retried after a pause.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{BUSY, Call, Request, Response};

/// A request line's size at most, without its newline: the largest lbadm sends is well
/// under 1 KiB.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client has to send its request once connected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take its answer (the largest listings are megabytes).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// The pause after a failed accept: the listener stays readable while the descriptors
/// are exhausted, so retrying at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Problems caused by clients are logged at most this often (with how many were not).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What one client may make the server spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: MAX_REQUEST,
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// The defaults, with connections capped to a quarter of this process's soft
    /// RLIMIT_NOFILE (at least 4): idle clients can never take the descriptors the
    /// health checks, netlink and the data plane need.
    pub fn for_this_process() -> Limits {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            libc::RLIM_INFINITY
        };
        let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX);
        Limits { max_connections: quarter.clamp(4, MAX_CONNECTIONS), ..Limits::default() }
    }
}

/// Where connections come from: the control socket, or a stand-in in tests.
pub trait Accept: Send + Sync + 'static {
    fn accept(&self) -> impl Future<Output = io::Result<UnixStream>> + Send;
}

impl Accept for UnixListener {
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl<A: Accept> Accept for Arc<A> {
    fn accept(&self) -> impl Future<Output = io::Result<UnixStream>> + Send {
        (**self).accept()
    }
}

/// Serves the bound socket, handing requests to the driver, with [`Limits`] for this
/// process. Never returns: nothing a client does, and no failure to accept, ends it.
pub async fn serve<E: From<Call> + Send + 'static>(
    listener: Arc<UnixListener>,
    driver: mpsc::Sender<E>,
) {
    let limits = Limits::for_this_process();
    info!(
        max_connections = limits.max_connections,
        max_request = limits.max_request,
        "control socket served"
    );
    serve_with(listener, driver, limits).await
}

/// [`serve`] with the given limits, from any [`Accept`].
pub async fn serve_with<E: From<Call> + Send + 'static>(
    listener: impl Accept,
    driver: mpsc::Sender<E>,
    limits: Limits,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let accept_failures = Throttle::default();
    let refusals = Throttle::default();
    let problems = Arc::new(Throttle::default());
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(held_back) = accept_failures.admit() {
                    warn!(error = %e, held_back, "accepting on the control socket failed: retrying, lbd goes on");
                }
                // A connection that went away before we took it is no reason to wait.
                if !matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Told at once, without reading: the answer fits the socket's buffer.
            let _ = stream.try_write(&busy_line(limits.max_connections));
            if let Some(held_back) = refusals.admit() {
                warn!(
                    open = limits.max_connections,
                    held_back, "control connection refused: too many open (clients are told busy)"
                );
            }
            continue;
        };
        let driver = driver.clone();
        let problems = problems.clone();
        tokio::spawn(async move {
            if let Err(problem) = answer(stream, driver, limits).await {
                debug!(%problem, "control connection");
                if let Some(held_back) = problems.admit() {
                    warn!(%problem, held_back, "control connection");
                }
            }
            drop(permit);
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

/// What went wrong with a connection (answered when the client can still hear it).
#[derive(Debug, thiserror::Error)]
enum Problem {
    #[error("no request within {0:?}")]
    ReadTimeout(Duration),
    #[error("the answer was not taken within {0:?}")]
    WriteTimeout(Duration),
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Bad(String),
    #[error("the driver stopped")]
    DriverGone,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A request as read: its line, or too large to read.
enum Read {
    Line(Vec<u8>),
    TooLarge,
}

/// Reads one line of at most `max` bytes (the newline aside), or what came before the
/// end of the stream; never buffers more than `max + 1` bytes.
async fn read_request(read: impl AsyncRead + Unpin, max: usize) -> io::Result<Read> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    BufReader::new(read.take(limit)).read_until(b'\n', &mut line).await?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Ok(Read::TooLarge);
    }
    Ok(Read::Line(line))
}

/// A request line as the API's request, or why not.
fn parse(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "bad request: not UTF-8 (byte {} is not valid UTF-8): send one JSON request",
            e.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        return Err("bad request: empty; send one JSON request on one line".into());
    }
    serde_json::from_str(text).map_err(|e| {
        // serde's messages may quote the client's input: they stay short.
        let mut message = format!("bad request: {e}");
        if message.len() > 300 {
            let cut = (0..=300).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push_str("...");
        }
        message
    })
}

async fn answer<E: From<Call>>(
    stream: UnixStream,
    driver: mpsc::Sender<E>,
    limits: Limits,
) -> Result<(), Problem> {
    let (read, mut write) = stream.into_split();
    let (response, problem) =
        match tokio::time::timeout(limits.read_timeout, read_request(read, limits.max_request))
            .await
        {
            Err(_) => {
                let problem = Problem::ReadTimeout(limits.read_timeout);
                (error(format!("{problem}")), Some(problem))
            }
            // The client went away (reset): nobody to answer.
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Read::TooLarge)) => {
                let problem = Problem::TooLarge(limits.max_request);
                (error(format!("request too large: {problem}")), Some(problem))
            }
            Ok(Ok(Read::Line(line))) => match parse(&line) {
                Ok(request) => {
                    debug!(?request, "control request");
                    let (tx, rx) = oneshot::channel();
                    if driver.send((request, tx).into()).await.is_err() {
                        (error("lbd's driver stopped".into()), Some(Problem::DriverGone))
                    } else {
                        match rx.await {
                            Ok(response) => (response, None),
                            Err(_) => (
                                error("lbd's driver dropped the request".into()),
                                Some(Problem::DriverGone),
                            ),
                        }
                    }
                }
                Err(message) => (error(message.clone()), Some(Problem::Bad(message))),
            },
        };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    let written = tokio::time::timeout(limits.write_timeout, async {
        write.write_all(&out).await?;
        write.shutdown().await
    })
    .await;
    match (problem, written) {
        (Some(problem), _) => Err(problem),
        (None, Err(_)) => Err(Problem::WriteTimeout(limits.write_timeout)),
        (None, Ok(result)) => Ok(result?),
    }
}

fn error(message: String) -> Response {
    Response::Error { message }
}

/// The answer to a connection beyond the limit.
fn busy_line(open: usize) -> Vec<u8> {
    let message = format!("{BUSY} {open} control connections are open, try again");
    let mut line = serde_json::to_vec(&Response::Error { message }).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Lets one log line through per [`LOG_EVERY`], counting the ones it holds back.
#[derive(Default)]
struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    /// Some(how many were held back since the last one) when this one may be logged.
    fn admit(&self) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(at) if now.duration_since(at) < LOG_EVERY => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A socket path of its own, removed when the test ends.
    struct Socket(PathBuf);

    impl Socket {
        fn new(name: &str) -> Socket {
            let path = std::env::temp_dir().join(format!("lbd-{}-{name}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Socket(path)
        }
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A driver that answers each request at once: `ok` and the request; a listing with
    /// an answer of `big` bytes.
    fn driver(big: usize) -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(16);
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let message = match request {
                    Request::List => "x".repeat(big),
                    other => format!("{other:?}"),
                };
                let _ = reply.send(Response::Ok { message });
            }
        });
        tx
    }

    fn limits() -> Limits {
        Limits {
            max_request: 1024,
            read_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(300),
            max_connections: 2,
        }
    }

    fn start(name: &str, limits: Limits, big: usize) -> Socket {
        let socket = Socket::new(name);
        let listener = bind(&socket.0).unwrap();
        tokio::spawn(serve_with(listener, driver(big), limits));
        socket
    }

    /// Sends `bytes` and shuts the write side; the answer, parsed.
    async fn ask(socket: &Socket, bytes: &[u8]) -> Response {
        let mut stream = UnixStream::connect(&socket.0).await.unwrap();
        // The server may answer and close before reading it all.
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        answer_on(stream).await
    }

    async fn answer_on(mut stream: UnixStream) -> Response {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        read.await.expect("the server closes the connection");
        let line = got.split(|&b| b == b'\n').next().unwrap_or_default();
        serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!("not a JSON answer ({e}): {:?}", String::from_utf8_lossy(&got))
        })
    }

    fn error_of(r: Response) -> String {
        match r {
            Response::Error { message } => message,
            other => panic!("want an error, got {other:?}"),
        }
    }

    /// The control socket whose first `fail` accepts fail as an exhausted process's do.
    struct Failing {
        listener: UnixListener,
        fail: AtomicUsize,
        failed: AtomicUsize,
    }

    impl Accept for Failing {
        async fn accept(&self) -> io::Result<UnixStream> {
            let n = self.fail.load(Ordering::SeqCst);
            if n > 0 {
                self.fail.store(n - 1, Ordering::SeqCst);
                self.failed.fetch_add(1, Ordering::SeqCst);
                let errno =
                    [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::ECONNABORTED];
                return Err(io::Error::from_raw_os_error(errno[n % errno.len()]));
            }
            Accept::accept(&self.listener).await
        }
    }

    #[tokio::test]
    async fn failing_accepts_do_not_end_the_server() {
        let socket = Socket::new("accept");
        let failing = Arc::new(Failing {
            listener: bind(&socket.0).unwrap(),
            fail: AtomicUsize::new(10),
            failed: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve_with(failing.clone(), driver(0), limits()));
        let answer = ask(&socket, b"{\"request\":\"status\"}\n").await;
        assert!(matches!(answer, Response::Ok { .. }), "{answer:?}");
        assert_eq!(failing.failed.load(Ordering::SeqCst), 10);
        assert!(!server.is_finished());
    }

    #[tokio::test]
    async fn an_idle_client_is_told_and_closed_after_the_read_timeout() {
        let socket = start("idle", limits(), 0);
        let idle = UnixStream::connect(&socket.0).await.unwrap();
        let message = error_of(answer_on(idle).await);
        assert!(message.contains("no request within 300ms"), "{message}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_told_busy_at_once() {
        let socket = start("busy", limits(), 0);
        let _idle: Vec<UnixStream> = vec![
            UnixStream::connect(&socket.0).await.unwrap(),
            UnixStream::connect(&socket.0).await.unwrap(),
        ];
        // Accepted in order: the two idle ones hold both places.
        let message = error_of(ask(&socket, b"{\"request\":\"status\"}\n").await);
        assert!(message.starts_with(BUSY), "{message}");
        // Once the idle ones time out, requests are served again: the client asks again.
        let path = socket.0.clone();
        let answer =
            tokio::task::spawn_blocking(move || crate::control::call(&path, &Request::Status))
                .await
                .unwrap()
                .unwrap();
        assert!(matches!(answer, Response::Ok { .. }), "{answer:?}");
    }

    #[tokio::test]
    async fn a_request_beyond_the_limit_is_refused() {
        let socket = start("large", limits(), 0);
        let huge = vec![b'a'; 8 << 20];
        let message = error_of(ask(&socket, &huge).await);
        assert!(message.contains("request too large"), "{message}");
        // The limit is the line without its newline.
        let mut line = b"{\"request\":\"status\"".to_vec();
        line.resize(1023, b' ');
        line.extend_from_slice(b"}\n");
        assert!(matches!(ask(&socket, &line).await, Response::Ok { .. }));
        line.insert(1, b' ');
        let message = error_of(ask(&socket, &line).await);
        assert!(message.contains("request too large"), "{message}");
    }

    #[tokio::test]
    async fn garbage_gets_a_json_error() {
        let socket = start("garbage", limits(), 0);
        let cases: [(&[u8], &str); 7] = [
            (b"\xff\xfe\x80\n", "not UTF-8"),
            (b"{\"request\":\"li\xc3\x28st\"}\n", "not UTF-8"),
            (b"", "empty"),
            (b"  \r\n", "empty"),
            (b"hello\n", "bad request"),
            (b"{\"request\":\"list\"} {\"request\":\"status\"}\n", "trailing"),
            (b"{\"request\":\"set_weight\",\"protocol\":\"tcp\",\"vip\":\"1.2.3.4:80\",\"real\":\"1.2.3.5:80\",\"weight\":99999999999}\n", "bad request"),
        ];
        for (bytes, want) in cases {
            let message = error_of(ask(&socket, bytes).await);
            assert!(message.contains(want), "{:?}: {message}", String::from_utf8_lossy(bytes));
        }
        // A request that ends with the stream rather than a newline is served.
        assert!(matches!(ask(&socket, b"{\"request\":\"list\"}").await, Response::Ok { .. }));
    }

    #[tokio::test]
    async fn an_answer_not_taken_frees_its_place_after_the_write_timeout() {
        let socket = start("slow", Limits { max_connections: 1, ..limits() }, 16 << 20);
        // Asks for a 16 MiB listing and never reads it.
        let mut stuck = UnixStream::connect(&socket.0).await.unwrap();
        stuck.write_all(b"{\"request\":\"list\"}\n").await.unwrap();
        // Accepted first, it holds the only place until its write times out.
        let path = socket.0.clone();
        let answer =
            tokio::task::spawn_blocking(move || crate::control::call(&path, &Request::Status))
                .await
                .unwrap()
                .unwrap();
        assert!(matches!(answer, Response::Ok { .. }), "{answer:?}");
        drop(stuck);
    }
}
