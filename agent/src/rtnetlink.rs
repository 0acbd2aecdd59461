//! The host's links, routes, rules and addresses over rtnetlink
//! (netlink-packet-route), in the calling thread's network namespace:
//! what the agent used to ask `ip` for.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{self, Answer};

/// What the kernel says of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Ethernet address (zero if it has none).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
}

/// The link called `name`, if there is one.
pub fn link(name: &str) -> anyhow::Result<Option<LinkState>> {
    let mut request = LinkMessage::default();
    request.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let socket = netlink::open(NETLINK_ROUTE)?;
    let answer = netlink::ask_one(
        &socket,
        RouteNetlinkMessage::GetLink(request),
        &mut Vec::new(),
        &mut vec![0; 64 * 1024],
    )
    .with_context(|| format!("reading link {name} (rtnetlink)"))?;
    let link = match answer {
        Answer::Found(RouteNetlinkMessage::NewLink(link)) => link,
        Answer::Found(other) => anyhow::bail!("reading link {name}: the kernel answered {other:?}"),
        Answer::Missing => return Ok(None),
    };
    let mut state = LinkState { index: link.header.index, mac: [0; 6], mtu: 0 };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => state.mac.copy_from_slice(bytes),
            LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
            _ => {}
        }
    }
    Ok(Some(state))
}

/// The index of link `name`, or an error naming it.
pub fn index(name: &str) -> anyhow::Result<u32> {
    Ok(link(name)?.with_context(|| format!("no interface {name}"))?.index)
}

/// Deletes link `name` (a veth's peer goes with it); false if there was
/// none.
pub fn delete_link(name: &str) -> anyhow::Result<bool> {
    let mut request = LinkMessage::default();
    request.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::DelLink(request), 0) {
        Ok(()) => Ok(true),
        Err(e) if netlink::refused_with(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(e.context(format!("deleting link {name}"))),
    }
}

/// A veth pair: `name` here, `peer` in the namespace of process
/// `peer_netns_pid` (here if `None`), `queues` queues each way on both,
/// `mtu` on `name`.
pub fn add_veth(
    name: &str,
    peer: &str,
    queues: u32,
    mtu: u32,
    peer_netns_pid: Option<u32>,
) -> anyhow::Result<()> {
    let mut peer_message = LinkMessage::default();
    peer_message.attributes = vec![
        LinkAttribute::IfName(peer.to_owned()),
        LinkAttribute::NumTxQueues(queues),
        LinkAttribute::NumRxQueues(queues),
    ];
    peer_message.attributes.extend(peer_netns_pid.map(LinkAttribute::NetNsPid));
    let mut request = LinkMessage::default();
    request.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::NumTxQueues(queues),
        LinkAttribute::NumRxQueues(queues),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]),
    ];
    netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::NewLink(request), NLM_F_CREATE | NLM_F_EXCL)
        .with_context(|| format!("adding the veth pair {name}, {peer}"))
}

/// Sets link `name` up, with `mtu` if given and ARP off if `no_arp`.
pub fn set_up(name: &str, mtu: Option<u32>, no_arp: bool) -> anyhow::Result<()> {
    let mut request = LinkMessage::default();
    request.header.index = index(name)?;
    request.header.flags = LinkFlags::Up | if no_arp { LinkFlags::Noarp } else { LinkFlags::empty() };
    request.header.change_mask = LinkFlags::Up | if no_arp { LinkFlags::Noarp } else { LinkFlags::empty() };
    request.attributes.extend(mtu.map(LinkAttribute::Mtu));
    netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::SetLink(request), 0)
        .with_context(|| format!("setting link {name} up"))
}

/// An IPv4 route of table `table` (as `ip route replace` makes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    /// Destination and prefix length (`0.0.0.0/0`: the default route).
    pub destination: (Ipv4Addr, u8),
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Out of this interface index, if given.
    pub device: Option<u32>,
    /// Preferred source address, if given.
    pub source: Option<Ipv4Addr>,
    /// Table.
    pub table: u32,
}

