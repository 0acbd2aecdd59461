//! The lab's child processes: waiting for them within a deadline, for
//! their "ready" line, for their report.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::workload::LoadReport;

/// Waits until `child` prints "ready" on stdout (or fails).
pub(crate) fn wait_ready(child: &mut Child, what: &str) -> anyhow::Result<()> {
    let stdout = child.stdout.take().with_context(|| format!("{what}: no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().and_then(Result::ok).is_some_and(|l| l.trim() == "ready");
        let _ = tx.send(ready);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => {
            let _ = child.kill();
            let output = child.wait_with_output_stderr();
            bail!("{what} did not start: {output}")
        }
    }
}

pub(crate) trait StderrOf {
    fn wait_with_output_stderr(&mut self) -> String;
}

impl StderrOf for Child {
    fn wait_with_output_stderr(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text.trim().to_owned()
    }
}

/// How long a load client may run before [`finish_load`] gives up on it.
pub const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// Waits for a load child (at most [`LOAD_LIMIT`]) and parses its report.
pub fn finish_load(child: Child) -> anyhow::Result<LoadReport> {
    finish_load_within(child, LOAD_LIMIT)
}

/// Waits for a load child at most `limit`, then kills it and fails; parses
/// its report.
pub fn finish_load_within(child: Child, limit: Duration) -> anyhow::Result<LoadReport> {
    let output = output_within(child, limit).context("the load client")?;
    if !output.status.success() {
        bail!(
            "the load client failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing the load report")
}

/// Waits for a child at most `limit`, then kills it and fails; its output,
/// drained meanwhile so that it never blocks on a full pipe.
pub fn output_within(mut child: Child, limit: Duration) -> anyhow::Result<std::process::Output> {
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {} s: killed", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().map_err(|_| anyhow::anyhow!("reading the output"))?;
    let stderr = stderr.join().map_err(|_| anyhow::anyhow!("reading the errors"))?;
    Ok(std::process::Output { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn a_hung_load_client_is_killed_at_its_deadline() {
        let child =
            Command::new("sleep").arg("30").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        let error = format!("{:#}", finish_load_within(child, Duration::from_millis(300)).unwrap_err());
        assert!(error.contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10), "gave up at the deadline, not when sleep ended");
    }

    #[test]
    fn a_failed_load_client_says_why() {
        let child = Command::new("sh")
            .args(["-c", "echo broken >&2; exit 3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let error = finish_load(child).unwrap_err().to_string();
        assert!(error.contains("broken"), "{error}");
    }
}
