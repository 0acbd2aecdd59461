//! The afxdp engine on real rings, in namespaces of its own: frames from a
//! generator worker cross a heels worker between two veth pairs and reach a
//! capturing worker as the core rewrites them; and `heels bench dataplane`
//! reports what it promises and leaves nothing behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use heels_afxdp::device::{Device, MemoryPort, PortConfig, XskPort};
use heels_afxdp::stage::{Clock, HostEgress};
use heels_afxdp::umem::Region;
use heels_afxdp::worker::{Idle, NullForward, Path as WorkerPath, Worker};
use heels_bench::dataplane::Bed;
use heels_bench::synthetic;
use heels_dataplane::checksum::Mode;
use heels_dataplane::translate;
use heels_lab::netns::set_thread_netns;

/// The sink's two kinds of device, so that the capture can be read back.
enum Sink {
    Port(Box<XskPort>),
    Memory(MemoryPort),
}

impl Device for Sink {
    fn refill(&mut self, region: &mut Region, share: u32) {
        match self {
            Sink::Port(d) => d.refill(region, share),
            Sink::Memory(d) => d.refill(region, share),
        }
    }

    fn receive(&mut self, region: &mut Region, out: &mut Vec<heels_afxdp::umem::Held>) {
        match self {
            Sink::Port(d) => d.receive(region, out),
            Sink::Memory(d) => d.receive(region, out),
        }
    }

    fn transmit(&mut self, region: &mut Region, frames: &mut Vec<heels_afxdp::umem::Held>) {
        match self {
            Sink::Port(d) => d.transmit(region, frames),
            Sink::Memory(d) => d.transmit(region, frames),
        }
    }

    fn stats(&self) -> heels_afxdp::device::DeviceStats {
        match self {
            Sink::Port(d) => d.stats(),
            Sink::Memory(d) => d.stats(),
        }
    }
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "AF_XDP sockets and namespaces need root");
}

