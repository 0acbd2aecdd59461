//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the
//! property tests of the engine: each runs workers or the UMEM's ownership
//! record on arbitrary input and panics if an invariant breaks:
//!
//! - nothing panics, whatever the bytes or the descriptors;
//! - no chunk is lost or held twice: after every turn each chunk of the
//!   region is free or lent to a device, and a descriptor the record
//!   refuses is counted, never used;
//! - a frame a worker sends on is its input from where the stage said the
//!   frame starts (IPIP decapsulation moves the start), with the core's
//!   invariants ([`heels_dataplane::fuzzing::check_outcome`]: payload
//!   untouched, checksums that verified still verify) and the link
//!   addresses of the way it leaves by.
//!
//! The host is docs/protocol.md's (client and server in one), so a fuzzer
//! seeded with its vectors reaches learning, rewrites and forgetting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::fuzzing::{self as core, BACKEND, CLIENT, VIP};
use heels_dataplane::option::Endpoint;
use heels_dataplane::translate::{Learned, Reason, Sockets, SynClock, Verdict};
use xdpilone::xdp::XdpDesc;

use crate::device::MemoryPort;
use crate::host::{Forget, HostStage, Listeners, SentSyns, Steer, ToHost, ToHostParts, ToUplink};
use crate::nexthop::{NextHops, Route, Unresolved};
use crate::stage::Clock;
use crate::umem::{Held, Region, FRAME_SIZE};
use crate::worker::{Path, Worker};

/// heels0's address (frames to the host go to it).
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// heels0's peer's address (frames to the host come from it).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
/// The uplink's address (frames to the uplink come from it).
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// The uplink's gateway, and its address.
pub const GATEWAY: [u8; 4] = [10, 10, 1, 1];
/// The gateway's link address (frames to the uplink go to it).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The table's time throughout.
const NOW: u32 = 1;
/// Chunks of a fuzzed worker's region: a few, so that a lost one shows.
const CHUNKS: u32 = 8;

/// docs/protocol.md's listeners (the core's test double) as the workers
/// ask them.
#[derive(Debug, Clone)]
pub struct ProtocolListeners(pub Arc<core::HostSockets>);

impl Listeners for ProtocolListeners {
    fn answers(&self, flow: &FlowKey, vip: Endpoint, clock: SynClock) -> Result<(), Reason> {
        self.0.answers(flow, vip, clock)
    }

    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason> {
        self.0.record(flow, vip)
    }

    fn forget(&self, flow: &FlowKey) {
        self.0.forget(flow)
    }
}

/// A steering map that takes a connection or refuses it, as the record
/// being run says, of an agent taking the standby's connections over or
/// not.
#[derive(Debug, Clone, Default)]
struct Steering {
    full: Arc<AtomicBool>,
    taking_over: Arc<AtomicBool>,
}

impl Steer for Steering {
    fn learned(&mut self, _connection: &Learned) -> bool {
        !self.full.load(Ordering::Relaxed)
    }

    fn forget(&mut self, _ingress: &FlowKey) {}

    fn taking_over(&self) -> bool {
        self.taking_over.load(Ordering::Relaxed)
    }
}

/// One frame of a fuzz input and how it travels.
#[derive(Debug)]
struct Record<'a> {
    /// From the uplink into the host (else from the host out).
    to_host: bool,
    /// The steering map refuses what is learned.
    steering_full: bool,
    /// Forget docs/protocol.md's connection first (a close report).
    forget_first: bool,
    /// The agent is taking the standby's connections over.
    taking_over: bool,
    frame: &'a [u8],
}

/// Splits a fuzz input into records: a flags byte, a little-endian length
/// (up to a little more than a chunk, so oversized frames come too), the
/// frame's bytes (fewer if the input ends).
fn records(mut data: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        let (&[flags, lo, hi], rest) = data.split_first_chunk::<3>()?;
        let len = usize::from(u16::from_le_bytes([lo, hi])) % (FRAME_SIZE as usize + 64);
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(Record {
            to_host: flags & 1 == 1,
            steering_full: flags & 2 == 2,
            forget_first: flags & 4 == 4,
            taking_over: flags & 8 == 8,
            frame,
        })
    })
}

