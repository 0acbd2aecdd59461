//! The agent's TOML configuration.
//!
//! ```toml
//! instance = "server1"              # pins live in /sys/fs/bpf/heels/<instance>
//! interfaces = ["eth0"]             # TC programs go here
//! cgroup = "/sys/fs/cgroup/unified/heels"   # sockops sees sockets of this cgroup v2
//! addresses = ["10.10.0.11"]        # this host's addresses (DIPs, IPIP destinations)
//! sweep_seconds = 30                # how often entries of vanished sockets are dropped
//! metrics_address = "9464"          # Prometheus endpoint (a bare port: loopback); none by default
//!
//! [server]                          # omit on a host that serves nothing
//! services = [{ vip = "10.10.100.1:80", port = 8080 }]
//! lb_sources = ["10.10.0.3/32"]     # full-NAT SNAT ranges, IPIP outer sources
//! # Replies of translated connections leave by this gateway, around a DNAT LB:
//! direct_route = { gateway = "10.10.0.1", mark = 0x4845, table = 4845 }
//! # A SYN addressed to a service VIP this host holds itself (direct server
//! # return, the LB's encapsulation removed before heels, e.g. by Katran's
//! # decap.bpf.c) is translated to this address; default: the first of
//! # `addresses`. The VIPs held are read from the host's addresses at start.
//! dsr_address = "10.10.0.11"
//!
//! [client]                          # omit on a host that connects to no VIP
//! vips = ["10.10.100.1:80"]         # port 0: every port of that VIP
//! backends = ["10.10.0.0/24"]       # a SYN-ACK naming a DIP elsewhere is ignored
//! # net.ipv4.tcp_timestamps = 2 while the agent runs (restored by `heels
//! # down`): one timestamp clock for every connection of the host, so a
//! # direct connection that reuses the wire tuple of a bypassed one is not
//! # refused by the server's TIME_WAIT (docs/design.md, "Shared tuples").
//! uniform_timestamps = true
//! # Connections open or opening at once that bypass the LB; the next one
//! # takes the LB path (counted: table_full). None is ever evicted.
//! max_connections = 262144
//! ```
//!
//! Every error names the field it is about and the value it has;
//! [`AgentConfig::warnings`] names what is legal but likely wrong.
//! `heels agent --check-config FILE` prints both without attaching anything.
//! A commented example that passes with no warning: `deploy/heels.toml`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use heels_bpf::InstanceConfig;
use heels_dataplane::translate::{Prefix, Rules, Service as ServiceRule};
use serde::{Deserialize, Serialize};

/// A configuration that does not parse or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a field of the wrong type (toml names the field and line).
    #[error("{0}")]
    Syntax(String),
    /// A field with a value that cannot work.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// The field, as a TOML path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// toml's error in one line: where, and what (its own rendering is a
/// multi-line snippet).
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            // The field: the key of that line, under the last table header.
            let table = before
                .lines()
                .filter_map(|l| l.trim().strip_prefix('[')?.split(']').next())
                .next_back()
                .map_or(String::new(), |t| format!("{}.", t.trim()));
            let key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
            // Inside an inline table, the innermost key before the value.
            let line_start = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
            let inner = line_start
                .rsplit('=')
                .nth(1)
                .and_then(|k| k.rsplit(['{', ',', '[']).next())
                .map(str::trim)
                .filter(|inner| Some(*inner) != key && !inner.is_empty());
            let key = key.map(|k| inner.map_or(k.to_owned(), |inner| format!("{k}.{inner}")));
            let key = key.as_deref();
            // The bad value itself, when it is short enough to quote.
            let value = text.get(span.clone()).filter(|v| !v.contains('\n') && v.len() <= 60);
            let message = match value {
                Some(value) if !message.contains(value) => format!("{value}: {message}"),
                _ => message,
            };
            match key {
                Some(key) if !key.starts_with('#') && !key.is_empty() => ConfigError::Syntax(format!(
                    "field `{table}{key}` (line {line}, column {column}): {message}"
                )),
                _ => ConfigError::Syntax(format!("line {line}, column {column}: {message}")),
            }
        }
        None => ConfigError::Syntax(message),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// Something legal but likely wrong in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The field, as a TOML path.
    pub field: String,
    /// What is likely wrong, and why.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// LB-source prefixes shorter than this likely cover clients too.
