//! `heels lab serve`: the lab's server, one task per connection.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::time::Duration;

use anyhow::Context;

use super::*;

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

pub(super) fn listen(address: SocketAddr) -> io::Result<TcpListener> {
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
pub(super) fn serve_listener(listener: TcpListener, id: u16) -> anyhow::Result<()> {
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

pub(super) async fn serve_one(mut stream: tokio::net::TcpStream, id: u16) -> io::Result<()> {
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
