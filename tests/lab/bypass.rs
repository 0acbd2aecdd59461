//! What each LB kind carries once heels runs on both ends, and the SYNs, SYN-ACKs and hosts that keep the LB path.

use super::*;

#[test]
fn fullnat_lb_sees_only_the_syn() {
    bypassed(LbKind::Fullnat);
}

#[test]
fn dnat_lb_sees_only_the_syn() {
    bypassed(LbKind::Dnat);
}

#[test]
fn ipip_lb_sees_only_the_syn() {
    bypassed(LbKind::Ipip);
}

#[test]
fn ipip_backends_that_decapsulate_in_xdp_are_bypassed() {
    bypassed_with(LbKind::Ipip, Overrides { ipip_decap_in_xdp: true, ..Overrides::default() });
}

#[test]
fn dual_stack_listeners_and_clients_are_bypassed() {
    let overrides = Overrides { server_dual_stack: true, ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    // IPv4 sockets, then IPv6 sockets to the VIP's IPv4-mapped address.
    for mapped in [false, true] {
        let report = lab
            .load(&LoadSpec { mapped, ..verify_spec(lab.service(), CONNECTIONS) })
            .expect("the load client runs");
        assert_all_verified(&report, CONNECTIONS);
        assert_eq!(report.real_address_seen, CONNECTIONS, "mapped: {mapped}");
    }
    assert_only_syns(&lab.lb_counters().unwrap(), 2 * CONNECTIONS);
    let servers = lab.server_instances();
    assert!(sum_over(&servers, TcCounter::SynAckOptionWritten) >= 2 * CONNECTIONS as u64);
    assert_forms_only_for_translations(&lab);
    let client = lab.client_instance().unwrap();
    assert!(counter(&client, TcCounter::SynAckLearned) >= 2 * CONNECTIONS as u64);
    // A live connection of an IPv6 socket keeps its entries through the
    // agent's sweeps (every second here): its socket is in /proc/net/tcp6.
    let connections = || Instance::open(&client).unwrap().connections().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connections().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connections(), vec![], "the closed connections' entries went");
    let child = lab
        .spawn_load(&LoadSpec {
            mode: Mode::Pingpong,
            connections: 1,
            concurrency: 1,
            seconds: 5.0,
            mapped: true,
            ..verify_spec(lab.service(), 1)
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while connections().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = connections();
    assert_eq!(live.len(), 1, "the IPv6 socket's connection is bypassed");
    let sweeps = || sample_sum(&lab.scrape(Role::Client, "/metrics").unwrap(), "heels_sweeps_total", &[]);
    let (first, deadline) = (sweeps(), Instant::now() + Duration::from_secs(4));
    while sweeps() < first + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let swept = sweeps() - first;
    assert!(swept >= 3, "only {swept} sweeps within 4 s (one a second configured)");
    assert_eq!(connections(), live, "the entry outlived {swept} sweeps");
    let report = finish_load(child).unwrap();
    assert_eq!((report.connections_ok, report.resets), (1, 0), "{:?}", report.errors);
}

#[test]
fn a_syn_no_listener_would_answer_takes_the_lb_path() {
    // The agents are told the service listens on 9090; the servers listen
    // elsewhere. Translated, the SYN would meet a closed port and the
    // client a reset from an address it never called.
    for kind in [LbKind::Fullnat, LbKind::Ipip] {
        let overrides = Overrides { server_local_port: Some(9090), ..Overrides::default() };
        let lab = lab(kind, Dataplane::Tc, Dataplane::Tc, overrides);
        let report = verify(&lab, lab.service(), 10);
        assert_all_verified(&report, 10);
        let servers = lab.server_instances();
        assert_eq!(sum_over(&servers, TcCounter::SynTranslated), 0, "{kind:?}");
        assert!(sum_over(&servers, TcCounter::SynNoListener) >= 10, "{kind:?}");
        assert_eq!(
            sum_over(&servers, TcCounter::SynAckOptionWritten),
            0,
            "{kind:?}: a refused SYN got the form"
        );
        let lb = lab.lb_counters().unwrap();
        assert!(lb.to_servers_packets > lb.syns, "{kind:?}: the connections crossed the LB: {lb:?}");
    }
}

#[test]
fn a_listener_opened_before_heels_keeps_the_lb_path() {
    let overrides = Overrides { servers_before_agents: true, ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    let servers = lab.server_instances();
    assert_eq!(sum_over(&servers, TcCounter::SynTranslated), 0);
    assert!(sum_over(&servers, TcCounter::SynListenerUnserved) >= 10);
    let lb = lab.lb_counters().unwrap();
    assert!(lb.to_servers_packets > lb.syns, "the connections crossed the LB: {lb:?}");
}

#[test]
fn the_ipip_lb_counts_what_comes_back_through_it() {
    // Servers without heels whose replies go back through the LB host:
    // its counter toward the clients must see them.
    let lab = lab(LbKind::Ipip, Dataplane::None, Dataplane::None, Overrides::default());
    for i in 0..2 {
        lab.server(i).netns.ip(&["route", "replace", "default", "via", &heels_lab::LB.to_string()]).unwrap();
    }
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
    let lb = lab.lb_counters().unwrap();
    assert!(lb.to_clients_packets >= 5, "{lb:?}");
}

#[test]
fn fallback_without_heels_on_the_client() {
    for kind in [LbKind::Fullnat, LbKind::Dnat, LbKind::Ipip] {
        fallback(kind, Dataplane::None, Dataplane::Tc, Overrides::default());
    }
    let decap_in_xdp = Overrides { ipip_decap_in_xdp: true, ..Overrides::default() };
    fallback(LbKind::Ipip, Dataplane::None, Dataplane::Tc, decap_in_xdp);
}

#[test]
fn fallback_without_heels_on_the_servers() {
    for kind in [LbKind::Fullnat, LbKind::Dnat, LbKind::Ipip] {
        fallback(kind, Dataplane::Tc, Dataplane::None, Overrides::default());
    }
}

#[test]
fn a_syn_naming_a_vip_the_server_does_not_serve_reaches_the_stack_unchanged() {
    // The client treats server1's own address as a VIP and connects to it
    // directly: its SYN carries a SYN form for 10.10.0.11:8080, which the
    // server does not serve.
    let direct = SocketAddrV4::new(heels_lab::server_addr(0), heels_lab::SERVER_PORT);
    let overrides = Overrides { extra_client_vips: vec![direct], ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let report = verify(&lab, direct, 10);
    assert_all_verified(&report, 10);
    assert_eq!(report.real_address_seen, 10);
    let client = lab.client_instance().unwrap();
    assert_eq!(counter(&client, TcCounter::SynOptionWritten), 10);
    let servers = lab.server_instances();
    assert_eq!(sum_over(&servers, TcCounter::SynRefused), 10);
    assert_eq!(sum_over(&servers, TcCounter::SynTranslated), 0);
    assert_eq!(sum_over(&servers, TcCounter::SynAckOptionWritten), 0);
    assert_eq!(counter(&client, TcCounter::SynAckLearned), 0);
}

#[test]
fn a_syn_from_outside_the_lb_sources_reaches_the_stack_unchanged() {
    let overrides =
        Overrides { server_lb_sources: Some(vec!["192.0.2.0/24".to_owned()]), ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let report = verify(&lab, lab.service(), 10);
    // Untranslated, the connection runs through the full-NAT LB as before.
    assert_all_verified(&report, 10);
    assert_eq!(report.real_address_seen, 0, "full-NAT hides the client when heels steps aside");
    let servers = lab.server_instances();
    assert_eq!(sum_over(&servers, TcCounter::SynRefused), 10);
    assert_eq!(sum_over(&servers, TcCounter::SynTranslated), 0);
    assert_eq!(sum_over(&servers, TcCounter::SynAckOptionWritten), 0);
    let lb = lab.lb_counters().unwrap();
    assert!(lb.to_clients_packets > 0 && lb.to_servers_packets > lb.syns, "{lb:?}");
}

#[test]
fn a_syn_ack_naming_a_dip_outside_the_backends_creates_no_entry() {
    let overrides = Overrides { client_backends: Some("192.0.2.0/24".to_owned()), ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let child = lab
        .spawn_load(&LoadSpec { concurrency: 1, request: 1, response: 1, ..verify_spec(lab.service(), 1) })
        .unwrap();
    // Wait until the client has refused the SYN-ACK at least once.
    let client = lab.client_instance().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&client, TcCounter::SynAckRefused) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(counter(&client, TcCounter::SynAckRefused) > 0);
    assert_eq!(counter(&client, TcCounter::SynAckLearned), 0);
    assert_eq!(Instance::open(&client).unwrap().connections().unwrap(), vec![]);
    // An untrusted backend gets no traffic: the connection does not complete.
    let report = finish_load(child).unwrap();
    assert_eq!(report.connections_ok, 0);
}

#[test]
fn syncookie_syn_acks_carry_the_option_too() {
    let overrides = Overrides { server_syncookies: true, ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, overrides);
    let report = verify(&lab, lab.service(), 20);
    assert_all_verified(&report, 20);
    let cookies = lab.server(0).netstat("TcpExtSyncookiesSent").unwrap()
        + lab.server(1).netstat("TcpExtSyncookiesSent").unwrap();
    assert!(cookies >= 20, "the servers answered with syncookies: {cookies}");
    assert!(sum_over(&lab.server_instances(), TcCounter::SynAckOptionWritten) >= 20);
    assert_only_syns(&lab.lb_counters().unwrap(), 20);
}
