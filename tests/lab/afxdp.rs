//! The afxdp dataplane on the client, on the servers, on both: bypass, fallbacks, kills and restarts.

use super::*;

// The afxdp dataplane on the client, on the servers, on both. The tc
// programs stand by on every afxdp host: they must rewrite nothing while
// the workers run.

/// With heels afxdp on `client` or `server` (or both) and tc (or afxdp)
/// on the other end: every byte both ways, the client's own address seen,
/// only SYNs through the LB, and each afxdp host's workers did the work
/// while its tc programs stood by.
fn afxdp_bypassed(kind: LbKind, client: Dataplane, server: Dataplane) {
    let lab = lab(kind, client, server, Overrides::default());
    let report = verify(&lab, lab.service(), CONNECTIONS);
    assert_all_verified(&report, CONNECTIONS);
    assert_eq!(report.real_address_seen, CONNECTIONS, "every server saw the client's own address");
    assert_eq!(report.per_server.len(), 2, "the LB spread connections: {:?}", report.per_server);
    assert_only_syns(&lab.lb_counters().unwrap(), CONNECTIONS);
    let client_instance = lab.client_instance().unwrap();
    assert!(
        counter(&client_instance, TcCounter::SynOptionWritten) >= CONNECTIONS as u64,
        "sockops wrote the SYN form"
    );
    let servers = lab.server_instances();
    if client == Dataplane::Afxdp {
        afxdp_client_did_the_work(&lab);
    } else {
        assert!(counter(&client_instance, TcCounter::SynAckLearned) >= CONNECTIONS as u64);
    }
    if server == Dataplane::Afxdp {
        let syns = wait_for_servers(&lab, |s| s.translated >= CONNECTIONS as u64);
        let translated = syns.translated;
        assert!(translated >= CONNECTIONS as u64, "the servers' workers translated the SYNs: {syns:?}");
        assert_eq!(syns.errors, 0, "listener lookups failed");
        if kind != LbKind::Ipip && client == Dataplane::Tc {
            // The LB forwards the client's SYNs as its stack sent them,
            // checksum pending (offload is on); the workers finished them.
            // (An afxdp client's SYNs leave its workers complete, and the
            // IPIP LB's own port finishes them: see the lab.)
            assert!(syns.completed >= CONNECTIONS as u64, "pending SYN checksums finished: {syns:?}");
        }
        assert_eq!(sum_over(&servers, TcCounter::SynTranslated), 0, "the servers' tc programs stood by");
        // Sockops wrote the SYN-ACK form for what the workers translated
        // (and only that: a SYN-ACK form for an untranslated SYN would
        // point the client at the wrong 4-tuple).
        let written = sum_over(&servers, TcCounter::SynAckOptionWritten);
        assert!(written >= CONNECTIONS as u64 && written <= translated, "{written} forms, {translated} SYNs");
    } else {
        assert!(sum_over(&servers, TcCounter::SynTranslated) >= CONNECTIONS as u64);
        assert_forms_only_for_translations(&lab);
    }
}

/// The afxdp client learned every connection, rewrote both ways, lost
/// nothing, served its counters on the metrics endpoint, and left nothing
/// behind once the connections closed.
fn afxdp_client_did_the_work(lab: &Lab) {
    let afxdp = wait_for_report(lab, |r| r.learned >= CONNECTIONS as u64);
    assert!(afxdp.learned >= CONNECTIONS as u64, "{afxdp:?}");
    assert!(afxdp.rewritten_to_uplink > 0 && afxdp.rewritten_to_host > 0, "{afxdp:?}");
    assert_eq!((afxdp.unsteered, afxdp.bad_descriptors, afxdp.learned_lost), (0, 0, 0), "{afxdp:?}");
    assert_eq!((afxdp.tx_full_to_uplink, afxdp.tx_full_to_host), (0, 0), "{afxdp:?}");
    // The servers send with checksum offload on, as Linux does on a veth:
    // every SYN-ACK reached the workers pending, and left them complete.
    assert!(afxdp.checksums_completed >= CONNECTIONS as u64, "{afxdp:?}");
    // The metrics endpoint serves the workers' counters.
    let metrics = lab.scrape(Role::Client, "/metrics").unwrap();
    assert!(metrics.contains("dataplane=\"afxdp\""), "{metrics}");
    let learned: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("heels_afxdp_connections_learned_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no heels_afxdp_connections_learned_total in\n{metrics}"));
    assert!(learned >= CONNECTIONS as u64, "{learned}");
    let client = lab.client_instance().unwrap();
    for standing_by in [TcCounter::SynAckLearned, TcCounter::EgressRewritten, TcCounter::IngressRewritten] {
        assert_eq!(counter(&client, standing_by), 0, "{standing_by:?}: the tc programs stood by");
    }
    // Closed sockets took their entries with them: the standby's first
    // (sockops), then the workers' table and steering.
    let afxdp = wait_for_report(lab, |r| r.table_entries == 0);
    assert_eq!(afxdp.table_entries, 0, "{afxdp:?}");
    assert_eq!(Instance::open(&client).unwrap().connections().unwrap(), vec![]);
}

