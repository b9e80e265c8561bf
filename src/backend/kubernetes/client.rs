//! Reaching a cluster: the kube client from a kubeconfig (file and context) or the pod's
//! service account, the namespace, and the API's errors in berth's words.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::backend::BackendError;
use crate::config::KubernetesBackend;

/// What berth calls the engine in messages.
pub const ENGINE: &str = "Kubernetes API server";

/// Longest wait for one ordinary API call (watches and log follows are bounded otherwise).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected client and the namespace its Jobs live in.
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    /// The API server's address, for messages.
    pub url: String,
}

/// Builds the client (no request is made: [`crate::backend::Backend::ping`] checks it).
pub async fn connect(k: &KubernetesBackend) -> Result<Cluster, BackendError> {
    let unreachable = |at: &str, reason: String| BackendError::Unreachable {
        engine: ENGINE,
        at: at.to_string(),
        reason,
    };
    let options = KubeConfigOptions {
        context: k.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match (&k.kubeconfig, &k.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                unreachable(&path.display().to_string(), format!("cannot read the kubeconfig: {e}; check backend.kubernetes.kubeconfig"))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| unreachable(&path.display().to_string(), format!("{e}; check backend.kubernetes.kubeconfig and .context")))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| unreachable("KUBECONFIG", format!("{e}; check KUBECONFIG and backend.kubernetes.context")))?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            unreachable(
                "the pod's service account or KUBECONFIG",
                format!("{e}; run berth in a pod with a service account, or set backend.kubernetes.kubeconfig"),
            )
        })?,
    };
    config.connect_timeout = Some(Duration::from_secs(10));
    let url = config.cluster_url.to_string();
    let namespace = k
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)
        .map_err(|e| unreachable(&url, format!("cannot build the client: {e}")))?;
    Ok(Cluster {
        client,
        namespace,
        url,
    })
}

/// The API's answer code, when the call got one.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error (or a request that got no answer) in berth's words.
pub fn api_error(op: &'static str, e: kube::Error) -> BackendError {
    let reason = match &e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{} (berth's service account lacks a permission: apply packaging/kubernetes/role.yaml, or run `berth verify`)",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    };
    BackendError::Api { op, reason }
}

/// Bounds one call: an API server that takes no answer within [`CALL_TIMEOUT`] is treated as
/// failing (the caller's outage handling decides what that means).
pub async fn bounded<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| api_error(op, e)),
        Err(_) => Err(BackendError::Api {
            op,
            reason: format!(
                "no answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
        }),
    }
}

/// Like [`bounded`], with 404 as `None`.
pub async fn bounded_opt<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Option<T>, BackendError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(t)) => Ok(Some(t)),
        Ok(Err(e)) if code(&e) == Some(404) => Ok(None),
        Ok(Err(e)) => Err(api_error(op, e)),
        Err(_) => Err(BackendError::Api {
            op,
            reason: format!(
                "no answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
        }),
    }
}
