//! What the programs xtask runs cost in CPU: every process descended from this one (the
//! services, the simulator, NATS) or from the daemons it started (PostgreSQL and its
//! backends), grouped by program, between two snapshots.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Every descendant's CPU time at one moment.
pub struct Snapshot {
    at: Instant,
    /// Process id to (program, CPU seconds so far).
    processes: HashMap<u32, (String, f64)>,
}

impl Snapshot {
    /// Every descendant of this process and of `roots` (which count too).
    pub fn take(roots: &[u32]) -> Self {
        let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut found = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, cpu)) = stat(pid) {
                parents.entry(ppid).or_default().push(pid);
                found.insert(pid, cpu);
            }
        }
        let mut processes = HashMap::new();
        for &root in roots {
            if let Some(&cpu) = found.get(&root) {
                processes.insert(root, (program(root), cpu));
            }
        }
        let mut queue: Vec<u32> = std::iter::once(std::process::id())
            .chain(roots.iter().copied())
            .collect();
        while let Some(pid) = queue.pop() {
            for &child in parents.get(&pid).into_iter().flatten() {
                processes.insert(child, (program(child), found[&child]));
                queue.push(child);
            }
        }
        Self {
            at: Instant::now(),
            processes,
        }
    }

    /// Each program's CPU between `earlier` and this snapshot, as a share of one core (1.0 is
    /// a core busy all the time). A process that started meanwhile counts from zero; one that
    /// ended meanwhile is missing.
    pub fn shares_since(&self, earlier: &Snapshot) -> BTreeMap<String, f64> {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let mut shares = BTreeMap::new();
        for (pid, (name, cpu)) in &self.processes {
            let before = earlier
                .processes
                .get(pid)
                .filter(|(was, _)| was == name)
                .map_or(0.0, |(_, c)| *c);
            *shares.entry(name.clone()).or_insert(0.0) += (cpu - before).max(0.0) / wall;
        }
        shares
    }
}

/// A process's parent and CPU seconds: from `/proc/PID/stat`, after the command name (in
/// parentheses, may hold spaces): the parent is the 2nd field, utime and stime the 12th and
/// 13th, in ticks of 1/100 s.
fn stat(pid: u32) -> Option<(u32, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks as f64 / 100.0))
}

/// The program a process runs: its executable's file name (the command name is cut at 15
/// characters).
fn program(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .or_else(|| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_shows_as_a_share_of_a_core() {
        let before = Snapshot::take(&[]);
        // A child that spins until it is killed, after it has used a fifth of a second.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let spent = loop {
            let spent = stat(child.id()).map_or(0.0, |(_, cpu)| cpu);
            if spent >= 0.2 || Instant::now() > deadline {
                break spent;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let after = Snapshot::take(&[]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(spent >= 0.2, "the child spun for {spent} s");
        let shares = after.shares_since(&before);
        let sh = shares
            .get("dash")
            .or(shares.get("bash"))
            .or(shares.get("sh"));
        assert!(
            sh.is_some_and(|s| *s > 0.0),
            "no share for the shell: {shares:?}"
        );
    }
}
