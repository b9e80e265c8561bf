//! What one task used: CPU time, peak memory, disk and network bytes, from the engine's
//! container statistics sampled while it runs. Pure folding of samples; the sampler lives in
//! the supervised run.

use crate::backend::UsageSample;
use crate::protocol::Usage;

/// How often the kernel's counters are read during a task's first second.
pub const FIRST_SAMPLES_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// How often a running task's statistics are read through the engine (all counters).
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the cheap kernel reading (CPU, memory, network) is taken where it is available:
/// often enough that a task of a few hundred milliseconds reports what it used.
pub const QUICK_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Usage {
    /// Folds one sample in: counters only grow (a sample after the processes ended can read
    /// zero), the peak is the highest seen.
    pub fn fold(&mut self, s: &UsageSample) {
        // A reading of a container whose processes have not started or have ended is all
        // zeros: it says nothing, and is not counted as a sample.
        if s.cpu_ns == 0 && s.memory == 0 && s.memory_max.unwrap_or(0) == 0 {
            return;
        }
        self.cpu_ms = self.cpu_ms.max(s.cpu_ns / 1_000_000);
        self.peak_memory_bytes = self
            .peak_memory_bytes
            .max(s.memory_max.unwrap_or(0))
            .max(s.memory);
        self.read_bytes = self.read_bytes.max(s.read_bytes);
        self.write_bytes = self.write_bytes.max(s.write_bytes);
        self.network_rx_bytes = self.network_rx_bytes.max(s.rx_bytes);
        self.network_tx_bytes = self.network_tx_bytes.max(s.tx_bytes);
        self.samples += 1;
    }

    /// The transcript's closing `system` line.
    pub fn summary(&self) -> String {
        let b = crate::units::human_bytes;
        format!(
            "usage: cpu {:.2} s, peak memory {}, disk read {} / written {}, network rx {} / tx {}",
            self.cpu_ms as f64 / 1000.0,
            b(self.peak_memory_bytes),
            b(self.read_bytes),
            b(self.write_bytes),
            b(self.network_rx_bytes),
            b(self.network_tx_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fold_into_monotonic_totals_and_a_peak() {
        let mut u = Usage::default();
        let s = |cpu_ns, memory, memory_max, rx| UsageSample {
            cpu_ns,
            memory,
            memory_max,
            read_bytes: 10,
            write_bytes: 20,
            rx_bytes: rx,
            tx_bytes: rx / 2,
        };
        u.fold(&s(1_500_000_000, 100, None, 1000));
        u.fold(&s(2_000_000_000, 50, None, 3000));
        assert_eq!(u.cpu_ms, 2000);
        assert_eq!(u.peak_memory_bytes, 100, "the highest sample");
        u.fold(&s(2_500_000_000, 10, Some(4096), 3500));
        assert_eq!(
            u.peak_memory_bytes, 4096,
            "the cgroup's high-water mark wins"
        );
        // A late sample of an ended container reads zeros: ignored, nothing goes backwards.
        u.fold(&s(0, 0, None, 0));
        assert_eq!(
            (
                u.cpu_ms,
                u.peak_memory_bytes,
                u.network_rx_bytes,
                u.network_tx_bytes
            ),
            (2500, 4096, 3500, 1750)
        );
        assert_eq!(u.samples, 3, "an all-zero reading is not a sample");
        // A counter that reads lower later never lowers the total.
        u.fold(&s(1_000_000_000, 5, None, 100));
        assert_eq!((u.cpu_ms, u.network_rx_bytes, u.samples), (2500, 3500, 4));
        assert_eq!(
            u.summary(),
            "usage: cpu 2.50 s, peak memory 4.0 KiB, disk read 10 B / written 20 B, network rx 3.4 KiB / tx 1.7 KiB"
        );
    }
}
