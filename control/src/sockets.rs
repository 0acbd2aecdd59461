//! The host's live TCP connections, from the kernel's sock_diag netlink
//! interface (what `ss` uses), for the agent's sweep.
//!
//! Not `/proc/net/tcp`: reading it walks the kernel's whole connection
//! hash, every network namespace's sockets included, once per 4 KiB of
//! output, so its cost grows with the square of the host's sockets. Seen in
//! the lab: 74 ms a read with 42,000 TIME_WAITs, and the sweeps of three
//! agents, once a second, took a third of the CPU during a connection-rate
//! run. A dump asks the kernel for the live states only (TIME_WAIT
//! excluded: a connection whose socket is in TIME_WAIT is over) in one
//! pass.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddrV4};

use anyhow::Context;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

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
