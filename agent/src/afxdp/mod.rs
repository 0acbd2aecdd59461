//! The agent's `afxdp` dataplane: per-core pinned workers on
//! AF_XDP sockets do the per-packet work, with the `tc` programs standing
//! by (docs/design.md, "The `afxdp` dataplane").
//!
//! - The host's traffic to the VIPs is routed into `heels0`; its peer's
//!   XDP program (`heels_to_workers`) hands every frame to the workers,
//!   which rewrite VIP to DIP and send it out of the uplink by descriptor,
//!   addressed to the next hop the kernel's routes and neighbours name.
//! - On the uplink, the XDP classifier hands the workers what needs work
//!   (SYN-ACKs with the SYN-ACK form, steered flows); they learn, rewrite
//!   DIP to VIP and pass the frames into the host through the pair.
//! - Every connection learned is also written into the `tc` dataplane's
//!   pinned maps, whose programs stay attached: when the workers go (a
//!   stop, a crash, SIGKILL), the pair and its routes and the XDP programs
//!   go with the process, and the `tc` programs carry the host's
//!   connections on from where the workers left them. The next start
//!   takes them back.

pub mod listeners;
pub mod nexthops;
pub mod pair;
pub mod report;

use std::collections::{HashMap as StdHashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use aya::maps::{HashMap, MapData};
use crossbeam_queue::ArrayQueue;
use heels_afxdp::device::{PortConfig, XskPort};
use heels_afxdp::host::{
    Forget, HostCounters, HostStage, Listeners, NoListeners, SentSyns, StandbySyns, Steer, ToHost,
    ToHostParts, ToUplink,
};
use heels_afxdp::nexthop::{Hop, NextHops, Unresolved};
use heels_afxdp::stage::Clock;
use heels_afxdp::umem::Region;
use heels_afxdp::worker::{pin_to_core, Idle, Path, Worker, WorkerStats};
use heels_bpf::{Classifier, Closes, Connection, ConnectionMaps, Instance, SynMarker, ToWorkers};
use heels_common::{EndpointV4, FlowV4};
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::translate::{Learned, Rules};

use crate::config::AgentConfig;
use crate::sockets::SocketQuery;
use pair::{HostPair, Link, Namespaces, PEER_LINK};
pub use report::{read_report, write_report, AfxdpReport, AfxdpStats};

/// Frames of each worker's UMEM (4 KiB each: 16 MiB a worker).
const FRAMES: u32 = 4096;
/// Entries of each ring.
const RING_SIZE: u32 = 2048;
/// An entry unused this long stops matching (the close of its socket
/// normally removes it long before).
const IDLE_TIMEOUT_SECONDS: u32 = 24 * 3600;
/// Learned connections waiting for the control thread.
const LEARNED_QUEUE: usize = 65_536;
/// How often the control thread takes its turn without an event: the
/// workers hand it learned connections through a queue, which it polls.
pub const TURN_EVERY: Duration = Duration::from_millis(100);
/// How long the start waits for the kernel to resolve the uplink's
/// gateways before it routes the VIPs into the pair.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// What a worker last published.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    /// The loop's counters.
    pub stats: WorkerStats,
    /// Its host paths' counters.
    pub host: HostCounters,
}

fn flow(key: &FlowKey) -> FlowV4 {
    FlowV4::between(&key.src, &key.dst)
}

fn connection_of(learned: &Learned) -> Connection {
    Connection { client: learned.client.into(), vip: learned.vip.into(), backend: learned.backend.into() }
}

/// The `tc` egress program's record of the SYNs it sent, for the workers.
struct StandbySent(heels_bpf::SentSyns);

impl StandbySyns for StandbySent {
    fn sent(&self, key: &FlowKey) -> bool {
        self.0.sent(&flow(key))
    }
}

