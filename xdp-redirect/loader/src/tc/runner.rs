//! Programs run on one frame from userspace (`BPF_PROG_TEST_RUN`): the
//! afxdp workers' questions to the kernel (may this SYN be answered?), the
//! SYN marker of an afxdp server's `heels0`, and the tests' runner.

use super::*;

/// `heels_mark_translated` on the ingress of an afxdp server's `heels0`,
/// attached while this value lives (by a link the process owns: it goes
/// with the process, and with `heels0`).
#[derive(Debug)]
pub struct SynMarker {
    _ebpf: Ebpf,
}

impl SynMarker {
    /// Loads the program over the pinned maps of `maps_dir` and attaches
    /// it to `interface`'s ingress.
    pub fn attach(maps_dir: &Path, interface: &str) -> Result<Self, InstanceError> {
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(maps_dir).load(crate::EBPF_OBJECT)?;
        let name = TC_MARK_TRANSLATED_PROGRAM;
        let program = load_classifier(&mut ebpf, name)?;
        program
            .attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(program_error(name))?;
        Ok(SynMarker { _ebpf: ebpf })
    }
}

/// Which TC program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `heels_tc_ingress`.
    Ingress,
    /// `heels_tc_egress`.
    Egress,
}

/// An instance's TC programs loaded a second time, unattached, over the
/// instance's own pinned maps (configuration, connections, records, socket
/// storage): to run them on frames with BPF_PROG_TEST_RUN exactly as the
/// attached ones would meet them. The conformance suite uses it. The
/// kernel runs a test on the loopback device of the calling thread's
/// network namespace, where socket lookups look.
#[derive(Debug)]
pub struct ProgramRunner {
    ebpf: Ebpf,
}

impl ProgramRunner {
    /// Loads the programs over the pins of a running instance.
    pub fn load(instance: &str) -> Result<Self, InstanceError> {
        Ok(ProgramRunner { ebpf: load_over_pins(instance, &[TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM])? })
    }

    /// Runs one program on `frame`: what it did with it, and the frame as
    /// it left the program (shorter after a decapsulation).
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Result<TcOutcome, InstanceError> {
        use aya::programs::{TestRun, TestRunOptions};
        let name = match hook {
            Hook::Ingress => TC_INGRESS_PROGRAM,
            Hook::Egress => TC_EGRESS_PROGRAM,
        };
        let program = loaded_classifier(&self.ebpf, name)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        let result = program.test_run(options).map_err(program_error(name))?;
        out.truncate(result.data_size_out as usize);
        Ok(TcOutcome { action: TcAction::from_return(result.return_value), frame: out })
    }
}

/// A TC program's verdict on a frame (its return value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcAction {
    /// `TC_ACT_OK`: the frame goes on.
    Ok,
    /// `TC_ACT_SHOT`: dropped.
    Shot,
    /// `TC_ACT_REDIRECT`: sent to another device.
    Redirect,
    /// Any other value.
    Other(u32),
}

impl TcAction {
    /// The action a program's return value names.
    pub fn from_return(value: u32) -> TcAction {
        match value {
            0 => TcAction::Ok,
            2 => TcAction::Shot,
            7 => TcAction::Redirect,
            other => TcAction::Other(other),
        }
    }
}

/// What [`ProgramRunner::run`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcOutcome {
    /// The program's verdict.
    pub action: TcAction,
    /// The frame as it left the program.
    pub frame: Vec<u8>,
}

/// The TC ingress program's check of whether a socket answers a translated
/// SYN, for the afxdp workers: [`SYN_ANSWER_PROGRAM`] loaded over a running
/// instance's maps and run with BPF_PROG_TEST_RUN in the calling thread's
/// network namespace (one system call per SYN with the SYN form).
#[derive(Debug)]
pub struct SynAnswerer {
    ebpf: Ebpf,
}

impl SynAnswerer {
    /// Loads the program over the pins of a running instance.
    pub fn load(instance: &str) -> Result<Self, InstanceError> {
        Ok(SynAnswerer { ebpf: load_over_pins(instance, &[SYN_ANSWER_PROGRAM])? })
    }

    /// Whether a socket will answer a SYN translated to `flow` for `vip`:
    /// `Ok(true)` when it is taken from another connection's TIME_WAIT;
    /// else the counter of the refusal.
    pub fn ask(
        &self,
        flow: &FlowV4,
        vip: &EndpointV4,
        clock: &SynClock,
    ) -> Result<Result<bool, TcCounter>, InstanceError> {
        use aya::programs::{TestRun, TestRunOptions};
        let name = SYN_ANSWER_PROGRAM;
        let program = loaded_classifier(&self.ebpf, name)?;
        let frame = syn_answer_request(flow, vip, clock);
        let mut options = TestRunOptions::new();
        options.data_in = Some(&frame);
        let answer = program.test_run(options).map_err(program_error(name))?.return_value;
        Ok(match answer {
            syn_answer::ANSWERS => Ok(false),
            syn_answer::ANSWERS_ONTO_TIME_WAIT => Ok(true),
            refused => Err(refused
                .checked_sub(syn_answer::REFUSED)
                .and_then(|index| TcCounter::ALL.get(index as usize).copied())
                .unwrap_or(TcCounter::Errors)),
        })
    }
}

/// The object loaded over the pinned maps of a running instance, with the
/// classifiers `programs` loaded (not attached).
pub(super) fn load_over_pins(instance: &str, programs: &[&'static str]) -> Result<Ebpf, InstanceError> {
    let maps_dir = instance_dir(instance).join("maps");
    if !maps_dir.is_dir() {
        return Err(InstanceError::NoInstance(instance.to_owned()));
    }
    let mut ebpf = EbpfLoader::new().default_map_pin_directory(&maps_dir).load(crate::EBPF_OBJECT)?;
    for name in programs {
        load_classifier(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

/// The loaded classifier `name` of `ebpf`.
pub(super) fn loaded_classifier<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a SchedClassifier, InstanceError> {
    ebpf.program(name)
        .ok_or(InstanceError::Program { name, source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(program_error(name))
}

/// The frame [`SYN_ANSWER_PROGRAM`] reads (`heels_common::syn_answer`):
/// Ethernet (source field: VIP:vport), IPv4, and a TCP SYN with the
/// sequence number and, when the SYN had one, a timestamp option.
pub(super) fn syn_answer_request(flow: &FlowV4, vip: &EndpointV4, clock: &SynClock) -> [u8; 66] {
    let mut frame = [0u8; 66];
    frame[syn_answer::VIP_AT..syn_answer::VIP_AT + 4].copy_from_slice(&vip.addr);
    frame[syn_answer::VIP_AT + 4..syn_answer::VIP_AT + 6].copy_from_slice(&vip.port);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&52u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&flow.src_addr);
    ip[16..20].copy_from_slice(&flow.dst_addr);
    let tcp = &mut frame[34..66];
    tcp[0..2].copy_from_slice(&flow.src_port);
    tcp[2..4].copy_from_slice(&flow.dst_port);
    tcp[4..8].copy_from_slice(&clock.seq.to_be_bytes());
    // 32 bytes of header (8 words); SYN.
    tcp[12] = 8 << 4;
    tcp[13] = 0x02;
    // NOP, NOP, then the timestamp option (or two more NOP words).
    tcp[20..32].fill(1);
    if let Some(tsval) = clock.tsval {
        tcp[22..24].copy_from_slice(&[8, 10]);
        tcp[24..28].copy_from_slice(&tsval.to_be_bytes());
        tcp[28..32].fill(0);
    }
    frame
}
