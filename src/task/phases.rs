//! One task's run as explicit phases: prepare → image → create → start → provision → (the
//! supervised run, capture and wait, then cleanup). Each phase returns what the next one
//! needs, or the [`Outcome`] that ends the run; the first failure or stop wins.

use tokio::sync::mpsc;
use tracing::{error, info};

use std::time::Duration;

use tracing::warn;

use super::outcome::phase;
use super::run::{Run, SetupSink};
use super::supervise::{Supervised, cleanup, sample, short, supervise};
use super::{Outcome, StopReason, TaskSettings, sleep_or_forever, system_line};
use crate::backend::ImageInfo;
use crate::control::setup_events::{self, Timed};
use crate::control::shipper::Outbound;
use crate::failure::FailureReason;
use crate::protocol::{Started, WorkerMessage};
use crate::spec::environment::Environment;
use crate::spec::image::ImageRef;
use crate::spec::policy::Limits;
use crate::spec::{
    Network, SandboxSpec, Sidecar, SidecarMount, SpecContext, plan_sidecars, resolve_image,
    sandbox_spec,
};
use crate::task::provision::{Step, StepKind};

/// Longest wait for an unreachable engine before a task that has no container yet fails.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(300);

/// After a failed engine call: if the engine does not answer (an outage, not an error of the
/// call), waits for it (announced in the transcript) and returns true so the caller retries;
/// false when the engine answers (a real error), the task is stopped, or the outage outlasts
/// [`OUTAGE_PATIENCE`].
async fn outlast_outage(run: &Run<'_>, what: &str) -> bool {
    let (env, exec, token) = (run.env, run.exec, run.token());
    if env.backend.ping().await.is_ok() {
        return false;
    }
    env.engine.suspect();
    let engine = env.backend.engine_name();
    warn!(phase = what, "{engine} unreachable; waiting for it");
    system_line(
        &exec.spool,
        &format!("{engine} unreachable while {what}; waiting for it"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
    let mut backoff = crate::backoff::Backoff::capped(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = token.cancelled() => return false,
            _ = env.detach.cancelled() => return false,
        }
        if env.backend.ping().await.is_ok() {
            system_line(&exec.spool, &format!("{engine} reachable again; retrying")).await;
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// The task's environment: inline › configured by name › fetched from the control plane ›
/// the operator's default. Announced as the transcript's first line.
async fn choose_environment(
    run: &Run<'_>,
) -> Result<Option<crate::spec::environment::Environment>, Outcome> {
    use crate::control::catalog::Freshness;
    use crate::spec::environment::Choice;
    let (env, exec, token, s) = (run.env, run.exec, run.token(), &run.settings);
    let choice = crate::spec::environment::choose(
        &exec.assignment,
        exec.berth,
        &s.environments,
        s.default_environment.as_deref(),
        env.catalog.is_some(),
    )
    .map_err(|e| phase(FailureReason::WorkspaceSetup)(e.to_string()))?;
    let e = match choice {
        Choice::None => return Ok(None),
        Choice::Ready(e) => {
            system_line(&exec.spool, &format!("environment {}", e.source)).await;
            *e
        }
        Choice::Fetch(id) => {
            let Some(catalog) = &env.catalog else {
                return Ok(None);
            };
            let t = tokio::time::Instant::now();
            let got = tokio::select! {
                r = catalog.get(&id) => r,
                _ = token.cancelled() => return Err(Outcome::Interrupted),
                _ = env.detach.cancelled() => return Err(Outcome::Interrupted),
            };
            let (e, how) = got.map_err(|e| phase(FailureReason::WorkspaceSetup)(e.to_string()))?;
            let how = match how {
                Freshness::Fetched => format!("fetched in {} ms", t.elapsed().as_millis()),
                Freshness::Cached => "cached copy".to_string(),
                Freshness::Revalidated => format!(
                    "cached copy, still current ({} ms)",
                    t.elapsed().as_millis()
                ),
                Freshness::Stale(why) => {
                    format!("the control plane's API failed ({why}); using the last copy fetched")
                }
            };
            system_line(&exec.spool, &format!("environment {}: {how}", e.source)).await;
            e
        }
    };
    Ok(Some(e))
}

/// What a phase hands on, or the outcome that ends the run.
type Phase<T> = Result<T, Outcome>;

/// The decisions made before the engine is touched.
struct Plan {
    environment: Option<Environment>,
    image: ImageRef,
    sidecars: Vec<SidecarMount>,
    limits: Limits,
    steps: Vec<Step>,
    /// The container's security settings: the policy's, with the runtime the environment
    /// may have asked for.
    security: crate::spec::policy::Security,
    /// Where the task may connect to (policy, narrowed by the environment, plus what berth
    /// derives for the environment's repositories and the Oz endpoints).
    egress: crate::spec::egress::Egress,
    /// The task's working directory (the environment's, else the default workspace).
    workdir: String,
}

/// The task's egress: the policy narrowed by its environment; in allowlist mode the
/// destinations berth itself needs the task to reach are added to both lists.
fn egress_of(s: &TaskSettings, environment: Option<&Environment>) -> crate::spec::egress::Egress {
    use crate::spec::egress::{Egress, Mode, derived};
    let n = environment
        .and_then(|e| e.egress.clone())
        .unwrap_or_default();
    // The strict profile never lets a task out unrestricted.
    let mut policy = s.policy.egress.clone();
    if s.policy.profile == crate::spec::policy::Profile::Strict && policy.mode == Mode::Open {
        policy.mode = Mode::Allowlist;
    }
    let mut e = Egress::narrow(&policy, n.mode, n.allow);
    if e.mode == Mode::Allowlist {
        let urls = environment
            .into_iter()
            .flat_map(|env| env.repos.iter().map(|r| r.url.as_str()))
            .chain(std::iter::once(s.agent.server_root_url.as_str()))
            .chain(s.agent.session_sharing_server_url.as_deref());
        for a in urls.filter_map(derived) {
            if let Some(list) = e.narrowed.as_mut() {
                list.push(a.clone());
            }
            e.allow.push(a);
        }
    }
    e
}

/// A container the engine created for the execution (journaled as ours).
struct Created {
    id: String,
    spec: SandboxSpec,
    /// How long the create took (announced with the start).
    took_ms: u128,
    /// The sealed network it is on (egress allowlist).
    sealed: Option<String>,
}

/// Reports a setup phase that began at `start` and ended with `r` as a setup event; nothing
/// for a phase a stop cut short (PROTOCOL §7).
fn report<T>(
    events: SetupSink<'_>,
    name: &'static str,
    start: chrono::DateTime<chrono::Utc>,
    r: &Phase<T>,
) {
    let is_error = match r {
        Ok(_) => false,
        Err(Outcome::Interrupted) => return,
        Err(_) => true,
    };
    events.post(Timed::until_now(name, start, is_error));
}

/// Runs the phases; `None` means the worker detached (`preserve` shutdown).
pub(super) async fn execute(run: &Run<'_>) -> Option<Outcome> {
    let (env, exec, events) = (run.env, run.exec, run.events());
    let plan = match prepare(run).await {
        Ok(p) => p,
        Err(o) => return Some(o),
    };
    let (info, sidecars) = match image(run, &plan).await {
        Ok(r) => r,
        Err(o) => return Some(o),
    };
    let create_at = chrono::Utc::now();
    let created = create(run, &plan, &info, sidecars).await;
    // Create and start are one phase: reported here only when the create failed.
    if created.is_err() {
        report(events, setup_events::CONTAINER_START, create_at, &created);
    }
    let created = match created {
        Ok(c) => c,
        Err(o) => return Some(o),
    };
    let id = created.id.clone();
    super::logs::name_container(run, &id).await;
    // Attached before the command starts, so the live stream holds all of its output; without
    // it (an engine that refuses, or a backend without live output), the log is read instead.
    let live = match env.backend.live() {
        Some(ops) => match ops.attach(&id).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(container = %id, error = %e, "cannot attach to the container's output; reading it from the engine's log");
                None
            }
        },
        None => None,
    };
    let admitted = parking_lot::Mutex::new(None);
    let setup = async {
        let started = start(run, &created, &info).await;
        report(events, setup_events::CONTAINER_START, create_at, &started);
        started?;
        *admitted.lock() = admit(run, &created, &plan).await;
        let timeout = run.timeout();
        let started_at = tokio::time::Instant::now();
        provision(run, &id, &plan.steps, timeout).await?;
        Ok(timeout.map(|t| t.saturating_sub(started_at.elapsed())))
    };
    // Usage is sampled from the start call on: the cgroup is readable from then, and a short
    // task can be over before the supervised wait begins.
    let setup = async {
        tokio::select! {
            r = setup => r,
            never = sample(env, &id, run.control) => match never {},
        }
    };
    let outcome = match setup.await {
        Ok(remaining) => supervise(run, &id, remaining, live).await,
        Err(o) => Supervised::Done(o),
    };
    let admitted = admitted.lock().take();
    let usage = admitted.and_then(|ip| env.gate.as_ref()?.release(ip));
    if let Some(usage) = usage
        && !matches!(outcome, Supervised::Detached)
    {
        system_line(&exec.spool, &usage.summary()).await;
    }
    if matches!(outcome, Supervised::Detached) {
        return None;
    }
    cleanup(run, &id, outcome).await
}

/// Environment, image, sidecars, policy and provisioning steps: everything decided before
/// the engine is asked for anything (a refused task never pulls or creates).
async fn prepare(run: &Run<'_>) -> Phase<Plan> {
    let (a, s) = (&run.exec.assignment, &*run.settings);
    let refused = |e: crate::spec::SpecError| phase(e.failure_reason())(e.to_string());
    let environment = choose_environment(run).await?;
    let image = resolve_image(
        a,
        environment.as_ref().and_then(|e| e.image.as_deref()),
        &s.default_image,
    )
    .map_err(refused)?;
    let sidecars = plan_sidecars(a).map_err(refused)?;
    let limits = s
        .policy
        .check_image(&image, "")
        .and_then(|()| {
            sidecars
                .iter()
                .try_for_each(|m| s.policy.check_image(&m.image, "sidecar"))
        })
        .and_then(|()| {
            s.policy
                .limits(a.instance_shape, environment.as_ref().map(|e| &e.resources))
        })
        .map_err(|e| phase(e.failure_reason())(e.to_string()))?;
    let runtime = s
        .policy
        .runtime_for(environment.as_ref().and_then(|e| e.runtime.as_deref()))
        .map_err(|e| phase(e.failure_reason())(e.to_string()))?;
    let egress = egress_of(s, environment.as_ref());
    let security = crate::spec::policy::Security {
        runtime,
        ..s.policy.security.clone()
    };
    let workdir = environment
        .as_ref()
        .and_then(|e| e.workdir.clone())
        .unwrap_or_else(|| crate::spec::WORKDIR.to_string());
    let steps = match environment.as_ref().filter(|e| e.provisions()) {
        Some(e) => crate::task::provision::steps(e, &workdir)
            .map_err(phase(FailureReason::WorkspaceSetup))?,
        None => Vec::new(),
    };
    Ok(Plan {
        environment,
        image,
        sidecars,
        limits,
        steps,
        security,
        egress,
        workdir,
    })
}

/// The image (pull progress into the transcript) and the sidecar volumes, waiting out engine
/// outages, each reported as a setup event. A pull may be abandoned on a stop; a sidecar copy
/// never is (it is shared).
async fn image(run: &Run<'_>, plan: &Plan) -> Phase<(ImageInfo, Vec<Sidecar>)> {
    let (env, exec, s, token) = (run.env, run.exec, &*run.settings, run.token());
    let runtime = env.backend.as_ref();
    let pull_at = chrono::Utc::now();
    let t = tokio::time::Instant::now();
    let image = &plan.image;
    system_line(
        &exec.spool,
        &format!("preparing image {image} (pull policy {:?})", s.pull_policy),
    )
    .await;
    // Condensed pull progress goes into the transcript as it comes.
    let (progress_tx, mut progress_rx) = mpsc::channel::<String>(8);
    let spool = exec.spool.clone();
    let forward = tokio::spawn(async move {
        while let Some(line) = progress_rx.recv().await {
            system_line(&spool, &line).await;
        }
    });
    let pulled = loop {
        let r = tokio::select! {
            r = runtime.prepare_image(image, s.pull_policy, Some(&progress_tx)) => Some(r),
            _ = token.cancelled() => None,
            _ = env.detach.cancelled() => None,
        };
        match r {
            Some(Err(_)) if outlast_outage(run, "preparing the image").await => {}
            r => break r,
        }
    };
    drop(progress_tx);
    // Every progress line precedes what follows the pull.
    let _ = forward.await;
    let info = match pulled {
        Some(Ok(i)) => Ok(i),
        Some(Err(_)) if run.stopped() => Err(Outcome::Interrupted),
        Some(Err(e)) => Err(phase(FailureReason::ImagePull)(e.to_string())),
        None => Err(Outcome::Interrupted),
    };
    report(run.events(), setup_events::IMAGE_PULL, pull_at, &info);
    let info = info?;
    system_line(
        &exec.spool,
        &format!(
            "image ready in {} ms ({})",
            t.elapsed().as_millis(),
            info.id
        ),
    )
    .await;
    if plan.sidecars.is_empty() {
        return Ok((info, Vec::new()));
    }
    let prep_at = chrono::Utc::now();
    let binds = sidecars(run, plan).await;
    report(run.events(), setup_events::SIDECAR_PREP, prep_at, &binds);
    Ok((info, binds?))
}

/// The sidecar volumes, in order, waiting out engine outages.
async fn sidecars(run: &Run<'_>, plan: &Plan) -> Phase<Vec<Sidecar>> {
    let (exec, s) = (run.exec, &*run.settings);
    let runtime = run.env.backend.as_ref();
    let mut binds = Vec::new();
    for m in &plan.sidecars {
        let t = tokio::time::Instant::now();
        let prepared = loop {
            match runtime.prepare_sidecar(&m.image, s.pull_policy).await {
                Err(_) if outlast_outage(run, "preparing a sidecar").await => {}
                r => break r,
            }
        };
        match prepared {
            Ok(volume) => {
                system_line(
                    &exec.spool,
                    &format!(
                        "sidecar {} ready as volume {volume} in {} ms",
                        m.image,
                        t.elapsed().as_millis()
                    ),
                )
                .await;
                binds.push(Sidecar {
                    mount: m.clone(),
                    source: volume,
                });
            }
            Err(_) if run.stopped() => return Err(Outcome::Interrupted),
            Err(e) => return Err(phase(FailureReason::SidecarPrep)(e.to_string())),
        }
        if run.stopped() {
            return Err(Outcome::Interrupted);
        }
    }
    Ok(binds)
}

/// Builds the container spec and creates the container, journaled as ours before anything
/// else happens to it. Never abandoned: a create cut short could leave a container nobody
/// tracks, so a create retried after an outage first looks for the one the engine made.
async fn create(
    run: &Run<'_>,
    plan: &Plan,
    info: &ImageInfo,
    sidecars: Vec<Sidecar>,
) -> Phase<Created> {
    let (env, exec, s) = (run.env, run.exec, &*run.settings);
    let runtime = env.backend.as_ref();
    // Allowlist: the container goes on the sealed network, the proxy is its only way out.
    // A door that cannot be opened fails the task: it never runs unrestricted.
    let security = plan
        .security
        .hardened(s.policy.profile, &info.user, &plan.workdir);
    let door = if plan.egress.mode == crate::spec::egress::Mode::Allowlist {
        let gate = env.gate.as_ref().ok_or_else(|| {
            phase(FailureReason::ContainerCreate)(
                "egress allowlist needs berth's egress proxy, which this worker does not run"
                    .to_string(),
            )
        })?;
        let door = gate
            .open()
            .await
            .map_err(|e| phase(FailureReason::ContainerCreate)(e.to_string()))?;
        Some(door)
    } else {
        None
    };
    // No network at all for egress none; the sealed one for allowlist; else the policy's.
    let network = match (&door, plan.egress.mode) {
        (Some(d), _) => Network::Sealed {
            name: d.network.clone(),
            gateway: d.gateway,
        },
        (None, crate::spec::egress::Mode::None) => Network::None,
        (None, _) => Network::Engine(s.policy.security.network.clone()),
    };
    let owner = env.owner();
    let in_place = env.backend.in_place().is_some();
    let ctx = SpecContext {
        owner: &owner,
        backend: env.backend.kind(),
        execution_id: &exec.execution_id,
        berth: exec.berth,
        image: &plan.image,
        sidecars,
        agent: &s.agent,
        operator_env: &s.operator_env,
        operator_volumes: &s.operator_volumes,
        limits: plan.limits,
        security: &security,
        network,
        environment: plan.environment.as_ref(),
        hold: (in_place && !plan.steps.is_empty()).then_some(info.entrypoint.as_slice()),
    };
    let mut spec = sandbox_spec(&exec.assignment, &ctx)
        .map_err(|e| phase(e.failure_reason())(e.to_string()))?;
    if !in_place {
        // The backend runs provisioning before the task's command (init containers).
        spec.steps = plan.steps.iter().map(Step::as_init).collect();
        if !spec.steps.is_empty() {
            system_line(
                &exec.spool,
                &format!(
                    "provisioning: {} step(s) run before the task's command, their output first",
                    spec.steps.len()
                ),
            )
            .await;
        }
    }
    // A non-root user without a writable home breaks git, pip and npm: /tmp is one.
    if s.policy.profile == crate::spec::policy::Profile::Strict
        && !spec.env.iter().any(|e| e.starts_with("HOME="))
    {
        spec.env.push("HOME=/tmp".to_string());
    }
    if let Some(d) = &door {
        // Last, so they win over any the task set itself (which would lead nowhere).
        spec.env.extend(
            crate::spec::egress::proxy_env(&d.proxy_url)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
    }
    let created_in = tokio::time::Instant::now();
    let id = loop {
        match runtime.create(&spec).await {
            Ok(id) => break id,
            Err(e) => {
                if !outlast_outage(run, "creating the container").await {
                    if run.stopped() {
                        return Err(Outcome::Interrupted);
                    }
                    return Err(phase(FailureReason::ContainerCreate)(e.to_string()));
                }
                let ours = runtime
                    .find(&owner, &exec.execution_id)
                    .await
                    .ok()
                    .flatten();
                if let Some(id) = ours {
                    break id;
                }
            }
        }
    };
    // Journal before acting: a restarted worker must know this container is ours.
    if let Err(e) =
        env.journal
            .set_container(&exec.execution_id, &id, in_place && !plan.steps.is_empty())
    {
        error!(error = %e, "cannot record the container in the journal");
    }
    info!(container = %id, image = %spec.image, "container created");
    Ok(Created {
        id,
        spec,
        took_ms: created_in.elapsed().as_millis(),
        sealed: door.map(|d| d.network),
    })
}

/// Lets a container on the sealed network use the egress proxy, by its address there. Without
/// an address nothing is admitted, and the proxy refuses the task everything.
async fn admit(run: &Run<'_>, created: &Created, plan: &Plan) -> Option<std::net::IpAddr> {
    let (env, exec) = (run.env, run.exec);
    let network = created.sealed.as_deref()?;
    let gate = env.gate.as_ref()?;
    match env.backend.address(&created.id, network).await {
        Ok(Some(ip)) => {
            gate.admit(ip, &exec.execution_id, plan.egress.clone());
            Some(ip)
        }
        Ok(None) | Err(_) => {
            warn!(container = %created.id, "no address on the sealed network; the egress proxy refuses this task everything");
            system_line(
                &exec.spool,
                "egress: the container has no address on the sealed network; every destination is refused",
            )
            .await;
            None
        }
    }
}

/// Starts the container (announced, with `task_started` on berth/1).
async fn start(run: &Run<'_>, created: &Created, info: &ImageInfo) -> Phase<()> {
    let (env, exec) = (run.env, run.exec);
    if run.token().is_cancelled() {
        return Err(Outcome::Interrupted);
    }
    let id = &created.id;
    let started_in = tokio::time::Instant::now();
    env.backend
        .start(id)
        .await
        .map_err(|e| phase(FailureReason::ContainerStart)(e.to_string()))?;
    info!(container = %id, "container started");
    system_line(
        &exec.spool,
        &format!(
            "container {} created in {} ms, started in {} ms",
            short(id),
            created.took_ms,
            started_in.elapsed().as_millis()
        ),
    )
    .await;
    if exec.berth {
        let started = WorkerMessage::TaskStarted(Box::new(Started {
            task_id: exec.assignment.task_id.clone(),
            execution_id: exec.execution_id.clone(),
            container_id: id.clone(),
            image: created.spec.image.clone(),
            image_id: info.id.clone(),
            started_at: chrono::Utc::now().to_rfc3339(),
        }));
        let _ = env.outbox.send(Outbound::durable(started)).await;
    }
    Ok(())
}

/// Clones and setup commands inside the held container, then the release of the task's
/// command. A held container cannot be resumed by the next worker, so a shutdown ends it.
async fn provision(
    run: &Run<'_>,
    id: &str,
    steps: &[Step],
    timeout: Option<std::time::Duration>,
) -> Phase<()> {
    let (env, exec, control, events) = (run.env, run.exec, run.control, run.events());
    // Without in-place provisioning the steps are part of the sandbox (create put them there).
    let Some(in_place) = env.backend.in_place().filter(|_| !steps.is_empty()) else {
        return Ok(());
    };
    let secrets = run.secrets();
    // Each stage (the clones, the setup commands) is reported as it ends; one a stop cuts
    // short never ends, so it is never reported.
    let on_stage = |kind: StepKind, start, is_error| {
        let name = match kind {
            StepKind::Clone => setup_events::REPO_CLONE,
            StepKind::Setup => setup_events::SETUP_COMMANDS,
        };
        events.post(Timed::until_now(name, start, is_error));
    };
    let provisioned = tokio::select! {
        r = crate::task::provision::provision(in_place, id, steps, &exec.spool, &secrets, on_stage) => Some(r),
        _ = control.token.cancelled() => None,
        _ = sleep_or_forever(timeout) => {
            control.stop(StopReason::Timeout);
            None
        }
        _ = env.detach.cancelled() => {
            control.stop(StopReason::Shutdown);
            None
        }
    };
    match provisioned {
        Some(Ok(())) => {
            if let Err(e) = env.journal.set_running(&exec.execution_id) {
                error!(error = %e, "cannot record the end of provisioning in the journal");
            }
            Ok(())
        }
        Some(Err(f)) => Err(Outcome::Failure(f)),
        None => Err(Outcome::Interrupted),
    }
}