const WIDE_LB_SOURCE: u8 = 16;

/// A service of this host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// VIP:vport, as clients connect to it.
    pub vip: SocketAddrV4,
    /// Where the server listens (default: vport).
    pub port: Option<u16>,
}

/// Policy routing that sends replies of translated connections directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectRoute {
    /// Next hop toward clients that avoids the LB.
    pub gateway: Ipv4Addr,
    /// skb mark of translated SYNs, carried to their sockets by
    /// `net.ipv4.tcp_fwmark_accept` (default 0x4845).
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Routing table of the direct route (default 4845).
    #[serde(default = "default_table")]
    pub table: u32,
}

impl DirectRoute {
    /// Replies by `gateway`, with the default mark and table.
    pub fn via(gateway: Ipv4Addr) -> Self {
        DirectRoute { gateway, mark: default_mark(), table: default_table() }
    }
}

fn default_sweep_seconds() -> u64 {
    30
}

fn default_mark() -> u32 {
    0x4845
}

fn default_table() -> u32 {
    4845
}

/// The server role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Services.
    pub services: Vec<Service>,
    /// LB source prefixes.
    #[serde(default)]
    pub lb_sources: Vec<String>,
    /// Direct route for replies (DNAT LBs).
    pub direct_route: Option<DirectRoute>,
    /// Where SYNs to a VIP this host holds are translated to (default: the first address).
    pub dsr_address: Option<Ipv4Addr>,
}

/// The client role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// VIP:vport this host connects to.
    pub vips: Vec<SocketAddrV4>,
    /// Backend prefixes.
    pub backends: Vec<String>,
    /// `net.ipv4.tcp_timestamps = 2` while heels runs (see the example above).
    #[serde(default = "default_uniform_timestamps")]
    pub uniform_timestamps: bool,
    /// Most connections open or opening at once that bypass the LB.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    heels_common::MAX_CONNECTIONS
}

/// The largest `max_connections` accepted: 16 Mi connections (the
/// kernel's tables then take about 2 GiB, the workers' 1 GiB more).
pub const MAX_MAX_CONNECTIONS: u32 = 1 << 24;

fn default_uniform_timestamps() -> bool {
    true
}

/// Which dataplane moves the packets (docs/design.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// eBPF at TC (the paper's way).
    #[default]
    Tc,
    /// An XDP classifier and AF_XDP sockets served by pinned workers, with
    /// the TC programs standing by.
    Afxdp,
}

impl DataplaneKind {
    fn is_tc(&self) -> bool {
        *self == DataplaneKind::Tc
    }
}

/// The afxdp dataplane's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AfxdpSettings {
    /// The cores workers are pinned to, one worker each (at most one per
    /// receive queue of the uplink); default: core 0.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// Spin while idle instead of waiting in poll(2): lowest latency, a
    /// whole core per worker.
    #[serde(default)]
    pub busy_poll: bool,
    /// Without `busy_poll`: how long a worker keeps turning after its last
    /// frame before it waits in poll(2), in microseconds (default 50).
    #[serde(default = "default_idle_spin_us")]
    pub idle_spin_us: u64,
}

impl Default for AfxdpSettings {
    fn default() -> Self {
        AfxdpSettings { cores: default_cores(), busy_poll: false, idle_spin_us: default_idle_spin_us() }
    }
}

fn default_idle_spin_us() -> u64 {
    50
}

fn default_cores() -> Vec<usize> {
    vec![0]
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Instance name.
    pub instance: String,
    /// Interfaces.
    pub interfaces: Vec<String>,
    /// cgroup v2 directory.
    pub cgroup: PathBuf,
    /// This host's addresses (`--address` replaces them).
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    /// Seconds between sweeps that drop the entries of connections whose
    /// socket is gone (missed close callbacks); default 30.
    #[serde(default = "default_sweep_seconds")]
    pub sweep_seconds: u64,
    /// The Prometheus endpoint: `PORT` (loopback), `IP:PORT` or
    /// `[IPv6]:PORT`; none by default (`--metrics-addr` overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// `tc` (default) or `afxdp` (`--dataplane` overrides).
    #[serde(default, skip_serializing_if = "DataplaneKind::is_tc")]
    pub dataplane: DataplaneKind,
    /// Settings of the afxdp dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<AfxdpSettings>,
    /// Server role.
    pub server: Option<Server>,
    /// Client role.
    pub client: Option<Client>,
}

