//! The metrics endpoint under traffic and the quick lab bench's JSON.

use super::*;

/// Every family the metrics module documents, as it appears in a scrape.
const DECLARED_SERIES: [&str; 25] = [
    "heels_agent_info",
    "heels_syns_translated_total",
    "heels_syns_translated_from_local_vip_total",
    "heels_syns_translated_onto_time_wait_total",
    "heels_syn_fallbacks_total",
    "heels_ipip_decapsulated_packets_total",
    "heels_syn_acks_learned_total",
    "heels_syn_acks_refused_total",
    "heels_rewritten_packets_total",
    "heels_rewritten_bytes_total",
    "heels_egress_socket_hits_total",
    "heels_lb_resets_sent_total",
    "heels_icmp_errors_rewritten_total",
    "heels_options_written_total",
    "heels_options_no_room_total",
    "heels_helper_errors_total",
    "heels_table_entries_removed_total",
    "heels_sweeps_total",
    "heels_table_entries",
    "heels_table_capacity",
    "heels_table_full_total",
    "heels_vip_syns_translated_total",
    "heels_vip_syn_acks_learned_total",
    "heels_vip_rewritten_bytes_total",
    "heels_vip_options_written_total",
];

#[test]
fn agents_with_only_the_units_capabilities_serve_metrics_that_move_under_traffic() {
    let overrides = Overrides {
        agent_capabilities: Some(heels_agent::deploy::unit_capabilities()),
        ..Overrides::default()
    };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let vip = format!("vip=\"{}\"", lab.service());
    // Clients that connect and send nothing (a port scanner, a stuck
    // probe) do not hold up a scrape.
    let idle: Vec<_> = (0..3).map(|_| lab.connect_metrics(Role::Client).unwrap()).collect();
    let before = (
        lab.scrape_within(Role::Client, "/metrics", Duration::from_secs(1)).unwrap(),
        lab.scrape(Role::Server(1), "/metrics").unwrap(),
    );
    drop(idle);
    for text in [&before.0, &before.1] {
        for family in DECLARED_SERIES {
            // The whole series name: `heels_table_entries` is not
            // `heels_table_entries_removed_total`.
            let named = |line: &&str| line.split(['{', ' ']).next() == Some(family);
            assert!(text.lines().any(|l| named(&l)), "{family} absent from\n{text}");
        }
        assert!(text.contains(&vip), "the configured VIP has its series from the start:\n{text}");
    }
    assert_eq!(lab.scrape(Role::Client, "/healthz").unwrap(), "ok\n");

    // Under traffic: request-response on one open connection for a few
    // seconds (pingpong runs one connection).
    let connections = 1;
    let spec = LoadSpec {
        mode: Mode::Pingpong,
        connections,
        concurrency: connections,
        request: 64,
        response: 64,
        seconds: 4.0,
        ..verify_spec(lab.service(), connections)
    };
    let load = lab.spawn_load(&spec).unwrap();
    let egress = |text: &str| sample_sum(text, "heels_rewritten_packets_total", &["direction=\"egress\""]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let during = loop {
        let text = lab.scrape(Role::Client, "/metrics").unwrap();
        if egress(&text) > egress(&before.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(egress(&during) > egress(&before.0), "no egress rewrite counted while traffic ran:\n{during}");
    let report = finish_load(load).unwrap();
    assert_eq!((report.connections_ok, report.connections_failed), (connections, 0), "{:?}", report.errors);
    assert_only_syns(&lab.lb_counters().unwrap(), connections);

    let client = lab.scrape(Role::Client, "/metrics").unwrap();
    let server =
        (lab.scrape(Role::Server(1), "/metrics").unwrap(), lab.scrape(Role::Server(2), "/metrics").unwrap());
    let moved = |text: &str, old: &str, family: &str, labels: &[&str]| {
        let (new, old) = (sample_sum(text, family, labels), sample_sum(old, family, labels));
        assert!(new > old, "{family} {labels:?} did not move ({old} -> {new}):\n{text}");
        new
    };
    assert!(moved(&client, &before.0, "heels_syn_acks_learned_total", &[]) >= connections as u64);
    assert!(moved(&client, &before.0, "heels_vip_syn_acks_learned_total", &[&vip]) >= connections as u64);
    moved(&client, &before.0, "heels_options_written_total", &["form=\"syn\""]);
    moved(&client, &before.0, "heels_vip_options_written_total", &[&vip, "form=\"syn\""]);
    for direction in ["direction=\"egress\"", "direction=\"ingress\""] {
        let packets = moved(&client, &before.0, "heels_rewritten_packets_total", &[direction]);
        let bytes = moved(&client, &before.0, "heels_rewritten_bytes_total", &[direction]);
        // At least an Ethernet, IPv4 and TCP header each.
        assert!(bytes >= 54 * packets, "{direction}: {bytes} bytes in {packets} packets");
        assert_eq!(
            moved(&client, &before.0, "heels_vip_rewritten_packets_total", &[&vip, direction]),
            packets
        );
        assert_eq!(moved(&client, &before.0, "heels_vip_rewritten_bytes_total", &[&vip, direction]), bytes);
    }
    let translated = sample_sum(&server.0, "heels_syns_translated_total", &[])
        + sample_sum(&server.1, "heels_syns_translated_total", &[]);
    let per_vip = sample_sum(&server.0, "heels_vip_syns_translated_total", &[&vip])
        + sample_sum(&server.1, "heels_vip_syns_translated_total", &[&vip]);
    assert!(translated >= connections as u64 && per_vip == translated, "{translated} {per_vip}");
    let forms = sample_sum(&server.0, "heels_options_written_total", &["form=\"syn_ack\""])
        + sample_sum(&server.1, "heels_options_written_total", &["form=\"syn_ack\""]);
    assert!(forms >= connections as u64, "SYN-ACK forms: {forms}");
    assert_eq!(sample_sum(&client, "heels_helper_errors_total", &[]), 0);
}

/// The bench end to end, short: every tool through every path of the
/// full-NAT bed, one JSON object with every figure in the documented form.
#[test]
fn the_quick_bench_writes_one_json_object_with_every_figure() {
    let dir = std::env::temp_dir().join(format!("heels-bench-test-{}", std::process::id()));
    let json = dir.join("bench.json");
    std::fs::create_dir_all(&dir).unwrap();
    let output = std::process::Command::new(heels())
        .args(["lab", "bench", "--quick", "--seconds", "1", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let report: serde_json::Value = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| panic!("no JSON report: {}", String::from_utf8_lossy(&output.stderr)));
    let svg = std::fs::read_to_string(dir.join("bench.svg")).unwrap_or_default();
    let table = std::fs::read_to_string(dir.join("bench.md")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(svg.starts_with("<svg") && table.contains("| bulk-1 | Gbit/s | iperf3 |"), "{table}");
    let results = report["results"].as_array().expect("results");
    for row in results {
        for field in ["lb", "path", "workload", "value", "unit", "ratio_to_direct", "spread"] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        assert!(row["spread"]["min"].as_f64() <= row["value"].as_f64(), "{row}");
        assert!(row["value"].as_f64() <= row["spread"]["max"].as_f64(), "{row}");
    }
    let value = |path: &str, workload: &str| {
        results
            .iter()
            .find(|r| r["lb"] == "fullnat" && r["path"] == path && r["workload"] == workload)
            .and_then(|r| r["value"].as_f64())
            .unwrap_or_else(|| panic!("no {path} {workload}"))
    };
    for path in ["direct", "vanilla", "heels-tc", "heels-afxdp"] {
        for workload in
            ["bulk-1", "bulk-4", "latency-p50", "latency-p99.9", "http-new-connections", "http-requests-open"]
        {
            assert!(value(path, workload) > 0.0, "{path} {workload}");
        }
        assert!(value(path, "connections-client-closes-after-direct") > 0.0, "{path}");
        assert_eq!(value(path, "connections-failed"), 0.0, "{path}: heels never fails a connection");
    }
    // heels keeps the LB to the SYN; the vanilla LB forwards every message.
    for path in ["heels-tc", "heels-afxdp"] {
        let packets = value(path, "lb-packets-per-connection");
        assert!(packets <= 1.5, "{path}: {packets}");
        let bytes = value(path, "lb-bytes-per-message-1MiB");
        assert!(bytes < 200.0, "{path}: {bytes}");
    }
    let (heels_bytes, vanilla_bytes) =
        (value("heels-tc", "lb-bytes-per-message-1MiB"), value("vanilla", "lb-bytes-per-message-1MiB"));
    assert!(heels_bytes < 200.0, "{heels_bytes}");
    assert!(vanilla_bytes > 1024.0 * 1024.0, "{vanilla_bytes}");
    assert!(report["cost"].as_array().is_some_and(|c| c.len() == 3), "{}", report["cost"]);
}
