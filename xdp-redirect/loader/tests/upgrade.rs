//! Pins left by another version (an upgrade): a counter or configuration
//! map of another shape is replaced, one of the right shape is kept, a
//! connection map of another shape stops the start. Maps are made with
//! bpftool as an older build would have pinned them. Needs root.

use std::path::PathBuf;
use std::process::Command;

use heels_common::{FlowV4, TcCounter, MAP_EGRESS, MAP_TC_STATS};
use heels_xdp::tc::replace_pins_of_another_shape;

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
    let replaced = replace_pins_of_another_shape(&pins.0).unwrap();
    assert_eq!(replaced, [MAP_TC_STATS]);
    assert!(!old.exists(), "the old counters' pin is gone; the loader makes the new one");
    // This version's shape stays, with what it counted.
    let current = pins.pin(MAP_TC_STATS, "percpu_array", 4, 8, TcCounter::COUNT);
    assert_eq!(replace_pins_of_another_shape(&pins.0).unwrap(), Vec::<String>::new());
    assert!(current.exists());
}

#[test]
fn a_connection_map_of_another_shape_stops_the_start() {
    let pins = Pins::new("connections");
    let size = std::mem::size_of::<FlowV4>();
    let egress = pins.pin(MAP_EGRESS, "lru_hash", size, 16, 1024);
    let error = replace_pins_of_another_shape(&pins.0).unwrap_err().to_string();
    assert!(error.contains(MAP_EGRESS) && error.contains("heels down"), "{error}");
    assert!(egress.exists(), "connection state is never dropped on the way");
}
