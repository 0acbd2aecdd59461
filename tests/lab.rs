//! Integration tests: network namespaces, a real LB (nftables or the IPIP
//! XDP fixture), real TCP traffic with every byte checked, assertions on
//! the LB's own counters and on heels's. They need root and never skip;
//! each lab is removed when its test ends, passed or failed.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use heels::lab::lb::LbCounters;
use heels::lab::progress::Progress;
use heels::lab::scale::{self, ScaleSpec, HOLD_REQUEST, HOLD_RESPONSE};
use heels::lab::workload::{LoadReport, LoadSpec, Mode};
use heels::lab::{finish_load, Dataplane, Lab, LabSpec, LbKind, Overrides, Role};
use heels_common::TcCounter;
use heels_xdp::Datapath;

const CONNECTIONS: usize = 40;
const REQUEST: u64 = 32 * 1024;
const RESPONSE: u64 = 128 * 1024;

fn heels() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_heels"))
}

fn lab(lb: LbKind, client: Dataplane, server: Dataplane, overrides: Overrides) -> Lab {
    assert!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the lab tests make namespaces and load eBPF programs: run them as root"
    );
    Lab::build(LabSpec { lb, servers: 2, client, server, overrides }, heels()).expect("the lab builds")
}

fn verify_spec(target: SocketAddrV4, connections: usize) -> LoadSpec {
    LoadSpec {
        target,
        mode: Mode::Verify,
        connections,
        concurrency: 8,
        request: REQUEST,
        response: RESPONSE,
        count: 0,
        seconds: 0.0,
        server_closes: false,
        mapped: false,
        sources: Vec::new(),
        pause_file: None,
    }
}

/// One connection of one-byte exchanges to `target` for `seconds` (a time,
/// not a count: it must outlast what the test does meanwhile).
fn pingpong_spec(target: SocketAddrV4, seconds: f64) -> LoadSpec {
    LoadSpec {
        mode: Mode::Pingpong,
        connections: 1,
        concurrency: 1,
        request: 1,
        response: 1,
        seconds,
        ..verify_spec(target, 1)
    }
}

fn verify(lab: &Lab, target: SocketAddrV4, connections: usize) -> LoadReport {
    lab.load(&verify_spec(target, connections)).expect("the load client runs")
}

fn assert_all_verified(report: &LoadReport, connections: usize) {
    assert_eq!(report.connections_ok, connections, "errors: {:?}", report.errors);
    assert_eq!(report.connections_failed, 0, "errors: {:?}", report.errors);
    assert_eq!(report.resets, 0);
    assert_eq!(report.bytes_verified, connections as u64 * (REQUEST + RESPONSE));
}

fn counter(instance: &str, which: TcCounter) -> u64 {
    let counters = Datapath::open(instance).expect("instance pins").counters().expect("counters");
    counters.iter().find(|(c, _)| *c == which).map(|(_, v)| *v).expect("counter")
}

fn sum_over(instances: &[String], which: TcCounter) -> u64 {
    instances.iter().map(|i| counter(i, which)).sum()
}

/// With heels on both ends the LB forwards the SYNs and nothing else.
fn assert_only_syns(lb: &LbCounters, connections: usize) {
    assert_only_syns_and_resets(lb, connections, 0..=0);
}

/// [`assert_only_syns`], besides the resets a client sends through the LB
/// before a SYN on a reused tuple (docs/design.md), counted on the LB
/// itself: as many as `resets` allows (what the client counted as sent,
/// `LbResetsSent`, with a margin where a killed agent's count is lost).
fn assert_only_syns_and_resets(lb: &LbCounters, connections: usize, resets: std::ops::RangeInclusive<u64>) {
    assert_eq!(
        lb.to_servers_packets,
        lb.syns + lb.resets,
        "the LB forwarded more than SYNs and resets toward the servers: {lb:?}"
    );
    assert!(
        resets.contains(&lb.resets),
        "the LB forwarded {} resets, the clients sent {resets:?}: {lb:?}",
        lb.resets
    );
    assert!(lb.syns >= connections as u64, "every connection's SYN crossed the LB: {lb:?}");
    // Retransmitted SYNs are allowed; a second SYN for every connection is not plausible here.
    assert!(lb.syns < 2 * connections as u64, "{lb:?}");
    assert_eq!(lb.to_clients_packets, 0, "the LB forwarded replies: {lb:?}");
}

/// The servers never write the SYN-ACK form for a SYN they did not
/// translate (the rule of docs/design.md: never the form without the
/// translation, never the translation without the form).
fn assert_forms_only_for_translations(lab: &Lab) {
    let servers = lab.server_instances();
    let (written, translated) =
        (sum_over(&servers, TcCounter::SynAckOptionWritten), sum_over(&servers, TcCounter::SynTranslated));
    assert!(written <= translated, "{written} SYN-ACK forms written for {translated} translated SYNs");
}

fn bypassed(kind: LbKind) {
    bypassed_with(kind, Overrides::default());
}

fn bypassed_with(kind: LbKind, overrides: Overrides) {
    let decap_in_xdp = overrides.ipip_decap_in_xdp;
    let lab = lab(kind, Dataplane::Tc, Dataplane::Tc, overrides);
    let report = verify(&lab, lab.service(), CONNECTIONS);
    assert_all_verified(&report, CONNECTIONS);
    assert_eq!(report.real_address_seen, CONNECTIONS, "every server saw the client's own address");
    assert_eq!(report.per_server.len(), 2, "the LB spread connections: {:?}", report.per_server);
    assert_only_syns(&lab.lb_counters().unwrap(), CONNECTIONS);
    let client = lab.client_instance().unwrap();
    assert!(counter(&client, TcCounter::SynOptionWritten) >= CONNECTIONS as u64);
    assert!(counter(&client, TcCounter::SynAckLearned) >= CONNECTIONS as u64);
    assert!(counter(&client, TcCounter::EgressRewritten) > 0);
    assert!(counter(&client, TcCounter::IngressRewritten) > 0);
    if decap_in_xdp {
        let from_vip = sum_over(&lab.server_instances(), TcCounter::SynTranslatedFromVip);
        assert!(from_vip >= CONNECTIONS as u64, "SYNs to the local VIP translated: {from_vip}");
    }
    if kind == LbKind::Ipip && !decap_in_xdp {
        assert!(sum_over(&lab.server_instances(), TcCounter::IpipDecapsulated) >= CONNECTIONS as u64);
    } else {
        assert_eq!(sum_over(&lab.server_instances(), TcCounter::IpipDecapsulated), 0);
    }
    // Established sockets carry their DIP:dport (sk_storage): egress finds
    // it there rather than in the map.
    assert!(counter(&client, TcCounter::EgressViaSocket) > 0);
    assert!(sum_over(&lab.server_instances(), TcCounter::SynTranslated) >= CONNECTIONS as u64);
    assert!(sum_over(&lab.server_instances(), TcCounter::SynAckOptionWritten) >= CONNECTIONS as u64);
    assert_forms_only_for_translations(&lab);
    assert_eq!(counter(&client, TcCounter::Errors) + sum_over(&lab.server_instances(), TcCounter::Errors), 0);
    // Closed sockets took their entries with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Datapath::open(&client).unwrap().connections().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(Datapath::open(&client).unwrap().connections().unwrap(), vec![]);
    assert!(counter(&client, TcCounter::EntriesRemoved) >= CONNECTIONS as u64);
}

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
    let connections = || Datapath::open(&client).unwrap().connections().unwrap();
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
        lab.server(i).netns.ip(&["route", "replace", "default", "via", &heels::lab::LB.to_string()]).unwrap();
    }
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
    let lb = lab.lb_counters().unwrap();
    assert!(lb.to_clients_packets >= 5, "{lb:?}");
}

