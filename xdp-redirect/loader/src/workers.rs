//! The XDP program that hands every frame of an interface to the workers
//! (`heels_to_workers`): on the host side of `heels0`, and on the input
//! port of the dataplane bench. Attached while this value lives: a worker
//! process that dies takes it with it, and frames pass to the stack again.

use std::os::fd::RawFd;

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use heels_common::{MAP_HOST_XSKS, XDP_TO_WORKERS_PROGRAM};

use crate::classifier::ClassifierError;

/// The loaded program, attached to one interface.
#[derive(Debug)]
pub struct ToWorkers {
    ebpf: Ebpf,
}

impl ToWorkers {
    /// Loads the program (its object's pinned maps live in `pin_dir`) and
    /// attaches it to `interface` in driver mode.
    pub fn attach(pin_dir: &std::path::Path, interface: &str) -> Result<Self, ClassifierError> {
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(pin_dir).load(crate::EBPF_OBJECT)?;
        let program: &mut Xdp =
            ebpf.program_mut(XDP_TO_WORKERS_PROGRAM).ok_or(ClassifierError::MissingProgram)?.try_into()?;
        program.load()?;
        program.attach(interface, XdpMode::Driver)?;
        Ok(ToWorkers { ebpf })
    }

    /// Sends the frames of receive queue `queue` to the AF_XDP socket
    /// `socket` (a descriptor that stays open while it is used).
    pub fn insert(&mut self, queue: u32, socket: RawFd) -> Result<(), ClassifierError> {
        let map = crate::find_map_mut(&mut self.ebpf, MAP_HOST_XSKS)
            .map_err(|source| ClassifierError::Map { name: MAP_HOST_XSKS, source })?;
        let mut sockets =
            XskMap::try_from(map).map_err(|source| ClassifierError::Map { name: MAP_HOST_XSKS, source })?;
        sockets.set(queue, socket, 0).map_err(|source| ClassifierError::Map { name: MAP_HOST_XSKS, source })
    }
}
