//! Sidecar volumes: an image's filesystem copied once into a named volume (export piped into
//! `tar -x` in a helper container), shared by every task that mounts it.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{AttachContainerOptionsBuilder, RemoveVolumeOptionsBuilder};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Docker, LABEL_SIDECAR, SIDECAR_TARGET, api, engine_message, is_status};
use crate::config::PullPolicy;
use crate::runtime::RuntimeError;
use crate::spec::image::{ImageRef, sidecar_volume_name};

impl Docker {
    /// Makes the named volume holding `image`'s filesystem exist, copying it once.
    pub(super) async fn ensure_sidecar(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
    ) -> Result<String, RuntimeError> {
        let info = self.ensure_image(image, policy, None).await?;
        let content = info.repo_digest.clone().unwrap_or_else(|| info.id.clone());
        let volume = sidecar_volume_name(image, &content);
        let lock = self.sidecars.get(&volume);
        let _guard = lock.lock().await;
        match self.client.inspect_volume(&volume).await {
            Ok(_) => return Ok(volume),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(api("volume inspect")(e)),
        }
        info!(image = %image, %volume, "preparing sidecar volume");
        let started = Instant::now();
        self.client
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(HashMap::from([
                    (LABEL_SIDECAR.to_string(), "true".to_string()),
                    ("berth.sidecar_image".to_string(), image.to_string()),
                ])),
                ..VolumeCreateRequest::default()
            })
            .await
            .map_err(api("volume create"))?;
        match self.copy_into_volume(&info.id, &volume).await {
            Ok(()) => {
                info!(%volume, elapsed_ms = started.elapsed().as_millis() as u64, "sidecar volume ready");
                Ok(volume)
            }
            Err(reason) => {
                // Never leave a half-filled volume that a later task would trust.
                let opts = RemoveVolumeOptionsBuilder::default().force(true).build();
                if let Err(e) = self.client.remove_volume(&volume, Some(opts)).await {
                    warn!(%volume, error = %e, "cannot remove half-filled sidecar volume");
                }
                Err(RuntimeError::Sidecar {
                    image: image.to_string(),
                    volume,
                    reason,
                })
            }
        }
    }

    async fn copy_into_volume(&self, image_id: &str, volume: &str) -> Result<(), String> {
        let labels = HashMap::from([(LABEL_SIDECAR.to_string(), "copy".to_string())]);
        let source = self
            .client
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image_id.to_string()),
                    // Never started; a command only satisfies images without one.
                    cmd: Some(vec!["/berth-sidecar-source".to_string()]),
                    labels: Some(labels.clone()),
                    ..ContainerCreateBody::default()
                },
            )
            .await
            .map_err(|e| format!("create source container: {}", engine_message(&e)))?
            .id;
        let helper = self
            .client
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image_id.to_string()),
                    // Numeric: an image without /etc/passwd (distroless, FROM scratch) has no user
                    // named root, but uid 0 always exists.
                    user: Some("0:0".to_string()),
                    entrypoint: Some(vec![]),
                    cmd: Some(vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        format!("tar -x -C {SIDECAR_TARGET}"),
                    ]),
                    attach_stdin: Some(true),
                    open_stdin: Some(true),
                    stdin_once: Some(true),
                    labels: Some(labels),
                    host_config: Some(HostConfig {
                        binds: Some(vec![format!("{volume}:{SIDECAR_TARGET}")]),
                        ..HostConfig::default()
                    }),
                    ..ContainerCreateBody::default()
                },
            )
            .await
            .map_err(|e| format!("create copy helper: {}", engine_message(&e)));
        let result = match helper {
            Ok(h) => {
                let r = self.stream_export(&source, &h.id).await;
                self.remove(&h.id).await.ok();
                r
            }
            Err(e) => Err(e),
        };
        self.remove(&source).await.ok();
        result
    }

    async fn stream_export(&self, source: &str, helper: &str) -> Result<(), String> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let mut attached = self
            .client
            .attach_container(helper, Some(opts))
            .await
            .map_err(|e| format!("attach copy helper: {}", engine_message(&e)))?;
        self.client
            .start_container(
                helper,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| format!("start copy helper: {}", engine_message(&e)))?;
        let output = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(chunk)) = attached.output.next().await {
                if text.len() < 4096 {
                    text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            text
        });
        let mut export = self.client.export_container(source);
        let mut sent: u64 = 0;
        while let Some(chunk) = export.next().await {
            let chunk = chunk.map_err(|e| format!("export: {}", engine_message(&e)))?;
            sent += chunk.len() as u64;
            attached
                .input
                .write_all(&chunk)
                .await
                .map_err(|e| format!("write to copy helper: {e}"))?;
        }
        attached
            .input
            .shutdown()
            .await
            .map_err(|e| format!("close copy helper input: {e}"))?;
        drop(attached.input);
        let status = self.wait(helper).await.map_err(|e| e.to_string())?;
        let out = output.await.unwrap_or_default();
        debug!(bytes = sent, "sidecar export streamed");
        if status.code != 0 {
            return Err(format!(
                "tar in the sidecar image exited with {} (sidecar images need /bin/sh and tar): {}",
                status.code,
                out.trim()
            ));
        }
        Ok(())
    }
}