/// heels on one side only: everything goes through the LB, nothing breaks.
fn fallback(kind: LbKind, client: Dataplane, server: Dataplane, overrides: Overrides) {
    let lab = lab(kind, client, server, overrides);
    let report = verify(&lab, lab.service(), CONNECTIONS);
    assert_all_verified(&report, CONNECTIONS);
    let lb = lab.lb_counters().unwrap();
    assert!(lb.to_servers_packets > 4 * lb.syns, "the data crossed the LB: {lb:?}");
    for instance in lab.instances() {
        assert_eq!(counter(&instance, TcCounter::SynTranslated), 0, "{instance}");
        assert_eq!(counter(&instance, TcCounter::SynAckLearned), 0, "{instance}");
        assert_eq!(counter(&instance, TcCounter::EgressRewritten), 0, "{instance}");
    }
    assert_forms_only_for_translations(&lab);
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
    let direct = SocketAddrV4::new(heels::lab::server_addr(0), heels::lab::SERVER_PORT);
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
        .spawn_load(&LoadSpec {
            target: lab.service(),
            mode: Mode::Verify,
            connections: 1,
            concurrency: 1,
            request: 1,
            response: 1,
            count: 0,
            seconds: 0.0,
            server_closes: false,
            mapped: false,
            sources: Vec::new(),
            pause_file: None,
        })
        .unwrap();
    // Wait until the client has refused the SYN-ACK at least once.
    let client = lab.client_instance().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&client, TcCounter::SynAckRefused) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(counter(&client, TcCounter::SynAckRefused) > 0);
    assert_eq!(counter(&client, TcCounter::SynAckLearned), 0);
    assert_eq!(Datapath::open(&client).unwrap().connections().unwrap(), vec![]);
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

#[test]
fn a_long_transfer_survives_an_agent_restart() {
    let lab_ = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let mut lab = lab_;
    let size = 2 * 1024 * 1024 * 1024;
    let mut child = lab
        .spawn_load(&LoadSpec {
            target: lab.service(),
            mode: Mode::Verify,
            connections: 1,
            concurrency: 1,
            request: size,
            response: size,
            count: 0,
            seconds: 0.0,
            server_closes: false,
            mapped: false,
            sources: Vec::new(),
            pause_file: None,
        })
        .unwrap();
    let client = lab.client_instance().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&client, TcCounter::EgressRewritten) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let conns = heels::report::conns(&client, true).unwrap();
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
    let orphan = heels_xdp::Connection {
        client: SocketAddrV4::new(heels::lab::CLIENT, 1),
        vip: lab.service(),
        backend: SocketAddrV4::new(heels::lab::server_addr(0), heels::lab::SERVER_PORT),
    };
    Datapath::open(&client).unwrap().remember(&orphan).unwrap();
    // A real connection, alive throughout: it runs for a time, longer than
    // the wait below (not for a count of exchanges, which a fast machine
    // finishes early).
    let mut child = lab.spawn_load(&pingpong_spec(lab.service(), 15.0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let connections = || Datapath::open(&client).unwrap().connections().unwrap();
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
    let status = heels::report::status(&client, false).unwrap();
    assert!(
        status.contains("egress-eth0") && status.contains("ingress-eth0") && status.contains("sockops"),
        "{status}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&heels::report::stats(&client, true).unwrap()).unwrap();
    assert_eq!(stats["syn_ack_learned"], 0);
    verify(&lab, lab.service(), 5);
    let stats: serde_json::Value =
        serde_json::from_str(&heels::report::stats(&client, true).unwrap()).unwrap();
    assert_eq!(stats["syn_ack_learned"], 5);
    let error = heels::report::stats("no-such-instance", false).unwrap_err().to_string();
    assert!(error.contains("no heels instance"), "{error}");

    // `heels down` takes the client's heels away: nothing stays pinned, and
    // its connections go through the LB again.
    heels::agent::down(&client).unwrap();
    assert!(!heels_xdp::tc::instance_dir(&client).exists());
    let before = lab.lb_counters().unwrap();
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
    let after = lab.lb_counters().unwrap();
    assert!(after.to_servers_packets - before.to_servers_packets > after.syns - before.syns, "{after:?}");
}

/// Short connections for `seconds`, the server closing each one first
/// (it keeps the TIME_WAIT, as an HTTP/1.0 server does), in runs of two
/// seconds; returns the median rate of the runs (a passing slowdown of this
/// shared machine moves one run, not the median) and the client's SYN
/// retransmissions over all of them.
fn short_connections(lab: &Lab, target: SocketAddrV4, seconds: f64) -> (f64, u64) {
    let (rate, stalls, _) = counted_short_connections(lab, target, seconds);
    (rate, stalls)
}

/// [`short_connections`], with the number of connections made.
fn counted_short_connections(lab: &Lab, target: SocketAddrV4, seconds: f64) -> (f64, u64, usize) {
    let retransmitted = || lab.client().netstat("TcpExtTCPSynRetrans").unwrap();
    let before = retransmitted();
    let mut rates = Vec::new();
    let mut connections = 0;
    for _ in 0..(seconds / 2.0).ceil() as usize {
        let report = lab
            .load(&LoadSpec {
                mode: Mode::Connect,
                concurrency: 4,
                request: 1,
                response: 1,
                seconds: 2.0,
                server_closes: true,
                ..verify_spec(target, 0)
            })
            .expect("the load client runs");
        assert_eq!(report.connections_failed, 0, "{:?}", report.errors);
        assert!(report.connections_ok > 0);
        connections += report.connections_ok;
        rates.push(report.connections_per_s);
    }
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], retransmitted() - before, connections)
}

/// A translated connection has the wire tuple CIP:cport <-> DIP:dport, the
/// same as a direct connection from that port: each kind must survive the
/// TIME_WAIT the other leaves on the server (docs/design.md, "Shared tuples").
#[test]
fn translated_and_direct_connections_share_tuples_without_stalls() {
    const SECONDS: f64 = 10.0;
    let direct = SocketAddrV4::new(heels::lab::server_addr(0), heels::lab::SERVER_PORT);
    // Direct first, then through heels.
    let lab_a = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let (direct_fresh, stalls) = short_connections(&lab_a, direct, SECONDS);
    assert_eq!(stalls, 0, "SYN retransmissions on a fresh bed");
    let lb_before = lab_a.lb_counters().unwrap();
    let resets_before = counter(&lab_a.client_instance().unwrap(), TcCounter::LbResetsSent);
    let (heels_after_direct, stalls_heels, connections) =
        counted_short_connections(&lab_a, lab_a.service(), SECONDS);
    let lb = lab_a.lb_counters().unwrap().since(&lb_before);
    let resets = counter(&lab_a.client_instance().unwrap(), TcCounter::LbResetsSent) - resets_before;
    let servers = lab_a.server_instances();
    let onto_time_wait = sum_over(&servers, TcCounter::SynOntoTimeWait);
    eprintln!(
        "heels after direct: {} translated ({onto_time_wait} onto a direct connection's TIME_WAIT), {} on the \
         LB path (tuple in use), {} PAWS rejects in TIME_WAIT; the LB: {lb:?} for {connections} connections",
        sum_over(&servers, TcCounter::SynTranslated),
        sum_over(&servers, TcCounter::SynTupleInUse),
        lab_a.server(0).netstat("TcpExtPAWSTimewait").unwrap()
    );
    // The direct connections left tens of thousands of TIME_WAITs on the
    // server's port: the SYNs that met one were translated onto it, and the
    // LB carried the SYN of each connection and nothing else.
    assert!(onto_time_wait > 0, "no SYN was translated onto a direct connection's TIME_WAIT");
    assert_only_syns_and_resets(&lb, connections, resets..=resets);
    drop(lab_a);
    // Through heels first, then direct.
    let lab_b = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let (heels_fresh, stalls) = short_connections(&lab_b, lab_b.service(), SECONDS);
    assert_eq!(stalls, 0, "SYN retransmissions on a fresh bed");
    let translated = sum_over(&lab_b.server_instances(), TcCounter::SynTranslated);
    let (direct_after_heels, stalls_direct) = short_connections(&lab_b, direct, SECONDS);
    let rates = format!(
        "direct fresh {direct_fresh:.0}/s, heels after direct {heels_after_direct:.0}/s, heels fresh \
         {heels_fresh:.0}/s, direct after heels {direct_after_heels:.0}/s"
    );
    eprintln!("{rates}");
    assert!(translated as f64 >= heels_fresh * SECONDS * 0.9, "heels bypassed the fresh bed: {translated}");
    assert_eq!(stalls_heels, 0, "SYN retransmissions through heels after direct connections: {rates}");
    assert_eq!(stalls_direct, 0, "SYN retransmissions of direct connections after heels: {rates}");
    // The collapse this guards against is to ~1% of the fresh rate (a
    // second per SYN retransmission): the stall counts above are the exact
    // check. The rates stay below the fresh bed's because either order runs
    // against tens of thousands of TIME_WAIT sockets (docs/design.md,
    // "Shared tuples"). Measured alone (medians of 2 s runs): 0.95 of the
    // fresh rate through heels after direct connections (0.79 to 0.90 while
    // such SYNs took the LB path), 0.77 to 0.99 for direct connections
    // after heels; beside another lab test (the suite runs two at a time on
    // two cores) down to 0.65. The issue's goal of 0.8 is a
    // measurement here, not an assertion; the floor only keeps a collapse
    // from hiding behind zero retransmissions.
    assert!(heels_after_direct >= 0.4 * heels_fresh, "{rates}");
    assert!(direct_after_heels >= 0.4 * direct_fresh, "{rates}");
}

