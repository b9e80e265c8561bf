//! Whether a task fits on this host: its CPU and memory reservation plus what running tasks
//! reserve, against what the host can give once the operator's `reserve` is held back, and
//! free disk against `min_free_disk`. The decision is pure; reading the host is separate.

use std::path::Path;

use crate::spec::policy::Resources;

/// What the host has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    pub cpus: f64,
    /// Memory in bytes.
    pub memory: u64,
}

impl Host {
    /// Reads CPU count and total memory (sysinfo; only memory is refreshed).
    pub fn read() -> Host {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let memory = sysinfo::System::new_with_specifics(
            sysinfo::RefreshKind::nothing()
                .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
        )
        .map(|s| s.total_memory())
        .unwrap_or(0);
        Host { cpus, memory }
    }
}

/// Free bytes for unprivileged users on the file system holding `path` (`None` if unknown).
pub fn free_disk(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `Ok` when `task` fits next to `running` on `host` after `reserve`; else the reason, worded
/// for the `insufficient resources: …` rejection.
pub fn fits(
    task: Resources,
    running: &[Resources],
    host: Host,
    reserve: Resources,
) -> Result<(), String> {
    if let Some(want) = task.memory {
        let cap = host.memory.saturating_sub(reserve.memory.unwrap_or(0));
        let used: u64 = running.iter().filter_map(|r| r.memory).sum();
        let free = cap.saturating_sub(used);
        if want > free {
            return Err(format!(
                "memory: the task reserves {}, {} of {} are free (host {}, reserve {})",
                gib(want),
                gib(free),
                gib(cap),
                gib(host.memory),
                gib(reserve.memory.unwrap_or(0))
            ));
        }
    }
    if let Some(want) = task.cpus {
        let cap = (host.cpus - reserve.cpus.unwrap_or(0.0)).max(0.0);
        let used: f64 = running.iter().filter_map(|r| r.cpus).sum();
        let free = (cap - used).max(0.0);
        if want > free + 1e-9 {
            return Err(format!(
                "cpus: the task reserves {want} CPUs, {free} of {cap} are free (host {}, reserve {})",
                host.cpus,
                reserve.cpus.unwrap_or(0.0)
            ));
        }
    }
    Ok(())
}

/// `Ok` when every path has at least `min_free` bytes free (unknown paths are skipped).
pub fn disk_ok(paths: &[(&str, Option<u64>)], min_free: u64) -> Result<(), String> {
    for (path, free) in paths {
        if let Some(free) = free
            && *free < min_free
        {
            return Err(format!(
                "disk: {} free under {path}, min_free_disk is {}",
                gib(*free),
                gib(min_free)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn r(cpus: Option<f64>, memory: Option<u64>) -> Resources {
        Resources { cpus, memory }
    }

    #[test]
    fn memory_and_cpus_add_up_against_host_minus_reserve() {
        let host = Host {
            cpus: 8.0,
            memory: 16 * G,
        };
        let reserve = r(Some(1.0), Some(2 * G));
        assert_eq!(fits(r(None, Some(14 * G)), &[], host, reserve), Ok(()));
        let e = fits(r(None, Some(14 * G)), &[r(None, Some(1))], host, reserve);
        assert!(
            e.as_ref()
                .is_err_and(|m| m.starts_with("memory:") && m.contains("14.0 GiB")),
            "{e:?}"
        );
        assert_eq!(
            fits(r(Some(3.0), None), &[r(Some(4.0), None)], host, reserve),
            Ok(())
        );
        let e = fits(r(Some(3.5), None), &[r(Some(4.0), None)], host, reserve);
        assert!(e.as_ref().is_err_and(|m| m.starts_with("cpus:")), "{e:?}");
        // Tasks without a reservation always fit.
        assert_eq!(
            fits(r(None, None), &[r(Some(99.0), Some(99 * G))], host, reserve),
            Ok(())
        );
    }

    #[test]
    fn disk_checks_every_known_path() {
        assert_eq!(disk_ok(&[("/a", Some(5 * G)), ("/b", None)], G), Ok(()));
        let e = disk_ok(&[("/a", Some(5 * G)), ("/b", Some(G / 2))], G);
        assert!(
            e.as_ref()
                .is_err_and(|m| m.contains("/b") && m.contains("min_free_disk")),
            "{e:?}"
        );
    }

    #[test]
    fn the_host_is_readable() {
        let h = Host::read();
        assert!(h.cpus >= 1.0 && h.memory > 0);
        assert!(free_disk(Path::new("/")).is_some());
    }
}
