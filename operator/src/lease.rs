//! Leader election through a `coordination.k8s.io/v1` Lease, so that two operator replicas
//! never act at once. The holder renews every [`RENEW_EVERY`]; another replica takes over only
//! after it has seen the same record (holder, renew time) unchanged for the lease's duration
//! on its own monotonic clock: expiry is judged from observed renewals, never by comparing
//! the holder's clock with ours. Every write carries the Lease's `resourceVersion`, so two
//! candidates cannot both win. A holder that fails to renew before its lease runs out stops
//! acting (the process exits and is restarted as a candidate); a holder that stops cleanly
//! releases the Lease, so that another replica takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

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

/// What a candidate remembers of the Lease between rounds: the record it last read, and when
/// (by its own clock) that record first appeared.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    record: Option<(String, Option<String>)>,
    since: Option<Instant>,
}

/// The pure decision. `now` is the candidate's monotonic clock; `seen` is updated with the
/// record read.
pub fn step(lease: Option<&Lease>, me: &str, seen: &mut Observed, now: Instant) -> Step {
    let Some(lease) = lease else {
        *seen = Observed::default();
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() || holder == me {
        return Step::Take;
    }
    let record = (holder.clone(), spec.renew_time.map(|t| t.0.to_string()));
    if seen.record.as_ref() != Some(&record) {
        seen.record = Some(record);
        seen.since = Some(now);
    }
    let duration = Duration::from_secs(
        spec.lease_duration_seconds
            .unwrap_or(LEASE_DURATION.as_secs() as i32)
            .max(1) as u64,
    );
    let unchanged_for = seen.since.map(|t| now.saturating_duration_since(t));
    if unchanged_for.is_some_and(|d| d >= duration) {
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

/// The Lease released by `me`: no holder, a one-second duration (what client-go writes when
/// it releases on cancel).
pub fn released(previous: &Lease, now: Timestamp) -> Lease {
    let mut lease = previous.clone();
    let mut spec = lease.spec.take().unwrap_or_default();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// One election round: true when `me` holds the lease afterwards.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    seen: &mut Observed,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let now = Timestamp::now();
    match step(current.as_ref(), me, seen, Instant::now()) {
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

/// Gives the lease up if `me` holds it (a clean stop): another replica takes over at once
/// instead of after the lease's duration.
pub async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(current) = api.get_opt(name).await? else {
        return Ok(());
    };
    let holder = current
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(me) {
        return Ok(());
    }
    match api
        .replace(
            name,
            &PostParams::default(),
            &released(&current, Timestamp::now()),
        )
        .await
    {
        // Taken meanwhile: nothing of ours to give up.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Waits until `me` holds the lease.
pub async fn acquire(client: Client, namespace: &str, name: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let mut seen = Observed::default();
    loop {
        match try_acquire(&api, name, me, &mut seen).await {
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
    let mut last_renewed = Instant::now();
    let mut seen = Observed::default();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match try_acquire(&api, name, me, &mut seen).await {
            Ok(true) => last_renewed = Instant::now(),
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
