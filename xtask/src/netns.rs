//! Hosts made of Linux network namespaces, joined at layer 2 by a bridge in the machine's own
//! namespace (which holds the subnet's first address, so the machine reaches every host).
//! A host's link going down is a partition: nothing reaches it and it reaches nothing.
//!
//! Everything here shells out to `ip` (iproute2), as root.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::infra::{self, say};

/// Namespaces, links and the bridge this module makes start with this, so a later run can
/// find and remove what an earlier one left behind.
pub const PREFIX: &str = "dispatch-";
const BRIDGE: &str = "dispatch-br";
/// Host-side ends of the veth pairs: `dsp-v0`, `dsp-v1`, ... (a link name has 15 bytes).
const VETH: &str = "dsp-v";

/// One host: a network namespace with one link (`eth0`) on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub namespace: String,
    pub addr: Ipv4Addr,
}

/// The hosts of one run; dropping it kills what still runs in them and removes them.
#[derive(Debug)]
pub struct Net {
    ip: PathBuf,
    /// Held while the hosts exist: one run at a time, since runs share the hosts' names.
    _lock: std::fs::File,
    hosts: Vec<Host>,
    /// This machine's address on the bridge.
    addr: Ipv4Addr,
}

/// The `ip` binary, or a clear error when this machine cannot build hosts.
fn ip_binary() -> Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "building hosts from network namespaces needs root (ip netns, veth pairs, a \
             bridge); run it as root, for example with sudo -E"
        );
    }
    let ip = match infra::which("ip", &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]) {
        Some(ip) => ip,
        None => {
            infra::apt_install(&["iproute2"])?;
            infra::which("ip", &["/usr/sbin/ip", "/sbin/ip"])
                .context("ip is still missing after installing iproute2")?
        }
    };
    Ok(ip)
}

fn run(ip: &PathBuf, args: &[&str]) -> Result<String> {
    let output = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Net {
    /// Removes what an earlier run left, then makes the bridge with `subnet.1/24`. Fails
    /// clearly when not root, when namespaces are unavailable, or when the subnet is in use.
    pub fn create(subnet: [u8; 3]) -> Result<Self> {
        let ip = ip_binary()?;
        let lock_path = std::env::temp_dir().join("dispatch-hosts.lock");
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another run already has hosts on this machine (`cargo xtask cluster` or the \
                 tests' faults across hosts); one at a time, since they share the hosts' names"
            );
        }
        run(&ip, &["netns", "list"])
            .context("network namespaces are unavailable on this machine")?;
        remove_leftovers(&ip);
        let gateway = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let in_use = run(&ip, &["-4", "-o", "addr", "show"])?;
        let net = format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if in_use.split_whitespace().any(|word| word.starts_with(&net)) {
            bail!("the subnet {net}0/24 is already on this machine; choose another with --subnet");
        }
        run(&ip, &["link", "add", BRIDGE, "type", "bridge"])
            .context("making the bridge (does this kernel have bridges and namespaces?)")?;
        let this = Net {
            ip,
            _lock: lock,
            hosts: Vec::new(),
            addr: gateway,
        };
        run(
            &this.ip,
            &["addr", "add", &format!("{gateway}/24"), "dev", BRIDGE],
        )?;
        run(&this.ip, &["link", "set", BRIDGE, "up"])?;
        Ok(this)
    }

    /// Adds a host named `name` at `addr` (on the bridge's subnet).
    pub fn add_host(&mut self, name: &str, addr: Ipv4Addr) -> Result<Host> {
        let namespace = format!("{PREFIX}{name}");
        let veth = format!("{VETH}{}", self.hosts.len());
        run(&self.ip, &["netns", "add", &namespace])?;
        let host = Host {
            name: name.to_owned(),
            namespace: namespace.clone(),
            addr,
        };
        // Recorded before it is wired, so that a failure below still removes it.
        self.hosts.push(host.clone());
        run(
            &self.ip,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ],
        )?;
        run(&self.ip, &["link", "set", &veth, "master", BRIDGE, "up"])?;
        let inside = |args: &[&str]| -> Result<String> {
            let mut all = vec!["-n", namespace.as_str()];
            all.extend_from_slice(args);
            run(&self.ip, &all)
        };
        inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// This machine's address on the bridge, which every host reaches.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The `ip` binary, to run programs inside a host (`ip netns exec NAMESPACE ...`).
    pub fn ip(&self) -> &PathBuf {
        &self.ip
    }

    /// SIGKILLs every process on `host`, as when the machine dies.
    pub fn kill_everything(&self, host: &Host) -> Result<usize> {
        let pids = run(&self.ip, &["netns", "pids", &host.namespace])?;
        let mut killed = 0;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// The process id of the one process on `host` whose program is `program` (as
    /// `/proc/PID/comm` names it, at most 15 bytes).
    pub fn process_id(&self, host: &Host, program: &str) -> Result<i32> {
        let pids = run(&self.ip, &["netns", "pids", &host.namespace])?;
        let comm: String = program.chars().take(15).collect();
        let matching: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect();
        let [pid] = matching[..] else {
            bail!(
                "expected one {program} on {}, found {}",
                host.name,
                matching.len()
            );
        };
        Ok(pid)
    }

    /// SIGKILLs the process on `host` whose program is `program`; returns its process id (the
    /// host stays up).
    pub fn kill_process(&self, host: &Host, program: &str) -> Result<i32> {
        let pid = self.process_id(host, program)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("killing {program} ({pid}) on {}", host.name))?;
        Ok(pid)
    }

    /// Cuts `host` off from every other host (its link down), or joins it again.
    pub fn set_connected(&self, host: &Host, connected: bool) -> Result<()> {
        let state = if connected { "up" } else { "down" };
        run(
            &self.ip,
            &["-n", &host.namespace, "link", "set", "eth0", state],
        )?;
        Ok(())
    }
}

/// Kills every process still running in `namespace`, then removes it.
fn remove_namespace(ip: &PathBuf, namespace: &str) {
    if let Ok(pids) = run(ip, &["netns", "pids", namespace]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = run(ip, &["netns", "del", namespace]);
}

/// Namespaces, the bridge and host-side links an earlier run left (it was killed).
fn remove_leftovers(ip: &PathBuf) {
    let Ok(list) = run(ip, &["netns", "list"]) else {
        return;
    };
    for namespace in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
    {
        say(format!("removing host {namespace} left by an earlier run"));
        remove_namespace(ip, namespace);
    }
    if let Ok(links) = run(ip, &["-o", "link", "show"]) {
        for link in links
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name))
            .filter(|name| *name == BRIDGE || name.starts_with(VETH))
        {
            let _ = run(ip, &["link", "del", link]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in self.hosts.drain(..).rev() {
            remove_namespace(&self.ip, &host.namespace);
        }
        let _ = run(&self.ip, &["link", "del", BRIDGE]);
        say("removed the hosts and their bridge");
    }
}
