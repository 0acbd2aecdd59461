//! Integration tests: network namespaces, a real LB (nftables or the IPIP
//! XDP fixture), real TCP traffic with every byte checked, assertions on
//! the LB's own counters and on heels's. They need root and never skip;
//! each lab is removed when its test ends, passed or failed.
//!
//! One file per feature (the modules at the end); this one holds the
//! harness they share: the lab's set-up, the load specifications, the
//! counters and the checks every feature asserts with.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use heels_bpf::Instance;
use heels_common::TcCounter;
use heels_lab::lb::LbCounters;
use heels_lab::progress::Progress;
use heels_lab::scale::{self, ScaleSpec, HOLD_REQUEST, HOLD_RESPONSE};
use heels_lab::workload::{LoadReport, LoadSpec, Mode};
use heels_lab::{finish_load, Dataplane, Lab, LabSpec, LbKind, Overrides, Role};

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
        connections,
        concurrency: 8,
        request: REQUEST,
        response: RESPONSE,
        ..LoadSpec::new(target, Mode::Verify)
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
    let counters = Instance::open(instance).expect("instance pins").counters().expect("counters");
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
    while !Instance::open(&client).unwrap().connections().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(Instance::open(&client).unwrap().connections().unwrap(), vec![]);
    assert!(counter(&client, TcCounter::EntriesRemoved) >= CONNECTIONS as u64);
}

// Helpers of more than one feature.

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

/// (to_servers, to_clients) packets of `nft -j list counters` output.
fn lb_counters_of(json: &[u8]) -> (u64, u64) {
    let counters =
        heels_lab::lb::parse_nft_counters(json, &["to_servers", "to_clients"]).expect("the LB's counters");
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

/// The client's afxdp report (see [`wait_for_report_of`]).
fn wait_for_report(
    lab: &Lab,
    done: impl Fn(&heels_agent::afxdp::AfxdpReport) -> bool,
) -> heels_agent::afxdp::AfxdpReport {
    wait_for_report_of(&lab.client_instance().unwrap(), done)
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
    let apply = |netns: &heels_lab::netns::NetNs, hook: &str, rules: &str, name: &str| {
        let path = lab.work_dir().join(name);
        std::fs::write(&path, ruleset(hook, rules)).unwrap();
        let _ = netns.exec("nft", &["delete", "table", "ip", "heels_loss"]);
        netns.exec("nft", &["-f", path.to_str().unwrap()]).expect("the loss ruleset loads");
    };
    apply(lab.router(), "forward", &router_drop, "loss-router.nft");
    apply(&lab.client().netns, "input", &client_drop, "loss-client.nft");
    move |lab: &Lab| {
        let read = |netns: &heels_lab::netns::NetNs, name: &str| -> u64 {
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

/// `instance`'s afxdp report once `done` holds (the agent writes one about
/// every half second), or the last one after 10 s.
fn wait_for_report_of(
    instance: &str,
    done: impl Fn(&heels_agent::afxdp::AfxdpReport) -> bool,
) -> heels_agent::afxdp::AfxdpReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match heels_agent::afxdp::read_report(instance) {
            Some(report) if done(&report) || Instant::now() >= deadline => return report,
            None if Instant::now() >= deadline => panic!("no afxdp report of {instance}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
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

// The tests, by feature.
mod afxdp;
mod agent;
mod bypass;
mod failures;
mod full_tables;
mod kills;
mod lb_state;
mod metrics;
mod stock_tools;
mod tuples;
