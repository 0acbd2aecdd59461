//! The manifests of `deploy/`, embedded so that tests (and the lab) use
//! exactly what is shipped.

/// The systemd unit.
pub const SYSTEMD_UNIT: &str = include_str!("../../deploy/heels.service");

/// The systemd drop-in for the afxdp dataplane.
pub const SYSTEMD_AFXDP_DROPIN: &str = include_str!("../../deploy/heels-afxdp.conf");

/// The Kubernetes manifests (Namespace, ConfigMap, DaemonSet).
pub const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");

/// The commented example configuration.
pub const EXAMPLE_CONFIG: &str = include_str!("../../deploy/heels.toml");

/// The values of `key=` lines of a systemd unit, in order.
pub fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('=')).map(str::trim).collect()
}

/// The capabilities the unit keeps (`CapabilityBoundingSet`), as `setpriv`
/// names them: `CAP_NET_ADMIN` is `net_admin`.
pub fn unit_capabilities() -> Vec<String> {
    capabilities(SYSTEMD_UNIT)
}

/// The capabilities of the unit with the afxdp drop-in (systemd merges the
/// drop-in's bounding set into the unit's).
pub fn afxdp_unit_capabilities() -> Vec<String> {
    let mut all = capabilities(SYSTEMD_UNIT);
    all.extend(capabilities(SYSTEMD_AFXDP_DROPIN));
    all
}

fn capabilities(unit: &str) -> Vec<String> {
    unit_values(unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|value| value.split_whitespace())
        .map(|cap| cap.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_units_capabilities() {
        assert_eq!(unit_capabilities(), ["bpf", "perfmon", "net_admin"]);
        assert_eq!(
            afxdp_unit_capabilities(),
            ["bpf", "perfmon", "net_admin", "sys_admin", "net_raw", "ipc_lock"]
        );
        assert_eq!(unit_values("[Service]\nRestart=always\n# Restart=no\n", "Restart"), ["always"]);
    }
}
