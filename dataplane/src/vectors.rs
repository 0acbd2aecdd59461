//! The test vectors of docs/protocol.md: whole frames of each translation,
//! before and after, read from the document itself so that the tests of
//! every crate (the dataplane's, the eBPF programs', the benchmarks) use
//! exactly what the document shows.

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The bytes of the vector called `name` in docs/protocol.md.
pub fn vector(name: &str) -> Vec<u8> {
    let marker = format!("<!-- vector: {name} -->\n```text\n");
    let start = PROTOCOL_MD.find(&marker).unwrap_or_else(|| panic!("no vector {name}")) + marker.len();
    let block = &PROTOCOL_MD[start..start + PROTOCOL_MD[start..].find("```").expect("closing fence")];
    let mut bytes = Vec::new();
    for line in block.lines() {
        let (_, hex) = line.split_once(':').expect("offset: hex");
        let digits: String = hex.split_whitespace().collect();
        for pair in digits.as_bytes().chunks(2) {
            let pair = core::str::from_utf8(pair).expect("ascii");
            bytes.push(u8::from_str_radix(pair, 16).expect("hex digit"));
        }
    }
    bytes
}

/// The name of every vector, in document order.
pub const ALL: [&str; 15] = [
    "fullnat-syn-before",
    "fullnat-syn-after",
    "dnat-syn-before",
    "dnat-syn-after",
    "ipip-syn-before",
    "ipip-syn-after",
    "syn-ack-before",
    "syn-ack-after",
    "syn-ack-via-lb",
    "egress-data-before",
    "egress-data-after",
    "ingress-data-before",
    "ingress-data-after",
    "icmp-frag-needed-before",
    "icmp-frag-needed-after",
];
