//! Workflow runs: starting one (its record carries every step's state), and
//! advancing it when a step reports its outcome. Steps are started by
//! publishing `<prefix>.step.<task>` to the inbox, so they go through the
//! same gates, priority and routing as any run; the step run's id is
//! `<workflow run>.<step>`, so a step started twice (a dispatcher died
//! between publishing and recording) still runs once.
//!
//! Order of writes: publish the step starts first, then record them with
//! compare-and-set. A crash in between re-publishes (harmless), never loses.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use jetsched_contract::task::Step;
use jetsched_contract::workflow::{Decision, StepState, WorkflowState, decide, outcome, step_payload, step_run_id};
use jetsched_contract::{RunRecord, RunStatus, StepOutcome, StepStart};
use jiff::Timestamp;

use crate::dispatch::{Accepted, Ctx, Disposition, Inbox, RETRY, create_record, event_for, new_record, report_step};

/// Starts workflow run `a`: its record, a `started` event, its root steps.
pub async fn start(ctx: &Ctx, msg: &Inbox<'_>, a: Accepted) -> Disposition {
    let Some(steps) = a.def.steps.clone() else { return Disposition::Ack };
    let state = WorkflowState {
        payload: a.payload.clone(),
        steps: steps.keys().map(|k| (k.clone(), StepState::default())).collect(),
    };
    let record = RunRecord {
        attempt: 1,
        started_at: Some(Timestamp::now()),
        workflow: Some(state),
        ..new_record(&a, &a.run_id, &a.def.queue, 0, msg.seq, RunStatus::Started)
    };
    let revision = match create_record(ctx, &record).await {
        Ok(Some(rev)) => rev,
        Ok(None) => return Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot create workflow record; will retry");
            crate::dispatch::DISPATCHING.failed(&format_args!("cannot create workflow record: {err}"));
            return RETRY;
        }
    };
    let event = RunEvent { attempt: 1, ..event_for(&a, &a.run_id, RunStatus::Started, None) };
    if ctx.publisher.event(&event).await.is_err() {
        return RETRY;
    }
    match progress(ctx, &steps, record, revision).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot start the workflow's steps; will retry");
            crate::dispatch::DISPATCHING.failed(&format_args!("cannot start the workflow's steps: {err}"));
            RETRY
        }
    }
}

use jetsched_contract::RunEvent;

/// Records a step's outcome in its workflow run and moves the workflow on.
pub async fn advance(ctx: &Ctx, msg: &Inbox<'_>) -> Disposition {
    let outcome: StepOutcome = match serde_json::from_slice(msg.payload) {
        Ok(o) => o,
        Err(err) => {
            tracing::error!(%err, "malformed step outcome; dropped");
            return Disposition::Ack;
        }
    };
    for _ in 0..8 {
        let entry = match ctx.runs.entry(&outcome.workflow_run).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                tracing::warn!(workflow_run = %outcome.workflow_run, "step outcome for an unknown workflow run; dropped");
                return Disposition::Ack;
            }
            Err(_) => return RETRY,
        };
        let Ok(mut record) = serde_json::from_slice::<RunRecord>(&entry.value) else { return Disposition::Ack };
        let steps = match ctx.tasks.get(&record.task).await {
            Ok(Some(Ok(def))) => def.steps.clone().unwrap_or_default(),
            Ok(_) => {
                tracing::warn!(workflow = %record.task, "workflow definition gone; step outcome dropped");
                return Disposition::Ack;
            }
            Err(_) => return RETRY,
        };
        let Some(state) = record.workflow.as_mut() else { return Disposition::Ack };
        let step = state.steps.entry(outcome.step.clone()).or_default();
        if step.status.is_some_and(RunStatus::is_terminal) {
            // Already recorded (a redelivered outcome): just make sure the
            // workflow moved on.
            return match progress(ctx, &steps, record, entry.revision).await {
                Ok(()) => Disposition::Ack,
                Err(_) => RETRY,
            };
        }
        step.status = Some(outcome.status);
        step.run_id = Some(outcome.run_id.clone());
        step.result = outcome.result.clone();
        step.error = outcome.error.clone();
        record.updated_at = Timestamp::now();
        let Ok(value) = serde_json::to_vec(&record) else { return Disposition::Ack };
        match ctx.runs.update(&outcome.workflow_run, value.into(), entry.revision).await {
            Ok(rev) => {
                return match progress(ctx, &steps, record, rev).await {
                    Ok(()) => Disposition::Ack,
                    Err(err) => {
                        tracing::debug!(%err, "cannot move the workflow on; will retry");
                        crate::dispatch::DISPATCHING.failed(&format_args!("cannot move the workflow on: {err}"));
                        RETRY
                    }
                };
            }
            Err(_) => continue,
        }
    }
    RETRY
}

