//! The sockops program: writes and reads the HEELS option (docs/protocol.md)
//! and removes a client connection's entries when its socket closes.
//!
//! - Client: a socket connecting to a configured VIP asks for the header
//!   option callbacks and writes the SYN form in its SYN.
//! - Server: every listener asks for them and is marked as served (socket
//!   storage, which TC ingress checks before it translates a SYN for it); a
//!   SYN-ACK carries the SYN-ACK form only if TC ingress recorded that it
//!   translated the SYN it answers (`TRANSLATED`, keyed by the connection's
//!   own 4-tuple) for the VIP that SYN's form names. This holds for
//!   syncookie SYN-ACKs too: the SYN is at hand when they are written.
//!   A retransmitted SYN-ACK carries it as well, from the record alone
//!   (the kernel keeps no SYN for it).
//! - IPv4 and dual-stack alike: an IPv6 socket whose peer is an
//!   IPv4-mapped address (a listener on `[::]`, a client connecting to
//!   `::ffff:VIP`) is an IPv4 connection; its `*_ip4` fields hold the
//!   addresses (the kernel sets both forms).
//! - No room for the option: the segment goes without it. The program
//!   always returns 1 (continue): HEELS never fails a connection.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_sk_storage_get, bpf_store_hdr_opt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use heels_common::{option, EndpointV4, FlowV4, TcCounter, VipCounter, OPTION_EXID, OPTION_KIND, OPTION_LEN};

use crate::maps::{
    count, count_vip, is_client_vip, PinnedSkStorage, CLOSES, EGRESS, HEELS_SERVED_LISTENERS,
    HEELS_SOCK_BACKENDS, INGRESS, SERVICES, TRANSLATED,
};

const TCP_SYN: u32 = 0x02;
/// `BPF_LOAD_HDR_OPT_TCP_SYN`: search the SYN this SYN-ACK answers (an
/// anonymous enum in the bindings).
const LOAD_FROM_SYN: u64 = 1;
const TCP_ACK: u32 = 0x10;
/// What `bpf_load_hdr_opt` returns for a SYN-ACK retransmission: the SYN
/// is gone (`-ENOENT`; it would be kept only under `TCP_SAVE_SYN`).
const NO_SYN_AT_HAND: i64 = -2;

#[sock_ops]
pub fn heels_sockops(ctx: SockOpsContext) -> u32 {
    handle(&ctx);
    1
}

