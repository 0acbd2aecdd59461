//! A test fixture, not part of heels: the lab's Katran-compatible IPIP load
//! balancer. Packets to the VIP:vport get an outer IPv4 header as Katran
//! builds it (katran/lib/bpf/pckt_encap.h and encap_helpers.h): protocol 4,
//! source 172.16.(cip[2]^cport_lo).(cip[3]^cport_hi), destination the DIP,
//! TTL 64 (DEFAULT_TTL), TOS 0 (DEFAULT_TOS; Katran copies the inner TOS
//! only when built with COPY_INNER_PACKET_TOS), no DF. They leave to the
//! backend's MAC (XDP_TX): direct server return, the backend decapsulates.
//!
//! Known differences from Katran, none of which heels depends on: Katran
//! sends every frame to one configured next-hop MAC (here: the backend's
//! own, on-link); it picks backends by consistent (Maglev) hashing with a
//! connection table (here: a hash of the client's address and port, so a
//! flow stays on one backend); it leaves the outer IP id as it finds it
//! (here: 0); and it drops frames over 1514 bytes before encapsulation or
//! answers them with ICMP "too big" (here: the lab raises the MTU of the
//! server side instead). Everything else passes.

#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action},
    helpers::generated::bpf_xdp_adjust_head,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use heels_common::{LabLbBackend, LabLbConfig, LabLbCounter, LAB_LB_MAX_BACKENDS};

use crate::packet::{read, Packet};

#[map(name = "LAB_LB_CONFIG")]
static CONFIG: Array<LabLbConfig> = Array::with_max_entries(1, 0);

#[map(name = "LAB_LB_BACKENDS")]
static BACKENDS: Array<LabLbBackend> = Array::with_max_entries(LAB_LB_MAX_BACKENDS, 0);

#[map(name = "LAB_LB_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LabLbCounter::COUNT, 0);

const ETH_HLEN: usize = 14;
const OUTER_LEN: usize = 20;

#[xdp]
pub fn lab_ipip_lb(ctx: XdpContext) -> u32 {
    try_lb(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn lab_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// What the kernel's ipip module would do on a backend without heels (the
/// lab's kernel has none): strip the outer header of every IPIP packet.
#[classifier]
pub fn lab_ipip_decap(ctx: TcContext) -> i32 {
    let _ = try_decap(&ctx);
    0
}

fn try_decap(ctx: &TcContext) -> Result<(), ()> {
    ctx.pull_data(34.min(ctx.len())).map_err(|_| ())?;
    let ethertype: [u8; 2] = read(ctx, 12)?;
    let ver_ihl: u8 = read(ctx, ETH_HLEN)?;
    let protocol: u8 = read(ctx, ETH_HLEN + 9)?;
    if ethertype == [0x08, 0x00] && ver_ihl >> 4 == 4 && protocol == 4 {
        let outer_len = i32::from(ver_ihl & 0x0f) * 4;
        ctx.adjust_room(-outer_len, BPF_ADJ_ROOM_MAC, 0).map_err(|_| ())?;
    }
    Ok(())
}

/// The same at XDP, before TC sees the packet, as a production Katran
/// backend runs Katran's own decap.bpf.c: heels then meets the inner packet,
/// addressed to the VIP that the backend holds on its loopback.
#[xdp]
pub fn lab_xdp_decap(ctx: XdpContext) -> u32 {
    let _ = try_xdp_decap(&ctx);
    xdp_action::XDP_PASS
}

fn try_xdp_decap(ctx: &XdpContext) -> Result<(), ()> {
    let eth: [u8; ETH_HLEN] = read(ctx, 0)?;
    let ver_ihl: u8 = read(ctx, ETH_HLEN)?;
    let protocol: u8 = read(ctx, ETH_HLEN + 9)?;
    if eth[12..14] != [0x08, 0x00] || ver_ihl >> 4 != 4 || protocol != 4 {
        return Ok(());
    }
    let outer_len = i32::from(ver_ihl & 0x0f) * 4;
    // SAFETY: ctx.ctx is this program's xdp_md; the kernel checks the new
    // head lies inside the frame, and pointers are re-derived after.
    if outer_len < 20 || unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len) } != 0 {
        return Err(());
    }
    let start = ctx.start();
    if start + ETH_HLEN > ctx.end() {
        return Err(());
    }
    // SAFETY: the 14 bytes at the new head lie inside the packet, checked
    // just above.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; ETH_HLEN], eth) };
    Ok(())
}

