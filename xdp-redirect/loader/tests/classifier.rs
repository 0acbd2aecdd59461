//! The XDP classifier, loaded into the running kernel and run with
//! BPF_PROG_TEST_RUN on the frames of docs/protocol.md. Needs root (CAP_BPF
//! and CAP_NET_ADMIN); without it the test fails and says so.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use heels_bpf::Classifier;
use heels_common::{FlowV4, XdpCounter};
use heels_dataplane::vectors::vector;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// A classifier whose pinned maps live in a directory of its own, removed
/// when the test ends, passed or failed; with an AF_XDP socket on receive
/// queue 0 (the queue BPF_PROG_TEST_RUN runs on) or none.
struct Loaded {
    classifier: Classifier,
    dir: PathBuf,
    socket: Option<OwnedFd>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::ops::Deref for Loaded {
    type Target = Classifier;
    fn deref(&self) -> &Classifier {
        &self.classifier
    }
}

impl std::ops::DerefMut for Loaded {
    fn deref_mut(&mut self) -> &mut Classifier {
        &mut self.classifier
    }
}

fn load() -> Loaded {
    assert!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the classifier tests load eBPF programs and must run as root"
    );
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/heels-test-classifier-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("bpffs is mounted at /sys/fs/bpf");
    let classifier = Classifier::load(&dir, heels_common::MAX_STEERED_FLOWS)
        .expect("the classifier loads and passes the verifier");
    Loaded { classifier, dir, socket: None }
}

/// An AF_XDP socket for queue 0 of the classifier's socket map. Not bound
/// to a device: the map takes any AF_XDP socket, and under
/// BPF_PROG_TEST_RUN the redirect is the program's verdict only (no frame
/// is delivered), which is what these tests check.
fn with_socket(mut classifier: Loaded) -> Loaded {
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "an AF_XDP socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    classifier.insert_socket(0, socket.as_raw_fd()).expect("the socket map takes the socket");
    classifier.socket = Some(socket);
    classifier
}

/// Runs `test` on a classifier `make` returns, once without a socket and
/// once with one.
fn both_ways(make: fn() -> Loaded, test: impl Fn(&mut Loaded)) {
    test(&mut make());
    test(&mut with_socket(make()));
}

/// Runs the program on `frame`; returns the action and the counters that moved.
fn run(classifier: &Loaded, frame: &[u8]) -> (u32, HashMap<XdpCounter, u64>) {
    let before = classifier.counters().unwrap();
    let outcome = classifier.test_run(frame).unwrap();
    assert_eq!(outcome.frame, frame, "the classifier never changes a frame");
    let after = classifier.counters().unwrap();
    let moved = after
        .into_iter()
        .filter_map(|(counter, value)| {
            let delta = value - before[&counter];
            (delta != 0).then_some((counter, delta))
        })
        .collect();
    (outcome.action, moved)
}

/// Runs `frame` and checks the counters that moved are `counters`, and
/// the verdict: a frame for the workers is redirected when queue 0 has a
/// socket, and passed (counted `NoSocket`) when it has none; any other
/// frame is passed.
fn expect(classifier: &Loaded, frame: &[u8], counters: &[XdpCounter]) {
    let (action, moved) = run(classifier, frame);
    let for_workers = !counters.iter().all(|c| matches!(c, XdpCounter::Passed | XdpCounter::BadOption));
    let mut expected: HashMap<XdpCounter, u64> = counters.iter().map(|&c| (c, 1)).collect();
    let socket = classifier.socket.is_some();
    if for_workers && !socket {
        expected.insert(XdpCounter::NoSocket, 1);
    }
    let verdict = if for_workers && socket { XDP_REDIRECT } else { XDP_PASS };
    assert_eq!(action, verdict, "counted {moved:?} (socket on queue 0: {socket})");
    assert_eq!(moved, expected, "socket on queue 0: {socket}");
}

fn with_service() -> Loaded {
    let mut classifier = load();
    classifier.add_service(SocketAddrV4::new([10, 10, 100, 1].into(), 80), 8080).unwrap();
    classifier
}

#[test]
fn syns_with_the_option_for_a_service_go_to_the_workers() {
    both_ways(with_service, |classifier| {
        for name in ["fullnat-syn-before", "dnat-syn-before"] {
            expect(classifier, &vector(name), &[XdpCounter::SynWithOption]);
        }
        expect(classifier, &vector("ipip-syn-before"), &[XdpCounter::Ipip]);
        expect(classifier, &vector("syn-ack-before"), &[XdpCounter::SynAckWithOption]);
    });
}

#[test]
fn a_syn_for_another_service_passes() {
    both_ways(load, |classifier| expect(classifier, &vector("fullnat-syn-before"), &[XdpCounter::Passed]));
}

#[test]
fn data_passes_unless_its_flow_is_steered() {
    both_ways(with_service, data_passes_unless_steered);
}

fn data_passes_unless_steered(classifier: &mut Loaded) {
    let frame = vector("ingress-data-before");
    expect(classifier, &frame, &[XdpCounter::Passed]);
    classifier
        .steer(FlowV4 {
            src_addr: [10, 10, 3, 2],
            dst_addr: [10, 10, 1, 2],
            src_port: 8080u16.to_be_bytes(),
            dst_port: 40000u16.to_be_bytes(),
        })
        .unwrap();
    expect(classifier, &frame, &[XdpCounter::Steered]);
    // The other direction of the flow is not steered.
    expect(classifier, &vector("egress-data-before"), &[XdpCounter::Passed]);
}

#[test]
fn malformed_and_foreign_frames_pass() {
    both_ways(with_service, malformed_and_foreign_pass);
}

fn malformed_and_foreign_pass(classifier: &mut Loaded) {
    let classifier = &*classifier;
    // The SYN's MSS option given length 0.
    let mut frame = vector("dnat-syn-before");
    frame[55] = 0;
    expect(classifier, &frame, &[XdpCounter::BadOption]);
    // The HEELS option cut by a smaller data offset (10 words: 20 option bytes).
    let mut frame = vector("dnat-syn-before");
    frame[46] = 0xa0;
    expect(classifier, &frame, &[XdpCounter::Passed]);
    // ARP.
    let mut frame = vector("dnat-syn-before");
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    expect(classifier, &frame, &[XdpCounter::Passed]);
    // Truncated inside the TCP header.
    expect(classifier, &vector("dnat-syn-before")[..40], &[XdpCounter::Passed]);
    // A fragment.
    let mut frame = vector("dnat-syn-before");
    frame[20] = 0x20;
    expect(classifier, &frame, &[XdpCounter::Passed]);
}