/// The socket's own address and its peer's, as on the wire.
#[inline(always)]
fn endpoints(ctx: &SockOpsContext) -> (EndpointV4, EndpointV4) {
    // local_port is in host order; remote_port holds the network-order port
    // in its upper 16 bits on little-endian machines (see bpf_sock_ops).
    let local = EndpointV4::new(ctx.local_ip4().to_ne_bytes(), ctx.local_port() as u16);
    let remote = EndpointV4::new(ctx.remote_ip4().to_ne_bytes(), u32::from_be(ctx.remote_port()) as u16);
    (local, remote)
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// True for an IPv4 connection: an IPv4 socket, or an IPv6 socket whose
/// peer is an IPv4-mapped address (`::ffff:a.b.c.d`).
#[inline(always)]
fn is_ipv4(ctx: &SockOpsContext) -> bool {
    match ctx.family() {
        AF_INET => true,
        AF_INET6 => {
            let remote = ctx.remote_ip6();
            // The words are in network order as stored: ::ffff: is 0, 0, htonl(0xffff).
            remote[0] == 0 && remote[1] == 0 && remote[2] == 0xffff_u32.to_be()
        }
        _ => false,
    }
}

#[inline(always)]
fn handle(ctx: &SockOpsContext) {
    let flags = ctx.cb_flags();
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // IPv4 and IPv6 listeners alike: a dual-stack one takes IPv4.
        let _ = ctx.set_cb_flags(flags as i32 | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG as i32);
        mark_served(ctx);
        return;
    }
    if !is_ipv4(ctx) {
        return;
    }
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let (local, remote) = endpoints(ctx);
            if is_client_vip(&remote) {
                // Without room for the connection, no form: the server
                // does not translate, and the connection takes the LB path.
                let want = if reserve(&local, &remote) {
                    BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG
                } else {
                    count(TcCounter::TableFull);
                    0
                };
                let _ = ctx.set_cb_flags(flags as i32 | want as i32);
            }
        }
        // The handshake is over: no more options to write.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((flags & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            remember_backend(ctx);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((flags & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            if option_to_write(ctx).is_some() {
                // SAFETY: ctx.ops is the program's own bpf_sock_ops.
                let err = unsafe { bpf_reserve_hdr_opt(ctx.ops, OPTION_LEN.into(), 0) };
                if err != 0 {
                    count(TcCounter::NoOptionRoom);
                }
            }
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => {
            if let Some((option, from)) = option_to_write(ctx) {
                // SAFETY: ctx.ops is the program's own bpf_sock_ops and the
                // option is 16 bytes on the stack.
                let err =
                    unsafe { bpf_store_hdr_opt(ctx.ops, option.as_ptr() as *const _, OPTION_LEN.into(), 0) };
                if err == 0 {
                    // The SYN form names VIP:vport first, the SYN-ACK form second.
                    let (first, second) = option::endpoints(&option);
                    if from == Written::Retransmission {
                        count(TcCounter::SynAckOptionRetransmitted);
                    } else if skb_flags(ctx) & TCP_ACK != 0 {
                        count(TcCounter::SynAckOptionWritten);
                        count_vip(&second, VipCounter::SynAckOptionWritten, 1);
                    } else {
                        count(TcCounter::SynOptionWritten);
                        count_vip(&first, VipCounter::SynOptionWritten, 1);
                    }
                }
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            forget(ctx);
        }
        _ => {}
    }
}

#[inline(always)]
fn skb_flags(ctx: &SockOpsContext) -> u32 {
    // SAFETY: ctx.ops is the program's own bpf_sock_ops.
    unsafe { (*ctx.ops).skb_tcp_flags }
}

/// Where the option a segment carries was read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// The socket's own addresses (a SYN), or the SYN at hand (a SYN-ACK).
    FirstTime,
    /// The record of the translated SYN alone (a retransmitted SYN-ACK).
    Retransmission,
}

/// The option this segment must carry, if any.
#[inline(always)]
fn option_to_write(ctx: &SockOpsContext) -> Option<(option::Bytes, Written)> {
    let flags = skb_flags(ctx);
    if flags & TCP_SYN == 0 {
        return None;
    }
    let (local, remote) = endpoints(ctx);
    if flags & TCP_ACK == 0 {
        // Our SYN: VIP:vport where we connect, CIP:cport our own address.
        return Some((option::emit(&remote, &local), Written::FirstTime));
    }
    // Our SYN-ACK: only for a SYN that ingress translated (its record,
    // keyed by the connection's own 4-tuple, names the VIP), and every
    // retransmission of it: a lost SYN-ACK retransmitted without the form
    // would reach the client from a DIP it cannot place, and draw a reset.
    // SAFETY: the value is copied out at once.
    let vip = unsafe { TRANSLATED.get(FlowV4::between(&remote, &local)) }.copied()?;
    // A VIP this host serves (the configuration may have changed since).
    SERVICES.get_ptr(vip)?;
    let mut syn_option = [0u8; OPTION_LEN as usize];
    syn_option[0] = OPTION_KIND;
    syn_option[1] = 4;
    syn_option[2] = OPTION_EXID[0];
    syn_option[3] = OPTION_EXID[1];
    // SAFETY: ctx.ops is the program's own bpf_sock_ops; the buffer is 16
    // bytes and the kernel writes at most that many.
    let len = unsafe {
        bpf_load_hdr_opt(ctx.ops, syn_option.as_mut_ptr() as *mut _, OPTION_LEN.into(), LOAD_FROM_SYN)
    };
    if len == NO_SYN_AT_HAND {
        // A retransmission (the request's timer, or a retransmitted SYN
        // that met the request): the kernel keeps no SYN, the record
        // speaks for it. Any untranslated SYN on this tuple removed it.
        return Some((option::emit(&local, &vip), Written::Retransmission));
    }
    if len != i64::from(OPTION_LEN) || syn_option[1] != OPTION_LEN {
        return None;
    }
    let (syn_vip, client) = option::endpoints(&syn_option);
    if remote != client || syn_vip != vip {
        return None;
    }
    Some((option::emit(&local, &vip), Written::FirstTime))
}

