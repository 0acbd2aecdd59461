//! `heels bench dataplane`: what the afxdp engine costs per packet.
//!
//! On a bed of two namespaces joined by two veth pairs with several queues
//! each (generator `g0` -> `d0` device under test `d1` -> `g1`), a
//! generator on AF_XDP (the project's own: a worker whose source is the
//! in-memory device) pushes data frames of bypassed connections into `d0`.
//! An XDP program on `d0` sends every frame to a worker pinned to its own
//! core, which sends it out of `d1`, either untouched (the null forwarder:
//! the I/O ceiling of this path) or through the heels client egress stage
//! (parse, prefetch, table lookup, rewrite). Frames leaving `d1` are
//! counted as `g1` receives them. The two are measured alternately, round
//! after round, on the same bed.
//!
//! Beside it, the in-memory mode runs the same worker loop on the
//! in-memory device (no kernel at all): the heels stage's own cost per
//! packet and core.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::synthetic;
use anyhow::{bail, Context};
use heels_afxdp::device::{Device, MemoryPort, PortConfig, XskPort};
use heels_afxdp::stage::{Clock, HostEgress};
use heels_afxdp::umem::Region;
use heels_afxdp::worker::{pin_to_core, Idle, NullForward, Path, Stage, Worker, WorkerStats};
use serde::Serialize;

use heels_lab::netns::NetNs;
use heels_lab::progress::Progress;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Seconds each measured run lasts.
    pub seconds: f64,
    /// Frame sizes (bytes, Ethernet header included).
    pub sizes: Vec<usize>,
    /// Flows (connections in the table, frames in turn).
    pub flows: u32,
    /// Rounds of (null, heels) per size, alternated.
    pub rounds: u32,
    /// Receive queues on each veth (one socket per queue per interface).
    pub queues: u32,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { seconds: 2.0, sizes: vec![64, 1500], flows: 1024, rounds: 3, queues: 2 }
    }
}

/// One measured run on the veth bed.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `null` or `heels`.
    pub forwarder: &'static str,
    /// Frame size.
    pub size: usize,
    /// Round.
    pub round: u32,
    /// Million frames a second out of `d1`.
    pub mpps: f64,
    /// Share of the worker's turns that found frames (its core's load).
    pub worker_busy: f64,
    /// Frames the worker freed because `d1`'s transmit ring was full.
    pub tx_full: u64,
    /// Frames the worker received, whole run (warm-up included).
    pub worker_rx: u64,
    /// Frames it sent.
    pub worker_tx: u64,
    /// Turns that found a fill ring empty.
    pub fill_starved: u64,
    /// Wakeup system calls.
    pub wakeups: u64,
    /// Descriptors the worker's region refused.
    pub bad_descriptors: u64,
}

/// The figures of one frame size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// Frame size.
    pub size: usize,
    /// Median Mpps through the null forwarder.
    pub null_mpps: f64,
    /// Median Mpps through the heels worker.
    pub heels_mpps: f64,
    /// heels / null.
    pub ratio: f64,
    /// Gbit/s of frames through the heels worker.
    pub heels_gbits: f64,
    /// Mpps of the heels stage on one core, in memory.
    pub in_memory_mpps_per_core: f64,
    /// Nanoseconds a packet, in memory (device and stage together).
    pub in_memory_ns_per_packet: f64,
    /// Mpps of the null forwarder on one core, in memory (the loop and the
    /// in-memory device alone).
    pub in_memory_null_mpps: f64,
}

/// The whole result; the top-level figures are those of the smallest size.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Median Mpps through the null forwarder.
    pub null_mpps: f64,
    /// Median Mpps through the heels worker.
    pub heels_mpps: f64,
    /// heels / null (goal: at least 0.9).
    pub ratio: f64,
    /// Mpps of the heels stage per core in memory (goal: at least 20).
    pub in_memory_mpps_per_core: f64,
    /// Per frame size.
    pub sizes: Vec<SizeResult>,
    /// Every run.
    pub runs: Vec<Run>,
    /// Flows.
    pub flows: u32,
    /// Queues per veth.
    pub queues: u32,
    /// The process that ran it (its namespaces were `hdb<pid>-gen` and
    /// `hdb<pid>-dut`).
    pub pid: u32,
}

