//! The stock tools the bench and the lab tests run, as a user would run
//! them (Debian's iperf3, sockperf, wrk, nginx, redis, and Python's own
//! HTTP server), on lab
//! hosts, pinned to fixed CPUs: each server on [`SERVER_CPU`], each client
//! on [`CLIENT_CPU`]. Parsing is separate from running, and tested on the
//! tools' real output.

use std::net::SocketAddrV4;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Lab, Role};

/// The CPU every lab server process runs on.
pub const SERVER_CPU: usize = 1;
/// The CPU every lab client process runs on.
pub const CLIENT_CPU: usize = 0;

/// A server process on a lab host, killed when dropped.
#[derive(Debug)]
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What runs a server on the service port of a lab's server hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `iperf3 -s` (bulk throughput).
    Iperf3,
    /// `sockperf server --tcp` (latency).
    Sockperf,
    /// Python's `http.server`, HTTP/1.1 with keep-alive (wrk).
    Http,
    /// nginx on `[::]` (dual stack, as its default site listens), closing
    /// each connection after its response (`keepalive_timeout 0`): the
    /// server closes first and keeps the TIME_WAIT.
    Nginx,
    /// `redis-server`, no persistence.
    Redis,
    /// The lab's own server (`heels lab serve`: every byte checked).
    Lab,
}