fn prefixes(field: &str, values: &[String]) -> Result<Vec<Prefix>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            value.parse().map_err(|e| invalid(format!("{field}[{i}]"), format!("{value:?}: {e}")))
        })
        .collect()
}

impl AgentConfig {
    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_addresses(text, &[])
    }

    /// Parses a configuration, puts `addresses` (when there are any) in
    /// place of its own (`--address`: one file for a fleet, each host's
    /// address from its command line), and checks the result.
    pub fn parse_with_addresses(text: &str, addresses: &[Ipv4Addr]) -> Result<Self, ConfigError> {
        let mut config: AgentConfig = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        if !addresses.is_empty() {
            config.addresses = addresses.to_vec();
        }
        config.check()?;
        Ok(config)
    }

    /// Runs on `kind` instead (`--dataplane`), if the rest allows it.
    pub fn set_dataplane(&mut self, kind: DataplaneKind) -> Result<(), ConfigError> {
        self.dataplane = kind;
        self.check()
    }

    fn check(&self) -> Result<(), ConfigError> {
        let name_ok = !self.instance.is_empty()
            && self.instance.len() <= 64
            && self.instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                "instance",
                format!("{:?}: 1 to 64 letters, digits, '-' or '_'", self.instance),
            ));
        }
        if self.interfaces.is_empty() {
            return Err(invalid("interfaces", "[]: name at least one interface"));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return Err(invalid(
                    format!("interfaces[{i}]"),
                    format!("{name:?} is not an interface name"),
                ));
            }
        }
        if !self.cgroup.is_absolute() {
            return Err(invalid(
                "cgroup",
                format!("{:?}: an absolute path to a cgroup v2 directory", self.cgroup.display().to_string()),
            ));
        }
        if self.sweep_seconds == 0 {
            return Err(invalid("sweep_seconds", format!("{}: at least 1", self.sweep_seconds)));
        }
        if let Some(address) = &self.metrics_address {
            parse_address(address).map_err(|e| invalid("metrics_address", e))?;
        }
        if self.addresses.is_empty() {
            return Err(invalid(
                "addresses",
                "[]: name at least one address of this host (or pass --address)",
            ));
        }
        if self.server.is_none() && self.client.is_none() {
            return Err(invalid(
                "server",
                "neither [server] nor [client]: configure [server], [client] or both",
            ));
        }
        if self.dataplane == DataplaneKind::Afxdp {
            if self.interfaces.len() != 1 {
                return Err(invalid(
                    "interfaces",
                    format!("{:?}: afxdp takes exactly one interface (the uplink)", self.interfaces),
                ));
            }
            if self.afxdp.as_ref().is_some_and(|a| a.cores.is_empty()) {
                return Err(invalid("afxdp.cores", "[]: name at least one core"));
            }
        }
        if let Some(server) = &self.server {
            if server.services.is_empty() {
                return Err(invalid("server.services", "[]: name at least one service"));
            }
            prefixes("server.lb_sources", &server.lb_sources)?;
            if let Some(address) = server.dsr_address {
                if !self.addresses.contains(&address) {
                    return Err(invalid(
                        "server.dsr_address",
                        format!("{address} is not one of `addresses`"),
                    ));
                }
            }
            if let Some(route) = &server.direct_route {
                if route.mark == 0 {
                    return Err(invalid("server.direct_route.mark", "0: must not be 0"));
                }
                if route.table == 0 || route.table >= 253 && route.table <= 255 {
                    return Err(invalid(
                        "server.direct_route.table",
                        format!("{}: not 0 and not a reserved table (253-255)", route.table),
                    ));
                }
            }
        }
        if let Some(client) = &self.client {
            if client.max_connections == 0 || client.max_connections > MAX_MAX_CONNECTIONS {
                return Err(invalid(
                    "client.max_connections",
                    format!("{} is not between 1 and {MAX_MAX_CONNECTIONS}", client.max_connections),
                ));
            }
            if client.vips.is_empty() {
                return Err(invalid("client.vips", "[]: name at least one VIP"));
            }
            let backends = prefixes("client.backends", &client.backends)?;
            if backends.is_empty() {
                return Err(invalid("client.backends", "[]: name at least one backend prefix"));
            }
        }
        Ok(())
    }

    /// Every VIP:vport this host serves or connects to.
    pub fn vips(&self) -> Vec<SocketAddrV4> {
        let served = self.server.iter().flat_map(|s| s.services.iter().map(|service| service.vip));
        let used = self.client.iter().flat_map(|c| c.vips.iter().copied());
        let mut vips: Vec<SocketAddrV4> = served.chain(used).collect();
        vips.sort();
        vips.dedup();
        vips
    }

    /// The metrics endpoint's address, if any (checked by `parse`).
    pub fn metrics_socket(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address.as_deref().and_then(|a| parse_address(a).ok())
    }

    /// What is legal but likely wrong: a client VIP inside the backend
    /// prefixes, an LB-source prefix wide enough to cover clients, a local
    /// port that serves two VIPs. Call on a configuration that parsed.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut warnings = Vec::new();
        let mut warn = |field: String, message: String| warnings.push(Warning { field, message });
        if let Some(server) = &self.server {
            let sources = prefixes("server.lb_sources", &server.lb_sources).unwrap_or_default();
            for (i, prefix) in sources.iter().enumerate() {
                if prefix.len() < WIDE_LB_SOURCE {
                    warn(
                        format!("server.lb_sources[{i}]"),
                        format!(
                            "{prefix} is wide: if it covers clients, any of them can make this server see \
                             any client address (docs/security.md); name the LB's own SNAT range"
                        ),
                    );
                }
            }
            for (i, service) in server.services.iter().enumerate() {
                let port = service.port.unwrap_or(service.vip.port());
                let earlier = server.services[..i].iter().find(|s| s.port.unwrap_or(s.vip.port()) == port);
                if let Some(earlier) = earlier {
                    let message = if earlier.vip == service.vip {
                        format!("{} is listed twice", service.vip)
                    } else {
                        format!(
                            "local port {port} also serves {}: connections of both VIPs from one client port \
                             share a tuple, and the second takes the LB path (docs/design.md, \"Shared tuples\")",
                            earlier.vip
                        )
                    };
                    warn(format!("server.services[{i}]"), message);
                }
            }
        }
        if let Some(client) = &self.client {
            let backends = prefixes("client.backends", &client.backends).unwrap_or_default();
            for (i, vip) in client.vips.iter().enumerate() {
                let inside = backends.iter().find(|prefix| prefix.contains(vip.ip().octets()));
                if let Some(prefix) = inside {
                    warn(
                        format!("client.vips[{i}]"),
                        format!(
                            "{vip} lies inside backend prefix {prefix}: a SYN-ACK form could name the VIP \
                             as a backend; keep VIPs out of the backend prefixes"
                        ),
                    );
                }
            }
        }
        warnings
    }

    /// The kernel-side form of the configuration.
    pub fn datapath(&self) -> Result<InstanceConfig, ConfigError> {
        Ok(InstanceConfig {
            instance: self.instance.clone(),
            interfaces: self.interfaces.clone(),
            cgroup: self.cgroup.clone(),
            syn_mark: self.server.as_ref().and_then(|s| s.direct_route.as_ref()).map_or(0, |r| r.mark),
            rules: self.rules()?,
            max_connections: self.max_connections(),
            time_wait: kernel_time_wait_layout(),
        })
    }

    /// Most client connections open or opening at once (the default when
    /// the host has no client role: its tables then stay empty).
    pub fn max_connections(&self) -> u32 {
        self.client.as_ref().map_or(heels_common::MAX_CONNECTIONS, |c| c.max_connections)
    }

    /// What this host accepts, as both dataplanes take it (the core's
    /// [`Rules`]). `local_vips` is left empty: the agent fills it from the
    /// host's addresses when it starts.
    pub fn rules(&self) -> Result<Rules, ConfigError> {
        let server = self.server.clone().unwrap_or_default();
        let client = self.client.clone().unwrap_or_default();
        Ok(Rules {
            local_addrs: self.addresses.iter().map(|a| a.octets()).collect(),
            services: server
                .services
                .iter()
                .map(|s| ServiceRule { vip: s.vip.into(), local_port: s.port.unwrap_or(s.vip.port()) })
                .collect(),
            lb_sources: prefixes("server.lb_sources", &server.lb_sources)?,
            vips: client.vips.iter().map(|&vip| vip.into()).collect(),
            backends: prefixes("client.backends", &client.backends)?,
            local_vips: Vec::new(),
            dsr_addr: self
                .server
                .as_ref()
                .and(server.dsr_address.or(self.addresses.first().copied()))
                .map(|a| a.octets()),
        })
    }
}

