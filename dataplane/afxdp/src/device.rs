//! Where a worker's frames come from and go to: an AF_XDP socket on one
//! queue of one interface ([`XskPort`]), or memory ([`MemoryPort`], the
//! in-memory mode: the same worker loop with no kernel).

use std::ffi::CString;
use std::num::NonZeroU32;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig};

use crate::umem::{Held, Region, COPY_BLOCK, FRAME_SIZE};
use crate::Error;

/// One end of a worker's paths.
pub trait Device {
    /// Reaps frames the device has sent (back to the region) and gives it
    /// free ones to receive into, up to `share` waiting at once (the
    /// worker's even split, so that an idle queue cannot hoard frames).
    fn refill(&mut self, region: &mut Region, share: u32);
    /// Receives up to `out`'s spare capacity of frames into `out`.
    fn receive(&mut self, region: &mut Region, out: &mut Vec<Held>);
    /// Sends the frames of `frames` (drained); a frame the device has no
    /// room for is freed and counted in [`DeviceStats::tx_full`].
    fn transmit(&mut self, region: &mut Region, frames: &mut Vec<Held>);
    /// What the device counted.
    fn stats(&self) -> DeviceStats;
    /// The descriptor that turns readable when frames arrive (for an idle
    /// worker's wait); `None` for a device without one.
    fn fd(&self) -> Option<i32> {
        None
    }
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn refill(&mut self, region: &mut Region, share: u32) {
        (**self).refill(region, share)
    }

    fn receive(&mut self, region: &mut Region, out: &mut Vec<Held>) {
        (**self).receive(region, out)
    }

    fn transmit(&mut self, region: &mut Region, frames: &mut Vec<Held>) {
        (**self).transmit(region, frames)
    }

    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }

    fn fd(&self) -> Option<i32> {
        (**self).fd()
    }
}

/// Counters of one device, kept by the worker that owns it (plain
/// integers: no atomic per packet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames received.
    pub rx: u64,
    /// Frames handed to the kernel to send.
    pub tx: u64,
    /// Bytes handed to the kernel to send.
    pub tx_bytes: u64,
    /// Frames freed because the transmit ring was full.
    pub tx_full: u64,
    /// Times the fill ring was empty when the worker looked (the kernel
    /// had nowhere to receive into).
    pub fill_starved: u64,
    /// Wakeup system calls made (transmit kicks and fill polls).
    pub wakeups: u64,
}

impl std::ops::AddAssign for DeviceStats {
    fn add_assign(&mut self, other: DeviceStats) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.tx_bytes += other.tx_bytes;
        self.tx_full += other.tx_full;
        self.fill_starved += other.fill_starved;
        self.wakeups += other.wakeups;
    }
}

/// Wakeups one transmit may make: a batch of 64 leaves in 2 in copy mode
/// (the kernel sends at most 32 frames a wakeup); the rest of a ring that
/// backed up waits for the next turns.
const MAX_KICKS_PER_BATCH: u32 = 4;

/// Ring sizes and bind flags of the sockets a worker opens.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// Entries of each ring (rx, tx, fill, completion); a power of two.
    pub ring_size: u32,
    /// Ask the driver for zero copy (refused on veth: copy mode is used).
    pub zero_copy: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig { ring_size: 2048, zero_copy: false }
    }
}

/// An AF_XDP socket bound to one queue of one interface, sharing its
/// worker's UMEM: its own fill and completion rings, receive and
/// transmit rings, need_wakeup on.
pub struct XskPort {
    device: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    stats: DeviceStats,
    name: String,
    queue: u32,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort").field("interface", &self.name).field("queue", &self.queue).finish()
    }
}

fn socket_error(what: &'static str) -> impl FnOnce(xdpilone::Errno) -> Error {
    move |e| Error::Socket { what, errno: e.get_raw() }
}

