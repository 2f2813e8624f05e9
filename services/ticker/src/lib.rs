//! The ticker: loads every schedule from `jetsched-schedules`, keeps watching
//! it (puts, updates and deletes take effect live), and publishes each fire
//! to `<prefix>.due.<task>` at its time with `Nats-Msg-Id:
//! <schedule>@<nominal>`, waiting for the stream's ack.

pub mod plan;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use jetsched_contract::{DueFire, Handles, RunEvent, ScheduleDef, headers, run};
use jetsched_runtime::{KvChange, Publisher, Readiness, metrics, spawn_kv_watch};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::plan::{Fire, Plan};

/// Ticker settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TickerConfig {}

/// Runs the ticker until `shutdown` fires; `ready` is set once the schedules are loaded.
pub async fn run(
    _config: TickerConfig,
    handles: Handles,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = Publisher::new(handles.js.clone(), handles.names.clone());
    let mut changes = spawn_kv_watch(handles.schedules.clone(), shutdown.child_token(), 4096);
    let mut plan = Plan::default();
    let bucket = handles.names.schedules_bucket();
    tracing::info!("ticker started");
    loop {
        let sleep = sleep_until(plan.next_fire_at());
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            change = changes.recv() => match change {
                Some(KvChange::Ready) => {
                    tracing::info!(schedules = plan.len(), "schedules loaded");
                    ready.set(true);
                }
                Some(change) => {
                    apply(&mut plan, change, &publisher, &bucket).await;
                    metrics().schedules_loaded.record(plan.len() as u64, &[]);
                }
                None => break,
            },
            _ = sleep => {
                for fire in plan.pop_due(Timestamp::now()) {
                    publish_fire(&publisher, &fire, &shutdown).await;
                }
            }
        }
    }
    ready.set(false);
    tracing::info!(schedules = plan.len(), "ticker stopped");
    Ok(())
}

async fn sleep_until(at: Option<Timestamp>) {
    match at {
        Some(at) => {
            let wait = at.duration_since(Timestamp::now());
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn apply(plan: &mut Plan, change: KvChange, publisher: &Publisher, bucket: &str) {
    match change {
        KvChange::Put { key, value, revision } => {
            match ScheduleDef::from_json(&key, &value).and_then(|def| def.calendar().map(|c| (def, c))) {
                Ok((def, calendar)) => {
                    tracing::info!(schedule = %key, revision, "schedule loaded");
                    plan.upsert(&key, def, calendar, Timestamp::now());
                }
                Err(reason) => {
                    tracing::warn!(schedule = %key, revision, %reason, "invalid schedule");
                    plan.remove(&key);
                    let event = RunEvent::invalid(bucket, &key, revision, reason);
                    if let Err(err) = publisher.event(&event).await {
                        tracing::error!(schedule = %key, %err, "cannot report invalid schedule");
                    }
                }
            }
        }
        KvChange::Delete { key } => {
            tracing::info!(schedule = %key, "schedule removed");
            plan.remove(&key);
        }
        KvChange::Ready => {}
    }
}

/// Publishes one fire, retrying until the stream acks it or shutdown: a fire
/// is never dropped because NATS was briefly away. Each fire starts a trace.
async fn publish_fire(publisher: &Publisher, fire: &Fire, shutdown: &CancellationToken) {
    let run_id = run::scheduled_run_id(&fire.schedule, fire.nominal);
    let span = tracing::info_span!(
        "fire",
        otel.kind = "producer",
        schedule = %fire.schedule,
        run_id = %run_id,
        scheduled_for = %fire.nominal
    );
    publish_fire_traced(publisher, fire, &run_id, shutdown).instrument(span).await
}

async fn publish_fire_traced(publisher: &Publisher, fire: &Fire, run_id: &str, shutdown: &CancellationToken) {
    let task = fire.def.task_name(&fire.schedule).to_string();
    let body = DueFire {
        schedule: fire.schedule.clone(),
        scheduled_for: fire.nominal,
        payload: fire.def.payload.clone().unwrap_or_default(),
        task_def: fire.def.inline_task().cloned(),
        not_before: None,
        overlap: fire.def.overlap,
        depends_on: fire.def.depends_on.clone(),
        timezone: fire.def.timezone.clone(),
    };
    let payload = match serde_json::to_vec(&body) {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(schedule = %fire.schedule, %err, "cannot encode due fire");
            return;
        }
    };
    let msg_id = run::due_msg_id(&fire.schedule, fire.nominal);
    let subject = publisher.names().due_subject(&task);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut h = HeaderMap::new();
        h.insert(headers::SCHEDULE, fire.schedule.as_str());
        h.insert(headers::SCHEDULED_FOR, fire.nominal.to_string().as_str());
        h.insert(headers::RUN_ID, run_id);
        match publisher.publish(subject.clone(), h, &msg_id, payload.clone().into()).await.context("publish due fire") {
            Ok(ack) => {
                let late = Timestamp::now().duration_since(fire.nominal);
                metrics().fire_lateness.record(late.as_secs_f64().max(0.0), &[]);
                tracing::debug!(schedule = %fire.schedule, nominal = %fire.nominal, duplicate = ack.duplicate, "fired");
                return;
            }
            Err(err) => {
                tracing::warn!(schedule = %fire.schedule, nominal = %fire.nominal, %err, "fire not stored yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
