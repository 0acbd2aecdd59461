//! The host's TCP sockets, from the kernel's sock_diag netlink interface
//! (what `ss` uses): the live connections for the agent's sweep (a dump),
//! and the socket on one 4-tuple for the afxdp workers' listener lookups
//! and the check of reported closes ([`SocketQuery`]).
//!
//! Not `/proc/net/tcp`: reading it walks the kernel's whole connection
//! hash, every network namespace's sockets included, once per 4 KiB of
//! output, so its cost grows with the square of the host's sockets. Seen in
//! the lab: 74 ms a read with 42,000 TIME_WAITs, and the sweeps of three
//! agents, once a second, took a third of the CPU during a connection-rate
//! run. A dump asks the kernel for the live states only (TIME_WAIT
//! excluded: a connection whose socket is in TIME_WAIT is over) in one
//! pass.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddrV4};

use anyhow::Context;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::Socket;

use crate::netlink::{self, Answer};

// Socket states as sock_diag reports them (include/net/tcp_states.h): a
// TIME_WAIT socket by its substate (TIME_WAIT, or FIN_WAIT2 while the
// peer's FIN is awaited) with the TIME_WAIT timer.
/// `TCP_TIME_WAIT`.
pub const TCP_TIME_WAIT: u8 = 6;

/// What sock_diag said of the socket on a 4-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundSocket {
    /// Its state (see the constants above).
    pub state: u8,
    /// A TIME_WAIT socket (whatever its substate).
    pub time_wait: bool,
    /// The kernel's socket cookie.
    pub cookie: u64,
}

impl FoundSocket {
    /// A socket that still carries a connection: not a TIME_WAIT one.
    pub fn is_live(&self) -> bool {
        !self.time_wait && self.state != TCP_TIME_WAIT
    }
}

/// Exact sock_diag questions, one 4-tuple at a time (a request and its
/// answer: two system calls, not a dump), on a socket of its own in the
/// namespace it was made in. `&self` methods: a worker's `Listeners` asks
/// through a shared reference.
pub struct SocketQuery {
    socket: Socket,
    /// An exchange failed before its answer was read.
    unsettled: Cell<bool>,
    request: RefCell<Vec<u8>>,
    answer: RefCell<Vec<u8>>,
}

impl std::fmt::Debug for SocketQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketQuery")
    }
}

impl SocketQuery {
    /// Opens the sock_diag socket in the calling thread's network namespace.
    pub fn new() -> anyhow::Result<Self> {
        Ok(SocketQuery {
            socket: netlink::open(NETLINK_SOCK_DIAG)?,
            unsettled: Cell::new(false),
            request: RefCell::new(Vec::with_capacity(128)),
            answer: RefCell::new(vec![0; 64 * 1024]),
        })
    }

