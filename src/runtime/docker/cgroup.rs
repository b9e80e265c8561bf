//! A running container's CPU time, memory and network bytes read straight from the kernel: its
//! cgroup files (found through `/proc/<pid>/cgroup` and berth's own mount table) and its
//! network namespace's `/proc/<pid>/net/dev`. A few small file reads, so a task can be sampled
//! many times a second — the engine's statistics call takes tens of milliseconds and a task
//! shorter than one sampling interval of it reported nothing. Where the files are not
//! readable (berth in another mount or cgroup namespace, a remote engine) nothing is located
//! and the engine's statistics remain the only source.

use std::path::{Path, PathBuf};

use crate::runtime::UsageSample;

/// Where one container's usage is read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Files {
    /// cgroup v1: the `cpuacct` and `memory` controllers' directories.
    V1 { cpuacct: PathBuf, memory: PathBuf },
    /// cgroup v2: the unified directory.
    V2 { dir: PathBuf },
}

/// A located container: its cgroup files and its PID (for the network namespace's counters;
/// 0: the cgroup's first process at each reading).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Located {
    pub files: Files,
    pub pid: i64,
}

/// One line of `/proc/<pid>/cgroup`: the controllers and the path.
fn cgroup_lines(proc_cgroup: &str) -> impl Iterator<Item = (Vec<&str>, &str)> {
    proc_cgroup.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let controllers = controllers.split(',').filter(|c| !c.is_empty()).collect();
        Some((controllers, path))
    })
}

/// A cgroup mount of `/proc/self/mountinfo`: its root within the hierarchy, where it is
/// mounted, whether it is cgroup2, and its super options (v1: the controllers).
struct Mount<'a> {
    root: &'a str,
    point: &'a str,
    v2: bool,
    options: Vec<&'a str>,
}

fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        let head: Vec<&str> = head.split(' ').collect();
        let mut tail = tail.split(' ');
        let (fstype, _source, options) = (tail.next()?, tail.next()?, tail.next()?);
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => return None,
        };
        Some(Mount {
            root: head.get(3)?,
            point: head.get(4)?,
            v2,
            options: options.split(',').collect(),
        })
    })
}

/// `point` + `path` seen from a mount whose root is `root`; None when the path is outside it.
fn under(m: &Mount<'_>, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(m.root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    Some(Path::new(m.point).join(rel.trim_start_matches('/')))
}

/// Where a process's cgroup files are (pure): v1's `cpuacct` and `memory` controllers when
/// both are mounted, else the unified hierarchy.
pub(super) fn locate(proc_cgroup: &str, mountinfo: &str) -> Option<Files> {
    let v1_dir = |controller: &str| {
        let (_, path) = cgroup_lines(proc_cgroup).find(|(c, _)| c.contains(&controller))?;
        cgroup_mounts(mountinfo)
            .filter(|m| !m.v2 && m.options.contains(&controller))
            .find_map(|m| under(&m, path))
    };
    if let (Some(cpuacct), Some(memory)) = (v1_dir("cpuacct"), v1_dir("memory")) {
        return Some(Files::V1 { cpuacct, memory });
    }
    let (_, path) = cgroup_lines(proc_cgroup).find(|(c, _)| c.is_empty())?;
    let dir = cgroup_mounts(mountinfo)
        .filter(|m| m.v2)
        .find_map(|m| under(&m, path))?;
    Some(Files::V2 { dir })
}

/// Where the engine puts a container's cgroup within each hierarchy: the cgroupfs driver's
/// default parent, then the systemd driver's scope.
fn container_paths(id: &str) -> [String; 2] {
    [
        format!("/docker/{id}"),
        format!("/system.slice/docker-{id}.scope"),
    ]
}

/// The files of the cgroup at `path` (the same path in every hierarchy, as the engine makes
/// them), seen through the mounts (pure).
pub(super) fn locate_at(path: &str, mountinfo: &str) -> Option<Files> {
    let v1_dir = |controller: &str| {
        cgroup_mounts(mountinfo)
            .filter(|m| !m.v2 && m.options.contains(&controller))
            .find_map(|m| under(&m, path))
    };
    if let (Some(cpuacct), Some(memory)) = (v1_dir("cpuacct"), v1_dir("memory")) {
        return Some(Files::V1 { cpuacct, memory });
    }
    let dir = cgroup_mounts(mountinfo)
        .filter(|m| m.v2)
        .find_map(|m| under(&m, path))?;
    Some(Files::V2 { dir })
}

/// Locates a container's cgroup by its id alone: no engine call and no process needed, so it
/// can be read from the moment the engine makes the cgroup (during the start call) to the
/// moment it removes it. None where the engine puts cgroups elsewhere (a `cgroup-parent`).
pub(super) fn locate_id(id: &str) -> Option<Located> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    container_paths(id).iter().find_map(|path| {
        let located = Located {
            files: locate_at(path, &mountinfo)?,
            pid: 0,
        };
        read(&located).ok().map(|_| located)
    })
}

/// The first process of a cgroup (for its network namespace's counters), 0 when it has none.
fn first_pid(files: &Files) -> i64 {
    let dir = match files {
        Files::V1 { memory, .. } => memory,
        Files::V2 { dir } => dir,
    };
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// A number file (`cpuacct.usage`, `memory.peak`, …).
fn number(path: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"))
}

/// `usage_usec` of a v2 `cpu.stat`, in nanoseconds (pure).
pub(super) fn cpu_stat_ns(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us.saturating_mul(1000))
}

