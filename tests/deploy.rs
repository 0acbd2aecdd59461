//! The manifests of deploy/ as shipped: each parses; the arguments each
//! passes to `heels` are ones the binary accepts; the configuration each
//! ships passes `--check-config`; the systemd unit and the DaemonSet keep
//! the same measured capabilities (the lab tests, tests/lab/, run agents with them);
//! the Grafana dashboard reads only series the agent serves.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use heels::cli::{Cli, Command as HeelsCommand};
use heels_agent::config::AgentConfig;
use heels_agent::deploy::{unit_capabilities, unit_values, DAEMONSET, SYSTEMD_UNIT};
use yaml_rust2::{Yaml, YamlLoader};

/// The address the downward API would give a node.
const NODE_IP: &str = "10.0.0.5";

fn heels() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_heels"))
}

/// Parses `heels ARGS...` as the binary does; the agent's flags.
fn agent_args(args: &[String]) -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>, Vec<Ipv4Addr>) {
    let cli = Cli::try_parse_from(std::iter::once("heels".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("heels {args:?}: {e}"));
    match cli.command {
        HeelsCommand::Agent { config, check_config, addresses, .. } => (config, check_config, addresses),
        _ => panic!("heels {args:?} is not `heels agent`"),
    }
}

fn check_config_with_binary(text: &str, extra: &[&str]) -> String {
    let path = std::env::temp_dir().join(format!("heels-deploy-test-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let output =
        Command::new(heels()).arg("agent").arg("--check-config").arg(&path).args(extra).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "--check-config: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_systemd_unit_passes_arguments_heels_accepts() {
    for line in
        unit_values(SYSTEMD_UNIT, "ExecStart").into_iter().chain(unit_values(SYSTEMD_UNIT, "ExecStartPre"))
    {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "/usr/local/bin/heels", "{line}");
        let (config, check_config, _) = agent_args(&words[1..]);
        let path = config.or(check_config).unwrap();
        assert_eq!(
            path,
            Path::new("/etc/heels/heels.toml"),
            "the unit's install comment puts deploy/heels.toml there"
        );
    }
    assert_eq!(unit_values(SYSTEMD_UNIT, "Restart"), ["always"]);
    assert_eq!(unit_capabilities(), ["bpf", "perfmon", "net_admin"]);
    // The configuration the unit's install comment copies in.
    let stdout = check_config_with_binary(heels_agent::deploy::EXAMPLE_CONFIG, &[]);
    assert!(stdout.contains("valid (instance web1)") && !stdout.contains("warning"), "{stdout}");
}

#[test]
fn systemd_accepts_the_unit() {
    // The unit as installed, with the binary where the unit expects it.
    let dir = std::env::temp_dir().join(format!("heels-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("heels.service");
    std::fs::write(&unit, SYSTEMD_UNIT.replace("/usr/local/bin/heels", &heels().display().to_string()))
        .unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&unit).output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.expect("systemd-analyze (package systemd, installed by scripts/setup.sh)");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
}

/// The one document of `kind`.
fn document<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec().map_or(vec![], |v| v.iter().map(|s| s.as_str().expect("a string").to_owned()).collect())
}

/// A container's `command` + `args`, `$(VAR)` expanded as the kubelet does
/// (every variable here comes from the node's address).
fn container_args(container: &Yaml) -> Vec<String> {
    for env in container["env"].as_vec().unwrap() {
        if env["name"].as_str() == Some("HOST_IP") {
            assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("status.hostIP"));
        }
    }
    let mut words = strings(&container["command"]);
    words.extend(strings(&container["args"]));
    assert_eq!(words[0], "heels", "{words:?}");
    words[1..].iter().map(|w| w.replace("$(HOST_IP)", NODE_IP)).collect()
}

#[test]
fn the_daemonset_passes_arguments_heels_accepts_and_a_valid_configuration() {
    let docs = YamlLoader::load_from_str(DAEMONSET).expect("deploy/daemonset.yaml parses");
    let config_map = document(&docs, "ConfigMap");
    let config_text = config_map["data"]["heels.toml"].as_str().expect("the ConfigMap holds heels.toml");
    let node_ip: Ipv4Addr = NODE_IP.parse().unwrap();

    let daemonset = document(&docs, "DaemonSet");
    assert_eq!(daemonset["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let agent = &pod["containers"][0];
    let args = container_args(agent);
    let (config, _, addresses) = agent_args(&args);
    assert_eq!(config.as_deref(), Some(Path::new("/etc/heels/heels.toml")));
    assert_eq!(addresses, [node_ip]);
    assert!(args.windows(2).any(|w| w == ["--metrics-addr", "10.0.0.5:9464"]), "{args:?}");

    // The shipped configuration, with the node's address, as the agent reads it.
    let config =
        AgentConfig::parse_with_addresses(config_text, &addresses).expect("the ConfigMap's heels.toml");
    assert_eq!(config.addresses, [node_ip]);
    let stdout = check_config_with_binary(config_text, &["--address", NODE_IP]);
    assert!(stdout.contains("valid (instance heels)") && !stdout.contains("warning"), "{stdout}");
    // Without --address it would not start: the file leaves the address to each node.
    assert!(AgentConfig::parse(config_text).unwrap_err().to_string().contains("--address"));

    // The init container checks the same file with the same address.
    let check =
        pod["initContainers"].as_vec().unwrap().iter().find(|c| c["name"].as_str() == Some("check-config"));
    let (_, check_config, check_addresses) =
        agent_args(&container_args(check.expect("a check-config init container")));
    assert_eq!(
        (check_config.as_deref(), check_addresses),
        (Some(Path::new("/etc/heels/heels.toml")), vec![node_ip])
    );

    // Readiness and liveness from the metrics endpoint.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["path"].as_str(), Some("/healthz"), "{probe}");
        assert_eq!(agent[probe]["httpGet"]["port"].as_i64(), Some(9464), "{probe}");
    }
    // The same measured capabilities as the systemd unit, nothing else.
    let security = &agent["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let added: Vec<String> =
        strings(&security["capabilities"]["add"]).iter().map(|c| c.to_ascii_lowercase()).collect();
    assert_eq!(added, unit_capabilities());
    // bpffs, the host's cgroup v2 root (the config's `cgroup`), the state.
    let mounts: Vec<(&str, &str)> = agent["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    for wanted in [("bpffs", "/sys/fs/bpf"), ("state", "/run/heels"), ("config", "/etc/heels")] {
        assert!(mounts.contains(&wanted), "{wanted:?} in {mounts:?}");
    }
    assert!(mounts.contains(&("cgroup", config.cgroup.to_str().unwrap())), "{mounts:?}");
    let host_paths: Vec<(&str, &str)> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    for wanted in [("bpffs", "/sys/fs/bpf"), ("cgroup", "/sys/fs/cgroup"), ("state", "/run/heels")] {
        assert!(host_paths.contains(&wanted), "{wanted:?} in {host_paths:?}");
    }
}

/// Every series name a scrape of an agent running both roles shows, with
/// the afxdp workers' families too.
fn served_series() -> std::collections::BTreeSet<String> {
    use heels_agent::metrics::Snapshot;
    use heels_common::{TcCounter, VipStats};
    let vip = "10.10.100.1:80".parse().unwrap();
    let snapshot = Snapshot {
        instance: "web1".to_owned(),
        per_cpu: TcCounter::ALL.iter().map(|&c| (c, vec![1, 2])).collect(),
        per_vip: vec![(vip, VipStats::default())],
        entries: vec![(vip, 1)],
        swept: 0,
        sweeps: 0,
        capacity: 1000,
        afxdp: Some(heels_agent::afxdp::AfxdpReport::default()),
    };
    snapshot
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("heels_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_grafana_dashboard_reads_only_series_the_agent_serves_and_shows_what_operators_watch() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .expect("deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let served = served_series();
    let mut read = std::collections::BTreeSet::new();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("each panel has targets").clone())
        .map(|target| target["expr"].as_str().expect("each target has an expression").to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = variable["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    for expr in &queries {
        for name in metric_names(expr) {
            assert!(served.contains(&name), "{name} (in {expr}) is not a series the agent serves");
            read.insert(name);
        }
    }
    for watched in [
        "heels_table_entries",
        "heels_table_capacity",
        "heels_vip_rewritten_bytes_total",
        "heels_syn_fallbacks_total",
        "heels_table_full_total",
        "heels_afxdp_dropped_frames_total",
        "heels_afxdp_fill_starved_total",
    ] {
        assert!(read.contains(watched), "no panel shows {watched}");
    }
}
