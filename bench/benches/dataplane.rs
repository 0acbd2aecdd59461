//! ns per packet of each translation on the frames of docs/protocol.md, and
//! connection-table lookups at 1k, 100k and 1M entries.
//!
//! Data-packet rewrites run in place with no copy: two tables send the
//! frame to DIP:dport and back again, so every iteration is one real rewrite
//! of the same frame. A handshake rewrite changes what the next run would
//! see, so those iterations first copy the original frame back;
//! `copy_only` measures that copy alone, to be subtracted.
//!
//! Every iteration asserts its verdict (`assert!`, not `debug_assert!`,
//! which the bench profile compiles out): a benchmark that silently
//! measured a pass-through would be worse than none. The check is one
//! well-predicted branch. The worker turns assert each turn's frame count
//! and, after their run, that every frame received was sent on.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use heels_dataplane::checksum::Mode;
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::fuzzing::{config, sockets, table_with_connection, BACKEND, CLIENT, VIP};
use heels_dataplane::option::{self, Endpoint};
use heels_dataplane::translate::{self, Verdict};
use heels_dataplane::vectors::vector;

fn translations(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(1));
    let config = config();
    let table = table_with_connection();
    let sockets = sockets();

    let frame = vector("egress-data-before");
    let mut buf = frame.clone();
    group.bench_function("copy_only", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&frame));
            black_box(&buf);
        })
    });

    data_rewrites(&mut group);

    let cases: [(&str, &str); 4] = [
        ("client_ingress_syn_ack_learn", "syn-ack-before"),
        ("server_syn_fullnat", "fullnat-syn-before"),
        ("server_syn_dnat", "dnat-syn-before"),
        ("server_syn_ipip", "ipip-syn-before"),
    ];
    for (name, vector_name) in cases {
        let frame = vector(vector_name);
        let mut buf = frame.clone();
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.copy_from_slice(&frame);
                let verdict = match name {
                    "client_ingress_syn_ack_learn" => translate::client_ingress(
                        &mut buf,
                        &translate::Context {
                            mode: Mode::Full,
                            rules: &config,
                            table: &table,
                            sockets: &sockets,
                            now: 1,
                        },
                    ),
                    _ => translate::server_syn_ingress(&mut buf, Mode::Full, &config, &sockets),
                };
                assert!(matches!(verdict, Verdict::Rewritten { .. }));
                black_box(verdict)
            })
        });
    }

    // A packet heels does not know: the cost every other packet pays.
    let frame = vector("egress-data-before");
    let empty = ConnTable::new(16, 60);
    let no_syns = SynEnds::new(16);
    let mut buf = frame.clone();
    group.bench_function("client_egress_miss", |b| {
        b.iter(|| {
            let verdict = translate::client_egress(black_box(&mut buf), Mode::Full, &empty, &no_syns, 1);
            assert_eq!(verdict, Verdict::Pass(translate::Reason::NoEntry));
        })
    });

    let syn = vector("fullnat-syn-before");
    group.bench_function("option_find", |b| {
        b.iter(|| assert!(matches!(option::find(black_box(&syn[54..90])), Ok(Some(_)))))
    });
    group.finish();
}

/// One rewrite per iteration, in place: `forth` maps the frame's flow to
/// the other endpoint, `back` maps it home again.
fn data_rewrites(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let no_syns = SynEnds::new(16);
    let config = config();
    let sockets = sockets();
    let two_tables = |forth: (FlowKey, Endpoint), back: (FlowKey, Endpoint)| {
        let (a, b) = (ConnTable::new(16, 60), ConnTable::new(16, 60));
        a.insert(forth.0, forth.1, 0).expect("room");
        b.insert(back.0, back.1, 0).expect("room");
        (a, b)
    };
    let (forth, back) = two_tables(
        (FlowKey { src: CLIENT, dst: VIP }, BACKEND),
        (FlowKey { src: CLIENT, dst: BACKEND }, VIP),
    );
    // The table is chosen by where the frame points now (its IPv4
    // destination), not by a toggle: a toggle shared between benchmarks,
    // or an odd number of iterations, would look up the wrong table and
    // measure misses (the per-iteration assert caught exactly that).
    let mut buf = vector("egress-data-before");
    group.bench_function("client_egress_data", |b| {
        b.iter(|| {
            let table = if buf[30..34] == VIP.addr { &forth } else { &back };
            let verdict = translate::client_egress(black_box(&mut buf), Mode::Full, table, &no_syns, 1);
            assert_eq!(verdict, Verdict::Rewritten { start: 0 });
            black_box(verdict)
        })
    });
    let (forth, back) = two_tables(
        (FlowKey { src: BACKEND, dst: CLIENT }, VIP),
        (FlowKey { src: VIP, dst: CLIENT }, BACKEND),
    );
    let mut buf = vector("ingress-data-before");
    group.bench_function("client_ingress_data", |b| {
        b.iter(|| {
            let table = if buf[26..30] == BACKEND.addr { &forth } else { &back };
            let verdict = translate::client_ingress(
                black_box(&mut buf),
                &translate::Context { mode: Mode::Full, rules: &config, table, sockets: &sockets, now: 1 },
            );
            assert_eq!(verdict, Verdict::Rewritten { start: 0 });
            black_box(verdict)
        })
    });
}