/// Received and sent bytes of every interface but loopback in a `/proc/<pid>/net/dev` (pure).
pub(super) fn net_dev_bytes(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        rx = rx.saturating_add(c.first().copied().unwrap_or(0));
        tx = tx.saturating_add(c.get(8).copied().unwrap_or(0));
    }
    (rx, tx)
}

/// One reading. Err when the cgroup is gone (the container ended) or unreadable.
pub(super) fn read(at: &Located) -> std::io::Result<UsageSample> {
    let (cpu_ns, memory, memory_max) = match &at.files {
        Files::V1 { cpuacct, memory } => (
            number(&cpuacct.join("cpuacct.usage"))?,
            number(&memory.join("memory.usage_in_bytes"))?,
            number(&memory.join("memory.max_usage_in_bytes")).ok(),
        ),
        Files::V2 { dir } => {
            let stat = std::fs::read_to_string(dir.join("cpu.stat"))?;
            let cpu = cpu_stat_ns(&stat).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no usage_usec")
            })?;
            (
                cpu,
                number(&dir.join("memory.current"))?,
                // Kernels before 5.19 have no memory.peak: the highest sample stands in.
                number(&dir.join("memory.peak")).ok(),
            )
        }
    };
    let pid = if at.pid > 0 {
        at.pid
    } else {
        first_pid(&at.files)
    };
    let (rx_bytes, tx_bytes) = (pid > 0)
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
        .flatten()
        .map(|t| net_dev_bytes(&t))
        .unwrap_or_default();
    Ok(UsageSample {
        cpu_ns,
        memory,
        memory_max,
        read_bytes: 0,
        write_bytes: 0,
        rx_bytes,
        tx_bytes,
    })
}

/// Locates the cgroup of the process `pid` as this process sees it; None when it cannot.
pub(super) fn locate_pid(pid: i64) -> Option<Located> {
    if pid <= 0 {
        return None;
    }
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let files = locate(&proc_cgroup, &mountinfo)?;
    let located = Located { files, pid };
    // Only a location that reads is worth keeping.
    read(&located).ok().map(|_| located)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_controllers_are_found_through_the_mount_table() {
        let cg = "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n0::/docker/abc\n";
        assert_eq!(
            locate(cg, HYBRID_MOUNTS),
            Some(Files::V1 {
                cpuacct: "/sys/fs/cgroup/cpuacct/docker/abc".into(),
                memory: "/sys/fs/cgroup/memory/docker/abc".into(),
            })
        );
        // Joint controllers (systemd's layout) and a systemd slice path.
        let mounts = "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                      26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cg = "5:cpu,cpuacct:/system.slice/docker-abc.scope\n3:memory:/system.slice/docker-abc.scope\n";
        assert_eq!(
            locate(cg, mounts),
            Some(Files::V1 {
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-abc.scope".into(),
                memory: "/sys/fs/cgroup/memory/system.slice/docker-abc.scope".into(),
            })
        );
    }

    #[test]
    fn the_unified_hierarchy_is_used_without_v1_controllers() {
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            locate("0::/system.slice/docker-abc.scope\n", mounts),
            Some(Files::V2 {
                dir: "/sys/fs/cgroup/system.slice/docker-abc.scope".into()
            })
        );
    }

    #[test]
    fn a_cgroup_outside_the_mounted_root_is_not_located() {
        // berth in a cgroup namespace sees only its own subtree mounted.
        let mounts = "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(locate("0::/docker/abc\n", mounts), None);
        assert_eq!(
            locate("0::/kubepods/pod1/docker/abc\n", mounts),
            Some(Files::V2 {
                dir: "/sys/fs/cgroup/docker/abc".into()
            })
        );
        // A sibling whose name merely starts with the root is outside it too.
        assert_eq!(locate("0::/kubepods/pod10/x\n", mounts), None);
        assert_eq!(locate("", HYBRID_MOUNTS), None);
        assert_eq!(locate("0::/docker/abc\n", ""), None);
    }

    #[test]
    fn a_container_is_located_by_its_engine_path_in_every_hierarchy() {
        let files = locate_at("/docker/abc", HYBRID_MOUNTS).unwrap();
        assert_eq!(
            files,
            Files::V1 {
                cpuacct: "/sys/fs/cgroup/cpuacct/docker/abc".into(),
                memory: "/sys/fs/cgroup/memory/docker/abc".into(),
            }
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate_at("/system.slice/docker-abc.scope", v2).unwrap(),
            Files::V2 {
                dir: "/sys/fs/cgroup/system.slice/docker-abc.scope".into()
            }
        );
        // berth in a cgroup namespace rooted elsewhere: the engine's path is outside it.
        let nested = "30 23 0:26 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(locate_at("/docker/abc", nested), None);
        assert_eq!(
            container_paths("abc"),
            [
                "/docker/abc".to_string(),
                "/system.slice/docker-abc.scope".into()
            ]
        );
    }

    #[test]
    fn cpu_stat_and_net_dev_are_parsed() {
        assert_eq!(
            cpu_stat_ns("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"),
            Some(1_500_000)
        );
        assert_eq!(cpu_stat_ns("user_usec 1\n"), None);
        let dev = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    4000      10    0    0    0     0          0         0      250       3    0    0    0     0       0          0\n";
        assert_eq!(net_dev_bytes(dev), (4000, 250));
        assert_eq!(net_dev_bytes(""), (0, 0));
    }

    #[test]
    fn this_process_can_be_located_and_read_where_cgroups_are_mounted() {
        // Whatever the machine's layout, a location found for ourselves reads.
        if let Some(at) = locate_pid(i64::from(std::process::id())) {
            let s = read(&at).unwrap();
            assert!(s.cpu_ns > 0 && s.memory > 0, "{s:?}");
        }
    }
}
