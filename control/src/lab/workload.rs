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

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

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

/// Reads `len` bytes, checking them against the pattern unless `verify` is off.
fn receive_pattern(stream: &mut TcpStream, seed: u64, len: u64, verify: bool) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    while received < len {
        let want = (len - received).min(buf.len() as u64) as usize;
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {received} of {len} bytes"),
            ));
        }
        if verify {
            let mut at = 0;
            while at < n {
                let expected = window(seed, received + at as u64, n - at);
                if buf[at..at + expected.len()] != *expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("byte mismatch near offset {}", received + at as u64),
                    ));
                }
                at += expected.len();
            }
        }
        received += n as u64;
    }
    Ok(received)
}

/// `heels lab serve`: answers every connection until killed. With
/// `dual_stack` the listener is one IPv6 socket on `[::]` that takes IPv4
/// too (IPv4-mapped addresses), as many servers and runtimes listen.
pub fn serve(port: u16, id: u16, dual_stack: bool) -> anyhow::Result<()> {
    // std's IPv6 listener leaves IPV6_V6ONLY at the system default (0).
    let address: SocketAddr =
        if dual_stack { (Ipv6Addr::UNSPECIFIED, port).into() } else { (Ipv4Addr::UNSPECIFIED, port).into() };
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    println!("ready");
    io::stdout().flush().ok();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve_one(stream, id);
        });
    }
    Ok(())
}

fn serve_one(mut stream: TcpStream, id: u16) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let peer = match stream.peer_addr()? {
        SocketAddr::V4(peer) => peer,
        SocketAddr::V6(peer) => match peer.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddrV4::new(ip, peer.port()),
            None => return Ok(()),
        },
    };
    let mut hello = [0u8; HELLO_LEN];
    hello[..4].copy_from_slice(&peer.ip().octets());
    hello[4..6].copy_from_slice(&peer.port().to_be_bytes());
    hello[6..8].copy_from_slice(&id.to_be_bytes());
    stream.write_all(&hello)?;
    loop {
        let mut header = [0u8; HEADER_LEN];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let word = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
        let request = word & LENGTH;
        let response = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let seed = u64::from_be_bytes(header[16..24].try_into().expect("8 bytes"));
        if word & NO_VERIFY != 0 {
            // Bulk: discard until the client closes its side.
            io::copy(&mut stream, &mut io::sink())?;
            return Ok(());
        }
        receive_pattern(&mut stream, seed, request, true)?;
        send_pattern(&mut stream, seed.wrapping_add(1), response)?;
        if word & SERVER_CLOSES != 0 {
            return Ok(());
        }
    }
}

/// What `heels lab load` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Many connections, each one request and one response, every byte checked.
    Verify,
    /// One connection streaming to the server for `seconds`.
    Bulk,
    /// One connection, one-byte requests and responses, `count` of them
    /// or (with `seconds` above 0) for `seconds`: latency.
    Pingpong,
    /// New connections (one one-byte exchange each) for `seconds`: rate.
    Connect,
    /// `connections` connections open at once (opened by `concurrency`
    /// threads): each exchanges a checked request and response when it
    /// opens and again once all are open, then all close. What a host
    /// holding many connections asks of the tables.
    Hold,
}

/// One run of the load client (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadSpec {
    /// Where to connect: VIP:vport or DIP:port.
    #[arg(long)]
    pub target: SocketAddrV4,
    /// What to do.
    #[arg(long, value_enum, default_value = "verify")]
    pub mode: Mode,
    /// Connections (verify).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Connections at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Request bytes (verify).
    #[arg(long, default_value_t = 65536)]
    pub request: u64,
    /// Response bytes (verify).
    #[arg(long, default_value_t = 262144)]
    pub response: u64,
    /// Exchanges (pingpong).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Duration in seconds (bulk, connect; pingpong when above 0).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// The server closes each connection first (verify, connect), as an
    /// HTTP/1.0 server does: the TIME_WAIT stays on the server.
    #[arg(long)]
    pub server_closes: bool,
    /// Connect through an IPv6 socket to the target's IPv4-mapped address
    /// (`[::ffff:a.b.c.d]`), as dual-stack clients do.
    #[arg(long)]
    pub mapped: bool,
}