/// Keys spread over addresses and ports, as many clients would make them.
fn key(i: u32) -> FlowKey {
    let mixed = i.wrapping_mul(0x9e37_79b1);
    FlowKey {
        src: Endpoint::new([10, (mixed >> 24) as u8, (i >> 8) as u8, i as u8], 1024 + (i >> 16) as u16),
        dst: Endpoint::new([10, 10, 100, 1], 80),
    }
}

/// A table for `flows` entries, filled with as many as it takes: an insert
/// whose 32-slot probe window is full fails (`Full`), which clustering
/// makes happen below the nominal size. Says how many did not fit; returns
/// the keys (by index) that did.
fn filled(flows: u32) -> (ConnTable, Vec<u32>) {
    let table = ConnTable::new(flows as usize, 60);
    let inserted: Vec<u32> = (0..flows)
        .filter(|&i| table.insert(key(i), Endpoint::new(i.to_be_bytes(), 8080), 0).is_ok())
        .collect();
    if inserted.len() < flows as usize {
        eprintln!(
            "table of {flows}: {} inserts found their probe window full",
            flows as usize - inserted.len()
        );
    }
    (table, inserted)
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("conntrack_lookup");
    group.throughput(Throughput::Elements(1));
    for flows in [1_000u32, 100_000, 1_000_000] {
        let (table, inserted) = filled(flows);
        // Look up in a scrambled order so that large tables miss the cache
        // as real traffic would.
        let order: Vec<FlowKey> = (0..inserted.len())
            .map(|i| key(inserted[i.wrapping_mul(2_654_435_761) % inserted.len()]))
            .collect();
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("hit", flows), &flows, |b, _| {
            b.iter(|| {
                let k = &order[next];
                next = if next + 1 == order.len() { 0 } else { next + 1 };
                assert!(black_box(table.lookup(k, 0)).is_some());
            })
        });
        // As an AF_XDP worker does with a batch of 32 frames: prefetch every
        // slot, then look up. Reported per lookup.
        let mut out = [None; 32];
        let mut at = 0usize;
        group.throughput(Throughput::Elements(32));
        group.bench_with_input(BenchmarkId::new("hit_batch32", flows), &flows, |b, _| {
            b.iter(|| {
                table.lookup_batch(next_batch(&order, &mut at), &mut out, 0);
                assert!(black_box(&out).iter().all(Option::is_some));
            })
        });
        // The machine's floor for the same pattern, with no table: 32 random
        // 64-byte lines of a buffer as large as the table's slots, read as
        // independent loads (the CPU overlaps them as the prefetches do). A
        // batched lookup touches at least one such line, so it cannot beat
        // this; the 1M / 1k ratio of `hit_batch32` is bounded by this one's.
        let lines = table.memory_bytes() / 64;
        // Written, not zeroed: untouched zero pages all map one shared page,
        // which would stay in cache.
        let memory: Vec<[u64; 8]> = (0..lines as u64).map(|i| [i; 8]).collect();
        // Scattered, not strided: a constant stride could be prefetched.
        let line_order: Vec<usize> = (0..order.len() as u64)
            .map(|i| ((i ^ i >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % lines)
            .collect();
        let mut at = 0usize;
        group.throughput(Throughput::Elements(32));
        group.bench_with_input(BenchmarkId::new("memory_floor_batch32", flows), &flows, |b, _| {
            b.iter(|| {
                let batch = next_batch(&line_order, &mut at);
                black_box(batch.iter().fold(0u64, |sum, &line| sum.wrapping_add(memory[line][0])))
            })
        });
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("miss", flows), &flows, |b, _| {
            let mut i = flows;
            b.iter(|| {
                i = i.wrapping_add(1);
                assert!(black_box(table.lookup(&key(i), 0)).is_none());
            })
        });
    }
    group.finish();
}

