//! Runs: a filtered, paged list (the CLI's `runs list`), and a run's page:
//! its record, timeline, payload and output (size-capped), trace id,
//! checkpoint, logs, workflow graph, and cancel/retry buttons.

use axum::extract::{Path, State};
use axum::response::Response;
use jetsched_contract::{Handles, RunEvent, RunRecord, RunStatus, WorkItem};
use jiff::Timestamp;
use maud::{Markup, html};

use super::view::{self, Page, Section};
use super::{Console, Req, failure, respond, respond_with};
use crate::runlist::ListArgs;

/// Runs per page of the list.
const PAGE: usize = 50;
/// Dead letters searched for a run's payload.
const DLQ_SEARCH: usize = 1_000;

/// `GET /runs?task=&schedule=&status=&since=&until=&before=`.
pub async fn list(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let when = |name: &str| -> anyhow::Result<Option<Timestamp>> {
        params
            .get(name)
            .map(|v| crate::runlist::parse_when(v).map_err(|e| crate::admin::bad(format!("{name}: {e}"))))
            .transpose()
    };
    let args = (|| -> anyhow::Result<ListArgs> {
        Ok(ListArgs {
            task: params.get("task").map(str::to_string),
            schedule: params.get("schedule").map(str::to_string),
            status: params.get("status").map(str::to_string),
            since: when("since")?,
            until: when("until")?,
            before: params.get("before").and_then(|b| b.parse().ok()),
            limit: PAGE,
        })
    })();
    let page = match args {
        Ok(args) => crate::runlist::page(c.runs(), &args).await.map(|p| (args, p)),
        Err(err) => Err(err),
    };
    let (args, found) = match page {
        Ok(p) => p,
        Err(err) => return failure(&session, err),
    };
    // The live stream takes the same filters (time filters aside).
    let mut live = Vec::new();
    for key in ["task", "schedule", "status"] {
        if let Some(v) = params.get(key) {
            live.push(format!("{key}={}", view::url_encode(v)));
        }
    }
    let next = found.next.map(|n| {
        let mut q: Vec<String> = params
            .0
            .iter()
            .filter(|(k, v)| k != "before" && k != "part" && !v.is_empty())
            .map(|(k, v)| format!("{k}={}", view::url_encode(v)))
            .collect();
        q.push(format!("before={n}"));
        q.join("&")
    });
    let live_rows = args.before.is_none() && args.until.is_none();
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" {
            label { "task " input name="task" value=[args.task.as_deref()] size="14"; }
            label { " schedule " input name="schedule" value=[args.schedule.as_deref()] size="14"; }
            label { " status "
                select name="status" {
                    option value="" { "any" }
                    @for s in RunStatus::ALL {
                        option value=(s.as_str()) selected[args.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { " since " input name="since" value=[params.get("since")] placeholder="1h or RFC 3339" size="12"; }
            label { " until " input name="until" value=[params.get("until")] placeholder="RFC 3339" size="12"; }
            " " button type="submit" { "Filter" }
        }
        (view::event_table(html! { @for r in &found.runs { (view::record_row(r)) } }))
        @if found.runs.is_empty() { p.note #no-runs { "No run matches." } }
        @if let Some(next) = next { p { a href={ "/runs?" (next) } { "Older runs →" } } }
        @if live_rows { p.note { "New runs matching the filter appear at the top as they happen." } }
    };
    let page = Page::new("Runs", Section::Runs, &session).live_rows(live_rows.then(|| live.join("&")));
    respond(page, body, &params)
}

/// Where a run's payload was found.
struct Payload {
    value: serde_json::Value,
    from: String,
}

/// The run's payload, from wherever it is still kept: the workflow record,
/// the work item in the tasks stream (while the run is not finished), its
/// dead letter, or its schedule's current definition.
async fn payload(h: &Handles, r: &RunRecord) -> anyhow::Result<(Option<Payload>, Option<crate::dlq::DeadLetter>)> {
    let dead = if matches!(r.status, RunStatus::Dead | RunStatus::Expired) {
        crate::dlq::find_run(h, &r.task, &r.run_id, DLQ_SEARCH).await?
    } else {
        None
    };
    if let Some(w) = &r.workflow {
        return Ok((Some(Payload { value: w.payload.clone(), from: "the workflow run's record".into() }), dead));
    }
    if let Some(d) = &dead {
        return Ok((Some(Payload { value: d.payload(), from: format!("its dead letter #{}", d.seq) }), dead));
    }
    if !r.status.is_terminal()
        && let Some(seq) = r.task_seq
        && let Ok(msg) = h.js.get_stream(h.names.tasks_stream()).await?.get_raw_message(seq).await
        && let Ok(item) = serde_json::from_slice::<WorkItem>(&msg.payload)
        && item.run_id == r.run_id
    {
        return Ok((Some(Payload { value: item.payload, from: format!("its work item (tasks stream #{seq})") }), dead));
    }
    if let Some(schedule) = &r.schedule
        && let Some(value) = h.schedules.get(schedule).await?
        && let Ok(def) = jetsched_contract::ScheduleDef::from_json(schedule, &value)
    {
        let value = def.payload.clone().unwrap_or_default();
        return Ok((Some(Payload { value, from: format!("schedule {schedule}'s current definition") }), dead));
    }
    Ok((None, dead))
}

/// `GET /runs/{id}`.
pub async fn one(State(c): State<Console>, Path(id): Path<String>, Req { session, params }: Req) -> Response {
    match run_body(&c, &session, &id).await {
        Ok((body, live)) => {
            let logs = logs(c.h(), &id).await;
            respond_with(Page::new(&id, Section::Runs, &session).live_part(live), body, logs, &params)
        }
        Err(err) => failure(&session, err),
    }
}

async fn run_body(c: &Console, session: &super::auth::Session, id: &str) -> anyhow::Result<(Markup, String)> {
    let h = c.h();
    let record = c
        .runs()
        .get(id)
        .await?
        .ok_or_else(|| crate::admin::bad(format!("no run {id} (run records are kept 7 days)")))?
        .record;
    let events = crate::inspect::timeline(h, c.runs(), &record).await?;
    let (payload, dead) = payload(h, &record).await?;
    let checkpoint = h.checkpoints.get(id).await?;
    let mut workflow = None;
    if let (Some(state), Some(def)) = (&record.workflow, h.tasks.get(&record.task).await?)
        && let Some(steps) = jetsched_contract::TaskDef::from_json(&def).ok().and_then(|d| d.steps)
    {
        let live = super::workflows::step_statuses(c, state).await?;
        workflow = Some(super::workflows::graph(&steps, state, &live));
    }
    let live = match &record.workflow {
        Some(_) => format!("workflow={}", view::url_encode(id)),
        None => format!("run={}", view::url_encode(id)),
    };
    let base = format!("/actions/runs/{id}");
    let body = html! {
        h1 { "Run " span.mono #run-id { (id) } " " span #run-status { (view::badge(c.current(id, record.status))) } }
        div.actions {
            @if !record.status.is_terminal() { (view::action(session, &format!("{base}/cancel"), "Cancel", &[])) }
            @if let Some(d) = &dead { (view::action(session, &format!("{base}/retry"), "Retry", &[("seq", &d.seq.to_string())])) }
        }
        table.facts {
            tr { th { "task" } td.mono { a href={ "/runs?task=" (view::url_encode(&record.task)) } { (record.task) } } }
            @if let Some(s) = &record.schedule { tr { th { "schedule" } td.mono { a href={ "/schedules/" (s) } { (s) } } } }
            @if let Some(t) = record.scheduled_for { tr { th { "scheduled for" } td { (t) } } }
            tr { th { "queue, band" } td.mono { (record.queue) ", " (record.band) } }
            tr { th { "attempts" } td { (record.attempt) } }
            @if let Some(w) = &record.worker { tr { th { "worker" } td.mono { (w) } } }
            @if let Some(p) = &record.parent { tr { th { "workflow run" } td { (view::run_link(p)) " step " span.mono { (record.step.as_deref().unwrap_or("")) } } } }
            @if let Some(r) = &record.replay_of { tr { th { "replays" } td { (view::run_link(r)) } } }
            tr { th { "trace id" } td.mono #trace-id { (record.trace_id.as_deref().unwrap_or("-")) } }
            @if let Some(e) = &record.error { tr { th { "error" } td.err { (view::cut(e, 2_000).0) } } }
        }
        @if let Some(graph) = workflow { h2 { "Workflow" } (graph) }
        h2 { "Timeline" }
        (timeline(&record, &events))
        h2 { "Payload" }
        @match &payload {
            Some(p) => { p.note { "From " (p.from) "." } div #payload { (view::json(&p.value)) } }
            None => p.note { "Not kept: a run's payload lives in its work item, which leaves the tasks stream when the run ends." }
        }
        h2 { "Output" }
        @if let Some(result) = &record.result { div #result { (view::json(result)) } }
        @for e in events.iter().filter(|e| e.output.is_some()) {
            p.note { "Attempt " (e.attempt) " (" (e.status.as_str()) "):" }
            (view::capped(e.output.as_deref().unwrap_or_default()))
        }
        @if record.result.is_none() && events.iter().all(|e| e.output.is_none()) { p.note { "None recorded." } }
        @if let Some(cp) = checkpoint {
            h2 { "Last checkpoint" }
            (view::capped(&String::from_utf8_lossy(&cp)))
        }
    };
    Ok((body, live))
}

/// The run's events on a time line: offset from the first, and a bar.
fn timeline(record: &RunRecord, events: &[RunEvent]) -> Markup {
    let Some(first) = events.first().map(|e| e.at) else {
        return html! { p.note { "No change of this run is stored." } };
    };
    let last = events.last().map_or(first, |e| e.at).max(record.updated_at);
    let span = last.duration_since(first).as_secs_f64().max(0.001);
    // Each event's bar runs until the next event: waiting, running, waiting to retry.
    let pct = |t: Timestamp| t.duration_since(first).as_secs_f64() / span * 98.0;
    html! {
        ol.timeline #timeline {
            @for (i, e) in events.iter().enumerate() {
                @let offset = e.at.duration_since(first).as_secs_f64();
                @let until = events.get(i + 1).map_or(e.at, |n| n.at);
                @let width = (pct(until) - pct(e.at)).max(0.6);
                li data-status=(e.status.as_str()) {
                    span.bar style={ "margin-left:" (format!("{:.2}", pct(e.at))) "%;width:" (format!("{width:.2}")) "%" } {}
                    span.off { "+" (format!("{offset:.3}")) " s" }
                    (view::badge(e.status))
                    @if e.attempt > 0 { " attempt " (e.attempt) }
                    @if let Some(ms) = e.duration_ms { " · " (ms) " ms" }
                    @if let Some(w) = &e.worker { " · on " span.mono { (w) } }
                    @if let Some(t) = e.retry_at { " · retry at " (t) }
                    " · " (view::time(e.at))
                    @if let Some(err) = &e.error { div.err { (view::cut(err, 2_000).0) } }
                }
            }
        }
    }
}

/// Most log text shown when the page loads (the rest with `jetsched runs logs`).
const LOG_SHOWN: usize = 64 * 1024;

/// The run's task logs, then live: the page's script streams what comes
/// next from `/live/logs`.
async fn logs(h: &Handles, id: &str) -> Markup {
    let (chunks, cut) = match crate::logs::read(h, id, 1, LOG_SHOWN).await {
        Ok(r) => r,
        Err(err) => return html! { h2 { "Logs" } p.err { "cannot read the logs: " (format!("{err:#}")) } },
    };
    let next = chunks.last().map_or(1, |c| c.seq + 1);
    html! {
        h2 { "Logs" }
        @if cut { p.note { "Only the first " (LOG_SHOWN / 1024) " KiB are shown; " code { "jetsched runs logs " (id) } " prints all." } }
        section #logs data-run=(id) data-next=(next) {
            pre.data.log #log-text {
                @for (i, c) in chunks.iter().enumerate() {
                    @let changed = i == 0 || (chunks[i - 1].attempt, &chunks[i - 1].source) != (c.attempt, &c.source);
                    @if changed { span.src data-key={ (c.attempt) "/" (c.source) } { "attempt " (c.attempt) " · " (c.source) "\n" } }
                    span { (c.text) }
                }
            }
            @if chunks.is_empty() { p.note #no-logs { "No output stored yet." } }
        }
    }
}
