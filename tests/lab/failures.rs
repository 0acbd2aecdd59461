//! Lost packets and killed processes: what each costs, and what a killed lab leaves behind.

use super::*;

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
        let output = heels_lab::output_within(
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
    found.extend(named(heels_lab::CGROUP_ROOT));
    found.extend(named(heels_bpf::tc::PIN_ROOT));
    found.extend(named(heels_agent::instance::STATE_DIR));
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
        .args(["--exact", "agent::a_long_transfer_survives_an_agent_restart", "--test-threads=1"])
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
        let pins = std::fs::read_dir(heels_bpf::tc::PIN_ROOT).into_iter().flatten().flatten();
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
