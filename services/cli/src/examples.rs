//! The examples `jetsched up --examples` loads, and the NATS functions that
//! answer them, so a new user sees runs succeed (and one retry) at once.

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use jetsched_contract::{Handles, ScheduleDef, TaskDef, headers};
use tokio_util::sync::CancellationToken;

/// Task definitions: (name, JSON).
pub const TASKS: &[(&str, &str)] = &[
    ("hello", include_str!("../../../examples/tasks/hello.json")),
    ("flaky", include_str!("../../../examples/tasks/flaky.json")),
    ("disk-usage", include_str!("../../../examples/tasks/disk-usage.json")),
    ("morning-report", include_str!("../../../examples/tasks/morning-report.json")),
];

/// Schedules: (id, JSON).
pub const SCHEDULES: &[(&str, &str)] = &[
    ("hello-every-10s", include_str!("../../../examples/schedules/hello-every-10s.json")),
    ("flaky-every-30s", include_str!("../../../examples/schedules/flaky-every-30s.json")),
    ("disk-usage-each-minute", include_str!("../../../examples/schedules/disk-usage-each-minute.json")),
    ("nightly-berlin", include_str!("../../../examples/schedules/nightly-berlin.json")),
    ("morning-report-every-minute", include_str!("../../../examples/schedules/morning-report-every-minute.json")),
];

/// Programs the example tasks run.
pub const ALLOW_EXEC: &[&str] = &["df"];

/// Writes the example tasks and schedules (validating each first).
pub async fn load(handles: &Handles) -> anyhow::Result<()> {
    for (name, json) in TASKS {
        TaskDef::from_json(json.as_bytes()).map_err(|e| anyhow::anyhow!("example task {name}: {e}"))?;
        handles.tasks.put(*name, json.as_bytes().to_vec().into()).await?;
    }
    for (id, json) in SCHEDULES {
        ScheduleDef::from_json(id, json.as_bytes()).map_err(|e| anyhow::anyhow!("example schedule {id}: {e}"))?;
        handles.schedules.put(*id, json.as_bytes().to_vec().into()).await?;
    }
    Ok(())
}

/// Answers `examples.hello` and `examples.flaky` until `stop`.
pub async fn serve_functions(client: Client, stop: CancellationToken) -> anyhow::Result<()> {
    let mut hello = client.subscribe("examples.hello").await?;
    let mut flaky = client.subscribe("examples.flaky").await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            Some(msg) = hello.next() => {
                let name = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                    .ok()
                    .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "stranger".to_string());
                if let Some(reply) = msg.reply {
                    let body = serde_json::json!({ "greeting": format!("hello, {name}") }).to_string();
                    client.publish(reply, body.into()).await?;
                }
            }
            Some(msg) = flaky.next() => {
                let attempt = msg.headers.as_ref().and_then(|h| h.get(headers::ATTEMPT)).map(|v| v.as_str().to_string()).unwrap_or_default();
                if let Some(reply) = msg.reply {
                    if attempt == "1" {
                        let mut h = HeaderMap::new();
                        h.insert(headers::ERROR, "simulated failure on the first attempt");
                        client.publish_with_headers(reply, h, "".into()).await?;
                    } else {
                        client.publish(reply, r#"{"ok":true}"#.into()).await?;
                    }
                }
            }
        }
    }
}
