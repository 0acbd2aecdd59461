//! The XDP classifier of the `afxdp` dataplane: load it, fill its maps, run
//! it on a frame (BPF_PROG_TEST_RUN) or attach it to an interface.

use std::collections::HashMap as StdHashMap;
use std::net::SocketAddrV4;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};
use heels_common::{
    EndpointV4, FlowV4, XdpCounter, MAP_SERVICES, MAP_STEERING, MAP_XDP_STATS, MAP_XSKS, XDP_PROGRAM,
};

/// Why the classifier could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The object did not load (the verifier log is inside).
    #[error("loading the eBPF object")]
    Load(#[from] EbpfError),
    /// The program is missing from the object or failed to load or run.
    #[error("program {XDP_PROGRAM}")]
    Program(#[from] ProgramError),
    /// A map is missing or an operation on it failed.
    #[error("map {name}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What failed.
        source: MapError,
    },
    /// The object has no program of that name or type.
    #[error("the eBPF object has no XDP program {XDP_PROGRAM}")]
    MissingProgram,
}

/// What one run of the program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP action returned (`XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// The loaded classifier.
#[derive(Debug)]
pub struct Classifier {
    ebpf: Ebpf,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> ClassifierError {
    move |source| ClassifierError::Map { name, source }
}

impl Classifier {
    /// Loads the embedded object and the XDP program into the kernel; the
    /// object's pinned maps (shared with the TC programs) live in `pin_dir`
    /// on bpffs. The steering map takes `steered_flows` flows (one per
    /// connection the workers learn: `max_connections`).
    pub fn load(pin_dir: &std::path::Path, steered_flows: u32) -> Result<Self, ClassifierError> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(heels_common::MAP_STEERING, steered_flows)
            .load(crate::EBPF_OBJECT)?;
        let program: &mut Xdp =
            ebpf.program_mut(XDP_PROGRAM).ok_or(ClassifierError::MissingProgram)?.try_into()?;
        program.load()?;
        Ok(Classifier { ebpf })
    }

    fn program(&self) -> Result<&Xdp, ClassifierError> {
        self.ebpf
            .program(XDP_PROGRAM)
            .ok_or(ClassifierError::MissingProgram)?
            .try_into()
            .map_err(ClassifierError::Program)
    }

    /// Declares a service (VIP:vport) of this host whose HEELS SYNs go to
    /// the workers; `local_port` is where the server listens.
    pub fn add_service(&mut self, vip: SocketAddrV4, local_port: u16) -> Result<(), ClassifierError> {
        let map = crate::find_map_mut(&mut self.ebpf, MAP_SERVICES).map_err(map_error(MAP_SERVICES))?;
        let mut services: HashMap<_, EndpointV4, [u8; 2]> =
            HashMap::try_from(map).map_err(map_error(MAP_SERVICES))?;
        let key = EndpointV4 { addr: vip.ip().octets(), port: vip.port().to_be_bytes(), pad: [0; 2] };
        services.insert(key, local_port.to_be_bytes(), 0).map_err(map_error(MAP_SERVICES))
    }

    /// Sends every packet of `flow` (as on the wire) to the workers.
    pub fn steer(&mut self, flow: FlowV4) -> Result<(), ClassifierError> {
        let map = crate::find_map_mut(&mut self.ebpf, MAP_STEERING).map_err(map_error(MAP_STEERING))?;
        let mut steering: HashMap<_, FlowV4, u8> = HashMap::try_from(map).map_err(map_error(MAP_STEERING))?;
        steering.insert(flow, 1, 0).map_err(map_error(MAP_STEERING))
    }

    /// A handle of its own on the steering map (another descriptor of the
    /// same map), for a worker thread to add flows and the control thread
    /// to remove them.
    pub fn steering(&self) -> Result<HashMap<MapData, FlowV4, u8>, ClassifierError> {
        let map = crate::find_map(&self.ebpf, MAP_STEERING).map_err(map_error(MAP_STEERING))?;
        let fd = match map {
            aya::maps::Map::HashMap(data) => std::os::fd::AsFd::as_fd(data.fd()).try_clone_to_owned(),
            _ => return Err(map_error(MAP_STEERING)(MapError::InvalidName { name: MAP_STEERING.into() })),
        };
        let fd = fd.map_err(|io_error| {
            map_error(MAP_STEERING)(MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }))
        })?;
        let data = MapData::from_fd(fd).map_err(map_error(MAP_STEERING))?;
        HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_error(MAP_STEERING))
    }

    /// Attaches the program to `interface` (driver mode) through a link
    /// this value owns: when it is dropped, or the process dies, the
    /// program goes and every frame reaches the stack (and the TC
    /// programs) again.
    pub fn attach(&mut self, interface: &str) -> Result<(), ClassifierError> {
        let program: &mut Xdp =
            self.ebpf.program_mut(XDP_PROGRAM).ok_or(ClassifierError::MissingProgram)?.try_into()?;
        program.attach(interface, XdpMode::Driver)?;
        Ok(())
    }

    /// Sends what receive queue `queue` classifies to the AF_XDP socket
    /// `socket` (a descriptor that stays open while it is used).
    pub fn insert_socket(&mut self, queue: u32, socket: std::os::fd::RawFd) -> Result<(), ClassifierError> {
        let map = crate::find_map_mut(&mut self.ebpf, MAP_XSKS).map_err(map_error(MAP_XSKS))?;
        let mut sockets = XskMap::try_from(map).map_err(map_error(MAP_XSKS))?;
        sockets.set(queue, socket, 0).map_err(map_error(MAP_XSKS))
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<StdHashMap<XdpCounter, u64>, ClassifierError> {
        let map = crate::find_map(&self.ebpf, MAP_XDP_STATS).map_err(map_error(MAP_XDP_STATS))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_error(MAP_XDP_STATS))?;
        let mut out = StdHashMap::new();
        for counter in XdpCounter::ALL {
            let values = stats.get(&(counter as u32), 0).map_err(map_error(MAP_XDP_STATS))?;
            out.insert(counter, values.iter().sum());
        }
        Ok(out)
    }

    /// Runs the program once on `frame` in the kernel (BPF_PROG_TEST_RUN).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutcome, ClassifierError> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        let result = self.program()?.test_run(options)?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome { action: result.return_value, frame: out })
    }
}