/// Closed connections leave the afxdp client's table, its steering and the
/// standby maps at once: sockops reports each close through its ring
/// buffer. The sweep runs once an hour here, so only the reports can have
/// done it.
#[test]
fn afxdp_client_forgets_connections_as_sockops_reports_their_close() {
    let overrides = Overrides { sweep_seconds: Some(3600), ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Afxdp, Dataplane::Tc, overrides);
    let report = verify(&lab, lab.service(), CONNECTIONS);
    assert_all_verified(&report, CONNECTIONS);
    assert_only_syns(&lab.lb_counters().unwrap(), CONNECTIONS);
    let afxdp = wait_for_report(&lab, |r| r.forgotten >= CONNECTIONS as u64 && r.table_entries == 0);
    assert!(afxdp.learned >= CONNECTIONS as u64, "{afxdp:?}");
    assert!(afxdp.closes_reported >= CONNECTIONS as u64, "sockops reported every close: {afxdp:?}");
    assert!(afxdp.forgotten >= CONNECTIONS as u64, "the workers forgot every connection: {afxdp:?}");
    assert_eq!(afxdp.table_entries, 0, "{afxdp:?}");
    let client = lab.client_instance().unwrap();
    assert_eq!(
        Instance::open(&client).unwrap().connections().unwrap(),
        vec![],
        "the standby's entries went too"
    );
}

#[test]
fn afxdp_client_fullnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Fullnat, Dataplane::Afxdp, Dataplane::Tc);
}

#[test]
fn afxdp_client_dnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Dnat, Dataplane::Afxdp, Dataplane::Tc);
}

#[test]
fn afxdp_client_ipip_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Ipip, Dataplane::Afxdp, Dataplane::Tc);
}

#[test]
fn afxdp_servers_fullnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Fullnat, Dataplane::Tc, Dataplane::Afxdp);
}

#[test]
fn afxdp_servers_dnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Dnat, Dataplane::Tc, Dataplane::Afxdp);
}

#[test]
fn afxdp_servers_ipip_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Ipip, Dataplane::Tc, Dataplane::Afxdp);
}

#[test]
fn afxdp_everywhere_fullnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Fullnat, Dataplane::Afxdp, Dataplane::Afxdp);
}

#[test]
fn afxdp_everywhere_dnat_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Dnat, Dataplane::Afxdp, Dataplane::Afxdp);
}

#[test]
fn afxdp_everywhere_ipip_lb_sees_only_the_syn() {
    afxdp_bypassed(LbKind::Ipip, Dataplane::Afxdp, Dataplane::Afxdp);
}

#[test]
fn afxdp_client_falls_back_without_heels_on_the_servers() {
    for kind in [LbKind::Fullnat, LbKind::Dnat, LbKind::Ipip] {
        let lab = lab(kind, Dataplane::Afxdp, Dataplane::None, Overrides::default());
        let report = verify(&lab, lab.service(), CONNECTIONS);
        assert_all_verified(&report, CONNECTIONS);
        let lb = lab.lb_counters().unwrap();
        assert!(lb.to_servers_packets > 4 * lb.syns, "{kind:?}: the data crossed the LB: {lb:?}");
        // Everything went through the workers, unchanged.
        let afxdp = wait_for_report(&lab, |r| r.to_uplink > 4 * CONNECTIONS as u64);
        assert!(afxdp.to_uplink > 4 * CONNECTIONS as u64, "{kind:?}: {afxdp:?}");
        assert_eq!(
            (afxdp.learned, afxdp.rewritten_to_uplink, afxdp.rewritten_to_host),
            (0, 0, 0),
            "{kind:?}"
        );
    }
}

