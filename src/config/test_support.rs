//! Loading a file in tests, one way for every section's tests.

use std::path::Path;

use super::collector::{ConfigError, ConfigErrors};
use super::load::{Config, load_str};
use super::overrides::Overrides;
use crate::secret::Secret;

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn with_key() -> Overrides {
    Overrides {
        api_key: Some(Secret::new("k")),
        ..Overrides::default()
    }
}

pub(super) fn load_yaml(yaml: &str, ov: &Overrides) -> Result<Config, ConfigErrors> {
    load_str(Some(yaml), Some(Path::new("c.yaml")), ov, &no_env)
}

pub(super) fn errors(yaml: &str, ov: &Overrides) -> Vec<ConfigError> {
    match load_yaml(yaml, ov) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0,
    }
}

pub(super) fn one_error(yaml: &str) -> ConfigError {
    let e = errors(yaml, &with_key());
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}