/// Where the running kernel keeps a TIME_WAIT's fields, read from its BTF
/// once per process; unknown (every SYN that meets another connection's
/// TIME_WAIT takes the LB path) with a warning when it cannot be read.
pub fn kernel_time_wait_layout() -> heels_common::time_wait::TimeWaitLayout {
    static LAYOUT: std::sync::OnceLock<heels_common::time_wait::TimeWaitLayout> = std::sync::OnceLock::new();
    *LAYOUT.get_or_init(|| {
        heels_bpf::btf::Btf::from_kernel().and_then(|btf| heels_bpf::btf::time_wait_layout(&btf)).unwrap_or_else(|e| {
            tracing::warn!(
                "reading the kernel's TIME_WAIT layout: {e} (SYNs that meet a direct connection's TIME_WAIT take the LB path)"
            );
            Default::default()
        })
    })
}

/// The endpoint's address: `PORT` (loopback), `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| format!("{text:?}: a port (loopback), IP:PORT or [IPv6]:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
instance = "server1"
interfaces = ["eth0"]
cgroup = "/sys/fs/cgroup/unified/heels"
addresses = ["10.10.0.11"]

[server]
services = [{ vip = "10.10.100.1:80", port = 8080 }, { vip = "10.10.100.2:443" }]
lb_sources = ["10.10.0.3/32"]
direct_route = { gateway = "10.10.0.1" }

