//! The `tc` dataplane in the kernel: the TC programs on each interface, the
//! sockops program on the host's cgroup, and their maps, all pinned under
//! `/sys/fs/bpf/heels/<instance>/` so that the kernel keeps translating
//! while no agent runs, and a restarted agent takes them over.
//!
//! Starting over a running (or orphaned) instance replaces each program in
//! place: a TC link is updated atomically (`BPF_LINK_UPDATE`), the sockops
//! link is attached anew before the old one is removed. No packet of a
//! bypassed connection meets a moment without a program.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, SockOps, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader, Pod};
use heels_common::time_wait::{SynClock, TimeWaitLayout};
use heels_common::{
    syn_answer, EndpointV4, FlowV4, TcConfig, TcCounter, VipStats, MAP_BACKENDS, MAP_CLIENT_VIPS, MAP_CLOSES,
    MAP_EGRESS, MAP_INGRESS, MAP_LB_SOURCES, MAP_LOCAL_ADDRS, MAP_LOCAL_VIPS, MAP_SERVICES, MAP_TC_CONFIG,
    MAP_TC_STATS, MAP_VIP_STATS, MAX_CONNECTIONS, SOCKOPS_PROGRAM, SYN_ANSWER_PROGRAM, TC_EGRESS_PROGRAM,
    TC_INGRESS_PROGRAM, TC_MARK_TRANSLATED_PROGRAM,
};
use heels_dataplane::translate::{Prefix, Rules};

/// Root of every instance's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/heels";

/// Why the datapath could not be set up, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The object did not load (the verifier log is inside).
    #[error("loading the eBPF object")]
    Load(#[from] EbpfError),
    /// A program failed to load, attach or be replaced.
    #[error("program {name}")]
    Program {
        /// Which program.
        name: &'static str,
        /// What failed.
        source: ProgramError,
    },
    /// A map is missing or an operation on it failed.
    #[error("map {name}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What failed.
        source: MapError,
    },
    /// Pins left by another version that this one cannot take over.
    #[error("{0}")]
    Incompatible(String),
    /// A pinned link could not be opened, pinned or removed.
    #[error("link {}: {reason}", path.display())]
    Link {
        /// The pin.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A file system operation failed (bpffs, cgroup).
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No instance of that name is set up.
    #[error("no heels instance {0:?} (nothing pinned under {PIN_ROOT}/{0})")]
    NoInstance(String),
}

/// What one instance does: the kernel-side form of the agent's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Instance name: the pin directory under [`PIN_ROOT`].
    pub instance: String,
    /// Interfaces to attach the TC programs to.
    pub interfaces: Vec<String>,
    /// cgroup v2 directory whose sockets the sockops program sees.
    pub cgroup: PathBuf,
    /// skb mark for translated SYNs (0: none).
    pub syn_mark: u32,
    /// What the host accepts: addresses, services, LB sources, VIPs,
    /// backends. The one value both dataplanes consume (the AF_XDP
    /// workers run the core with it; here it fills the programs' maps).
    pub rules: Rules,
    /// Most client connections open or opening at once (the size of
    /// [`MAP_EGRESS`] and [`MAP_INGRESS`]); 0 means [`MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// Where the running kernel keeps a TIME_WAIT's fields
    /// ([`crate::btf::time_wait_layout`]); the default (unknown) keeps
    /// every SYN that meets another connection's TIME_WAIT on the LB path.
    pub time_wait: TimeWaitLayout,
}

impl InstanceConfig {
    /// The connection maps' size.
    pub fn capacity(&self) -> u32 {
        if self.max_connections == 0 {
            MAX_CONNECTIONS
        } else {
            self.max_connections
        }
    }
}

/// A bypassed connection as the client's maps hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    /// CIP:cport.
    pub client: SocketAddrV4,
    /// VIP:vport.
    pub vip: SocketAddrV4,
    /// DIP:dport.
    pub backend: SocketAddrV4,
}