#[test]
fn afxdp_servers_fall_back_without_heels_on_the_client() {
    for kind in [LbKind::Fullnat, LbKind::Dnat, LbKind::Ipip] {
        fallback(kind, Dataplane::None, Dataplane::Afxdp, Overrides::default());
        // (`fallback` checked the bytes, the LB's counters and the standby's.)
    }
}

#[test]
fn afxdp_servers_refuse_a_syn_no_served_listener_would_answer() {
    // The agents are told the service listens on 9090; the servers listen
    // elsewhere. Then: the servers listen before their agents start, so
    // sockops never marked their listeners.
    let elsewhere = Overrides { server_local_port: Some(9090), ..Overrides::default() };
    let before = Overrides { servers_before_agents: true, ..Overrides::default() };
    for (what, overrides) in [("no listener", elsewhere), ("an unserved listener", before)] {
        let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Afxdp, overrides);
        let report = verify(&lab, lab.service(), 10);
        assert_all_verified(&report, 10);
        let syns = wait_for_servers(&lab, |s| s.refused >= 10);
        assert_eq!(syns.translated, 0, "{what}: nothing translated");
        assert!(syns.refused >= 10, "{what}: the workers passed the SYNs on: {syns:?}");
        let servers = lab.server_instances();
        assert_eq!(
            sum_over(&servers, TcCounter::SynAckOptionWritten),
            0,
            "{what}: a refused SYN got the form"
        );
        let lb = lab.lb_counters().unwrap();
        assert!(lb.to_servers_packets > lb.syns, "{what}: the connections crossed the LB: {lb:?}");
    }
}

#[test]
fn killing_an_afxdp_server_agent_fails_open() {
    let mut lab = lab(LbKind::Dnat, Dataplane::Tc, Dataplane::Afxdp, Overrides::default());
    // An established, bypassed connection that runs through the kill.
    let running = lab.spawn_load(&pingpong_spec(lab.service(), 6.0)).unwrap();
    let syns = wait_for_servers(&lab, |s| s.translated >= 1);
    assert_eq!(syns.translated, 1, "the workers translated the running connection's SYN");
    for server in [Role::Server(1), Role::Server(2)] {
        let killed = lab.kill_agent(server).unwrap();
        // The kernel deletes the private namespace, and heels0 with it,
        // soon after the process (from a work queue, later on a loaded
        // machine): waited for up to 10 s.
        let has_pair = |lab: &Lab| {
            let output = lab.host(server).netns.ip(&["link", "show"]).unwrap();
            String::from_utf8_lossy(&output.stdout).contains("heels0")
        };
        while has_pair(&lab) && killed.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!has_pair(&lab), "heels0 outlived the agent on {server}");
    }
    // New connections: the tc programs, standing by, translate them.
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    assert!(sum_over(&lab.server_instances(), TcCounter::SynTranslated) >= 10, "the standby took the SYNs");
    // The established connection needs nothing of a server: it went on.
    let report = finish_load(running).unwrap();
    assert_eq!((report.connections_ok, report.resets), (1, 0), "{:?}", report.errors);
    assert_only_syns(&lab.lb_counters().unwrap(), 11);
    // The next start takes the SYNs back.
    for server in [Role::Server(1), Role::Server(2)] {
        lab.start_agent_on(server).unwrap();
    }
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    let syns = wait_for_servers(&lab, |s| s.translated >= 10);
    assert!(syns.translated >= 10, "the new workers translated: {syns:?}");
}

/// The afxdp agents with only the capabilities the unit and its afxdp
/// drop-in leave them (deploy/heels-afxdp.conf), on every host.
#[test]
fn afxdp_agents_with_only_the_dropins_capabilities_bypass() {
    let capabilities = heels_agent::deploy::afxdp_unit_capabilities();
    let overrides = Overrides { agent_capabilities: Some(capabilities), ..Overrides::default() };
    let lab = lab(LbKind::Dnat, Dataplane::Afxdp, Dataplane::Afxdp, overrides);
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    let syns = wait_for_servers(&lab, |s| s.translated >= 10);
    assert!(syns.translated >= 10 && syns.errors == 0, "{syns:?}");
    let afxdp = wait_for_report(&lab, |r| r.learned >= 10);
    assert!(afxdp.learned >= 10, "{afxdp:?}");
    assert_only_syns(&lab.lb_counters().unwrap(), 10);
}

