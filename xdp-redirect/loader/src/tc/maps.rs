//! The instance's pinned maps: the connections, the server's records and
//! listeners, the closes sockops reports, and their migration to a new
//! shape.

use super::*;

/// The records of translated SYNs, by the 4-tuple the stack sees (sockops
/// writes the SYN-ACK form for those).
pub(super) const MAP_TRANSLATED: &str = "HEELS_TRANSLATED";
/// The socket storage sockops puts on every listener it saw start.
pub(super) const MAP_SERVED_LISTENERS: &str = "HEELS_SERVED_LISTENERS";

/// See [`Instance::server_maps`].
#[derive(Debug)]
pub struct ServerMaps {
    /// `HEELS_TRANSLATED`: translated 4-tuple -> VIP:vport.
    pub translated: HashMap<MapData, FlowV4, EndpointV4>,
}

/// See [`Instance::connection_maps`].
#[derive(Debug)]
pub struct ConnectionMaps {
    pub(super) egress: HashMap<MapData, FlowV4, EndpointV4>,
    pub(super) ingress: HashMap<MapData, FlowV4, EndpointV4>,
}

impl ConnectionMaps {
    /// Makes both entries of `connection`, as TC ingress does from a
    /// SYN-ACK (the egress entry replaces the room sockops reserved).
    pub fn remember(&mut self, connection: &Connection) -> Result<(), InstanceError> {
        let [(egress_key, backend), (ingress_key, vip)] = entries_of(connection);
        self.egress.insert(egress_key, backend, 0).map_err(map_error(MAP_EGRESS))?;
        self.ingress.insert(ingress_key, vip, 0).map_err(map_error(MAP_INGRESS))
    }
}

/// A connection's two entries: its egress flow (CIP:cport -> VIP:vport) to
/// DIP:dport, its ingress flow (DIP:dport -> CIP:cport) to VIP:vport.
pub(super) fn entries_of(connection: &Connection) -> [(FlowV4, EndpointV4); 2] {
    let (client, vip, backend) = (
        EndpointV4::from(connection.client),
        EndpointV4::from(connection.vip),
        EndpointV4::from(connection.backend),
    );
    [(FlowV4::between(&client, &vip), backend), (FlowV4::between(&backend, &client), vip)]
}

/// See [`Instance::closes`].
pub struct Closes(pub(super) RingBuf<MapData>);

impl std::fmt::Debug for Closes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Closes")
    }
}

/// Readable when sockops wrote a record (an event loop waits on it).
impl std::os::fd::AsFd for Closes {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Each closed connection, as (CIP:cport, VIP:vport), until the ring is
/// empty (it yields again once sockops writes more). A record of another
/// size (none the programs write) is skipped.
impl Iterator for Closes {
    type Item = (SocketAddrV4, SocketAddrV4);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(flow) = flow_record(&self.0.next()?) {
                return Some(endpoints(&flow));
            }
        }
    }
}

/// A flow's (source, destination).
pub(super) fn endpoints(flow: &FlowV4) -> (SocketAddrV4, SocketAddrV4) {
    (
        SocketAddrV4::new(flow.src_addr.into(), u16::from_be_bytes(flow.src_port)),
        SocketAddrV4::new(flow.dst_addr.into(), u16::from_be_bytes(flow.dst_port)),
    )
}

/// A [`FlowV4`] from the bytes the kernel copied it as (`#[repr(C)]`, byte
/// arrays only: no padding), or `None` for a record of another size.
pub(super) fn flow_record(bytes: &[u8]) -> Option<FlowV4> {
    let bytes: &[u8; 12] = bytes.try_into().ok()?;
    let [a0, a1, a2, a3, b0, b1, b2, b3, p0, p1, q0, q1] = *bytes;
    Some(FlowV4 {
        src_addr: [a0, a1, a2, a3],
        dst_addr: [b0, b1, b2, b3],
        src_port: [p0, p1],
        dst_port: [q0, q1],
    })
}

/// How to type a map opened from its pin.
pub(super) type MapKind = fn(MapData) -> Map;

/// The maps a running instance is read and written through, opened from
/// their pins (no object is loaded, no other map created).
pub(super) const RUNTIME_MAPS: [(&str, MapKind); 4] = [
    (MAP_EGRESS, Map::HashMap),
    (MAP_INGRESS, Map::HashMap),
    (MAP_TC_STATS, Map::PerCpuArray),
    (MAP_VIP_STATS, Map::PerCpuHashMap),
];

/// The pinned maps that hold connections: never dropped to make way for
/// another version's shape (that would break the connections they carry).
pub(super) const CONNECTION_MAPS: [&str; 5] =
    [MAP_EGRESS, MAP_INGRESS, MAP_TRANSLATED, "HEELS_SOCK_BACKENDS", MAP_SERVED_LISTENERS];