/// A worker's side of learning, before a connection's SYN-ACK goes on to
/// the host: the steering map, the standby's pinned maps (three map
/// updates a connection, never one a packet), and the queue to the
/// control thread (which tells the workers of closes).
///
/// The standby is written here, not later by the control thread: a
/// SIGKILL can come at any moment, and every connection whose SYN-ACK
/// the host has seen must then be in the maps the `tc` programs carry it
/// on with (a storm through a kill, before: the connections learned in
/// the last tick stalled until their timeout).
struct WorkerSteer {
    steering: HashMap<MapData, FlowV4, u8>,
    standby: ConnectionMaps,
    learned: Arc<ArrayQueue<Learned>>,
    lost: Arc<AtomicU64>,
    unwritten: Arc<AtomicU64>,
    /// Set until the agent has loaded the standby's connections.
    taking_over: Arc<AtomicBool>,
}

impl Steer for WorkerSteer {
    fn learned(&mut self, connection: &Learned) -> bool {
        if self.steering.insert(flow(&connection.ingress_key()), 1, 0).is_err() {
            return false;
        }
        // The room sockops reserved at connect holds the egress entry; a
        // failure leaves the connection to the workers alone (it works
        // while they run), counted.
        if self.standby.remember(&connection_of(connection)).is_err() {
            self.unwritten.fetch_add(1, Ordering::Relaxed);
        }
        if self.learned.push(*connection).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn forget(&mut self, ingress: &FlowKey) {
        // Absent is fine: a connection steered twice is unsteered once.
        let _ = self.steering.remove(&flow(ingress));
    }

    fn taking_over(&self) -> bool {
        self.taking_over.load(Ordering::Relaxed)
    }
}

fn forget_of(connection: &Connection, syn_end: Option<u32>) -> Forget {
    Forget {
        client: connection.client.into(),
        vip: connection.vip.into(),
        backend: connection.backend.into(),
        syn_end,
    }
}

/// The sockets a worker opened: the XSKMAP entries to make.
struct WorkerSockets {
    worker: u32,
    peer: i32,
    uplink: Vec<(u32, i32)>,
}

/// A worker's region and sockets: its queue of heels1 (device 0, opened in
/// the private namespace), then its queues of the uplink.
fn open_worker(
    worker: u32,
    namespaces: &Namespaces,
    uplink: &str,
    queues: &[u32],
) -> anyhow::Result<(Region, Vec<XskPort>, WorkerSockets)> {
    let ports = PortConfig { ring_size: RING_SIZE, zero_copy: false };
    // The UMEM's own socket is the first bound (to heels1): made in the
    // private namespace, where its bind looks the interface up.
    let (mut region, peer) = namespaces
        .in_private(|| -> anyhow::Result<(Region, XskPort)> {
            let mut region = Region::registered(FRAMES, RING_SIZE)?;
            let peer = XskPort::open(&mut region, PEER_LINK, worker, ports)?;
            Ok((region, peer))
        })?
        .with_context(|| format!("opening an AF_XDP socket on {PEER_LINK} queue {worker}"))?;
    let mut sockets = WorkerSockets { worker, peer: peer.fd(), uplink: Vec::new() };
    let mut devices = vec![peer];
    for &queue in queues {
        let port = XskPort::open(&mut region, uplink, queue, ports)
            .with_context(|| format!("opening an AF_XDP socket on {uplink} queue {queue}"))?;
        sockets.uplink.push((queue, port.fd()));
        devices.push(port);
    }
    Ok((region, devices, sockets))
}

/// The running afxdp dataplane.
pub struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    reports: Vec<Arc<Mutex<WorkerReport>>>,
    table: Arc<ConnTable>,
    /// What the workers' tables own (the connections' and the SYN ends').
    table_bytes: usize,
    clock: Clock,
    hops: Arc<ArcSwap<NextHops>>,
    unresolved: Arc<Unresolved>,
    watch: nexthops::Watch,
    learned: Arc<ArrayQueue<Learned>>,
    lost: Arc<AtomicU64>,
    /// Learned connections the workers could not write into the standby.
    unwritten: Arc<AtomicU64>,
    /// Set until the standby's connections are in the workers' table.
    taking_over: Arc<AtomicBool>,
    /// The server's listener checks: failed (their SYNs took the LB), and
    /// SYNs taken from another connection's TIME_WAIT.
    listener_counts: listeners::ListenerCounts,
    /// Connections learned, by (client, VIP), as the workers will forget them.
    known: StdHashMap<(SocketAddrV4, SocketAddrV4), Forget>,
    /// Closed connections on their way to the workers.
    forgets: Arc<ArrayQueue<Forget>>,
    /// Sockops's reports of closed connections (`None`: the pinned ring
    /// could not be opened, and the sweep finds every close).
    closes: Option<Closes>,
    /// Asks whether a live socket holds a reported connection's tuple.
    close_query: SocketQuery,
    /// Reports read from `closes`.
    closes_reported: u64,
    /// The reports of this turn (kept to reuse the allocation).
    reported: Vec<(SocketAddrV4, SocketAddrV4)>,
    steering: HashMap<MapData, FlowV4, u8>,
    // Taken in `stop`, in this order: the uplink's classifier, the pair,
    // then the workers and the pair's XDP program.
    classifier: Option<Classifier>,
    to_workers: Option<ToWorkers>,
    /// On a server, marks the SYNs the workers translated (behind a DNAT
    /// LB their connections' replies take the direct route).
    syn_marker: Option<SynMarker>,
    pair: HostPair,
    uplink: Link,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("workers", &self.threads.len()).field("uplink", &self.uplink).finish()
    }
}

