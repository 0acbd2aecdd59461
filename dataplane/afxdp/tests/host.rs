//! The agent's host paths through a worker in memory: a SYN-ACK form is
//! learned only for a 4-tuple the host sent a SYN on, steered before the
//! host gets it, and dropped when it cannot be steered; frames leave for
//! the host with heels0's address and for the uplink with the next hop's,
//! and a frame without a next hop is held back and its next hop noted; a
//! SYN with the SYN form is translated for a listener that answers, and
//! passed unchanged (its record forgotten) for one that does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use heels_afxdp::device::MemoryPort;
use heels_afxdp::fuzzing::{ProtocolListeners, GATEWAY, GATEWAY_MAC, HOST_MAC, PEER_MAC, UPLINK_MAC};
use heels_afxdp::host::{
    Forget, HostCounters, HostStage, Listeners, NoListeners, SentSyns, StandbySyns, Steer, ToHost,
    ToHostParts, ToUplink,
};
use heels_afxdp::nexthop::{NextHops, Route, Unresolved};
use heels_afxdp::stage::Clock;
use heels_afxdp::umem::Region;
use heels_afxdp::worker::{Path, Worker};
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::fuzzing::{self, BACKEND, CLIENT, VIP};
use heels_dataplane::option::Endpoint;
use heels_dataplane::translate::{self, Learned, Sockets};
use heels_dataplane::vectors::vector;

const NOW: u32 = 1;

/// Records what it is told, and says yes while `room` lasts.
#[derive(Debug, Clone, Default)]
struct Recorder {
    learned: Arc<std::sync::Mutex<Vec<Learned>>>,
    forgotten: Arc<std::sync::Mutex<Vec<FlowKey>>>,
    room: Arc<AtomicUsize>,
    taking_over: Arc<std::sync::atomic::AtomicBool>,
}

impl Steer for Recorder {
    fn learned(&mut self, connection: &Learned) -> bool {
        self.learned.lock().unwrap().push(*connection);
        self.room.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1)).is_ok()
    }

    fn forget(&mut self, ingress: &FlowKey) {
        self.forgotten.lock().unwrap().push(*ingress);
    }

    fn taking_over(&self) -> bool {
        self.taking_over.load(Ordering::Relaxed)
    }
}