/// `-EEXIST` from a map update with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// Reserves the connection's room in the table before its SYN leaves
/// (`EGRESS` keyed by CIP:cport -> VIP:vport, valued
/// `EndpointV4::UNLEARNED` until the SYN-ACK form names the backend), so
/// that a connection whose server translates its SYN always has the
/// entries it needs, and a full table refuses the connection here, before
/// anything depends on it. An entry already there (a reused port's, whose
/// socket is closing) is this connection's room now: TC egress turns it
/// back into a reservation when the SYN leaves. False when the table is
/// full.
#[inline(always)]
fn reserve(local: &EndpointV4, remote: &EndpointV4) -> bool {
    let key = FlowV4::between(local, remote);
    match EGRESS.insert(key, EndpointV4::UNLEARNED, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(e) => e == EEXIST,
    }
}

/// Stores a bypassed client socket's DIP:dport on the socket, where TC
/// egress finds it without a hash lookup. TC ingress made the egress entry
/// from the SYN-ACK before the stack saw it, so it exists by now.
#[inline(always)]
fn remember_backend(ctx: &SockOpsContext) {
    let (local, remote) = endpoints(ctx);
    // SAFETY: the value is copied out at once.
    if let Some(mut backend) = (unsafe { EGRESS.get(FlowV4::between(&local, &remote)) }).copied() {
        // Not learned: the connection runs through the LB.
        if !backend.is_unlearned() {
            store_on_socket(ctx, &HEELS_SOCK_BACKENDS, &mut backend);
        }
    }
}

/// Marks a listener as one whose SYN-ACKs will carry the SYN-ACK form.
#[inline(always)]
fn mark_served(ctx: &SockOpsContext) {
    store_on_socket(ctx, &HEELS_SERVED_LISTENERS, &mut 1u8);
}

/// Stores `value` in the context socket's slot of a socket-storage map.
#[inline(always)]
fn store_on_socket<T>(ctx: &SockOpsContext, map: &PinnedSkStorage<T>, value: &mut T) {
    // SAFETY: the socket pointer comes from the program's own context (a
    // full socket in these callbacks); the helper copies the value, which
    // lives on the stack for the call, into the socket's storage.
    unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if !sk.is_null() {
            bpf_sk_storage_get(
                map.as_ptr(),
                sk.cast(),
                (value as *mut T).cast(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            );
        }
    }
}

/// Removes a closing client socket's entries, and tells the afxdp agent
/// of every closing connection to a client VIP: its workers keep a table
/// of their own, which may know a connection these maps do not yet (the
/// agent copies learned connections into them a tick later).
#[inline(always)]
fn forget(ctx: &SockOpsContext) {
    let (local, remote) = endpoints(ctx);
    let egress = FlowV4::between(&local, &remote);
    if is_client_vip(&remote) {
        // A full ring (no agent reading) drops the record; the agent's
        // sweep finds the close anyway.
        let _ = CLOSES.output::<FlowV4>(egress, 0);
    }
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { EGRESS.get(egress) }).copied() else {
        return;
    };
    let _ = EGRESS.remove(egress);
    // A reservation (the connection never learned, or took the LB path)
    // has no ingress entry and was no bypassed connection.
    if !backend.is_unlearned() {
        let _ = INGRESS.remove(FlowV4::between(&backend, &local));
        count(TcCounter::EntriesRemoved);
    }
}