#[test]
fn frames_cross_a_worker_on_veth_rewritten_as_the_core_does() {
    assert_root();
    let bed = Bed::create(1).expect("the bed");
    let flows = 64u32;
    let frames = synthetic::egress_frames(flows, 200);
    let (table, refused) = synthetic::table(flows);
    assert_eq!(refused, 0);
    let mut expected: Vec<Vec<u8>> = frames
        .iter()
        .map(|frame| {
            let mut frame = frame.clone();
            let verdict = translate::client_egress(
                &mut frame,
                Mode::Full,
                &table,
                &heels_dataplane::conntrack::SynEnds::new(4),
                1,
            );
            assert_eq!(verdict, translate::Verdict::Rewritten { start: 0 });
            frame
        })
        .collect();
    let table = Arc::new(table);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(20);

    // The sink: g1's frames into a capturing memory device.
    let (sink_ready, sink_started) = mpsc::channel();
    let sink = {
        let (path, pins) = (bed.generator().path(), bed.pin_dir().to_path_buf());
        std::thread::spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
            set_thread_netns(&path)?;
            let mut region = Region::registered(1024, 512)?;
            let port = XskPort::open(&mut region, "g1", 0, PortConfig { ring_size: 512, zero_copy: false })?;
            let mut program = heels_bpf::ToWorkers::attach(&pins, "g1")?;
            program.insert(0, port.fd())?;
            let devices =
                vec![Sink::Port(Box::new(port)), Sink::Memory(MemoryPort::once_capturing(Vec::new()))];
            let mut worker =
                Worker::new(region, devices, vec![WorkerPath { from: 0, to: 1, stage: NullForward }]);
            sink_ready.send(()).ok();
            while worker.stats().devices[1].tx < u64::from(flows) && Instant::now() < deadline {
                worker.turn();
            }
            drop(program);
            match &worker.devices()[1] {
                Sink::Memory(memory) => Ok(memory.sent().to_vec()),
                Sink::Port(_) => unreachable!("device 1 is the memory device"),
            }
        })
    };
    sink_started.recv_timeout(Duration::from_secs(10)).expect("the sink starts");

    // The device under test: d0 -> heels client egress -> d1. It starts
    // turning only once the generator has sent everything: frames that
    // arrive before a worker's first turn must not be lost.
    let (all_sent, generator_done) = mpsc::channel();
    let (dut_ready, dut_started) = mpsc::channel();
    let dut = {
        let (path, pins, stop, table) =
            (bed.dut().path(), bed.pin_dir().to_path_buf(), stop.clone(), table.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            set_thread_netns(&path)?;
            let mut region = Region::registered(1024, 512)?;
            let config = PortConfig { ring_size: 512, zero_copy: false };
            let input = XskPort::open(&mut region, "d0", 0, config)?;
            let output = XskPort::open(&mut region, "d1", 0, config)?;
            let mut program = heels_bpf::ToWorkers::attach(&pins, "d0")?;
            program.insert(0, input.fd())?;
            let config = Arc::new(heels_dataplane::fuzzing::config());
            let syn_ends = Arc::new(heels_dataplane::conntrack::SynEnds::new(64));
            let stage = HostEgress::new(config, table, syn_ends, Clock::Fixed(1));
            let mut worker =
                Worker::new(region, vec![input, output], vec![WorkerPath { from: 0, to: 1, stage }]);
            dut_ready.send(()).ok();
            generator_done.recv_timeout(Duration::from_secs(10)).ok();
            worker.run(&stop, Idle::Sleep(Duration::from_micros(50)));
            Ok(worker.stats().devices[1].tx)
        })
    };
    dut_started.recv_timeout(Duration::from_secs(10)).expect("the worker starts");

    // The generator: every frame once, g0 -> d0.
    let generator = {
        let (path, frames, stop) = (bed.generator().path(), frames.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<heels_afxdp::worker::WorkerStats> {
            set_thread_netns(&path)?;
            let mut region = Region::registered(1024, 512)?;
            let port = XskPort::open(&mut region, "g0", 0, PortConfig { ring_size: 512, zero_copy: false })?;
            let devices: Vec<Box<dyn Device + Send>> =
                vec![Box::new(MemoryPort::once_capturing(frames)), Box::new(port)];
            let mut worker =
                Worker::new(region, devices, vec![WorkerPath { from: 0, to: 1, stage: NullForward }]);
            // Keep turning (the ring is kicked while frames wait on it)
            // until the sink has every frame or gives up.
            let mut all_sent = Some(all_sent);
            while !stop.load(Ordering::Relaxed) {
                if worker.turn() == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                if worker.stats().devices[1].tx == u64::from(flows) {
                    all_sent.take().map(|done| done.send(()));
                }
            }
            Ok(worker.stats())
        })
    };

    let mut captured = sink.join().expect("the sink thread").expect("the sink");
    stop.store(true, Ordering::Relaxed);
    let generated = generator.join().expect("the generator thread").expect("the generator");
    let forwarded = dut.join().expect("the worker thread").expect("the worker");
    // On failure, what each link counted says where frames stopped.
    let links = || {
        let mut seen = String::new();
        for (ns, link) in
            [(bed.generator(), "g0"), (bed.dut(), "d0"), (bed.dut(), "d1"), (bed.generator(), "g1")]
        {
            let stats =
                ns.exec("ethtool", &["-S", link]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let nonzero: Vec<String> = stats
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_end().ends_with(": 0"))
                .map(|l| l.trim().to_string())
                .collect();
            seen.push_str(&format!("{link}: {} | ", nonzero.join(", ")));
        }
        format!("generator {generated:?}; links {seen}")
    };
    assert_eq!(generated.devices[1].tx, u64::from(flows), "{}", links());
    assert_eq!(forwarded, u64::from(flows), "the worker sent every frame on: {}", links());
    captured.sort();
    expected.sort();
    assert_eq!(captured.len(), expected.len(), "every frame reached g1");
    assert_eq!(captured, expected, "g1 got the core's bytes");
}

/// `heels bench dataplane --json -` prints one object with the figures the
/// issue names, from runs that moved frames, and removes its namespaces
/// and pins.
#[test]
fn the_dataplane_bench_reports_both_forwarders_and_cleans_up() {
    assert_root();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_heels"))
        .args(["bench", "dataplane", "--json", "-", "--seconds", "0.3", "--rounds", "1", "--sizes", "64,600"])
        .args(["--flows", "128", "--queues", "2"])
        .output()
        .expect("heels runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object on stdout");
    for key in ["null_mpps", "heels_mpps", "ratio", "in_memory_mpps_per_core"] {
        let value = report[key].as_f64().unwrap_or_else(|| panic!("{key} in {report}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    let sizes = report["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 2);
    assert_eq!(sizes[1]["size"], 600);
    for run in report["runs"].as_array().expect("runs") {
        assert!(run["worker_rx"].as_u64().unwrap() > 0, "the worker received frames: {run}");
        assert_eq!(run["bad_descriptors"], 0, "{run}");
    }
    let pid = report["pid"].as_u64().expect("pid");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
    let prefix = format!("hdb{pid}-");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&prefix),
        "the bench's namespaces are gone"
    );
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/hdb{pid}")).exists(), "its pins are gone");
}
