//! A lab: its hosts, router, LB, agents and servers, built from a
//! [`LabSpec`] and removed when dropped.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use heels_agent::config::{AgentConfig, DirectRoute, Service};

use crate::counters::InterfaceCounters;
use crate::lb::{self, LbCounters, LoadBalancer};
use crate::netns::{spawn_in, Cgroup, NetNs};
use crate::plan::*;
use crate::process::{finish_load, wait_ready, StderrOf};
use crate::registry::{sweep, work_dir_of, CGROUP_ROOT};
use crate::tools;
use crate::workload::{LoadReport, LoadSpec};

/// One host of the lab.
#[derive(Debug)]
pub struct Host {
    /// What it is.
    pub role: Role,
    /// Its namespace.
    pub netns: NetNs,
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// Its address.
    pub addr: Ipv4Addr,
}

/// A running heels agent.
#[derive(Debug)]
struct Agent {
    host: Role,
    instance: String,
    config_path: PathBuf,
    child: Option<Child>,
}

/// The lab. Dropping it removes everything it made.
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    pub(crate) prefix: String,
    heels: PathBuf,
    work_dir: PathBuf,
    /// Processes to kill on drop (servers, agents).
    children: Vec<Child>,
    agents: Vec<Agent>,
    lb: Option<LoadBalancer>,
    /// The ipip-module stand-in on servers without heels (IPIP LB).
    decap: Option<aya::Ebpf>,
    /// Hosts, found by [`Role`]. Dropped after the processes.
    hosts: Vec<Host>,
    router: Option<NetNs>,
    cgroup_root: Option<Cgroup>,
}

fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("hl{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A veth pair: `port` in the router's namespace, `eth0` in the host's.
fn veth(router: &NetNs, port: &str, host: &Host) -> anyhow::Result<()> {
    router.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns.name()])?;
    Ok(())
}

impl Lab {
    /// Builds the lab and starts heels and the servers. `heels` is the path
    /// of the `heels` binary (run inside the namespaces).
    pub fn build(spec: LabSpec, heels: &Path) -> anyhow::Result<Lab> {
        if spec.servers == 0 || spec.servers > 4 {
            bail!("the lab has 1 to 4 servers, not {}", spec.servers);
        }
        let prefix = unique_prefix();
        let work_dir = work_dir_of(&prefix);
        std::fs::create_dir_all(&work_dir)?;
        let cgroup_root = Cgroup::create(PathBuf::from(CGROUP_ROOT).join(&prefix))?;
        let mut lab = Lab {
            spec,
            prefix,
            heels: heels.to_owned(),
            work_dir,
            children: Vec::new(),
            agents: Vec::new(),
            lb: None,
            decap: None,
            hosts: Vec::new(),
            router: None,
            cgroup_root: Some(cgroup_root),
        };
        lab.wire().context("building the namespaces")?;
        lab.lb = Some(LoadBalancer::start(
            lab.spec.lb,
            lab.host(Role::Lb),
            lab.router.as_ref().expect("router"),
            lab.spec.servers,
            lab.spec.overrides.second_vip,
        )?);
        if lab.spec.lb == LbKind::Ipip {
            let servers: Vec<&Host> =
                lab.hosts.iter().filter(|h| matches!(h.role, Role::Server(_))).collect();
            if lab.spec.overrides.ipip_decap_in_xdp {
                lab.decap = Some(lb::attach_decap(&servers, lb::DecapAt::Xdp)?);
            } else if lab.spec.server == Dataplane::None {
                lab.decap = Some(lb::attach_decap(&servers, lb::DecapAt::Tc)?);
            }
        }
        // Agents first: a listener opened before the sockops program is
        // attached never asks for the option callbacks, and heels leaves
        // its connections on the LB path (see docs/design.md).
        if lab.spec.overrides.servers_before_agents {
            for i in 0..lab.spec.servers {
                lab.start_server(i)?;
            }
            lab.start_agents()?;
        } else {
            lab.start_agents()?;
            if !lab.spec.overrides.bare {
                for i in 0..lab.spec.servers {
                    lab.start_server(i)?;
                }
            }
        }
        Ok(lab)
    }