/// Runs `frames` once through a worker with `stage`: what it sent, and the
/// stage's counters.
fn run(frames: Vec<Vec<u8>>, stage: HostStage<Recorder>) -> (Vec<Vec<u8>>, HostCounters) {
    let count = frames.len();
    let region = Region::in_memory(64).unwrap();
    let mut worker =
        Worker::new(region, vec![MemoryPort::once_capturing(frames)], vec![Path { from: 0, to: 0, stage }]);
    let mut received = 0;
    while received < count {
        let got = worker.turn();
        assert!(got > 0, "the device ran dry");
        received += got;
    }
    (worker.devices()[0].sent().to_vec(), worker.paths()[0].stage.counters())
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

fn to_host(table: &Arc<ConnTable>, syns: &Arc<SynEnds>, steer: Recorder) -> HostStage<Recorder> {
    to_host_with(table, syns, steer, &Arc::new(ArrayQueue::new(4)), Box::new(NoListeners))
}

fn to_host_forgetting(
    table: &Arc<ConnTable>,
    syns: &Arc<SynEnds>,
    steer: Recorder,
    forgets: &Arc<ArrayQueue<Forget>>,
) -> HostStage<Recorder> {
    to_host_with(table, syns, steer, forgets, Box::new(NoListeners))
}

fn to_host_with(
    table: &Arc<ConnTable>,
    syns: &Arc<SynEnds>,
    steer: Recorder,
    forgets: &Arc<ArrayQueue<Forget>>,
    listeners: Box<dyn Listeners>,
) -> HostStage<Recorder> {
    to_host_beside(table, SentSyns::new(Arc::clone(syns), None), steer, forgets, listeners)
}

fn to_host_beside(
    table: &Arc<ConnTable>,
    sent: SentSyns,
    steer: Recorder,
    forgets: &Arc<ArrayQueue<Forget>>,
    listeners: Box<dyn Listeners>,
) -> HostStage<Recorder> {
    HostStage::ToHost(ToHost::new(ToHostParts {
        rules: Arc::new(fuzzing::config()),
        table: Arc::clone(table),
        sent,
        listeners,
        forgets: Arc::clone(forgets),
        clock: Clock::Fixed(NOW),
        host_mac: HOST_MAC,
        peer_mac: PEER_MAC,
        steer,
    }))
}

#[test]
fn a_syn_ack_form_is_learned_and_steered_for_a_syn_the_host_sent() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    syns.record(FlowKey { src: CLIENT, dst: VIP }, 1, NOW);
    let steer = Recorder { room: Arc::new(AtomicUsize::new(1)), ..Recorder::default() };
    let (sent, counters) = run(vec![vector("syn-ack-before")], to_host(&table, &syns, steer.clone()));
    assert_eq!(sent, vec![with_macs(vector("syn-ack-after"), HOST_MAC, PEER_MAC)]);
    let syn_end = translate::learned(&vector("syn-ack-before")).unwrap().syn_end;
    assert_eq!(
        *steer.learned.lock().unwrap(),
        vec![Learned { client: CLIENT, vip: VIP, backend: BACKEND, syn_end }]
    );
    assert_eq!((counters.learned, counters.unsteered, counters.rewritten_to_host), (1, 0, 1));
    assert_eq!(table.lookup(&FlowKey { src: CLIENT, dst: VIP }, NOW), Some(BACKEND));
    assert_eq!(table.lookup(&FlowKey { src: BACKEND, dst: CLIENT }, NOW), Some(VIP));
}

#[test]
fn a_syn_ack_form_for_a_tuple_the_host_sent_no_syn_on_makes_nothing() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    let steer = Recorder { room: Arc::new(AtomicUsize::new(1)), ..Recorder::default() };
    let (sent, counters) = run(vec![vector("syn-ack-before")], to_host(&table, &syns, steer.clone()));
    // It goes to the host as it came (the stack answers it with a reset).
    assert_eq!(sent, vec![with_macs(vector("syn-ack-before"), HOST_MAC, PEER_MAC)]);
    assert!(steer.learned.lock().unwrap().is_empty());
    assert_eq!(counters, HostCounters::default());
    assert!(table.is_empty());
}

/// The `tc` standby's record of its SYNs, as a set.
struct Standby(Vec<FlowKey>);

impl StandbySyns for Standby {
    fn sent(&self, flow: &FlowKey) -> bool {
        self.0.contains(flow)
    }
}

/// A restarted agent: until the standby's connections are in the workers'
/// table, a SYN-ACK form the workers cannot place (no SYN of theirs, no
/// connection they know) is held back, not delivered unrewritten (the
/// host would reset a connection the standby knows); afterwards it goes
/// on as it came, as for any host that sent no SYN on its tuple.
#[test]
fn a_syn_ack_form_the_workers_cannot_place_is_held_back_while_the_agent_takes_over() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    for (taking_over, delivered) in [(true, false), (false, true)] {
        let steer = Recorder { room: Arc::new(AtomicUsize::new(1)), ..Recorder::default() };
        steer.taking_over.store(taking_over, Ordering::Relaxed);
        let (sent, counters) = run(vec![vector("syn-ack-before")], to_host(&table, &syns, steer.clone()));
        let expected =
            if delivered { vec![with_macs(vector("syn-ack-before"), HOST_MAC, PEER_MAC)] } else { vec![] };
        assert_eq!(sent, expected, "taking over: {taking_over}");
        assert_eq!(counters.syn_acks_held_back, u64::from(!delivered), "taking over: {taking_over}");
        assert!(steer.learned.lock().unwrap().is_empty(), "nothing learned");
    }
}

