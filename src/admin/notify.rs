//! systemd's notification protocol (`Type=notify`): `READY=1` once configuration, Docker and
//! state are checked, `STATUS=` with the connection and slots, `WATCHDOG=1` while the
//! supervisor's loop is turning, `STOPPING=1` on shutdown. A datagram to `$NOTIFY_SOCKET`; no
//! library needed. Without `NOTIFY_SOCKET` (not under systemd) everything here is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::admin::status::Live;

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd wants alongside it (it tells a reload
/// that started after a given point from an older one).
pub fn reloading_message() -> String {
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// Where and how often to notify.
#[derive(Debug, Clone, PartialEq)]
pub struct Notifier {
    socket: Socket,
    /// Half the watchdog timeout (`WATCHDOG_USEC`), when the watchdog is on for this process.
    pub watchdog_every: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
enum Socket {
    Path(PathBuf),
    /// Linux abstract namespace (`@name`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (via `env`); `None` when not
    /// started by systemd with `Type=notify`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, pid: u32) -> Option<Notifier> {
        let raw = env("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
        let socket = match raw.strip_prefix('@') {
            Some(name) => Socket::Abstract(name.as_bytes().to_vec()),
            None => Socket::Path(PathBuf::from(raw)),
        };
        let for_us = env("WATCHDOG_PID")
            .map(|p| p.trim().parse::<u32>().ok() == Some(pid))
            .unwrap_or(true);
        let watchdog_every = env("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Some(Notifier {
            socket,
            watchdog_every,
        })
    }

    /// Sends one message (`READY=1`, `STATUS=…`); failures are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let r = UnixDatagram::unbound().and_then(|s| match &self.socket {
            Socket::Path(p) => s.send_to(msg.as_bytes(), p),
            Socket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(msg.as_bytes(), &addr)
            }
        });
        match r {
            Ok(_) => debug!(%msg, "notified systemd"),
            Err(e) => warn!(error = %e, "cannot notify systemd"),
        }
    }
}

/// The one-line `STATUS=` text (pure).
pub fn status_line(s: &crate::admin::status::Status) -> String {
    let link = match (&s.protocol, s.connected) {
        (Some(p), true) => format!("connected ({p})"),
        _ => "not connected".to_string(),
    };
    let w = &s.worker;
    let slots = if w.max_concurrent_tasks == 0 {
        format!("{} tasks", w.active_tasks)
    } else {
        format!("{}/{} slots", w.active_tasks, w.max_concurrent_tasks)
    };
    let mut line = format!("{link}, {slots}");
    if w.draining {
        line.push_str(", draining");
    }
    if !w.host.docker.reachable {
        line.push_str(", Docker unreachable");
    }
    line
}

/// Sends `READY=1`, then `STATUS=` every few seconds and `WATCHDOG=1` each time the
/// supervisor's loop (`heartbeat`) has moved since the last one; `STOPPING=1` at `stop`.
pub async fn run(n: Notifier, live: Arc<Live>, heartbeat: Arc<AtomicU64>, stop: CancellationToken) {
    n.send("READY=1");
    let every = n
        .watchdog_every
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut last_beat = heartbeat.load(Ordering::Relaxed);
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {
                n.send("STOPPING=1");
                return;
            }
        }
        let status = status_line(&live.status());
        if status != last_status {
            n.send(&format!("STATUS={status}"));
            last_status = status;
        }
        let beat = heartbeat.load(Ordering::Relaxed);
        // A stuck supervisor stops the pings: systemd then restarts berth (WatchdogSec).
        if n.watchdog_every.is_some() && beat != last_beat {
            n.send("WATCHDOG=1");
        }
        last_beat = beat;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn settings_come_from_systemds_variables() {
        assert_eq!(Notifier::from_env(&env(&[]), 7), None);
        let n = Notifier::from_env(
            &env(&[
                ("NOTIFY_SOCKET", "/run/systemd/notify"),
                ("WATCHDOG_USEC", "30000000"),
            ]),
            7,
        );
        assert_eq!(
            n,
            Some(Notifier {
                socket: Socket::Path("/run/systemd/notify".into()),
                watchdog_every: Some(Duration::from_secs(15)),
            })
        );
        // The watchdog is for another process (e.g. berth started by a wrapper).
        let n = Notifier::from_env(
            &env(&[
                ("NOTIFY_SOCKET", "@sd"),
                ("WATCHDOG_USEC", "30000000"),
                ("WATCHDOG_PID", "8"),
            ]),
            7,
        );
        assert_eq!(
            n,
            Some(Notifier {
                socket: Socket::Abstract(b"sd".to_vec()),
                watchdog_every: None,
            })
        );
    }

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Socket::Path(path),
            watchdog_every: None,
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap_or(0);
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn the_status_line_says_connection_slots_and_trouble() {
        let mut st = crate::admin::status::Status::example();
        assert_eq!(status_line(&st), "connected (berth/1), 1/4 slots");
        st.connected = false;
        st.worker.draining = true;
        st.worker.host.docker.reachable = false;
        st.worker.max_concurrent_tasks = 0;
        assert_eq!(
            status_line(&st),
            "not connected, 1 tasks, draining, Docker unreachable"
        );
    }
}
