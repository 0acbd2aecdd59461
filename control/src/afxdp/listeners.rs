//! The server role's [`Listeners`] for a worker: what the `tc` ingress
//! program asks the kernel's socket table in place (`bpf_skc_lookup_tcp`
//! and the listener's socket storage), asked from userspace through
//! sock_diag; the record of a translated SYN written into the pinned
//! `HEELS_TRANSLATED`, which sockops reads to write the SYN-ACK form.
//!
//! Asked once per SYN with the SYN form (a request and its answer: two
//! system calls), never for a data packet; a SYN that is not translated
//! costs the removal of any record of its 4-tuple (as on `tc`). Sockops
//! marks a listener served when it starts listening, so a served answer is
//! kept by the listener's cookie (unique for the boot); an unserved one is
//! asked again after a second, since the kernel lets a listener be found
//! a moment before sockops marks it. A listener not seen before costs one
//! dump of the host's listeners with their storage in the served-listeners
//! map.
//!
//! Any error answers "no listener": the SYN goes on untranslated and the
//! connection takes the LB's path.

use std::cell::RefCell;
use std::collections::HashMap as StdHashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use heels_afxdp::host::Listeners;
use heels_common::{EndpointV4, FlowV4};
use heels_dataplane::conntrack::FlowKey;
use heels_dataplane::option::Endpoint;
use heels_dataplane::translate::Reason;
use heels_xdp::ServerMaps;
use netlink_packet_core::Nla as _;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::StateFlags;
use netlink_packet_sock_diag::SockDiagMessage;

use crate::netlink;
use crate::sockets::{
    any_socket, tcp_request, FoundSocket, SocketQuery, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
};

/// How long a listener found unserved stays so before it is asked again.
const UNSERVED_RECHECK: Duration = Duration::from_secs(1);

/// `INET_DIAG_REQ_SK_BPF_STORAGES`: the request attribute naming the
/// socket-storage maps whose values the answers should carry.
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
/// `SK_DIAG_BPF_STORAGE_REQ_MAP_FD`: one map, by descriptor.
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// `INET_DIAG_SK_BPF_STORAGES`: the answer's attribute, present only for a
/// socket that has storage in one of the maps.
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const NLA_F_NESTED: u16 = 0x8000;
/// The attribute type bits (without the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Listener cookies remembered at most (then forgotten all at once: a
/// cookie asked again costs one dump).
const LISTENERS_REMEMBERED: usize = 4096;

/// One worker's view of the host's listeners (see the module's comment).
pub struct KernelListeners {
    query: SocketQuery,
    /// Listener cookie -> served (`None`), or unserved when last asked.
    served: RefCell<StdHashMap<u64, Option<Instant>>>,
    translated: RefCell<HashMap<MapData, FlowV4, EndpointV4>>,
    served_listeners: MapData,
    /// Exchanges that failed (the SYN took the LB's path), for the report.
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for KernelListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelListeners").field("listeners_known", &self.served.borrow().len()).finish()
    }
}

impl KernelListeners {
    /// Opens the sock_diag socket in the calling thread's network
    /// namespace (the host's), over `maps`.
    pub fn new(maps: ServerMaps, errors: Arc<AtomicU64>) -> anyhow::Result<Self> {
        Ok(KernelListeners {
            query: SocketQuery::new()?,
            served: RefCell::new(StdHashMap::with_capacity(LISTENERS_REMEMBERED)),
            translated: RefCell::new(maps.translated),
            served_listeners: maps.served_listeners,
            errors,
        })
    }

    /// The socket a packet of `flow` (as it arrives: CIP:cport ->
    /// DIP:dport) would meet: the connection's, or else the listener's.
    fn socket_of(&self, flow: &FlowKey) -> anyhow::Result<Option<FoundSocket>> {
        self.query.socket_on(flow.dst.into(), flow.src.into())
    }