/// What a fuzz input reached (for tests that it reaches the paths).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Frames sent on changed (rewritten, or only their checksum finished).
    pub changed: u32,
    /// Frames sent on from further in (decapsulated).
    pub decapsulated: u32,
    /// Frames sent on as they came but for their link addresses.
    pub unchanged: u32,
    /// Frames dropped by a stage.
    pub dropped: u32,
    /// Resets sent before a SYN.
    pub resets: u32,
}

/// The host of a fuzz input: one worker for its whole life, with both
/// host paths (uplink to heels0: devices 0 to 1; heels0 to uplink: 2 to
/// 3), so that what one frame learns, records or leaves in the region the
/// next one meets.
struct Host {
    worker: Worker<MemoryPort, HostStage<Steering>>,
    steering: Steering,
    syn_ends: Arc<SynEnds>,
    forgets: Arc<ArrayQueue<Forget>>,
}

/// The devices of [`Host`]'s worker.
const UPLINK_IN: usize = 0;
const HOST_OUT: usize = 1;
const HOST_IN: usize = 2;
const UPLINK_OUT: usize = 3;

impl Host {
    fn new() -> Host {
        let config = Arc::new(core::config());
        let table = Arc::new(ConnTable::new(16, 60));
        // The client sent docs/protocol.md's SYN: its SYN-ACK form learns.
        let syn_ends = Arc::new(SynEnds::new(16));
        syn_ends.record(FlowKey { src: CLIENT, dst: VIP }, 1, NOW);
        let forgets = Arc::new(ArrayQueue::new(4));
        let steering = Steering::default();
        let default_route = Route { prefix: "0.0.0.0/0".parse().expect("prefix"), gateway: Some(GATEWAY) };
        let hops = NextHops::new(vec![default_route], vec![(GATEWAY, GATEWAY_MAC)]);
        let to_host = HostStage::ToHost(ToHost::new(ToHostParts {
            rules: Arc::clone(&config),
            table: Arc::clone(&table),
            sent: SentSyns::new(Arc::clone(&syn_ends), None),
            listeners: Box::new(ProtocolListeners(Arc::new(core::sockets()))),
            forgets: Arc::clone(&forgets),
            clock: Clock::Fixed(NOW),
            host_mac: HOST_MAC,
            peer_mac: PEER_MAC,
            steer: steering.clone(),
        }));
        let to_uplink = HostStage::ToUplink(ToUplink::new(
            config,
            table,
            Arc::clone(&syn_ends),
            Clock::Fixed(NOW),
            UPLINK_MAC,
            Arc::new(ArcSwap::from_pointee(hops)),
            Arc::new(Unresolved::default()),
        ));
        let region = Region::in_memory(CHUNKS).expect("a region in memory");
        let devices = (0..4).map(|_| MemoryPort::fed()).collect();
        let paths = vec![
            Path { from: UPLINK_IN, to: HOST_OUT, stage: to_host },
            Path { from: HOST_IN, to: UPLINK_OUT, stage: to_uplink },
        ];
        Host { worker: Worker::new(region, devices, paths), steering, syn_ends, forgets }
    }

