//! Shared by the benchmarks: the locally built image and the API key.

/// A realistic key: short keys would be redacted out of ordinary words in the output.
pub const BENCH_KEY: &str = "berth-bench-key-7f3a9c1e5d2b8a64";
/// The benchmark image, imported from the host's static busybox.
pub const IMAGE: &str = "berth-bench-busybox:latest";

/// A count from the environment (`BERTH_BENCH_*`), else `d`.
#[allow(dead_code)] // not every benchmark takes counts
pub fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Imports the benchmark image from the host's static busybox (no registry needed).
pub async fn import_image() {
    let docker = bollard::Docker::connect_with_local_defaults().expect("Docker");
    let (name, tag) = IMAGE.split_once(':').unwrap_or((IMAGE, "latest"));
    berth::runtime::docker::rootfs::import_busybox_image(
        &docker,
        std::path::Path::new(berth::runtime::docker::rootfs::DEFAULT_BUSYBOX),
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

/// What one benchmark prints, also kept for `docs/benchmarks.md`.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
}

impl Report {
    /// Prints a line and keeps it.
    pub fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("{s}");
        self.lines.push(s);
    }

    /// Replaces this benchmark's section of `docs/benchmarks.md` (between its markers) with
    /// what was printed, under the facts of the machine it ran on.
    pub fn publish(&self, name: &str, command: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let (start, end) = (
            format!("<!-- bench:{name} -->"),
            format!("<!-- /bench:{name} -->"),
        );
        let section = format!(
            "{start}\n## `{command}`\n\n{}\n\n```\n{}\n```\n{end}",
            machine_facts(),
            self.lines.join("\n").trim()
        );
        let body = match (old.find(&start), old.find(&end)) {
            (Some(a), Some(b)) if b > a => {
                format!("{}{section}{}", &old[..a], &old[b + end.len()..])
            }
            _ if old.is_empty() => format!(
                "# Benchmarks\n\nWritten by `cargo bench` (each benchmark replaces its own section). Figures are from one run on the machine described in each section; the Docker baseline is measured in the same run. Benchmarks print ratios and never fail on a time.\n\n{section}\n"
            ),
            _ => format!("{}\n{section}\n", old.trim_end()),
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&path, body) {
            Ok(()) => println!("(written to {})", path.display()),
            Err(e) => println!("(cannot write {}: {e})", path.display()),
        }
    }
}

/// CPU model and count, memory, kernel, Docker version, date.
pub fn machine_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let docker = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cores} × {cpu}, {:.1} GiB RAM, Linux {}, Docker {docker}; run {} (UTC).",
        mem_kib as f64 / 1048576.0,
        kernel.trim(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    )
}