/// The afxdp servers' side of the test above: after direct connections
/// leave TIME_WAITs on the servers, the workers translate the SYNs the
/// kernel takes from them, and nothing stalls.
#[test]
fn afxdp_servers_share_tuples_with_direct_connections_without_stalls() {
    const SECONDS: f64 = 6.0;
    let direct = SocketAddrV4::new(heels::lab::server_addr(0), heels::lab::SERVER_PORT);
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Afxdp, Overrides::default());
    let (direct_rate, stalls) = short_connections(&lab, direct, SECONDS);
    assert_eq!(stalls, 0, "SYN retransmissions on a fresh bed");
    let lb_before = lab.lb_counters().unwrap();
    let resets_before = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent);
    let (heels_rate, stalls, connections) = counted_short_connections(&lab, lab.service(), SECONDS);
    let lb = lab.lb_counters().unwrap().since(&lb_before);
    let resets = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent) - resets_before;
    let syns = wait_for_servers(&lab, |s| s.translated >= connections as u64);
    eprintln!("direct {direct_rate:.0}/s, then heels {heels_rate:.0}/s: {syns:?}; the LB: {lb:?}");
    assert_eq!(stalls, 0, "SYN retransmissions through heels after direct connections");
    assert!(syns.translated >= connections as u64, "the workers translated every SYN: {syns:?}");
    // Tens of thousands of TIME_WAITs over 64,000 ports: the SYNs that met
    // one were translated onto it (the tc program's own check, asked by
    // the workers), and the LB carried only the SYNs.
    assert!(syns.onto_time_wait > 0, "no SYN was translated onto a direct connection's TIME_WAIT: {syns:?}");
    assert_only_syns_and_resets(&lb, connections, resets..=resets);
}

/// Two VIPs served by one DIP:dport: a connection through the first
/// leaves a TIME_WAIT on the server that a later SYN through the second
/// may meet (its tuple on the wire is the same). Such a SYN is translated
/// where the kernel takes it onto that TIME_WAIT, as a direct
/// connection's; only SYNs cross the LB and none is retransmitted.
#[test]
fn two_vips_on_one_backend_port_share_tuples_without_stalls() {
    const SECONDS: f64 = 4.0;
    let lab = lab(
        LbKind::Fullnat,
        Dataplane::Tc,
        Dataplane::Tc,
        Overrides { second_vip: true, ..Overrides::default() },
    );
    let [first, second] = lab.services()[..] else { panic!("two services: {:?}", lab.services()) };
    let (first_rate, stalls) = short_connections(&lab, first, SECONDS);
    assert_eq!(stalls, 0, "SYN retransmissions on a fresh bed");
    let servers = lab.server_instances();
    let onto_before = sum_over(&servers, TcCounter::SynOntoTimeWait);
    let lb_before = lab.lb_counters().unwrap();
    let resets_before = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent);
    let (second_rate, stalls, connections) = counted_short_connections(&lab, second, SECONDS);
    let lb = lab.lb_counters().unwrap().since(&lb_before);
    let resets = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent) - resets_before;
    let onto_time_wait = sum_over(&servers, TcCounter::SynOntoTimeWait) - onto_before;
    eprintln!(
        "{first} {first_rate:.0}/s, then {second} {second_rate:.0}/s: {onto_time_wait} SYNs onto the first's \
         TIME_WAITs, {} on the LB path (tuple in use); the LB: {lb:?} for {connections} connections",
        sum_over(&servers, TcCounter::SynTupleInUse)
    );
    assert_eq!(stalls, 0, "SYN retransmissions through the second VIP");
    assert!(onto_time_wait > 0, "no SYN through the second VIP met the first's TIME_WAIT");
    assert_only_syns_and_resets(&lb, connections, resets..=resets);
}

/// The tests above as users meet them: stock tools to the backend's own
/// address (two rounds each), then the same tools through the VIP, in one
/// lab (the order of the issue that found it: before heels read the
/// TIME_WAITs it holds, the LB carried as much in the VIP rounds as with
/// no heels at all). The direct rounds leave the server's port full of
/// TIME_WAITs (nginx closes first, on a `[::]` listener); the VIP rounds
/// still bypass: the LB carries each connection's SYN and nothing else,
/// and no SYN is retransmitted.
fn stock_tools_bypass_after_direct_rounds(server: Dataplane) {
    use heels::lab::tools::{self, ServerKind};
    let lab = Lab::build(
        LabSpec {
            lb: LbKind::Fullnat,
            servers: 1,
            client: Dataplane::Tc,
            server,
            overrides: Overrides { bare: true, ..Overrides::default() },
        },
        heels(),
    )
    .expect("the lab builds");
    let direct = SocketAddrV4::new(heels::lab::server_addr(0), lab.server_port());
    let client = lab.client();
    let retransmitted = || client.netstat("TcpExtTCPSynRetrans").unwrap();
    let opened = || client.netstat("TcpActiveOpens").unwrap();
    let mut figures = Vec::new();
    for kind in [ServerKind::Iperf3, ServerKind::Sockperf, ServerKind::Nginx, ServerKind::Redis] {
        let _servers = tools::start_servers(&lab, kind).expect("the servers start");
        let round = |target: SocketAddrV4| -> String {
            let figure = match kind {
                ServerKind::Iperf3 => tools::iperf3(&lab, target, 1, 1.0).map(|g| format!("{g:.1} Gbit/s")),
                ServerKind::Sockperf => {
                    tools::sockperf(&lab, target, 64, 1.0).map(|p| format!("p50 {:.0} us", p.p50))
                }
                ServerKind::Nginx => tools::wrk(&lab, target, 4, 3.0, true).map(|r| format!("{r:.0} req/s")),
                ServerKind::Redis => {
                    tools::redis_benchmark(&lab, target, 4, 10_000, false).map(|r| format!("{r:.0} req/s"))
                }
                ServerKind::Http | ServerKind::Lab => unreachable!(),
            };
            figure.unwrap_or_else(|e| panic!("{kind:?} to {target}: {e:#}"))
        };
        let direct_rounds = [round(direct), round(direct)];
        let (lb_before, opened_before, retransmitted_before) =
            (lab.lb_counters().unwrap(), opened(), retransmitted());
        let resets_before = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent);
        let vip_rounds = [round(lab.service()), round(lab.service())];
        let lb = lab.lb_counters().unwrap().since(&lb_before);
        let connections = (opened() - opened_before) as usize;
        let stalls = retransmitted() - retransmitted_before;
        let resets = counter(&lab.client_instance().unwrap(), TcCounter::LbResetsSent) - resets_before;
        let line = format!(
            "{kind:?}: direct {direct_rounds:?}, then the VIP {vip_rounds:?}: {connections} connections, \
             {stalls} SYN retransmissions, the LB {lb:?}"
        );
        eprintln!("{line}");
        assert_eq!(stalls, 0, "{line}");
        assert_only_syns_and_resets(&lb, connections, resets..=resets);
        figures.push(line);
    }
    let (translated, onto_time_wait) = match server {
        Dataplane::Afxdp => {
            let syns = wait_for_servers(&lab, |s| s.onto_time_wait > 0);
            (syns.translated, syns.onto_time_wait)
        }
        _ => {
            let servers = lab.server_instances();
            (sum_over(&servers, TcCounter::SynTranslated), sum_over(&servers, TcCounter::SynOntoTimeWait))
        }
    };
    eprintln!("{translated} SYNs translated, {onto_time_wait} onto a direct connection's TIME_WAIT");
    assert!(
        onto_time_wait > 0,
        "no SYN met a direct connection's TIME_WAIT, so this proved nothing: {figures:#?}"
    );
}

