//! Translated and direct connections sharing wire tuples (and the TIME_WAITs each leaves).

use super::*;

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
    let direct = SocketAddrV4::new(heels_lab::server_addr(0), heels_lab::SERVER_PORT);
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
    let (heels_fresh, stalls, fresh_connections) =
        counted_short_connections(&lab_b, lab_b.service(), SECONDS);
    assert_eq!(stalls, 0, "SYN retransmissions on a fresh bed");
    let translated = sum_over(&lab_b.server_instances(), TcCounter::SynTranslated);
    let (direct_after_heels, stalls_direct) = short_connections(&lab_b, direct, SECONDS);
    let rates = format!(
        "direct fresh {direct_fresh:.0}/s, heels after direct {heels_after_direct:.0}/s, heels fresh \
         {heels_fresh:.0}/s, direct after heels {direct_after_heels:.0}/s"
    );
    eprintln!("{rates}");
    // Every connection's SYN (counted, not estimated from the median rate:
    // a run faster than the others put the estimate above the count).
    assert!(
        translated >= fresh_connections as u64,
        "heels bypassed the fresh bed: {translated} SYNs translated for {fresh_connections} connections"
    );
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
    // two cores) down to 0.65. The goal of 0.8 is a
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
    let direct = SocketAddrV4::new(heels_lab::server_addr(0), heels_lab::SERVER_PORT);
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
