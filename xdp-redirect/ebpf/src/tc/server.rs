//! The server's side: a SYN with the SYN form translated to the client's
//! own SYN, and the kernel's sockets asked whether it may be answered.

use super::*;

/// Server ingress: a SYN with the SYN form becomes CIP:cport -> DIP:dport,
/// if it passes the checks and a socket of this host will answer it with
/// the SYN-ACK form; anything else stays as it came (the LB path).
#[inline(always)]
pub(super) fn server_syn(ctx: &TcContext, segment: &Segment, tunnel: &Tunnel) -> Result<(), ()> {
    let option = heels_option(ctx, segment)?;
    if option.state != FOUND {
        forget_translation(segment);
        return Ok(());
    }
    let (vip, client) = heels_common::option::endpoints(&option.bytes);
    // SAFETY: the value is copied out at once.
    let local_port = unsafe { SERVICES.get(vip) }.copied();
    let from_client = segment.src == client;
    let dsr_addr = TC_CONFIG.get(0).map_or([0; 4], |config| config.dsr_addr);
    // DIP: where the packet was sent (the outer destination for IPIP); for
    // a SYN addressed to a VIP this host holds itself (decapsulated before
    // heels, as behind Katran), this host's own address.
    let to_local_vip = !tunnel.decapsulated
        && segment.dst == vip
        && from_client
        && dsr_addr != [0; 4]
        && LOCAL_VIPS.get_ptr(vip.addr).is_some();
    let dip = if tunnel.decapsulated {
        tunnel.dst
    } else if to_local_vip {
        dsr_addr
    } else {
        segment.dst.addr
    };
    let from_lb = in_prefixes(&LB_SOURCES, segment.src.addr)
        || (tunnel.decapsulated && in_prefixes(&LB_SOURCES, tunnel.src));
    let (Some(local_port), true, true) =
        (local_port, LOCAL_ADDRS.get_ptr(dip).is_some(), from_client || from_lb)
    else {
        count(TcCounter::SynRefused);
        forget_translation(segment);
        return Ok(());
    };
    if !handshake_verifies(ctx, segment, tunnel)? {
        forget_translation(segment);
        return Ok(());
    }
    let backend = EndpointV4 { addr: dip, port: local_port, pad: [0; 2] };
    let translated = FlowV4::between(&client, &backend);
    let seq: [u8; 4] = read(ctx, segment.tcp + 4)?;
    let clock = SynClock { seq: u32::from_be_bytes(seq), tsval: option.tsval };
    let onto_time_wait = match answering_socket(ctx, &translated, &vip, &clock) {
        Ok(onto_time_wait) => onto_time_wait,
        Err(refusal) => {
            count(refusal);
            if let Some(counter) = VipCounter::of_refusal(refusal) {
                count_vip(&vip, counter, 1);
            }
            forget_translation(segment);
            return Ok(());
        }
    };
    TRANSLATED.insert(translated, vip, 0).map_err(|_| ())?;
    rewrite(ctx, segment, Side::Src, &client)?;
    rewrite(ctx, segment, Side::Dst, &backend)?;
    if let Some(config) = TC_CONFIG.get(0) {
        if config.syn_mark != 0 {
            ctx.set_mark(config.syn_mark);
        }
    }
    count(TcCounter::SynTranslated);
    count_vip(&vip, VipCounter::SynTranslated, 1);
    if to_local_vip {
        count(TcCounter::SynTranslatedFromVip);
    }
    if onto_time_wait {
        count(TcCounter::SynOntoTimeWait);
    }
    Ok(())
}

/// A SYN that is not translated starts a connection that is not heels's on
/// its 4-tuple: the tuple's record of an earlier translation goes.
#[inline(always)]
pub(super) fn forget_translation(segment: &Segment) {
    let _ = TRANSLATED.remove(segment.flow());
}

/// The afxdp workers' question (`heels_common::syn_answer`), run with
/// BPF_PROG_TEST_RUN in the host's namespace: the answer of
/// [`answering_socket`] for the translated SYN the frame holds.
#[classifier]
pub fn heels_syn_answer(ctx: TcContext) -> i32 {
    let answer = match try_syn_answer(&ctx) {
        Ok(Ok(false)) => syn_answer::ANSWERS,
        Ok(Ok(true)) => syn_answer::ANSWERS_ONTO_TIME_WAIT,
        Ok(Err(refusal)) => syn_answer::REFUSED + refusal as u32,
        Err(()) => syn_answer::REFUSED + TcCounter::Errors as u32,
    };
    answer as i32
}

#[inline(always)]
pub(super) fn try_syn_answer(ctx: &TcContext) -> Result<Result<bool, TcCounter>, ()> {
    let segment = parse(ctx)?.ok_or(())?;
    let option = heels_option(ctx, &segment)?;
    let vip: [u8; 6] = read(ctx, syn_answer::VIP_AT)?;
    let vip = EndpointV4 { addr: [vip[0], vip[1], vip[2], vip[3]], port: [vip[4], vip[5]], pad: [0; 2] };
    let seq: [u8; 4] = read(ctx, segment.tcp + 4)?;
    let clock = SynClock { seq: u32::from_be_bytes(seq), tsval: option.tsval };
    Ok(answering_socket(ctx, &segment.flow(), &vip, &clock))
}

