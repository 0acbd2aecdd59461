//! An instance's run state on this host: what the agent saves under
//! [`STATE_DIR`] (its configuration, the sysctl it changed, the afxdp
//! workers' report) and whether the agent that wrote it still runs.

use std::path::{Path, PathBuf};

/// Where the agent keeps a copy of each instance's configuration, for
/// `heels down` and `heels status`.
pub const STATE_DIR: &str = "/run/heels";

/// The saved configuration of an instance.
pub fn state_file(instance: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{instance}.toml"))
}

/// Removes what the agent saved of an instance (its configuration and the
/// sysctl it changed) without touching the host: for a lab whose namespace
/// goes away with it.
pub fn remove_saved_state(instance: &str) {
    let _ = std::fs::remove_file(state_file(instance));
    let _ = std::fs::remove_file(report_file(instance));
    let _ = std::fs::remove_file(saved_timestamps_file(instance));
}

/// The file that keeps the host's `net.ipv4.tcp_timestamps` as it was
/// before an instance changed it, for `heels down` to restore.
pub fn saved_timestamps_file(instance: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{instance}.tcp_timestamps"))
}

/// Where the agent of `instance` writes its [`AfxdpReport`](crate::afxdp::report::AfxdpReport).
pub fn report_file(instance: &str) -> std::path::PathBuf {
    std::path::Path::new(STATE_DIR).join(format!("{instance}.afxdp.json"))
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}
