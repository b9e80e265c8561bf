//! Condensing the engine's pull progress (one event per layer per chunk, hundreds per image)
//! into a few transcript lines: one every few seconds while layers download, then a summary.
//! Pure: the caller supplies the clock.

use std::collections::BTreeMap;
use std::time::Duration;

/// Least time between two progress lines.
pub const EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Clone, Copy)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

/// Running totals of one pull.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: BTreeMap<String, Layer>,
    last_line: Option<Duration>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl PullProgress {
    /// Takes one engine event: a layer id (absent for image-level messages), its status
    /// (`Downloading`, `Pull complete`, …) and byte counts.
    pub fn observe(
        &mut self,
        id: Option<&str>,
        status: &str,
        current: Option<i64>,
        total: Option<i64>,
    ) {
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            return;
        };
        // Image-level lines carry the tag or digest as their id ("Pulling from library/x").
        if status.starts_with("Pulling from") || status.starts_with("Digest") {
            return;
        }
        let l = self.layers.entry(id.to_string()).or_default();
        let bytes = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
        match status {
            // Late or repeated events never move a layer backwards.
            "Downloading" if !l.done => {
                if let Some(t) = bytes(total).filter(|t| *t > 0) {
                    l.total = t;
                }
                if let Some(c) = bytes(current) {
                    l.current = l.current.max(c);
                }
            }
            "Download complete" | "Verifying Checksum" => l.current = l.total,
            "Pull complete" | "Already exists" => {
                l.current = l.total;
                l.done = true;
            }
            _ => {}
        }
    }

    /// "2/5 layers done, 45.2 MiB of 120.0 MiB downloaded".
    pub fn summary(&self) -> String {
        let done = self.layers.values().filter(|l| l.done).count();
        let current: u64 = self.layers.values().map(|l| l.current).sum();
        let total: u64 = self.layers.values().map(|l| l.total).sum();
        let mut s = format!("{done}/{} layers done", self.layers.len());
        if total > 0 {
            s.push_str(&format!(", {} of {} downloaded", mib(current), mib(total)));
        }
        s
    }

    /// A progress line when one is due at `now` (time since the pull started): the first after
    /// [`EVERY`], then at most one per [`EVERY`], and only while something is still to do.
    pub fn line_if_due(&mut self, now: Duration) -> Option<String> {
        let due = match self.last_line {
            None => now >= EVERY,
            Some(t) => now.saturating_sub(t) >= EVERY,
        };
        let pending = self.layers.values().any(|l| !l.done);
        if !due || !pending {
            return None;
        }
        self.last_line = Some(now);
        Some(self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn hundreds_of_events_become_a_few_lines() {
        let mut p = PullProgress::default();
        p.observe(Some("latest"), "Pulling from library/app", None, None);
        for id in ["a", "b"] {
            p.observe(Some(id), "Pulling fs layer", None, None);
        }
        let mut lines = Vec::new();
        // 200 download events over 10 s.
        for i in 0..200u64 {
            let now = Duration::from_millis(i * 50);
            p.observe(
                Some("a"),
                "Downloading",
                Some((i * 1024 * 1024) as i64 / 2),
                Some(100 << 20),
            );
            p.observe(
                Some("b"),
                "Downloading",
                Some((i * 1024) as i64),
                Some(1 << 20),
            );
            if i == 100 {
                p.observe(Some("b"), "Download complete", None, None);
                p.observe(Some("b"), "Pull complete", None, None);
            }
            lines.extend(p.line_if_due(now));
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("0/2 layers done, "), "{lines:?}");
        assert!(lines[2].starts_with("1/2 layers done, "), "{lines:?}");
        assert!(lines[2].ends_with("of 101.0 MiB downloaded"), "{lines:?}");
        p.observe(Some("a"), "Pull complete", None, None);
        assert_eq!(p.line_if_due(s(60)), None, "nothing left to report");
        assert_eq!(
            p.summary(),
            "2/2 layers done, 101.0 MiB of 101.0 MiB downloaded"
        );
    }

    #[test]
    fn cached_layers_and_a_quick_pull_print_nothing_but_the_summary() {
        let mut p = PullProgress::default();
        p.observe(Some("a"), "Already exists", None, None);
        p.observe(Some("sha256:x"), "Digest: sha256:x", None, None);
        p.observe(None, "Status: Downloaded newer image", None, None);
        assert_eq!(p.line_if_due(s(1)), None);
        assert_eq!(p.summary(), "1/1 layers done");
    }
}