/// Whether a socket of this host will answer a SYN translated to `flow`
/// with the SYN-ACK form: a listener that sockops saw start (so it writes
/// the form), and no other socket on the 4-tuple, except one of the
/// translated connection to the same VIP (the request a retransmitted SYN
/// belongs to, the connection it established, its TIME_WAIT, which takes
/// a newer SYN of the same client), or a TIME_WAIT the kernel hands this SYN's `clock` to
/// the listener from (`Ok(true)`: onto a TIME_WAIT of another
/// connection). Otherwise the counter of the refusal. Shared with
/// `heels_syn_answer`, which asks it for the afxdp workers.
#[inline(always)]
pub(super) fn answering_socket(
    ctx: &TcContext,
    flow: &FlowV4,
    vip: &EndpointV4,
    clock: &SynClock,
) -> Result<bool, TcCounter> {
    let Some(sk) = lookup_tcp(ctx, flow) else {
        return Err(TcCounter::SynNoListener);
    };
    // SAFETY: a socket the lookup returned and not yet released.
    let state = unsafe { (*sk).state };
    let answer = if state == BPF_TCP_LISTEN {
        served_listener(sk).map(|()| false)
    } else {
        // The tuple's socket is the translated connection's own, in any
        // state: the request a retransmitted SYN belongs to, the
        // connection it established meanwhile (its SYN-ACK form sent
        // again reached the client before the client's SYN sent again
        // crossed the LB), its TIME_WAIT. The socket answers the SYN as a
        // stock stack would; untranslated it would open a second
        // connection from the LB's address.
        // SAFETY: the value is copied out at once.
        if unsafe { TRANSLATED.get(flow) }.copied() == Some(*vip) {
            Ok(false)
        } else if state == BPF_TCP_TIME_WAIT && time_wait_takes(sk, clock) {
            listener_answers(ctx, flow).map(|()| true)
        } else {
            Err(TcCounter::SynTupleInUse)
        }
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    answer
}

/// Whether the listener `sk` is one sockops saw start.
#[inline(always)]
pub(super) fn served_listener(sk: *mut aya_ebpf::bindings::bpf_sock) -> Result<(), TcCounter> {
    // SAFETY: a socket the caller holds a reference to; storage is only
    // read (no create flag).
    let served = unsafe {
        let full = bpf_sk_fullsock(sk);
        !full.is_null()
            && !bpf_sk_storage_get(HEELS_SERVED_LISTENERS.as_ptr(), full.cast(), core::ptr::null_mut(), 0)
                .is_null()
    };
    if served {
        Ok(())
    } else {
        Err(TcCounter::SynListenerUnserved)
    }
}

/// The listener the kernel hands a SYN for `flow` to once the TIME_WAIT
/// on the tuple takes it: the one a lookup finds with no connection to
/// match (source 0.0.0.0:0), and it must be served.
#[inline(always)]
pub(super) fn listener_answers(ctx: &TcContext, flow: &FlowV4) -> Result<(), TcCounter> {
    let any_source = FlowV4 { src_addr: [0; 4], src_port: [0; 2], ..*flow };
    let Some(sk) = lookup_tcp(ctx, &any_source) else {
        return Err(TcCounter::SynNoListener);
    };
    // SAFETY: a socket the lookup returned and not yet released.
    let answer = if unsafe { (*sk).state } == BPF_TCP_LISTEN {
        served_listener(sk)
    } else {
        Err(TcCounter::SynTupleInUse)
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    answer
}

/// Whether the TIME_WAIT socket `sk` takes a SYN of `clock`
/// (`heels_common::time_wait`), read at the offsets the loader found in
/// the kernel's BTF; no when they are unknown or a read fails.
#[inline(always)]
pub(super) fn time_wait_takes(sk: *mut aya_ebpf::bindings::bpf_sock, clock: &SynClock) -> bool {
    let Some(layout) = TC_CONFIG.get(0).map(|config| config.time_wait) else {
        return false;
    };
    if !layout.is_known() {
        return false;
    }
    // SAFETY: a socket the caller holds a reference to; the helper checks
    // that it is a TIME_WAIT and answers null otherwise.
    let tw = unsafe { bpf_skc_to_tcp_timewait_sock(sk.cast()) };
    if tw.is_null() {
        return false;
    }
    let base = tw as *const u8;
    // The mask bounds each offset for the verifier (the loader checks it).
    let field = |offset: u16| base.wrapping_add(usize::from(offset & TimeWaitLayout::MAX_OFFSET));
    // SAFETY: bpf_probe_read_kernel copies kernel memory with fault
    // handling; the addresses are fields of the TIME_WAIT the caller's
    // reference keeps alive.
    let read = unsafe {
        (
            bpf_probe_read_kernel(field(layout.substate)),
            bpf_probe_read_kernel(field(layout.rcv_nxt).cast::<u32>()),
            bpf_probe_read_kernel(field(layout.ts_recent).cast::<u32>()),
            bpf_probe_read_kernel(field(layout.ts_recent_stamp).cast::<i32>()),
        )
    };
    match read {
        (Ok(substate), Ok(rcv_nxt), Ok(ts_recent), Ok(ts_recent_stamp)) => {
            TimeWait { substate, rcv_nxt, ts_recent, ts_recent_stamp }.takes(clock)
        }
        _ => false,
    }
}
