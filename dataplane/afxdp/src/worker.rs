//! The worker loop: one thread per configured core, pinned, owning one
//! region (UMEM) and the devices that share it. Each turn it refills every
//! device, then for each path takes a ring batch from the path's source,
//! runs the path's stage on it (the core's batch entry points: parse,
//! prefetch, rewrite) and sends what is forwarded out of the path's sink.
//! Frames cross from one device to the other by descriptor, never copied.
//!
//! No allocation, lock or system call per packet: the batch vectors are
//! allocated once, counters are plain integers, and the only system calls
//! are the wakeups the kernel asks for, at most one per batch and ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heels_dataplane::translate::{Verdict, BATCH};

use crate::device::{Device, DeviceStats};
use crate::umem::{Held, Region};

/// What becomes of one frame of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it out of the path's sink, starting `start` bytes in.
    Forward {
        /// Bytes dropped from the front (an IPIP header removed).
        start: usize,
    },
    /// Free it.
    Drop,
    /// Send, before it, a copy of it turned into a reset with this
    /// sequence number (a client SYN an LB that tracks TCP state would
    /// refuse: docs/design.md); then send it.
    ResetFirst {
        /// The reset's sequence number.
        seq: u32,
    },
}

impl From<Verdict> for Action {
    fn from(verdict: Verdict) -> Action {
        match verdict {
            Verdict::Pass(_) => Action::Forward { start: 0 },
            Verdict::Rewritten { start } => Action::Forward { start: usize::from(start) },
            Verdict::Drop(_) => Action::Drop,
        }
    }
}

/// What a path does to a batch of frames: `actions[i]` for `frames[i]`.
pub trait Stage {
    /// Processes one batch (at most [`BATCH`] frames).
    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]);
    /// Work that does not wait for frames (messages from the control
    /// thread), once a turn: it must be cheap when there is none.
    fn housekeeping(&mut self) {}
}

/// Forwards every frame untouched: the I/O ceiling of a path.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullForward;

impl Stage for NullForward {
    fn process(&mut self, _frames: &mut [&mut [u8]], actions: &mut [Action]) {
        actions.fill(Action::Forward { start: 0 });
    }
}

/// From one device, through a stage, to another (or the same) device.
#[derive(Debug)]
pub struct Path<S> {
    /// Index of the device frames come from.
    pub from: usize,
    /// Index of the device forwarded frames leave by.
    pub to: usize,
    /// What is done to them.
    pub stage: S,
}

/// What a worker counted, per device and in all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Per device, in the worker's order.
    pub devices: Vec<DeviceStats>,
    /// Frames freed by a stage's verdict.
    pub dropped: u64,
    /// Turns of the loop.
    pub turns: u64,
    /// Turns in which no path received anything.
    pub idle_turns: u64,
    /// Descriptors the rings handed back that the region refused.
    pub bad_descriptors: u64,
    /// Resets sent before a SYN.
    pub resets_sent: u64,
    /// Resets not sent for want of a free frame (the SYN went alone).
    pub resets_unsent: u64,
}

/// What a worker does when a turn found nothing to do.
#[derive(Debug, Clone, Copy)]
pub enum Idle {
    /// Spin (lowest latency; the core is the worker's).
    Spin,
    /// Sleep this long before the next turn.
    Sleep(Duration),
    /// Keep turning for `spin` after the last frame (at least
    /// [`POLL_AFTER_IDLE_TURNS`] turns), then wait in `poll(2)` until a
    /// device's socket has frames, or `timeout` (the agent's default: a
    /// core shared with the host's own work). The spin saves the wakeup of
    /// a frame that follows soon (a reply, the next segment).
    Poll {
        /// How long to keep turning after the last frame.
        spin: Duration,
        /// The longest wait in `poll(2)`.
        timeout: Duration,
    },
}

