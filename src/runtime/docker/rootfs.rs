//! Minimal images built locally from a static busybox binary (`docker import` of an in-memory
//! root filesystem). No registry is needed: `berth dev --demo`, the integration tests and the
//! benchmarks use this to get an image on a machine that cannot pull.

use std::path::{Path, PathBuf};

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

/// Where Debian's `busybox-static` installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the image (enough for the demo, the tests and sidecar copies).
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "env", "tar", "ls", "mkdir", "head", "dd",
    "yes", "printf", "id", "kill", "trap", "seq", "wc", "tail", "tr", "grep", "rm", "cp", "mv",
];

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The busybox binary is missing or unreadable.
    #[error(
        "cannot read a static busybox at {path}: {source} (install Debian's busybox-static, or pass another path)"
    )]
    Busybox {
        /// Path tried.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Building the tar failed.
    #[error("cannot build the image tarball: {0}")]
    Tar(std::io::Error),
    /// The engine refused the import.
    #[error("docker import of {image} failed: {reason}")]
    Import {
        /// Image name.
        image: String,
        /// What the engine said.
        reason: String,
    },
}

/// An extra file placed in the image.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path inside the image.
    pub path: String,
    pub contents: Vec<u8>,
    /// Unix mode.
    pub mode: u32,
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let _ = h.set_path(path.trim_start_matches('/'));
    h
}

/// Appends one entry (header checksum set last, after every field).
fn append(
    b: &mut tar::Builder<Vec<u8>>,
    mut h: tar::Header,
    data: &[u8],
) -> Result<(), RootfsError> {
    h.set_cksum();
    b.append(&h, data).map_err(RootfsError::Tar)
}

fn file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), RootfsError> {
    append(
        b,
        header(path, data.len() as u64, mode, tar::EntryType::Regular),
        data,
    )
}

/// The tarball of a root filesystem: busybox with applet links, `/tmp`, `/workspace`, extras.
pub fn rootfs_tar(busybox: &[u8], extra: &[ExtraFile]) -> Result<Vec<u8>, RootfsError> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin", "tmp", "workspace", "etc", "proc", "sys", "dev"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        append(&mut b, header(dir, 0, mode, tar::EntryType::Directory), &[])?;
    }
    file(&mut b, "bin/busybox", busybox, 0o755)?;
    for applet in APPLETS {
        let mut h = header(&format!("bin/{applet}"), 0, 0o777, tar::EntryType::Symlink);
        h.set_link_name("busybox").map_err(RootfsError::Tar)?;
        append(&mut b, h, &[])?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    file(&mut b, "etc/passwd", passwd, 0o644)?;
    for f in extra {
        file(&mut b, &f.path, &f.contents, f.mode)?;
    }
    b.into_inner().map_err(RootfsError::Tar)
}

/// Imports a busybox image as `name:tag` (replacing an existing one) and returns its id.
pub async fn import_busybox_image(
    docker: &bollard::Docker,
    busybox: &Path,
    name: &str,
    tag: &str,
    extra: &[ExtraFile],
    labels: &[(&str, &str)],
) -> Result<String, RootfsError> {
    let bin = std::fs::read(busybox).map_err(|source| RootfsError::Busybox {
        path: busybox.to_path_buf(),
        source,
    })?;
    let tar = rootfs_tar(&bin, extra)?;
    let mut changes: Vec<String> = vec!["WORKDIR /workspace".into(), "ENV PATH=/bin".into()];
    changes.extend(labels.iter().map(|(k, v)| format!("LABEL {k}={v}")));
    let image = format!("{name}:{tag}");
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(name)
        .tag(tag)
        .changes(changes)
        .build();
    let mut stream = docker.create_image(
        Some(opts),
        Some(bollard::body_full(bytes::Bytes::from(tar))),
        None,
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(m) = info.error_detail.and_then(|d| d.message) {
                    return Err(RootfsError::Import { image, reason: m });
                }
            }
            Err(e) => {
                return Err(RootfsError::Import {
                    image,
                    reason: e.to_string(),
                });
            }
        }
    }
    let inspected = docker
        .inspect_image(&image)
        .await
        .map_err(|e| RootfsError::Import {
            image: image.clone(),
            reason: e.to_string(),
        })?;
    Ok(inspected.id.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_tar_holds_busybox_links_and_extras() {
        let tar = rootfs_tar(
            b"fake-busybox",
            &[ExtraFile {
                path: "/entrypoint.sh".into(),
                contents: b"#!/bin/sh\n".to_vec(),
                mode: 0o755,
            }],
        )
        .unwrap_or_default();
        let mut a = tar::Archive::new(tar.as_slice());
        let mut names = Vec::new();
        for e in a.entries().into_iter().flatten().flatten() {
            let path = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let link = e
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.display().to_string());
            names.push((path, link));
        }
        assert!(names.contains(&("bin/busybox".into(), None)));
        assert!(names.contains(&("bin/sh".into(), Some("busybox".into()))));
        assert!(names.contains(&("bin/tar".into(), Some("busybox".into()))));
        assert!(names.contains(&("entrypoint.sh".into(), None)));
    }
}
