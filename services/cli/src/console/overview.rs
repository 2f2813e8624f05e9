//! The overview (charts over the last hour, service instances, latest
//! events) and the workers page.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use futures::TryStreamExt;
use jetsched_contract::ticker::{LeaseKey, parse_lease_key};
use jetsched_contract::{Handles, RunStatus};
use jiff::Timestamp;
use maud::{Markup, html};

use super::charts::{self, Line, PALETTE};
use super::stats::Stats;
use super::view::{self, Page, Section};
use super::{Console, Req, failure, respond};

/// Statuses drawn on the runs chart.
const DRAWN: [RunStatus; 5] =
    [RunStatus::Queued, RunStatus::Started, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Dead];

/// `GET /`.
pub async fn page(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let instances = match instances(c.h()).await {
        Ok(i) => i,
        Err(err) => return failure(&session, err),
    };
    let body = match c.0.stats.lock() {
        Ok(stats) => body(&stats, &instances),
        Err(_) => html! { p.err { "statistics unavailable" } },
    };
    respond(Page::new("Overview", Section::Overview, &session).live_part(""), body, &params)
}

fn body(stats: &Stats, instances: &Instances) -> Markup {
    let now = Timestamp::now().as_second();
    let rates: Vec<Line> = DRAWN
        .iter()
        .map(|s| Line {
            label: s.as_str().to_string(),
            color: charts::status_color(*s),
            points: stats.rate(*s),
            dots: false,
        })
        .collect();
    let lateness = vec![
        Line { label: "p50".into(), color: PALETTE[0], points: stats.lateness(0.5), dots: true },
        Line { label: "p99".into(), color: PALETTE[3], points: stats.lateness(0.99), dots: true },
    ];
    // Queues and bands that held nothing in the hour are left out.
    let backlog: Vec<Line> = stats
        .backlog()
        .filter(|(_, series)| series.iter().any(|(_, v)| *v > 0))
        .enumerate()
        .map(|(i, ((queue, band), series))| Line {
            label: format!("{queue} band {band}"),
            color: PALETTE[i % PALETTE.len()],
            points: series.iter().map(|(t, v)| (*t, *v as f64)).collect(),
            dots: series.len() < 2,
        })
        .collect();
    let failures = vec![
        Line {
            label: "failed/s".into(),
            color: charts::status_color(RunStatus::Failed),
            points: stats.rate(RunStatus::Failed),
            dots: false,
        },
        Line {
            label: "dead/s".into(),
            color: charts::status_color(RunStatus::Dead),
            points: stats.rate(RunStatus::Dead),
            dots: false,
        },
    ];
    let dlq = vec![Line {
        label: "messages".into(),
        color: PALETTE[4],
        points: stats.dlq().iter().map(|(t, v)| (*t, *v as f64)).collect(),
        dots: stats.dlq().len() < 2,
    }];
    let chart = |title: &str, unit: &str, id: &str, lines: &[Line]| match charts::render(title, unit, now, lines) {
        Ok(svg) => html! { figure #(id) { (view::svg(&svg)) } },
        Err(err) => html! { figure #(id) { p.err { "chart failed: " (err) } } },
    };
    let p = |q| stats.lateness_overall(q).map_or("-".to_string(), |ms| format!("{ms} ms"));
    let dlq_now = stats.dlq().back().map_or("-".to_string(), |(_, n)| n.to_string());
    html! {
        h1 { "Overview" }
        div.tiles {
            div.tile { span.n #n-succeeded { (stats.total(RunStatus::Succeeded)) } span { "succeeded, last hour" } }
            div.tile { span.n #n-failed { (stats.total(RunStatus::Failed)) } span { "failed attempts" } }
            div.tile { span.n #n-dead { (stats.total(RunStatus::Dead)) } span { "dead" } }
            div.tile { span.n { (p(0.5)) } span { "start lateness p50" } }
            div.tile { span.n { (p(0.99)) } span { "start lateness p99" } }
            div.tile { span.n #n-dlq { (dlq_now) } span { "in the DLQ" } }
        }
        div.charts {
            (chart("Runs per second by status", "runs/s", "chart-runs", &rates))
            (chart("Start lateness (fire to start)", "ms", "chart-lateness", &lateness))
            (chart("Backlog per queue and band", "runs", "chart-backlog", &backlog))
            (chart("Failures per second", "runs/s", "chart-failures", &failures))
            (chart("Dead-letter queue size", "messages", "chart-dlq", &dlq))
        }
        p.note { "Counts come from the events stream (an hour back when the console started, at most "
            (super::feed::MAX_HISTORY) " events); backlog and DLQ size are sampled every "
            (super::feed::SAMPLE_EVERY.as_secs()) " s since the console started." }
        h2 { "Services" }
        (instances.render())
        h2 { "Latest events" }
        (view::event_table(html! { @for e in stats.recent() { (view::event_row(&e)) } }))
    }
}

/// Tickers (their leases), the dispatchers' consumer, workers.
struct Instances {
    tickers: BTreeMap<String, TickerRow>,
    lease_ttl: Option<std::time::Duration>,
    free_partitions: u16,
    dispatch: Option<(u64, usize, usize)>,
    workers: Vec<jetsched_contract::WorkerInfo>,
}

#[derive(Default)]
struct TickerRow {
    partitions: u16,
    heartbeat: Option<Timestamp>,
    expires: Option<Timestamp>,
}

async fn instances(h: &Handles) -> anyhow::Result<Instances> {
    let mut out = Instances {
        tickers: BTreeMap::new(),
        lease_ttl: None,
        free_partitions: jetsched_contract::ticker::PARTITIONS,
        dispatch: None,
        workers: crate::inspect::workers(h).await?,
    };
    // No ticker ran yet: no leases bucket.
    if let Ok(leases) = h.js.get_key_value(h.names.ticker_leases_bucket()).await {
        let ttl = leases.status().await?.info.config.max_age;
        out.lease_ttl = Some(ttl);
        let keys: Vec<String> = leases.keys().await?.try_collect().await?;
        for key in keys {
            let Some(entry) = leases.entry(&key).await? else { continue };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let written = Timestamp::from_nanosecond(entry.created.unix_timestamp_nanos()).unwrap_or_default();
            let owner = String::from_utf8_lossy(&entry.value).to_string();
            match parse_lease_key(&key) {
                Some(LeaseKey::Member(id)) => out.tickers.entry(id.to_string()).or_default().heartbeat = Some(written),
                Some(LeaseKey::Lease(_)) => {
                    let row = out.tickers.entry(owner).or_default();
                    row.partitions += 1;
                    out.free_partitions = out.free_partitions.saturating_sub(1);
                    let expires = written.checked_add(jiff::SignedDuration::try_from(ttl)?)?;
                    row.expires = Some(row.expires.map_or(expires, |e: Timestamp| e.min(expires)));
                }
                None => {}
            }
        }
    }
    if let Ok(mut consumer) =
        h.js.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            h.names.dispatcher_consumer(),
            h.names.inbox_stream(),
        )
        .await
    {
        let info = consumer.info().await?;
        out.dispatch = Some((info.num_pending, info.num_ack_pending, info.num_waiting));
    }
    Ok(out)
}

impl Instances {
    fn render(&self) -> Markup {
        let now = Timestamp::now();
        let ago = |t: Timestamp| format!("{:.1} s ago", now.duration_since(t).as_secs_f64());
        html! {
            table.grid {
                thead { tr { th { "service" } th { "instance" } th { "holds" } th { "last heartbeat" } th { "lease expires" } } }
                tbody {
                    @for (id, t) in &self.tickers {
                        tr.ticker {
                            td { "ticker" } td.mono { (id) }
                            td { (view::plural(t.partitions as usize, "partition", "partitions")) }
                            td { @if let Some(hb) = t.heartbeat { (ago(hb)) } @else { "-" } }
                            td { @if let Some(e) = t.expires { "in " (format!("{:.1} s", e.duration_since(now).as_secs_f64())) } @else { "-" } }
                        }
                    }
                    @if self.tickers.is_empty() { tr { td { "ticker" } td colspan="4" { "none running" } } }
                    @if let Some((pending, in_flight, waiting)) = self.dispatch {
                        tr.dispatcher {
                            td { "dispatcher" } td { "consumer " span.mono { "dispatcher" } }
                            td { (pending) " waiting, " (in_flight) " in flight" }
                            td { (view::plural(waiting, "pull request", "pull requests")) " open" } td { "-" }
                        }
                    }
                    @for w in &self.workers {
                        tr.worker {
                            td { "worker" } td.mono { a href="/workers" { (w.id) } }
                            td { (w.busy) "/" (w.slots) " slots" }
                            td { (ago(w.heartbeat_at)) } td { "-" }
                        }
                    }
                }
            }
            @if let Some(ttl) = self.lease_ttl {
                p.note { "Ticker lease TTL " (jetsched_contract::HumanDuration(ttl)) "; "
                    (view::plural(self.free_partitions as usize, "partition", "partitions")) " held by no ticker." }
            }
        }
    }
}

/// `GET /workers`.
pub async fn workers(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let workers = match crate::inspect::workers(c.h()).await {
        Ok(w) => w,
        Err(err) => return failure(&session, err),
    };
    let now = Timestamp::now();
    let body = html! {
        h1 { "Workers" }
        @if workers.is_empty() { p { "No live worker." } }
        table.grid #workers {
            thead { tr { th { "worker" } th { "queues" } th { "slots in use" } th { "labels" } th { "last heartbeat" } th { "started" } th { "state" } } }
            tbody {
                @for w in &workers {
                    tr {
                        td.mono { (w.id) }
                        td.mono { (w.queues.join(", ")) }
                        td { meter min="0" max=(w.slots) value=(w.busy) {} " " (w.busy) "/" (w.slots) }
                        td.mono { @for (k, v) in &w.labels { span.label { (k) "=" (v) } " " } }
                        td { (format!("{:.1} s ago", now.duration_since(w.heartbeat_at).as_secs_f64())) }
                        td { (view::time(w.started_at)) }
                        td { @if w.draining { span.badge.s-failed { "draining" } } @else { span.badge.s-succeeded { "serving" } } }
                    }
                }
            }
        }
        p.note { "From the workers bucket (" span.mono { (c.h().names.workers_bucket()) } "): a worker refreshes its entry every 5 s; one that stops refreshing drops out after the bucket's TTL." }
    };
    respond(Page::new("Workers", Section::Workers, &session).live_part(""), body, &params)
}
