//! The endpoint's HTTP side: hyper's HTTP/1.1 server on a runtime of its
//! own thread, so that no client (idle, slow, or many at once) holds up a
//! scrape, and no scrape holds up the agent.
//!
//! Limits, per connection: request headers within [`HEADER_TIMEOUT`]
//! (also the idle time allowed between requests on a kept-alive
//! connection) and [`MAX_HEADER_BYTES`]; the whole connection within
//! [`CONNECTION_LIFETIME`]; at most [`MAX_CONNECTIONS`] at once, past
//! which a new connection is closed on accept. Request bodies are never
//! read (every route is a GET).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// Time a client has to send a request's headers, from its connection or
/// from the previous answer.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers, at most.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A connection's whole life, at most (a client that reads nothing).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint serves, read at each request (on a blocking thread:
/// reading the pins of a full table takes a while).
pub trait Figures: Send + Sync + 'static {
    /// The OpenMetrics text, or why there is none (answered 503).
    fn metrics(&self) -> Result<String, String>;
    /// Whether the agent is ready (200), or why not (503).
    fn health(&self) -> Result<(), String>;
}

/// The endpoint, serving on its own thread until the process ends.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
}

impl MetricsServer {
    /// Binds `address` (an error if it cannot: the user asked for it) and
    /// serves `figures`.
    pub fn start(address: SocketAddr, figures: impl Figures) -> anyhow::Result<MetricsServer> {
        let listener =
            TcpListener::bind(address).with_context(|| format!("metrics endpoint on {address}"))?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(4)
            .thread_name("metrics")
            .build()
            .context("the metrics endpoint's runtime")?;
        let figures = Arc::new(figures);
        std::thread::Builder::new().name("metrics".to_owned()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept(listener, figures).await,
                    Err(e) => tracing::error!(error = %e, "metrics endpoint stopped"),
                }
            })
        })?;
        Ok(MetricsServer { address })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

async fn accept<F: Figures>(listener: tokio::net::TcpListener, figures: Arc<F>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let figures = Arc::clone(&figures);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |request| answer(Arc::clone(&figures), request)),
                );
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!(%peer, "metrics connection outlived its lifetime, closed"),
            }
            drop(slot);
        });
    }
}