impl XskPort {
    /// Opens and binds a socket on `interface` queue `queue` with the
    /// region's UMEM. The first socket of a region shares the UMEM's own
    /// descriptor; later ones bind with `XDP_SHARED_UMEM`.
    pub fn open(
        region: &mut Region,
        interface: &str,
        queue: u32,
        config: PortConfig,
    ) -> Result<XskPort, Error> {
        let first = region.take_umem_socket();
        let umem = region.umem().ok_or(Error::NotRegistered)?;
        let name = CString::new(interface).map_err(|_| Error::Interface(interface.to_string()))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(|_| Error::Interface(interface.to_string()))?;
        info.set_queue(queue);
        let socket = if first {
            Socket::with_shared(&info, umem).map_err(socket_error("creating the socket"))?
        } else {
            Socket::new(&info).map_err(socket_error("creating the socket"))?
        };
        let device = umem.fq_cq(&socket).map_err(socket_error("making the fill and completion rings"))?;
        // A socket sharing another's UMEM may not name bind flags: it takes
        // the first socket's (need_wakeup, copy or zero copy).
        let mut bind_flags = 0;
        if first {
            bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
            if config.zero_copy {
                bind_flags |= SocketConfig::XDP_BIND_ZEROCOPY;
            }
        }
        let rings = SocketConfig {
            rx_size: NonZeroU32::new(config.ring_size),
            tx_size: NonZeroU32::new(config.ring_size),
            bind_flags,
        };
        let user = umem.rx_tx(&socket, &rings).map_err(socket_error("making the rx and tx rings"))?;
        let rx = user.map_rx().map_err(socket_error("mapping the rx ring"))?;
        let tx = user.map_tx().map_err(socket_error("mapping the tx ring"))?;
        // A queue whose previous socket just closed stays busy until the
        // kernel has released it (deferred work): retry for up to a second.
        let mut tries = 0;
        while let Err(e) = umem.bind(&user) {
            tries += 1;
            if e.get_raw() != libc::EBUSY || tries == 50 {
                return Err(socket_error("binding")(e));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(XskPort { device, rx, tx, stats: DeviceStats::default(), name: interface.to_string(), queue })
    }

    /// The socket's descriptor, for the XSKMAP of the XDP program.
    pub fn fd(&self) -> i32 {
        self.rx.as_raw_fd()
    }
}

impl Device for XskPort {
    fn refill(&mut self, region: &mut Region, share: u32) {
        let mut reader = self.device.complete(u32::MAX);
        while let Some(addr) = reader.read() {
            region.reclaim(addr);
        }
        reader.release();
        drop(reader);
        let wanted = share.saturating_sub(self.device.pending()).min(region.free_frames() as u32);
        if wanted > 0 {
            let mut writer = self.device.fill(wanted);
            while writer.capacity() > 0 {
                let Some(addr) = region.lend() else { break };
                if !writer.insert_once(addr) {
                    region.unlend(addr);
                    break;
                }
            }
            writer.commit();
        }
        if self.device.pending() == 0 {
            self.stats.fill_starved += 1;
        }
        // In copy mode the kernel sends at most 32 frames per wakeup: what
        // is left on the ring waits for the next one, even in a turn that
        // adds nothing.
        if self.tx.pending() > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
            self.stats.wakeups += 1;
        }
    }

    fn receive(&mut self, region: &mut Region, out: &mut Vec<Held>) {
        let room = (out.capacity() - out.len()) as u32;
        let mut reader = self.rx.receive(room);
        while let Some(desc) = reader.read() {
            if let Some(held) = region.receive(desc) {
                out.push(held);
                self.stats.rx += 1;
            }
        }
        reader.release();
        drop(reader);
        // The kernel waits for a poll before it uses a refilled ring again.
        if out.is_empty() && self.device.needs_wakeup() {
            self.device.wake();
            self.stats.wakeups += 1;
        }
    }

    fn transmit(&mut self, region: &mut Region, frames: &mut Vec<Held>) {
        if frames.is_empty() {
            return;
        }
        let mut pending = frames.drain(..).peekable();
        let mut sent = 0;
        // A reservation counts free slots from the ring's cached view of
        // the kernel's progress, refreshed only once that view shows the
        // ring full: what the first one could not take, a second asks for
        // with a fresh view. Only then is the ring really full.
        for _ in 0..2 {
            if pending.peek().is_none() {
                break;
            }
            let mut writer = self.tx.transmit(pending.len() as u32);
            // `capacity` is what was reserved, not what is left of it.
            for _ in 0..writer.capacity() {
                let Some(held) = pending.next() else { break };
                if writer.insert_once(held.descriptor()) {
                    self.stats.tx_bytes += held.len() as u64;
                    region.send(held);
                    sent += 1;
                } else {
                    region.release(held);
                    self.stats.tx_full += 1;
                }
            }
            writer.commit();
        }
        for held in pending {
            region.release(held);
            self.stats.tx_full += 1;
        }
        self.stats.tx += sent;
        // Copy mode sends at most 32 frames a wakeup: kick until the batch
        // is out (or the kernel stops taking), so the ring cannot fill up
        // under a steady stream of full batches.
        let mut kicks = 0;
        while self.tx.needs_wakeup() && kicks < MAX_KICKS_PER_BATCH {
            let before = self.tx.pending();
            self.tx.wake();
            self.stats.wakeups += 1;
            kicks += 1;
            let after = self.tx.pending();
            if after == 0 || after == before {
                break;
            }
        }
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn fd(&self) -> Option<i32> {
        Some(XskPort::fd(self))
    }
}

/// A device in memory: it "receives" copies of template frames into the
/// chunks it was lent, in turn, as a NIC would write them, and "sends" by
/// counting and taking the chunk straight back, as a NIC completes.
#[derive(Debug)]
pub struct MemoryPort {
    /// Each template padded to whole [`COPY_BLOCK`]s, with its length.
    templates: Vec<(Vec<u8>, u32)>,
    next: usize,
    limit: Option<u64>,
    lent: Vec<u64>,
    sent: Option<Vec<Vec<u8>>>,
    stats: DeviceStats,
}

impl MemoryPort {
    /// A device that receives `templates` over and over, in order.
    pub fn new(templates: Vec<Vec<u8>>) -> MemoryPort {
        let templates = templates.into_iter().map(padded).collect();
        MemoryPort {
            templates,
            next: 0,
            limit: None,
            lent: Vec::new(),
            sent: None,
            stats: DeviceStats::default(),
        }
    }

    /// A device that receives each of `templates` once and keeps a copy
    /// of every frame it sends (tests: an allocation per frame).
    pub fn once_capturing(templates: Vec<Vec<u8>>) -> MemoryPort {
        let limit = Some(templates.len() as u64);
        MemoryPort { limit, sent: Some(Vec::new()), ..MemoryPort::new(templates) }
    }

    /// A device that receives only what it is fed ([`MemoryPort::feed`]),
    /// each frame once, and keeps a copy of every frame it sends (tests,
    /// the fuzz targets).
    pub fn fed() -> MemoryPort {
        MemoryPort::once_capturing(Vec::new())
    }

    /// Queues `frame` to be received after those fed before it; false
    /// (nothing queued) for a frame no chunk holds, as a NIC drops a frame
    /// longer than its buffers.
    pub fn feed(&mut self, frame: &[u8]) -> bool {
        if frame.len() > FRAME_SIZE as usize {
            return false;
        }
        self.templates.push(padded(frame.to_vec()));
        // Received in order, each once: the next is the first not received.
        self.next = self.stats.rx as usize;
        self.limit = Some(self.limit.unwrap_or(0) + 1);
        true
    }

    /// The frames sent so far, when capturing.
    pub fn sent(&self) -> &[Vec<u8>] {
        self.sent.as_deref().unwrap_or_default()
    }

    /// Chunks the device was lent and holds (waiting for frames).
    pub fn lent(&self) -> usize {
        self.lent.len()
    }
}

/// A frame padded to whole [`COPY_BLOCK`]s, with its length: written by
/// fixed-size moves (a NIC's writes cost the CPU nothing, so the device's
/// copy should cost little).
fn padded(mut bytes: Vec<u8>) -> (Vec<u8>, u32) {
    let len = bytes.len() as u32;
    bytes.resize(bytes.len().next_multiple_of(COPY_BLOCK), 0);
    (bytes, len)
}

impl Device for MemoryPort {
    fn refill(&mut self, region: &mut Region, share: u32) {
        if self.lent.capacity() == 0 {
            self.lent.reserve_exact(region.frames() as usize);
        }
        while self.lent.len() < share as usize {
            let Some(addr) = region.lend() else { break };
            self.lent.push(addr);
        }
    }

    fn receive(&mut self, region: &mut Region, out: &mut Vec<Held>) {
        if self.templates.is_empty() {
            return;
        }
        while out.len() < out.capacity() && self.limit.is_none_or(|limit| self.stats.rx < limit) {
            let Some(addr) = self.lent.pop() else { break };
            let (template, len) = &self.templates[self.next];
            // No division per frame: wrap by comparison.
            self.next += 1;
            if self.next == self.templates.len() {
                self.next = 0;
            }
            let held = region
                .write_lent(addr, template)
                .and_then(|desc| region.receive(XdpDesc { len: *len, ..desc }));
            match held {
                Some(held) => {
                    out.push(held);
                    self.stats.rx += 1;
                }
                None => region.unlend(addr),
            }
        }
    }

    fn transmit(&mut self, region: &mut Region, frames: &mut Vec<Held>) {
        for held in frames.drain(..) {
            self.stats.tx += 1;
            self.stats.tx_bytes += held.len() as u64;
            let desc: XdpDesc = region.send(held);
            if let Some(sent) = &mut self.sent {
                sent.push(region.read_lent(&desc).map(<[u8]>::to_vec).unwrap_or_default());
            }
            region.reclaim(desc.addr);
        }
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_port_receives_its_templates_whole_and_no_longer() {
        // Lengths off the copy block (padded inside the device) and on it.
        let templates: Vec<Vec<u8>> = [66usize, 64, 1514]
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|b| (b as u8).wrapping_add(i as u8)).collect())
            .collect();
        let mut region = Region::in_memory(8).unwrap();
        let mut port = MemoryPort::new(templates.clone());
        port.refill(&mut region, 8);
        let mut held = Vec::with_capacity(3);
        port.receive(&mut region, &mut held);
        assert_eq!(held.len(), 3);
        let mut frames: [&mut [u8]; 3] = [&mut [], &mut [], &mut []];
        region.frames_mut(&held, &mut frames);
        for (frame, template) in frames.iter().zip(&templates) {
            assert_eq!(&frame[..], &template[..]);
        }
    }
}