/// The 32 items of `items` from `at` on, and `at` moved past them (back to
/// the start when fewer than 32 would follow).
fn next_batch<'a, T>(items: &'a [T], at: &mut usize) -> &'a [T] {
    let batch = &items[*at..*at + 32];
    *at = if *at + 64 > items.len() { 0 } else { *at + 32 };
    batch
}

/// The batch entry point against one frame at a time, side by side, on a
/// table of 1k, 100k and 1M flows: 64 egress data frames of 64 different
/// flows picked across the table, copied back before each pass (the copy
/// is in both figures; `translate/copy_only` is its cost per frame). The
/// same 64 flows every pass, so their slots stay in cache: this measures
/// what the batch's passes cost, not cache misses (`conntrack_lookup`
/// walks the whole table for those). The frames' TCP checksums are not
/// fixed after their ports are set: data rewrites do not verify them.
fn batches(c: &mut Criterion) {
    let no_syns = SynEnds::new(16);
    let mut group = c.benchmark_group("egress_batch64");
    group.throughput(Throughput::Elements(64));
    let template = vector("egress-data-before");
    for flows in [1_000u32, 100_000, 1_000_000] {
        let (table, inserted) = filled(flows);
        let originals: Vec<Vec<u8>> = (0..64usize)
            .map(|n| {
                let k = key(inserted[n.wrapping_mul(2_654_435_761) % inserted.len()]);
                let mut frame = template.clone();
                frame[26..30].copy_from_slice(&k.src.addr);
                frame[30..34].copy_from_slice(&k.dst.addr);
                frame[34..36].copy_from_slice(&k.src.port);
                frame[36..38].copy_from_slice(&k.dst.port);
                frame
            })
            .collect();
        let mut frames = originals.clone();
        let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|f| f.as_mut_slice()).collect();
        let mut verdicts = [Verdict::Pass(translate::Reason::Malformed); 64];
        group.bench_with_input(BenchmarkId::new("batch", flows), &flows, |b, _| {
            b.iter(|| {
                for (frame, original) in views.iter_mut().zip(&originals) {
                    frame.copy_from_slice(original);
                }
                translate::client_egress_batch(&mut views, Mode::Full, &table, &no_syns, 1, &mut verdicts);
                assert!(verdicts.iter().all(|v| *v == Verdict::Rewritten { start: 0 }));
                black_box(&verdicts);
            })
        });
        group.bench_with_input(BenchmarkId::new("one_by_one", flows), &flows, |b, _| {
            b.iter(|| {
                for (frame, original) in views.iter_mut().zip(&originals) {
                    frame.copy_from_slice(original);
                    let verdict = translate::client_egress(frame, Mode::Full, &table, &no_syns, 1);
                    assert_eq!(verdict, Verdict::Rewritten { start: 0 });
                }
                black_box(&views);
            })
        });
    }
    group.finish();
}

/// The afxdp worker's loop on the in-memory device, one batch of 64 frames
/// a turn, with the heels client egress stage and with the null forwarder
/// side by side: the loop's own cost and the stage's. Each turn writes 64
/// frames from the flows' templates in turn, as a NIC would, and sends
/// them; reported per frame. `heels bench dataplane` measures the same
/// loop on real rings.
/// After a worker's run: each frame it received it sent on (a stage that
/// dropped them would measure less work).
fn every_frame_forwarded(stats: &heels_afxdp::worker::WorkerStats) {
    let (rx, tx) = stats.devices.iter().fold((0, 0), |(rx, tx), d| (rx + d.rx, tx + d.tx));
    assert!(rx > 0 && tx == rx && stats.dropped == 0, "received {rx}, sent {tx}, dropped {}", stats.dropped);
}

