//! Stock programs from Debian through the VIP, and path MTU discovery on bypassed connections.

use super::*;

/// The tests above as users meet them: stock tools to the backend's own
/// address (two rounds each), then the same tools through the VIP, in one
/// lab (the order of the issue that found it: before heels read the
/// TIME_WAITs it holds, the LB carried as much in the VIP rounds as with
/// no heels at all). The direct rounds leave the server's port full of
/// TIME_WAITs (nginx closes first, on a `[::]` listener); the VIP rounds
/// still bypass: the LB carries each connection's SYN and nothing else,
/// and no SYN is retransmitted.
fn stock_tools_bypass_after_direct_rounds(server: Dataplane) {
    use heels_lab::tools::{self, ServerKind};
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
    let direct = SocketAddrV4::new(heels_lab::server_addr(0), lab.server_port());
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
        Dataplane::Afxdp => heels_agent::afxdp::read_report(&client).map_or(0, |r| r.rewritten_to_uplink),
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