/// Empty turns before an [`Idle::Poll`] worker may wait in `poll(2)`:
/// enough for every transmit ring to have been kicked empty (at most 32
/// frames a kick in copy mode) before the worker stops turning.
pub const POLL_AFTER_IDLE_TURNS: u32 = 128;

/// Turns between two calls of [`Worker::run_reporting`]'s report.
const TURNS_PER_REPORT: u64 = 4096;

/// A worker: its region, its devices and its paths.
#[derive(Debug)]
pub struct Worker<D, S> {
    // Devices before the region: sockets close before their UMEM goes.
    devices: Vec<D>,
    region: Region,
    paths: Vec<Path<S>>,
    /// Frames each device's fill ring is topped up to.
    fill_share: u32,
    received: Vec<Held>,
    forward: Vec<Held>,
    dropped: u64,
    turns: u64,
    idle_turns: u64,
    resets_sent: u64,
    resets_unsent: u64,
}

impl<D: Device, S: Stage> Worker<D, S> {
    /// A worker over `devices` sharing `region`, running `paths`.
    pub fn new(region: Region, devices: Vec<D>, paths: Vec<Path<S>>) -> Self {
        assert!(
            paths.iter().all(|p| p.from < devices.len() && p.to < devices.len()),
            "a path names a device the worker does not have"
        );
        // Half the region waits in the devices' fill rings, split evenly;
        // the other half is in flight (held, or on a transmit ring).
        let fill_share = (region.frames() / (2 * devices.len().max(1) as u32)).max(1);
        let mut worker = Worker {
            fill_share,
            devices,
            region,
            paths,
            received: Vec::with_capacity(BATCH),
            // A batch of SYNs could each take a reset before it.
            forward: Vec::with_capacity(2 * BATCH),
            dropped: 0,
            turns: 0,
            idle_turns: 0,
            resets_sent: 0,
            resets_unsent: 0,
        };
        // The fill rings are primed before anyone can send: a socket already
        // in an XSKMAP drops every frame the kernel has no fill frame for,
        // and the first turn may come late on a busy machine.
        for device in &mut worker.devices {
            device.refill(&mut worker.region, worker.fill_share);
        }
        worker
    }

    /// One turn; returns the frames received.
    pub fn turn(&mut self) -> usize {
        self.turns += 1;
        for device in &mut self.devices {
            device.refill(&mut self.region, self.fill_share);
        }
        let mut received = 0;
        let mut actions = [Action::Drop; BATCH];
        for path in &mut self.paths {
            path.stage.housekeeping();
            self.devices[path.from].receive(&mut self.region, &mut self.received);
            let n = self.received.len();
            if n == 0 {
                continue;
            }
            received += n;
            {
                let mut frames: [&mut [u8]; BATCH] = std::array::from_fn(|_| <&mut [u8]>::default());
                self.region.frames_mut(&self.received, &mut frames[..n]);
                path.stage.process(&mut frames[..n], &mut actions[..n]);
            }
            for (mut held, action) in self.received.drain(..).zip(actions.iter()) {
                match *action {
                    Action::Forward { start } => {
                        // Only when it moves: a frame changed field by field
                        // and then copied whole stalls the copy (store
                        // forwarding), per frame, in the profile.
                        if start != 0 {
                            held.advance(start);
                        }
                        self.forward.push(held);
                    }
                    Action::Drop => {
                        self.dropped += 1;
                        self.region.release(held);
                    }
                    Action::ResetFirst { seq } => {
                        let (held, reset) = reset_copy(&mut self.region, held, seq);
                        match reset {
                            Some(reset) => {
                                self.resets_sent += 1;
                                self.forward.push(reset);
                            }
                            None => self.resets_unsent += 1,
                        }
                        self.forward.push(held);
                    }
                }
            }
            self.devices[path.to].transmit(&mut self.region, &mut self.forward);
        }
        if received == 0 {
            self.idle_turns += 1;
        }
        received
    }

