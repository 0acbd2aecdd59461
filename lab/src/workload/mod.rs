//! The lab's own client and server: every byte is checked, and the server
//! tells each client which address it sees (so a test can tell that a
//! full-NAT server saw the real client).
//!
//! Wire format of one connection: the server first sends an 8-byte hello,
//! `peer address (4), peer port (2), server id (2)`; then the client sends
//! requests, each a 24-byte header `request length (8), response length (8),
//! seed (8)` followed by the request bytes, and the server answers with the
//! response bytes. The top bit of the request length means "do not verify"
//! (bulk transfers); the next bit "close after this response" (the server
//! closes first, as an HTTP/1.0 server does, and keeps the TIME_WAIT).
//! Bytes follow a pattern of the seed, so both sides check every byte they
//! receive.

use std::io::{self, Read, Write};
use std::net::TcpStream;

mod client;
mod server;

pub use client::{load, LoadReport, LoadSpec, Mode};
pub use server::serve;

const PERIOD: usize = 65_521;
const NO_VERIFY: u64 = 1 << 63;
const SERVER_CLOSES: u64 = 1 << 62;
const LENGTH: u64 = SERVER_CLOSES - 1;
const HELLO_LEN: usize = 8;
const HEADER_LEN: usize = 24;

/// The pattern, twice over, so any window of up to PERIOD bytes is a slice.
fn table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..2 * PERIOD as u64).map(|i| ((i % PERIOD as u64).wrapping_mul(0x9e37_79b1) >> 11) as u8).collect()
    })
}

fn window(seed: u64, offset: u64, len: usize) -> &'static [u8] {
    let start = ((seed.wrapping_add(offset)) % PERIOD as u64) as usize;
    &table()[start..start + len.min(PERIOD)]
}

/// Checks `bytes`, received at `offset` of the pattern of `seed`.
fn check_pattern(seed: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let expected = window(seed, offset + at as u64, bytes.len() - at);
        if bytes[at..at + expected.len()] != *expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("byte mismatch near offset {}", offset + at as u64),
            ));
        }
        at += expected.len();
    }
    Ok(())
}

fn early_eof(received: u64, len: u64) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF after {received} of {len} bytes"))
}

/// Writes `len` pattern bytes.
fn send_pattern(stream: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut sent = 0u64;
    while sent < len {
        let chunk = window(seed, sent, (len - sent).min(PERIOD as u64) as usize);
        stream.write_all(chunk)?;
        sent += chunk.len() as u64;
    }
    Ok(())
}

/// Reads `len` bytes, checking them against the pattern.
fn receive_pattern(stream: &mut TcpStream, seed: u64, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; len.min(64 * 1024) as usize];
    let mut received = 0u64;
    while received < len {
        let want = (len - received).min(buf.len() as u64) as usize;
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(early_eof(received, len));
        }
        check_pattern(seed, received, &buf[..n])?;
        received += n as u64;
    }
    Ok(received)
}

/// One request's header (the module's doc has the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    /// Request bytes that follow.
    request: u64,
    /// Response bytes asked for.
    response: u64,
    /// The pattern's seed (the response's is `seed + 1`).
    seed: u64,
    /// A bulk transfer: the server discards until the client's close.
    bulk: bool,
    /// The server closes after this response.
    server_closes: bool,
}

impl Request {
    fn parse(header: &[u8; HEADER_LEN]) -> Request {
        let word = |i: usize| u64::from_be_bytes(header[i..i + 8].try_into().expect("8 bytes"));
        Request {
            request: word(0) & LENGTH,
            response: word(8),
            seed: word(16),
            bulk: word(0) & NO_VERIFY != 0,
            server_closes: word(0) & SERVER_CLOSES != 0,
        }
    }

    fn emit(&self) -> [u8; HEADER_LEN] {
        let mut word = self.request & LENGTH;
        if self.bulk {
            word |= NO_VERIFY;
        }
        if self.server_closes {
            word |= SERVER_CLOSES;
        }
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&word.to_be_bytes());
        header[8..16].copy_from_slice(&self.response.to_be_bytes());
        header[16..24].copy_from_slice(&self.seed.to_be_bytes());
        header
    }
}