    fn add_host(&mut self, role: Role, addr: Ipv4Addr) -> anyhow::Result<()> {
        let netns = NetNs::create(&format!("{}-{role}", self.prefix))?;
        let root = self.cgroup_root.as_ref().expect("cgroup root").path().to_owned();
        let cgroup = Cgroup::create(root.join(role.to_string()))?;
        self.hosts.push(Host { role, netns, cgroup, addr });
        Ok(())
    }

    /// The host of `role`, if the lab has it.
    pub fn find_host(&self, role: Role) -> Option<&Host> {
        self.hosts.iter().find(|h| h.role == role)
    }

    /// The host of `role` (every lab has its client, LB and servers 1 to
    /// `servers`; any other role is a bug of the caller).
    pub fn host(&self, role: Role) -> &Host {
        self.find_host(role).unwrap_or_else(|| panic!("this lab has no {role}"))
    }

    fn wire(&mut self) -> anyhow::Result<()> {
        let router = NetNs::create(&format!("{}-router", self.prefix))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.ip(&["link", "add", "br0", "type", "bridge"])?;
        router.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "br0"])?;
        router.ip(&["link", "set", "br0", "mtu", SERVER_SIDE_MTU, "up"])?;
        self.router = Some(router);

        self.add_host(Role::Client, CLIENT)?;
        self.add_host(Role::Lb, LB)?;
        let servers: Vec<Role> = (1..=self.spec.servers).map(Role::Server).collect();
        for (i, &role) in servers.iter().enumerate() {
            self.add_host(role, server_addr(i))?;
        }
        let router = self.router.as_ref().expect("router");

        // The client's link: a /24 of its own behind the router.
        let host = self.host(Role::Client);
        veth(router, "to-client", host)?;
        router.ip(&["addr", "add", "10.10.1.1/24", "dev", "to-client"])?;
        router.ip(&["link", "set", "to-client", "up"])?;
        host.netns.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        for address in self.client_addresses().into_iter().skip(1) {
            host.netns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        }
        host.netns.ip(&["link", "set", "eth0", "up"])?;
        host.netns.ip(&["route", "add", "default", "via", "10.10.1.1"])?;
        // A load generator's usual settings: thousands of short connections
        // a second would otherwise run out of ephemeral ports in TIME_WAIT
        // and make connect() crawl (seen here: 3,500/s falling to 250/s).
        host.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        host.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;

        // The server side: one bridge in the router namespace.
        for (role, mac) in std::iter::once((Role::Lb, [0x02, 0x00, 0x0a, 0x0a, 0x00, 0x03]))
            .chain(servers.iter().enumerate().map(|(i, &role)| (role, server_mac(i))))
        {
            let host = self.host(role);
            let port = format!("to-{}", host.role);
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            veth(router, &port, host)?;
            router.ip(&["link", "set", &port, "master", "br0", "mtu", SERVER_SIDE_MTU, "up"])?;
            host.netns.ip(&["link", "set", "eth0", "address", &mac, "mtu", SERVER_SIDE_MTU, "up"])?;
            host.netns.ip(&["addr", "add", &format!("{}/24", host.addr), "dev", "eth0"])?;
        }
        let lb = self.host(Role::Lb);
        lb.netns.sysctl("net.ipv4.ip_forward", "1")?;
        lb.netns.ip(&["route", "add", "default", "via", &ROUTER.to_string()])?;
        router.ip(&["route", "add", &format!("{VIP}/32"), "via", &LB.to_string()])?;
        if self.spec.overrides.second_vip {
            router.ip(&["route", "add", &format!("{SECOND_VIP}/32"), "via", &LB.to_string()])?;
        }
        for &role in &servers {
            let host = self.host(role);
            let gateway = if self.spec.lb == LbKind::Dnat { LB } else { ROUTER };
            host.netns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            if self.spec.overrides.server_syncookies {
                host.netns.sysctl("net.ipv4.tcp_syncookies", "2")?;
            }
            if self.spec.lb == LbKind::Ipip {
                // Direct server return: the VIP is local on every server.
                host.netns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            }
        }
        if self.spec.lb == LbKind::Ipip {
            // The IPIP LB is an XDP program (XDP_TX), as Katran is, and a
            // frame that enters XDP loses a pending (offloaded) checksum:
            // with offload on toward it, every connection through it fails,
            // heels or none (measured: `heels lab demo --lb ipip
            // --dataplane none`, 0 of 200). A Katran host takes its frames
            // from a NIC, complete; so the router's port toward the LB
            // models that wire. Every other link, the hosts' included,
            // keeps offload on: heels meets peers that send pending
            // checksums (the afxdp workers finish them).
            router.exec("ethtool", &["-K", "to-lb", "tx", "off"])?;
        }
        Ok(())
    }

    /// Where the servers listen: behind the IPIP LB (direct server return,
    /// no translation) on the service's own port, else on [`SERVER_PORT`].
    pub fn server_port(&self) -> u16 {
        server_port(self.spec.lb)
    }

    fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        for _ in 0..self.spec.overrides.server_processes.max(1) {
            let host = self.host(Role::Server(i + 1));
            let mut command = Command::new(&self.heels);
            command
                .args([
                    "lab",
                    "serve",
                    "--port",
                    &self.server_port().to_string(),
                    "--id",
                    &(i + 1).to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if self.spec.overrides.server_dual_stack {
                command.arg("--dual-stack");
            }
            let mut child = spawn_in(&host.netns, &host.cgroup, &mut command)?;
            wait_ready(&mut child, &format!("the server on {}", host.role))?;
            self.children.push(child);
        }
        Ok(())
    }

    /// The agent configuration of host `role`: the repository's example
    /// (deploy/heels.toml) with this host's names, addresses and role.
    fn agent_config(&self, role: Role) -> anyhow::Result<AgentConfig> {
        let host = self.host(role);
        let overrides = &self.spec.overrides;
        let mut config =
            AgentConfig::parse(heels_agent::deploy::EXAMPLE_CONFIG).context("the example configuration")?;
        config.instance = format!("{}-{}", self.prefix, host.role);
        config.interfaces = vec!["eth0".to_owned()];
        config.cgroup = host.cgroup.path().to_owned();
        config.addresses = if role == Role::Client { self.client_addresses() } else { vec![host.addr] };
        config.sweep_seconds = overrides.sweep_seconds.unwrap_or(1);
        config.metrics_address = Some(format!("127.0.0.1:{METRICS_PORT}"));
        if role == Role::Client {
            config.server = None;
            config.dataplane = self.spec.client.agent().unwrap_or_default();
            config.afxdp = Some(heels_agent::config::AfxdpSettings {
                cores: vec![tools::CLIENT_CPU],
                ..Default::default()
            });
            let client = config.client.as_mut().context("the example has a [client]")?;
            client.vips =
                self.services().into_iter().chain(overrides.extra_client_vips.iter().copied()).collect();
            client.backends = vec![overrides.client_backends.clone().unwrap_or_else(|| BACKENDS.to_owned())];
            if let Some(max) = overrides.client_max_connections {
                client.max_connections = max;
            }
        } else {
            config.client = None;
            config.dataplane = self.spec.server.agent().unwrap_or_default();
            // A worker beside the host's own processes (the bench pins them).
            config.afxdp = Some(heels_agent::config::AfxdpSettings {
                cores: vec![tools::SERVER_CPU],
                ..Default::default()
            });
            let server = config.server.as_mut().context("the example has a [server]")?;
            let port = overrides.server_local_port.unwrap_or_else(|| self.server_port());
            server.services =
                self.services().into_iter().map(|vip| Service { vip, port: Some(port) }).collect();
            server.lb_sources = overrides
                .server_lb_sources
                .clone()
                .unwrap_or_else(|| vec![format!("{LB}/32"), "172.16.0.0/16".to_owned()]);
            server.direct_route = (self.spec.lb == LbKind::Dnat).then(|| DirectRoute::via(ROUTER));
        }
        Ok(config)
    }

    fn start_agents(&mut self) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        if self.spec.client != Dataplane::None {
            wanted.push(Role::Client);
        }
        if self.spec.server != Dataplane::None {
            wanted.extend((1..=self.spec.servers).map(Role::Server));
        }
        for role in wanted {
            let config_path = self.work_dir.join(format!("{role}.toml"));
            let config = self.agent_config(role)?;
            std::fs::write(
                &config_path,
                toml::to_string(&config).context("writing an agent configuration")?,
            )?;
            let instance = format!("{}-{role}", self.prefix);
            self.agents.push(Agent { host: role, instance, config_path, child: None });
            let agent = self.agents.len() - 1;
            self.start_agent(agent)?;
        }
        Ok(())
    }

    fn start_agent(&mut self, agent: usize) -> anyhow::Result<()> {
        let Agent { host, config_path, .. } = &self.agents[agent];
        let host = self.host(*host);
        let mut command = match &self.spec.overrides.agent_capabilities {
            Some(capabilities) => {
                let allowed: String = capabilities.iter().map(|c| format!(",+{c}")).collect();
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--bounding-set=-all{allowed}"))
                    .args(["--inh-caps=-all", "--"])
                    .arg(&self.heels);
                command
            }
            None => Command::new(&self.heels),
        };
        command.arg("agent").arg("--config").arg(config_path).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn_in(&host.netns, &host.cgroup, &mut command)?;
        wait_ready(&mut child, &format!("the agent on {}", host.role))?;
        self.agents[agent].child = Some(child);
        Ok(())
    }

    /// An HTTP GET of `path` on the metrics endpoint of the agent of host
    /// `role` (from inside its namespace); the body.
    pub fn scrape(&self, role: Role, path: &str) -> anyhow::Result<String> {
        self.scrape_within(role, path, Duration::from_secs(10))
    }

    /// A connection to the metrics endpoint of the agent of host `role`
    /// that has sent nothing yet.
    pub fn connect_metrics(&self, role: Role) -> anyhow::Result<std::net::TcpStream> {
        let host = self.find_host(role).with_context(|| format!("no lab host {role}"))?;
        host.netns.enter(|| Ok(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?))
    }

    /// [`Lab::scrape`], failing unless the whole answer comes within `deadline`.
    pub fn scrape_within(&self, role: Role, path: &str, deadline: Duration) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let host = self.find_host(role).with_context(|| format!("no lab host {role}"))?;
        let path = path.to_owned();
        let response = host.netns.enter(move || {
            let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?;
            stream.set_read_timeout(Some(deadline))?;
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })?;
        let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{role}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }

    /// Stops every agent with SIGTERM and starts it again (the kernel
    /// datapath stays throughout).
    pub fn restart_agents(&mut self) -> anyhow::Result<()> {
        for agent in 0..self.agents.len() {
            if let Some(mut child) = self.agents[agent].child.take() {
                // SAFETY: kill on the pid of a child we still own (not yet waited).
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let status = child.wait()?;
                if !status.success() {
                    bail!(
                        "agent {} exited with {status}: {}",
                        self.agents[agent].instance,
                        child.wait_with_output_stderr()
                    );
                }
            }
            self.start_agent(agent)?;
        }
        Ok(())
    }

    /// Kills the agent of host `role` with SIGKILL (no chance to clean
    /// up) and reaps it; returns when it is gone.
    pub fn kill_agent(&mut self, role: Role) -> anyhow::Result<Instant> {
        let agent =
            self.agents.iter().position(|a| a.host == role).with_context(|| format!("no agent on {role}"))?;
        let mut child =
            self.agents[agent].child.take().with_context(|| format!("the agent on {role} is not running"))?;
        child.kill()?;
        let killed = Instant::now();
        child.wait()?;
        Ok(killed)
    }

    /// Starts the agent of host `role` again (after [`Lab::kill_agent`]).
    pub fn start_agent_on(&mut self, role: Role) -> anyhow::Result<()> {
        let agent =
            self.agents.iter().position(|a| a.host == role).with_context(|| format!("no agent on {role}"))?;
        self.start_agent(agent)
    }

    /// Instance names of the running agents.
    pub fn instances(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.instance.clone()).collect()
    }

    /// The instance of the client's agent, if it runs one.
    pub fn client_instance(&self) -> Option<String> {
        self.agents.iter().find(|a| a.host == Role::Client).map(|a| a.instance.clone())
    }

    /// The instances of the servers' agents.
    pub fn server_instances(&self) -> Vec<String> {
        self.agents.iter().filter(|a| matches!(a.host, Role::Server(_))).map(|a| a.instance.clone()).collect()
    }

    /// The client's addresses: its own first, then the
    /// [`Overrides::extra_client_addresses`] (10.10.1.10 on), all on its link.
    pub fn client_addresses(&self) -> Vec<Ipv4Addr> {
        let extra = (0..self.spec.overrides.extra_client_addresses.min(200))
            .map(|i| Ipv4Addr::new(10, 10, 1, 10 + i as u8));
        std::iter::once(CLIENT).chain(extra).collect()
    }

    /// The client host.
    pub fn client(&self) -> &Host {
        self.host(Role::Client)
    }

    /// The router's namespace (the direct path between client and servers).
    pub fn router(&self) -> &NetNs {
        self.router.as_ref().expect("the router lives as long as the lab")
    }

    /// Server host `i` (from 0: `server1`).
    pub fn server(&self, i: usize) -> &Host {
        self.host(Role::Server(i + 1))
    }

    /// What the lab was built with.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The LB's counters.
    pub fn lb_counters(&self) -> anyhow::Result<LbCounters> {
        self.lb.as_ref().expect("lb").counters(self.host(Role::Lb))
    }

    /// Starts `heels lab load` on the client; returns the child (stdout: one JSON report).
    pub fn spawn_load(&self, spec: &LoadSpec) -> anyhow::Result<Child> {
        self.spawn_load_with(spec, None)
    }

    fn spawn_load_with(&self, spec: &LoadSpec, cpu: Option<usize>) -> anyhow::Result<Child> {
        let host = self.client();
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = tools::pinned(cpu);
                command.arg(&self.heels);
                command
            }
            None => Command::new(&self.heels),
        };
        command
            .args(["lab", "load", "--json"])
            .args(["--target", &spec.target.to_string()])
            .args(["--mode", &format!("{:?}", spec.mode).to_lowercase()])
            .args(["--connections", &spec.connections.to_string()])
            .args(["--concurrency", &spec.concurrency.to_string()])
            .args(["--request", &spec.request.to_string()])
            .args(["--response", &spec.response.to_string()])
            .args(["--count", &spec.count.to_string()])
            .args(["--seconds", &spec.seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if spec.server_closes {
            command.arg("--server-closes");
        }
        if spec.mapped {
            command.arg("--mapped");
        }
        if !spec.sources.is_empty() {
            let sources: Vec<String> = spec.sources.iter().map(Ipv4Addr::to_string).collect();
            command.args(["--sources", &sources.join(",")]);
        }
        if let Some(path) = &spec.pause_file {
            command.arg("--pause-file").arg(path);
        }
        spawn_in(&host.netns, &host.cgroup, &mut command)
    }

    /// Runs `heels lab load` on the client to completion.
    pub fn load(&self, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
        let child = self.spawn_load(spec)?;
        finish_load(child)
    }

    /// Bytes and packets the client's interface sent and received.
    pub fn client_interface(&self) -> anyhow::Result<InterfaceCounters> {
        InterfaceCounters::read(&self.client().netns, "eth0")
    }

    /// The `heels` binary the lab runs.
    pub fn heels(&self) -> &Path {
        &self.heels
    }

    /// The lab's scratch directory (removed with the lab).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Spawns a command on host `role`, in its namespace and cgroup.
    pub fn spawn_on(&self, role: Role, command: &mut Command) -> anyhow::Result<Child> {
        let host = self.find_host(role).with_context(|| format!("no lab host {role}"))?;
        spawn_in(&host.netns, &host.cgroup, command)
    }

    /// Waits until a TCP socket listens on `port` on host `role`.
    pub fn wait_listening(&self, role: Role, port: u16, limit: Duration) -> anyhow::Result<()> {
        let host = self.find_host(role).with_context(|| format!("no lab host {role}"))?;
        let filter = format!("sport = :{port}");
        let listening = || {
            host.netns
                .exec("ss", &["-Hltn", &filter])
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
        };
        if !tools::wait_for(limit, listening) {
            bail!("nothing listens on port {port} of {role} after {} s", limit.as_secs_f64());
        }
        Ok(())
    }

    /// Caps what the LB can forward at `mbit` Mbit/s: an HTB on the
    /// router's port toward the LB. Everything the LB forwards, either
    /// way and whatever the LB kind (an XDP LB's transmit skips qdiscs),
    /// first arrives through that port.
    pub fn cap_lb(&self, mbit: u32) -> anyhow::Result<()> {
        let router = self.router();
        let rate = format!("{mbit}mbit");
        router.exec(
            "tc",
            &["qdisc", "replace", "dev", "to-lb", "root", "handle", "1:", "htb", "default", "10"],
        )?;
        router.exec(
            "tc",
            &[
                "class", "replace", "dev", "to-lb", "parent", "1:", "classid", "1:10", "htb", "rate", &rate,
                "ceil", &rate,
            ],
        )?;
        Ok(())
    }

    /// Removes the cap of [`Lab::cap_lb`].
    pub fn uncap_lb(&self) -> anyhow::Result<()> {
        self.router().exec("tc", &["qdisc", "del", "dev", "to-lb", "root"]).map(drop)
    }

    /// Runs `heels lab load` on the client, pinned to `cpu`, to completion.
    pub fn load_pinned(&self, spec: &LoadSpec, cpu: usize) -> anyhow::Result<LoadReport> {
        finish_load(self.spawn_load_pinned(spec, cpu)?)
    }

    /// Starts `heels lab load` on the client, pinned to `cpu`.
    pub fn spawn_load_pinned(&self, spec: &LoadSpec, cpu: usize) -> anyhow::Result<Child> {
        self.spawn_load_with(spec, Some(cpu))
    }

    /// The service as the client reaches it.
    pub fn service(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, VPORT)
    }

    /// Every VIP:vport the LB serves: [`Lab::service`], and the second VIP
    /// where the lab has one.
    pub fn services(&self) -> Vec<SocketAddrV4> {
        let second = self.spec.overrides.second_vip.then_some(SocketAddrV4::new(SECOND_VIP, VPORT));
        std::iter::once(self.service()).chain(second).collect()
    }
}