/// nginx's configuration for the lab server `id`: everything it writes
/// (pid, logs, temporary files) under `dir`, one process, as root.
fn nginx_config(dir: &std::path::Path, id: usize, port: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\n\
         pid {dir}/nginx-{id}.pid;\nerror_log {dir}/nginx-{id}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 0;\n\
         \x20 client_body_temp_path {dir}/nginx-{id}-body;\n  proxy_temp_path {dir}/nginx-{id}-proxy;\n\
         \x20 fastcgi_temp_path {dir}/nginx-{id}-fastcgi;\n  uwsgi_temp_path {dir}/nginx-{id}-uwsgi;\n\
         \x20 scgi_temp_path {dir}/nginx-{id}-scgi;\n\
         \x20 server {{ listen [::]:{port} ipv6only=off; location / {{ return 200 \"heels lab\\n\"; }} }}\n}}\n"
    )
}

/// Starts `kind` on the service port of every server host of `lab`, and
/// waits until each listens.
pub fn start_servers(lab: &Lab, kind: ServerKind) -> anyhow::Result<Vec<Server>> {
    let port = lab.server_port().to_string();
    if kind == ServerKind::Http {
        // What `GET /` serves: a small page, as a health check would fetch.
        std::fs::write(lab.work_dir().join("index.html"), "<!doctype html><title>heels lab</title>\n")?;
    }
    let mut servers = Vec::new();
    for i in 0..lab.spec().servers {
        let mut command = pinned(SERVER_CPU);
        match kind {
            ServerKind::Iperf3 => command.args(["iperf3", "-s", "-p", &port]),
            // SO_REUSEADDR: the port may still hold TIME_WAITs of the last tool.
            ServerKind::Sockperf => {
                command.args(["sockperf", "server", "--tcp", "--uc-reuseaddr", "-i", "0.0.0.0", "-p", &port])
            }
            ServerKind::Http => command.args([
                "python3",
                "-c",
                // The standard library's server, speaking HTTP/1.1 so that
                // wrk's connections stay open between requests, with
                // TCP_NODELAY (it writes headers and body apart, which
                // Nagle and delayed ACKs turn into 40 ms a request).
                "import http.server as h, sys\n\
                 h.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'\n\
                 h.SimpleHTTPRequestHandler.disable_nagle_algorithm = True\n\
                 h.SimpleHTTPRequestHandler.log_message = lambda *a: None\n\
                 h.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), h.SimpleHTTPRequestHandler).serve_forever()",
                &port,
            ]),
            ServerKind::Nginx => {
                let config = lab.work_dir().join(format!("nginx-{}.conf", i + 1));
                std::fs::write(&config, nginx_config(lab.work_dir(), i + 1, lab.server_port()))?;
                let error_log = lab.work_dir().join(format!("nginx-{}-error.log", i + 1));
                // -e: the log of the start itself, before the configuration is read.
                command.arg("nginx").arg("-e").arg(error_log).arg("-c").arg(config)
            }
            ServerKind::Redis => command.args([
                "redis-server",
                "--port",
                &port,
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
            ServerKind::Lab => command
                .arg(lab.heels())
                .args(["lab", "serve", "--port", &port, "--id", &(i + 1).to_string()]),
        };
        let role = Role::Server(i + 1);
        let log_path = lab.work_dir().join(format!("{kind:?}-{role}.log").to_lowercase());
        let log = std::fs::File::create(&log_path)?;
        command.current_dir(lab.work_dir()).stdout(log.try_clone()?).stderr(log);
        servers.push(Server(lab.spawn_on(role, &mut command)?));
        if let Err(e) = lab.wait_listening(role, lab.server_port(), Duration::from_secs(10)) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("{kind:?} on {role}: {e}: {}", log.trim());
        }
    }
    Ok(servers)
}

/// `taskset -c CPU` (and what follows).
pub fn pinned(cpu: usize) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string()]);
    command
}

/// Runs a client tool on the lab's client host, pinned, for at most
/// `limit`; its output (it must succeed).
fn client(lab: &Lab, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
    let mut command = pinned(CLIENT_CPU);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = lab.spawn_on(Role::Client, &mut command)?;
    let output = super::output_within(child, limit).with_context(|| args[0].to_owned())?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// Slack on top of a tool's own duration before it is killed.
const SLACK: Duration = Duration::from_secs(20);

/// iperf3 from the client to `target` for `seconds` with `streams`
/// parallel connections: received Gbit/s.
pub fn iperf3(lab: &Lab, target: SocketAddrV4, streams: usize, seconds: f64) -> anyhow::Result<f64> {
    let (host, port, time, parallel) =
        (target.ip().to_string(), target.port().to_string(), format!("{seconds}"), streams.to_string());
    let args = ["iperf3", "-c", &host, "-p", &port, "-t", &time, "-P", &parallel, "-J"];
    let output = client(lab, &args, Duration::from_secs_f64(seconds) + SLACK)?;
    parse_iperf3(&String::from_utf8_lossy(&output.stdout))
}

/// Received bits per second of an `iperf3 -J` report, in Gbit/s.
pub fn parse_iperf3(json: &str) -> anyhow::Result<f64> {
    let report: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no sum_received")?;
    Ok(bps / 1e9)
}

/// Latency percentiles in microseconds, and how many samples made them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Samples.
    pub samples: u64,
}

/// sockperf ping-pong (one TCP connection, one message in flight) of
/// `size`-byte messages for `seconds`: round-trip percentiles.
pub fn sockperf(lab: &Lab, target: SocketAddrV4, size: usize, seconds: f64) -> anyhow::Result<Percentiles> {
    let (host, port, time, size) = (
        target.ip().to_string(),
        target.port().to_string(),
        format!("{}", seconds.ceil() as u64),
        size.to_string(),
    );
    let args =
        ["sockperf", "ping-pong", "--tcp", "-i", &host, "-p", &port, "-m", &size, "-t", &time, "--full-rtt"];
    let output = client(lab, &args, Duration::from_secs_f64(seconds) + SLACK)?;
    parse_sockperf(&String::from_utf8_lossy(&output.stdout))
}

/// The percentiles of sockperf's summary.
pub fn parse_sockperf(text: &str) -> anyhow::Result<Percentiles> {
    let value = |label: &str| -> anyhow::Result<f64> {
        let line =
            text.lines().find(|l| l.contains(label)).with_context(|| format!("sockperf: no {label:?}"))?;
        let number = line.rsplit('=').next().unwrap_or("").trim();
        number.parse().with_context(|| format!("sockperf: {line:?}"))
    };
    let samples = text
        .lines()
        .find_map(|l| l.split("Total ").nth(1)?.split_whitespace().next()?.parse().ok())
        .context("sockperf: no observation count")?;
    Ok(Percentiles {
        p50: value("percentile 50.000")?,
        p99: value("percentile 99.000")?,
        p999: value("percentile 99.900")?,
        samples,
    })
}

/// wrk against `http://target/` for `seconds` with `connections` open at
/// once: requests per second. `close`: every request on a new connection
/// (`Connection: close`; the server closes first).
pub fn wrk(
    lab: &Lab,
    target: SocketAddrV4,
    connections: usize,
    seconds: f64,
    close: bool,
) -> anyhow::Result<f64> {
    let (url, conns, time) =
        (format!("http://{target}/"), connections.to_string(), format!("{}s", seconds.ceil() as u64));
    let mut args = vec!["wrk", "-t", "1", "-c", &conns, "-d", &time];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let output = client(lab, &args, Duration::from_secs_f64(seconds) + SLACK)?;
    parse_wrk(&String::from_utf8_lossy(&output.stdout), close)
}

/// `redis-benchmark` against `target`: `requests` PINGs from `clients`
/// connections, each request on a new connection unless `keep_alive`
/// (`-k 0`: the client closes first). Requests per second.
pub fn redis_benchmark(
    lab: &Lab,
    target: SocketAddrV4,
    clients: usize,
    requests: usize,
    keep_alive: bool,
) -> anyhow::Result<f64> {
    let (host, port, clients, requests) =
        (target.ip().to_string(), target.port().to_string(), clients.to_string(), requests.to_string());
    let keep_alive = if keep_alive { "1" } else { "0" };
    let args = [
        "redis-benchmark",
        "-h",
        &host,
        "-p",
        &port,
        "-c",
        &clients,
        "-n",
        &requests,
        "-k",
        keep_alive,
        "-t",
        "ping_inline",
        "--csv",
    ];
    let output = client(lab, &args, SLACK + SLACK)?;
    parse_redis_benchmark(&String::from_utf8_lossy(&output.stdout))
}

/// Requests per second of `redis-benchmark --csv` (its one test).
pub fn parse_redis_benchmark(csv: &str) -> anyhow::Result<f64> {
    let row = csv
        .lines()
        .find(|l| l.starts_with("\"PING_INLINE\""))
        .context("redis-benchmark: no PING_INLINE row")?;
    let rps = row.split(',').nth(1).context("redis-benchmark: no rps column")?;
    rps.trim_matches('"').parse().with_context(|| format!("redis-benchmark: {row:?}"))
}

/// Requests per second from wrk's report; an error if a request failed or
/// answered other than 2xx/3xx (a figure made of errors is no figure).
/// With `close`, wrk counts each server's close as a read error, one per
/// request at most: those are the protocol working, not failures.
pub fn parse_wrk(text: &str, close: bool) -> anyhow::Result<f64> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk: {}", line.trim());
    }
    let requests: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .context("wrk: no request count")?;
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        let count = |what: &str| -> u64 {
            line.split(',')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("Socket errors:")
                        .trim()
                        .strip_prefix(what)?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(u64::MAX)
        };
        let (connect, read, write, timeout) =
            (count("connect"), count("read"), count("write"), count("timeout"));
        if connect + write + timeout > 0 || !close || read > requests {
            bail!("wrk: {} ({requests} requests)", line.trim());
        }
    }
    let line = text.lines().find(|l| l.starts_with("Requests/sec:")).context("wrk: no Requests/sec")?;
    line.trim_start_matches("Requests/sec:").trim().parse().with_context(|| format!("wrk: {line:?}"))
}

