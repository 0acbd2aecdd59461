//! The XDP classifier of the `afxdp` dataplane (docs/design.md, "The `afxdp` dataplane"): it sends
//! to the AF_XDP socket of the receive queue only what needs work, and passes
//! everything else to the stack untouched:
//! - a SYN carrying the HEELS SYN form for one of this host's services;
//! - a SYN-ACK carrying the HEELS SYN-ACK form;
//! - an IPIP packet carrying TCP (the workers decapsulate it);
//! - a packet of a flow in the steering map.
//!
//! With no socket on the queue, the packet passes (fail open).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use heels_common::{EndpointV4, FlowV4, XdpCounter, OPTION_LEN};

use crate::maps::{bump, HOST_XSKS, SERVICES, STEERING, XDP_STATS, XSKS};
use crate::options::{self, Search};
use crate::packet::{read, Packet};

const ETH_HLEN: usize = 14;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn heels_classify(ctx: XdpContext) -> u32 {
    let counter = classify(&ctx).unwrap_or(XdpCounter::Passed);
    if matches!(counter, XdpCounter::Passed | XdpCounter::BadOption) {
        count(counter);
        return xdp_action::XDP_PASS;
    }
    count(counter);
    // The low bits of the flags are the action when the queue has no socket.
    match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => action,
        Err(_) => {
            count(XdpCounter::NoSocket);
            xdp_action::XDP_PASS
        }
    }
}

/// Every frame to the worker of its receive queue: what the host sends
/// through `heels0` all goes through the workers. With no socket on the
/// queue, pass (fail open).
#[xdp]
pub fn heels_to_workers(ctx: XdpContext) -> u32 {
    HOST_XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn count(counter: XdpCounter) {
    bump(&XDP_STATS, counter as u32);
}

/// What the packet is; `Err` (truncated, not IPv4) means pass.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<XdpCounter, ()> {
    let ethertype: [u8; 2] = read(ctx, 12)?;
    if ethertype != [0x08, 0x00] {
        return Ok(XdpCounter::Passed);
    }
    let ip = ETH_HLEN;
    let ver_ihl: u8 = read(ctx, ip)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Ok(XdpCounter::Passed);
    }
    let frag: [u8; 2] = read(ctx, ip + 6)?;
    if u16::from_be_bytes(frag) & 0x3fff != 0 {
        return Ok(XdpCounter::Passed);
    }
    let protocol: u8 = read(ctx, ip + 9)?;
    if protocol == 4 {
        let inner_protocol: u8 = read(ctx, ip + ihl + 9)?;
        return Ok(if inner_protocol == 6 { XdpCounter::Ipip } else { XdpCounter::Passed });
    }
    if protocol != 6 {
        return Ok(XdpCounter::Passed);
    }
    let addrs: [u8; 8] = read(ctx, ip + 12)?;
    let tcp = ip + ihl;
    let ports: [u8; 4] = read(ctx, tcp)?;
    let flow = FlowV4 {
        src_addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst_addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
        src_port: [ports[0], ports[1]],
        dst_port: [ports[2], ports[3]],
    };
    if STEERING.get_ptr(flow).is_some() {
        return Ok(XdpCounter::Steered);
    }
    let offset_flags: [u8; 2] = read(ctx, tcp + 12)?;
    let flags = offset_flags[1];
    if flags & (TCP_SYN | TCP_RST) != TCP_SYN {
        return Ok(XdpCounter::Passed);
    }
    let options_len = (usize::from(offset_flags[0] >> 4) * 4).saturating_sub(20);
    let options = tcp + 20;
    let at = match options::find(ctx.start() + options, ctx.end(), options_len as u64).0 {
        Search::Found(at) => at as usize,
        Search::Absent => return Ok(XdpCounter::Passed),
        Search::Malformed => return Ok(XdpCounter::BadOption),
    };
    // The walk keeps `at` below 40; the mask proves it to the verifier.
    let option: [u8; OPTION_LEN as usize] = read(ctx, options + (at & 0x3f))?;
    if flags & TCP_ACK != 0 {
        return Ok(XdpCounter::SynAckWithOption);
    }
    // SYN form: VIP(4) vport(2) at bytes 4..10 of the option.
    let service = EndpointV4 {
        addr: [option[4], option[5], option[6], option[7]],
        port: [option[8], option[9]],
        pad: [0, 0],
    };
    if SERVICES.get_ptr(service).is_some() {
        Ok(XdpCounter::SynWithOption)
    } else {
        Ok(XdpCounter::Passed)
    }
}