impl Host {
    /// A counter of the host's TCP stack (`nstat`), such as `TcpExtSyncookiesSent`.
    pub fn netstat(&self, name: &str) -> anyhow::Result<u64> {
        let output = self.netns.exec("nstat", &["-az", "--json", name])?;
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        value["kernel"][name].as_u64().with_context(|| format!("no counter {name}"))
    }
}

/// What `heels lab up` prints: the hosts and how to reach them.
pub fn up_banner(lab: &Lab) -> String {
    let service = lab.service();
    let mut out = format!("lab up: {} (namespaces {}-*)\n", lab.prefix, lab.prefix);
    for host in &lab.hosts {
        let agent = lab.agents.iter().any(|a| a.host == host.role);
        let _ = writeln!(
            out,
            "  {:<9} {:<12} {}",
            host.role,
            host.addr.to_string(),
            if agent { "heels agent" } else { "" }
        );
    }
    let _ = writeln!(out, "  service   {service} (the VIP; servers listen on port {})", lab.server_port());
    let _ = writeln!(
        out,
        "\nrun your own programs on a host (its namespace and cgroup):\n  \
         heels lab exec server1 -- python3 -m http.server {}   (with `heels lab up --bare`)\n  \
         heels lab exec client -- curl http://{}/\n\
         metrics of a host's agent:\n  heels lab exec client -- curl -s localhost:{METRICS_PORT}/metrics\n\
         what heels did:\n  heels stats --instance {}-client\n\
         Ctrl-C (SIGINT) or SIGTERM tears the lab down.",
        lab.server_port(),
        service.ip(),
        lab.prefix,
    );
    out
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.iter_mut().chain(self.agents.iter_mut().filter_map(|a| a.child.as_mut())) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for agent in &self.agents {
            let _ = heels_bpf::Instance::remove(&agent.instance);
            heels_agent::instance::remove_saved_state(&agent.instance);
        }
        self.lb = None;
        self.decap = None;
        self.hosts.clear();
        self.router = None;
        self.cgroup_root = None;
        // Whatever the steps above could not remove (a process that would
        // not die, a half-built host).
        sweep(&format!("{}-", self.prefix));
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}
