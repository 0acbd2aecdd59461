//! `heels lab load`: the lab's client, in its modes, and its report.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::*;

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
    /// Connect from these addresses of the client, in turn (default: the
    /// one the route picks). One address has one port range per
    /// destination: past some 64,000 connections at once ports run out.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// Hold: once every connection is open (its first exchange checked),
    /// create this file and wait until it is removed (at most 10 minutes)
    /// before the second exchanges, so that whoever runs the load can
    /// look at a host holding them all.
    #[arg(long)]
    pub pause_file: Option<std::path::PathBuf>,
}

/// How long a held load waits for its pause file to go.
const PAUSE_LIMIT: Duration = Duration::from_secs(600);

impl LoadSpec {
    /// A load of `mode` to `target` with nothing else asked: one
    /// connection at a time of one-byte exchanges, no count or time, the
    /// route's source address, no pause.
    pub fn new(target: SocketAddrV4, mode: Mode) -> LoadSpec {
        LoadSpec {
            target,
            mode,
            connections: 1,
            concurrency: 1,
            request: 1,
            response: 1,
            count: 0,
            seconds: 0.0,
            server_closes: false,
            mapped: false,
            sources: Vec::new(),
            pause_file: None,
        }
    }

    /// The address connection `i` comes from (none: the route's).
    fn source(&self, i: usize) -> Option<Ipv4Addr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
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

impl LoadReport {
    /// Adds the report of another load client that ran at the same time:
    /// counts add up, the time and latencies are the slower client's.
    pub fn absorb(&mut self, other: LoadReport) {
        self.connections_ok += other.connections_ok;
        self.connections_failed += other.connections_failed;
        self.resets += other.resets;
        self.bytes_verified += other.bytes_verified;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.real_address_seen += other.real_address_seen;
        for (server, n) in other.per_server {
            *self.per_server.entry(server).or_default() += n;
        }
        let room = 5usize.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
        self.elapsed_s = self.elapsed_s.max(other.elapsed_s);
        self.throughput_bps += other.throughput_bps;
        self.p50_us = self.p50_us.max(other.p50_us);
        self.p99_us = self.p99_us.max(other.p99_us);
        self.connections_per_s += other.connections_per_s;
    }
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

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Connects `i`, reads the hello; returns the stream and whether the
/// server saw our own address.
fn open(spec: &LoadSpec, i: usize, tally: &Mutex<Tally>) -> io::Result<(TcpStream, bool)> {
    let mut stream = connect(spec, spec.source(i))?;
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

/// A connection to the target, from `source` when given. Bound with
/// `IP_BIND_ADDRESS_NO_PORT` (as proxies bind), so the port is picked at
/// connect, per destination: each source has the whole port range.
fn connect(spec: &LoadSpec, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let target: SocketAddr = if spec.mapped {
        (spec.target.ip().to_ipv6_mapped(), spec.target.port()).into()
    } else {
        spec.target.into()
    };
    let timeout = Duration::from_secs(5);
    let Some(source) = source else { return TcpStream::connect_timeout(&target, timeout) };
    let socket = socket2::Socket::new(socket2::Domain::for_address(target), socket2::Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own, open; the option value
    // is a c_int that outlives the call, its size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    let from: SocketAddr = if spec.mapped { (source.to_ipv6_mapped(), 0).into() } else { (source, 0).into() };
    socket.bind(&from.into()).map_err(during("binding the source", Some(from)))?;
    socket.connect_timeout(&target.into(), timeout)?;
    Ok(socket.into())
}

fn exchange(stream: &mut TcpStream, request: u64, response: u64, seed: u64, last: bool) -> io::Result<u64> {
    let header = Request { request, response, seed, bulk: false, server_closes: last }.emit();
    stream.write_all(&header)?;
    send_pattern(stream, seed, request)?;
    receive_pattern(stream, seed.wrapping_add(1), response)
}

/// `error` with what the connection from `local` was doing (its kind kept:
/// resets are counted by it).
fn during(what: &'static str, local: Option<SocketAddr>) -> impl FnOnce(io::Error) -> io::Error {
    move |error| match local {
        Some(local) => io::Error::new(error.kind(), format!("{what} (from {local}): {error}")),
        None => io::Error::new(error.kind(), format!("{what}: {error}")),
    }
}

fn one_connection(spec: &LoadSpec, i: usize, seed: u64, tally: &Mutex<Tally>) -> io::Result<()> {
    let started = Instant::now();
    let (mut stream, real) = open(spec, i, tally)?;
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
    // Descriptors held at once, and some for the process itself.
    let wanted = match spec.mode {
        Mode::Hold => spec.connections as u64,
        _ => spec.concurrency as u64,
    } + 256;
    match raise_open_files_limit(wanted) {
        Ok(limit) if limit >= wanted => {}
        outcome => {
            let why = match outcome {
                Ok(limit) => format!("holds {limit}: run several load clients"),
                Err(e) => e.to_string(),
            };
            let mut report =
                LoadReport { connections_failed: spec.connections.max(1), ..LoadReport::default() };
            report.errors.push(format!("{wanted} open files wanted, the limit {why}"));
            return report;
        }
    }
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
                        if let Err(e) = one_connection(spec, i, i as u64 * 7919, &tally) {
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
            let next = AtomicUsize::new(0);
            let deadline = Duration::from_secs_f64(spec.seconds);
            std::thread::scope(|scope| {
                for t in 0..spec.concurrency.max(1) {
                    let (stop, next, tally) = (&stop, &next, &tally);
                    scope.spawn(move || {
                        let one = LoadSpec { request: 1, response: 1, ..spec.clone() };
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            if started.elapsed() >= deadline {
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                            let which = next.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = one_connection(&one, which, (t as u64) << 32 | i, tally) {
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
    let released = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (all_open, released) = (&all_open, &released);
            scope.spawn(move || {
                let mut held = Vec::new();
                for i in (t..spec.connections).step_by(threads) {
                    let seed = i as u64 * 7919;
                    let opened = open(spec, i, tally).and_then(|(mut stream, real)| {
                        exchange(&mut stream, spec.request, spec.response, seed, false)?;
                        Ok((stream, real, seed))
                    });
                    match opened {
                        Ok(connection) => held.push(connection),
                        Err(e) => tally.lock().expect("tally").fail(&e),
                    }
                }
                if all_open.wait().is_leader() {
                    if let Some(path) = &spec.pause_file {
                        if let Err(e) = pause(path) {
                            tally.lock().expect("tally").fail(&e);
                        }
                    }
                }
                released.wait();
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

/// Creates `path`, then waits until someone removes it.
fn pause(path: &std::path::Path) -> io::Result<()> {
    std::fs::write(path, b"open\n")?;
    let deadline = Instant::now() + PAUSE_LIMIT;
    while path.exists() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} was never removed", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn bulk(spec: &LoadSpec, tally: &Mutex<Tally>) -> io::Result<()> {
    let (mut stream, real) = open(spec, 0, tally)?;
    let header = Request { request: 0, response: 0, seed: 0, bulk: true, server_closes: false }.emit();
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
    let (mut stream, real) = open(spec, 0, tally)?;
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
