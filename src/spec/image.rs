//! Image references: validation, normalisation and the sidecar volume name (PROTOCOL.md §5).

use std::fmt;

/// Docker Hub's registry host in normalised references.
const DOCKER_HUB: &str = "docker.io";

/// A parsed, validated image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (with port), `docker.io` for Docker Hub.
    pub domain: String,
    /// Repository path, `library/ubuntu` for official images.
    pub path: String,
    /// Tag; `None` when a digest pins the image or no tag was given.
    pub tag: Option<String>,
    /// `sha256:…` digest when pinned.
    pub digest: Option<String>,
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// Empty string.
    #[error("image reference is empty")]
    Empty,
    /// Something in it does not follow the Docker reference grammar.
    #[error(
        "image reference {reference:?} is invalid: {why} (expected e.g. ubuntu:22.04 or registry.example.com/team/image@sha256:<64 hex>)"
    )]
    Invalid {
        /// The reference as given.
        reference: String,
        /// Which part is wrong.
        why: &'static str,
    },
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let bytes = c.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit()
        || !bytes[bytes.len() - 1].is_ascii_lowercase() && !bytes[bytes.len() - 1].is_ascii_digit()
    {
        return false;
    }
    let mut prev_sep = String::new();
    for ch in c.chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            prev_sep.clear();
        } else if matches!(ch, '.' | '_' | '-') {
            prev_sep.push(ch);
            let ok = prev_sep == "."
                || prev_sep == "_"
                || prev_sep == "__"
                || prev_sep.chars().all(|c| c == '-');
            if !ok {
                return false;
            }
        } else {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

fn is_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        Some((algo, hex)) => {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-_".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Longest repository name (registry host and path) Docker accepts.
const MAX_NAME_LEN: usize = 255;

impl ImageRef {
    /// Parses a reference the way Docker does (`ubuntu`, `ubuntu:22.04`, `ghcr.io/a/b@sha256:…`).
    pub fn parse(reference: &str) -> Result<Self, ImageRefError> {
        let invalid = |why| ImageRefError::Invalid {
            reference: reference.to_string(),
            why,
        };
        let s = reference.trim();
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if s != reference {
            return Err(invalid("it has leading or trailing white space"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(invalid("the digest after '@' is not <algorithm>:<hex>"));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                if !is_tag(t) {
                    return Err(invalid(
                        "the tag may only hold letters, digits, '_', '.' and '-' (max 128)",
                    ));
                }
                (n, Some(t.to_string()))
            }
            _ => (name_tag, None),
        };
        // Docker's limit (distribution's NameTotalLengthMax): a longer name can never be
        // pulled, so it is bad input, not a pull failure.
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(
                "the repository name is longer than 255 characters (Docker's limit)",
            ));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_domain(first) {
                    return Err(invalid("the registry host is not a valid host[:port]"));
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if path.is_empty() || !path.split('/').all(is_path_component) {
            return Err(invalid(
                "repository names are lowercase letters, digits and single separators ('.', '_', '__', '-')",
            ));
        }
        let (domain, path) = if domain == "index.docker.io" {
            (DOCKER_HUB.to_string(), path)
        } else {
            (domain, path)
        };
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The familiar repository name Docker shows (`ubuntu`, `warpdotdev/warp-agent`).
    pub fn familiar_repository(&self) -> String {
        if self.domain == DOCKER_HUB {
            match self.path.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    /// What to ask the engine for: repository plus the tag (defaulting to `latest`) or digest.
    pub fn pull_parts(&self) -> (String, String) {
        match (&self.digest, &self.tag) {
            (Some(d), _) => (self.repository(), d.clone()),
            (None, Some(t)) => (self.repository(), t.clone()),
            (None, None) => (self.repository(), "latest".to_string()),
        }
    }
}

impl fmt::Display for ImageRef {
    /// Fully normalised form (`docker.io/library/ubuntu:22.04`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        } else if self.digest.is_none() {
            write!(f, ":latest")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Name of the volume holding a sidecar image's filesystem: familiar repository with every
/// character outside `[A-Za-z0-9_.-]` replaced by `-`, then `-` and 12 hex chars of the digest
/// (`content_id` is a repo digest `name@sha256:…`, or an image id `sha256:…`).
pub fn sidecar_volume_name(image: &ImageRef, content_id: &str) -> String {
    let sanitized: String = image
        .familiar_repository()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let after_at = content_id.rsplit_once('@').map_or(content_id, |(_, d)| d);
    let hex = after_at.split_once(':').map_or(after_at, |(_, h)| h);
    let short: String = hex.chars().take(12).collect();
    format!("{sanitized}-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("ubuntu", "docker.io/library/ubuntu:latest", "ubuntu"),
            ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu"),
            (
                "docker.io/library/ubuntu:22.04",
                "docker.io/library/ubuntu:22.04",
                "ubuntu",
            ),
            (
                "index.docker.io/library/ubuntu",
                "docker.io/library/ubuntu:latest",
                "ubuntu",
            ),
            (
                "warpdotdev/warp-agent:latest",
                "docker.io/warpdotdev/warp-agent:latest",
                "warpdotdev/warp-agent",
            ),
            (
                "localhost:5000/ns/img:tag",
                "localhost:5000/ns/img:tag",
                "localhost:5000/ns/img",
            ),
            (
                "ghcr.io/a/b/c:v1.2-rc_3",
                "ghcr.io/a/b/c:v1.2-rc_3",
                "ghcr.io/a/b/c",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x"),
        ];
        for (input, full, familiar) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar_repository(), familiar, "{input}");
        }
    }

    #[test]
    fn digests_pin_the_pull() {
        let r = ImageRef::parse(&format!("ubuntu@{D}")).unwrap();
        assert_eq!(
            r.pull_parts(),
            ("docker.io/library/ubuntu".into(), D.into())
        );
        let r = ImageRef::parse(&format!("ubuntu:22.04@{D}")).unwrap();
        assert_eq!(r.pull_parts().1, D);
        let r = ImageRef::parse("ubuntu").unwrap();
        assert_eq!(r.pull_parts().1, "latest");
    }

    #[test]
    fn rejects_invalid_references_with_a_reason() {
        for bad in [
            "Ubuntu",
            "ubuntu:",
            "ubuntu:-x",
            "ubuntu@sha256:short",
            "a//b",
            " ubuntu",
            "ubuntu:tag with space",
            "example.com:port/x",
            "x/-y",
            "a...b",
        ] {
            let e = ImageRef::parse(bad);
            assert!(
                matches!(e, Err(ImageRefError::Invalid { .. })),
                "{bad:?} → {e:?}"
            );
        }
        assert_eq!(ImageRef::parse(""), Err(ImageRefError::Empty));
        // 300 characters: a valid shape, but past Docker's 255 (issue 8: failed as image_pull).
        let long = format!("ghcr.io/{}", "a".repeat(292));
        assert!(
            matches!(ImageRef::parse(&long), Err(ImageRefError::Invalid { why, .. }) if why.contains("255")),
            "{long}"
        );
        assert!(ImageRef::parse(&format!("ghcr.io/{}:tag", "a".repeat(247))).is_ok());
    }

    #[test]
    fn sidecar_volume_names_follow_the_contract() {
        let cases = [
            ("docker.io/library/ubuntu:22.04", "ubuntu-0123456789ab"),
            (
                "docker.io/warpdotdev/warp-agent:latest",
                "warpdotdev-warp-agent-0123456789ab",
            ),
            (
                "localhost:5000/ns/img:tag",
                "localhost-5000-ns-img-0123456789ab",
            ),
        ];
        for (img, want) in cases {
            let r = ImageRef::parse(img).unwrap();
            assert_eq!(sidecar_volume_name(&r, &format!("{img}@{D}")), want);
            // A locally built image has no repo digest: its image id is used.
            assert_eq!(sidecar_volume_name(&r, D), want);
        }
    }
}