[client]
vips = ["10.10.100.1:0"]
backends = ["10.10.0.0/24"]
"#;

    #[test]
    fn parses_a_full_configuration() {
        let config = AgentConfig::parse(FULL).unwrap();
        let datapath = config.datapath().unwrap();
        let rules = &datapath.rules;
        let service = |vip: &str, local_port| ServiceRule {
            vip: vip.parse::<SocketAddrV4>().unwrap().into(),
            local_port,
        };
        assert_eq!(rules.services, vec![service("10.10.100.1:80", 8080), service("10.10.100.2:443", 443)]);
        assert_eq!(rules.lb_sources, vec![Prefix::new([10, 10, 0, 3], 32).unwrap()]);
        assert_eq!(rules.backends, vec![Prefix::new([10, 10, 0, 0], 24).unwrap()]);
        assert_eq!(rules.local_addrs, vec![[10, 10, 0, 11]]);
        assert_eq!(rules.dsr_addr, Some([10, 10, 0, 11]), "the first address by default");
        assert_eq!(datapath.syn_mark, 0x4845);
        assert_eq!(config.server.unwrap().direct_route.unwrap().table, 4845);
    }

    fn error_of(text: &str) -> String {
        AgentConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let bad_prefix = FULL.replace("10.10.0.0/24", "10.10.0.0/33");
        assert!(error_of(&bad_prefix).contains("client.backends[0]"), "{}", error_of(&bad_prefix));
        let bad_vip = FULL.replace("10.10.100.1:80", "10.10.100.1");
        assert!(error_of(&bad_vip).contains("vip"), "{}", error_of(&bad_vip));
        let no_interfaces = FULL.replace(r#"interfaces = ["eth0"]"#, "interfaces = []");
        assert!(error_of(&no_interfaces).contains("`interfaces`"));
        let bad_name = FULL.replace("server1", "a/b");
        assert!(error_of(&bad_name).contains("`instance`"));
        let unknown = FULL.replace("[client]", "[client]\nvipz = []");
        assert!(error_of(&unknown).contains("vipz"), "{}", error_of(&unknown));
        let relative = FULL.replace("/sys/fs/cgroup/unified/heels", "heels");
        assert!(error_of(&relative).contains("`cgroup`"));
        let zero_mark = FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", mark = 0"#);
        assert!(error_of(&zero_mark).contains("server.direct_route.mark"));
    }

    /// Every rule of `check`: a configuration breaking only it, the field
    /// the error must name and the value it must quote.
    #[test]
    fn every_rule_names_its_field_and_the_bad_value() {
        let afxdp = |text: &str| text.replace("[server]", "dataplane = \"afxdp\"\n[server]");
        let (long_name, long_quoted) = ("a".repeat(65), format!("{:?}", "a".repeat(65)));
        let cases: Vec<(String, &str, &str)> = vec![
            (FULL.replace("server1", ""), "instance", "\"\""),
            (FULL.replace("server1", &long_name), "instance", &long_quoted),
            (FULL.replace("server1", "web 1"), "instance", "\"web 1\""),
            (FULL.replace(r#"interfaces = ["eth0"]"#, "interfaces = []"), "interfaces", "[]"),
            (FULL.replace(r#""eth0""#, r#""""#), "interfaces[0]", "\"\""),
            (FULL.replace(r#""eth0""#, r#""eth0123456789abc""#), "interfaces[0]", "\"eth0123456789abc\""),
            (FULL.replace(r#""eth0""#, r#""eth/0""#), "interfaces[0]", "\"eth/0\""),
            (FULL.replace("/sys/fs/cgroup/unified/heels", "heels"), "cgroup", "\"heels\""),
            (FULL.replace("[server]", "sweep_seconds = 0\n[server]"), "sweep_seconds", "0"),
            (
                FULL.replace("[server]", "metrics_address = \"host:x\"\n[server]"),
                "metrics_address",
                "\"host:x\"",
            ),
            (FULL.replace(r#"addresses = ["10.10.0.11"]"#, "addresses = []"), "addresses", "[]"),
            (FULL.split("[server]").next().unwrap().to_owned(), "server", "neither [server] nor [client]"),
            (
                afxdp(&FULL.replace(r#"interfaces = ["eth0"]"#, r#"interfaces = ["eth0", "eth1"]"#)),
                "interfaces",
                r#"["eth0", "eth1"]"#,
            ),
            (afxdp(FULL) + "\n[afxdp]\ncores = []\n", "afxdp.cores", "[]"),
            (
                FULL.replace(
                    r#"services = [{ vip = "10.10.100.1:80", port = 8080 }, { vip = "10.10.100.2:443" }]"#,
                    "services = []",
                ),
                "server.services",
                "[]",
            ),
            (FULL.replace("10.10.0.3/32", "10.10.0.3/40"), "server.lb_sources[0]", "\"10.10.0.3/40\""),
            (FULL.replace("10.10.0.3/32", "lb"), "server.lb_sources[0]", "\"lb\""),
            (
                FULL.replace("lb_sources", "dsr_address = \"10.10.0.99\"\nlb_sources"),
                "server.dsr_address",
                "10.10.0.99",
            ),
            (
                FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", mark = 0"#),
                "server.direct_route.mark",
                "0",
            ),
            (
                FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", table = 0"#),
                "server.direct_route.table",
                "0",
            ),
            (
                FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", table = 253"#),
                "server.direct_route.table",
                "253",
            ),
            (
                FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", table = 255"#),
                "server.direct_route.table",
                "255",
            ),
            (FULL.replace("[client]", "[client]\nmax_connections = 0"), "client.max_connections", "0"),
            (FULL.replace(r#"vips = ["10.10.100.1:0"]"#, "vips = []"), "client.vips", "[]"),
            (FULL.replace(r#"backends = ["10.10.0.0/24"]"#, "backends = []"), "client.backends", "[]"),
            (FULL.replace("10.10.0.0/24", "10.10.0.0/33"), "client.backends[0]", "\"10.10.0.0/33\""),
        ];
        for (text, field, value) in &cases {
            match AgentConfig::parse(text) {
                Err(ConfigError::Invalid { field: named, message }) => {
                    assert_eq!(&named, field, "{message}");
                    assert!(
                        message.starts_with(value),
                        "`{field}`: {message:?} does not start with {value:?}"
                    );
                }
                other => panic!("`{field}` = {value}: {other:?}"),
            }
        }
        // The reserved tables' neighbours are fine.
        for table in [1, 252, 256] {
            let text = FULL
                .replace(r#"gateway = "10.10.0.1""#, &format!(r#"gateway = "10.10.0.1", table = {table}"#));
            AgentConfig::parse(&text).unwrap_or_else(|e| panic!("table {table}: {e}"));
        }
    }

    #[test]
    fn max_connections_is_the_tables_size_and_must_fit() {
        let config = AgentConfig::parse(FULL).unwrap();
        assert_eq!(config.datapath().unwrap().max_connections, heels_common::MAX_CONNECTIONS);
        let small = FULL.replace("[client]", "[client]\nmax_connections = 1000");
        assert_eq!(AgentConfig::parse(&small).unwrap().datapath().unwrap().max_connections, 1000);
        for bad in ["0", "16777217"] {
            let text = FULL.replace("[client]", &format!("[client]\nmax_connections = {bad}"));
            let error = error_of(&text);
            assert!(error.contains("`client.max_connections`") && error.contains(bad), "{error}");
        }
    }

    #[test]
    fn errors_name_the_bad_value() {
        let bad_name = FULL.replace("server1", "a/b");
        assert!(error_of(&bad_name).contains("\"a/b\""), "{}", error_of(&bad_name));
        let bad_table = FULL.replace(r#"gateway = "10.10.0.1""#, r#"gateway = "10.10.0.1", table = 254"#);
        assert!(error_of(&bad_table).contains("254"), "{}", error_of(&bad_table));
        let relative = FULL.replace("/sys/fs/cgroup/unified/heels", "heels");
        assert!(error_of(&relative).contains("\"heels\""), "{}", error_of(&relative));
    }

    #[test]
    fn syntax_errors_are_one_line_naming_the_field_and_where() {
        let wrong_type = FULL.replace("[server]", "sweep_seconds = \"x\"\n[server]");
        let error = error_of(&wrong_type);
        assert!(error.starts_with("field `sweep_seconds` (line "), "{error}");
        assert!(error.contains("\"x\"") && !error.contains('\n'), "{error}");
        let in_table = FULL.replace(r#"backends = ["10.10.0.0/24"]"#, "backends = [1]");
        assert!(error_of(&in_table).starts_with("field `client.backends`"), "{}", error_of(&in_table));
        let bad_metrics = FULL.replace("[server]", "metrics_address = \"host:x\"\n[server]");
        assert!(
            error_of(&bad_metrics).contains("`metrics_address`: \"host:x\""),
            "{}",
            error_of(&bad_metrics)
        );
    }

    #[test]
    fn addresses_from_the_command_line_replace_the_files() {
        let without = FULL.replace(r#"addresses = ["10.10.0.11"]"#, "");
        assert!(error_of(&without).contains("--address"), "{}", error_of(&without));
        let config = AgentConfig::parse_with_addresses(&without, &[Ipv4Addr::new(10, 10, 0, 12)]).unwrap();
        assert_eq!(config.addresses, [Ipv4Addr::new(10, 10, 0, 12)]);
    }

    #[test]
    fn warnings_name_what_is_likely_wrong() {
        assert_eq!(AgentConfig::parse(FULL).unwrap().warnings(), vec![]);
        let wide = FULL.replace(r#"lb_sources = ["10.10.0.3/32"]"#, r#"lb_sources = ["10.0.0.0/8"]"#);
        let warnings = AgentConfig::parse(&wide).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].to_string().starts_with("field `server.lb_sources[0]`: 10.0.0.0/8 is wide"));
        let shared =
            FULL.replace(r#"{ vip = "10.10.100.2:443" }"#, r#"{ vip = "10.10.100.2:443", port = 8080 }"#);
        let warnings = AgentConfig::parse(&shared).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("local port 8080 also serves 10.10.100.1:80"), "{warnings:?}");
        let vip_in_backends = FULL.replace(r#"vips = ["10.10.100.1:0"]"#, r#"vips = ["10.10.0.9:80"]"#);
        let warnings = AgentConfig::parse(&vip_in_backends).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "client.vips[0]");
    }

    #[test]
    fn the_example_configuration_is_valid_and_warns_of_nothing() {
        let example = crate::deploy::EXAMPLE_CONFIG;
        let config = AgentConfig::parse(example).unwrap();
        assert_eq!(config.warnings(), vec![]);
        assert!(config.server.is_some() && config.client.is_some(), "the example shows both roles");
    }

    #[test]
    fn a_host_needs_a_role() {
        let text = "instance = \"x\"\ninterfaces = [\"eth0\"]\ncgroup = \"/c\"\naddresses = [\"10.0.0.1\"]\n";
        assert!(error_of(text).contains("[server], [client]"));
    }

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(parse_address("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_address("0.0.0.0:9464"), Ok("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(parse_address("[::1]:9464"), Ok("[::1]:9464".parse().unwrap()));
        assert!(parse_address("localhost").unwrap_err().contains("\"localhost\""));
    }
}