/// Waits until `check` is true, at most `limit`.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iperf3 -c 10.10.100.1 -p 8080 -t 1 -J` through the lab, abridged.
    const IPERF3: &str = r#"{"start": {}, "intervals": [],
        "end": {"sum_sent": {"bits_per_second": 12911651421.3},
                "sum_received": {"bits_per_second": 12893514210.9}}}"#;

    /// wrk against Python's HTTP server with `Connection: close`.
    const WRK_CLOSE: &str = "Running 2s test @ http://127.0.0.1:18081/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.42ms    0.91ms  11.97ms   74.62%
    Req/Sec     1.41k   192.35     1.79k    60.00%
  2819 requests in 2.00s, 514.80KB read
  Socket errors: connect 0, read 2818, write 0, timeout 0
Requests/sec:   1409.36
Transfer/sec:    257.37KB
";

    /// The same with keep-alive.
    const WRK_OPEN: &str = "Running 2s test @ http://127.0.0.1:18081/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.56ms    0.96ms  18.98ms   93.29%
    Req/Sec     2.65k   310.38     3.32k    76.19%
  5544 requests in 2.10s, 0.99MB read
Requests/sec:   2639.64
Transfer/sec:    482.21KB
";

    /// `redis-benchmark -c 4 -n 2000 -k 0 -t ping_inline --csv`.
    const REDIS_BENCHMARK: &str =
        "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"PING_INLINE\",\"7490.64\",\"0.380\",\"0.016\",\"0.199\",\"1.327\",\"4.199\",\"4.607\"
";

    #[test]
    fn parses_redis_benchmark_and_refuses_a_report_without_its_test() {
        assert_eq!(parse_redis_benchmark(REDIS_BENCHMARK).unwrap(), 7490.64);
        let header_only = REDIS_BENCHMARK.lines().next().unwrap();
        assert!(parse_redis_benchmark(header_only).unwrap_err().to_string().contains("no PING_INLINE"));
        let garbled = REDIS_BENCHMARK.replace("7490.64", "many");
        assert!(parse_redis_benchmark(&garbled).is_err());
    }

    #[test]
    fn nginx_config_keeps_everything_under_the_work_directory() {
        let config = nginx_config(std::path::Path::new("/w"), 2, 8080);
        assert!(config.contains("listen [::]:8080 ipv6only=off;"), "{config}");
        assert!(config.contains("keepalive_timeout 0;"), "{config}");
        let paths: Vec<&str> =
            config.split_whitespace().filter(|w| w.starts_with('/') && w.len() > 1).collect();
        assert_eq!(paths.len(), 7, "{config}");
        for path in paths {
            assert!(path.starts_with("/w/nginx-2"), "a path outside the work directory: {path}");
        }
    }

    #[test]
    fn parses_wrk_and_refuses_figures_made_of_errors() {
        assert_eq!(parse_wrk(WRK_OPEN, false).unwrap(), 2639.64);
        // The server's closes are read errors to wrk: fine with Connection: close only.
        assert_eq!(parse_wrk(WRK_CLOSE, true).unwrap(), 1409.36);
        assert!(parse_wrk(WRK_CLOSE, false).unwrap_err().to_string().contains("read 2818"));
        let timeouts = WRK_CLOSE.replace("timeout 0", "timeout 3");
        assert!(parse_wrk(&timeouts, true).is_err());
        let non_2xx = WRK_OPEN.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse_wrk(&non_2xx, false).unwrap_err().to_string().contains("Non-2xx"));
    }

    #[test]
    fn parses_iperf3() {
        assert!((parse_iperf3(IPERF3).unwrap() - 12.8935).abs() < 1e-3);
        let error = parse_iperf3(r#"{"start": {}, "error": "unable to connect to server"}"#).unwrap_err();
        assert!(error.to_string().contains("unable to connect"), "{error}");
    }
}