fn add(counter: LabLbCounter, value: u64) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot; XDP runs with preemption off.
        unsafe { *slot += value };
    }
}

fn try_lb(ctx: &XdpContext) -> Result<u32, ()> {
    let config = CONFIG.get(0).ok_or(())?;
    let ethertype: [u8; 2] = read(ctx, 12)?;
    let ver_ihl: u8 = read(ctx, ETH_HLEN)?;
    let protocol: u8 = read(ctx, ETH_HLEN + 9)?;
    if ethertype != [0x08, 0x00] || ver_ihl != 0x45 || protocol != 6 || config.backends == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let inner: [u8; 20] = read(ctx, ETH_HLEN)?;
    let ports: [u8; 4] = read(ctx, ETH_HLEN + 20)?;
    let flags: u8 = read(ctx, ETH_HLEN + 20 + 13)?;
    if inner[16..20] != config.vip || ports[2..4] != config.vport {
        return Ok(xdp_action::XDP_PASS);
    }
    let hash = u32::from_be_bytes([inner[12], inner[13], inner[14], inner[15]]).wrapping_mul(0x9e37_79b1)
        ^ u32::from(u16::from_be_bytes([ports[0], ports[1]])).wrapping_mul(0x85eb_ca6b);
    let backend = BACKENDS.get((hash >> 16) % u32::from(config.backends)).ok_or(())?;
    let frame_len = (ctx.end() - ctx.start()) as u64;
    add(LabLbCounter::Packets, 1);
    add(LabLbCounter::Bytes, frame_len);
    if flags & 0x12 == 0x02 {
        add(LabLbCounter::Syns, 1);
    }
    if flags & 0x04 != 0 {
        add(LabLbCounter::Resets, 1);
    }

    // SAFETY: ctx.ctx is this program's xdp_md; growing the head by 20
    // bytes is checked by the kernel, and pointers are re-derived after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        return Ok(xdp_action::XDP_DROP);
    }
    let total_len = u16::from_be_bytes([inner[2], inner[3]]) + OUTER_LEN as u16;
    let mut outer = [0u8; OUTER_LEN];
    outer[0] = 0x45;
    outer[2..4].copy_from_slice(&total_len.to_be_bytes());
    outer[8] = 64;
    outer[9] = 4;
    outer[12] = 172;
    outer[13] = 16;
    // Katran XORs the client port, in host order, into the upper half of
    // the little-endian u32 holding the address: the port's low byte meets
    // cip[2], its high byte cip[3].
    outer[14] = inner[14] ^ ports[1];
    outer[15] = inner[15] ^ ports[0];
    outer[16..20].copy_from_slice(&backend.addr);
    let mut sum = 0u32;
    let mut i = 0;
    while i < OUTER_LEN {
        sum += u32::from(u16::from_be_bytes([outer[i], outer[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    outer[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());

    let mut eth = [0u8; ETH_HLEN];
    eth[0..6].copy_from_slice(&backend.mac);
    eth[6..12].copy_from_slice(&config.mac);
    eth[12] = 0x08;
    let start = ctx.start();
    if start + ETH_HLEN + OUTER_LEN > ctx.end() {
        return Ok(xdp_action::XDP_DROP);
    }
    // SAFETY: the 34 bytes at the new head lie inside the packet, checked
    // just above.
    unsafe {
        core::ptr::write_unaligned(start as *mut [u8; ETH_HLEN], eth);
        core::ptr::write_unaligned((start + ETH_HLEN) as *mut [u8; OUTER_LEN], outer);
    }
    Ok(xdp_action::XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}