#[test]
fn a_syn_ack_form_for_a_syn_the_standby_sent_is_learned_and_forgotten_at_its_close() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    let egress = FlowKey { src: CLIENT, dst: VIP };
    let standby: Arc<dyn StandbySyns> = Arc::new(Standby(vec![egress]));
    let sent = SentSyns::new(Arc::clone(&syns), Some(standby));
    let steer = Recorder { room: Arc::new(AtomicUsize::new(1)), ..Recorder::default() };
    let forgets = Arc::new(ArrayQueue::new(4));
    let stage = to_host_beside(&table, sent, steer.clone(), &forgets, Box::new(NoListeners));
    let mut worker = Worker::new(
        Region::in_memory(64).unwrap(),
        vec![MemoryPort::once_capturing(vec![vector("syn-ack-before")])],
        vec![Path { from: 0, to: 0, stage }],
    );
    worker.turn();
    assert_eq!(
        worker.devices()[0].sent(),
        &[with_macs(vector("syn-ack-after"), HOST_MAC, PEER_MAC)][..],
        "delivered as from the VIP"
    );
    let counters = worker.paths()[0].stage.counters();
    assert_eq!((counters.learned, counters.learned_from_standby), (1, 1));
    let syn_end = translate::learned(&vector("syn-ack-before")).unwrap().syn_end;
    assert_eq!(syns.end(&egress), Some(syn_end), "recorded as a SYN of the workers");
    // Its close forgets it, as for a connection whose SYN a worker sent.
    forgets.push(Forget { client: CLIENT, vip: VIP, backend: BACKEND, syn_end: Some(syn_end) }).unwrap();
    worker.turn();
    assert_eq!(table.lookup(&egress, NOW), None);
    assert_eq!(worker.paths()[0].stage.counters().forgotten, 1);
}

#[test]
fn a_connection_that_cannot_be_steered_is_forgotten_and_its_syn_ack_dropped() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    syns.record(FlowKey { src: CLIENT, dst: VIP }, 1, NOW);
    // No room in the steering map.
    let steer = Recorder::default();
    let (sent, counters) = run(vec![vector("syn-ack-before")], to_host(&table, &syns, steer.clone()));
    assert_eq!(sent, Vec::<Vec<u8>>::new());
    assert_eq!((counters.learned, counters.unsteered), (0, 1));
    assert_eq!(table.lookup(&FlowKey { src: CLIENT, dst: VIP }, NOW), None);
    assert_eq!(table.lookup(&FlowKey { src: BACKEND, dst: CLIENT }, NOW), None);
}

fn to_uplink(hops: NextHops, unresolved: &Arc<Unresolved>) -> HostStage<Recorder> {
    HostStage::ToUplink(ToUplink::new(
        Arc::new(fuzzing::config()),
        Arc::new(fuzzing::table_with_connection()),
        Arc::new(SynEnds::new(16)),
        Clock::Fixed(NOW),
        UPLINK_MAC,
        Arc::new(ArcSwap::from_pointee(hops)),
        Arc::clone(unresolved),
    ))
}

fn default_route() -> Vec<Route> {
    vec![Route { prefix: "0.0.0.0/0".parse().unwrap(), gateway: Some(GATEWAY) }]
}

#[test]
fn the_hosts_frames_leave_rewritten_to_the_next_hop() {
    let unresolved = Arc::new(Unresolved::default());
    let hops = NextHops::new(default_route(), vec![(GATEWAY, GATEWAY_MAC)]);
    let mut arp = vector("egress-data-before");
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let frames = vec![vector("egress-data-before"), arp];
    let (sent, counters) = run(frames, to_uplink(hops, &unresolved));
    assert_eq!(sent, vec![with_macs(vector("egress-data-after"), GATEWAY_MAC, UPLINK_MAC)]);
    assert_eq!((counters.rewritten_to_uplink, counters.not_ipv4), (1, 1));
    assert!(unresolved.take().is_empty());
}

