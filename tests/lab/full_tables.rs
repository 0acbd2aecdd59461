//! Tables at their fullest and many connections at once.

use super::*;

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
    let datapath = Instance::open(&instance).unwrap();
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
