//! `GET /live`: server-sent events for live pages. Each event of the events
//! stream that matches the page's filter (`task`, `status`, `schedule`,
//! `run`, `workflow` query parameters) is sent as `event: run` with the
//! row already rendered; `event: tick` every few seconds lets the overview
//! redraw its charts; `event: lagged` tells a page that fell more than the
//! buffer behind to reload.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use jetsched_contract::RunEvent;
use tokio::sync::broadcast::error::RecvError;

use super::feed::Live;
use super::{Console, Params};

/// How often a `tick` is sent.
const TICK: Duration = Duration::from_secs(5);

/// What a page listens for.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    task: Option<String>,
    status: Option<String>,
    schedule: Option<String>,
    run: Option<String>,
    workflow: Option<String>,
}

impl Filter {
    fn from(params: &Params) -> Filter {
        let get = |k: &str| params.get(k).map(str::to_string);
        Filter {
            task: get("task"),
            status: get("status"),
            schedule: get("schedule"),
            run: get("run"),
            workflow: get("workflow"),
        }
    }

    /// Whether `e` is for this page.
    pub fn matches(&self, e: &RunEvent) -> bool {
        let run = e.run_id.as_deref();
        self.task.as_deref().is_none_or(|t| e.task == t)
            && self.status.as_deref().is_none_or(|s| e.status.as_str() == s)
            && self.schedule.as_deref().is_none_or(|s| e.schedule.as_deref() == Some(s))
            && self.run.as_deref().is_none_or(|r| run == Some(r))
            && self.workflow.as_deref().is_none_or(|w| run == Some(w) || e.workflow_run.as_deref() == Some(w))
    }
}

/// The event stream of one page.
pub async fn stream(
    State(c): State<Console>,
    RawQuery(query): RawQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let filter = Filter::from(&Params::query(query.as_deref()));
    let rx = c.0.live.subscribe();
    let shutdown = c.0.shutdown.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (rx, tick, filter, shutdown);
    let events = futures::stream::unfold(state, |(mut rx, mut tick, filter, shutdown)| async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return None,
                // (With data: browsers do not dispatch an event without any.)
                _ = tick.tick() => Event::default().event("tick").data("tick"),
                got = rx.recv() => match got {
                    Ok(live) => match send(&filter, &live) {
                        Some(event) => event,
                        None => continue,
                    },
                    Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                    Err(RecvError::Closed) => return None,
                },
            };
            return Some((Ok(event), (rx, tick, filter, shutdown)));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `GET /live/logs?run=<id>&from=<seq>`: a run's task log chunks from
/// stream sequence `from` on, as they are stored (`event: log`, data: JSON
/// `{"attempt", "source", "text", "seq"}`; the page inserts the text as text).
pub async fn logs(State(c): State<Console>, RawQuery(query): RawQuery) -> Response {
    let params = Params::query(query.as_deref());
    let Some(run) = params.get("run") else { return (StatusCode::BAD_REQUEST, "run is missing\n").into_response() };
    let from = params.get("from").and_then(|f| f.parse().ok()).unwrap_or(1);
    let chunks = match crate::logs::follow(c.h(), run, from).await {
        Ok((_, chunks)) => chunks,
        Err(err) => return (StatusCode::BAD_GATEWAY, format!("{err:#}\n")).into_response(),
    };
    let events = chunks
        .map(|chunk| {
            let event = match chunk {
                Ok(c) => {
                    let data =
                        serde_json::json!({"attempt": c.attempt, "source": c.source, "text": c.text, "seq": c.seq});
                    Event::default().event("log").data(data.to_string())
                }
                Err(err) => Event::default().event("failed").data(format!("{err:#}")),
            };
            Ok::<_, Infallible>(event)
        })
        .take_until(c.0.shutdown.clone().cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn send(filter: &Filter, live: &Arc<Live>) -> Option<Event> {
    filter.matches(&live.event).then(|| Event::default().event("run").data(live.row.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsched_contract::RunStatus;

    #[test]
    fn filters_by_every_field_and_a_workflow_takes_its_steps() {
        let mut step = RunEvent::new(RunStatus::Started, "extract", Some("w.1.extract".into()));
        step.workflow_run = Some("w.1".into());
        let params = Params::parse(b"workflow=w.1");
        assert!(Filter::from(&params).matches(&step));
        assert!(!Filter::from(&Params::parse(b"workflow=w.2")).matches(&step));
        assert!(Filter::from(&Params::parse(b"task=extract&status=started")).matches(&step));
        assert!(!Filter::from(&Params::parse(b"task=extract&status=failed")).matches(&step));
        assert!(!Filter::from(&Params::parse(b"schedule=s")).matches(&step));
        assert!(Filter::from(&Params::parse(b"")).matches(&step));
    }
}