#[test]
fn a_frame_without_a_next_hop_is_held_back_and_its_next_hop_noted() {
    let unresolved = Arc::new(Unresolved::default());
    let (sent, counters) = run(
        vec![vector("egress-data-before")],
        to_uplink(NextHops::new(default_route(), vec![]), &unresolved),
    );
    assert!(sent.is_empty());
    assert_eq!((counters.unresolved, counters.rewritten_to_uplink), (1, 0));
    assert_eq!(unresolved.take(), vec![GATEWAY]);
    let (sent, counters) =
        run(vec![vector("egress-data-before")], to_uplink(NextHops::default(), &unresolved));
    assert!(sent.is_empty());
    assert_eq!(counters.no_route, 1);
}

#[test]
fn a_closed_connection_is_forgotten_only_if_its_tuple_carried_no_newer_syn() {
    let table = Arc::new(fuzzing::table_with_connection());
    let syns = Arc::new(SynEnds::new(16));
    let egress = FlowKey { src: CLIENT, dst: VIP };
    let ingress = FlowKey { src: BACKEND, dst: CLIENT };
    // The tuple's last SYN ended at 2000: a connection learned from the
    // SYN that ended at 1000 is an older one.
    syns.record(egress, 2000, NOW);
    let forgets = Arc::new(ArrayQueue::new(4));
    let closed = |syn_end| Forget { client: CLIENT, vip: VIP, backend: BACKEND, syn_end };
    forgets.push(closed(Some(1000))).unwrap();
    let steer = Recorder::default();
    let stage = to_host_forgetting(&table, &syns, steer.clone(), &forgets);
    let mut worker = Worker::new(
        Region::in_memory(64).unwrap(),
        vec![MemoryPort::new(Vec::new())],
        vec![Path { from: 0, to: 0, stage }],
    );
    worker.turn();
    assert_eq!(table.lookup(&egress, NOW), Some(BACKEND), "the newer connection keeps its entries");
    assert!(steer.forgotten.lock().unwrap().is_empty());
    let counters = worker.paths()[0].stage.counters();
    assert_eq!((counters.forgotten, counters.forget_skipped), (0, 1));
    // The connection of the last SYN goes.
    forgets.push(closed(Some(2000))).unwrap();
    worker.turn();
    assert_eq!(table.lookup(&egress, NOW), None);
    assert_eq!(table.lookup(&ingress, NOW), None);
    assert_eq!(*steer.forgotten.lock().unwrap(), vec![ingress]);
    assert_eq!(worker.paths()[0].stage.counters().forgotten, 1);
}

#[test]
fn a_syn_form_is_translated_for_a_listener_that_answers_and_passed_for_one_that_does_not() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    // (before, after, where the packet the stack sees starts: past the
    // IPIP header for IPIP)
    for (before, after, start) in [
        ("fullnat-syn-before", "fullnat-syn-after", 0),
        ("dnat-syn-before", "dnat-syn-after", 0),
        ("ipip-syn-before", "ipip-syn-after", 20),
    ] {
        let served = Arc::new(fuzzing::sockets());
        let listeners = Box::new(ProtocolListeners(Arc::clone(&served)));
        let stage =
            to_host_with(&table, &syns, Recorder::default(), &Arc::new(ArrayQueue::new(4)), listeners);
        let (sent, counters) = run(vec![vector(before)], stage);
        let translated = vector(after);
        assert_eq!(sent, vec![with_macs(translated.clone(), HOST_MAC, PEER_MAC)], "{before}");
        assert_eq!((counters.syns_translated, counters.syns_refused, counters.rewritten_to_host), (1, 0, 0));
        let flow = flow_of(&translated);
        assert_eq!(served.recorded(&flow), Some(VIP), "{before}: sockops's record");

        // No served listener: the SYN goes on as it came (the LB's path),
        // and no record of its 4-tuple (as it came) is left for sockops.
        let unserved = Arc::new(fuzzing::HostSockets::default());
        let flow = flow_of(&vector(before)[start..]);
        unserved.record(&flow, VIP).unwrap();
        let listeners = Box::new(ProtocolListeners(Arc::clone(&unserved)));
        let stage =
            to_host_with(&table, &syns, Recorder::default(), &Arc::new(ArrayQueue::new(4)), listeners);
        let (sent, counters) = run(vec![vector(before)], stage);
        // (IPIP is decapsulated all the same: the packet is for this host.)
        let untranslated = [&vector(before)[..14], &vector(before)[14 + start..]].concat();
        assert_eq!(sent, vec![with_macs(untranslated, HOST_MAC, PEER_MAC)], "{before} unserved");
        assert_eq!((counters.syns_translated, counters.syns_refused), (0, 1));
        assert_eq!(unserved.recorded(&flow), None, "{before}: the record is gone");
    }
}

