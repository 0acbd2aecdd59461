//! Every map of the heels programs. The ones that hold an instance's
//! configuration and connection state are pinned by name under the
//! instance's directory (the loader's `map_pin_path`), so a restarted agent
//! finds them as they were; the AF_XDP classifier's own maps are not.

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_NO_PREALLOC},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, XskMap},
};
use heels_common::{
    EndpointV4, FlowV4, SentSyn, TcConfig, TcCounter, VipCounter, VipStats, XdpCounter, BPF_F_MMAPABLE,
    CLOSES_RING_BYTES, MAX_CONFIG_ENTRIES, MAX_CONNECTIONS, MAX_SERVICES, MAX_STEERED_FLOWS, MAX_VIP_STATS,
    MAX_XSKS, SENT_SYN_SLOTS,
};

#[map(name = "HEELS_SERVICES")]
pub static SERVICES: HashMap<EndpointV4, [u8; 2]> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "HEELS_LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<[u8; 4], u8> = HashMap::pinned(MAX_CONFIG_ENTRIES, 0);

#[map(name = "HEELS_LOCAL_VIPS")]
pub static LOCAL_VIPS: HashMap<[u8; 4], u8> = HashMap::pinned(MAX_CONFIG_ENTRIES, 0);

#[map(name = "HEELS_LB_SOURCES")]
pub static LB_SOURCES: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(MAX_CONFIG_ENTRIES, 0);

#[map(name = "HEELS_CLIENT_VIPS")]
pub static CLIENT_VIPS: HashMap<EndpointV4, u8> = HashMap::pinned(MAX_CONFIG_ENTRIES, 0);

#[map(name = "HEELS_BACKENDS")]
pub static BACKENDS: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(MAX_CONFIG_ENTRIES, 0);

/// A client's connections by CIP:cport -> VIP:vport: DIP:dport, or
/// `EndpointV4::UNLEARNED` from the connect until the SYN-ACK form names
/// it (the connection's room, reserved by sockops). A plain hash, not an
/// LRU: a full table refuses the next connection (which then takes the LB
/// path) and never evicts a live one (an LRU does, even below its size:
/// its free lists are per CPU). The loader sizes it (`max_connections`).
#[map(name = "HEELS_EGRESS")]
pub static EGRESS: HashMap<FlowV4, EndpointV4> = HashMap::pinned(MAX_CONNECTIONS, 0);

/// The same connections by DIP:dport -> CIP:cport: VIP:vport. Written only
/// for a connection whose egress entry exists, and sized as `EGRESS`, so
/// it has room whenever `EGRESS` had.
#[map(name = "HEELS_INGRESS")]
pub static INGRESS: HashMap<FlowV4, EndpointV4> = HashMap::pinned(MAX_CONNECTIONS, 0);

/// A socket-storage map definition as aya-ebpf's `SkStorage` lays it out
/// in BTF, plus libbpf's `pinning` field set to `LIBBPF_PIN_BY_NAME`, which
/// aya's loader honours: the map is pinned under the instance's directory
/// like the others, so what it holds on each socket survives an agent
/// restart (aya-ebpf's own `SkStorage` has no way to ask for pinning).
#[repr(C)]
pub struct PinnedSkStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    pinning: *const [i32; 1],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing
// dereferences them, so sharing the static between programs is sound.
unsafe impl<T> Sync for PinnedSkStorage<T> {}

impl<T> PinnedSkStorage<T> {
    const fn new() -> Self {
        PinnedSkStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
            pinning: core::ptr::null(),
        }
    }

    /// The map pointer the socket-storage helpers take.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

/// A bypassed client socket's DIP:dport, stored on the socket itself: TC
/// egress finds it through `skb->sk` without a hash lookup, and it dies
/// with the socket. Filled by sockops when the connection is established.
#[btf_map]
pub static HEELS_SOCK_BACKENDS: PinnedSkStorage<EndpointV4> = PinnedSkStorage::new();

/// Set on a listener when sockops has seen it start listening (and asked
/// for the option callbacks): only such a listener writes the SYN-ACK
/// form, so server ingress translates only SYNs that one of them will
/// answer. A listener opened before heels has none and keeps the LB path.
#[btf_map]
pub static HEELS_SERVED_LISTENERS: PinnedSkStorage<u8> = PinnedSkStorage::new();