    /// The socket a packet to `local` from `remote` would meet: the
    /// connection's (a TIME_WAIT or request socket included), or else the
    /// listener's; IPv4-mapped sockets of dual-stack listeners and clients
    /// too (the kernel hashes them as IPv4).
    pub fn socket_on(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> anyhow::Result<Option<FoundSocket>> {
        let mut id = SocketId::new_v4();
        id.source_address = IpAddr::V4(*local.ip());
        id.source_port = local.port();
        id.destination_address = IpAddr::V4(*remote.ip());
        id.destination_port = remote.port();
        // No cookie: any socket on the 4-tuple.
        id.cookie = [0xff; 8];
        let request = tcp_request(AF_INET, StateFlags::all(), id);
        self.exchange(|socket, answer| {
            let answer = netlink::ask_one(socket, request, &mut self.request.borrow_mut(), answer)?;
            Ok(match answer {
                Answer::Found(SockDiagMessage::InetResponse(response)) => {
                    // The connection's socket or the listener (no peer): either
                    // way the local port is the one asked for.
                    let id = &response.header.socket_id;
                    if id.source_port != local.port() {
                        anyhow::bail!("sock_diag answered for another socket: {id:?}");
                    }
                    Some(FoundSocket {
                        state: response.header.state,
                        time_wait: response.header.timer == Some(Timer::TimeWait),
                        cookie: u64::from_ne_bytes(id.cookie),
                    })
                }
                Answer::Found(_) | Answer::Missing => None,
            })
        })
    }

    /// Runs one exchange on the socket with the answer buffer. An exchange
    /// that failed part way may have left answers behind: they are drained
    /// before the next, so that none passes for the next one's.
    pub fn exchange<T>(
        &self,
        run: impl FnOnce(&Socket, &mut [u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut answer = self.answer.borrow_mut();
        if self.unsettled.get() {
            netlink::drain(&self.socket, &mut answer);
        }
        self.unsettled.set(true);
        let result = run(&self.socket, &mut answer)?;
        self.unsettled.set(false);
        Ok(result)
    }
}

/// The states of a connection that still has a socket (not TIME_WAIT,
/// not a listener).
fn live_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::SYN_SENT
        | StateFlags::SYN_RECV
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

/// The IPv4 TCP connections with a live socket in this network namespace,
/// as (local, remote): IPv4 sockets, and IPv6 sockets with IPv4-mapped
/// addresses (dual-stack clients and listeners' children).
pub fn live_tcp_connections() -> anyhow::Result<HashSet<(SocketAddrV4, SocketAddrV4)>> {
    let mut connections = HashSet::new();
    for family in [AF_INET, AF_INET6] {
        dump(family, &mut |id| {
            connections.extend(ipv4_endpoints(id));
        })
        .with_context(|| format!("sock_diag dump of family {family}"))?;
    }
    Ok(connections)
}

/// (local, remote) of a socket, when both are IPv4 or IPv4-mapped.
pub fn ipv4_endpoints(id: &SocketId) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let ipv4 = |addr: IpAddr| match addr {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    Some((
        SocketAddrV4::new(ipv4(id.source_address)?, id.source_port),
        SocketAddrV4::new(ipv4(id.destination_address)?, id.destination_port),
    ))
}

/// A sock_diag request for the TCP sockets of `family` in `states` that
/// `socket_id` names (or, for a dump, any: see [`any_socket`]).
pub fn tcp_request(family: u8, states: StateFlags, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    })
}

/// The socket id of a dump of `family` (a dump ignores its fields).
pub fn any_socket(family: u8) -> SocketId {
    if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    }
}

fn dump(family: u8, each: &mut dyn FnMut(&SocketId)) -> anyhow::Result<()> {
    let request = tcp_request(family, live_states(), any_socket(family));
    crate::netlink::dump(NETLINK_SOCK_DIAG, request, |message| {
        if let SockDiagMessage::InetResponse(response) = message {
            each(&response.header.socket_id)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn id(source: IpAddr, destination: IpAddr) -> SocketId {
        SocketId {
            source_port: 18900,
            destination_port: 80,
            source_address: source,
            destination_address: destination,
            interface_id: 0,
            cookie: [0; 8],
        }
    }

    #[test]
    fn ipv4_and_ipv4_mapped_sockets_count_real_ipv6_ones_do_not() {
        let (client, vip) = (Ipv4Addr::new(10, 10, 1, 2), Ipv4Addr::new(10, 10, 100, 1));
        let expected = Some((SocketAddrV4::new(client, 18900), SocketAddrV4::new(vip, 80)));
        assert_eq!(ipv4_endpoints(&id(client.into(), vip.into())), expected);
        let mapped = id(client.to_ipv6_mapped().into(), vip.to_ipv6_mapped().into());
        assert_eq!(ipv4_endpoints(&mapped), expected);
        let v6: Ipv6Addr = "fe80::2".parse().unwrap();
        assert_eq!(ipv4_endpoints(&id(v6.into(), v6.into())), None);
    }
}
