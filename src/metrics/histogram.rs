//! The fixed-bucket histograms of the exposition (task duration, CPU time, peak memory).

use std::fmt::Write;

/// Upper bounds (seconds) of the task duration histogram: agent tasks run seconds to hours.
pub const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];

/// Upper bounds (bytes) of the peak-memory histogram: 16 MiB to 64 GiB.
pub const MEMORY_BUCKETS: [f64; 9] = [
    16777216.0,
    67108864.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    2147483648.0,
    4294967296.0,
    17179869184.0,
    68719476736.0,
];

/// Cumulative bucket counts (Prometheus `le` semantics), with the sum and count of values.
#[derive(Debug, Clone)]
pub(super) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&DURATION_BUCKETS)
    }
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    pub(super) fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    /// Its series: buckets, `+Inf`, sum, count (`labels` without braces, may be empty).
    pub(super) fn render(&self, o: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            o,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braced} {}\n{name}_count{braced} {}",
            self.count, self.sum, self.count
        );
    }
}