/// The 4-tuple of an Ethernet/IPv4/TCP frame (or of the packet inside an
/// IPIP frame, from 20 bytes in: its IPv4 header is where the outer one's
/// would be, as the core's strip makes it).
fn flow_of(frame: &[u8]) -> FlowKey {
    let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
    let endpoint = |addr: usize, port: usize| {
        Endpoint::new(
            [frame[addr], frame[addr + 1], frame[addr + 2], frame[addr + 3]],
            u16::from_be_bytes([frame[port], frame[port + 1]]),
        )
    };
    FlowKey { src: endpoint(26, tcp), dst: endpoint(30, tcp + 2) }
}

/// `frame` as a sender with checksum offload leaves it: the TCP checksum
/// field holds the pseudo-header sum only.
fn with_pending_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    use heels_dataplane::checksum::{fold, pseudo_header_sum};
    let ip = 14;
    let tcp = ip + usize::from(frame[ip] & 0x0f) * 4;
    let end = ip + usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let src = frame[ip + 12..ip + 16].try_into().unwrap();
    let dst = frame[ip + 16..ip + 20].try_into().unwrap();
    let pending = fold(pseudo_header_sum(src, dst, 6, (end - tcp) as u16));
    frame[tcp + 16..tcp + 18].copy_from_slice(&pending.to_be_bytes());
    frame
}

#[test]
fn a_syn_ack_sent_with_offload_reaches_the_host_complete_and_is_learned() {
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    syns.record(FlowKey { src: CLIENT, dst: VIP }, 1, NOW);
    let steer = Recorder { room: Arc::new(AtomicUsize::new(1)), ..Recorder::default() };
    let pending = with_pending_checksum(vector("syn-ack-before"));
    assert_ne!(pending, vector("syn-ack-before"));
    let (sent, counters) = run(vec![pending], to_host(&table, &syns, steer.clone()));
    assert_eq!(sent, vec![with_macs(vector("syn-ack-after"), HOST_MAC, PEER_MAC)]);
    assert_eq!((counters.learned, counters.checksums_completed), (1, 1));
    // The same frame complete: nothing to finish.
    let (_, counters) = run(vec![vector("syn-ack-before")], to_host(&table, &syns, steer));
    assert_eq!(counters.checksums_completed, 0);
}

#[test]
fn a_pending_checksum_passed_on_untranslated_leaves_complete() {
    // A SYN-ACK retransmitted without the form, for a connection the host
    // knows nothing of: passed to the host as it came, but complete.
    let table = Arc::new(ConnTable::new(16, 60));
    let syns = Arc::new(SynEnds::new(16));
    let frame = vector("syn-ack-before");
    let (sent, counters) =
        run(vec![with_pending_checksum(frame.clone())], to_host(&table, &syns, Recorder::default()));
    assert_eq!(sent, vec![with_macs(frame, HOST_MAC, PEER_MAC)]);
    assert_eq!((counters.learned, counters.checksums_completed), (0, 1));
}