    /// Whether sockops saw the listener `cookie` start.
    fn served(&self, cookie: u64) -> anyhow::Result<bool> {
        match self.served.borrow().get(&cookie) {
            Some(None) => return Ok(true),
            Some(Some(asked)) if asked.elapsed() < UNSERVED_RECHECK => return Ok(false),
            _ => {}
        }
        let mut known = self.served.borrow_mut();
        if known.len() >= LISTENERS_REMEMBERED {
            known.clear();
        }
        let attributes = storage_request(self.served_listeners.fd().as_fd().as_raw_fd() as u32);
        for family in [AF_INET, AF_INET6] {
            let request = tcp_request(family, StateFlags::LISTEN, any_socket(family));
            self.query.exchange(|socket, answer| {
                netlink::dump_on(socket, request, &attributes, answer, |message| {
                    if let SockDiagMessage::InetResponse(response) = message {
                        let served = response
                            .nlas
                            .iter()
                            .any(|nla| matches!(nla, Nla::Other(other) if other.kind() & NLA_TYPE_MASK == INET_DIAG_SK_BPF_STORAGES));
                        let answer = if served { None } else { Some(Instant::now()) };
                        known.insert(u64::from_ne_bytes(response.header.socket_id.cookie), answer);
                    }
                })
            })?;
        }
        // A listener that closed in between is not served.
        Ok(matches!(known.get(&cookie), Some(None)))
    }

    fn try_answers(&self, flow: &FlowKey, vip: Endpoint) -> anyhow::Result<Result<(), Reason>> {
        let Some(socket) = self.socket_of(flow)? else {
            return Ok(Err(Reason::NoListener));
        };
        if socket.state == TCP_LISTEN {
            return Ok(if self.served(socket.cookie)? { Ok(()) } else { Err(Reason::ListenerUnserved) });
        }
        // The previous translated connection to the same VIP on this
        // 4-tuple (its TIME_WAIT, or the request a retransmitted SYN
        // belongs to) takes the SYN; anything else holds the tuple.
        let ours = self.translated.borrow().get(&FlowV4::between(&flow.src, &flow.dst), 0).ok() == Some(vip);
        let reusable = socket.time_wait || matches!(socket.state, TCP_TIME_WAIT | TCP_SYN_RECV);
        Ok(if ours && reusable { Ok(()) } else { Err(Reason::TupleInUse) })
    }
}

/// The request attribute that asks for each socket's value in the
/// socket-storage map `map_fd` (netlink-packet-sock-diag has no field for
/// it): `INET_DIAG_REQ_SK_BPF_STORAGES { SK_DIAG_BPF_STORAGE_REQ_MAP_FD }`.
fn storage_request(map_fd: u32) -> [u8; 12] {
    let mut attribute = [0u8; 12];
    attribute[0..2].copy_from_slice(&12u16.to_ne_bytes());
    attribute[2..4].copy_from_slice(&(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED).to_ne_bytes());
    attribute[4..6].copy_from_slice(&8u16.to_ne_bytes());
    attribute[6..8].copy_from_slice(&SK_DIAG_BPF_STORAGE_REQ_MAP_FD.to_ne_bytes());
    attribute[8..12].copy_from_slice(&map_fd.to_ne_bytes());
    attribute
}

impl Listeners for KernelListeners {
    fn answers(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason> {
        self.try_answers(flow, vip).unwrap_or_else(|e| {
            if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("asking the kernel for a SYN's listener: {e:#} (the SYN takes the LB's path)");
            }
            Err(Reason::NoListener)
        })
    }

    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason> {
        let flow = FlowV4::between(&flow.src, &flow.dst);
        // Without the record sockops would not write the SYN-ACK form: the
        // SYN goes on untranslated (as the tc program does).
        self.translated.borrow_mut().insert(flow, vip, 0).map_err(|_| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            Reason::TableFull
        })
    }

    fn forget(&self, flow: &FlowKey) {
        // Absent is the usual case: nothing to count.
        let _ = self.translated.borrow_mut().remove(&FlowV4::between(&flow.src, &flow.dst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_request_is_one_nested_attribute_naming_the_map() {
        // struct nlattr { u16 nla_len; u16 nla_type } twice, then the u32
        // descriptor (x86-64 and aarch64 are little-endian).
        let expected = [12, 0, 2, 0x80, 8, 0, 1, 0, 7, 0, 0, 0];
        if cfg!(target_endian = "little") {
            assert_eq!(storage_request(7), expected);
        }
    }
}
