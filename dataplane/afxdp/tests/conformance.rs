//! The conformance vectors of docs/protocol.md through the workers' entry
//! points: a worker over the in-memory device, with the heels stages,
//! sends exactly the bytes the core leaves (from where the core says the
//! frame starts), and frees exactly the frames the core drops.

use std::sync::Arc;

use heels_afxdp::device::MemoryPort;
use heels_afxdp::stage::{Clock, HostEgress, UplinkIngress};
use heels_afxdp::umem::Region;
use heels_afxdp::worker::{Path, Stage, Worker};
use heels_dataplane::checksum::Mode;
use heels_dataplane::conntrack::{ConnTable, SynEnds};
use heels_dataplane::fuzzing;
use heels_dataplane::translate::{self, Verdict};
use heels_dataplane::vectors::{vector, ALL};

const NOW: u32 = 1;

/// Runs `frames` once through a worker with `stage`; the frames it sent.
fn through_worker<S: Stage>(frames: Vec<Vec<u8>>, stage: S) -> (Vec<Vec<u8>>, u64) {
    let region = Region::in_memory(256).unwrap();
    let count = frames.len();
    let mut worker =
        Worker::new(region, vec![MemoryPort::once_capturing(frames)], vec![Path { from: 0, to: 0, stage }]);
    let mut received = 0;
    while received < count {
        let got = worker.turn();
        assert!(got > 0, "the device ran dry before every frame came");
        received += got;
    }
    let stats = worker.stats();
    (worker.devices()[0].sent().to_vec(), stats.dropped)
}

/// What the core does to `frame` on ingress and egress, frame by frame.
fn core_ingress(frame: &[u8], table: &ConnTable) -> (Vec<u8>, Verdict, usize) {
    let mut frame = frame.to_vec();
    let outcome = translate::ingress(
        &mut frame,
        &translate::Context {
            mode: Mode::Full,
            rules: &fuzzing::config(),
            table,
            sockets: &fuzzing::sockets(),
            now: NOW,
        },
    );
    (frame, outcome.verdict, outcome.start)
}

fn core_egress(frame: &[u8], table: &ConnTable) -> (Vec<u8>, Verdict) {
    let mut frame = frame.to_vec();
    let verdict = translate::client_egress(
        &mut frame,
        Mode::Full,
        table,
        &heels_dataplane::conntrack::SynEnds::new(4),
        NOW,
    );
    (frame, verdict)
}

fn egress_stage() -> HostEgress {
    HostEgress::new(
        Arc::new(fuzzing::config()),
        Arc::new(fuzzing::table_with_connection()),
        Arc::new(SynEnds::new(64)),
        Clock::Fixed(NOW),
    )
}

/// Every vector, plus a truncated and a corrupted copy of each, through
/// both stages: the worker's output is the core's.
#[test]
fn every_vector_through_the_workers_is_what_the_core_does() {
    let mut frames: Vec<Vec<u8>> = ALL.iter().map(|name| vector(name)).collect();
    for name in ALL {
        let mut short = vector(name);
        short.truncate(short.len() / 2);
        frames.push(short);
        let mut corrupt = vector(name);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x5a;
        frames.push(corrupt);
    }

    // Ingress: each frame on a fresh table, as the core sees it (learning
    // a SYN-ACK changes the table for the frames after it).
    for frame in &frames {
        let core_table = fuzzing::table_with_connection();
        let (expected, verdict, start) = core_ingress(frame, &core_table);
        let table = Arc::new(fuzzing::table_with_connection());
        let stage =
            UplinkIngress::new(Arc::new(fuzzing::config()), table, fuzzing::sockets(), Clock::Fixed(NOW));
        let (sent, dropped) = through_worker(vec![frame.clone()], stage);
        match verdict {
            Verdict::Drop(_) => assert_eq!((sent.len(), dropped), (0, 1), "{verdict:?}"),
            _ => assert_eq!(sent, vec![expected[start..].to_vec()], "{verdict:?}"),
        }
    }

    // Egress: the whole list in one batch, one table, as a ring delivers it.
    let core_table = fuzzing::table_with_connection();
    let expected: Vec<Vec<u8>> = frames.iter().map(|f| core_egress(f, &core_table).0).collect();
    let stage = egress_stage();
    let (sent, dropped) = through_worker(frames.clone(), stage);
    assert_eq!(dropped, 0);
    assert_eq!(sent, expected);
    // The test would be empty if nothing were rewritten.
    assert!(sent.iter().zip(&frames).any(|(out, input)| out != input));
}

/// A client SYN whose sequence is earlier than the last on its 4-tuple
/// goes after its reset, as the TC program sends it: the worker sends the
/// first SYN, then the reset (a copy turned into a RST with the first
/// SYN's end), then the second SYN.
#[test]
fn an_earlier_syn_goes_after_its_reset() {
    let syn = |seq: u32| {
        let mut frame = vector("egress-data-before");
        frame[47] = 0x02;
        let mut tcp = heels_dataplane::wire::TcpPacket::new_unchecked(&mut frame[34..]);
        tcp.set_seq_number(seq);
        tcp.fill_checksum(fuzzing::CLIENT.addr, fuzzing::VIP.addr);
        frame
    };
    let first = 3_000_000_000u32;
    let fresh = first.wrapping_sub(1 << 30);
    let (sent, dropped) = through_worker(vec![syn(first), syn(fresh)], egress_stage());
    let mut reset = syn(fresh);
    assert!(translate::turn_into_reset(&mut reset, first.wrapping_add(1)));
    assert_eq!(dropped, 0);
    assert_eq!(sent, vec![syn(first), reset, syn(fresh)]);
}
