//! What a task's pod used, from the metrics API (`metrics.k8s.io`, served by metrics-server
//! where the cluster runs it): a CPU rate and the memory working set per container, refreshed
//! every metrics window (15 s by default). CPU time is the rate integrated over the time
//! between readings, peak memory the highest working set seen: approximations, at the window's
//! resolution, said so in docs/kubernetes.md. Read at most once a window per task, so usage
//! costs a few requests a minute.

use std::time::{Duration, Instant};

/// How often a task's pod metrics are read (metrics-server's default resolution).
pub const READ_EVERY: Duration = Duration::from_secs(15);

/// A Kubernetes quantity (`250m`, `12345n`, `1.5`, `512Mi`, `1G`) in whole units of `scale`
/// (1e9 for CPU in nanocores, 1 for bytes); `None` when it is not one.
pub fn quantity(q: &str, scale: f64) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    // Nanocores and bytes are whole numbers (and the float product of the factors is not).
    let v = (n * factor * scale).round();
    v.is_finite().then_some(v)
}

/// The pod's CPU rate (nanocores) and memory working set (bytes), summed over its containers,
/// from a PodMetrics object.
pub fn pod_usage(metrics: &serde_json::Value) -> Option<(f64, f64)> {
    let containers = metrics.get("containers")?.as_array()?;
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for c in containers {
        let u = c.get("usage")?;
        cpu += quantity(u.get("cpu")?.as_str()?, 1e9)?;
        memory += quantity(u.get("memory")?.as_str()?, 1.0)?;
    }
    Some((cpu, memory))
}

/// One task's readings so far.
#[derive(Debug, Clone, Copy)]
pub struct Integral {
    /// When the last reading was taken.
    pub at: Instant,
    /// CPU nanoseconds integrated so far.
    pub cpu_ns: f64,
    /// Highest working set seen.
    pub peak: f64,
    /// The last working set.
    pub memory: f64,
}

impl Integral {
    /// The first reading: the rate over one metrics window.
    pub fn first(at: Instant, cpu_nanocores: f64, memory: f64, window: Duration) -> Integral {
        Integral {
            at,
            cpu_ns: cpu_nanocores * window.as_secs_f64(),
            peak: memory,
            memory,
        }
    }

    /// A later reading: the rate over the time since the last.
    pub fn next(self, at: Instant, cpu_nanocores: f64, memory: f64) -> Integral {
        let dt = at.saturating_duration_since(self.at).as_secs_f64();
        Integral {
            at,
            cpu_ns: self.cpu_ns + cpu_nanocores * dt,
            peak: self.peak.max(memory),
            memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_every_form() {
        assert_eq!(quantity("250m", 1e9), Some(250_000_000.0));
        assert_eq!(quantity("12345n", 1e9), Some(12345.0));
        assert_eq!(quantity("2", 1e9), Some(2e9));
        assert_eq!(quantity("1.5", 1e9), Some(1.5e9));
        assert_eq!(quantity("512Mi", 1.0), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1234Ki", 1.0), Some(1234.0 * 1024.0));
        assert_eq!(quantity("1G", 1.0), Some(1e9));
        assert_eq!(quantity("x", 1.0), None);
        assert_eq!(quantity("1Qi", 1.0), None);
    }

    #[test]
    fn pod_usage_sums_the_containers() {
        let m = serde_json::json!({"containers": [
            {"name": "task", "usage": {"cpu": "500m", "memory": "100Mi"}},
            {"name": "logger", "usage": {"cpu": "10m", "memory": "10Mi"}},
        ], "window": "15s"});
        let (cpu, mem) = pod_usage(&m).unwrap_or_default();
        assert_eq!(cpu, 510_000_000.0);
        assert_eq!(mem, 110.0 * 1024.0 * 1024.0);
        assert_eq!(pod_usage(&serde_json::json!({})), None);
    }

    #[test]
    fn cpu_time_is_the_rate_integrated_and_memory_the_peak() {
        let t0 = Instant::now();
        let i = Integral::first(t0, 1e9, 100.0, Duration::from_secs(15));
        assert_eq!(i.cpu_ns, 15e9, "one core for one window");
        let i = i.next(t0 + Duration::from_secs(15), 0.5e9, 300.0);
        assert_eq!(i.cpu_ns, 15e9 + 7.5e9);
        let i = i.next(t0 + Duration::from_secs(30), 0.0, 50.0);
        assert_eq!((i.peak, i.memory), (300.0, 50.0));
    }
}
