//! An LB that tracks TCP state: the reset before a SYN it would refuse.

use super::*;

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
        heels_lab::CLIENT.to_string(),
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