/// The pin directory of an instance.
pub fn instance_dir(instance: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(instance)
}

pub(crate) fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io { what, path: path.to_owned(), source }
}

pub(crate) fn map_error(name: &'static str) -> impl FnOnce(MapError) -> InstanceError {
    move |source| InstanceError::Map { name, source }
}

fn program_error(name: &'static str) -> impl FnOnce(ProgramError) -> InstanceError {
    move |source| InstanceError::Program { name, source }
}

fn link_error(path: &Path) -> impl FnOnce(String) -> InstanceError + '_ {
    move |reason| InstanceError::Link { path: path.to_owned(), reason }
}

/// An instance: its programs attached through pinned links, and the
/// pinned maps it reads and writes at run time. Holds no program: once
/// attached, the kernel keeps them through the links.
#[derive(Debug)]
pub struct Instance {
    maps: StdHashMap<&'static str, Map>,
    dir: PathBuf,
}

mod maps;
mod runner;

pub use maps::*;
pub use runner::*;

impl Instance {
    /// Loads the programs, fills the maps (pinned: kept from a previous run,
    /// their connection state included) and attaches or takes over every
    /// program.
    pub fn start(config: &InstanceConfig) -> Result<Self, InstanceError> {
        let dir = instance_dir(&config.instance);
        let maps_dir = dir.join("maps");
        let links_dir = dir.join("links");
        for path in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(path).map_err(io_error("creating", path))?;
        }
        let capacity = config.capacity();
        replace_pins_of_another_shape(&maps_dir, capacity)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(MAP_EGRESS, capacity)
            .map_max_entries(MAP_INGRESS, capacity)
            .load(crate::EBPF_OBJECT)?;
        configure(&mut ebpf, config)?;
        attach(&mut ebpf, config, &links_dir)?;
        drop(ebpf);
        migrate_connections(&maps_dir)?;
        Self::open(&config.instance)
    }

    /// Opens the maps of a running (or orphaned) instance, to read them.
    pub fn open(instance: &str) -> Result<Self, InstanceError> {
        let dir = instance_dir(instance);
        let maps_dir = dir.join("maps");
        if !maps_dir.is_dir() {
            return Err(InstanceError::NoInstance(instance.to_owned()));
        }
        let mut maps = StdHashMap::new();
        for (name, kind) in RUNTIME_MAPS {
            let data = MapData::from_pin(maps_dir.join(name)).map_err(map_error(name))?;
            maps.insert(name, kind(data));
        }
        Ok(Instance { maps, dir })
    }

    /// Detaches every program of an instance and removes its pins.
    pub fn remove(instance: &str) -> Result<(), InstanceError> {
        let dir = instance_dir(instance);
        if !dir.is_dir() {
            return Err(InstanceError::NoInstance(instance.to_owned()));
        }
        let links_dir = dir.join("links");
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                // Unpinning drops the last reference: the kernel detaches.
                let link = PinnedLink::from_pin(&path).map_err(|e| link_error(&path)(e.to_string()))?;
                link.unpin().map_err(|e| link_error(&path)(e.to_string()))?;
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io_error("removing", &dir))?;
        // The root goes with the last instance.
        let _ = std::fs::remove_dir(PIN_ROOT);
        Ok(())
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Handles of their own (opened anew from the pins) on the maps the
    /// server's SYN translation reads and writes outside the kernel: for an
    /// afxdp worker.
    pub fn server_maps(&self) -> Result<ServerMaps, InstanceError> {
        let maps_dir = self.dir.join("maps");
        let name = MAP_TRANSLATED;
        let data = MapData::from_pin(maps_dir.join(name)).map_err(map_error(name))?;
        let translated = HashMap::try_from(Map::LruHashMap(data)).map_err(map_error(name))?;
        Ok(ServerMaps { translated })
    }

    /// Handles of their own (opened anew from the pins) on the client's
    /// connection maps: for an afxdp worker, which writes each connection
    /// it learns there before the host sees its SYN-ACK, so that the `tc`
    /// programs carry every connection the host knows if the worker dies.
    pub fn connection_maps(&self) -> Result<ConnectionMaps, InstanceError> {
        let maps_dir = self.dir.join("maps");
        let open = |name: &'static str| -> Result<HashMap<MapData, FlowV4, EndpointV4>, InstanceError> {
            let data = MapData::from_pin(maps_dir.join(name)).map_err(map_error(name))?;
            HashMap::try_from(Map::HashMap(data)).map_err(map_error(name))
        };
        Ok(ConnectionMaps { egress: open(MAP_EGRESS)?, ingress: open(MAP_INGRESS)? })
    }

    /// The SYNs the TC egress program sent to client VIPs, mapped into
    /// memory: see [`crate::SentSyns`].
    pub fn sent_syns(&self) -> Result<crate::SentSyns, InstanceError> {
        crate::SentSyns::open(&self.dir.join("maps"))
    }

    /// The ring buffer sockops tells closed bypassed client connections
    /// through ([`MAP_CLOSES`]), opened from its pin: for the afxdp agent,
    /// its one reader.
    pub fn closes(&self) -> Result<Closes, InstanceError> {
        let name = MAP_CLOSES;
        let data = MapData::from_pin(self.dir.join("maps").join(name)).map_err(map_error(name))?;
        Ok(Closes(RingBuf::try_from(Map::RingBuf(data)).map_err(map_error(name))?))
    }

    fn map(&self, name: &'static str) -> Result<&Map, InstanceError> {
        self.maps
            .get(name)
            .ok_or(InstanceError::Map { name, source: MapError::InvalidName { name: name.into() } })
    }

    fn hash_map<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, InstanceError> {
        let map = self
            .maps
            .get_mut(name)
            .ok_or(InstanceError::Map { name, source: MapError::InvalidName { name: name.into() } })?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(TcCounter, u64)>, InstanceError> {
        Ok(self
            .counters_per_cpu()?
            .into_iter()
            .map(|(counter, values)| (counter, values.iter().sum()))
            .collect())
    }

    /// The counters, one value per possible CPU (index = CPU number).
    pub fn counters_per_cpu(&self) -> Result<Vec<(TcCounter, Vec<u64>)>, InstanceError> {
        let map = self.map(MAP_TC_STATS)?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_error(MAP_TC_STATS))?;
        TcCounter::ALL
            .iter()
            .map(|&counter| {
                let values = stats.get(&(counter as u32), 0).map_err(map_error(MAP_TC_STATS))?;
                Ok((counter, values.to_vec()))
            })
            .collect()
    }

    /// The counters of each VIP:vport the programs have counted for,
    /// summed over CPUs.
    pub fn vip_counters(&self) -> Result<Vec<(SocketAddrV4, VipStats)>, InstanceError> {
        let map = self.map(MAP_VIP_STATS)?;
        let stats: PerCpuHashMap<_, EndpointV4, VipStats> =
            PerCpuHashMap::try_from(map).map_err(map_error(MAP_VIP_STATS))?;
        let mut out = Vec::new();
        for entry in stats.iter() {
            let (vip, per_cpu) = entry.map_err(map_error(MAP_VIP_STATS))?;
            let mut total = VipStats::default();
            for cpu in per_cpu.iter() {
                for (sum, value) in total.counters.iter_mut().zip(cpu.counters) {
                    *sum += value;
                }
            }
            out.push((vip.into(), total));
        }
        out.sort_by_key(|(vip, _)| *vip);
        Ok(out)
    }

    /// How many connections the tables hold (`max_connections` when they
    /// were made).
    pub fn capacity(&self) -> Result<u32, InstanceError> {
        let map = self.map(MAP_EGRESS)?;
        let Map::HashMap(data) = map else {
            return Err(InstanceError::Incompatible(format!("{MAP_EGRESS} is no hash map")));
        };
        Ok(data.info().map_err(map_error(MAP_EGRESS))?.max_entries())
    }

    /// Entries of the egress table: bypassed connections and the rooms
    /// reserved for connections opening (or on the LB path).
    pub fn egress_entries(&self) -> Result<usize, InstanceError> {
        self.flow_entries(MAP_EGRESS)
    }

    /// Entries of the ingress table: bypassed connections, by the flow
    /// their replies arrive on.
    pub fn ingress_entries(&self) -> Result<usize, InstanceError> {
        self.flow_entries(MAP_INGRESS)
    }

    fn flow_entries(&self, name: &'static str) -> Result<usize, InstanceError> {
        let table: HashMap<_, FlowV4, EndpointV4> =
            HashMap::try_from(self.map(name)?).map_err(map_error(name))?;
        Ok(table.keys().count())
    }

    /// The bypassed connections the client side knows.
    pub fn connections(&self) -> Result<Vec<Connection>, InstanceError> {
        let map = self.map(MAP_EGRESS)?;
        let egress: HashMap<_, FlowV4, EndpointV4> = HashMap::try_from(map).map_err(map_error(MAP_EGRESS))?;
        let mut out = Vec::new();
        for entry in egress.iter() {
            let (flow, backend) = entry.map_err(map_error(MAP_EGRESS))?;
            // A reservation: the connection is opening, or took the LB path.
            if backend.is_unlearned() {
                continue;
            }
            let (client, vip) = endpoints(&flow);
            out.push(Connection { client, vip, backend: backend.into() });
        }
        Ok(out)
    }

    /// Makes both entries of a connection (as TC ingress does from a
    /// SYN-ACK). For tests and manual repair.
    pub fn remember(&mut self, connection: &Connection) -> Result<(), InstanceError> {
        self.connection_maps()?.remember(connection)
    }

    /// Removes both entries of a connection (as sockops does when its
    /// socket closes).
    pub fn forget(&mut self, connection: &Connection) -> Result<(), InstanceError> {
        let [(egress_key, _), (ingress_key, _)] = entries_of(connection);
        let mut ingress = self.hash_map::<FlowV4, EndpointV4>(MAP_INGRESS)?;
        // Absent is fine: the kernel may have removed it meanwhile.
        let _ = ingress.remove(&ingress_key);
        let mut egress = self.hash_map::<FlowV4, EndpointV4>(MAP_EGRESS)?;
        let _ = egress.remove(&egress_key);
        Ok(())
    }

    /// The links pinned for this instance (what is attached).
    pub fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("links"))
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Loads the TC program `name` of an object into the kernel.
fn load_classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, InstanceError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(InstanceError::Program { name, source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(program_error(name))?;
    program.load().map_err(program_error(name))?;
    Ok(program)
}

/// Inserts every entry, then removes the keys not among them.
fn replace<K: Pod + Eq + std::hash::Hash, V: Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    name: &'static str,
    entries: &[(K, V)],
) -> Result<(), InstanceError> {
    for (key, value) in entries {
        map.insert(key, value, 0).map_err(map_error(name))?;
    }
    let wanted: HashSet<K> = entries.iter().map(|(k, _)| *k).collect();
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
    for key in stale {
        map.remove(&key).map_err(map_error(name))?;
    }
    Ok(())
}

