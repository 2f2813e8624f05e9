//! Observability on a real nats-server: one trace per run across ticker,
//! dispatcher, worker and the user's function; Prometheus metrics that move
//! with runs; `/healthz` and `/readyz` that follow the NATS connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::HashSet;

use harness::*;
use jetsched_contract::{RunEvent, RunStatus, headers};
use opentelemetry::trace::SpanId;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_run_is_one_trace_from_fire_to_function() {
    let (spans, _) = install_span_collector();
    let env = Env::start().await;
    let mut calls = env.function("fn.traced", |_| Reply::Ok(json!({}))).await;
    env.put_task("traced", json!({"handler": {"type": "nats", "subject": "fn.traced"}})).await;
    env.put_schedule("traced-every-second", json!({"every": "1s", "task": "traced"})).await;
    let _services = env.services();
    let mut events = env.events().await;

    let done = events.wait_for(20, "a traced run", is("traced", RunStatus::Succeeded)).await;
    let run_id = done.run_id.unwrap();
    let call = within(10, "the run's call", async {
        loop {
            let c = calls.next_call(10).await;
            if c.header(headers::RUN_ID).as_deref() == Some(run_id.as_str()) {
                return c;
            }
        }
    })
    .await;

    let by_name = eventually(10, "fire, dispatch, execute and handler spans", || {
        let spans = spans.with_attr("run_id", &run_id);
        async move {
            let names: HashSet<String> = spans.iter().map(|s| s.name.to_string()).collect();
            ["fire", "dispatch", "execute", "handler"].iter().all(|n| names.contains(*n)).then_some(spans)
        }
    })
    .await;
    let span = |name: &str| by_name.iter().find(|s| s.name == name).unwrap().clone();
    let (fire, dispatch, execute, handler) = (span("fire"), span("dispatch"), span("execute"), span("handler"));
    let trace_id = fire.span_context.trace_id();
    for s in [&dispatch, &execute, &handler] {
        assert_eq!(s.span_context.trace_id(), trace_id, "{} is in another trace", s.name);
    }
    assert_eq!(fire.parent_span_id, SpanId::INVALID, "the fire starts the trace");
    assert_eq!(dispatch.parent_span_id, fire.span_context.span_id());
    assert_eq!(execute.parent_span_id, dispatch.span_context.span_id());
    assert_eq!(handler.parent_span_id, execute.span_context.span_id());

    let traceparent = call.header(headers::TRACEPARENT).expect("the function gets a traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], trace_id.to_string(), "the function's traceparent is the run's trace");
    assert_eq!(parts[2], handler.span_context.span_id().to_string(), "its parent is the handler span");
}

/// Whether an event is the success of `run_id`.
fn succeeded(run_id: &str) -> impl Fn(&RunEvent) -> bool + '_ {
    move |e| e.run_id.as_deref() == Some(run_id) && e.status == RunStatus::Succeeded
}