    /// Turns until `stop` is set (checked once a turn), idling as told.
    pub fn run(&mut self, stop: &AtomicBool, idle: Idle) {
        self.run_reporting(stop, idle, |_| {});
    }

    /// As [`Worker::run`], and calls `report` with the worker every few
    /// thousand turns and before each idle wait (to publish its counters:
    /// nothing per packet).
    pub fn run_reporting(&mut self, stop: &AtomicBool, idle: Idle, mut report: impl FnMut(&Self)) {
        let mut fds: Vec<libc::pollfd> = self
            .devices
            .iter()
            .filter_map(Device::fd)
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let mut empty_turns = 0u32;
        let mut idle_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if self.turns.is_multiple_of(TURNS_PER_REPORT) {
                report(self);
            }
            if self.turn() > 0 {
                empty_turns = 0;
                idle_since = None;
                continue;
            }
            match idle {
                Idle::Spin => std::hint::spin_loop(),
                Idle::Sleep(pause) => std::thread::sleep(pause),
                Idle::Poll { spin, timeout } => {
                    empty_turns += 1;
                    // The clock is read once per POLL_AFTER_IDLE_TURNS empty turns.
                    if empty_turns.is_multiple_of(POLL_AFTER_IDLE_TURNS) {
                        let idle = *idle_since.get_or_insert_with(Instant::now);
                        if idle.elapsed() >= spin {
                            empty_turns = 0;
                            idle_since = None;
                            report(self);
                            if fds.is_empty() {
                                std::thread::sleep(timeout);
                            } else {
                                crate::sys::poll_readable(&mut fds, timeout.as_millis() as i32);
                            }
                        }
                    }
                }
            }
        }
        report(self);
    }

    /// Turns for `duration`; returns the frames received.
    pub fn run_for(&mut self, duration: Duration) -> u64 {
        let start = Instant::now();
        let mut received = 0u64;
        // Time is read every 64 turns: a clock read per turn would show in
        // the in-memory figures.
        loop {
            for _ in 0..64 {
                received += self.turn() as u64;
            }
            if start.elapsed() >= duration {
                return received;
            }
        }
    }

    /// What the worker counted so far.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            devices: self.devices.iter().map(|d| d.stats()).collect(),
            dropped: self.dropped,
            turns: self.turns,
            idle_turns: self.idle_turns,
            bad_descriptors: self.region.errors().bad_descriptors,
            resets_sent: self.resets_sent,
            resets_unsent: self.resets_unsent,
        }
    }

    /// The worker's paths (to read their stages' counters).
    pub fn paths(&self) -> &[Path<S>] {
        &self.paths
    }

    /// The worker's devices (to read their descriptors, for instance).
    pub fn devices(&self) -> &[D] {
        &self.devices
    }

    /// The worker's devices, to feed (an in-memory device) or set up.
    pub fn devices_mut(&mut self) -> &mut [D] {
        &mut self.devices
    }

    /// Chunks of the worker's region free now (neither held nor lent).
    pub fn free_frames(&self) -> usize {
        self.region.free_frames()
    }
}

/// A free frame holding `syn` turned into the reset that goes before it,
/// or `None` if no frame is free. Gives `syn` back either way.
fn reset_copy(region: &mut Region, syn: Held, seq: u32) -> (Held, Option<Held>) {
    let Some(copy) = region.take(syn.len()) else {
        return (syn, None);
    };
    let pair = [syn, copy];
    {
        let mut bytes: [&mut [u8]; 2] = [&mut [], &mut []];
        region.frames_mut(&pair, &mut bytes);
        let [from, into] = bytes;
        into.copy_from_slice(from);
        heels_dataplane::translate::turn_into_reset(into, seq);
    }
    let [syn, copy] = pair;
    (syn, Some(copy))
}

/// Pins the calling thread to `core`; false if the core does not exist or
/// the kernel refused.
pub fn pin_to_core(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|id| id.id == core))
        .is_some_and(core_affinity::set_for_current)
}
