//! Network namespaces, cgroups and processes of the lab.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use anyhow::{bail, Context};

/// Runs a command to completion; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `name` (fails if it exists).
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = NetNs { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, for setns.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace (nsenter keeps /sys and its
    /// bpffs as they are, unlike `ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let net = format!("--net={}", self.path().display());
        let mut all = vec![net.as_str(), "--", program];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// Writes a sysctl of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    /// Reads the number a sysctl of this namespace holds.
    pub fn sysctl_number(&self, key: &str) -> anyhow::Result<u64> {
        let output = self.exec("sysctl", &["-n", key])?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().with_context(|| format!("{key} = {text:?}: not a number"))
    }

    /// Runs `f` on a thread that has entered the namespace (attach, bind
    /// and netlink calls act in the caller thread's namespace).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    set_thread_netns(&path)?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in namespace panicked"))?
        })
    }
}

/// Moves the calling thread (only) into the network namespace bound at
/// `path`: attach, bind and netlink calls then act there.
pub fn set_thread_netns(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    heels_agent::afxdp::pair::set_netns(&file).context("setns")
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A cgroup v2 directory, removed on drop (once its processes are gone).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the directory (and its parents).
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A cgroup can be removed only when empty; the lab kills its
        // processes first and they leave asynchronously.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Spawns `program args` inside a network namespace and a cgroup.
pub fn spawn_in(netns: &NetNs, cgroup: &Cgroup, command: &mut Command) -> anyhow::Result<Child> {
    spawn_at(&netns.path(), cgroup.path(), command)
}

/// Spawns a command inside the network namespace pinned at `netns` and
/// the cgroup directory `cgroup`, neither of which it owns.
pub fn spawn_at(netns: &Path, cgroup: &Path, command: &mut Command) -> anyhow::Result<Child> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setns, write) on descriptors
    // that stay open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().context("spawning a lab process")?;
    drop((ns, procs));
    Ok(child)
}