/// SYNs server ingress translated, by their translated flow
/// (CIP:cport -> DIP:dport): the VIP:vport each was for. sockops writes
/// the SYN-ACK form only for a SYN found here (the explicit record that it
/// was translated), and a SYN landing on a tuple still held by a socket is
/// translated only if that tuple's last connection was translated for the
/// same VIP. Any untranslated SYN removes its tuple's record.
#[map(name = "HEELS_TRANSLATED")]
pub static TRANSLATED: LruHashMap<FlowV4, EndpointV4> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// Per 4-tuple this host sent a SYN on to a client VIP (CIP:cport ->
/// VIP:vport): that SYN's end (sequence number + 1, network order), as an
/// LB that tracks TCP state holds it while it sees only SYNs.
#[map(name = "HEELS_LB_SYN_ENDS")]
pub static LB_SYN_ENDS: LruHashMap<FlowV4, [u8; 4]> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// SYNs the TC egress program sent to client VIPs (heels_common::MAP_SENT_SYNS),
/// for an afxdp agent's workers, which read it mapped into their memory.
#[map(name = "HEELS_SENT_SYNS")]
pub static SENT_SYNS: Array<SentSyn> = Array::pinned(SENT_SYN_SLOTS, BPF_F_MMAPABLE);

/// Closed bypassed client connections, by egress flow, for the afxdp
/// agent (heels_common::MAP_CLOSES). Full (no agent reading it): the record
/// is dropped, and the agent's sweep finds the connection gone anyway.
#[map(name = "HEELS_CLOSES")]
pub static CLOSES: RingBuf = RingBuf::pinned(CLOSES_RING_BYTES, 0);

#[map(name = "HEELS_TC_CONFIG")]
pub static TC_CONFIG: Array<TcConfig> = Array::pinned(1, 0);

#[map(name = "HEELS_TC_STATS")]
pub static TC_STATS: PerCpuArray<u64> = PerCpuArray::pinned(TcCounter::COUNT, 0);

/// Counters per VIP:vport. Entries are made by the programs on first use,
/// only for a VIP:vport that passed the configuration's check (a service
/// of this server, a learned or configured client VIP), so a forged form
/// cannot fill the map.
#[map(name = "HEELS_VIP_STATS")]
pub static VIP_STATS: PerCpuHashMap<EndpointV4, VipStats> = PerCpuHashMap::pinned(MAX_VIP_STATS, 0);

#[map(name = "HEELS_XSKS")]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_XSKS, 0);

/// Sockets of the workers on `heels0` (and on the dataplane bench's input
/// port), by receive queue: apart from the uplink's, whose queue numbers
/// they share.
#[map(name = "HEELS_HOST_XSKS")]
pub static HOST_XSKS: XskMap = XskMap::with_max_entries(MAX_XSKS, 0);

#[map(name = "HEELS_STEERING")]
pub static STEERING: HashMap<FlowV4, u8> = HashMap::with_max_entries(MAX_STEERED_FLOWS, 0);

#[map(name = "HEELS_XDP_STATS")]
pub static XDP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpCounter::COUNT, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    add(map, index, 1);
}

/// Adds `amount` to a per-CPU counter.
#[inline(always)]
fn add(map: &PerCpuArray<u64>, index: u32, amount: u64) {
    if let Some(value) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot of this CPU; the program runs with
        // preemption (migration) off, so nothing else writes it meanwhile.
        unsafe { *value += amount };
    }
}

/// Adds one to a TC/sockops counter.
#[inline(always)]
pub fn count(counter: TcCounter) {
    bump(&TC_STATS, counter as u32);
}

/// Adds `amount` to a counter of `vip`, making its entry on first use
/// (when the map is full, only the host-wide counters count).
#[inline(always)]
pub fn count_vip(vip: &EndpointV4, counter: VipCounter, amount: u64) {
    let mut stats = VIP_STATS.get_ptr_mut(vip);
    if stats.is_none() {
        // BPF_NOEXIST: a racing CPU's entry is kept, not zeroed.
        let _ = VIP_STATS.insert(vip, VipStats::default(), 1);
        stats = VIP_STATS.get_ptr_mut(vip);
    }
    if let Some(stats) = stats {
        // SAFETY: this CPU's slot of the entry; the program runs with
        // migration off, so nothing else writes it meanwhile.
        unsafe { (*stats).counters[counter as usize] += amount };
    }
}

/// Adds `amount` to a TC/sockops counter.
#[inline(always)]
pub fn count_by(counter: TcCounter, amount: u64) {
    add(&TC_STATS, counter as u32, amount);
}

/// True when `addr` lies in one of the prefixes of an LPM trie.
#[inline(always)]
pub fn in_prefixes(trie: &LpmTrie<[u8; 4], u8>, addr: [u8; 4]) -> bool {
    trie.get(aya_ebpf::maps::lpm_trie::Key::new(32, addr)).is_some()
}

/// True when VIP:vport (or the VIP with port 0: every port) is configured.
#[inline(always)]
pub fn is_client_vip(vip: &EndpointV4) -> bool {
    CLIENT_VIPS.get_ptr(vip).is_some() || CLIENT_VIPS.get_ptr(EndpointV4 { port: [0, 0], ..*vip }).is_some()
}