async fn answer<F: Figures, B>(
    figures: Arc<F>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = Route::of(request.method(), request.uri().path());
    let (status, content_type, body) = match route {
        Route::Metrics | Route::Health => {
            let read = tokio::task::spawn_blocking(move || match route {
                Route::Metrics => figures.metrics().map(|text| (OPENMETRICS, text)),
                _ => figures.health().map(|()| ("text/plain", "ok\n".to_owned())),
            })
            .await
            .unwrap_or_else(|e| Err(format!("reading the figures: {e}")));
            match read {
                Ok((content_type, body)) => (StatusCode::OK, content_type, body),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
            }
        }
        Route::NotFound => (StatusCode::NOT_FOUND, "text/plain", "/metrics or /healthz\n".to_owned()),
        Route::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if route == Route::MethodNotAllowed {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    Ok(response)
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let known = matches!(path, "/metrics" | "/healthz");
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/metrics") => Route::Metrics,
            (&Method::GET | &Method::HEAD, "/healthz") => Route::Health,
            _ if known => Route::MethodNotAllowed,
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    /// Figures that take `delay` to read and count how many reads overlap.
    #[derive(Debug, Default)]
    struct Fake {
        delay: Duration,
        healthy: bool,
        reading: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    const TEXT: &str = "# TYPE heels_fake counter\nheels_fake_total 7\n# EOF\n";

    impl Figures for Arc<Fake> {
        fn metrics(&self) -> Result<String, String> {
            let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.reading.fetch_sub(1, Ordering::SeqCst);
            Ok(TEXT.to_owned())
        }

        fn health(&self) -> Result<(), String> {
            if self.healthy {
                Ok(())
            } else {
                Err("no datapath for instance web1".to_owned())
            }
        }
    }

    /// Runs `test` on a thread of its own in a new network namespace with
    /// only a loopback, up: the server and its clients talk there, and the
    /// namespace goes with the thread.
    fn in_private_network<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare of the network namespace acts on this thread
            // only (and on the threads and processes it starts after).
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
            let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
            assert!(up.success(), "ip link set lo up: {up}");
            test()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn serve(fake: Fake) -> (Arc<Fake>, SocketAddr) {
        let fake = Arc::new(fake);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&fake)).unwrap();
        (fake, server.address())
    }

    /// What one request got: status, head (lowercased) and body, read to
    /// the close within `deadline`.
    fn request(address: SocketAddr, request: &str, deadline: Duration) -> (u16, String, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(deadline)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("no whole answer within {deadline:?}: {e}"));
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {answer:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
        let text = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        request(address, &text, Duration::from_secs(1))
    }

    #[test]
    fn idle_and_slow_clients_do_not_hold_up_a_scrape_and_are_closed_after_the_header_timeout() {
        in_private_network(|| {
            let (_, address) = serve(Fake { healthy: true, ..Fake::default() });
            let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(address).unwrap()).collect();
            for _ in 0..3 {
                let mut slow = TcpStream::connect(address).unwrap();
                slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: ag").unwrap();
                held.push(slow);
            }
            let opened = Instant::now();
            for _ in 0..3 {
                let (status, head, body) = get(address, "/metrics");
                assert_eq!(status, 200, "{head}");
                assert!(head.contains(&format!("content-type: {OPENMETRICS}")), "{head}");
                assert_eq!(body, TEXT);
            }
            // Past the header timeout every held client finds its
            // connection closed (the read returns, with no answer).
            for stream in &mut held {
                let left = (HEADER_TIMEOUT + Duration::from_secs(2)).saturating_sub(opened.elapsed());
                stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
                let mut answer = Vec::new();
                match stream.read_to_end(&mut answer) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => {
                        panic!("a held client's connection is still open after {:?}: {e}", opened.elapsed())
                    }
                }
                assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{answer:?}");
            }
        });
    }

    #[test]
    fn concurrent_scrapes_are_served_at_once_and_each_gets_the_whole_text() {
        in_private_network(|| {
            let (fake, address) = serve(Fake { delay: Duration::from_millis(200), ..Fake::default() });
            let scrapers: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(move || (0..3).map(|_| get(address, "/metrics")).collect::<Vec<_>>())
                })
                .collect();
            for scraper in scrapers {
                for (status, head, body) in scraper.join().unwrap() {
                    assert_eq!(status, 200, "{head}");
                    assert_eq!(body, TEXT);
                }
            }
            assert!(fake.most_at_once.load(Ordering::SeqCst) >= 2, "the scrapes were served one at a time");
        });
    }

    #[test]
    fn a_keep_alive_client_gets_several_answers_on_one_connection() {
        in_private_network(|| {
            let (_, address) = serve(Fake { healthy: true, ..Fake::default() });
            let one = "GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n";
            let last = "GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";
            let (status, _, body) = request(address, &format!("{one}{one}{last}"), Duration::from_secs(1));
            assert_eq!(status, 200);
            // The first answer's body, then two whole answers.
            assert_eq!(body.matches("HTTP/1.1 200 OK").count(), 2, "{body}");
            assert!(body.ends_with(TEXT), "{body}");
        });
    }

    #[test]
    fn wrong_paths_methods_and_oversized_heads_get_their_errors() {
        in_private_network(|| {
            let (_, address) = serve(Fake::default());
            let (status, _, body) = get(address, "/");
            assert_eq!((status, body.as_str()), (404, "/metrics or /healthz\n"));
            assert_eq!(get(address, "/metrics/extra").0, 404);
            let post =
                "POST /metrics HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let (status, head, _) = request(address, post, Duration::from_secs(1));
            assert_eq!(status, 405, "{head}");
            assert!(head.contains("allow: get, head"), "{head}");
            let (status, _, body) = get(address, "/healthz");
            assert_eq!((status, body.as_str()), (503, "no datapath for instance web1\n"));
            let head = "HEAD /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";
            let (status, _, body) = request(address, head, Duration::from_secs(1));
            assert_eq!((status, body.as_str()), (200, ""));
            let huge = format!(
                "GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(MAX_HEADER_BYTES)
            );
            let (status, _, _) = request(address, &huge, Duration::from_secs(1));
            assert_eq!(status, 431);
        });
    }

    #[test]
    fn past_the_connection_limit_a_new_connection_is_closed_unanswered() {
        in_private_network(|| {
            let (_, address) = serve(Fake::default());
            let held: Vec<TcpStream> =
                (0..MAX_CONNECTIONS).map(|_| TcpStream::connect(address).unwrap()).collect();
            let mut extra = TcpStream::connect(address).unwrap();
            extra.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n");
            let mut answer = Vec::new();
            match extra.read_to_end(&mut answer) {
                Ok(_) => assert!(answer.is_empty(), "{answer:?}"),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            }
            // One slot freed, one scrape served.
            drop(held);
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                if answer.starts_with(b"HTTP/1.1 200") {
                    break;
                }
                assert!(Instant::now() < deadline, "no scrape served after the held connections closed");
            }
        });
    }
}
