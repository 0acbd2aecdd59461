//! The host's way into the workers: a veth pair, `heels0` in the host and
//! its peer `heels1` in a network namespace only this process holds.
//!
//! The VIP routes point at `heels0`. When the process dies, by any signal,
//! its sockets close, the kernel deletes the namespace and with it the
//! pair and every route through `heels0`: the host's traffic to the VIPs
//! takes its usual route again, and nothing is left behind (fail open).

use anyhow::Context;
use netlink_packet_route::route::RouteHeader;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::ethtool;
use crate::rtnetlink::{self, Ipv4Route};

/// The host's end of the pair.
pub const HOST_LINK: &str = "heels0";
/// The host-wide reverse-path filter: the kernel applies the larger of it
/// and an interface's own.
const RP_FILTER_ALL: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";
/// The workers' end, in the private namespace.
pub const PEER_LINK: &str = "heels1";

/// One end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Interface index (in its namespace).
    pub index: u32,
    /// Ethernet address.
    pub mac: [u8; 6],
}

/// Handles on the private namespace and the host's, to move a thread
/// between them.
#[derive(Debug)]
pub struct Namespaces {
    private: OwnedFd,
    host: OwnedFd,
}

impl Namespaces {
    /// Other descriptors of the same namespaces (for another thread).
    pub fn try_clone(&self) -> anyhow::Result<Namespaces> {
        Ok(Namespaces { private: self.private.try_clone()?, host: self.host.try_clone()? })
    }

    /// Runs `f` on this thread inside the private namespace (to open or
    /// attach on `heels1`), then comes back.
    pub fn in_private<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        set_netns(&self.private).context("entering the private namespace")?;
        let out = f();
        set_netns(&self.host).context("coming back from the private namespace")?;
        Ok(out)
    }
}

/// The pair and the private namespace.
#[derive(Debug)]
pub struct HostPair {
    /// The private namespace and the host's.
    pub namespaces: Namespaces,
    /// heels0.
    pub host_end: End,
    /// heels1.
    pub peer_end: End,
}

/// Moves the calling thread (only) into the network namespace `fd` holds:
/// sockets, binds and netlink calls then act there.
pub fn set_netns(fd: impl AsFd) -> std::io::Result<()> {
    // SAFETY: setns acts on the calling thread only, with a namespace
    // descriptor that stays open for the call.
    if unsafe { libc::setns(fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new network namespace that no name and no process keeps: only the
/// returned descriptor (and sockets made in it) hold it.
fn private_netns() -> anyhow::Result<OwnedFd> {
    std::thread::spawn(|| -> anyhow::Result<OwnedFd> {
        // SAFETY: unshare of the network namespace acts on this thread
        // only, which exits right after reading the namespace's handle.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
        }
        let file = File::open("/proc/thread-self/ns/net").context("opening the new namespace")?;
        Ok(OwnedFd::from(file))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

fn end(name: &str) -> anyhow::Result<End> {
    let link = link(name)?;
    Ok(End { index: link.index, mac: link.mac })
}

/// What the kernel says of an interface of the calling thread's namespace
/// (over rtnetlink: sysfs shows the namespace it was mounted in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Ethernet address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Receive queues in use.
    pub rx_queues: u32,
}

/// Reads interface `name`.
pub fn link(name: &str) -> anyhow::Result<Link> {
    let state = rtnetlink::link(name)?.with_context(|| format!("no interface {name}"))?;
    Ok(Link { index: state.index, mac: state.mac, mtu: state.mtu, rx_queues: ethtool::rx_queues(name) })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .context(text.to_owned())?;
    <[u8; 6]>::try_from(bytes).map_err(|_| anyhow::anyhow!("{text}: not an Ethernet address"))
}

impl HostPair {
    /// Makes the namespace and the pair: `queues` queues each way, MTU
    /// `mtu`, no ARP, no IPv6 and no offloads on `heels0` (frames reach the
    /// workers whole, checksummed). A `heels0` a previous agent left is
    /// deleted first.
    pub fn create(queues: u32, mtu: u32) -> anyhow::Result<HostPair> {
        let host_wide =
            std::fs::read_to_string(RP_FILTER_ALL).with_context(|| format!("reading {RP_FILTER_ALL}"))?;
        if host_wide.trim() != "0" {
            anyhow::bail!(
                "net.ipv4.conf.all.rp_filter is {}: the afxdp dataplane hands packets to the host through heels0, \
                 whose sources the uplink routes, and the kernel would drop them; set it to 0 \
                 (the uplink's own rp_filter can stay) or run dataplane = \"tc\"",
                host_wide.trim()
            );
        }
        rtnetlink::delete_link(HOST_LINK)?;
        let private = private_netns()?;
        let host = OwnedFd::from(File::open("/proc/thread-self/ns/net").context("opening this namespace")?);
        let pid = std::process::id();
        let peer_end = std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<End> {
                    set_netns(&private).context("entering the private namespace")?;
                    // Made from inside: heels0 goes to the process's own
                    // namespace (its main thread's), heels1 stays here.
                    rtnetlink::add_veth(PEER_LINK, HOST_LINK, queues, mtu, Some(pid))?;
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{PEER_LINK}/disable_ipv6"), "1")
                        .context("disabling IPv6 on heels1")?;
                    rtnetlink::set_up(PEER_LINK, None, false)?;
                    end(PEER_LINK)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the pair thread panicked"))?
        })?;
        let namespaces = Namespaces { private, host };
        let pair = HostPair { namespaces, host_end: End { index: 0, mac: [0; 6] }, peer_end };
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{HOST_LINK}/disable_ipv6"), "1")
            .context("disabling IPv6 on heels0")?;
        // No reverse-path filter: what comes in by heels0 (a reply, a SYN
        // for a listener) is from addresses the uplink routes, and a link
        // without an address fails even the loose check (the kernel counts
        // TcpExtIPReversePathFilter). The host-wide setting counts too.
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{HOST_LINK}/rp_filter"), "0")
            .context("setting heels0's reverse-path filter")?;
        rtnetlink::set_up(HOST_LINK, Some(mtu), true)?;
        ethtool::disable_offloads(HOST_LINK)?;
        let host_end = end(HOST_LINK)?;
        Ok(HostPair { host_end, ..pair })
    }

    /// Runs `f` on this thread inside the private namespace.
    pub fn in_private<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        self.namespaces.in_private(f)
    }

    /// Routes `vip` into the pair, from `source`.
    pub fn route(&self, vip: Ipv4Addr, source: Ipv4Addr) -> anyhow::Result<()> {
        rtnetlink::replace_route(&Ipv4Route {
            destination: (vip, 32),
            gateway: None,
            device: Some(rtnetlink::index(HOST_LINK)?),
            source: Some(source),
            table: u32::from(RouteHeader::RT_TABLE_MAIN),
        })
    }

    /// Deletes the pair now (its routes go with it) rather than when the
    /// namespace goes.
    pub fn remove(&self) {
        if let Err(e) = rtnetlink::delete_link(HOST_LINK) {
            tracing::warn!(error = %format!("{e:#}"), "deleting {HOST_LINK}");
        }
    }
}

/// Deletes a `heels0` a dead agent left (`heels agent --cleanup`); the
/// kernel normally does it when the agent's namespace goes. True if one
/// was there.
pub fn remove_leftover() -> bool {
    rtnetlink::delete_link(HOST_LINK).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ethernet_address_parses_from_its_text() {
        assert_eq!(parse_mac("02:00:0a:0a:00:0b").unwrap(), [2, 0, 10, 10, 0, 11]);
        assert!(parse_mac("02:00:0a").is_err());
    }
}
