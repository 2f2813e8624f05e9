//! Hostile input to every parser users feed: durations, time zones,
//! schedule, task, window and workflow definitions, submission headers.
//! Arbitrary bytes (non-UTF-8 included), JSON of the right shape with wrong
//! and extreme values, nesting far past any sane depth and names of a
//! mebibyte: nothing panics, every answer comes within a deadline, and what
//! is refused is refused with a short, clear reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use jetsched_contract::headers::{parse_importance, parse_not_before};
use jetsched_contract::{ScheduleDef, TaskDef, WindowDef, parse_duration, run};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Runs `f` on a thread of its own (a large stack, as the services' tasks
/// get nothing special either: the default 2 MiB) and fails when it has
/// not answered within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not answer within {secs}s (or panicked)"),
    }
}

/// A reason is clear when it is short enough for an event and one line.
fn clear(reason: &str) -> bool {
    !reason.is_empty() && reason.len() <= 2048
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text that looks like what the fields take, and a bit off.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|y|)",
        "[0-9 */,LW#?-]{0,30}",
        "(Europe|America|Asia|Etc)/[A-Za-z_+-]{0,20}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})",
        "@[a-z]{0,10}",
        "(mon|tue|sat|sun|xyz)",
        "[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}",
        "(skip|latest|all|allow|buffer_one|cancel_previous|shift|first|defer|nats|http|exec|builtin)",
    ]
}

/// A schedule-shaped object whose fields take any value.
fn schedule_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "cron",
        "every",
        "at",
        "phase",
        "timezone",
        "task",
        "payload",
        "misfire",
        "overlap",
        "jitter",
        "dst",
        "paused",
        "start_at",
        "end_at",
        "max_runs",
        "depends_on",
        "description",
    ]);
    prop::collection::btree_map(keys, prop_oneof![text().prop_map(Value::String), json_value()], 0..10)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// A task-shaped object, workflows with any step graph included.
fn task_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "handler",
        "queue",
        "importance",
        "expected_duration",
        "timeout",
        "retry",
        "concurrency",
        "window",
        "requires",
        "routing",
        "steps",
        "schedule_to_start",
    ]);
    let step_names = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    let steps = prop::collection::btree_map(
        step_names.clone(),
        (step_names.clone(), prop::collection::vec(step_names, 0..4)),
        0..6,
    )
    .prop_map(|m| {
        let steps: serde_json::Map<String, Value> = m
            .into_iter()
            .map(|(name, (task, deps))| (name.to_string(), json!({"task": task, "depends_on": deps})))
            .collect();
        Value::Object(steps)
    });
    let handler = prop_oneof![
        text().prop_map(|s| json!({"type": "nats", "subject": s})),
        any::<String>().prop_map(|s| json!({"type": "http", "url": s, "headers": {s.clone(): s}})),
        prop::collection::vec(any::<String>(), 0..3).prop_map(|c| json!({"type": "exec", "command": c})),
        json_value(),
    ];
    (
        prop::collection::btree_map(keys, prop_oneof![text().prop_map(Value::String), json_value()], 0..8),
        prop::option::of(handler),
        prop::option::of(steps),
    )
        .prop_map(|(m, handler, steps)| {
            let mut o: serde_json::Map<String, Value> = m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(h) = handler {
                o.insert("handler".into(), h);
            }
            if let Some(s) = steps {
                o.insert("steps".into(), s);
            }
            Value::Object(o)
        })
}

