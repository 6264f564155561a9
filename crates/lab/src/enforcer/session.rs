//! A lab under a real enforcer whose policies come and go while the enforcer keeps
//! running, as on a cluster: put in force, probed, withdrawn, each change waited for through
//! canaries. One enforcer serves many plans over the same pods (the conformance set), rather
//! than one start per plan.
use std::{
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use flowpol_analysis::policy::engine::Engine;
use flowpol_kube::identity;
use flowpol_node::shutdown::Shutdown;

use super::{
    canary::{self, Canary},
    process::{Access, Running},
    upstream, with_causes, EnforcerError, Program, Real, ENFORCED_WITHIN, READY_WITHIN,
};
use crate::{
    enforce,
    in_cluster::{ApiServer, Published},
    netns, objects,
    scenario::Resolved,
    traffic::ClientSaw,
    Lab,
};

/// The running enforcer and its lab.
pub struct Session {
    pub kind: Real,
    /// From the enforcer's start until it let a canary through, before any policy existed.
    pub ready: Duration,
    lab: Option<Lab>,
    running: Running,
    api: ApiServer,
    shutdown: Shutdown,
    /// The policies in force, and the canaries that showed it.
    in_force: Option<(Published, Vec<Canary>)>,
}

/// Runs `body` on a session over `resolved`'s pods (its policies are not published: `body`
/// puts policies in force with [`Session::enforce`]): publishes the lab and the enforcer's
/// identity into `api`, starts the enforcer in the node namespace and waits until it judges
/// packets; afterwards stops it and removes what was published, also on errors and Ctrl-C.
pub async fn session<T, E: From<EnforcerError>>(
    resolved: Resolved,
    program: &Program,
    api: &ApiServer,
    body: impl AsyncFnOnce(&mut Session) -> Result<T, E>,
) -> Result<T, E> {
    netns::preflight().map_err(EnforcerError::from)?;
    let shutdown = Shutdown::install().map_err(EnforcerError::Signals)?;
    let name = format!("flowpol-lab-{}", program.kind);
    let mut items = objects::cluster_items(&resolved);
    items.extend(identity::enforcer_objects(&name));
    let published = api.publish(&items).await.map_err(EnforcerError::from)?;
    let outcome = async {
        let mut session = Session::start(resolved, program, api, &name, shutdown).await?;
        let done = body(&mut session).await;
        let removed = match session.in_force.take() {
            Some((policies, _)) => policies.remove().await,
            None => Ok(()),
        };
        drop(session);
        let done = done?;
        removed.map_err(EnforcerError::from)?;
        Ok(done)
    }
    .await;
    match published.remove().await {
        Ok(()) => outcome,
        Err(e) if outcome.is_ok() => Err(EnforcerError::from(e).into()),
        // The run's own failure is the one to report.
        Err(e) => {
            tracing::warn!("{}", with_causes(&e));
            outcome
        }
    }
}

impl Session {
    /// Creates the lab and starts the enforcer under the identity `name`, until it judges
    /// packets: before any policy everything gets through, and a canary must.
    async fn start(
        resolved: Resolved,
        program: &Program,
        api: &ApiServer,
        name: &str,
        mut shutdown: Shutdown,
    ) -> Result<Self, EnforcerError> {
        let access = Access {
            upstream: upstream(api)?,
            ca_pem: identity::ca_pem(&api.config),
            token: identity::token(&api.client, name).await?,
        };
        let declared = enforce::declared(&resolved)?;
        let lab = tokio::task::spawn_blocking(move || Lab::create(resolved)).await??;
        let open = canary::choose(&lab, &Engine::new(&declared.cluster, Vec::new()))?;
        let started = Instant::now();
        let mut running = Running::start(program, lab.node_namespace(), &access)?;
        running.ready(READY_WITHIN).await?;
        let (lab, passing) = wait_for(lab, open, started, &mut shutdown).await?;
        Ok(Self {
            kind: program.kind,
            ready: passing?,
            lab: Some(lab),
            running,
            api: api.clone(),
            shutdown,
            in_force: None,
        })
    }

    /// The lab, for a body that consumes it, with the Ctrl-C watch.
    pub fn take_lab(&mut self) -> Option<(Lab, &mut Shutdown)> {
        self.lab.take().map(|lab| (lab, &mut self.shutdown))
    }

    /// The canaries that showed the policies in force.
    pub fn canaries(&self) -> &[Canary] {
        self.in_force.as_ref().map_or(&[], |(_, c)| c)
    }

    /// Publishes `plan`'s policies (withdrawing those in force first) and waits until
    /// canaries chosen from them show them enforced. Returns the time from their creation
    /// until then; `None` when they deny nothing a canary can try, so their enforcement
    /// cannot be seen.
    pub async fn enforce(&mut self, plan: &Resolved) -> Result<Option<Duration>, EnforcerError> {
        self.withdraw().await?;
        let mut declared = enforce::declared(plan)?;
        // Canaries only from what it enforces: a policy it ignores would never show up.
        declared
            .cluster_policies
            .retain(|p| self.kind.implements(p.kind));
        let engine = declared.engine();
        let canaries = canary::choose(self.lab_ref()?, &engine)?;
        let since = Instant::now();
        let published = self.api.publish(&objects::policy_items(plan)).await?;
        self.in_force = Some((published, canaries.clone()));
        let took = self.wait(canaries.clone(), since).await?;
        Ok(canary::measurable(&canaries).then_some(took))
    }

    /// Removes the policies in force and waits until their canaries all get through again,
    /// so the next plan starts from a cluster without policies.
    pub async fn withdraw(&mut self) -> Result<(), EnforcerError> {
        let Some((published, canaries)) = self.in_force.take() else {
            return Ok(());
        };
        let since = Instant::now();
        published.remove().await?;
        let open = canaries
            .into_iter()
            .map(|c| Canary { allowed: true, ..c })
            .collect();
        self.wait(open, since).await.map(drop)
    }

    /// Runs `plan`'s traffic (its pods are the lab's) and returns what each client saw, in
    /// plan order. The lab's listeners start with the first plan and serve the canaries from
    /// then on.
    pub async fn traffic(&mut self, plan: &Resolved) -> Result<Vec<ClientSaw>, EnforcerError> {
        let mut lab = self.lab.take().ok_or(EnforcerError::LabTaken)?;
        let plan = plan.clone();
        let (lab, saw) = tokio::task::spawn_blocking(move || {
            let saw = if lab.listening() {
                Ok(())
            } else {
                lab.listen()
            }
            .and_then(|()| lab.run_plan(&plan));
            (lab, saw)
        })
        .await?;
        self.lab = Some(lab);
        Ok(saw?)
    }

    fn lab_ref(&self) -> Result<&Lab, EnforcerError> {
        self.lab.as_ref().ok_or(EnforcerError::LabTaken)
    }

    /// The canary wait; its failure quotes the enforcer's log, kept whole for the reader.
    async fn wait(
        &mut self,
        canaries: Vec<Canary>,
        since: Instant,
    ) -> Result<Duration, EnforcerError> {
        let lab = self.lab.take().ok_or(EnforcerError::LabTaken)?;
        let (lab, took) = wait_for(lab, canaries, since, &mut self.shutdown).await?;
        self.lab = Some(lab);
        took.map_err(|e| match e {
            EnforcerError::NotEnforcing {
                within, canaries, ..
            } => EnforcerError::NotEnforcing {
                within,
                canaries,
                log: Some(match self.running.keep_log() {
                    Some(kept) => format!(
                        "{}\n(all of it in {})",
                        self.running.log_tail(),
                        kept.display()
                    ),
                    None => self.running.log_tail(),
                }),
            },
            other => other,
        })
    }
}

/// The canary wait on a blocking thread, stopped by Ctrl-C.
async fn wait_for(
    lab: Lab,
    canaries: Vec<Canary>,
    since: Instant,
    shutdown: &mut Shutdown,
) -> Result<(Lab, Result<Duration, EnforcerError>), EnforcerError> {
    let stop = Arc::new(AtomicBool::new(false));
    let waiting = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            let took = canary::wait(&lab, &canaries, since, ENFORCED_WITHIN, &stop);
            (lab, took)
        }
    });
    tokio::pin!(waiting);
    tokio::select! {
        done = &mut waiting => Ok(done?),
        () = shutdown.requested() => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = waiting.await;
            Err(EnforcerError::Interrupted)
        }
    }
}
