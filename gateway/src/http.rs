//! The gateway's HTTP/1.1 server: hyper under the axum router, with the bounds a public
//! port needs.
//!
//! - A connection must send a whole request head within [`ServeConfig::header_timeout`],
//!   counted from when it opened or its last response ended, so the same bound closes
//!   slow-header sockets and idle keep-alive ones (hyper's header read timer).
//! - At most [`ServeConfig::max_connections`] connections at once, and at most
//!   [`ServeConfig::max_per_address`] from one client address ([`Admission`]); a connection
//!   past a limit is answered `429` (its address) or `503` (the total) and closed.
//! - Every answer is OpenAI's error JSON, including the ones hyper writes itself for a
//!   request it cannot parse (`400` bad request line or header, `414`, `431`): those leave
//!   hyper with an empty body, and [`JsonErrors`] fills it in on the way out.
//! - Shutdown stops accepting, asks every connection to finish its request, and drops
//!   what is still running after [`ServeConfig::grace`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Server bounds.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Longest wait for a whole request head, from when the connection opened or its last
    /// response ended (so also the idle keep-alive limit). Default: 15 s.
    pub header_timeout: Duration,
    /// Most connections open at once. Default: 1,024.
    pub max_connections: usize,
    /// Most connections open at once from one client IP address. Default: 64 (a gateway
    /// behind a local proxy sees one address for everybody: raise it there).
    pub max_per_address: usize,
    /// How long shutdown waits for running requests (a streamed answer) to finish.
    /// Default: 10 s.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(15),
            max_connections: 1024,
            max_per_address: 64,
            grace: Duration::from_secs(10),
        }
    }
}

/// A bad [`ServeConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeConfigError {
    /// A limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl ServeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ServeConfigError> {
        if self.max_connections == 0 {
            return Err(ServeConfigError::Zero("max_connections"));
        }
        if self.max_per_address == 0 {
            return Err(ServeConfigError::Zero("max_per_address"));
        }
        if self.header_timeout.is_zero() {
            return Err(ServeConfigError::Zero("header_timeout"));
        }
        Ok(())
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address has `max_per_address` connections open.
    Address,
    /// `max_connections` are open.
    Full,
}