#[test]
fn stock_tools_bypass_after_direct_rounds_on_tc_servers() {
    stock_tools_bypass_after_direct_rounds(Dataplane::Tc);
}

#[test]
fn stock_tools_bypass_after_direct_rounds_on_afxdp_servers() {
    stock_tools_bypass_after_direct_rounds(Dataplane::Afxdp);
}

/// An ICMP error about a bypassed connection quotes CIP:cport -> DIP:dport;
/// the client's socket knows CIP:cport -> VIP:vport. Once a bypassed stream
/// is under way, the router of the direct path drops to 1200 bytes both
/// ways, less than the 1500 the endpoints' MSS assumes: every large segment
/// draws "fragmentation needed", and the transfers complete only if the
/// client translates it.
#[test]
fn path_mtu_discovery_works_on_bypassed_connections() {
    path_mtu_discovery(Dataplane::Tc);
}

/// The same with afxdp on every host: the classifier passes ICMP errors,
/// the client's standby TC program translates their quote (the control
/// thread wrote the learned connection into its maps), and the host's
/// route to the VIP through `heels0` takes the smaller path MTU.
#[test]
fn path_mtu_discovery_works_through_afxdp_workers() {
    path_mtu_discovery(Dataplane::Afxdp);
}

fn path_mtu_discovery(dataplane: Dataplane) {
    let lab = lab(LbKind::Fullnat, dataplane, dataplane, Overrides::default());
    let lower_the_direct_path = || {
        for (prefix, device, source) in
            [("10.10.0.0/24", "br0", "10.10.0.1"), ("10.10.1.0/24", "to-client", "10.10.1.1")]
        {
            lab.router()
                .ip(&["route", "replace", prefix, "dev", device, "src", source, "mtu", "lock", "1200"])
                .unwrap();
        }
    };
    let client = lab.client_instance().unwrap();
    let rewritten = || match dataplane {
        Dataplane::Afxdp => heels::afxdp::read_report(&client).map_or(0, |r| r.rewritten_to_uplink),
        _ => counter(&client, TcCounter::EgressRewritten),
    };
    // A checked transfer already under way when the path shrinks: it must
    // go on, every byte intact (the ICMP errors counted below come from
    // its packets: nothing else runs yet).
    let stream = 128 * 1024 * 1024;
    let child = lab
        .spawn_load(&LoadSpec { request: stream, response: stream, ..verify_spec(lab.service(), 1) })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rewritten() < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rewritten() >= 100, "the stream is bypassed and under way");
    lower_the_direct_path();
    let report = finish_load(child).unwrap();
    assert_eq!(report.connections_ok, 1, "the stream survived the smaller path: {:?}", report.errors);
    assert_eq!(report.bytes_verified, 2 * stream, "every byte of the stream, checked");
    assert!(counter(&client, TcCounter::IcmpRewritten) > 0, "the client translated the router's ICMP errors");
    // New connections on the smaller path, data both ways, every byte checked.
    let size = 4 * 1024 * 1024;
    let report = lab
        .load(&LoadSpec { concurrency: 4, request: size, response: size, ..verify_spec(lab.service(), 4) })
        .expect("the load client runs");
    assert_eq!(report.connections_ok, 4, "errors: {:?}", report.errors);
    assert_eq!(report.bytes_verified, 4 * 2 * size);
    assert_only_syns(&lab.lb_counters().unwrap(), 5);
}