fn worker_turns(c: &mut Criterion) {
    use heels_afxdp::device::MemoryPort;
    use heels_afxdp::stage::{Clock, HostEgress};
    use heels_afxdp::umem::Region;
    use heels_afxdp::worker::{NullForward, Path, Stage, Worker};
    use heels_bench::synthetic;
    use std::sync::Arc;

    fn worker<S: Stage>(flows: u32, stage: S) -> Worker<MemoryPort, S> {
        let region = Region::in_memory(1024).expect("memory");
        let device = MemoryPort::new(synthetic::egress_frames(flows, 64));
        Worker::new(region, vec![device], vec![Path { from: 0, to: 0, stage }])
    }
    let mut group = c.benchmark_group("afxdp_worker_turn64");
    group.throughput(Throughput::Elements(64));
    // 64 flows: one batch is every flow. 1,024: `heels bench dataplane`'s
    // default, whose table (128 KiB) no longer fits the L1 cache.
    for flows in [64u32, 1024] {
        let (table, refused) = synthetic::table(flows);
        assert_eq!(refused, 0);
        let stage = HostEgress::new(
            Arc::new(config()),
            Arc::new(table),
            Arc::new(heels_dataplane::conntrack::SynEnds::new(64)),
            Clock::Fixed(1),
        );
        let mut heels = worker(flows, stage);
        group.bench_with_input(BenchmarkId::new("heels_egress", flows), &flows, |b, _| {
            b.iter(|| {
                assert_eq!(heels.turn(), 64);
            })
        });
        every_frame_forwarded(&heels.stats());
        let mut null = worker(flows, NullForward);
        group.bench_with_input(BenchmarkId::new("null", flows), &flows, |b, _| {
            b.iter(|| {
                assert_eq!(null.turn(), 64);
            })
        });
        every_frame_forwarded(&null.stats());
    }
    group.finish();
}

/// A frame of `payload` bytes of the bypassed connection (CIP:cport ->
/// DIP:dport) with a complete TCP checksum, and the pending form of it a
/// sender with checksum offload leaves (the field's value), and where
/// the field is.
fn data_frame(payload: usize) -> (Vec<u8>, u16, usize) {
    use heels_dataplane::checksum::{self, fold, pseudo_header_sum};
    let mut frame = vector("egress-data-before");
    let ip = 14;
    let tcp = ip + usize::from(frame[ip] & 0x0f) * 4;
    let header_end = tcp + usize::from(frame[tcp + 12] >> 4) * 4;
    frame.truncate(header_end);
    frame.extend((0..payload).map(|i| i as u8));
    let total = (frame.len() - ip) as u16;
    frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    frame[ip + 10..ip + 12].fill(0);
    let ip_check = checksum::checksum(&frame[ip..tcp]);
    frame[ip + 10..ip + 12].copy_from_slice(&ip_check.to_be_bytes());
    let (src, dst) =
        (frame[ip + 12..ip + 16].try_into().unwrap(), frame[ip + 16..ip + 20].try_into().unwrap());
    let pseudo = pseudo_header_sum(src, dst, 6, (frame.len() - tcp) as u16);
    frame[tcp + 16..tcp + 18].fill(0);
    let tcp_check = !fold(checksum::accumulate(pseudo, &frame[tcp..]));
    frame[tcp + 16..tcp + 18].copy_from_slice(&tcp_check.to_be_bytes());
    (frame, fold(pseudo), tcp + 16)
}

/// What the afxdp workers pay per frame to finish checksums a sender left
/// pending ([`translate::complete_checksum`]): on a complete frame (one
/// comparison after the parse) and on pending ones (one pass over the
/// segment), at 1514 and 66 bytes on the wire.
fn checksum_completion(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum_complete");
    group.throughput(Throughput::Elements(1));
    for payload in [0, 1448] {
        let (frame, pending, check_at) = data_frame(payload);
        let name = frame.len();
        let mut buf = frame.clone();
        group.bench_function(format!("complete_{name}"), |b| {
            b.iter(|| {
                let completed = translate::complete_checksum(black_box(&mut buf));
                assert!(!completed);
                completed
            })
        });
        group.bench_function(format!("pending_{name}"), |b| {
            b.iter(|| {
                buf[check_at..check_at + 2].copy_from_slice(&pending.to_be_bytes());
                let completed = translate::complete_checksum(black_box(&mut buf));
                assert!(completed);
                completed
            })
        });
        assert_eq!(buf, frame, "the completed checksum is the sender's complete one");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = translations, checksum_completion, lookups, batches, worker_turns
}
criterion_main!(benches);
