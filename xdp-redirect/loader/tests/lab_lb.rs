//! The lab's Katran-compatible IPIP LB fixture, run in the kernel with
//! BPF_PROG_TEST_RUN: its outer header must be Katran's, byte for byte
//! where Katran defines it. Needs root; without it the test fails and says so.

use aya::maps::Array;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::EbpfLoader;
use heels_common::{LabLbBackend, LabLbConfig, LAB_LB_PROGRAM, LAB_XDP_DECAP_PROGRAM};
use heels_dataplane::vectors::vector;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn run(program: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.data_out = Some(&mut out);
    let result = program.test_run(options).expect("the program runs");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn ipv4_header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn the_outer_header_is_katrans() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "the fixture test loads eBPF programs: run it as root");
    let mut ebpf = EbpfLoader::new().load(heels_bpf::LAB_LB_OBJECT).expect("the fixture loads");
    let vip = [10, 10, 100, 1];
    let lb_mac = [0x02, 0x00, 0x0a, 0x0a, 0x00, 0x03];
    let backend =
        LabLbBackend { addr: [10, 10, 3, 2], mac: [0x02, 0x00, 0x0a, 0x0a, 0x03, 0x02], pad: [0; 6] };
    let mut config: Array<_, LabLbConfig> =
        Array::try_from(ebpf.map_mut(heels_common::MAP_LAB_LB_CONFIG).unwrap()).unwrap();
    config
        .set(0, LabLbConfig { vip, vport: 80u16.to_be_bytes(), backends: 1, mac: lb_mac, pad: [0; 2] }, 0)
        .unwrap();
    let mut backends: Array<_, LabLbBackend> =
        Array::try_from(ebpf.map_mut(heels_common::MAP_LAB_LB_BACKENDS).unwrap()).unwrap();
    backends.set(0, backend, 0).unwrap();
    for name in [LAB_LB_PROGRAM, LAB_XDP_DECAP_PROGRAM] {
        let program: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        program.load().expect("the verifier accepts the fixture");
    }
    let lb: &Xdp = ebpf.program(LAB_LB_PROGRAM).unwrap().try_into().unwrap();

    // The example of the issue: a client on x.x.1.2, port 62674 (0xf4d2),
    // arrives from 172.16.(1 ^ 0xd2).(2 ^ 0xf4) = 172.16.211.246.
    let mut frame = vector("dnat-syn-before");
    frame[26..30].copy_from_slice(&[10, 10, 1, 2]);
    frame[30..34].copy_from_slice(&vip);
    frame[34..36].copy_from_slice(&62674u16.to_be_bytes());
    frame[36..38].copy_from_slice(&80u16.to_be_bytes());
    frame[15] = 0xb8; // a non-zero inner TOS: Katran's outer TOS stays 0
    let (action, out) = run(lb, &frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), frame.len() + 20);
    assert_eq!(out[0..6], backend.mac, "to the backend");
    assert_eq!(out[6..12], lb_mac, "from the LB");
    let outer = &out[14..34];
    assert_eq!(outer[0], 0x45, "IPv4, no options");
    assert_eq!(outer[1], 0, "TOS 0 (DEFAULT_TOS)");
    assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, frame.len() - 14 + 20, "total length");
    assert_eq!(outer[6..8], [0, 0], "no DF, no fragment");
    assert_eq!(outer[8], 64, "TTL 64 (DEFAULT_TTL)");
    assert_eq!(outer[9], 4, "IPIP");
    assert_eq!(outer[12..16], [172, 16, 211, 246], "Katran's outer source");
    assert_eq!(outer[16..20], backend.addr);
    assert_eq!(ipv4_header_sum(outer), 0xffff, "outer checksum");
    assert_eq!(out[34..], frame[14..], "the inner packet as it came");

    // The XDP decapsulation stand-in gives back the frame the LB received
    // (but for the MACs, which the LB rewrote).
    let decap: &Xdp = ebpf.program(LAB_XDP_DECAP_PROGRAM).unwrap().try_into().unwrap();
    let (action, inner) = run(decap, &out);
    assert_eq!(action, XDP_PASS);
    assert_eq!(inner[..12], out[..12]);
    assert_eq!(inner[12..], frame[12..]);
}