/// What the load client saw.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LoadReport {
    /// Connections that completed with every byte checked.
    pub connections_ok: usize,
    /// Connections that failed.
    pub connections_failed: usize,
    /// Failures that were resets.
    pub resets: usize,
    /// Bytes checked, both directions.
    pub bytes_verified: u64,
    /// Bytes the client sent (payload).
    pub bytes_sent: u64,
    /// Bytes the client received (payload).
    pub bytes_received: u64,
    /// Connections whose server saw the client's own address and port.
    pub real_address_seen: usize,
    /// Connections per server id.
    pub per_server: BTreeMap<u16, usize>,
    /// The first few errors.
    pub errors: Vec<String>,
    /// Wall time.
    pub elapsed_s: f64,
    /// Payload bits per second (bulk).
    pub throughput_bps: f64,
    /// Median exchange or connection time, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Connections per second (connect).
    pub connections_per_s: f64,
}

#[derive(Default)]
struct Tally {
    report: LoadReport,
    samples_us: Vec<f64>,
}

impl Tally {
    fn fail(&mut self, error: &io::Error) {
        self.report.connections_failed += 1;
        if error.kind() == io::ErrorKind::ConnectionReset {
            self.report.resets += 1;
        }
        if self.report.errors.len() < 5 {
            self.report.errors.push(error.to_string());
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Connects, reads the hello; returns the stream and whether the server saw our own address.
fn open(spec: &LoadSpec, tally: &Mutex<Tally>) -> io::Result<(TcpStream, bool)> {
    let target: SocketAddr = if spec.mapped {
        (spec.target.ip().to_ipv6_mapped(), spec.target.port()).into()
    } else {
        spec.target.into()
    };
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    let mut hello = [0u8; HELLO_LEN];
    stream.read_exact(&mut hello).map_err(during("reading the hello", stream.local_addr().ok()))?;
    let seen = SocketAddrV4::new(
        Ipv4Addr::new(hello[0], hello[1], hello[2], hello[3]),
        u16::from_be_bytes([hello[4], hello[5]]),
    );
    let server = u16::from_be_bytes([hello[6], hello[7]]);
    *tally.lock().expect("tally").report.per_server.entry(server).or_default() += 1;
    let local = match stream.local_addr()? {
        SocketAddr::V4(local) => Some(local),
        SocketAddr::V6(local) => local.ip().to_ipv4_mapped().map(|ip| SocketAddrV4::new(ip, local.port())),
    };
    Ok((stream, local == Some(seen)))
}

fn exchange(stream: &mut TcpStream, request: u64, response: u64, seed: u64, last: bool) -> io::Result<u64> {
    let mut header = [0u8; HEADER_LEN];
    let word = if last { request | SERVER_CLOSES } else { request };
    header[0..8].copy_from_slice(&word.to_be_bytes());
    header[8..16].copy_from_slice(&response.to_be_bytes());
    header[16..24].copy_from_slice(&seed.to_be_bytes());
    stream.write_all(&header)?;
    send_pattern(stream, seed, request)?;
    receive_pattern(stream, seed.wrapping_add(1), response, true)
}

/// `error` with what the connection from `local` was doing (its kind kept:
/// resets are counted by it).
fn during(what: &'static str, local: Option<SocketAddr>) -> impl FnOnce(io::Error) -> io::Error {
    move |error| match local {
        Some(local) => io::Error::new(error.kind(), format!("{what} (from {local}): {error}")),
        None => io::Error::new(error.kind(), format!("{what}: {error}")),
    }
}

fn one_connection(spec: &LoadSpec, seed: u64, tally: &Mutex<Tally>) -> io::Result<()> {
    let started = Instant::now();
    let (mut stream, real) = open(spec, tally)?;
    let local = stream.local_addr().ok();
    let received = exchange(&mut stream, spec.request, spec.response, seed, spec.server_closes)
        .map_err(during("exchanging", local))?;
    if !spec.server_closes {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    // Wait for the server's close: nothing more may arrive.
    let mut rest = [0u8; 1];
    if stream.read(&mut rest).map_err(during("waiting for the close", local))? != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the response"));
    }
    let mut tally = tally.lock().expect("tally");
    tally.report.connections_ok += 1;
    tally.report.real_address_seen += usize::from(real);
    tally.report.bytes_sent += spec.request;
    tally.report.bytes_received += received;
    tally.report.bytes_verified += spec.request + received;
    tally.samples_us.push(started.elapsed().as_secs_f64() * 1e6);
    Ok(())
}

/// `heels lab load`.
pub fn load(spec: &LoadSpec) -> LoadReport {
    let tally = Mutex::new(Tally::default());
    let started = Instant::now();
    match spec.mode {
        Mode::Verify => {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..spec.concurrency.max(1) {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= spec.connections {
                            return;
                        }
                        if let Err(e) = one_connection(spec, i as u64 * 7919, &tally) {
                            tally.lock().expect("tally").fail(&e);
                        }
                    });
                }
            });
        }
        Mode::Hold => hold(spec, &tally),
        Mode::Bulk => {
            if let Err(e) = bulk(spec, &tally) {
                tally.lock().expect("tally").fail(&e);
            }
        }
        Mode::Pingpong => {
            if let Err(e) = pingpong(spec, &tally) {
                tally.lock().expect("tally").fail(&e);
            }
        }
        Mode::Connect => {
            let stop = AtomicBool::new(false);
            let deadline = Duration::from_secs_f64(spec.seconds);
            std::thread::scope(|scope| {
                for t in 0..spec.concurrency.max(1) {
                    let (stop, tally) = (&stop, &tally);
                    scope.spawn(move || {
                        let one = LoadSpec { request: 1, response: 1, ..spec.clone() };
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            if started.elapsed() >= deadline {
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                            if let Err(e) = one_connection(&one, (t as u64) << 32 | i, tally) {
                                tally.lock().expect("tally").fail(&e);
                            }
                            i += 1;
                        }
                    });
                }
            });
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = tally.into_inner().expect("tally");
    tally.samples_us.sort_by(f64::total_cmp);
    let mut report = tally.report;
    report.elapsed_s = elapsed;
    report.p50_us = percentile(&tally.samples_us, 0.50);
    report.p99_us = percentile(&tally.samples_us, 0.99);
    if spec.mode == Mode::Connect {
        report.connections_per_s = report.connections_ok as f64 / elapsed;
    }
    report
}

/// [`Mode::Hold`]: each thread opens its share, one checked exchange each;
/// once every thread has opened its share, a second exchange on every
/// connection, then the closes (the server's, after ours).
fn hold(spec: &LoadSpec, tally: &Mutex<Tally>) {
    let threads = spec.concurrency.clamp(1, spec.connections.max(1));
    let all_open = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let all_open = &all_open;
            scope.spawn(move || {
                let mut held = Vec::new();
                for i in (t..spec.connections).step_by(threads) {
                    let seed = i as u64 * 7919;
                    let opened = open(spec, tally).and_then(|(mut stream, real)| {
                        exchange(&mut stream, spec.request, spec.response, seed, false)?;
                        Ok((stream, real, seed))
                    });
                    match opened {
                        Ok(connection) => held.push(connection),
                        Err(e) => tally.lock().expect("tally").fail(&e),
                    }
                }
                all_open.wait();
                for (mut stream, real, seed) in held {
                    let started = Instant::now();
                    let closed = exchange(&mut stream, spec.request, spec.response, seed + 1, false)
                        .and_then(|_| stream.shutdown(std::net::Shutdown::Write))
                        .and_then(|()| {
                            let mut rest = [0u8; 1];
                            match stream.read(&mut rest)? {
                                0 => Ok(()),
                                _ => Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "bytes after the response",
                                )),
                            }
                        });
                    let mut tally = tally.lock().expect("tally");
                    match closed {
                        Ok(()) => {
                            tally.report.connections_ok += 1;
                            tally.report.real_address_seen += usize::from(real);
                            tally.report.bytes_sent += 2 * spec.request;
                            tally.report.bytes_received += 2 * spec.response;
                            tally.report.bytes_verified += 2 * (spec.request + spec.response);
                            tally.samples_us.push(started.elapsed().as_secs_f64() * 1e6);
                        }
                        Err(e) => tally.fail(&e),
                    }
                }
            });
        }
    });
}