    /// One record through the worker.
    fn run(&mut self, record: &Record, reached: &mut Reached) {
        if record.frame.len() > FRAME_SIZE as usize {
            // No chunk holds it (a device could not have received it);
            // `frames_too_long_for_a_chunk_are_not_received` checks that.
            return;
        }
        if record.forget_first {
            let syn_end = self.syn_ends.end(&FlowKey { src: CLIENT, dst: VIP });
            let _ = self.forgets.push(Forget { client: CLIENT, vip: VIP, backend: BACKEND, syn_end });
        }
        self.steering.full.store(record.steering_full, Ordering::Relaxed);
        self.steering.taking_over.store(record.taking_over, Ordering::Relaxed);
        let (from, to) = if record.to_host { (UPLINK_IN, HOST_OUT) } else { (HOST_IN, UPLINK_OUT) };
        let before = self.worker.stats();
        let sent_before = self.worker.devices()[to].sent().len();
        self.worker.devices_mut()[from].feed(record.frame);
        let received = self.worker.turn();
        let stats = self.worker.stats();
        let lent: usize = self.worker.devices().iter().map(MemoryPort::lent).sum();
        assert_eq!(self.worker.free_frames() + lent, CHUNKS as usize, "a chunk lost or held twice");
        assert_eq!(stats.bad_descriptors, 0, "the worker's own descriptors were refused");
        assert_eq!(received, 1, "a frame that fits a chunk is received");
        let sent = &self.worker.devices()[to].sent()[sent_before..];
        let (dropped, resets_sent) = (stats.dropped - before.dropped, stats.resets_sent - before.resets_sent);
        assert_eq!(sent.len() as u64 + dropped, 1 + resets_sent, "every frame received is sent or dropped");
        let (resets, forwarded) = sent.split_at(resets_sent as usize);
        // A reset goes before the SYN it was made from (whose checksum the
        // stage completed): a reset of it, its checksum as sound as the
        // SYN's (a SYN that arrived with a broken one, no host's, gets a
        // reset the next hop drops as it drops the SYN).
        if let ([reset], [syn]) = (resets, forwarded) {
            assert_eq!(reset.len(), syn.len(), "a reset is a copy of its SYN");
            let flags = 14 + usize::from(reset[14] & 0x0f) * 4 + 13;
            assert_eq!(reset[flags] & 0x06, 0x04, "a reset has RST set and SYN clear");
            if core::checksums_verify(syn) == Some(true) {
                assert_eq!(core::checksums_verify(reset), Some(true), "a reset of a sound SYN");
            }
        } else {
            assert!(resets.is_empty(), "{} resets for one SYN", resets.len());
        }
        reached.resets += resets.len() as u32;
        reached.dropped += dropped as u32;
        match forwarded {
            [] => {}
            [out] => match check_forwarded(record, out) {
                Verdict::Rewritten { start: 0 } => reached.changed += 1,
                Verdict::Rewritten { .. } => reached.decapsulated += 1,
                _ => reached.unchanged += 1,
            },
            more => panic!("{} frames forwarded from one", more.len()),
        }
    }
}

/// A forwarded frame against its input: the link addresses of its way,
/// then the core's invariants on the frame as the stage left it; returns
/// what the stage did, as a verdict.
fn check_forwarded(record: &Record, out: &[u8]) -> Verdict {
    let input = record.frame;
    let start = input.len().checked_sub(out.len()).expect("a frame grew on its way");
    if out.len() >= 12 {
        let (dst, src) = if record.to_host { (HOST_MAC, PEER_MAC) } else { (GATEWAY_MAC, UPLINK_MAC) };
        assert_eq!((&out[..6], &out[6..12]), (&dst[..], &src[..]), "link addresses of the way out");
    }
    if !record.to_host {
        assert_eq!(start, 0, "nothing is decapsulated on the way out");
        assert_eq!(out.get(12..14), Some(&[0x08, 0x00][..]), "only IPv4 leaves by the uplink");
    }
    // The frame as the core left it: the link addresses put back (after a
    // decapsulation the Ethernet header moved to `start`).
    let mut after = input.to_vec();
    after[start..].copy_from_slice(out);
    let macs = input.len().min(12);
    after[start..start + macs.min(out.len())].copy_from_slice(&input[..macs.min(out.len())]);
    let verdict = if after == input {
        Verdict::Pass(Reason::Malformed)
    } else {
        Verdict::Rewritten { start: start as u16 }
    };
    core::check_outcome(input, &after, verdict);
    verdict
}

/// Frames of arbitrary bytes through the host paths' workers (see the
/// module's invariants); returns what they reached.
pub fn worker_paths(data: &[u8]) -> Reached {
    let mut host = Host::new();
    let mut reached = Reached::default();
    for record in records(data) {
        host.run(&record, &mut reached);
    }
    reached
}