/// The trace id and parent span id of a W3C `traceparent`.
fn trace_parts(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    assert!(parts[1].len() == 32 && parts[1] != "0".repeat(32), "{traceparent}");
    assert!(parts[2].len() == 16 && parts[2] != "0".repeat(16), "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Real dispatcher and worker processes with no OpenTelemetry variable set
/// (nothing exported): every handler kind still gets the run's trace
/// context, continuing the `traceparent` a submission came with, or a new
/// trace when it came without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_every_handler_kind_without_an_exporter() {
    let env = Env::start().await;
    let mut calls = env.function("fn.tp", |_| Reply::Ok(json!({}))).await;
    let mut stub = HttpStub::start(vec![(200, vec![])]).await;
    env.put_task("tp-nats", json!({"handler": {"type": "nats", "subject": "fn.tp"}})).await;
    env.put_task("tp-http", json!({"handler": {"type": "http", "url": stub.url}})).await;
    env.put_task(
        "tp-exec",
        json!({"handler": {"type": "exec", "command": ["sh", "-c", "printf %s \"$TRACEPARENT\""]}}),
    )
    .await;
    let _dispatcher = env.spawn_jetsched(&["dispatcher"]);
    let _worker = env.spawn_jetsched(&["worker", "--allow-exec", "sh"]);
    let mut events = env.events().await;

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (trace, caller) = trace_parts(incoming);
    for task in ["tp-nats", "tp-http", "tp-exec"] {
        env.publish(env.names.submit_subject(task), &[(headers::TRACEPARENT, incoming)], "{}").await;
    }

    // jetsched records no span of its own here, so the handler's parent is
    // the caller's span: the user's trace has no gap where jetsched was.
    let call = calls.next_call(30).await;
    let (t, parent) = trace_parts(&call.header(headers::TRACEPARENT).expect("a NATS function gets a traceparent"));
    assert_eq!((t.as_str(), parent.as_str()), (trace.as_str(), caller.as_str()), "continues the submission's trace");
    let request = stub.next_request(30).await;
    let (t, parent) = trace_parts(request.header(headers::TRACEPARENT).expect("a webhook gets a traceparent"));
    assert_eq!((t.as_str(), parent.as_str()), (trace.as_str(), caller.as_str()), "continues the submission's trace");
    let exec = events.wait_for(30, "the exec run", is("tp-exec", RunStatus::Succeeded)).await;
    let printed = exec.output.expect("the command's output");
    let (t, parent) = trace_parts(printed.trim());
    assert_eq!(
        (t.as_str(), parent.as_str()),
        (trace.as_str(), caller.as_str()),
        "TRACEPARENT continues the trace: {printed}"
    );
    // The record keeps the run's trace id to its end (`runs get`, the
    // console's run page).
    let record = env.record(exec.run_id.as_deref().expect("a run id")).await;
    assert_eq!(record.trace_id.as_deref(), Some(trace.as_str()), "the record's trace id");

    // A run due in two seconds is staged: the worker's first write is its
    // claim, made without reading the record. It keeps the trace id too.
    let later = (jiff::Timestamp::now() + std::time::Duration::from_secs(2)).to_string();
    let subject = env.names.submit_subject("tp-nats");
    env.publish(subject, &[(headers::TRACEPARENT, incoming), (headers::NOT_BEFORE, &later)], "{}").await;
    let call = calls.next_call(30).await;
    let run_id = call.header(headers::RUN_ID).expect("a run id");
    events.wait_for(30, "the staged run's end", succeeded(&run_id)).await;
    let record = env.record(&run_id).await;
    assert_eq!(record.trace_id.as_deref(), Some(trace.as_str()), "a staged run's record keeps its trace id");

    // Without an incoming traceparent, the run starts a trace of its own.
    env.submit("tp-nats", "{}").await;
    let call = calls.next_call(30).await;
    let (t, _) = trace_parts(&call.header(headers::TRACEPARENT).expect("a traceparent without an incoming one"));
    assert_ne!(t, trace, "a new trace");

    // A scheduled run, staged ahead and released on time, too.
    let _ticker = env.spawn_jetsched(&["ticker"]);
    env.put_schedule("tp-every", json!({"every": "1s", "task": "tp-nats"})).await;
    let call = within(30, "a scheduled call", async {
        loop {
            let c = calls.next_call(30).await;
            if c.header(headers::SCHEDULE).is_some() {
                return c;
            }
        }
    })
    .await;
    let (t, _) =
        trace_parts(&call.header(headers::TRACEPARENT).expect("a scheduled run's function gets a traceparent"));
    let run_id = call.header(headers::RUN_ID).expect("a run id");
    events.wait_for(30, "the scheduled run's end", succeeded(&run_id)).await;
    assert_eq!(env.record(&run_id).await.trace_id, Some(t), "a scheduled run's record has its trace id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_shows_lateness_and_run_counters_moving() {
    let (_, reader) = install_span_collector();
    let env = Env::start().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = jetsched_runtime::health::serve(
        "127.0.0.1:0".parse().unwrap(),
        jetsched_runtime::Health::default(),
        Some(reader),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (status, before) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let lateness_before = sample(&before, "jetsched_fire_lateness_seconds_count", &[]);

    let _fn = env.function("fn.metered", |_| Reply::Ok(json!({}))).await;
    env.put_task("metered", json!({"handler": {"type": "nats", "subject": "fn.metered"}})).await;
    env.put_schedule("metered-every-second", json!({"every": "1s", "task": "metered"})).await;
    let _services = env.services();
    let mut events = env.events().await;
    events.wait_for_n(2, 20, "two metered runs", is("metered", RunStatus::Succeeded)).await;

    let after = eventually(10, "metrics to show the runs", || async move {
        let (_, text) = http_get(addr, "/metrics").await;
        (sample(&text, "jetsched_runs_total", &[("task", "metered"), ("status", "succeeded")]) >= 2.0).then_some(text)
    })
    .await;
    assert!(sample(&after, "jetsched_fire_lateness_seconds_count", &[]) >= lateness_before + 2.0, "{after}");
    assert!(after.contains("# TYPE jetsched_fire_lateness_seconds histogram"));
    assert!(after.contains(r#"jetsched_fire_lateness_seconds_bucket{le="+Inf"}"#));
    assert!(sample(&after, "jetsched_runs_total", &[("task", "metered"), ("status", "queued")]) >= 2.0, "{after}");
    assert!(after.contains("jetsched_handler_duration_seconds_bucket"), "{after}");
    assert!(after.contains("jetsched_dispatch_latency_seconds_count"), "{after}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_nats_connection() {
    let mut env = Env::start().await;
    let health = jetsched_runtime::Health::default();
    health.watch_client(env.handles.js.client());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = jetsched_runtime::health::serve("127.0.0.1:0".parse().unwrap(), health.clone(), None, shutdown.clone())
        .await
        .unwrap();
    let _fn = env.function("fn.after", |_| Reply::Ok(json!({}))).await;
    env.put_task("after", json!({"handler": {"type": "nats", "subject": "fn.after"}})).await;
    let _services = env.services_with(ServicesConfig { health: health.clone(), ..ServicesConfig::default() });

    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    eventually(15, "ready once every service consumes", || async move {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    env.server().kill();
    let body = eventually(15, "not ready while NATS is down", || async move {
        let (status, body) = http_get(addr, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("NATS disconnected"), "{body}");
    assert_eq!(http_get(addr, "/healthz").await.0, 200, "alive even when not ready");

    env.server().restart().unwrap();
    eventually(30, "ready again after NATS returns", || async move {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // And it works again: a submission runs.
    let mut events = env.events().await;
    env.submit("after", "{}").await;
    events.wait_for(30, "a run after the outage", is("after", RunStatus::Succeeded)).await;
    shutdown.cancel();
}
