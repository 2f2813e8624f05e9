//! Schedules: each with its rule, its next fires (the preview), its latest
//! runs as coloured cells, and pause/resume/trigger-now/backfill buttons.

use axum::extract::{Path, State};
use axum::response::Response;
use futures::TryStreamExt;
use jetsched_contract::{Handles, ScheduleDef};
use jiff::Timestamp;
use maud::{Markup, html};

use super::auth::Session;
use super::stats::GridCell;
use super::view::{self, Page, Section};
use super::{Console, Req, failure, respond};

/// Next fires shown per schedule in the list.
const NEXT_IN_LIST: usize = 3;
/// Next fires shown on a schedule's page.
const NEXT_ON_PAGE: usize = 10;
/// Runs shown on a schedule's page.
const RUNS_ON_PAGE: usize = 50;

/// A stored schedule: parsed, or why it cannot be.
struct Stored {
    id: String,
    def: Result<ScheduleDef, String>,
    json: serde_json::Value,
}

async fn stored(h: &Handles) -> anyhow::Result<Vec<Stored>> {
    let mut keys: Vec<String> = h.schedules.keys().await?.try_collect().await?;
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for id in keys {
        let Some(value) = h.schedules.get(&id).await? else { continue };
        let json = serde_json::from_slice(&value).unwrap_or(serde_json::Value::Null);
        out.push(Stored { def: ScheduleDef::from_json(&id, &value), id, json });
    }
    Ok(out)
}

/// `GET /schedules`.
pub async fn list(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let schedules = match stored(c.h()).await {
        Ok(s) => s,
        Err(err) => return failure(&session, err),
    };
    let grids: Vec<Vec<GridCell>> = match c.0.stats.lock() {
        Ok(stats) => schedules.iter().map(|s| stats.grid(&s.id)).collect(),
        Err(_) => vec![Vec::new(); schedules.len()],
    };
    let now = Timestamp::now();
    let body = html! {
        h1 { "Schedules" }
        @if schedules.is_empty() { p { "No schedule. Add one with " code { "jetsched schedule put" } "." } }
        table.grid #schedules {
            thead { tr { th { "schedule" } th { "task" } th { "rule" } th { "next fires (UTC)" } th { "latest runs" } th {} } }
            tbody {
                @for (s, grid) in schedules.iter().zip(&grids) {
                    tr data-schedule=(s.id) {
                        td.mono { a href={ "/schedules/" (s.id) } { (s.id) } }
                        @match &s.def {
                            Ok(def) => {
                                td.mono { (def.task_name(&s.id)) }
                                td { (crate::schedule::describe(def)) @if def.paused { " " span.badge.s-cancelled { "paused" } } }
                                td { (next_fires(def, now, NEXT_IN_LIST)) }
                            }
                            Err(err) => { td {} td colspan="2" { span.badge.s-invalid { "invalid" } " " span.err { (err) } } }
                        }
                        td { (cells(grid)) }
                        td { (buttons(&session, s)) }
                    }
                }
            }
        }
        p.note { "Latest runs: the runs of each schedule the console saw in the events stream (from an hour before it started), oldest left; a schedule's page lists its runs from the runs bucket." }
    };
    respond(Page::new("Schedules", Section::Schedules, &session).live_part(""), body, &params)
}

/// The next `n` fire times, or why there are none.
fn next_fires(def: &ScheduleDef, now: Timestamp, n: usize) -> Markup {
    if def.paused {
        return html! { span.note { "paused" } };
    }
    match crate::schedule::fire_times(def, now, n) {
        Ok(times) if times.is_empty() => html! { span.note { "no more fires" } },
        Ok(times) => html! { ul.fires { @for t in times { li { (t) } } } },
        Err(err) => html! { span.err { (format!("{err:#}")) } },
    }
}

/// One coloured cell per run, like Airflow's grid.
fn cells(grid: &[GridCell]) -> Markup {
    html! {
        span.cells {
            @for cell in grid {
                a class={ "cell s-" (cell.status.as_str()) } href={ "/runs/" (cell.run_id) }
                    title={ (cell.run_id) ": " (cell.status.as_str()) } {}
            }
        }
    }
}

fn buttons(session: &Session, s: &Stored) -> Markup {
    let base = format!("/actions/schedules/{}", s.id);
    let paused = s.def.as_ref().is_ok_and(|d| d.paused);
    html! {
        @if paused { (view::action(session, &format!("{base}/resume"), "Resume", &[])) }
        @else { (view::action(session, &format!("{base}/pause"), "Pause", &[])) }
        (view::action(session, &format!("{base}/trigger"), "Trigger now", &[]))
    }
}

/// `GET /schedules/{id}`.
pub async fn one(State(c): State<Console>, Path(id): Path<String>, Req { session, params }: Req) -> Response {
    let h = c.h();
    let value = match h.schedules.get(&id).await {
        Ok(Some(v)) => v,
        Ok(None) => return failure(&session, crate::admin::bad(format!("no schedule named {id}"))),
        Err(err) => return failure(&session, err.into()),
    };
    let s = Stored {
        def: ScheduleDef::from_json(&id, &value),
        json: serde_json::from_slice(&value).unwrap_or(serde_json::Value::Null),
        id: id.clone(),
    };
    let args = crate::runlist::ListArgs {
        schedule: Some(id.clone()),
        limit: RUNS_ON_PAGE,
        ..crate::runlist::ListArgs::default()
    };
    let runs = match crate::runlist::page(c.runs(), &args).await {
        Ok(p) => p.runs,
        Err(err) => return failure(&session, err),
    };
    let now = Timestamp::now();
    let body = html! {
        h1 { "Schedule " span.mono { (id) } }
        @match &s.def {
            Ok(def) => {
                p { (crate::schedule::describe(def)) " · task " span.mono { (def.task_name(&id)) }
                    @if def.paused { " " span.badge.s-cancelled { "paused" } } }
                div.actions {
                    (buttons(&session, &s))
                    @if let Some(csrf) = session.csrf() {
                        form.inline method="post" action={ "/actions/schedules/" (id) "/backfill" } {
                            input type="hidden" name="csrf" value=(csrf);
                            label { "Backfill from " input type="datetime-local" name="from" step="1" required; }
                            label { " to " input type="datetime-local" name="to" step="1" required; }
                            " (" (def.timezone.as_deref().unwrap_or("UTC")) ") " button type="submit" { "Backfill" }
                        }
                    }
                }
                h2 { "Next fires" }
                (next_fires(def, now, NEXT_ON_PAGE))
            }
            Err(err) => p { span.badge.s-invalid { "invalid" } " " span.err { (err) } }
        }
        h2 { "Latest runs" }
        table.grid {
            thead { tr { th { "run" } th { "status" } th { "scheduled for" } th { "attempt" } th { "updated" } th { "error" } } }
            tbody {
                @for r in &runs {
                    tr {
                        td { (view::run_link(&r.run_id)) }
                        td { (view::badge(r.status)) }
                        td { @if let Some(t) = r.scheduled_for { (t) } }
                        td { (r.attempt) }
                        td { (view::time(r.updated_at)) }
                        td.err { @if let Some(e) = &r.error { (view::cut(e, 300).0) } }
                    }
                }
            }
        }
        @if runs.is_empty() { p.note { "No run of this schedule is stored (run records are kept 7 days)." } }
        h2 { "Definition" }
        (view::json(&s.json))
    };
    let live = format!("schedule={}", view::url_encode(&id));
    respond(Page::new(&id, Section::Schedules, &session).live_part(live), body, &params)
}
