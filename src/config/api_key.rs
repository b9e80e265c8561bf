//! The control plane's API key: a flag or environment variable, else `--api-key-file`, else
//! `control_plane.api_key_file`, else the systemd credential `api-key`.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::RawControlPlane;
use crate::secret::Secret;

/// The key and where it came from; both empty when there is none (reported unless
/// `api_key_optional`) or it cannot be read (reported).
pub(super) fn api_key_of(
    cp: &RawControlPlane,
    ov: &Overrides,
    c: &mut Collector<'_>,
) -> (Secret, String) {
    let cred_file = ov.credentials_directory.as_ref().map(|d| d.join("api-key"));
    let key_file: Option<(PathBuf, &str, Option<&Spanned<String>>)> = if ov.api_key.is_some() {
        None
    } else if let Some(p) = &ov.api_key_file {
        Some((p.clone(), "--api-key-file", None))
    } else if let Some(s) = &cp.api_key_file {
        Some((
            PathBuf::from(&s.value),
            "control_plane.api_key_file",
            Some(s),
        ))
    } else {
        cred_file
            .filter(|p| p.exists())
            .map(|p| (p, "$CREDENTIALS_DIRECTORY/api-key", None))
    };
    match (&ov.api_key, key_file) {
        (Some(k), _) => (
            k.clone(),
            "--api-key / BERTH_API_KEY / WARP_API_KEY".to_string(),
        ),
        (None, Some((p, key, span))) => match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => {
                (Secret::new(s.trim()), format!("file {}", p.display()))
            }
            Ok(_) => {
                c.at(
                    key,
                    span,
                    format!("API key file {} is empty", p.display()),
                    "write the key into the file (one line)",
                );
                (Secret::new(""), String::new())
            }
            Err(e) => {
                c.at(
                    key,
                    span,
                    format!("cannot read API key file {}: {e}", p.display()),
                    "check the path and that the berth user may read it (mode 0600, owned by berth)",
                );
                (Secret::new(""), String::new())
            }
        },
        (None, None) if ov.api_key_optional => (Secret::new(""), String::new()),
        (None, None) => {
            c.at::<String>(
                "control_plane.api_key_file",
                None,
                "no API key configured".into(),
                "set control_plane.api_key_file, pass --api-key-file, set BERTH_API_KEY, or use systemd LoadCredential=api-key:…",
            );
            (Secret::new(""), String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::overrides::Overrides;
    use super::super::test_support::{errors, load_yaml};
    use crate::secret::Secret;

    #[test]
    fn api_key_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let flag_file = dir.path().join("flag-key");
        let cfg_file = dir.path().join("cfg-key");
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(&flag_file, "from-flag-file\n").unwrap();
        std::fs::write(&cfg_file, "from-config-file").unwrap();
        std::fs::write(creds.join("api-key"), "from-credential").unwrap();
        let yaml = format!(
            "worker_id: w\ncontrol_plane:\n  api_key_file: {}\n",
            cfg_file.display()
        );
        let key = |ov: &Overrides, yaml: &str| {
            load_yaml(yaml, ov)
                .map(|c| c.control_plane.api_key.expose().to_string())
                .unwrap()
        };
        let base = Overrides {
            credentials_directory: Some(creds.clone()),
            ..Overrides::default()
        };
        assert_eq!(key(&base, "worker_id: w\n"), "from-credential");
        assert_eq!(key(&base, &yaml), "from-config-file");
        let ov = Overrides {
            api_key_file: Some(flag_file.clone()),
            ..base.clone()
        };
        assert_eq!(key(&ov, &yaml), "from-flag-file");
        let ov = Overrides {
            api_key: Some(Secret::new("from-flag")),
            ..ov
        };
        assert_eq!(key(&ov, &yaml), "from-flag");
    }

    #[test]
    fn unreadable_key_file_is_a_clear_error() {
        let yaml = "worker_id: w\ncontrol_plane:\n  api_key_file: /nonexistent/key\n";
        let e = errors(yaml, &Overrides::default());
        assert_eq!(e[0].key, "control_plane.api_key_file");
        assert_eq!(e[0].location.as_ref().map(|l| l.1), Some(3));
        assert!(e[0].problem.contains("/nonexistent/key"));
    }
}
