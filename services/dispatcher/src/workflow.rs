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
use jetsched_runtime::{Change, Known, Stored};
use jiff::Timestamp;

use crate::ctx::{
    Accepted, Created, Ctx, DISPATCHING, Disposition, Inbox, RETRY, create_record, new_record, report_step,
};

/// Starts workflow run `a`: its record (announced `started`), its root steps.
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
    let stored = match create_record(ctx, record).await {
        Ok(Created::New(stored) | Created::Again(stored)) => stored,
        Ok(Created::Duplicate) => return Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot create workflow record; will retry");
            DISPATCHING.failed(&format_args!("cannot create workflow record: {err}"));
            return RETRY;
        }
    };
    match progress(ctx, &steps, stored).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::debug!(run_id = %a.run_id, %err, "cannot start the workflow's steps; will retry");
            DISPATCHING.failed(&format_args!("cannot start the workflow's steps: {err}"));
            RETRY
        }
    }
}

/// Records a step's outcome in its workflow run and moves the workflow on.
pub async fn advance(ctx: &Ctx, msg: &Inbox<'_>) -> Disposition {
    let outcome: StepOutcome = match serde_json::from_slice(msg.payload) {
        Ok(o) => o,
        Err(err) => {
            tracing::error!(%err, "malformed step outcome; dropped");
            return Disposition::Ack;
        }
    };
    let workflow_run = outcome.workflow_run.clone();
    let recorded = ctx
        .runs
        .update(&workflow_run, Known::Read, |current| {
            let Some(record) = current else { return Change::Keep(false) };
            let mut next = record.clone();
            let Some(state) = next.workflow.as_mut() else { return Change::Keep(false) };
            let step = state.steps.entry(outcome.step.clone()).or_default();
            // Already recorded (a redelivered outcome): just make sure the
            // workflow moved on.
            if step.status.is_some_and(RunStatus::is_terminal) || record.status.is_terminal() {
                return Change::Keep(true);
            }
            step.status = Some(outcome.status);
            step.run_id = Some(outcome.run_id.clone());
            step.result = outcome.result.clone();
            step.error = outcome.error.clone();
            Change::Write(next, true)
        })
        .await;
    let stored = match recorded {
        Ok((true, Some(stored))) => stored,
        Ok(_) => {
            tracing::warn!(%workflow_run, "step outcome for an unknown workflow run; dropped");
            return Disposition::Ack;
        }
        Err(err) => {
            tracing::debug!(%workflow_run, %err, "cannot record a step outcome; will retry");
            DISPATCHING.failed(&format_args!("cannot record a step outcome: {err}"));
            return RETRY;
        }
    };
    let steps = match ctx.tasks.get(&stored.record.task).await {
        Ok(Some(Ok(def))) => def.steps.clone().unwrap_or_default(),
        Ok(_) => {
            tracing::warn!(workflow = %stored.record.task, "workflow definition gone; it cannot move on");
            return Disposition::Ack;
        }
        Err(err) => {
            DISPATCHING.failed(&format_args!("cannot read workflow definition: {err}"));
            return RETRY;
        }
    };
    match progress(ctx, &steps, stored).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::debug!(%err, "cannot move the workflow on; will retry");
            DISPATCHING.failed(&format_args!("cannot move the workflow on: {err}"));
            RETRY
        }
    }
}

/// Starts or skips every step whose fate is known, until none is; then, if
/// every step has an outcome, ends the workflow run.
async fn progress(ctx: &Ctx, steps: &BTreeMap<String, Step>, mut stored: Stored) -> anyhow::Result<()> {
    loop {
        let record = &stored.record;
        let Some(state) = record.workflow.clone() else { return Ok(()) };
        if record.status.is_terminal() {
            return Ok(());
        }
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
                    start_step(ctx, record, &name, step, &state).await?;
                    entry.status = Some(RunStatus::Queued);
                    entry.run_id = Some(run_id);
                }
                Decision::Skip(reason) => {
                    skip_step(ctx, record, &name, step, &run_id, &reason).await?;
                    entry.status = Some(RunStatus::Skipped);
                    entry.run_id = Some(run_id);
                    entry.error = Some(reason);
                }
            }
        }
        // Written on the record read: a conflict (an outcome recorded
        // meanwhile) fails this try, and the message that brought us here
        // is redelivered and starts over from the stored state.
        let written = RunRecord { workflow: Some(next), ..record.clone() };
        stored = write_if_unchanged(ctx, &stored, written).await?;
    }
    let record = &stored.record;
    let Some(state) = &record.workflow else { return Ok(()) };
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
    let finished = RunRecord { status, error: error.clone(), ..record.clone() };
    let done = write_if_unchanged(ctx, &stored, finished).await?.record;
    tracing::info!(run_id = %done.run_id, workflow = %done.task, %status, "workflow run finished");
    // A workflow that is itself a step reports to its parent.
    if let (Some(parent), Some(step)) = (&done.parent, &done.step) {
        report_step(ctx, &done.task, parent, step, &done.run_id, done.status, None, done.error.clone()).await?;
    }
    Ok(())
}

/// Writes `next` over `base` if the record is still `base`; an error if it
/// changed meanwhile (the caller's message is redelivered and starts over).
async fn write_if_unchanged(ctx: &Ctx, base: &Stored, next: RunRecord) -> anyhow::Result<Stored> {
    let expected = base.record.clone();
    let (written, now) = ctx
        .runs
        .update(&expected.run_id, Known::Is(base.clone()), |current| match current {
            Some(c) if *c == expected => Change::Write(next.clone(), true),
            _ => Change::Keep(false),
        })
        .await?;
    match (written, now) {
        (true, Some(now)) => Ok(now),
        _ => anyhow::bail!("workflow record {} changed meanwhile; starting over", expected.run_id),
    }
}

/// Records a step skipped by its trigger rule (a record of its own, so that
/// `runs get` and the events show it, announced `skipped`).
async fn skip_step(
    ctx: &Ctx,
    workflow: &RunRecord,
    name: &str,
    step: &Step,
    run_id: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let record = RunRecord {
        schedule: workflow.schedule.clone(),
        scheduled_for: workflow.scheduled_for,
        parent: Some(workflow.run_id.clone()),
        step: Some(name.to_string()),
        error: Some(reason.to_string()),
        ..RunRecord::new(run_id, &step.task, RunStatus::Skipped, &workflow.queue, 0, workflow.source_seq)
    };
    if let Err(existing) = ctx.runs.create(record).await? {
        // Recorded by an earlier try: its event may not have gone out.
        ctx.runs.announce(&existing.record).await?;
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
