//! The server's translation: a SYN with the SYN form becomes the client's
//! own SYN to this host.

use super::*;

/// Server ingress (docs/protocol.md): a SYN carrying the SYN form, for one
/// of this host's services, from the client it names or an LB source, that
/// a socket of this host will answer with the SYN-ACK form, is rewritten to
/// CIP:cport -> DIP:dport (decapsulated first if it came in IPIP to a local
/// address) and recorded in `sockets`. The option stays for the sockops
/// program. Any SYN not translated forgets its tuple's record.
///
/// The caller marks a rewritten SYN (skb mark) so that replies of the
/// connection can be routed around a DNAT LB.
pub fn server_syn_ingress(frame: &mut [u8], mode: Mode, config: &Rules, sockets: &dyn Sockets) -> Verdict {
    let at = match locate(frame, true) {
        Ok(at) => at,
        Err(reason) => return Verdict::Pass(reason),
    };
    if !at.flags.is_syn() {
        return Verdict::Pass(Reason::NotHandshake);
    }
    if let Err(reason) = server_syn(frame, &at, mode, config, sockets) {
        return Verdict::Pass(reason);
    }
    Verdict::Rewritten { start: at.strip_tunnel(frame) as u16 }
}

/// The server's work on a located SYN: checks, record, rewrite (not the
/// IPIP strip). An error leaves the frame as it came.
pub(super) fn server_syn(
    frame: &mut [u8],
    at: &Located,
    mode: Mode,
    config: &Rules,
    sockets: &dyn Sockets,
) -> Result<(), Reason> {
    let result = try_server_syn(frame, at, mode, config, sockets);
    if result.is_err() {
        sockets.forget(&FlowKey { src: at.src, dst: at.dst });
    }
    result
}

fn try_server_syn(
    frame: &mut [u8],
    at: &Located,
    mode: Mode,
    config: &Rules,
    sockets: &dyn Sockets,
) -> Result<(), Reason> {
    let found =
        option::find(at.tcp(frame).options()).map_err(|_| Reason::BadOption)?.ok_or(Reason::NoOption)?;
    let syn = found.syn();
    let from_client = at.src == syn.client;
    // DIP: where the packet was sent (the outer destination for IPIP); for
    // a SYN addressed to a VIP this host holds itself (decapsulated before
    // heels), this host's own address.
    let dip = match (at.tunnel, config.dsr_addr) {
        (Some(tunnel), _) => tunnel.dst,
        (None, Some(dsr)) if at.dst == syn.vip && from_client && config.holds_vip(syn.vip.addr) => dsr,
        (None, _) => at.dst.addr,
    };
    if !config.is_local(dip) {
        return Err(Reason::NotLocal);
    }
    let local_port = config.local_port(syn.vip).ok_or(Reason::UnknownService)?;
    let from_lb = config.is_lb_source(at.src.addr) || at.tunnel.is_some_and(|t| config.is_lb_source(t.src));
    if !from_client && !from_lb {
        return Err(Reason::SourceNotAllowed);
    }
    at.handshake_verifies(frame, mode)?;
    let backend = Endpoint::new(dip, local_port);
    let translated = FlowKey { src: syn.client, dst: backend };
    let tcp = at.tcp(frame);
    let clock = SynClock { seq: tcp.seq_number(), tsval: option::timestamp_value(tcp.options()) };
    sockets.answers(&translated, syn.vip, clock)?;
    sockets.record(&translated, syn.vip)?;
    at.rewrite(frame, Side::Src, syn.client, mode);
    at.rewrite(frame, Side::Dst, backend, mode);
    Ok(())
}