fn replace_prefixes(
    trie: &mut LpmTrie<&mut MapData, [u8; 4], u8>,
    name: &'static str,
    prefixes: &[Prefix],
) -> Result<(), InstanceError> {
    // A Prefix has its host bits cleared already.
    let wanted: StdHashMap<([u8; 4], u32), ()> =
        prefixes.iter().map(|p| ((p.addr(), u32::from(p.len())), ())).collect();
    for (addr, len) in wanted.keys() {
        trie.insert(&Key::new(*len, *addr), 1, 0).map_err(map_error(name))?;
    }
    let stale: Vec<Key<[u8; 4]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains_key(&(key.data(), key.prefix_len())))
        .collect();
    for key in stale {
        trie.remove(&key).map_err(map_error(name))?;
    }
    Ok(())
}

fn loaded_hash_map<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, InstanceError> {
    let map = crate::find_map_mut(ebpf, name).map_err(map_error(name))?;
    HashMap::try_from(map).map_err(map_error(name))
}

fn loaded_trie<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, [u8; 4], u8>, InstanceError> {
    let map = crate::find_map_mut(ebpf, name).map_err(map_error(name))?;
    LpmTrie::try_from(map).map_err(map_error(name))
}

/// Makes each configuration map hold exactly `config`: new entries
/// first, stale ones removed after, so a restart never shows an empty
/// configuration to packets in flight.
fn configure(ebpf: &mut Ebpf, config: &InstanceConfig) -> Result<(), InstanceError> {
    let rules = &config.rules;
    let local: Vec<([u8; 4], u8)> = rules.local_addrs.iter().map(|a| (*a, 1)).collect();
    replace(&mut loaded_hash_map(ebpf, MAP_LOCAL_ADDRS)?, MAP_LOCAL_ADDRS, &local)?;
    let local_vips: Vec<([u8; 4], u8)> = rules.local_vips.iter().map(|a| (*a, 1)).collect();
    replace(&mut loaded_hash_map(ebpf, MAP_LOCAL_VIPS)?, MAP_LOCAL_VIPS, &local_vips)?;
    let services: Vec<(EndpointV4, [u8; 2])> =
        rules.services.iter().map(|s| (s.vip, s.local_port.to_be_bytes())).collect();
    replace(&mut loaded_hash_map(ebpf, MAP_SERVICES)?, MAP_SERVICES, &services)?;
    let vips: Vec<(EndpointV4, u8)> = rules.vips.iter().map(|vip| (*vip, 1)).collect();
    replace(&mut loaded_hash_map(ebpf, MAP_CLIENT_VIPS)?, MAP_CLIENT_VIPS, &vips)?;
    replace_prefixes(&mut loaded_trie(ebpf, MAP_LB_SOURCES)?, MAP_LB_SOURCES, &rules.lb_sources)?;
    replace_prefixes(&mut loaded_trie(ebpf, MAP_BACKENDS)?, MAP_BACKENDS, &rules.backends)?;
    let map = crate::find_map_mut(ebpf, MAP_TC_CONFIG).map_err(map_error(MAP_TC_CONFIG))?;
    let mut settings: Array<_, TcConfig> = Array::try_from(map).map_err(map_error(MAP_TC_CONFIG))?;
    let dsr_addr = rules.dsr_addr.unwrap_or([0; 4]);
    let settings_value = TcConfig { syn_mark: config.syn_mark, dsr_addr, time_wait: config.time_wait };
    settings.set(0, settings_value, 0).map_err(map_error(MAP_TC_CONFIG))
}