/// Starts or skips every step whose fate is known, until none is; then, if
/// every step has an outcome, ends the workflow run.
async fn progress(
    ctx: &Ctx,
    steps: &BTreeMap<String, Step>,
    mut record: RunRecord,
    mut revision: u64,
) -> anyhow::Result<()> {
    loop {
        let Some(state) = record.workflow.clone() else { return Ok(()) };
        let decisions = decide(steps, &state);
        if decisions.is_empty() {
            break;
        }
        let mut next = state.clone();
        for (name, decision) in decisions {
            let run_id = step_run_id(&record.run_id, &name);
            let Some(step) = steps.get(&name) else { continue };
            let entry = next.steps.entry(name.clone()).or_default();
            match decision {
                Decision::Start => {
                    start_step(ctx, &record, &name, step, &state).await?;
                    entry.status = Some(RunStatus::Queued);
                    entry.run_id = Some(run_id);
                }
                Decision::Skip(reason) => {
                    let event = RunEvent {
                        error: Some(reason.clone()),
                        schedule: record.schedule.clone(),
                        scheduled_for: record.scheduled_for,
                        workflow_run: Some(record.run_id.clone()),
                        step: Some(name.clone()),
                        ..RunEvent::new(RunStatus::Skipped, &step.task, Some(run_id.clone()))
                    };
                    ctx.publisher.event(&event).await?;
                    entry.status = Some(RunStatus::Skipped);
                    entry.run_id = Some(run_id);
                    entry.error = Some(reason);
                }
            }
        }
        record.workflow = Some(next);
        record.updated_at = Timestamp::now();
        revision = ctx.runs.update(&record.run_id, serde_json::to_vec(&record)?.into(), revision).await?;
    }
    let Some(state) = &record.workflow else { return Ok(()) };
    if record.status.is_terminal() {
        return Ok(());
    }
    let Some(status) = outcome(state) else { return Ok(()) };
    let failed: Vec<&String> = state
        .steps
        .iter()
        .filter(|(_, s)| {
            matches!(s.status, Some(RunStatus::Dead | RunStatus::Expired | RunStatus::Cancelled | RunStatus::Rejected))
        })
        .map(|(n, _)| n)
        .collect();
    let error = (!failed.is_empty())
        .then(|| format!("steps failed: {}", failed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    record.status = status;
    record.error = error.clone();
    record.finished_at = Some(Timestamp::now());
    record.updated_at = Timestamp::now();
    ctx.runs.update(&record.run_id, serde_json::to_vec(&record)?.into(), revision).await?;
    let event = RunEvent {
        attempt: 1,
        error: error.clone(),
        schedule: record.schedule.clone(),
        scheduled_for: record.scheduled_for,
        workflow_run: record.parent.clone(),
        step: record.step.clone(),
        ..RunEvent::new(status, &record.task, Some(record.run_id.clone()))
    };
    ctx.publisher.event(&event).await?;
    tracing::info!(run_id = %record.run_id, workflow = %record.task, %status, "workflow run finished");
    // A workflow that is itself a step reports to its parent.
    if let (Some(parent), Some(step)) = (&record.parent, &record.step) {
        report_step(ctx, &record.task, parent, step, &record.run_id, status, None, error).await?;
    }
    Ok(())
}

async fn start_step(
    ctx: &Ctx,
    workflow: &RunRecord,
    name: &str,
    step: &Step,
    state: &WorkflowState,
) -> anyhow::Result<()> {
    let start = StepStart {
        workflow_run: workflow.run_id.clone(),
        workflow: workflow.task.clone(),
        step: name.to_string(),
        payload: step_payload(step, state),
        schedule: workflow.schedule.clone(),
        scheduled_for: workflow.scheduled_for,
    };
    let names = ctx.publisher.names();
    let run_id = step_run_id(&workflow.run_id, name);
    ctx.publisher
        .publish(
            names.step_subject(&step.task),
            HeaderMap::new(),
            &format!("step:{run_id}"),
            serde_json::to_vec(&start)?.into(),
        )
        .await?;
    tracing::debug!(%run_id, task = %step.task, "step started");
    Ok(())
}
