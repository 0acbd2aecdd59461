//! The labs on this machine: where each keeps its cgroups and files,
//! finding one (`heels lab exec`), removing what one left (`heels lab
//! clean`, a signal, a lab's drop).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns;

/// Where a lab's files go (agent configs, server logs): removed with the
/// lab, or by [`sweep`] after a lab that could not remove it.
pub(crate) fn work_dir_of(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{WORK_DIR_PREFIX}{prefix}"))
}

/// The name of every lab's work directory, before the lab's prefix.
pub(crate) const WORK_DIR_PREFIX: &str = "heels-lab-";

/// Removes whatever a lab with this prefix left: processes (through
/// `cgroup.kill`), heels instances, namespaces, cgroups, saved
/// configurations. Safe to call on a lab that is gone or half built; used
/// after a normal teardown, on SIGINT/SIGTERM, and by `heels lab clean`.
/// An empty prefix means every lab.
pub fn sweep(prefix: &str) {
    let root = Path::new(CGROUP_ROOT);
    let labs = subdirectories(root);
    // A lab's cgroup and work directory are named by its prefix alone
    // ("hl12x3"), its hosts and instances "hl12x3-client": match both
    // against "hl12x3-" or "hl12x".
    let lab_is_ours = |lab: &str| format!("{lab}-").starts_with(prefix);
    let ours = |p: &PathBuf| p.file_name().is_some_and(|n| lab_is_ours(&n.to_string_lossy()));
    for lab in labs.iter().filter(|p| ours(p)) {
        for host in std::fs::read_dir(lab).into_iter().flatten().flatten() {
            let _ = std::fs::write(host.path().join("cgroup.kill"), "1");
        }
    }
    let instances: Vec<String> = std::fs::read_dir(heels_bpf::tc::PIN_ROOT)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    for instance in instances.iter().filter(|i| i.starts_with("hl") && i.starts_with(prefix)) {
        let _ = heels_bpf::Instance::remove(instance);
        heels_agent::instance::remove_saved_state(instance);
    }
    // Saved state whose pins are gone already (an agent killed after the
    // lab removed its pins still wrote its report).
    for entry in std::fs::read_dir(heels_agent::instance::STATE_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("hl") && name.starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("hl") && name.starts_with(prefix) && name.contains('-') {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    // Work directories: a lab interrupted by a signal exits without its
    // destructor (see `clean_up_on_signal`), a killed one never runs it.
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(lab) = name.strip_prefix(WORK_DIR_PREFIX) else { continue };
        if lab.starts_with("hl") && lab_is_ours(lab) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    for lab in labs.iter().filter(|p| ours(p)) {
        for _ in 0..50 {
            let hosts = subdirectories(lab);
            let gone = hosts.iter().all(|h| std::fs::remove_dir(h).is_ok());
            if gone && std::fs::remove_dir(lab).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_dir(root);
}

/// The directories inside `dir` (none if it cannot be read).
fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default()
}

/// The names of the directories inside `dir`.
fn subdirectory_names(dir: &Path) -> Vec<String> {
    subdirectories(dir).iter().filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned())).collect()
}

/// Where every lab's cgroups live (one directory per lab, named by its prefix).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified/heels-lab";

/// `heels lab exec`: runs `command` on `host` of a running lab (in its
/// network namespace and cgroup, so heels treats it as that host's own
/// program); `lab` is the prefix `heels lab up` printed, needed only when
/// more than one lab runs. Returns the program's exit status.
pub fn exec(lab: Option<&str>, host: &str, command: &[String]) -> anyhow::Result<std::process::ExitStatus> {
    let labs = subdirectory_names(Path::new(CGROUP_ROOT));
    let prefix = match (lab, labs.as_slice()) {
        (Some(lab), _) if labs.iter().any(|l| l == lab) => lab.to_owned(),
        (Some(lab), _) => bail!("no lab {lab} (running: {})", labs.join(", ")),
        (None, [only]) => only.clone(),
        (None, []) => bail!("no lab is running (start one with `heels lab up`)"),
        (None, _) => bail!("{} labs are running ({}): say which with --lab", labs.len(), labs.join(", ")),
    };
    let cgroup = Path::new(CGROUP_ROOT).join(&prefix).join(host);
    let netns = Path::new("/var/run/netns").join(format!("{prefix}-{host}"));
    if !cgroup.is_dir() || !netns.exists() {
        let hosts = subdirectory_names(&Path::new(CGROUP_ROOT).join(&prefix));
        bail!("no host {host} in lab {prefix} (hosts: {})", hosts.join(", "));
    }
    let (program, args) = command.split_first().context("name a program to run")?;
    let mut command = Command::new(program);
    command.args(args);
    let mut child =
        netns::spawn_at(&netns, &cgroup, &mut command).with_context(|| format!("running {program}"))?;
    Ok(child.wait()?)
}

/// On SIGINT, SIGTERM or SIGHUP (its terminal went), removes every lab of
/// this process and exits: a lab must not outlive an interrupted `heels
/// lab` command.
pub fn clean_up_on_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            sweep(&format!("hl{}x", std::process::id() % 100_000));
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_the_work_directory_of_its_lab_only() {
        // Prefixes no lab makes (a lab's number is the pid modulo 100,000).
        let (swept, kept) = (work_dir_of("hl100000x1"), work_dir_of("hl100000x10"));
        for dir in [&swept, &kept] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("client.toml"), "instance = \"x\"\n").unwrap();
        }
        sweep("hl100000x1-");
        let (swept_gone, kept_there) = (!swept.exists(), kept.join("client.toml").exists());
        let _ = std::fs::remove_dir_all(&kept);
        assert!(swept_gone, "the swept lab's work directory stayed");
        assert!(kept_there, "another lab's work directory went");
    }
}
