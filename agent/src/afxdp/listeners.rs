//! The server role's [`Listeners`] for a worker: the `tc` ingress
//! program's own check of the kernel's socket table (`bpf_skc_lookup_tcp`,
//! the listener's socket storage, what a TIME_WAIT on the tuple holds), run
//! on a request frame with BPF_PROG_TEST_RUN ([`SynAnswerer`]); the record
//! of a translated SYN written into the pinned `HEELS_TRANSLATED`, which
//! sockops reads to write the SYN-ACK form.
//!
//! Asked once per SYN with the SYN form (one system call), never for a
//! data packet; a SYN that is not translated costs the removal of any
//! record of its 4-tuple (as on `tc`). Both dataplanes thus answer a SYN
//! with one piece of code.
//!
//! Any error answers "no listener": the SYN goes on untranslated and the
//! connection takes the LB's path.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aya::maps::{HashMap, MapData};
use heels_afxdp::host::Listeners;
use heels_bpf::{ServerMaps, SynAnswerer};
use heels_common::{EndpointV4, FlowV4, TcCounter};
use heels_dataplane::conntrack::FlowKey;
use heels_dataplane::option::Endpoint;
use heels_dataplane::translate::{Reason, SynClock};

/// What the workers' listener checks count, for the report.
#[derive(Debug, Clone, Default)]
pub struct ListenerCounts {
    /// Checks that failed (the SYN took the LB's path).
    pub errors: Arc<AtomicU64>,
    /// SYNs answered from another connection's TIME_WAIT on their tuple.
    pub onto_time_wait: Arc<AtomicU64>,
}

/// One worker's view of the host's listeners (see the module's comment).
pub struct KernelListeners {
    answerer: SynAnswerer,
    translated: RefCell<HashMap<MapData, FlowV4, EndpointV4>>,
    counts: ListenerCounts,
}

impl std::fmt::Debug for KernelListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelListeners").finish_non_exhaustive()
    }
}

impl KernelListeners {
    /// Loads the check over the maps of `instance`; it runs in the
    /// network namespace of the thread that asks (the host's).
    pub fn new(instance: &str, maps: ServerMaps, counts: ListenerCounts) -> anyhow::Result<Self> {
        Ok(KernelListeners {
            answerer: SynAnswerer::load(instance)?,
            translated: RefCell::new(maps.translated),
            counts,
        })
    }

    fn try_answers(
        &self,
        flow: &FlowKey,
        vip: Endpoint,
        clock: SynClock,
    ) -> anyhow::Result<Result<(), Reason>> {
        let translated = FlowV4::between(&flow.src, &flow.dst);
        Ok(match self.answerer.ask(&translated, &vip, &clock)? {
            Ok(onto_time_wait) => {
                if onto_time_wait {
                    self.counts.onto_time_wait.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(TcCounter::SynNoListener) => Err(Reason::NoListener),
            Err(TcCounter::SynListenerUnserved) => Err(Reason::ListenerUnserved),
            Err(TcCounter::SynTupleInUse) => Err(Reason::TupleInUse),
            Err(other) => anyhow::bail!("the check answered {}", other.name()),
        })
    }
}

impl Listeners for KernelListeners {
    fn answers(&self, flow: &FlowKey, vip: Endpoint, clock: SynClock) -> Result<(), Reason> {
        self.try_answers(flow, vip, clock).unwrap_or_else(|e| {
            if self.counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("asking the kernel for a SYN's listener: {e:#} (the SYN takes the LB's path)");
            }
            Err(Reason::NoListener)
        })
    }

    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason> {
        let flow = FlowV4::between(&flow.src, &flow.dst);
        // Without the record sockops would not write the SYN-ACK form: the
        // SYN goes on untranslated (as the tc program does).
        self.translated.borrow_mut().insert(flow, vip, 0).map_err(|_| {
            self.counts.errors.fetch_add(1, Ordering::Relaxed);
            Reason::TableFull
        })
    }

    fn forget(&self, flow: &FlowKey) {
        // Absent is the usual case: nothing to count.
        let _ = self.translated.borrow_mut().remove(&FlowV4::between(&flow.src, &flow.dst));
    }
}