/// The connection maps whose entries move to a map of the new shape when
/// theirs changes (their type or `max_connections`): same key, same value.
pub(super) const MIGRATED_MAPS: [&str; 2] = [MAP_EGRESS, MAP_INGRESS];

/// A pinned connection map (LRU or plain hash, as an earlier version or
/// this one made it), to read and write from userspace.
pub(super) fn connection_map(pin: &Path) -> Result<HashMap<MapData, FlowV4, EndpointV4>, InstanceError> {
    let incompatible = |e: MapError| InstanceError::Incompatible(format!("{}: {e}", pin.display()));
    let data = MapData::from_pin(pin).map_err(incompatible)?;
    HashMap::try_from(Map::HashMap(data)).map_err(incompatible)
}

/// Copies the entries of connection maps moved aside by
/// [`replace_pins_of_another_shape`] into the maps of the new shape, once
/// the new programs run (what the old programs wrote until then is
/// copied too), and removes the old pins. An entry the new map already
/// holds (written since by the new programs) is newer and stays.
pub fn migrate_connections(maps_dir: &Path) -> Result<(), InstanceError> {
    for name in MIGRATED_MAPS {
        let aside = migrating_pin(maps_dir, name);
        if !aside.exists() {
            continue;
        }
        let old = connection_map(&aside)?;
        let mut new = connection_map(&maps_dir.join(name))?;
        for entry in old.iter() {
            let (key, value) = entry.map_err(map_error(name))?;
            // BPF_NOEXIST.
            match new.insert(key, value, 1) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(InstanceError::Map { name, source: e }),
            }
        }
        std::fs::remove_file(&aside).map_err(io_error("removing", &aside))?;
    }
    Ok(())
}

/// Where a connection map being migrated waits beside the new one.
pub(super) fn migrating_pin(maps_dir: &Path, name: &str) -> PathBuf {
    // (bpffs refuses names with a dot.)
    maps_dir.join(format!("{name}_MIGRATING"))
}

/// Before loading over the pins of a previous agent (an upgrade): aya reuses
/// a pinned map by name whatever its shape, so a map whose type, key, value
/// or size changed between versions would be used with the wrong layout.
/// Such a counter or configuration map is unpinned here, and the loader
/// makes it anew (counters restart at zero; configuration is refilled).
/// `HEELS_EGRESS` and `HEELS_INGRESS` of another type or size (an LRU of an
/// earlier version, another `max_connections`) are moved aside, and their
/// entries copied into the new maps once the new programs are attached
/// ([`migrate_connections`]); a size below the connections they hold stops
/// the start. Any other connection map of another shape stops the start,
/// naming it: only `heels down` (which ends the bypass of open connections)
/// can replace it. Returns the maps replaced.
pub fn replace_pins_of_another_shape(maps_dir: &Path, capacity: u32) -> Result<Vec<String>, InstanceError> {
    let object = aya_obj::Object::parse(crate::EBPF_OBJECT)
        .map_err(|e| InstanceError::Incompatible(format!("parsing the eBPF object: {e}")))?;
    let mut replaced = Vec::new();
    for (name, map) in &object.maps {
        let pin = maps_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
            continue;
        };
        let pinned = (
            info.map_type().map_or(u32::MAX, |t| t as u32),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let migrated = MIGRATED_MAPS.contains(&name.as_str());
        let entries = if migrated { capacity } else { map.max_entries() };
        let built = (map.map_type(), map.key_size(), map.value_size(), entries);
        if pinned == built {
            continue;
        }
        if migrated && (pinned.1, pinned.2) == (built.1, built.2) {
            let held = connection_map(&pin)?.keys().count();
            if held > capacity as usize {
                return Err(InstanceError::Incompatible(format!(
                    "pinned map {name} holds {held} entries, more than max_connections = {capacity}: raise it, \
                     or `heels down` first (open bypassed connections then take the LB path)"
                )));
            }
            // bpffs cannot rename: pin the map again aside, then unpin it here.
            let aside = migrating_pin(maps_dir, name);
            let moving = |e: String| InstanceError::Incompatible(format!("moving {name} aside: {e}"));
            let data = MapData::from_pin(&pin).map_err(|e| moving(e.to_string()))?;
            data.pin(&aside).map_err(|e| moving(e.to_string()))?;
            std::fs::remove_file(&pin).map_err(io_error("removing", &pin))?;
            replaced.push(name.clone());
            continue;
        }
        if CONNECTION_MAPS.contains(&name.as_str()) {
            return Err(InstanceError::Incompatible(format!(
                "pinned map {name} (type, key, value, entries) is {pinned:?}, this version's is {built:?}: \
                 `heels down` first (open bypassed connections then take the LB path)"
            )));
        }
        std::fs::remove_file(&pin).map_err(io_error("removing", &pin))?;
        replaced.push(name.clone());
    }
    Ok(replaced)
}