/// Arbitrary operations on a region's ownership record, against a model
/// of which chunks are with the kernel: descriptors from a kernel gone
/// wrong (any address, any length), frames moved along and handed back,
/// every held frame written at once. Each held frame is filled with its
/// own byte and read back whole: two frames sharing a byte would show.
pub fn umem_record(data: &[u8]) {
    const CHUNK: u64 = FRAME_SIZE as u64;
    let mut region = Region::in_memory(CHUNKS).expect("a region in memory");
    // The model: the chunks (by number) with the kernel, the frames held.
    let mut with_kernel: Vec<u64> = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    let mut refused = 0;
    for op in data.chunks(4) {
        let arg = u32::from_le_bytes([
            op[0],
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        ]) >> 8;
        let small = usize::from(op[0] >> 3);
        match op[0] % 8 {
            0 => with_kernel.extend(region.lend().map(|addr| addr / CHUNK)),
            1 => {
                // A descriptor for any address in or just past the region.
                let addr = u64::from(arg) % (u64::from(CHUNKS + 1) * CHUNK);
                let len = small as u32 * 150;
                let inside = addr % CHUNK + u64::from(len) <= CHUNK;
                let expected = inside && with_kernel.contains(&(addr / CHUNK));
                match region.receive(XdpDesc { addr, len, options: 0 }) {
                    Some(frame) => {
                        assert!(
                            expected,
                            "a descriptor outside a chunk with the kernel was taken: {addr:#x}+{len}"
                        );
                        assert_eq!((frame.descriptor().addr, frame.len()), (addr, len as usize));
                        with_kernel.retain(|&c| c != addr / CHUNK);
                        held.push(frame);
                    }
                    None => {
                        assert!(
                            !expected,
                            "a descriptor inside a chunk with the kernel was refused: {addr:#x}+{len}"
                        );
                        refused += 1;
                    }
                }
            }
            2 => {
                let len = arg as usize % (FRAME_SIZE as usize + 16);
                let free = region.free_frames();
                match region.take(len) {
                    Some(frame) => held.push(frame),
                    None => assert!(free == 0 || len > FRAME_SIZE as usize, "a free chunk was not taken"),
                }
            }
            3 if !held.is_empty() => {
                let at = arg as usize % held.len();
                let (addr, len) = (held[at].descriptor().addr, held[at].len());
                held[at].advance(small * 40);
                let moved = (small * 40).min(len);
                assert_eq!((held[at].descriptor().addr, held[at].len()), (addr + moved as u64, len - moved));
            }
            4 if !held.is_empty() => {
                let frame = held.swap_remove(arg as usize % held.len());
                let chunk = frame.descriptor().addr / CHUNK;
                let desc = region.send(frame);
                assert_eq!(desc.addr / CHUNK, chunk, "a frame is sent from its own chunk");
                with_kernel.push(chunk);
            }
            5 if !held.is_empty() => region.release(held.swap_remove(arg as usize % held.len())),
            6 => {
                // A completion (or an unused fill entry) of a chunk with the
                // kernel, at any offset in it, or of any address.
                let addr = match (with_kernel.is_empty(), op[0] & 8 == 8) {
                    (false, false) => {
                        with_kernel[arg as usize % with_kernel.len()] * CHUNK + u64::from(arg) % CHUNK
                    }
                    _ => u64::from(arg) * 64,
                };
                let expected = with_kernel.contains(&(addr / CHUNK));
                let before = region.errors().bad_descriptors;
                region.reclaim(addr);
                assert_eq!(region.errors().bad_descriptors, before + u64::from(!expected), "{addr:#x}");
                refused += u64::from(!expected);
                with_kernel.retain(|&c| c != addr / CHUNK);
            }
            _ => write_all_and_read_back(&mut region, &held),
        }
        assert_eq!(
            region.free_frames() + with_kernel.len() + held.len(),
            CHUNKS as usize,
            "a chunk lost or counted twice"
        );
    }
    assert_eq!(region.errors().bad_descriptors, refused, "every refusal counted, nothing else");
    write_all_and_read_back(&mut region, &held);
}

