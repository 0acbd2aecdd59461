//! Pins left by another version (an upgrade): a counter or configuration
//! map of another shape is replaced, one of the right shape is kept; the
//! connection maps of an earlier type or size have their entries moved to
//! the new maps; a connection map of another layout stops the start. Maps
//! are made with bpftool as an older build would have pinned them. Needs
//! root.

use std::path::PathBuf;
use std::process::Command;

use heels_bpf::tc::{migrate_connections, replace_pins_of_another_shape};
use heels_common::{EndpointV4, FlowV4, TcCounter, MAP_EGRESS, MAP_TC_STATS, MAX_CONNECTIONS};

/// A pin directory of its own, removed when the test ends.
struct Pins(PathBuf);

impl Pins {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/heels-upgrade-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf (run as root)");
        Pins(dir)
    }

    /// Pins a map as `bpftool map create` makes it.
    fn pin(&self, name: &str, kind: &str, key: usize, value: usize, entries: u32) -> PathBuf {
        let path = self.0.join(name);
        let status = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&path)
            .args(["type", kind, "key", &key.to_string(), "value", &value.to_string()])
            .args(["entries", &entries.to_string(), "name", &name[..name.len().min(15)]])
            .status()
            .expect("bpftool (installed by scripts/setup.sh)");
        assert!(status.success(), "bpftool map create {name}");
        path
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn counters_of_another_shape_are_replaced_and_the_right_shape_kept() {
    let pins = Pins::new("counters");
    // Two counters fewer than this version has: an older agent's.
    let old = pins.pin(MAP_TC_STATS, "percpu_array", 4, 8, TcCounter::COUNT - 2);
    let replaced = replace_pins_of_another_shape(&pins.0, MAX_CONNECTIONS).unwrap();
    assert_eq!(replaced, [MAP_TC_STATS]);
    assert!(!old.exists(), "the old counters' pin is gone; the loader makes the new one");
    // This version's shape stays, with what it counted.
    let current = pins.pin(MAP_TC_STATS, "percpu_array", 4, 8, TcCounter::COUNT);
    assert_eq!(replace_pins_of_another_shape(&pins.0, MAX_CONNECTIONS).unwrap(), Vec::<String>::new());
    assert!(current.exists());
}

#[test]
fn a_connection_map_of_another_shape_stops_the_start() {
    let pins = Pins::new("connections");
    let size = std::mem::size_of::<FlowV4>();
    // Another value layout: nothing to move the entries to.
    let egress = pins.pin(MAP_EGRESS, "lru_hash", size, 16, 1024);
    let error = replace_pins_of_another_shape(&pins.0, MAX_CONNECTIONS).unwrap_err().to_string();
    assert!(error.contains(MAP_EGRESS) && error.contains("heels down"), "{error}");
    assert!(egress.exists(), "connection state is never dropped on the way");
}

/// `bpftool map update` of one entry, key and value as bytes.
fn put(map: &std::path::Path, key: &[u8], value: &[u8]) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>();
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(map)
        .arg("key")
        .args(hex(key))
        .arg("value")
        .args(hex(value))
        .status()
        .unwrap();
    assert!(status.success(), "bpftool map update");
}

fn entry(i: u8) -> (FlowV4, EndpointV4) {
    let client = EndpointV4::new([10, 10, 1, 2], 40_000 + u16::from(i));
    let vip = EndpointV4::new([10, 10, 100, 1], 80);
    (FlowV4::between(&client, &vip), EndpointV4::new([10, 10, 3, i], 8080))
}

fn bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the key and value types are plain #[repr(C)] bytes (Pod).
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

/// What `bpftool map dump` lists: the number of entries.
fn entries(map: &std::path::Path) -> usize {
    let output = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(map).output().unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    dump.as_array().map_or(0, Vec::len)
}

#[test]
fn the_connections_of_an_earlier_lru_table_move_to_the_new_one() {
    let pins = Pins::new("migrate");
    let (key, value) = (std::mem::size_of::<FlowV4>(), std::mem::size_of::<EndpointV4>());
    // The earlier version's table: an LRU of 262,144, three connections.
    let old = pins.pin(MAP_EGRESS, "lru_hash", key, value, MAX_CONNECTIONS);
    for i in 1..=3 {
        let (flow, backend) = entry(i);
        put(&old, &bytes(&flow), &bytes(&backend));
    }
    // Two connections are more than a table of two can take over: refused,
    // the old table in place.
    let error = replace_pins_of_another_shape(&pins.0, 2).unwrap_err().to_string();
    assert!(error.contains("holds 3 entries") && error.contains("max_connections = 2"), "{error}");
    assert!(old.exists());
    assert_eq!(replace_pins_of_another_shape(&pins.0, 1000).unwrap(), [MAP_EGRESS]);
    assert!(!old.exists(), "moved aside, for the loader to make the new table");
    // The loader's new table (a plain hash of 1,000), then the move.
    let new = pins.pin(MAP_EGRESS, "hash", key, value, 1000);
    let (flow, newer) = (entry(2).0, EndpointV4::new([10, 10, 3, 99], 8080));
    put(&new, &bytes(&flow), &bytes(&newer));
    migrate_connections(&pins.0).unwrap();
    assert_eq!(entries(&new), 3, "every connection moved");
    assert!(!pins.0.join(format!("{MAP_EGRESS}_MIGRATING")).exists(), "the old table is gone");
    // What the new programs wrote meanwhile is newer and stays.
    let output = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&new)
        .arg("key")
        .args(bytes(&flow).iter().map(|b| format!("0x{b:02x}")))
        .output()
        .unwrap();
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let value: Vec<u8> = found["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(value, bytes(&newer));
}