fn bulk(spec: &LoadSpec, tally: &Mutex<Tally>) -> io::Result<()> {
    let (mut stream, real) = open(spec, tally)?;
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&NO_VERIFY.to_be_bytes());
    stream.write_all(&header)?;
    let chunk = window(0, 0, PERIOD);
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(spec.seconds);
    let mut sent = 0u64;
    while started.elapsed() < deadline {
        stream.write_all(chunk)?;
        sent += chunk.len() as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // The server closes once it has read everything: then all was delivered.
    let mut rest = [0u8; 1];
    if stream.read(&mut rest)? != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes from a bulk sink"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = tally.lock().expect("tally");
    tally.report.connections_ok += 1;
    tally.report.real_address_seen += usize::from(real);
    tally.report.bytes_sent = sent;
    tally.report.throughput_bps = sent as f64 * 8.0 / elapsed;
    Ok(())
}

fn pingpong(spec: &LoadSpec, tally: &Mutex<Tally>) -> io::Result<()> {
    let (mut stream, real) = open(spec, tally)?;
    let mut samples = Vec::with_capacity(spec.count);
    let begun = Instant::now();
    let until = Duration::from_secs_f64(spec.seconds.max(0.0));
    let more = |i: usize| if until.is_zero() { i < spec.count } else { begun.elapsed() < until };
    let mut i = 0;
    while more(i) {
        let started = Instant::now();
        exchange(&mut stream, 1, 1, i as u64, false)?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    let mut tally = tally.lock().expect("tally");
    tally.report.connections_ok += 1;
    tally.report.real_address_seen += usize::from(real);
    tally.report.bytes_verified += 2 * samples.len() as u64;
    tally.samples_us.extend(samples);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the server on an ephemeral loopback port; returns the port.
    fn serve_in_background(id: u16) -> anyhow::Result<u16> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = serve_one(stream, id);
                });
            }
        });
        Ok(port)
    }

    fn spec(port: u16, mode: Mode) -> LoadSpec {
        LoadSpec {
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            mode,
            connections: 20,
            concurrency: 4,
            request: 100_000,
            response: 300_000,
            count: 50,
            seconds: 0.2,
            server_closes: false,
            mapped: false,
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
    fn hold_keeps_every_connection_open_at_once_and_checks_both_exchanges() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let live = std::sync::Arc::new(AtomicUsize::new(0));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let (live2, most2) = (live.clone(), most.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (live, most) = (live2.clone(), most2.clone());
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve_one(stream, 3);
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let report = load(&LoadSpec { connections: 30, concurrency: 4, ..spec(port, Mode::Hold) });
        assert_eq!((report.connections_ok, report.connections_failed), (30, 0), "{:?}", report.errors);
        assert_eq!(report.bytes_verified, 30 * 2 * 400_000, "two checked exchanges each");
        assert_eq!(most.load(Ordering::SeqCst), 30, "all 30 were open at once");
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
    fn the_other_modes_measure() {
        let port = serve_in_background(1).unwrap();
        let pingpong = load(&spec(port, Mode::Pingpong));
        assert_eq!(pingpong.connections_ok, 1);
        assert!(pingpong.p99_us >= pingpong.p50_us && pingpong.p50_us > 0.0);
        let bulk = load(&spec(port, Mode::Bulk));
        assert!(bulk.throughput_bps > 0.0 && bulk.bytes_sent > 0, "{bulk:?}");
        let connect = load(&spec(port, Mode::Connect));
        assert!(connect.connections_ok > 0 && connect.connections_per_s > 0.0);
    }
}