/// A user's own programs on a bare lab, as the README shows: a stock HTTP
/// server that closes first (Python's, HTTP/1.0) listening on `[::]`, and
/// curl through the VIP. Every request answered, the LB sees SYNs only.
#[test]
fn stock_programs_run_on_a_bare_lab_through_heels() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "the lab tests need root");
    let mut up = std::process::Command::new(heels())
        .args(["lab", "up", "--bare", "--servers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Whatever happens below, the lab goes (SIGTERM: its own teardown).
    struct Up(std::process::Child);
    impl Drop for Up {
        fn drop(&mut self) {
            // SAFETY: kill on the pid of a child we still own.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let stdout = up.stdout.take().unwrap();
    let up = Up(up);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let prefix =
        line.strip_prefix("lab up: ").and_then(|l| l.split_whitespace().next()).expect(&line).to_owned();
    let exec = |host: &str, command: &[&str]| {
        std::process::Command::new(heels())
            .args(["lab", "exec", "--lab", &prefix, host, "--"])
            .args(command)
            .output()
            .unwrap()
    };
    let mut server = std::process::Command::new(heels())
        .args([
            "lab",
            "exec",
            "--lab",
            &prefix,
            "server1",
            "--",
            "python3",
            "-m",
            "http.server",
            "--bind",
            "::",
            "8080",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let curl = || exec("client", &["curl", "-sS", "-m", "5", "http://10.10.100.1/"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl().status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let lb =
        || lb_counters_of(&exec("lb", &["nft", "-j", "list", "counters", "table", "ip", "heels_lab"]).stdout);
    let before = lb();
    for _ in 0..10 {
        let output = curl();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("Directory listing"));
    }
    let after = lb();
    assert_eq!(after.0 - before.0, 10, "the LB forwarded the 10 SYNs and nothing else toward the server");
    assert_eq!(after.1 - before.1, 0, "nothing came back through the LB");
    let instance = format!("{prefix}-server1");
    assert!(counter(&instance, TcCounter::SynTranslated) >= 10);
    let _ = server.kill();
    let _ = server.wait();
    drop(up);
    assert!(!Path::new(&format!("/var/run/netns/{prefix}-client")).exists(), "the lab is gone");
}

/// (to_servers, to_clients) packets of `nft -j list counters` output.
fn lb_counters_of(json: &[u8]) -> (u64, u64) {
    let counters =
        heels::lab::lb::parse_nft_counters(json, &["to_servers", "to_clients"]).expect("the LB's counters");
    (counters[0].0, counters[1].0)
}

/// The sum of the samples of `family` whose labels include every one of
/// `labels` (`key="value"`), from an OpenMetrics text.
fn sample_sum(text: &str, family: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            (name == family && labels.iter().all(|l| rest.contains(l))).then(|| value.parse::<u64>().ok())?
        })
        .sum()
}

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
    let overrides =
        Overrides { agent_capabilities: Some(heels::deploy::unit_capabilities()), ..Overrides::default() };
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

/// Sends one bare SYN from `host` with the kernel's raw socket (the
/// kernel writes the IPv4 header): `sport` -> `target`, sequence `seq`.
fn raw_syn(lab: &Lab, role: Role, sport: u16, target: SocketAddrV4, seq: u32) {
    const SEND_SYN: &str = r#"
import socket, struct, sys
src, dst, sport, dport, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def fold(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
segment = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(segment))
segment = segment[:16] + struct.pack("!H", fold(pseudo + segment)) + segment[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendto(segment, (dst, 0))
"#;
    let args = [
        "-c".to_string(),
        SEND_SYN.to_string(),
        heels::lab::CLIENT.to_string(),
        target.ip().to_string(),
        sport.to_string(),
        target.port().to_string(),
        seq.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.host(role).netns.exec("python3", &args).expect("the raw SYN is sent");
}

/// The LB's conntrack line for a client port, if any.
fn lb_conntrack_line(lab: &Lab, sport: u16) -> Option<String> {
    let out = lab.host(Role::Lb).netns.exec("cat", &["/proc/net/nf_conntrack"]).expect("conntrack table");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&format!("sport={sport} dport=")))
        .map(str::to_string)
}

/// Waits up to 5 s for the LB's flow of client port `sport` to be in
/// `state`; fails saying `what` and the flow as it is.
fn wait_for_lb_state(lab: &Lab, sport: u16, state: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lb_conntrack_line(lab, sport).is_some_and(|l| l.contains(state)) {
        assert!(Instant::now() < deadline, "{what}: {:?}", lb_conntrack_line(lab, sport));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The defect the full-NAT bench found: an LB that tracks TCP state sees
/// only the SYNs of bypassed connections, so it keeps their 4-tuple in
/// SYN_SENT with the latest SYN's sequence; a later SYN on the tuple whose
/// sequence number is earlier (a fresh ISN after a chain of TIME_WAIT
/// reuses) does not reset it, the LB ignores the SYN-ACK and drops the
/// client's ACK, and a connection on the LB path stalls. Built here with
/// two bare SYNs: the first (sequence S) reaches no server, so the LB
/// holds SYN_SENT at S + 1; the second (S - 2^30) is answered. The
/// client's heels sends a reset through the LB first, so the LB takes the
/// SYN-ACK (SYN_RECV); without it the flow would stay SYN_SENT.
#[test]
fn a_syn_whose_sequence_an_lb_would_refuse_is_preceded_by_a_reset() {
    let lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let target = lab.service();
    let sport = 65_100;
    // The client's own resets (its stack answers the SYN-ACK of a raw SYN)
    // would close the LB's flow too: drop them, and keep the servers from
    // answering the first SYN.
    let drop_rule = |role: Role, rule: &str| {
        let host = lab.host(role);
        host.netns.exec("nft", &["add", "table", "inet", "heels_test"]).expect("nft table");
        let chain = "{ type filter hook output priority 0; }";
        let hook = if rule.contains("dport") { chain.replace("output", "input") } else { chain.to_string() };
        host.netns.exec("nft", &["add", "chain", "inet", "heels_test", "c", &hook]).expect("nft chain");
        host.netns
            .exec("nft", &format!("add rule inet heels_test c {rule} drop").split(' ').collect::<Vec<_>>())
            .expect("nft rule");
    };
    drop_rule(Role::Client, &format!("tcp sport {sport} tcp flags rst"));
    for server in [Role::Server(1), Role::Server(2)] {
        drop_rule(server, "tcp dport 8080 tcp sport 65100");
    }
    let first: u32 = 3_000_000_000;
    raw_syn(&lab, Role::Client, sport, target, first);
    wait_for_lb_state(&lab, sport, "SYN_SENT", "the LB tracks the first SYN");
    for server in [Role::Server(1), Role::Server(2)] {
        lab.host(server).netns.exec("nft", &["delete", "table", "inet", "heels_test"]).expect("nft delete");
    }
    let client = lab.client_instance().expect("the client runs heels");
    assert_eq!(counter(&client, TcCounter::LbResetsSent), 0);
    raw_syn(&lab, Role::Client, sport, target, first.wrapping_sub(1 << 30));
    wait_for_lb_state(&lab, sport, "SYN_RECV", "the LB took the SYN-ACK of the second SYN");
    assert_eq!(counter(&client, TcCounter::LbResetsSent), 1);
    // A retransmission (the same sequence) sends no reset: once the LB has
    // forwarded it, a reset (which would leave before it) would be counted.
    let syns = || lab.lb_counters().unwrap().syns;
    let before = syns();
    raw_syn(&lab, Role::Client, sport, target, first.wrapping_sub(1 << 30));
    let deadline = Instant::now() + Duration::from_secs(5);
    while syns() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(syns(), before + 1, "the LB forwarded the retransmitted SYN");
    assert_eq!(counter(&client, TcCounter::LbResetsSent), 1);
}

// The afxdp dataplane on the client, on the servers, on both. The tc
// programs stand by on every afxdp host: they must rewrite nothing while
// the workers run.

/// `instance`'s afxdp report once `done` holds (the agent writes one about
/// every half second), or the last one after 10 s.
fn wait_for_report_of(
    instance: &str,
    done: impl Fn(&heels::afxdp::AfxdpReport) -> bool,
) -> heels::afxdp::AfxdpReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match heels::afxdp::read_report(instance) {
            Some(report) if done(&report) || Instant::now() >= deadline => return report,
            None if Instant::now() >= deadline => panic!("no afxdp report of {instance}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The client's afxdp report (see [`wait_for_report_of`]).
fn wait_for_report(
    lab: &Lab,
    done: impl Fn(&heels::afxdp::AfxdpReport) -> bool,
) -> heels::afxdp::AfxdpReport {
    wait_for_report_of(&lab.client_instance().unwrap(), done)
}

/// What the servers' workers counted, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerSyns {
    translated: u64,
    refused: u64,
    /// Listener lookups that failed.
    errors: u64,
    /// Frames that arrived with a pending checksum, finished.
    completed: u64,
    /// Of `translated`, SYNs taken from another connection's TIME_WAIT.
    onto_time_wait: u64,
}

/// The servers' afxdp counters once `done` holds (or after 10 s).
fn wait_for_servers(lab: &Lab, done: impl Fn(&ServerSyns) -> bool) -> ServerSyns {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reports: Vec<_> =
            lab.server_instances().iter().map(|i| wait_for_report_of(i, |_| true)).collect();
        let syns = ServerSyns {
            translated: reports.iter().map(|r| r.syns_translated).sum(),
            refused: reports.iter().map(|r| r.syns_refused).sum(),
            errors: reports.iter().map(|r| r.listener_errors).sum(),
            completed: reports.iter().map(|r| r.checksums_completed).sum(),
            onto_time_wait: reports.iter().map(|r| r.syns_onto_time_wait).sum(),
        };
        if done(&syns) || Instant::now() >= deadline {
            return syns;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    assert_eq!(Datapath::open(&client).unwrap().connections().unwrap(), vec![]);
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
        Datapath::open(&client).unwrap().connections().unwrap(),
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
    let capabilities = heels::deploy::afxdp_unit_capabilities();
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
    assert!(heels::afxdp::pid_alive(child.id()), "the connection outlasted the restart");
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
    let output = heels::lab::output_within(
        lab.spawn_on(Role::Client, cleanup.stdout(std::process::Stdio::piped())).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!heels_xdp::tc::instance_dir(&client).exists(), "the pins are gone");
    assert!(!has(&["link", "show"], "heels0"));
    lab.start_agent_on(Role::Client).unwrap();
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    let afxdp = wait_for_report(&lab, |r| r.learned >= 10);
    assert!(afxdp.learned >= 10, "{afxdp:?}");
}

/// Which handshake packet is lost, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeLoss {
    /// The first SYN-ACK, on the router, before the client's host sees it.
    SynAckOnTheRouter,
    /// The first SYN-ACK, in the client's host after heels's ingress
    /// learned from it (nftables input, after TC ingress or the workers),
    /// before its socket.
    SynAckAfterClientIngress,
    /// The client's ACK of the SYN-ACK, on the router: the server sends
    /// its SYN-ACK again, to a client socket established by then.
    ClientAckOnTheRouter,
}

/// What [`watch_handshakes`] counted (on the router, but `lost`).
#[derive(Debug, Clone, Copy)]
struct HandshakeCounts {
    /// Packets its loss dropped.
    lost: u64,
    /// Resets the client sent, to any address.
    resets: u64,
    /// Of those, resets to the VIP (through the LB): one before a SYN an
    /// LB would refuse is by design.
    resets_to_vip: u64,
}

/// Drops the first handshake packet `loss` names (if any) and counts the
/// client's resets: read by the returned closure. nftables counts what the `quota` lets through to
/// `drop`: exactly one SYN-ACK (76 bytes) of 100, one ACK (52) of 60.
fn watch_handshakes(lab: &Lab, loss: Option<HandshakeLoss>) -> impl Fn(&Lab) -> HandshakeCounts {
    let client = lab.client().addr;
    let vip = *lab.service().ip();
    let syn_ack = format!("ip daddr {client} tcp flags & (syn | ack) == (syn | ack) quota until 100 bytes");
    let ack = format!("ip saddr {client} tcp flags & (syn | ack | fin | rst) == ack quota until 60 bytes");
    let dropped = |rule: &str| format!("{rule} counter name lost drop");
    let (router_drop, client_drop) = match loss {
        Some(HandshakeLoss::SynAckOnTheRouter) => (dropped(&syn_ack), String::new()),
        Some(HandshakeLoss::SynAckAfterClientIngress) => (String::new(), dropped(&syn_ack)),
        Some(HandshakeLoss::ClientAckOnTheRouter) => (dropped(&ack), String::new()),
        None => (String::new(), String::new()),
    };
    let ruleset = |hook: &str, rules: &str| {
        format!(
            "table ip heels_loss {{\n counter lost {{}}\n counter resets {{}}\n counter resets_to_vip {{}}\n chain c \
             {{\n  type filter hook {hook} priority -10; policy accept;\n  {rules}\n  ip saddr {client} tcp flags & rst \
             == rst counter name resets\n  ip saddr {client} ip daddr {vip} tcp flags & rst == rst counter name \
             resets_to_vip\n }}\n}}\n"
        )
    };
    let apply = |netns: &heels::lab::netns::NetNs, hook: &str, rules: &str, name: &str| {
        let path = lab.work_dir().join(name);
        std::fs::write(&path, ruleset(hook, rules)).unwrap();
        let _ = netns.exec("nft", &["delete", "table", "ip", "heels_loss"]);
        netns.exec("nft", &["-f", path.to_str().unwrap()]).expect("the loss ruleset loads");
    };
    apply(lab.router(), "forward", &router_drop, "loss-router.nft");
    apply(&lab.client().netns, "input", &client_drop, "loss-client.nft");
    move |lab: &Lab| {
        let read = |netns: &heels::lab::netns::NetNs, name: &str| -> u64 {
            let out = netns.exec("nft", &["list", "counter", "ip", "heels_loss", name]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no packets in {text}"))
        };
        HandshakeCounts {
            lost: read(lab.router(), "lost") + read(&lab.client().netns, "lost"),
            resets: read(lab.router(), "resets"),
            resets_to_vip: read(lab.router(), "resets_to_vip"),
        }
    }
}

/// A lost handshake packet costs one retransmission and nothing else. A
/// lost SYN-ACK: the client's SYN goes again (through the LB), the server
/// answers it with its SYN-ACK form (a retransmission carries it too), the
/// client that learned the connection kept its entries. A lost ACK: the
/// server's SYN-ACK goes again, and the client that knows the connection
/// delivers it to its established socket as from the VIP. The connection
/// opens with every byte checked, no reset to the backend, about one second
/// late (one retransmission timeout) and not two or three.
fn a_lost_handshake_packet_costs_one_retransmission(client: Dataplane, server: Dataplane) {
    let lab = lab(LbKind::Fullnat, client, server, Overrides::default());
    let losses = [
        HandshakeLoss::SynAckOnTheRouter,
        HandshakeLoss::SynAckAfterClientIngress,
        HandshakeLoss::ClientAckOnTheRouter,
    ];
    for loss in losses {
        let counters = watch_handshakes(&lab, Some(loss));
        let report = verify(&lab, lab.service(), 1);
        let HandshakeCounts { lost, resets, .. } = counters(&lab);
        assert_eq!(lost, 1, "{loss:?}: the packet was lost");
        assert_all_verified(&report, 1);
        assert_eq!(resets, 0, "{loss:?}: the client sent a reset (to the backend)");
        assert!(
            report.elapsed_s < 1.8,
            "{loss:?}: opened {:.2} s late: a stall past one retransmission",
            report.elapsed_s
        );
    }
    let servers = lab.server_instances();
    let retransmitted = sum_over(&servers, TcCounter::SynAckOptionRetransmitted);
    assert!(retransmitted >= 3, "the retransmitted SYN-ACKs carried the form: {retransmitted}");
}

#[test]
fn a_lost_handshake_packet_costs_one_retransmission_on_tc() {
    a_lost_handshake_packet_costs_one_retransmission(Dataplane::Tc, Dataplane::Tc);
}

#[test]
fn a_lost_handshake_packet_costs_one_retransmission_on_an_afxdp_client() {
    a_lost_handshake_packet_costs_one_retransmission(Dataplane::Afxdp, Dataplane::Tc);
}

#[test]
fn a_lost_handshake_packet_costs_one_retransmission_on_afxdp_servers() {
    a_lost_handshake_packet_costs_one_retransmission(Dataplane::Tc, Dataplane::Afxdp);
}

#[test]
fn a_lost_handshake_packet_costs_one_retransmission_on_afxdp_everywhere() {
    a_lost_handshake_packet_costs_one_retransmission(Dataplane::Afxdp, Dataplane::Afxdp);
}

/// The client agent's one host-wide change, `net.ipv4.tcp_timestamps = 2`
/// (one timestamp clock: docs/design.md, "Shared tuples"), is given back:
/// by `heels agent --cleanup` after a SIGKILL, and by `heels down`.
#[test]
fn the_client_agent_gives_back_tcp_timestamps_after_a_kill_and_on_down() {
    let mut lab = lab(LbKind::Fullnat, Dataplane::Tc, Dataplane::Tc, Overrides::default());
    let timestamps = |lab: &Lab| {
        let output = lab.client().netns.exec("sysctl", &["-n", "net.ipv4.tcp_timestamps"]).unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let heels_on_client = |lab: &Lab, args: &[&str]| {
        let mut command = std::process::Command::new(heels());
        command.args(args).stdout(std::process::Stdio::piped());
        let output = heels::lab::output_within(
            lab.spawn_on(Role::Client, &mut command).unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(output.status.success(), "heels {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let config = lab.work_dir().join("client.toml");
    let instance = lab.client_instance().unwrap();
    assert_eq!(timestamps(&lab), "2", "the client agent runs with one clock");
    lab.kill_agent(Role::Client).unwrap();
    assert_eq!(timestamps(&lab), "2", "a killed agent could not give it back");
    heels_on_client(&lab, &["agent", "--cleanup", "--config", config.to_str().unwrap()]);
    assert_eq!(timestamps(&lab), "1", "--cleanup gave the kernel's default back");
    lab.start_agent_on(Role::Client).unwrap();
    assert_eq!(timestamps(&lab), "2");
    lab.kill_agent(Role::Client).unwrap();
    heels_on_client(&lab, &["down", "--instance", &instance]);
    assert_eq!(timestamps(&lab), "1", "heels down gave the kernel's default back");
    // Connections go on through the LB, heels gone from the client.
    let report = verify(&lab, lab.service(), 5);
    assert_all_verified(&report, 5);
}

/// What a lab of `prefix` left on this machine: namespaces, cgroups (and
/// the processes in them), pins, saved agent state, work directories, and
/// links in this namespace.
fn leftovers_of(prefix: &str) -> Vec<String> {
    let named = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(prefix) || n.strip_prefix("heels-lab-").is_some_and(|n| n.starts_with(prefix))
            })
            .map(|n| format!("{dir}/{n}"))
            .collect()
    };
    let mut found = Vec::new();
    found.extend(named("/var/run/netns"));
    found.extend(named(heels::lab::CGROUP_ROOT));
    found.extend(named(heels_xdp::tc::PIN_ROOT));
    found.extend(named(heels::agent::STATE_DIR));
    found.extend(named(&std::env::temp_dir().to_string_lossy()));
    let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    found.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.contains(prefix))
            .map(|l| format!("link {l}")),
    );
    found
}

/// A test binary killed in the middle of a lab test (this very binary,
/// running `a_long_transfer_survives_an_agent_restart`: a lab, its agents
/// and a transfer going) leaves things behind, and `heels lab clean --lab`
/// removes every one of them, its agents (in the lab's cgroups) included;
/// other labs, this test's neighbours among them, are not touched.
#[test]
fn a_lab_test_killed_in_the_middle_leaves_nothing_lab_clean_does_not_remove() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "the lab tests need root");
    let run = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_long_transfer_survives_an_agent_restart", "--test-threads=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("hl{}x", run.id() % 100_000);
    // Whatever happens below, the run and its lab go.
    struct Run(std::process::Child, String);
    impl Drop for Run {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::process::Command::new(heels()).args(["lab", "clean", "--lab", &self.1]).status();
        }
    }
    let mut run = Run(run, prefix.clone());
    // A lab of the run is up, its agents attached, when three instances
    // have pins; its load starts right after.
    let deadline = Instant::now() + Duration::from_secs(60);
    let attached = || {
        let pins = std::fs::read_dir(heels_xdp::tc::PIN_ROOT).into_iter().flatten().flatten();
        pins.filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count() >= 3
    };
    while !attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(attached(), "the run's lab came up");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(run.0.try_wait().unwrap().is_none(), "the run was still going when killed");
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let left = leftovers_of(&prefix);
    assert!(left.len() >= 5, "a killed run leaves its lab: {left:?}");
    let clean =
        std::process::Command::new(heels()).args(["lab", "clean", "--lab", &prefix]).output().unwrap();
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert_eq!(leftovers_of(&prefix), Vec::<String>::new(), "heels lab clean left these (before: {left:?})");
}

/// Capacity of the client's tables in [`a_full_table_never_costs_a_live_connection`].
const SMALL_TABLE: u32 = 1000;

/// A full table never costs a live connection: with room for 1,000, 1,500
/// connections open at once, each exchanging checked data when it opens
/// and again when all are open. The first 1,000 bypass the LB; the 500
/// that found no room take the LB path (counted as `table_full`) and work
/// the same; none is reset; once they close, the tables are empty.
fn a_full_table_never_costs_a_live_connection(client: Dataplane) {
    let overrides = Overrides { client_max_connections: Some(SMALL_TABLE), ..Overrides::default() };
    let lab = lab(LbKind::Fullnat, client, Dataplane::Tc, overrides);
    let instance = lab.client_instance().unwrap();
    let connections = 1500;
    let spec = LoadSpec {
        mode: Mode::Hold,
        concurrency: 16,
        request: 2048,
        response: 8192,
        ..verify_spec(lab.service(), connections)
    };
    let before = lab.lb_counters().unwrap();
    let report = lab.load(&spec).expect("the load client runs");
    let lb = lab.lb_counters().unwrap();
    assert_eq!((report.connections_ok, report.connections_failed), (connections, 0), "{:?}", report.errors);
    assert_eq!(report.resets, 0);
    assert_eq!(report.bytes_verified, connections as u64 * 2 * (2048 + 8192));
    let over = connections as u64 - u64::from(SMALL_TABLE);
    assert_eq!(counter(&instance, TcCounter::TableFull), over, "the connections over capacity were counted");
    // Those took the LB path both ways (full-NAT: their replies too).
    assert!(lb.syns - before.syns >= connections as u64, "{lb:?}");
    assert!(lb.to_clients_packets - before.to_clients_packets >= 2 * over, "{lb:?}");
    let learned = match client {
        Dataplane::Afxdp => wait_for_report(&lab, |r| r.learned >= u64::from(SMALL_TABLE)).learned,
        _ => counter(&instance, TcCounter::SynAckLearned),
    };
    assert_eq!(learned, u64::from(SMALL_TABLE), "exactly as many bypassed as there was room for");
    // Closed, their entries and rooms go (sockops at the close; the sweep,
    // every second here, for any close it missed).
    let datapath = Datapath::open(&instance).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while datapath.egress_entries().unwrap() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(datapath.egress_entries().unwrap(), 0, "the table drained");
    if client == Dataplane::Afxdp {
        let report = wait_for_report(&lab, |r| r.table_entries == 0);
        assert_eq!(report.table_entries, 0, "the workers' table drained: {report:?}");
    }
    // And there is room again: the next connections bypass.
    let report = verify(&lab, lab.service(), 10);
    assert_all_verified(&report, 10);
    assert_eq!(counter(&instance, TcCounter::TableFull), over);
}

#[test]
fn a_full_table_never_costs_a_live_connection_on_tc() {
    a_full_table_never_costs_a_live_connection(Dataplane::Tc);
}

#[test]
fn a_full_table_never_costs_a_live_connection_on_afxdp() {
    a_full_table_never_costs_a_live_connection(Dataplane::Afxdp);
}

/// Connections [`many_connections_held_at_once_and_opened_at_a_rate`] holds.
const HELD: usize = 12_000;

/// `heels lab scale`, shorter: 12,000 connections held at once from three
/// client addresses by two load clients, each exchange checked when it
/// opens and again with all open; the client's tables hold every one and
/// are empty within one sweep after the last close; the LB forwarded one
/// SYN a connection and nothing else. Then 3 s of new connections through
/// the VIP and directly: none fails, the LB carries one packet each.
fn many_connections_held_at_once_and_opened_at_a_rate(dataplane: Dataplane) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "the lab tests need root");
    let spec = ScaleSpec {
        lab: LabSpec { client: dataplane, server: dataplane, ..LabSpec::default() },
        connections: HELD,
        seconds: 3.0,
        per_address: HELD / 3,
        per_load_client: HELD / 2,
        ..ScaleSpec::default()
    };
    let report = scale::run(&spec, heels(), &Progress::new(0, true)).expect("the scale run");
    let hold = &report.hold;
    let load = &hold.load;
    assert_eq!((load.connections_ok, load.connections_failed), (HELD, 0), "{:?}", load.errors);
    assert_eq!(load.resets, 0);
    assert_eq!(load.bytes_verified, HELD as u64 * 2 * (HOLD_REQUEST + HOLD_RESPONSE));
    assert_eq!(hold.client_addresses, 3);
    assert_eq!((hold.client_egress_entries, hold.client_ingress_entries), (HELD, HELD), "every one bypassed");
    if dataplane == Dataplane::Afxdp {
        assert_eq!(hold.afxdp_table_entries, Some(2 * HELD as u64));
    }
    assert!(
        hold.drain_seconds <= hold.sweep_seconds as f64,
        "the tables took {} s to empty",
        hold.drain_seconds
    );
    assert_eq!((hold.lb.syns, hold.lb.packets()), (HELD as u64, HELD as u64), "{:?}", hold.lb);
    assert!(
        report.client_bytes_per_connection > 0.0 && report.server_bytes_per_connection > 0.0,
        "{:?}",
        report.maps
    );
    assert_eq!(report.rate.len(), 2);
    for run in &report.rate {
        assert!(run.load.connections_ok > 0, "{run:?}");
        assert_eq!((run.load.connections_failed, run.load.resets), (0, 0), "{:?}", run.load.errors);
    }
    let vip = &report.rate[0];
    assert_eq!(vip.path, "vip");
    // One SYN a connection; a SYN the client retransmitted crosses again.
    assert_eq!(vip.lb.packets(), vip.lb.syns, "{:?}", vip.lb);
    assert!(
        vip.lb.syns as f64 <= vip.load.connections_ok as f64 * 1.001,
        "{} SYNs for {} connections",
        vip.lb.syns,
        vip.load.connections_ok
    );
    assert_eq!(report.rate[1].lb.packets(), 0, "the direct run never crossed the LB");
}

#[test]
fn many_connections_held_at_once_and_opened_at_a_rate_on_tc() {
    many_connections_held_at_once_and_opened_at_a_rate(Dataplane::Tc);
}

#[test]
fn many_connections_held_at_once_and_opened_at_a_rate_on_afxdp() {
    many_connections_held_at_once_and_opened_at_a_rate(Dataplane::Afxdp);
}

/// What an agent's SIGKILL costs under load: a checked 2 GiB transfer
/// (1 GiB each way) and a storm of new connections run through the kill
/// of the agent on `killed` (the client, or both servers) and its restart.
/// Every byte checked, no failure, only SYNs through the LB, a new
/// connection checked within one second of the kill, and on tc no SYN
/// retransmitted: no handshake stalled (docs/design.md, "What a SIGKILL
/// costs").
fn a_killed_agent_costs_nothing_under_load(dataplane: Dataplane, killed: &[Role]) {
    let mut lab = lab(LbKind::Fullnat, dataplane, dataplane, Overrides::default());
    let size = 1 << 30;
    let resets = watch_handshakes(&lab, None);
    let syn_retransmissions = |lab: &Lab| lab.client().netstat("TcpExtTCPSynRetrans").unwrap();
    let syns_retransmitted_before = syn_retransmissions(&lab);
    let transfer = lab
        .spawn_load(&LoadSpec {
            connections: 1,
            concurrency: 1,
            request: size,
            response: size,
            ..verify_spec(lab.service(), 1)
        })
        .unwrap();
    // The storm outlasts the kill, the probe and the restart (a time, not
    // a count: a fast machine would finish a count first).
    let storm = LoadSpec {
        mode: Mode::Connect,
        concurrency: 4,
        seconds: 8.0,
        server_closes: true,
        ..verify_spec(lab.service(), 0)
    };
    let storm = lab.spawn_load(&storm).unwrap();
    let client = lab.client_instance().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let under_way = || match dataplane {
        Dataplane::Afxdp => heels::afxdp::read_report(&client)
            .is_some_and(|r| r.learned >= 20 && r.rewritten_to_uplink >= 1000),
        _ => {
            counter(&client, TcCounter::SynAckLearned) >= 20
                && counter(&client, TcCounter::EgressRewritten) >= 1000
        }
    };
    while !under_way() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(under_way(), "the transfer and the storm are bypassed before the kill");

    let resets_reported_before_kill = match dataplane {
        Dataplane::Afxdp => heels::afxdp::read_report(&client).map_or(0, |r| r.resets_sent),
        _ => 0,
    };
    let mut kills = Vec::new();
    for &role in killed {
        kills.push(lab.kill_agent(role).unwrap());
    }
    let probe = verify(&lab, lab.service(), 1);
    let since_kill = kills[0].elapsed();
    assert_all_verified(&probe, 1);
    assert!(since_kill < Duration::from_secs(1), "a new connection took {since_kill:?} after the kill");
    for &role in killed {
        lab.start_agent_on(role).unwrap();
    }

    let storm = finish_load(storm).unwrap();
    assert_eq!((storm.connections_failed, storm.resets), (0, 0), "the storm: {:?}", storm.errors);
    assert!(storm.connections_ok >= 100, "the storm ran: {storm:?}");
    assert_eq!(storm.bytes_verified, 2 * storm.connections_ok as u64);
    let transfer = finish_load(transfer).unwrap();
    assert_eq!((transfer.connections_ok, transfer.resets), (1, 0), "the transfer: {:?}", transfer.errors);
    assert_eq!(transfer.bytes_verified, 2 * size);
    assert!(transfer.elapsed_s > since_kill.as_secs_f64(), "the transfer ran through the kill");
    // A SYN the client sent again is a handshake that stalled a second:
    // none on tc, where nothing is lost at a kill. (A worker killed on
    // afxdp loses what its rings held, a SYN among them at times.) The
    // resets the client sends to the backends are printed, not asserted:
    // seen in captures on both dataplanes, they answer a server's
    // retransmitted FIN that arrives after the client's socket closed, as
    // a stock stack answers it (without heels through the LB, to the same
    // backend); every connection is complete.
    let syns_retransmitted = syn_retransmissions(&lab) - syns_retransmitted_before;
    let counts = resets(&lab);
    eprintln!(
        "on {dataplane:?}: {syns_retransmitted} SYNs retransmitted, {} resets to the backends",
        counts.resets - counts.resets_to_vip
    );
    if dataplane == Dataplane::Tc {
        assert_eq!(syns_retransmitted, 0, "the client retransmitted SYNs (a handshake stalled)");
    }
    // A storm reuses the client's ports: a SYN whose tuple last carried a
    // later sequence number through the LB is preceded by a reset that
    // clears the LB's state (docs/design.md), and that reset crosses it.
    let client = lab.client_instance().unwrap();
    let mut resets_sent = counter(&client, TcCounter::LbResetsSent);
    // The workers' count since the restart (a killed agent's is lost), and
    // what the killed client's workers reported before the kill; what they
    // sent in the half-second after their last report is not known.
    let mut unknown = 0;
    if dataplane == Dataplane::Afxdp {
        resets_sent += wait_for_report(&lab, |_| true).resets_sent;
        if killed.contains(&Role::Client) {
            resets_sent += resets_reported_before_kill;
            unknown = AFXDP_RESETS_UNREPORTED_AT_A_KILL;
        }
    }
    eprintln!("on {dataplane:?}: {resets_sent} resets sent through the LB before a SYN (+ up to {unknown} unreported)");
    assert_only_syns_and_resets(
        &lab.lb_counters().unwrap(),
        2 + storm.connections_ok,
        resets_sent..=resets_sent + unknown,
    );
}

/// Resets before a SYN a killed afxdp client's workers may have sent after
/// their last report (written every half-second): seen 0 to 2 in all.
const AFXDP_RESETS_UNREPORTED_AT_A_KILL: u64 = 4;

#[test]
fn killing_the_client_agent_under_load_costs_nothing_on_tc() {
    a_killed_agent_costs_nothing_under_load(Dataplane::Tc, &[Role::Client]);
}

#[test]
fn killing_the_server_agents_under_load_costs_nothing_on_tc() {
    a_killed_agent_costs_nothing_under_load(Dataplane::Tc, &[Role::Server(1), Role::Server(2)]);
}

#[test]
fn killing_the_client_agent_under_load_costs_nothing_on_afxdp() {
    a_killed_agent_costs_nothing_under_load(Dataplane::Afxdp, &[Role::Client]);
}

#[test]
fn killing_the_server_agents_under_load_costs_nothing_on_afxdp() {
    a_killed_agent_costs_nothing_under_load(Dataplane::Afxdp, &[Role::Server(1), Role::Server(2)]);
}