impl Ipv4Route {
    fn message(&self) -> RouteMessage {
        let mut message = RouteMessage::default();
        let header = &mut message.header;
        header.address_family = AddressFamily::Inet;
        header.destination_prefix_length = self.destination.1;
        header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        header.protocol = RouteProtocol::Boot;
        // A route without a next hop reaches its destination on the link
        // (iproute2 picks the same scope).
        header.scope = if self.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
        header.kind = RouteType::Unicast;
        let attributes = &mut message.attributes;
        if self.destination.1 > 0 {
            attributes.push(RouteAttribute::Destination(RouteAddress::Inet(self.destination.0)));
        }
        attributes.extend(self.gateway.map(|g| RouteAttribute::Gateway(RouteAddress::Inet(g))));
        attributes.extend(self.device.map(RouteAttribute::Oif));
        attributes.extend(self.source.map(|s| RouteAttribute::PrefSource(RouteAddress::Inet(s))));
        attributes.push(RouteAttribute::Table(self.table));
        message
    }
}

/// Adds `route`, or replaces the route to its destination in its table.
pub fn replace_route(route: &Ipv4Route) -> anyhow::Result<()> {
    netlink::change(
        NETLINK_ROUTE,
        RouteNetlinkMessage::NewRoute(route.message()),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .with_context(|| format!("replacing the route {route:?}"))
}

/// The table a route message is in.
fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Deletes every IPv4 route of `table`; how many went.
pub fn flush_table(table: u32) -> anyhow::Result<usize> {
    let mut routes = Vec::new();
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    netlink::dump(NETLINK_ROUTE, RouteNetlinkMessage::GetRoute(request), |message| {
        if let RouteNetlinkMessage::NewRoute(route) = message {
            if table_of(&route) == table {
                routes.push(route);
            }
        }
    })
    .context("reading the routes (rtnetlink)")?;
    let count = routes.len();
    for route in routes {
        match netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::DelRoute(route), 0) {
            Ok(()) => {}
            Err(e) if netlink::refused_with(&e, libc::ESRCH) => {}
            Err(e) => return Err(e.context(format!("flushing table {table}"))),
        }
    }
    Ok(count)
}

fn fwmark_rule(mark: u32, table: u32, priority: Option<u32>) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.table = u8::try_from(table).unwrap_or(0);
    message.header.action = RuleAction::ToTable;
    message.attributes = vec![RuleAttribute::FwMark(mark), RuleAttribute::Table(table)];
    message.attributes.extend(priority.map(RuleAttribute::Priority));
    message
}

/// `ip rule add fwmark MARK lookup TABLE priority PRIORITY`.
pub fn add_fwmark_rule(mark: u32, table: u32, priority: u32) -> anyhow::Result<()> {
    let rule = fwmark_rule(mark, table, Some(priority));
    netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::NewRule(rule), NLM_F_CREATE | NLM_F_EXCL)
        .with_context(|| format!("adding the rule fwmark {mark:#x} lookup {table}"))
}

/// Deletes one rule `fwmark MARK lookup TABLE`; false if there was none.
pub fn delete_fwmark_rule(mark: u32, table: u32) -> anyhow::Result<bool> {
    match netlink::change(NETLINK_ROUTE, RouteNetlinkMessage::DelRule(fwmark_rule(mark, table, None)), 0) {
        Ok(()) => Ok(true),
        Err(e) if netlink::refused_with(&e, libc::ENOENT) => Ok(false),
        Err(e) => Err(e.context(format!("deleting the rule fwmark {mark:#x} lookup {table}"))),
    }
}

