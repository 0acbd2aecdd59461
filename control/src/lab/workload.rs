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

/// Descriptors a lab server asks for (it gets at most the hard limit: a
/// scale run starts several server processes on one port, `SO_REUSEPORT`).
const SERVER_OPEN_FILES: u64 = 262_144;

/// The server's listen backlog (the kernel caps it at `net.core.somaxconn`,
/// 4,096 by default): a storm of new connections must not overflow it.
const LISTEN_BACKLOG: i32 = 4096;

/// `heels lab serve`: answers every connection until killed. With
/// `dual_stack` the listener is one IPv6 socket on `[::]` that takes IPv4
/// too (IPv4-mapped addresses), as many servers and runtimes listen.
pub fn serve(port: u16, id: u16, dual_stack: bool) -> anyhow::Result<()> {
    raise_open_files_limit(SERVER_OPEN_FILES)?;
    let address: SocketAddr =
        if dual_stack { (Ipv6Addr::UNSPECIFIED, port).into() } else { (Ipv4Addr::UNSPECIFIED, port).into() };
    let listener = listen(address).with_context(|| format!("listening on {address}"))?;
    println!("ready");
    io::stdout().flush().ok();
    serve_listener(listener, id)
}

fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    if address.is_ipv6() {
        // Dual stack, whatever the system's default.
        socket.set_only_v6(false)?;
    }
    // The port may still hold TIME_WAITs of the last server.
    socket.set_reuse_address(true)?;
    // Several server processes may share the port, as nginx's workers do:
    // one process's descriptors do not hold a scale run's connections.
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Answers every connection `listener` accepts, each a task on a runtime
/// of one thread per core: a server holding 100,000 connections holds
/// 100,000 small tasks, not 100,000 threads.
fn serve_listener(listener: TcpListener, id: u16) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    runtime.block_on(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        let _ = serve_one(stream, id).await;
                    });
                }
                // Out of descriptors or memory: the connection waits in
                // the backlog; try again shortly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

async fn serve_one(mut stream: tokio::net::TcpStream, id: u16) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    stream.write_all(&hello).await?;
    loop {
        let mut header = [0u8; HEADER_LEN];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let request = Request::parse(&header);
        // A buffer only while a request is under way: a server holding
        // 100,000 idle connections holds no buffers.
        if request.bulk {
            // Bulk: discard until the client closes its side.
            let mut buf = vec![0u8; 256 * 1024];
            while stream.read(&mut buf).await? != 0 {}
            return Ok(());
        }
        let mut buf = vec![0u8; request.request.min(64 * 1024) as usize];
        let mut received = 0u64;
        while received < request.request {
            let want = (request.request - received).min(buf.len() as u64) as usize;
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(early_eof(received, request.request));
            }
            check_pattern(request.seed, received, &buf[..n])?;
            received += n as u64;
        }
        drop(buf);
        let mut sent = 0u64;
        let seed = request.seed.wrapping_add(1);
        while sent < request.response {
            let chunk = window(seed, sent, (request.response - sent).min(PERIOD as u64) as usize);
            stream.write_all(chunk).await?;
            sent += chunk.len() as u64;
        }
        if request.server_closes {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
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

#[cfg(test)]
mod tests {
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
            sources: Vec::new(),
            pause_file: None,
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