/// Runs the benchmark.
pub fn run(spec: &Spec, progress: &Progress) -> anyhow::Result<Report> {
    if spec.sizes.is_empty() || spec.rounds == 0 || spec.queues == 0 {
        bail!("nothing to measure: give at least one size, round and queue");
    }
    let mut sizes = Vec::new();
    let mut runs = Vec::new();
    let bed = Bed::create(spec.queues)?;
    for &size in &spec.sizes {
        progress.message(format!("{size} B: in memory"));
        let frames = synthetic::egress_frames(spec.flows, size);
        let size = frames[0].len();
        let memory_seconds = (spec.seconds * f64::from(spec.rounds) / 2.0).max(0.3);
        let (table, _) = synthetic::table(spec.flows);
        let table = Arc::new(table);
        let config = Arc::new(heels_dataplane::fuzzing::config());
        let syn_ends = Arc::new(heels_dataplane::conntrack::SynEnds::new(spec.flows as usize));
        let heels_stage =
            move || HostEgress::new(config.clone(), table.clone(), syn_ends.clone(), Clock::Fixed(1));
        // In memory too, heels and null alternate, once a round; the
        // median is reported (a single window on this machine moved by a
        // third between runs).
        let (mut memory_heels, mut memory_null) = (Vec::new(), Vec::new());
        for round in 0..spec.rounds {
            let window = memory_seconds / f64::from(spec.rounds);
            if round % 2 == 0 {
                memory_heels.push(in_memory(&frames, window, heels_stage())?);
                memory_null.push(in_memory(&frames, window, NullForward)?);
            } else {
                memory_null.push(in_memory(&frames, window, NullForward)?);
                memory_heels.push(in_memory(&frames, window, heels_stage())?);
            }
        }
        let (memory_heels, memory_null) = (median(&mut memory_heels), median(&mut memory_null));
        progress.step(format!("{size} B: in memory {memory_heels:.1} Mpps"));
        let mut null = Vec::new();
        let mut heels = Vec::new();
        for round in 0..spec.rounds {
            // Alternate which goes first, so that neither always runs on a
            // fresher (or warmer) machine.
            let order: [bool; 2] = if round % 2 == 0 { [false, true] } else { [true, false] };
            for with_heels in order {
                let name = if with_heels { "heels" } else { "null" };
                progress.message(format!("{size} B: {name}, round {}", round + 1));
                let run = if with_heels {
                    bed.measure(spec, &frames, name, round, heels_stage.clone())?
                } else {
                    bed.measure(spec, &frames, name, round, || NullForward)?
                };
                progress.step(format!("{size} B: {name} {:.2} Mpps", run.mpps));
                if with_heels {
                    heels.push(run.mpps)
                } else {
                    null.push(run.mpps)
                }
                runs.push(run);
            }
        }
        let (null_mpps, heels_mpps) = (median(&mut null), median(&mut heels));
        sizes.push(SizeResult {
            size,
            null_mpps,
            heels_mpps,
            ratio: heels_mpps / null_mpps,
            heels_gbits: heels_mpps * size as f64 * 8.0 / 1000.0,
            in_memory_mpps_per_core: memory_heels,
            in_memory_ns_per_packet: 1000.0 / memory_heels,
            in_memory_null_mpps: memory_null,
        });
    }
    let first = sizes[0].clone();
    Ok(Report {
        null_mpps: first.null_mpps,
        heels_mpps: first.heels_mpps,
        ratio: first.ratio,
        in_memory_mpps_per_core: first.in_memory_mpps_per_core,
        sizes,
        runs,
        flows: spec.flows,
        queues: spec.queues,
        pid: std::process::id(),
    })
}