impl Workers {
    /// Starts the workers over `datapath` (the `tc` dataplane, attached:
    /// the standby) with `rules`, and routes the configured VIPs into them.
    pub fn start(config: &AgentConfig, datapath: &mut Instance, rules: Rules) -> anyhow::Result<Workers> {
        let settings = config.afxdp.clone().unwrap_or_default();
        let uplink_name = config.interfaces[0].as_str();
        let uplink = pair::link(uplink_name)?;
        let source = *crate::host::ipv4_addresses(Some(uplink_name))?
            .first()
            .with_context(|| format!("{uplink_name} has no IPv4 address"))?;
        let workers = settings.cores.len().min(uplink.rx_queues as usize).max(1);
        let pair = HostPair::create(workers as u32, uplink.mtu).context("making heels0")?;
        let maps_dir = datapath.dir().join("maps");
        let mut classifier =
            Classifier::load(&maps_dir, config.max_connections()).context("loading the XDP classifier")?;
        let mut to_workers = pair
            .in_private(|| ToWorkers::attach(&maps_dir, PEER_LINK))?
            .context("attaching the XDP program of heels1")?;

        // Sockops reserves each connection in the kernel's table first (a
        // full one sends the SYN without the form): the workers' table,
        // twice its size in slots, then always has room.
        let capacity = config.max_connections() as usize;
        let table = Arc::new(ConnTable::new(2 * capacity, IDLE_TIMEOUT_SECONDS));
        let syn_ends = Arc::new(SynEnds::new(2 * capacity));
        let standby_syns: Arc<dyn StandbySyns> =
            Arc::new(StandbySent(datapath.sent_syns().context("mapping the standby's SYN record")?));
        let clock = Clock::Since(Instant::now());
        let learned = Arc::new(ArrayQueue::new(LEARNED_QUEUE));
        let lost = Arc::new(AtomicU64::new(0));
        let steering = classifier.steering()?;
        let hops = Arc::new(ArcSwap::from_pointee(nexthops::read(uplink.index)?));
        let watch = nexthops::Watch::new()?;
        let unresolved = Arc::new(Unresolved::default());
        let mut afxdp = Workers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            reports: Vec::new(),
            table_bytes: table.memory_bytes() + syn_ends.memory_bytes(),
            table,
            clock,
            hops,
            unresolved,
            watch,
            learned,
            lost,
            unwritten: Arc::new(AtomicU64::new(0)),
            taking_over: Arc::new(AtomicBool::new(true)),
            listener_counts: listeners::ListenerCounts::default(),
            known: StdHashMap::new(),
            forgets: Arc::new(ArrayQueue::new(LEARNED_QUEUE)),
            closes: datapath
                .closes()
                .inspect_err(|e| {
                    tracing::warn!("no close reports from sockops ({e:#}): closes wait for the sweep")
                })
                .ok(),
            close_query: SocketQuery::new().context("opening a sock_diag socket")?,
            closes_reported: 0,
            reported: Vec::new(),
            steering,
            classifier: None,
            to_workers: None,
            syn_marker: None,
            pair,
            uplink,
        };
        if config.server.is_some() {
            let marker =
                SynMarker::attach(&maps_dir, pair::HOST_LINK).context("marking translated SYNs on heels0")?;
            afxdp.syn_marker = Some(marker);
        }
        let rules = Arc::new(rules);
        // A worker's UMEM cannot leave its thread: each worker opens its
        // sockets there and sends their descriptors back for the XSKMAPs.
        let (sockets_tx, sockets_rx) = std::sync::mpsc::channel::<anyhow::Result<WorkerSockets>>();
        for (w, &core) in settings.cores.iter().take(workers).enumerate() {
            let namespaces = afxdp.pair.namespaces.try_clone()?;
            let uplink_queues: Vec<u32> = (w as u32..uplink.rx_queues).step_by(workers).collect();
            let to_uplink = ToUplink::new(
                Arc::clone(&rules),
                Arc::clone(&afxdp.table),
                Arc::clone(&syn_ends),
                clock,
                uplink.mac,
                Arc::clone(&afxdp.hops),
                Arc::clone(&afxdp.unresolved),
            );
            let mut to_host = Vec::new();
            for _ in &uplink_queues {
                let steer = WorkerSteer {
                    steering: classifier.steering()?,
                    standby: datapath.connection_maps().context("opening the standby's maps")?,
                    learned: Arc::clone(&afxdp.learned),
                    lost: Arc::clone(&afxdp.lost),
                    unwritten: Arc::clone(&afxdp.unwritten),
                    taking_over: Arc::clone(&afxdp.taking_over),
                };
                // The socket is made here, in the host's namespace.
                let listeners: Box<dyn Listeners> = if config.server.is_some() {
                    let maps = datapath.server_maps().context("opening the server's maps")?;
                    Box::new(listeners::KernelListeners::new(
                        &config.instance,
                        maps,
                        afxdp.listener_counts.clone(),
                    )?)
                } else {
                    Box::new(NoListeners)
                };
                to_host.push(ToHost::new(ToHostParts {
                    rules: Arc::clone(&rules),
                    table: Arc::clone(&afxdp.table),
                    sent: SentSyns::new(Arc::clone(&syn_ends), Some(Arc::clone(&standby_syns))),
                    listeners,
                    forgets: Arc::clone(&afxdp.forgets),
                    clock,
                    host_mac: afxdp.pair.host_end.mac,
                    peer_mac: afxdp.pair.peer_end.mac,
                    steer,
                }));
            }
            let report = Arc::new(Mutex::new(WorkerReport::default()));
            afxdp.reports.push(Arc::clone(&report));
            let stop = Arc::clone(&afxdp.stop);
            let idle = if settings.busy_poll {
                Idle::Spin
            } else {
                Idle::Poll {
                    spin: Duration::from_micros(settings.idle_spin_us),
                    timeout: Duration::from_millis(100),
                }
            };
            let sockets_tx = sockets_tx.clone();
            let uplink_name = uplink_name.to_owned();
            let thread = std::thread::Builder::new()
                .name(format!("heels-worker-{w}"))
                .spawn(move || {
                    if !pin_to_core(core) {
                        tracing::warn!(core, "could not pin the worker to its core");
                    }
                    let opened = open_worker(w as u32, &namespaces, &uplink_name, &uplink_queues);
                    let (region, devices, sockets) = match opened {
                        Ok(opened) => opened,
                        Err(e) => {
                            let _ = sockets_tx.send(Err(e));
                            return;
                        }
                    };
                    let mut paths = vec![Path { from: 0, to: 1, stage: HostStage::ToUplink(to_uplink) }];
                    for (i, stage) in to_host.into_iter().enumerate() {
                        paths.push(Path { from: i + 1, to: 0, stage: HostStage::ToHost(stage) });
                    }
                    // The worker (its fill rings primed) before its sockets
                    // go into the XSKMAPs.
                    let mut worker = Worker::new(region, devices, paths);
                    let _ = sockets_tx.send(Ok(sockets));
                    worker.run_reporting(&stop, idle, |worker| {
                        let host = worker.paths().iter().fold(HostCounters::default(), |mut sum, path| {
                            sum += path.stage.counters();
                            sum
                        });
                        if let Ok(mut report) = report.lock() {
                            *report = WorkerReport { stats: worker.stats(), host };
                        }
                    });
                })
                .context("starting a worker")?;
            afxdp.threads.push(thread);
        }
        drop(sockets_tx);
        for _ in 0..afxdp.threads.len() {
            let sockets = sockets_rx.recv().context("a worker stopped while opening its sockets")??;
            to_workers.insert(sockets.worker, sockets.peer)?;
            for (queue, fd) in sockets.uplink {
                classifier.insert_socket(queue, fd)?;
            }
        }
        // The standby's connections go into the workers' table before SYN-ACK
        // forms reach the workers (a form sent again, the host's ACK lost
        // with the previous agent, would go to the host unrewritten and
        // draw a reset), and again once they do (the standby learns until
        // then). Between the two the workers hold back a form they cannot
        // place (`taking_over`): the server sends it again. A data packet
        // that comes in before its flow is steered reaches the TC ingress
        // program, which still translates it.
        afxdp.take_over(datapath)?;
        classifier
            .attach(uplink_name)
            .with_context(|| format!("attaching the XDP classifier to {uplink_name}"))?;
        afxdp.classifier = Some(classifier);
        afxdp.to_workers = Some(to_workers);
        afxdp.take_over(datapath)?;
        afxdp.taking_over.store(false, Ordering::Relaxed);
        afxdp.resolve_gateways()?;
        // The closes of what the workers learned meanwhile are followed.
        afxdp.tick(datapath)?;
        let mut routed = HashSet::new();
        let client_vips = config.client.iter().flat_map(|client| &client.vips);
        for vip in client_vips {
            if routed.insert(*vip.ip()) {
                afxdp.pair.route(*vip.ip(), source)?;
            }
        }
        Ok(afxdp)
    }

    /// Loads the connections the standby's pinned maps hold (a previous
    /// agent's, and any the `tc` programs learned meanwhile) into the
    /// workers' table and the steering map.
    fn take_over(&mut self, datapath: &Instance) -> anyhow::Result<()> {
        for c in datapath.connections().context("reading the standby's connections")? {
            let (client, vip, backend) =
                (EndpointV4::from(c.client), EndpointV4::from(c.vip), c.backend.into());
            let ingress = FlowKey { src: backend, dst: client };
            self.table.insert(FlowKey { src: client, dst: vip }, backend, 0).context("the table is full")?;
            self.table.insert(ingress, vip, 0).context("the table is full")?;
            self.steering.insert(flow(&ingress), 1, 0).context("steering a connection taken over")?;
            self.known.insert((c.client, c.vip), forget_of(&c, None));
        }
        Ok(())
    }

    /// Makes the kernel resolve the next hop of every route of the uplink
    /// and waits (a while) until it has: the first SYN to a VIP then finds
    /// its next hop known.
    fn resolve_gateways(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RESOLVE_WAIT;
        loop {
            let hops = self.hops.load_full();
            let missing: Vec<[u8; 4]> = hops
                .routes()
                .iter()
                .filter_map(|route| route.gateway)
                .filter(|gateway| !matches!(hops.hop(*gateway), Hop::Mac(_)))
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
            for gateway in missing {
                nexthops::probe(gateway.into());
            }
            std::thread::sleep(Duration::from_millis(20));
            self.hops.store(Arc::new(nexthops::read(self.uplink.index)?));
        }
    }

    /// Whether every worker thread still runs. One that stopped (a panic)
    /// took its sockets with it, and the host's VIP traffic would go into
    /// `heels0` and no further: the agent then stops the dataplane, as a
    /// dead process would, and the standby carries on.
    pub fn workers_alive(&self) -> bool {
        self.threads.iter().all(|thread| !thread.is_finished())
    }

    /// What calls for a turn before [`TURN_EVERY`]: sockops's reports of
    /// closes and the kernel's route and neighbour events.
    pub fn event_sources(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.closes.iter().map(|closes| closes.as_fd()).chain([self.watch.as_fd()]).collect()
    }

    /// The control thread's turn (every [`TURN_EVERY`], and on an event): closed connections
    /// sockops reported to the workers, learned connections into the
    /// standby maps, next hops read again after a change, and unresolved
    /// ones probed.
    pub fn tick(&mut self, datapath: &mut Instance) -> anyhow::Result<()> {
        // The reports are read before the learned connections are taken:
        // a connection reported closed was learned before it closed, so
        // it is known by the time its report is handled.
        self.read_reported_closes();
        while let Some(learned) = self.learned.pop() {
            // (Its worker wrote it into the standby maps already.)
            let connection = connection_of(&learned);
            self.known
                .insert((connection.client, connection.vip), forget_of(&connection, Some(learned.syn_end)));
        }
        self.forget_reported_closes(datapath);
        let unresolved = self.unresolved.take();
        for next in &unresolved {
            nexthops::probe((*next).into());
        }
        if self.watch.changed() {
            self.hops.store(Arc::new(nexthops::read(self.uplink.index)?));
        }
        Ok(())
    }

    /// Sends the workers the connections sockops reported closed (see
    /// [`Forget`]), unless a live socket holds the tuple again: a new
    /// connection on it, learned or about to be, whose entries these are
    /// too. What is left (a full queue, a failed question) waits for the
    /// sweep, which finds every close.
    fn forget_reported_closes(&mut self, datapath: &mut Instance) {
        let mut reported = std::mem::take(&mut self.reported);
        for key in reported.drain(..) {
            let Some(forget) = self.known.get(&key) else { continue };
            match self.close_query.socket_on(key.0, key.1) {
                Ok(Some(socket)) if socket.is_live() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(
                        "asking for the socket of a closed connection: {e:#} (left to the sweep)"
                    );
                    continue;
                }
            }
            if self.forgets.push(*forget).is_err() {
                continue;
            }
            // The standby's entries too, should sockops have missed them
            // (absent ones are fine).
            let connection = Connection { client: key.0, vip: key.1, backend: forget.backend.into() };
            if let Err(e) = datapath.forget(&connection) {
                tracing::debug!("removing a closed connection's standby entries: {e:#} (left to the sweep)");
            }
            self.known.remove(&key);
        }
        self.reported = reported;
    }

    /// Reads sockops's reports of closed connections (see
    /// [`Workers::forget_reported_closes`]).
    fn read_reported_closes(&mut self) {
        let Some(closes) = &mut self.closes else { return };
        let before = self.reported.len();
        self.reported.extend(closes);
        self.closes_reported += (self.reported.len() - before) as u64;
    }

    /// Sends the workers the connections whose standby entries are gone
    /// (sockops removes them when the socket closes; the sweep when the
    /// close was missed) and whose 4-tuple no live socket holds, to forget
    /// (see [`Forget`]: they do it, serialized with their learning); expires
    /// idle entries. Returns how many connections went.
    pub fn sweep(&mut self, datapath: &mut Instance) -> anyhow::Result<usize> {
        self.tick(datapath)?;
        let standby: HashSet<(SocketAddrV4, SocketAddrV4)> =
            datapath.connections()?.iter().map(|c| (c.client, c.vip)).collect();
        let mut closed: Vec<(SocketAddrV4, SocketAddrV4)> =
            self.known.keys().filter(|key| !standby.contains(key)).copied().collect();
        if !closed.is_empty() {
            let sockets = crate::sockets::live_tcp_connections()?;
            closed.retain(|key| !sockets.contains(key));
        }
        let mut sent = 0;
        for key in closed {
            let Some(forget) = self.known.get(&key) else { continue };
            // A full queue keeps the rest for the next sweep.
            if self.forgets.push(*forget).is_err() {
                break;
            }
            self.known.remove(&key);
            sent += 1;
        }
        self.table.expire(self.clock.now());
        Ok(sent)
    }

    /// Hands the host's traffic back to the standby and stops the workers
    /// (whose learned connections are in the standby's maps already): the
    /// closes reported meanwhile are handled, the uplink's classifier goes
    /// (the TC ingress program sees everything again), then the pair and its routes (the host's traffic to the
    /// VIPs leaves by the uplink, through the TC egress program), then the
    /// workers.
    pub fn stop(mut self, datapath: &mut Instance) -> anyhow::Result<()> {
        let drained = self.tick(datapath);
        self.shut_down();
        drained
    }

    fn shut_down(&mut self) {
        self.classifier = None;
        self.pair.remove();
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.to_workers = None;
        self.syn_marker = None;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shut_down();
    }
}
