//! `log.level` (or `--log-level`): a level or comma-separated filter directives.

use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::RawLog;

/// A level (`info`) or comma-separated directives (`info,berth=debug,hyper=warn`).
pub fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.trim().split_once('=') {
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
                    && level_ok(level)
            }
            None => level_ok(d.trim()),
        })
}

pub(super) fn log_level_of(ov: &Overrides, log: &RawLog, c: &mut Collector<'_>) -> String {
    let log_level = ov
        .log_level
        .clone()
        .or_else(|| log.level.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| "info".to_string());
    if !valid_log_filter(&log_level) {
        c.at(
            if ov.log_level.is_some() {
                "--log-level"
            } else {
                "log.level"
            },
            if ov.log_level.is_some() {
                None
            } else {
                log.level.as_ref()
            },
            format!("{log_level:?} is not a log level or filter"),
            "use error, warn, info, debug or trace (or a filter such as info,berth=debug)",
        );
    }
    log_level
}
