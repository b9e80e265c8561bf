//! This process's own resource use, for the `process_*` series every Prometheus exporter has:
//! resident and virtual memory, CPU seconds, open and maximum file descriptors, start time.
//! Read from `/proc/self` (Linux); the parsers are pure.

use serde::Serialize;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Since the epoch.
    pub start_time_seconds: f64,
}

/// `(utime + stime, starttime)` in clock ticks from `/proc/self/stat` (the command name may hold
/// spaces and parentheses: fields are counted after its last `)`).
pub fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, starttime 22 (1-based in proc(5)).
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some((at(14)? + at(15)?, at(22)?))
}

/// `(size, resident)` in pages from `/proc/self/statm`.
pub fn parse_statm(statm: &str) -> Option<(u64, u64)> {
    let mut f = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Reads this process's figures now (zeros for whatever cannot be read).
pub fn read() -> ProcessStats {
    use nix::unistd::{SysconfVar, sysconf};
    let tick = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        .max(1) as u64;
    let text = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (cpu_ticks, start_ticks) = parse_stat(&text("/proc/self/stat")).unwrap_or_default();
    let (size, resident) = parse_statm(&text("/proc/self/statm")).unwrap_or_default();
    let btime = parse_btime(&text("/proc/stat")).unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    ProcessStats {
        resident_memory_bytes: resident * page,
        virtual_memory_bytes: size * page,
        cpu_seconds: cpu_ticks as f64 / tick,
        open_fds,
        max_fds,
        start_time_seconds: btime as f64 + start_ticks as f64 / tick,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with a space and a ')' of its own.
        let stat = "4242 (berth (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 123456 1000000 3000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((325, 123456)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn statm_and_btime_parse() {
        assert_eq!(parse_statm("2500 800 300 1 0 600 0\n"), Some((2500, 800)));
        assert_eq!(parse_statm(""), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let p = read();
        assert!(p.resident_memory_bytes > 1 << 20, "{p:?}");
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes);
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        let now = chrono::Utc::now().timestamp() as f64;
        assert!(
            p.start_time_seconds > now - 3600.0 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
    }
}
