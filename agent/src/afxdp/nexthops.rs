//! The uplink's next hops from the kernel over rtnetlink
//! (netlink-packet-route): its routes in the main table and its IPv4
//! neighbours; a subscription to route and neighbour events says when to
//! read them again; and a probe that makes the kernel resolve a neighbour.

use std::net::{Ipv4Addr, UdpSocket};

use anyhow::Context;
use heels_afxdp::nexthop::{NextHops, Route};
use heels_dataplane::translate::Prefix;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourHeader, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;

/// The main table's unicast routes out of interface `ifindex`, and its
/// neighbours with a usable link-layer address.
pub fn read(ifindex: u32) -> anyhow::Result<NextHops> {
    let mut routes = Vec::new();
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    crate::netlink::dump(NETLINK_ROUTE, RouteNetlinkMessage::GetRoute(request), |message| {
        if let RouteNetlinkMessage::NewRoute(route) = message {
            routes.extend(uplink_route(&route, ifindex));
        }
    })
    .context("reading the routes (rtnetlink)")?;
    let mut neighbours = Vec::new();
    let mut request = NeighbourMessage::default();
    request.header.family = AddressFamily::Inet;
    crate::netlink::dump(NETLINK_ROUTE, RouteNetlinkMessage::GetNeighbour(request), |message| {
        if let RouteNetlinkMessage::NewNeighbour(neighbour) = message {
            neighbours.extend(usable_neighbour(&neighbour, ifindex));
        }
    })
    .context("reading the neighbours (rtnetlink)")?;
    Ok(NextHops::new(routes, neighbours))
}

fn uplink_route(route: &RouteMessage, ifindex: u32) -> Option<Route> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || header.kind != RouteType::Unicast {
        return None;
    }
    let mut oif = None;
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Destination(RouteAddress::Inet(addr)) => destination = *addr,
            RouteAttribute::Gateway(RouteAddress::Inet(addr)) => gateway = Some(addr.octets()),
            _ => {}
        }
    }
    if oif != Some(ifindex) {
        return None;
    }
    let prefix = Prefix::new(destination.octets(), header.destination_prefix_length)?;
    Some(Route { prefix, gateway })
}

fn usable_neighbour(neighbour: &NeighbourMessage, ifindex: u32) -> Option<([u8; 4], [u8; 6])> {
    let NeighbourHeader { ifindex: index, state, .. } = neighbour.header;
    let usable = matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if index != ifindex || !usable {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for attribute in &neighbour.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(a.octets()),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    Some((addr?, mac?))
}

/// A subscription to the kernel's route and neighbour events.
#[derive(Debug)]
pub struct Watch {
    socket: Socket,
    buffer: Vec<u8>,
}

impl Watch {
    /// Subscribes (events from now on).
    pub fn new() -> anyhow::Result<Watch> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket.bind(&SocketAddr::new(0, 0)).context("binding the rtnetlink socket")?;
        for group in [RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE] {
            socket.add_membership(group).context("subscribing to rtnetlink events")?;
        }
        socket.set_non_blocking(true)?;
        Ok(Watch { socket, buffer: vec![0; 64 * 1024] })
    }

    /// Readable when an event came (an event loop waits on it).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    /// Whether anything happened since the last call (the events are
    /// drained, not parsed: any of them means "read again"). An overrun
    /// socket (ENOBUFS) counts as a change.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(0) => return changed,
                Ok(_) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return changed,
                Err(_) => return true,
            }
        }
    }
}

/// Makes the kernel resolve `next` (an empty UDP datagram to its discard
/// port: the neighbour lookup happens on the way out, and an ARP reply
/// makes an entry the watch then sees).
pub fn probe(next: Ipv4Addr) {
    if let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = socket.send_to(&[], (next, 9));
    }
}
