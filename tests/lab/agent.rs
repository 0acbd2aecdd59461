//! The agent's own life: a restart under a transfer, the sweep, and the commands that read an instance.

use super::*;

#[test]
fn a_long_transfer_survives_an_agent_restart() {
    let lab_ = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let mut lab = lab_;
    let size = 2 * 1024 * 1024 * 1024;
    let mut child = lab
        .spawn_load(&LoadSpec {
            concurrency: 1,
            request: size,
            response: size,
            ..verify_spec(lab.service(), 1)
        })
        .unwrap();
    let client = lab.client_instance().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&client, TcCounter::EgressRewritten) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let conns = heels_agent::report::conns(&client, true).unwrap();
    assert!(conns.contains("10.10.100.1:80"), "the transfer is bypassed: {conns}");
    let before = counter(&client, TcCounter::EgressRewritten);
    lab.restart_agents().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the transfer must still be running after the restart");
    let report = finish_load(child).unwrap();
    assert_eq!(report.connections_ok, 1, "errors: {:?}", report.errors);
    assert_eq!((report.resets, report.connections_failed), (0, 0));
    assert_eq!(report.bytes_verified, 2 * size);
    assert!(counter(&client, TcCounter::EgressRewritten) > before, "the kernel kept translating");
    assert_only_syns(&lab.lb_counters().unwrap(), 1);
}

#[test]
fn the_agent_drops_entries_whose_socket_is_gone() {
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let client = lab.client_instance().unwrap();
    // An entry no socket stands for (as if its close callback was missed).
    let orphan = heels_bpf::Connection {
        client: SocketAddrV4::new(heels_lab::CLIENT, 1),
        vip: lab.service(),
        backend: SocketAddrV4::new(heels_lab::server_addr(0), heels_lab::SERVER_PORT),
    };
    Instance::open(&client).unwrap().remember(&orphan).unwrap();
    // A real connection, alive throughout: it runs for a time, longer than
    // the wait below (not for a count of exchanges, which a fast machine
    // finishes early).
    let mut child = lab.spawn_load(&pingpong_spec(lab.service(), 15.0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let connections = || Instance::open(&client).unwrap().connections().unwrap();
    while connections().contains(&orphan) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = connections();
    assert!(!left.contains(&orphan), "the orphan entry was dropped");
    assert!(child.try_wait().unwrap().is_none(), "the real connection is still running");
    assert_eq!(left.len(), 1, "the real connection kept its entry: {left:?}");
    let report = finish_load(child).unwrap();
    assert_eq!((report.connections_ok, report.resets), (1, 0), "{:?}", report.errors);
}

#[test]
fn status_conns_and_stats_read_an_instance() {
    let lab = lab(LbKind::Dnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let client = lab.client_instance().unwrap();
    let status = heels_agent::report::status(&client, false).unwrap();
    assert!(
        status.contains("egress-eth0") && status.contains("ingress-eth0") && status.contains("sockops"),
        "{status}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&heels_agent::report::stats(&client, true).unwrap()).unwrap();
    assert_eq!(stats["syn_ack_learned"], 0);
    verify(&lab, lab.service(), 5);
    let stats: serde_json::Value =
        serde_json::from_str(&heels_agent::report::stats(&client, true).unwrap()).unwrap();
    assert_eq!(stats["syn_ack_learned"], 5);
    let error = heels_agent::report::stats("no-such-instance", false).unwrap_err().to_string();
    assert!(error.contains("no heels instance"), "{error}");

    // `heels down` takes the client's heels away: nothing stays pinned, and
    // its connections go through the LB again.
    heels_agent::run::down(&client).unwrap();
    assert!(!heels_bpf::tc::instance_dir(&client).exists());
    let before = lab.lb_counters().unwrap();
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
    let after = lab.lb_counters().unwrap();
    assert!(after.to_servers_packets - before.to_servers_packets > after.syns - before.syns, "{after:?}");
}
