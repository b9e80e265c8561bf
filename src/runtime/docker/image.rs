//! Images: inspect, pull (with condensed progress and registry credentials), and the pull
//! policy.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Docker, api, engine_message, is_status};
use crate::config::PullPolicy;
use crate::runtime::{ImageInfo, RuntimeError};
use crate::spec::image::ImageRef;

impl Docker {
    async fn inspect_image(&self, name: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.client.inspect_image(name).await {
            Ok(i) => {
                let config = i.config.unwrap_or_default();
                Ok(Some(ImageInfo {
                    id: i.id.unwrap_or_default(),
                    repo_digest: i.repo_digests.and_then(|d| d.into_iter().next()),
                    entrypoint: config.entrypoint.unwrap_or_default(),
                    user: config.user.unwrap_or_default(),
                }))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(api("image inspect")(e)),
        }
    }

    fn credentials(&self, domain: &str) -> Option<bollard::auth::DockerCredentials> {
        let path = self.auth_config.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        crate::runtime::docker::credentials::for_registry(&text, domain)
    }

    async fn counted_pull(
        &self,
        image: &ImageRef,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<(), RuntimeError> {
        use std::sync::atomic::Ordering::Relaxed;
        let r = self.pull(image, progress).await;
        match &r {
            Ok(()) => self.pulls_ok.fetch_add(1, Relaxed),
            Err(_) => self.pulls_failed.fetch_add(1, Relaxed),
        };
        r
    }

    async fn pull(
        &self,
        image: &ImageRef,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<(), RuntimeError> {
        let (from_image, tag) = image.pull_parts();
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&from_image)
            .tag(&tag)
            .build();
        let started = Instant::now();
        info!(image = %image, "pulling image");
        let mut stream =
            self.client
                .create_image(Some(opts), None, self.credentials(&image.domain));
        let mut condensed = crate::runtime::docker::progress::PullProgress::default();
        // Progress lines are a courtesy: dropped rather than slowing the pull when the reader
        // lags.
        let say = |line: String| {
            if let Some(tx) = progress {
                let _ = tx.try_send(line);
            }
        };
        // A failed pull arrives as an error item inside the stream: read it to the end.
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    condensed.observe(
                        info.id.as_deref(),
                        info.status.as_deref().unwrap_or_default(),
                        detail.current,
                        detail.total,
                    );
                    if let Some(line) = condensed.line_if_due(started.elapsed()) {
                        say(format!("pulling {image}: {line}"));
                    }
                    if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                        return Err(RuntimeError::Pull {
                            image: image.to_string(),
                            reason: msg,
                        });
                    }
                }
                Err(e) => {
                    return Err(RuntimeError::Pull {
                        image: image.to_string(),
                        reason: engine_message(&e),
                    });
                }
            }
        }
        info!(image = %image, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        say(format!(
            "pulled {image} in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            condensed.summary()
        ));
        Ok(())
    }

    /// Makes `image` available under `policy`; concurrent callers for one image share one pull.
    /// Condensed progress lines of a pull this caller performs go to `progress`.
    pub(super) async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: Option<&tokio::sync::mpsc::Sender<String>>,
    ) -> Result<ImageInfo, RuntimeError> {
        let name = image.to_string();
        let asked = Instant::now();
        let lock = self.pulls.get(&name);
        let mut last_pull = lock.lock().await;
        let local = self.inspect_image(&name).await?;
        let missing = || RuntimeError::ImageMissing {
            image: name.clone(),
        };
        match (policy, local) {
            (PullPolicy::Never, local) => local.ok_or_else(missing),
            (PullPolicy::IfNotPresent, Some(i)) => Ok(i),
            // Someone else pulled it while this caller waited for the lock.
            (PullPolicy::Always, Some(i)) if last_pull.is_some_and(|t| t >= asked) => Ok(i),
            (policy, local) => match self.counted_pull(image, progress).await {
                Ok(()) => {
                    *last_pull = Some(Instant::now());
                    self.inspect_image(&name).await?.ok_or_else(missing)
                }
                Err(e) => match (policy, local) {
                    (PullPolicy::Always, Some(i)) => {
                        warn!(image = %name, error = %e, "pull failed; running the local copy");
                        Ok(i)
                    }
                    _ => Err(e),
                },
            },
        }
    }
}