/// Raises this process's limit of open descriptors toward `want` (within
/// the kernel's `fs.nr_open`) and returns the limit it now has: a process
/// holding 100,000 connections needs 100,000 descriptors, a shell's default
/// is 1,024 and many machines' hard limit 20,000. Raising the hard limit
/// takes CAP_SYS_RESOURCE; without it the soft limit goes up to the hard
/// one, and the caller decides whether that is enough.
pub fn raise_open_files_limit(want: u64) -> io::Result<u64> {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = want.min(ceiling);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through the valid pointer given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    for raised in [
        libc::rlimit { rlim_cur: want, rlim_max: limit.rlim_max.max(want) },
        libc::rlimit { rlim_cur: want.min(limit.rlim_max), rlim_max: limit.rlim_max },
    ] {
        // SAFETY: setrlimit reads one rlimit through the valid pointer given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::client::*;
    use super::server::*;
    use super::*;

    /// Runs the server on an ephemeral loopback port; returns the port.
    fn serve_in_background(id: u16) -> anyhow::Result<u16> {
        let listener = listen((Ipv4Addr::LOCALHOST, 0).into())?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || serve_listener(listener, id));
        Ok(port)
    }

    fn spec(port: u16, mode: Mode) -> LoadSpec {
        LoadSpec {
            connections: 20,
            concurrency: 4,
            request: 100_000,
            response: 300_000,
            count: 50,
            seconds: 0.2,
            ..LoadSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), mode)
        }
    }

    #[test]
    fn verify_checks_every_byte_and_sees_the_real_address() {
        let port = serve_in_background(7).unwrap();
        let report = load(&spec(port, Mode::Verify));
        assert_eq!(report.connections_ok, 20, "{:?}", report.errors);
        assert_eq!(report.bytes_verified, 20 * 400_000);
        assert_eq!(report.real_address_seen, 20);
        assert_eq!(report.per_server.get(&7), Some(&20));
    }

    #[test]
    fn hold_keeps_every_connection_open_at_once_from_every_source_and_checks_both_exchanges() {
        let listener = listen((Ipv4Addr::UNSPECIFIED, 0).into()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let live = std::sync::Arc::new(AtomicUsize::new(0));
        let sources = std::sync::Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let (live2, sources2) = (live.clone(), sources.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, peer) = listener.accept().await.unwrap();
                    sources2.lock().unwrap().insert(peer.ip());
                    let live = live2.clone();
                    live.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = serve_one(stream, 3).await;
                        live.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        let pause = std::env::temp_dir().join(format!("heels-hold-pause-{}", std::process::id()));
        let _ = std::fs::remove_file(&pause);
        let from = vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let held = LoadSpec {
            connections: 30,
            concurrency: 4,
            sources: from.clone(),
            pause_file: Some(pause.clone()),
            ..spec(port, Mode::Hold)
        };
        let running = std::thread::spawn(move || load(&held));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pause.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(pause.exists(), "the load paused once all were open");
        assert_eq!(live.load(Ordering::SeqCst), 30, "all 30 are open at the pause");
        std::fs::remove_file(&pause).unwrap();
        let report = running.join().unwrap();
        assert_eq!((report.connections_ok, report.connections_failed), (30, 0), "{:?}", report.errors);
        assert_eq!(report.bytes_verified, 30 * 2 * 400_000, "two checked exchanges each");
        let seen: Vec<_> = sources.lock().unwrap().iter().copied().collect();
        assert_eq!(seen, from.iter().map(|&a| std::net::IpAddr::V4(a)).collect::<Vec<_>>());
        assert_eq!(report.real_address_seen, 30);
    }

    #[test]
    fn a_request_header_reads_back_what_was_written() {
        let request = Request { request: 5, response: 1 << 40, seed: 77, bulk: false, server_closes: true };
        assert_eq!(Request::parse(&request.emit()), request);
        let bulk = Request { request: 0, response: 0, seed: 0, bulk: true, server_closes: false };
        assert_eq!(Request::parse(&bulk.emit()), bulk);
        assert_eq!(bulk.emit()[0], 0x80, "the bulk flag is the top bit");
    }

    #[test]
    fn a_wrong_byte_is_caught() {
        // A server that answers with the wrong pattern.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(&[127, 0, 0, 1, 0, 0, 0, 1]).unwrap();
            let mut header = [0u8; HEADER_LEN];
            stream.read_exact(&mut header).unwrap();
            let mut request = vec![0u8; 10];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&[0u8; 10]).unwrap();
        });
        let report = load(&LoadSpec {
            connections: 1,
            concurrency: 1,
            request: 10,
            response: 10,
            ..spec(port, Mode::Verify)
        });
        assert_eq!(report.connections_ok, 0);
        assert_eq!(report.connections_failed, 1);
        assert!(report.errors[0].contains("mismatch"), "{:?}", report.errors);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank_of_a_sorted_sample() {
        let sample: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&sample, 0.50), 51.0);
        assert_eq!(percentile(&sample, 0.99), 100.0);
        assert_eq!(percentile(&sample, 0.0), 1.0);
        assert_eq!(percentile(&sample, 1.0), 101.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_other_modes_measure() {
        let port = serve_in_background(1).unwrap();
        let pingpong = load(&spec(port, Mode::Pingpong));
        assert_eq!(pingpong.connections_ok, 1);
        // Real round trips on loopback take some microseconds, and fewer
        // than a second each.
        assert!(pingpong.p50_us > 0.0 && pingpong.p99_us < 1e6, "{pingpong:?}");
        let bulk = load(&spec(port, Mode::Bulk));
        assert!(bulk.throughput_bps > 0.0 && bulk.bytes_sent > 0, "{bulk:?}");
        let connect = load(&spec(port, Mode::Connect));
        assert!(connect.connections_ok > 0 && connect.connections_per_s > 0.0);
    }
}
