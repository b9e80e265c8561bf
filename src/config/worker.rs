//! The top-level keys about this worker itself: its id, its state directory, its idle default.

use std::path::PathBuf;

use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::RawConfig;
use crate::units::parse_duration;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

fn valid_worker_id(id: &str) -> Result<(), (String, &'static str)> {
    if id.is_empty() {
        return Err((
            "worker_id is empty".into(),
            "set worker_id to a name unique in your fleet, e.g. the host name",
        ));
    }
    if id.to_ascii_lowercase().starts_with("warp") {
        return Err((
            format!("worker_id {id:?} starts with \"warp\", which is reserved"),
            "choose an id that does not start with \"warp\"",
        ));
    }
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err((
            format!("worker_id {id:?} is invalid"),
            "use at most 128 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

pub(super) fn worker_id_of(ov: &Overrides, raw: &RawConfig, c: &mut Collector<'_>) -> String {
    match (&ov.worker_id, &raw.worker_id) {
        (Some(id), _) => {
            if let Err((p, fix)) = valid_worker_id(id) {
                c.at::<String>("--worker-id", None, p, fix);
            }
            id.clone()
        }
        (None, Some(s)) => {
            if let Err((p, fix)) = valid_worker_id(&s.value) {
                c.at("worker_id", Some(s), p, fix);
            }
            s.value.clone()
        }
        (None, None) => {
            c.at::<String>(
                "worker_id",
                None,
                "worker_id is required".into(),
                "add `worker_id: <name>` to the config file or pass --worker-id",
            );
            String::new()
        }
    }
}

pub(super) fn idle_on_complete_of(
    ov: &Overrides,
    raw: &RawConfig,
    c: &mut Collector<'_>,
) -> Option<String> {
    match (&ov.idle_on_complete, &raw.idle_on_complete) {
        (Some(v), _) => {
            if let Err(p) = parse_duration(v) {
                c.at::<String>("--idle-on-complete", None, p, "use a duration such as 10m");
            }
            Some(v.trim().to_string())
        }
        (None, Some(s)) => {
            if let Err(p) = parse_duration(&s.value) {
                c.at("idle_on_complete", Some(s), p, "use a duration such as 10m");
            }
            Some(s.value.trim().to_string())
        }
        (None, None) => None,
    }
}

pub(super) fn state_dir_of(ov: &Overrides, raw: &RawConfig, c: &mut Collector<'_>) -> PathBuf {
    match (&ov.state_dir, &raw.state_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => {
            if !s.value.starts_with('/') {
                c.at(
                    "state_dir",
                    Some(s),
                    format!("{:?} is not an absolute path", s.value),
                    "use an absolute path such as /var/lib/berth",
                );
            }
            PathBuf::from(&s.value)
        }
        (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{errors, with_key};

    #[test]
    fn worker_id_is_required() {
        let e = errors("cleanup: false\n", &with_key());
        assert_eq!(e[0].key, "worker_id");
        assert!(e[0].fix.contains("--worker-id"));
    }
}