/// Counts open connections, in total and per client address. A [`Slot`] holds one place
/// until it is dropped.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_address: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Admission {
    /// Limits of `max_total` connections, `max_per_address` from one address.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_total,
            max_per_address,
        }
    }

    /// A place for a connection from `address`, or why there is none.
    pub fn admit(&self, address: IpAddr) -> Result<Slot, Refusal> {
        let mut counts = self.inner.lock().expect("admission lock");
        if counts.total >= self.max_total {
            return Err(Refusal::Full);
        }
        let n = counts.by_address.entry(address).or_default();
        if *n >= self.max_per_address {
            return Err(Refusal::Address);
        }
        *n += 1;
        counts.total += 1;
        Ok(Slot {
            inner: self.inner.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().expect("admission lock").total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.inner.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// OpenAI's error JSON for `status`, as a whole HTTP/1.1 response that closes the
/// connection.
fn canned(status: u16, reason: &str, message: &str, code: &str) -> Vec<u8> {
    let kind = if (400..500).contains(&status) {
        "invalid_request_error"
    } else {
        "service_unavailable"
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null,
                                            "code": code}})
    .to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The JSON answer for one of hyper's own bodiless error heads at the start of `buf`, if it
/// is one: a `4xx` status line whose head says `content-length: 0` (the router never sends
/// an empty error: every one of its errors carries JSON).
fn json_for_hyper_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let (message, code) = match status {
        400 => ("the request line or a header is malformed", "bad_request"),
        414 => ("the request URI is too long", "uri_too_long"),
        431 => ("the request headers are too large", "headers_too_large"),
        _ => return None,
    };
    let empty = lines.any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !empty || buf.len() != head_end + 4 {
        return None;
    }
    let reason = status_line.get(13..).unwrap_or("");
    Some(canned(status, reason, message, code))
}

/// A connection whose outgoing bodiless error heads from hyper become OpenAI error JSON
/// (`json_for_hyper_error`); everything else passes through untouched. hyper writes a
/// response head in one buffer (this type does not claim vectored writes), and after such
/// an error it writes nothing more and closes.
pub struct JsonErrors<S> {
    io: S,
    /// Bytes owed to the socket (a replacement) and how many went out.
    owed: Vec<u8>,
    sent: usize,
}

impl<S> JsonErrors<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Self {
            io,
            owed: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is owed; ready once all of it is out.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.owed.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.owed[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.owed.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_owed(cx))?;
        if let Some(json) = json_for_hyper_error(buf) {
            this.owed = json;
            // Taken: it goes out now or with the next write, flush or shutdown.
            if let Poll::Ready(Err(e)) = this.poll_owed(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `shutdown` completes, within `config`'s bounds.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let admission = Admission::new(config.max_connections, config.max_per_address);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set stays as small as what is open.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a moment
                    // rather than spin.
                    tracing::warn!("gateway accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let answer = match refusal {
                    Refusal::Address => canned(
                        429,
                        "Too Many Requests",
                        "too many connections from your address",
                        "too_many_connections",
                    ),
                    Refusal::Full => canned(
                        503,
                        "Service Unavailable",
                        "the gateway is at its connection limit",
                        "server_busy",
                    ),
                };
                // A fresh socket's send buffer takes this at once; never wait for it.
                let _ = stream.try_write(&answer);
                tracing::debug!(%peer, ?refusal, "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        let grace = config.grace;
        tasks.spawn(async move {
            let _slot = slot;
            let conn = http.serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "gateway connection: {e}");
                    }
                }
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(config.grace + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_bounds_each_address_and_the_total() {
        let a = Admission::new(3, 2);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::Address);
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refusal::Full);
        drop(x1);
        assert_eq!(a.open(), 2);
        let _x3 = a.admit(x).unwrap();
        assert_eq!(a.open(), 3);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server on loopback answering `GET /` with "ok"; stops when the sender drops.
    async fn server(
        config: ServeConfig,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, config, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Everything the server sends until it closes (or `within` passes: `None`).
    async fn read_all(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    fn json_body(answer: &str) -> serde_json::Value {
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
    }

    /// Malformed requests that hyper answers itself came back with empty bodies; now each
    /// is OpenAI's error JSON with the right status.
    #[tokio::test]
    async fn unparseable_requests_get_json_errors() {
        let (addr, _stop) = server(ServeConfig::default()).await;
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(512 << 10)
        );
        for (request, status, code) in [
            ("GARBAGE\r\n\r\n".to_string(), 400, "bad_request"),
            (
                "GET / HTTP/1.1\r\nBad Header\r\n\r\n".into(),
                400,
                "bad_request",
            ),
            (huge, 431, "headers_too_large"),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(request.as_bytes()).await;
            let answer = read_all(&mut s, Duration::from_secs(5)).await.unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer:?}"
            );
            let v = json_body(&answer);
            assert_eq!(v["error"]["code"], code, "{answer}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        // And the server still answers a good request.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("ok"),
            "{answer:?}"
        );
    }

    /// Slow-header and idle sockets stayed open as long as the client liked; now the
    /// server closes them after the header timeout.
    #[tokio::test]
    async fn slow_and_idle_connections_are_closed() {
        let config = ServeConfig {
            header_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (addr, _stop) = server(config).await;
        // Never finishes its head.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        // Finishes one request, then sits idle on the kept-alive connection.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Says nothing at all.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        for s in [&mut slow, &mut idle, &mut silent] {
            assert!(
                read_all(s, Duration::from_secs(5)).await.is_some(),
                "a connection outlived the header timeout"
            );
        }
    }

    /// One address could hold as many sockets as it liked; now past its share it is
    /// answered 429 (JSON) and closed, while other addresses are still served.
    #[tokio::test]
    async fn connections_per_address_are_bounded() {
        let config = ServeConfig {
            max_per_address: 3,
            ..Default::default()
        };
        let (addr, _stop) = server(config).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: give the server a moment to count the three.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let answer = read_all(&mut extra, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer:?}");
        assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections");
        // Another loopback address is another client.
        let other = std::net::SocketAddr::new("127.0.0.2".parse().unwrap(), addr.port());
        if let Ok(mut s) = TcpStream::connect(other).await {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let answer = read_all(&mut s, Duration::from_secs(5)).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        }
        // A freed place is usable again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = TcpStream::connect(addr).await.unwrap();
        again
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut again, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    }

    #[test]
    fn only_hyper_bodiless_error_heads_are_rewritten() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let json = String::from_utf8(json_for_hyper_error(head).unwrap()).unwrap();
        assert!(json.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{json}");
        let body = json.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        let len: usize = json
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        // The router's own errors carry a body, and other statuses pass.
        for pass in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 80\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"data: HTTP/1.1 400 Bad Request\r\n\r\n",
            b"HTTP/1.1 431",
        ] {
            assert!(json_for_hyper_error(pass).is_none(), "{pass:?}");
        }
    }
}
