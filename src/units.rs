//! Sizes and durations as operators write them in the config file and in environment
//! definitions (a leaf module: both `config` and `environment` read values with it).

use std::time::Duration;

/// Parses a humantime duration (`90s`, `1h15m`); bare numbers are refused on purpose.
/// `1.5 MiB` style (binary units, one decimal; plain bytes below 1 KiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration ({e})"))
}

/// Parses a size: plain bytes or IEC units (`KiB`, `MiB`, `GiB`, `TiB`). SI units are refused
/// because Docker reads `10g` as GiB while most crates read it as 10^9.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use bytes or KiB/MiB/GiB/TiB, e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unit {other:?} in {s:?} is not accepted: use KiB, MiB, GiB or TiB (powers of 1024)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