#[test]
fn a_connection_survives_an_afxdp_agent_restart() {
    // afxdp on every host: the client's and the servers' agents restart.
    let mut lab = lab(LbKind::Fullnat, Dataplane::Afxdp, Dataplane::Afxdp, Overrides::default());
    // Exchanges for a time that outlasts the restart (not a size, which a
    // fast machine finishes first).
    let child = lab.spawn_load(&pingpong_spec(lab.service(), 8.0)).unwrap();
    let afxdp = wait_for_report(&lab, |r| r.rewritten_to_uplink >= 100);
    assert!(afxdp.rewritten_to_uplink >= 100, "the connection runs through the workers: {afxdp:?}");
    let first = afxdp.pid;
    // SIGTERM: the workers hand the connection to the tc programs, and
    // the next agent takes it back from them.
    lab.restart_agents().unwrap();
    let afxdp = wait_for_report(&lab, |r| r.pid != first && r.rewritten_to_uplink >= 100);
    assert!(afxdp.pid != first, "a new agent reports: {afxdp:?}");
    assert_eq!(afxdp.table_entries, 2, "the new workers took the connection over: {afxdp:?}");
    assert!(afxdp.rewritten_to_uplink >= 100 && afxdp.rewritten_to_host >= 100, "{afxdp:?}");
    assert!(heels_agent::instance::pid_alive(child.id()), "the connection outlasted the restart");
    let report = finish_load(child).unwrap();
    assert_eq!(report.connections_ok, 1, "errors: {:?}", report.errors);
    assert_eq!((report.resets, report.connections_failed), (0, 0));
    assert_only_syns(&lab.lb_counters().unwrap(), 1);
}

#[test]
fn killing_the_afxdp_agent_fails_open() {
    let mut lab = lab(LbKind::Fullnat, Dataplane::Afxdp, Dataplane::Tc, Overrides::default());
    let client = lab.client_instance().unwrap();
    // An established, bypassed connection that runs through the kill.
    let running = lab.spawn_load(&pingpong_spec(lab.service(), 6.0)).unwrap();
    let afxdp = wait_for_report(&lab, |r| r.rewritten_to_uplink >= 50);
    assert!(afxdp.rewritten_to_uplink >= 50, "the connection runs through the workers: {afxdp:?}");
    let standby_before = counter(&client, TcCounter::EgressRewritten);

    let killed = lab.kill_agent(Role::Client).unwrap();
    // The kernel takes the pair, its routes and the XDP programs away
    // with the process, soon after (waited for up to 10 s): the VIP is
    // routed as before.
    let has = |args: &[&str], what: &str| {
        let output = lab.client().netns.ip(args).unwrap();
        String::from_utf8_lossy(&output.stdout).contains(what)
    };
    while has(&["route", "show", "10.10.100.1"], "heels0") && killed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !has(&["route", "show", "10.10.100.1"], "heels0"),
        "the VIP route into heels0 outlived the agent"
    );
    assert!(!has(&["link", "show"], "heels0"), "heels0 outlived the agent");
    assert!(!has(&["link", "show", "dev", "eth0"], "xdp"), "the XDP classifier outlived the agent");
    // New connections go through the LB.
    let before = lab.lb_counters().unwrap();
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
    let after = lab.lb_counters().unwrap();
    assert!(after.syns - before.syns >= 5, "{after:?}");
    // The established connection kept working: the tc programs took it.
    let report = finish_load(running).unwrap();
    assert_eq!((report.connections_ok, report.resets), (1, 0), "{:?}", report.errors);
    assert!(
        counter(&client, TcCounter::EgressRewritten) > standby_before,
        "the standby rewrote after the kill"
    );

    // `heels agent --cleanup` removes what the dead agent left (its pins:
    // the standby), and the next start brings heels back.
    let config = lab.work_dir().join("client.toml");
    let mut cleanup = std::process::Command::new(heels());
    cleanup.args(["agent", "--cleanup", "--config"]).arg(&config);
    let output = heels_lab::output_within(
        lab.spawn_on(Role::Client, cleanup.stdout(std::process::Stdio::piped())).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!heels_bpf::tc::instance_dir(&client).exists(), "the pins are gone");
    assert!(!has(&["link", "show"], "heels0"));
    lab.start_agent_on(Role::Client).unwrap();
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    let afxdp = wait_for_report(&lab, |r| r.learned >= 10);
    assert!(afxdp.learned >= 10, "{afxdp:?}");
}
