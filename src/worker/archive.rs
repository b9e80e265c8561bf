//! Wiring of the debug-archive service (PROTOCOL §8.4): its capture directory, its HTTP
//! client and its queue. Anything wrong here turns archive capture off with one warning;
//! tasks are never affected.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::archive::files::CaptureDir;
use crate::archive::service::{self, Service, Settings};
use crate::archive::upload::Uploader;
use crate::config::Config;
use crate::control::shipper::Outbound;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::protocol::ArchiveRequest;
use crate::transcript::spool::spool_dir;

/// The service and the sender the supervisor hands requests to.
pub(super) fn service(
    c: &Config,
    backend: &'static str,
    journal: Arc<Journal>,
    outbox: mpsc::Sender<Outbound>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (
    Service,
    mpsc::Receiver<ArchiveRequest>,
    mpsc::Sender<ArchiveRequest>,
) {
    let d = &c.debug_log_capture;
    let dir = match &d.disabled {
        Some(why) => {
            warn!(problem = %why, "debug_log_capture bounds are invalid; debug archive capture is off");
            None
        }
        None => match CaptureDir::prepare(d.directory.as_deref()) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(error = %e, "debug archive capture is off");
                None
            }
        },
    };
    // Trust only: a presigned target is not the control plane, so no client certificate.
    let uploader =
        crate::control::tls::client_config(c.control_plane.ca_file.as_deref(), None, None)
            .ok()
            .and_then(|tls| Uploader::new(&tls).ok());
    if uploader.is_none() {
        warn!("cannot build the debug-archive HTTP client; archive uploads will fail");
    }
    let settings = Settings {
        dir,
        max_total_bytes: d.max_total_bytes,
        max_execution_bytes: d.max_execution_bytes,
        max_concurrent_uploads: d.max_concurrent_uploads,
        spool_dir: spool_dir(&c.state_dir),
        backend,
    };
    let (tx, rx) = service::queue();
    let svc = Service::new(settings, journal, uploader, outbox, metrics, stop);
    (svc, rx, tx)
}
