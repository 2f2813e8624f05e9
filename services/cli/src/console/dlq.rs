//! Dead letters: the newest ones (the CLI's `dlq list`), one letter's
//! headers and body, and replay of one or many (the CLI's `dlq replay`).

use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;

use super::view::{self, Page, Section};
use super::{Console, Req, failure, respond};

/// Letters listed.
const SHOWN: usize = 200;

/// `GET /dlq?task=`.
pub async fn list(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let task = params.get("task");
    let letters = match crate::dlq::entries(c.h(), task, SHOWN).await {
        Ok(l) => l,
        Err(err) => return failure(&session, err),
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Dead letters" }
        form.filters method="get" action="/dlq" {
            label { "task " input name="task" value=[task] size="16"; } " " button type="submit" { "Filter" }
        }
        @if letters.is_empty() { p #no-letters { "The dead-letter queue is empty." } }
        form #replay method="post" action="/actions/dlq/replay" {
            @if let Some(csrf) = csrf { input type="hidden" name="csrf" value=(csrf); }
            table.grid #letters {
                thead { tr { @if csrf.is_some() { th {} } th { "#" } th { "stored" } th { "task" } th { "run" } th { "reason" } } }
                tbody {
                    @for d in letters.iter().rev() {
                        tr data-seq=(d.seq) {
                            @if csrf.is_some() { td { input type="checkbox" name="seq" value=(d.seq); } }
                            td { a href={ "/dlq/" (d.seq) } { "#" (d.seq) } }
                            td { (view::time(d.at)) }
                            td.mono { (d.task) }
                            td { @match &d.run_id { Some(r) => (view::run_link(r)), None => "-" } }
                            td.err { (view::cut(&d.reason, 300).0) }
                        }
                    }
                }
            }
            @if csrf.is_some() && !letters.is_empty() { button type="submit" #replay-selected { "Replay selected" } }
        }
        p.note { "Replaying resubmits a dead run's payload with Jetsched-Replay-Of and the idempotency key replay-<#>: the same letter replayed twice runs once." }
    };
    respond(Page::new("Dead letters", Section::DeadLetters, &session), body, &params)
}

/// `GET /dlq/{seq}`.
pub async fn one(State(c): State<Console>, Path(seq): Path<u64>, Req { session, params }: Req) -> Response {
    let h = c.h();
    let found = async {
        let stream = h.js.get_stream(h.names.dlq_stream()).await?;
        let msg =
            stream.get_raw_message(seq).await.map_err(|e| crate::admin::bad(format!("no dead letter #{seq}: {e}")))?;
        anyhow::Ok(msg)
    }
    .await;
    let msg = match found {
        Ok(m) => m,
        Err(err) => return failure(&session, err),
    };
    let mut headers_shown: Vec<(String, String)> = msg
        .headers
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string())))
        .collect();
    headers_shown.sort();
    let body_text = match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&msg.payload).into_owned(),
    };
    let title = format!("Dead letter #{seq}");
    let body = html! {
        h1 { (title) }
        div.actions { (view::action(&session, "/actions/dlq/replay", "Replay", &[("seq", &seq.to_string())])) }
        p { "Subject " span.mono { (msg.subject) } " · stored " (view::time(jiff::Timestamp::from_nanosecond(msg.time.unix_timestamp_nanos()).unwrap_or_default())) }
        table.facts { @for (k, v) in &headers_shown { tr { th.mono { (k) } td.mono { (view::cut(v, 2_000).0) } } } }
        h2 { "Body" }
        div #letter-body { (view::capped(&body_text)) }
    };
    respond(Page::new(&title, Section::DeadLetters, &session), body, &params)
}