/// Fills every held frame with its own byte through one `frames_mut`, then
/// reads each back whole.
fn write_all_and_read_back(region: &mut Region, held: &[Held]) {
    let mut spans: Vec<&mut [u8]> = held.iter().map(|_| <&mut [u8]>::default()).collect();
    region.frames_mut(held, &mut spans);
    for (i, span) in spans.iter_mut().enumerate() {
        assert_eq!(span.len(), held[i].len(), "a frame's bytes are its length");
        span.fill(i as u8);
    }
    for (i, span) in spans.iter().enumerate() {
        assert!(span.iter().all(|&b| b == i as u8), "frame {i} shares bytes with another");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    /// The records of a fuzz input: docs/protocol.md's handshake and data
    /// both ways, each as its flags say.
    fn input(frames: &[(u8, &str)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (flags, name) in frames {
            let frame = heels_dataplane::vectors::vector(name);
            data.push(*flags);
            data.extend_from_slice(&(frame.len() as u16).to_le_bytes());
            data.extend_from_slice(&frame);
        }
        data
    }

    #[test]
    fn the_protocols_frames_pass_the_worker_invariants_and_reach_every_outcome() {
        let reached = worker_paths(&input(&[
            (1, "fullnat-syn-before"),
            (1, "ipip-syn-before"),
            (1, "dnat-syn-before"),
            (3, "syn-ack-before"),
            (1, "syn-ack-before"),
            (0, "egress-data-before"),
            (1, "ingress-data-before"),
            (1, "icmp-frag-needed-before"),
            (5, "ingress-data-before"),
            (0, "egress-data-before"),
        ]));
        // The SYN forms (one after IPIP), the learned SYN-ACK form, the
        // data both ways and the ICMP error are rewritten; the SYN-ACK
        // the full steering map refuses is dropped; after the forget, the
        // data is neither rewritten nor dropped.
        let expected = Reached { changed: 6, decapsulated: 1, unchanged: 2, dropped: 1, resets: 0 };
        assert_eq!(reached, expected);
    }

    #[test]
    fn a_fed_device_receives_each_frame_once_in_order_and_none_too_long_for_a_chunk() {
        let mut port = MemoryPort::fed();
        let mut region = Region::in_memory(4).unwrap();
        port.refill(&mut region, 4);
        assert!(!port.feed(&[0x45; FRAME_SIZE as usize + 1]), "no chunk holds it");
        let mut held = Vec::with_capacity(4);
        port.receive(&mut region, &mut held);
        assert!(held.is_empty(), "nothing was queued");
        for len in [FRAME_SIZE as usize, 60, 61] {
            assert!(port.feed(&vec![len as u8; len]));
        }
        port.receive(&mut region, &mut held);
        let lens: Vec<usize> = held.iter().map(Held::len).collect();
        assert_eq!(lens, [FRAME_SIZE as usize, 60, 61], "each once, in order");
        port.receive(&mut region, &mut held);
        assert_eq!(held.len(), 3, "and no more");
        // One chunk left lent: of two frames fed, the second waits for one.
        assert!(port.feed(&[7; 64]) && port.feed(&[7; 65]));
        let mut more = Vec::with_capacity(4);
        port.receive(&mut region, &mut more);
        assert_eq!(more.iter().map(Held::len).collect::<Vec<_>>(), [64]);
        for frame in held.drain(..) {
            region.release(frame);
        }
        port.refill(&mut region, 1);
        port.receive(&mut region, &mut more);
        assert_eq!(more.iter().map(Held::len).collect::<Vec<_>>(), [64, 65], "then comes");
    }

    #[test]
    fn random_operations_keep_the_record_whole() {
        // xorshift: the same operations on every run.
        let mut state = 0x4845_454c_5321_u64;
        // Miri interprets every byte written: a few rounds there.
        for _ in 0..if cfg!(miri) { 3 } else { 200 } {
            let data: Vec<u8> = (0..256)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            umem_record(&data);
        }
    }
}