fn attach(ebpf: &mut Ebpf, config: &InstanceConfig, links_dir: &Path) -> Result<(), InstanceError> {
    for (name, attach_type, prefix) in [
        (TC_INGRESS_PROGRAM, TcAttachType::Ingress, "ingress"),
        (TC_EGRESS_PROGRAM, TcAttachType::Egress, "egress"),
    ] {
        let program = load_classifier(ebpf, name)?;
        for interface in &config.interfaces {
            let pin = links_dir.join(format!("{prefix}-{interface}"));
            let id = match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let old = old.unpin().map_err(|e| link_error(&pin)(e.to_string()))?;
                    let link =
                        SchedClassifierLink::try_from(old).map_err(|e| link_error(&pin)(e.to_string()))?;
                    program.attach_to_link(link).map_err(program_error(name))?
                }
                Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => program
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(program_error(name))?,
                Err(e) => return Err(link_error(&pin)(e.to_string())),
            };
            let link = program.take_link(id).map_err(program_error(name))?;
            let link = FdLink::try_from(link).map_err(|e| link_error(&pin)(e.to_string()))?;
            link.pin(&pin).map_err(|e| link_error(&pin)(e.to_string()))?;
        }
    }
    let program: &mut SockOps = ebpf
        .program_mut(SOCKOPS_PROGRAM)
        .ok_or(InstanceError::Program { name: SOCKOPS_PROGRAM, source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(program_error(SOCKOPS_PROGRAM))?;
    program.load().map_err(program_error(SOCKOPS_PROGRAM))?;
    let cgroup = File::open(&config.cgroup).map_err(io_error("opening the cgroup", &config.cgroup))?;
    // A cgroup bpf_link is always "multi": the kernel wants no flags.
    let id = program.attach(&cgroup, CgroupAttachMode::Single).map_err(program_error(SOCKOPS_PROGRAM))?;
    let pin = links_dir.join("sockops");
    // The new program runs beside the old one for a moment, then the
    // old one goes (a sockops link cannot be updated through aya).
    if let Ok(old) = PinnedLink::from_pin(&pin) {
        old.unpin().map_err(|e| link_error(&pin)(e.to_string()))?;
    }
    let link = program.take_link(id).map_err(program_error(SOCKOPS_PROGRAM))?;
    let link = FdLink::try_from(link).map_err(|e| link_error(&pin)(e.to_string()))?;
    link.pin(&pin).map_err(|e| link_error(&pin)(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syn_answer_request_is_a_syn_with_its_sequence_timestamp_and_vip() {
        let flow =
            FlowV4::between(&EndpointV4::new([10, 10, 1, 2], 40000), &EndpointV4::new([10, 10, 0, 11], 8080));
        let vip = EndpointV4::new([10, 10, 100, 1], 80);
        let frame = syn_answer_request(&flow, &vip, &SynClock { seq: 0x0102_0304, tsval: Some(0x0a0b_0c0d) });
        #[rustfmt::skip]
        let expected: [u8; 66] = [
            // Ethernet: no destination, VIP:vport as the source, IPv4.
            0, 0, 0, 0, 0, 0, 10, 10, 100, 1, 0, 80, 0x08, 0x00,
            // IPv4: 52 bytes, TTL 64, TCP, 10.10.1.2 -> 10.10.0.11.
            0x45, 0, 0, 52, 0, 0, 0, 0, 64, 6, 0, 0, 10, 10, 1, 2, 10, 10, 0, 11,
            // TCP: 40000 -> 8080, the sequence number, 32 bytes, SYN.
            0x9c, 0x40, 0x1f, 0x90, 1, 2, 3, 4, 0, 0, 0, 0, 0x80, 0x02, 0, 0, 0, 0, 0, 0,
            // NOP, NOP, timestamps (TSval, TSecr 0).
            1, 1, 8, 10, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 0,
        ];
        assert_eq!(frame, expected);
        let untimed = syn_answer_request(&flow, &vip, &SynClock { seq: 1, tsval: None });
        assert_eq!(untimed[54..66], [1; 12], "NOPs only");
        // The core's view reads the same timestamp back.
        assert_eq!(heels_dataplane::option::timestamp_value(&frame[54..66]), Some(0x0a0b_0c0d));
    }

    #[test]
    fn a_close_record_is_the_flow_as_laid_out_in_memory() {
        assert_eq!(core::mem::size_of::<FlowV4>(), 12, "FlowV4 changed: flow_record must follow");
        // 10.0.0.1:36000 -> 10.10.100.1:80, as sockops writes it.
        let record = [10, 0, 0, 1, 10, 10, 100, 1, 0x8c, 0xa0, 0, 80];
        let client = EndpointV4::new([10, 0, 0, 1], 36000);
        let vip = EndpointV4::new([10, 10, 100, 1], 80);
        let flow = flow_record(&record);
        assert_eq!(flow, Some(FlowV4::between(&client, &vip)));
        assert_eq!(endpoints(&flow.unwrap()), (client.into(), vip.into()));
        assert_eq!(flow_record(&record[..11]), None);
        assert_eq!(flow_record(&[0; 16]), None);
    }
}
