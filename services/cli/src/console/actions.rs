//! Actions, all `POST`s checked by [`super::auth::Auth::authorize`], each
//! one of the CLI's own functions (the same NATS operations as `jetsched
//! schedule pause|resume|trigger`, `runs cancel`, `dlq replay`). After an
//! action the browser is sent back (303) to the page, with what was done.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use jetsched_contract::Handles;
use jetsched_runtime::RunStore;

use super::view::url_encode;
use super::{Console, Params};
use crate::admin::{BadInput, bad};

/// Checks the request and runs `act`, which returns where to go and what to say.
async fn act<F>(c: &Console, headers: &HeaderMap, params: &Params, act: F) -> Response
where
    F: Future<Output = anyhow::Result<(String, String)>>,
{
    if let Err(refusal) = c.0.auth.authorize(headers, params.get("csrf")) {
        return (StatusCode::FORBIDDEN, format!("{}\n", refusal.message())).into_response();
    }
    match act.await {
        Ok((to, done)) => {
            tracing::info!(%done, "console action");
            let sep = if to.contains('?') { '&' } else { '?' };
            Redirect::to(&format!("{to}{sep}done={}", url_encode(&done))).into_response()
        }
        Err(err) if err.downcast_ref::<BadInput>().is_some() => {
            (StatusCode::BAD_REQUEST, format!("{err:#}\n")).into_response()
        }
        Err(err) => {
            tracing::warn!(err = %format!("{err:#}"), "console action failed");
            (StatusCode::BAD_GATEWAY, format!("{err:#}\n")).into_response()
        }
    }
}

/// `POST /actions/{schedules|runs}/{id}/{verb}`.
pub async fn verb(
    State(c): State<Console>,
    Path((kind, id, verb)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let params = Params::parse(&body);
    let h = c.h().clone();
    act(&c, &headers, &params, async {
        match kind.as_str() {
            "schedules" => schedule(&h, &id, &verb, &params).await,
            "runs" => run(&h, c.runs(), &id, &verb, &params).await,
            _ => Err(bad(format!("unknown action on {kind:?}"))),
        }
    })
    .await
}

/// A schedule's `pause`, `resume`, `trigger` or `backfill` (form fields `from`, `to`).
async fn schedule(h: &Handles, id: &str, verb: &str, params: &Params) -> anyhow::Result<(String, String)> {
    use crate::schedule::PauseChange;
    let back = format!("/schedules/{}", url_encode(id));
    match verb {
        "pause" | "resume" => {
            let paused = verb == "pause";
            let done = match crate::schedule::set_paused(h, id, paused).await? {
                PauseChange::Already => {
                    format!("schedule {id} was already {}", if paused { "paused" } else { "running" })
                }
                PauseChange::Changed(rev) => format!("schedule {id} {verb}d (revision {rev})"),
            };
            Ok((back, done))
        }
        "trigger" => {
            let run = crate::schedule::trigger(h, id, None).await?;
            Ok((back, format!("schedule {id} triggered: run {run}")))
        }
        "backfill" => {
            let from = params.get("from").ok_or_else(|| bad("from is missing"))?;
            let to = params.get("to").ok_or_else(|| bad("to is missing"))?;
            let plan = crate::backfill::plan(h, id, from, to, crate::backfill::DEFAULT_MAX_IN_FLIGHT).await?;
            let (from, to, total) = (plan.record.from, plan.record.to, plan.total);
            let backfill = crate::backfill::store(h, plan, None).await?;
            Ok((back, format!("backfill {backfill} of {id} stored: {total} fires from {from} to {to}")))
        }
        _ => Err(bad(format!("unknown action {verb:?}"))),
    }
}

/// A run's `cancel`, or `retry` (form field `seq`: the run's dead letter).
async fn run(h: &Handles, runs: &RunStore, id: &str, verb: &str, params: &Params) -> anyhow::Result<(String, String)> {
    let back = format!("/runs/{}", url_encode(id));
    match verb {
        "cancel" => {
            let status = crate::inspect::cancel(runs, id).await?;
            Ok((back, format!("cancel requested for {id} (it was {status})")))
        }
        "retry" => {
            let seq = params.get("seq").and_then(|s| s.parse().ok()).ok_or_else(|| bad("retry needs seq"))?;
            let run = crate::dlq::replay(h, seq).await?;
            Ok((back, format!("retried as {run}")))
        }
        _ => Err(bad(format!("unknown action {verb:?}"))),
    }
}

/// `POST /actions/dlq/replay` with one or more `seq` fields.
pub async fn replay(State(c): State<Console>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let params = Params::parse(&body);
    let h = c.h().clone();
    act(&c, &headers, &params, async {
        let seqs: Vec<u64> = params.all("seq").filter_map(|s| s.parse().ok()).collect();
        if seqs.is_empty() {
            return Err(bad("select at least one dead letter"));
        }
        let mut done = Vec::new();
        for seq in seqs {
            let run = crate::dlq::replay(&h, seq).await?;
            done.push(format!("#{seq} as {run}"));
        }
        Ok(("/dlq".to_string(), format!("replayed {}", done.join(", "))))
    })
    .await
}