/// The IPv4 addresses of this namespace's interfaces, or of interface
/// `index` alone.
pub fn ipv4_addresses(index: Option<u32>) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut addresses = Vec::new();
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    netlink::dump(NETLINK_ROUTE, RouteNetlinkMessage::GetAddress(request), |message| {
        let RouteNetlinkMessage::NewAddress(address) = message else { return };
        if index.is_some_and(|index| address.header.index != index) {
            return;
        }
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's
        // on a point-to-point link); without it, IFA_ADDRESS.
        let find = |local: bool| {
            address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4)) if local => Some(*v4),
                AddressAttribute::Address(IpAddr::V4(v4)) if !local => Some(*v4),
                _ => None,
            })
        };
        addresses.extend(find(true).or_else(|| find(false)));
    })
    .context("reading the addresses (rtnetlink)")?;
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    //! Each change in a network namespace of the test's own, checked with
    //! what the stock tools (`ip`, `ethtool`) then show.

    use std::process::Command;

    use super::*;

    /// Runs `f` on a thread in a new network namespace of its own (gone
    /// with the thread); the tools it spawns run there too.
    fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare acts on this thread only, which ends with `f`.
                    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
                    f()
                })
                .join()
                .expect("the namespace thread")
        })
    }

    fn shown(program: &str, args: &[&str]) -> String {
        let output = Command::new(program).args(args).output().expect(program);
        assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn links_routes_rules_and_offloads_land_as_the_stock_tools_show_them() {
        in_new_netns(|| {
            add_veth("ht0", "ht1", 3, 1400, None).unwrap();
            let ht0 = link("ht0").unwrap().expect("ht0 exists");
            assert_eq!(ht0.mtu, 1400);
            assert_eq!(link("absent0").unwrap(), None);
            let ip_link = shown("ip", &["-j", "link", "show", "dev", "ht0"]);
            assert!(ip_link.contains(&format!("\"ifindex\":{}", ht0.index)), "{ip_link}");
            let mac = ht0.mac.map(|b| format!("{b:02x}")).join(":");
            assert!(ip_link.contains(&mac), "{mac} not in {ip_link}");

            set_up("ht0", Some(1500), true).unwrap();
            set_up("ht1", None, false).unwrap();
            let ip_link = shown("ip", &["-j", "link", "show", "dev", "ht0"]);
            for expected in ["\"UP\"", "\"NOARP\"", "\"mtu\":1500"] {
                assert!(ip_link.contains(expected), "{expected} not in {ip_link}");
            }

            crate::ethtool::disable_offloads("ht0").unwrap();
            let features = shown("ethtool", &["-k", "ht0"]);
            for off in
                ["tx-checksumming: off", "tcp-segmentation-offload: off", "generic-segmentation-offload: off"]
            {
                assert!(features.contains(off), "{off} not in {features}");
            }
            // The queues in use, as `ethtool -l` counts them.
            let channels = shown("ethtool", &["-l", "ht1"]);
            let current = channels.split("Current hardware settings:").nth(1).expect("current settings");
            let count = |key: &str| {
                current
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(key)?.trim().parse::<u32>().ok())
                    .unwrap_or(0)
            };
            assert_eq!(crate::ethtool::rx_queues("ht1"), (count("RX:") + count("Combined:")).max(1));

            shown("ip", &["addr", "add", "10.99.0.1/24", "dev", "ht0"]);
            assert_eq!(ipv4_addresses(Some(ht0.index)).unwrap(), vec![Ipv4Addr::new(10, 99, 0, 1)]);
            let vip = Ipv4Route {
                destination: (Ipv4Addr::new(10, 99, 100, 1), 32),
                gateway: None,
                device: Some(ht0.index),
                source: Some(Ipv4Addr::new(10, 99, 0, 1)),
                table: u32::from(RouteHeader::RT_TABLE_MAIN),
            };
            replace_route(&vip).unwrap();
            replace_route(&vip).unwrap();
            let routes = shown("ip", &["route", "show", "10.99.100.1/32"]);
            assert_eq!(routes.trim(), "10.99.100.1 dev ht0 scope link src 10.99.0.1");

            let direct = Ipv4Route {
                destination: (Ipv4Addr::UNSPECIFIED, 0),
                gateway: Some(Ipv4Addr::new(10, 99, 0, 2)),
                device: None,
                source: None,
                table: 4845,
            };
            replace_route(&direct).unwrap();
            add_fwmark_rule(0x4845, 4845, 100).unwrap();
            assert!(shown("ip", &["rule", "show"]).contains("100:\tfrom all fwmark 0x4845 lookup 4845"));
            assert_eq!(
                shown("ip", &["route", "show", "table", "4845"]).trim(),
                "default via 10.99.0.2 dev ht0"
            );
            assert!(delete_fwmark_rule(0x4845, 4845).unwrap());
            assert!(!delete_fwmark_rule(0x4845, 4845).unwrap(), "a second delete finds none");
            assert!(!shown("ip", &["rule", "show"]).contains("fwmark 0x4845"));
            assert_eq!(flush_table(4845).unwrap(), 1);
            assert_eq!(shown("ip", &["route", "show", "table", "4845"]).trim(), "");

            assert!(delete_link("ht0").unwrap());
            assert!(!delete_link("ht0").unwrap(), "a second delete finds none");
            assert_eq!(link("ht1").unwrap(), None, "the peer went with it");
        });
    }
}
