//! Shared by the benchmarks: the locally built image and the API key.

/// A realistic key: short keys would be redacted out of ordinary words in the output.
pub const BENCH_KEY: &str = "berth-bench-key-7f3a9c1e5d2b8a64";
/// The benchmark image, imported from the host's static busybox.
pub const IMAGE: &str = "berth-bench-busybox:latest";

/// Imports the benchmark image from the host's static busybox (no registry needed).
pub async fn import_image() {
    let docker = bollard::Docker::connect_with_local_defaults().expect("Docker");
    let (name, tag) = IMAGE.split_once(':').unwrap_or((IMAGE, "latest"));
    berth::rootfs::import_busybox_image(
        &docker,
        std::path::Path::new(berth::rootfs::DEFAULT_BUSYBOX),
        name,
        tag,
        &[],
        &[("berth.test", "true")],
    )
    .await
    .expect("install Debian's busybox-static: the benchmark builds its image from /bin/busybox");
}

/// The embedded control plane on a free loopback port, accepting the bench key.
pub async fn control_plane() -> berth::devserver::ControlPlane {
    berth::devserver::ControlPlane::start(
        "127.0.0.1:0".parse().expect("loopback address"),
        berth::devserver::ServerOptions {
            api_key: BENCH_KEY.into(),
            ..berth::devserver::ServerOptions::default()
        },
    )
    .await
    .expect("control plane starts")
}