/// Progress steps of a run of `spec`.
pub fn steps(spec: &Spec) -> u64 {
    spec.sizes.len() as u64 * (1 + 2 * u64::from(spec.rounds))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The worker loop on the in-memory device for `seconds`, on a thread
/// pinned to the core the veth runs give the worker under test; Mpps.
fn in_memory<S: Stage + Send>(frames: &[Vec<u8>], seconds: f64, stage: S) -> anyhow::Result<f64> {
    let measure = move || -> anyhow::Result<f64> {
        pin_to_core(WORKER_CORE);
        let region = Region::in_memory(4096)?;
        let device = MemoryPort::new(frames.to_vec());
        let mut worker = Worker::new(region, vec![device], vec![Path { from: 0, to: 0, stage }]);
        // Warm the caches and the table's slots first.
        worker.run_for(Duration::from_millis(100));
        let start = Instant::now();
        let frames = worker.run_for(Duration::from_secs_f64(seconds));
        Ok(frames as f64 / start.elapsed().as_secs_f64() / 1e6)
    };
    std::thread::scope(|scope| scope.spawn(measure).join())
        .map_err(|_| anyhow::anyhow!("the in-memory worker panicked"))?
}

/// The core of the worker under test (in memory too).
const WORKER_CORE: usize = 1;
/// The core of the generator.
const GENERATOR_CORE: usize = 0;

/// The veth bed: generator and device-under-test namespaces, `g0` -> `d0`
/// and `d1` -> `g1`, each veth with `queues` queues; and a bpffs directory
/// for the programs' pins. Removed on drop.
#[derive(Debug)]
pub struct Bed {
    generator: NetNs,
    dut: NetNs,
    pin_dir: PathBuf,
    queues: u32,
}

impl Bed {
    /// Makes the bed.
    pub fn create(queues: u32) -> anyhow::Result<Bed> {
        let tag = format!("hdb{}", std::process::id());
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
        let generator = NetNs::create(&format!("{tag}-gen"))?;
        let dut = NetNs::create(&format!("{tag}-dut"))?;
        let bed = Bed { generator, dut, pin_dir, queues };
        // No IPv6 on the bed: the links' own neighbour discovery and MLD
        // frames would cross it with the measured ones.
        for ns in [&bed.generator, &bed.dut] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let q = queues.to_string();
        let (generator, dut) = (bed.generator.name(), bed.dut.name());
        for (a, a_ns, b, b_ns) in [("g0", generator, "d0", dut), ("d1", dut, "g1", generator)] {
            #[rustfmt::skip]
            heels_lab::netns::run("ip", &[
                "link", "add", a, "netns", a_ns, "numtxqueues", &q, "numrxqueues", &q,
                "type", "veth", "peer", "name", b, "netns", b_ns, "numtxqueues", &q, "numrxqueues", &q,
            ])?;
        }
        for (ns, link) in [(&bed.generator, "g0"), (&bed.generator, "g1"), (&bed.dut, "d0"), (&bed.dut, "d1")]
        {
            ns.ip(&["link", "set", link, "up"])?;
        }
        Ok(bed)
    }

    /// The generator's namespace (`g0`, `g1`).
    pub fn generator(&self) -> &NetNs {
        &self.generator
    }

    /// The device-under-test's namespace (`d0`, `d1`).
    pub fn dut(&self) -> &NetNs {
        &self.dut
    }

    /// Where programs loaded for the bed pin their maps.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Frames `g1` has received.
    fn sink_packets(&self) -> anyhow::Result<u64> {
        let out = self.generator.ip(&["-j", "-s", "link", "show", "g1"])?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
        links[0]["stats64"]["rx"]["packets"].as_u64().context("no rx packets in ip -j -s link")
    }

    /// One run: the worker with `stage` in the DUT namespace on core 1,
    /// the generator in its namespace on core 0.
    fn measure<S: Stage + Send + 'static>(
        &self,
        spec: &Spec,
        frames: &[Vec<u8>],
        forwarder: &'static str,
        round: u32,
        stage: impl Fn() -> S + Send + 'static,
    ) -> anyhow::Result<Run> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let dut = {
            let (stop, path, pin_dir, queues) =
                (stop.clone(), self.dut.path(), self.pin_dir.clone(), self.queues);
            std::thread::spawn(move || -> anyhow::Result<WorkerStats> {
                heels_lab::netns::set_thread_netns(&path)?;
                pin_to_core(WORKER_CORE);
                let mut region = Region::registered(4096, 2048)?;
                let mut devices = Vec::new();
                let mut paths = Vec::new();
                for queue in 0..queues {
                    for link in ["d0", "d1"] {
                        let port = XskPort::open(&mut region, link, queue, PortConfig::default())
                            .with_context(|| format!("{link} queue {queue}"))?;
                        devices.push(port);
                    }
                    let from = devices.len() - 2;
                    paths.push(Path { from, to: from + 1, stage: stage() });
                }
                let mut to_workers = heels_bpf::ToWorkers::attach(&pin_dir, "d0")?;
                for (queue, pair) in devices.chunks(2).enumerate() {
                    to_workers.insert(queue as u32, pair[0].fd())?;
                }
                let mut worker = Worker::new(region, devices, paths);
                // Ready once a turn has filled the fill rings.
                worker.turn();
                let _ = ready_tx.send(());
                worker.run(&stop, Idle::Spin);
                drop(to_workers);
                Ok(worker.stats())
            })
        };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            stop.store(true, Ordering::Relaxed);
            return Err(dut
                .join()
                .map_err(|_| anyhow::anyhow!("the worker panicked"))?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the worker did not start within 10 s")));
        }
        let generator = {
            let (stop, path, frames) = (stop.clone(), self.generator.path(), frames.to_vec());
            std::thread::spawn(move || -> anyhow::Result<WorkerStats> {
                heels_lab::netns::set_thread_netns(&path)?;
                pin_to_core(GENERATOR_CORE);
                let mut region = Region::registered(4096, 2048)?;
                let devices: Vec<Box<dyn Device + Send>> = vec![
                    Box::new(MemoryPort::new(frames)),
                    Box::new(XskPort::open(&mut region, "g0", 0, PortConfig::default())?),
                ];
                let mut worker =
                    Worker::new(region, devices, vec![Path { from: 0, to: 1, stage: NullForward }]);
                worker.run(&stop, Idle::Spin);
                Ok(worker.stats())
            })
        };
        // Let the rings and the veth queues fill before counting.
        std::thread::sleep(Duration::from_millis(500));
        let measured = (|| -> anyhow::Result<(u64, f64)> {
            let before = self.sink_packets()?;
            let start = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(spec.seconds));
            let after = self.sink_packets()?;
            Ok((after - before, start.elapsed().as_secs_f64()))
        })();
        stop.store(true, Ordering::Relaxed);
        let generated = generator.join().map_err(|_| anyhow::anyhow!("the generator panicked"))?;
        let worked = dut.join().map_err(|_| anyhow::anyhow!("the worker panicked"))?;
        let generated = generated.context("the generator")?;
        let worked = worked.context("the worker")?;
        let (packets, elapsed) = measured?;
        if generated.devices.get(1).is_none_or(|d| d.tx == 0) {
            bail!("the generator sent nothing");
        }
        let turns = worked.turns.max(1) as f64;
        let mut total = heels_afxdp::device::DeviceStats::default();
        for device in &worked.devices {
            total += *device;
        }
        Ok(Run {
            forwarder,
            size: frames[0].len(),
            round,
            mpps: packets as f64 / elapsed / 1e6,
            worker_busy: (turns - worked.idle_turns as f64) / turns,
            tx_full: worked.devices.iter().map(|d| d.tx_full).sum(),
            worker_rx: total.rx,
            worker_tx: total.tx,
            fill_starved: total.fill_starved,
            wakeups: total.wakeups,
            bad_descriptors: worked.bad_descriptors,
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The report as text.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "afxdp dataplane, {} flows, {} queues per veth (generator core 0, worker core 1)\n\n",
        report.flows, report.queues
    );
    out.push_str("size B | null Mpps | heels Mpps | heels/null | heels Gbit/s | in-memory Mpps/core | ns/packet | in-memory null Mpps\n");
    out.push_str("---|---|---|---|---|---|---|---\n");
    for s in &report.sizes {
        out.push_str(&format!(
            "{} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1}\n",
            s.size,
            s.null_mpps,
            s.heels_mpps,
            s.ratio,
            s.heels_gbits,
            s.in_memory_mpps_per_core,
            s.in_memory_ns_per_packet,
            s.in_memory_null_mpps
        ));
    }
    out.push_str("\nruns (forwarder size round: Mpps, worker busy, tx ring full):\n");
    for r in &report.runs {
        out.push_str(&format!(
            "  {} {} {}: {:.3} Mpps, busy {:.2}, tx_full {}, worker rx {} tx {}, fill starved {}, wakeups {}, bad descriptors {}\n",
            r.forwarder, r.size, r.round, r.mpps, r.worker_busy, r.tx_full, r.worker_rx, r.worker_tx, r.fill_starved, r.wakeups, r.bad_descriptors
        ));
    }
    out
}
