//! Leader election through a `coordination.k8s.io/v1` Lease, so that two operator replicas
//! never act at once. The holder renews every [`RENEW_EVERY`]; another replica takes over only
//! after the lease has not been renewed for [`LEASE_DURATION`]. Every write carries the
//! Lease's `resourceVersion`, so two candidates cannot both win. A holder that fails to renew
//! before its lease runs out stops acting (the process exits and is restarted as a candidate).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// Take it over (expired, released, or already ours).
    Take,
    /// Someone else holds it: try again later.
    Wait { holder: String },
}

/// The pure decision.
pub fn step(lease: Option<&Lease>, me: &str, now: Timestamp) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() || holder == me {
        return Step::Take;
    }
    let duration = spec
        .lease_duration_seconds
        .unwrap_or(LEASE_DURATION.as_secs() as i32) as i64;
    let renewed = spec
        .renew_time
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MIN / 2);
    if now.as_second() >= renewed + duration {
        Step::Take
    } else {
        Step::Wait { holder }
    }
}

/// The Lease as `me` holding it at `now`, from the one read (if any).
pub fn held(previous: Option<&Lease>, name: &str, me: &str, now: Timestamp) -> Lease {
    let mut lease = previous.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let new_holder = spec.holder_identity.as_deref() != Some(me);
    if new_holder {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions =
            Some(spec.lease_transitions.unwrap_or(0) + i32::from(previous.is_some()));
    }
    spec.holder_identity = Some(me.into());
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(LeaseSpec { ..spec });
    lease
}

/// One election round: true when `me` holds the lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let now = Timestamp::now();
    match step(current.as_ref(), me, now) {
        Step::Wait { holder } => {
            tracing::debug!(%holder, "another operator replica leads");
            Ok(false)
        }
        Step::Create => {
            let lease = held(None, name, me, now);
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Step::Take => {
            // `replace` sends the resourceVersion read: a concurrent writer makes this fail
            // with 409 instead of both winning.
            let lease = held(current.as_ref(), name, me, now);
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until `me` holds the lease.
pub async fn acquire(client: Client, namespace: &str, name: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    loop {
        match try_acquire(&api, name, me).await {
            Ok(true) => {
                tracing::info!(lease = name, identity = me, "leading");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// Keeps renewing; returns when the lease is lost (or could not be renewed in time).
pub async fn hold(client: Client, namespace: &str, name: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let mut last_renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match try_acquire(&api, name, me).await {
            Ok(true) => last_renewed = std::time::Instant::now(),
            Ok(false) => {
                tracing::error!("lost the leader lease");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the leader lease");
                if last_renewed.elapsed() + RENEW_EVERY >= LEASE_DURATION {
                    tracing::error!("could not renew the leader lease in time");
                    return;
                }
            }
        }
    }
}