fn window_json() -> impl Strategy<Value = Value> {
    let day = prop::sample::select(vec!["mon", "tue", "wed", "thu", "fri", "sat", "sun", "xyz"]);
    (
        prop::option::of(text()),
        prop::collection::btree_map(day, prop::collection::vec(text(), 0..4), 0..8),
        prop::collection::vec(text(), 0..3),
        json_value(),
    )
        .prop_map(|(tz, weekly, blackout, outside)| {
            json!({"timezone": tz, "weekly": weekly, "blackout_dates": blackout, "outside": outside})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn durations_parse_or_explain(s in prop_oneof![any::<String>(), text()]) {
        if let Err(e) = within(5, "parse_duration", move || parse_duration(&s)) {
            prop_assert!(clear(&e), "{e}");
        }
    }

    #[test]
    fn any_bytes_as_a_definition_are_refused_clearly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (s, t, w) = within(5, "parsing bytes", move || {
            (ScheduleDef::from_json("s", &bytes).err(), TaskDef::from_json(&bytes).err(), WindowDef::from_json("w", &bytes).err())
        });
        for e in [s, t, w].into_iter().flatten() {
            prop_assert!(clear(&e), "{e}");
        }
    }

    #[test]
    fn schedules_of_any_shape_parse_or_explain_and_fire_in_order(v in schedule_json()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let parsed = within(10, "a schedule", move || ScheduleDef::from_json("s", &bytes));
        match parsed {
            Err(e) => prop_assert!(clear(&e), "{e}"),
            Ok(def) => {
                let fires = within(10, "its fires", move || {
                    let calendar = def.calendar().unwrap();
                    let _ = def.time_zone();
                    calendar.iter_after(jiff::Timestamp::UNIX_EPOCH).take(3).collect::<Vec<_>>()
                });
                prop_assert!(fires.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    #[test]
    fn tasks_and_workflows_of_any_shape_parse_or_explain(v in task_json()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = within(10, "a task", move || TaskDef::from_json(&bytes)) {
            prop_assert!(clear(&e), "{e}");
        }
    }

    #[test]
    fn windows_of_any_shape_parse_or_explain_and_answer(v in window_json(), at in 0i64..4_000_000_000) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let parsed = within(10, "a window", move || WindowDef::from_json("w", &bytes));
        match parsed {
            Err(e) => prop_assert!(clear(&e), "{e}"),
            Ok(w) => {
                let t = jiff::Timestamp::from_second(at).unwrap();
                let next = within(10, "the window's next opening", move || (w.contains(t), w.next_open(t)));
                prop_assert!(next.1.is_none_or(|n| n >= t));
            }
        }
    }

    #[test]
    fn submission_headers_parse_or_explain(v in prop_oneof![any::<String>(), text(), "[0-9]{1,40}"]) {
        let (i, n) = (parse_importance(&v), parse_not_before(&v));
        if let Ok(i) = i { prop_assert!(i <= 10); }
        for e in [i.err(), n.err()].into_iter().flatten() {
            prop_assert!(clear(&e) && !e.contains('\n') || v.contains('\n'), "{e}");
            prop_assert!(e.len() <= 300, "the reason stays short: {} bytes", e.len());
        }
    }

    #[test]
    fn run_ids_from_any_message_id_are_safe_subject_tokens(id in any::<String>(), seq in any::<u64>()) {
        let run_id = run::submitted_run_id("task", Some(&id), seq);
        prop_assert!(run_id.len() <= 90, "{run_id}");
        prop_assert!(
            run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-=".contains(&b)),
            "no wildcard, space, control character or header syntax: {run_id:?}"
        );
    }
}

#[test]
fn nesting_far_past_any_sane_depth_is_refused_without_overflowing_the_stack() {
    for depth in [1_000usize, 100_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let as_payload = format!(r#"{{"every": "1m", "task": "t", "payload": {deep}}}"#);
        let task = format!(r#"{{"handler": {deep}}}"#);
        let errors = within(10, "deep JSON", move || {
            [
                ScheduleDef::from_json("s", as_payload.as_bytes()).err(),
                TaskDef::from_json(task.as_bytes()).err(),
                WindowDef::from_json("w", deep.as_bytes()).err(),
            ]
        });
        for e in errors {
            let e = e.expect("refused");
            assert!(clear(&e), "{e}");
        }
    }
}

#[test]
fn mebibyte_names_and_values_are_refused_with_a_short_reason() {
    let huge = "x".repeat(1 << 20);
    let cases = [
        ScheduleDef::from_json(&huge, br#"{"every": "1m", "task": "t"}"#).err(),
        ScheduleDef::from_json("s", json!({"every": "1m", "task": huge}).to_string().as_bytes()).err(),
        ScheduleDef::from_json("s", json!({"cron": huge, "task": "t"}).to_string().as_bytes()).err(),
        ScheduleDef::from_json("s", json!({"every": huge, "task": "t"}).to_string().as_bytes()).err(),
        ScheduleDef::from_json("s", json!({"every": "1m", "timezone": huge, "task": "t"}).to_string().as_bytes()).err(),
        TaskDef::from_json(json!({"handler": {"type": "nats", "subject": "f"}, "queue": huge}).to_string().as_bytes())
            .err(),
        parse_importance(&huge).err(),
        parse_not_before(&huge).err(),
        parse_duration(&huge).err(),
    ];
    for (i, e) in cases.into_iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("case {i} accepted a mebibyte name"));
        assert!(e.len() <= 1024, "case {i}: the reason is {} bytes", e.len());
    }
}

#[test]
fn non_utf8_definitions_are_refused_clearly() {
    let bytes = b"{\"every\": \"1m\", \"task\": \"\xff\xfe\"}";
    for e in [ScheduleDef::from_json("s", bytes).err(), TaskDef::from_json(bytes).err()] {
        let e = e.expect("refused");
        assert!(clear(&e), "{e}");
    }
}

#[test]
fn a_workflow_that_loops_is_refused() {
    let mut steps = BTreeMap::new();
    steps.insert("a", json!({"task": "x", "depends_on": ["b"]}));
    steps.insert("b", json!({"task": "x", "depends_on": ["a"]}));
    let e = TaskDef::from_json(json!({"steps": steps}).to_string().as_bytes()).unwrap_err();
    assert!(e.contains("cycle") || e.contains("loop"), "{e}");
}

#[test]
fn header_injection_in_a_task_is_refused() {
    for headers in [
        json!({"X-Ok": "fine\r\nX-Evil: 1"}),
        json!({"X-Ok": "fine\nHost: metadata"}),
        json!({"X Evil": "v"}),
        json!({"X-Evil\r\n": "v"}),
        json!({"": "v"}),
        json!({"X-Nul": "a\u{0}b"}),
    ] {
        let def = json!({"handler": {"type": "http", "url": "http://example.com/", "headers": headers}});
        let e = TaskDef::from_json(def.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("handler.headers"), "{headers}: {e}");
    }
    let fine =
        json!({"handler": {"type": "http", "url": "http://example.com/", "headers": {"Authorization": "Bearer x"}}});
    TaskDef::from_json(fine.to_string().as_bytes()).unwrap();
    let e = TaskDef::from_json(json!({"handler": {"type": "http", "url": "http://a/\r\nX: y"}}).to_string().as_bytes());
    assert!(e.is_err(), "a URL with a line break is refused");
}
