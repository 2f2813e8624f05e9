//! Plan tests: firing order, staging, jitter, pause, max_runs, bounds,
//! partitions taken over and handed back, and the watermark.

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const T0: &str = "2026-01-01T00:00:00Z";

fn plan(lookahead_ms: u64) -> Plan {
    Plan::new(PlanConfig { lookahead: Duration::from_millis(lookahead_ms), misfire_threshold: Duration::from_secs(1) })
}

/// A plan owning every partition since `T0`, with nothing handled before it.
fn owning_all(lookahead_ms: u64) -> Plan {
    let mut p = plan(lookahead_ms);
    let mut out = Vec::new();
    for part in 0..PARTITIONS {
        p.acquire(part, ts("2100-01-01T00:00:00Z"), Some(ts(T0)), &HashMap::new(), ts(T0), &mut out);
    }
    assert!(out.is_empty());
    p
}

fn put(p: &mut Plan, id: &str, json: &str, written: &str, now: &str) -> Vec<Outgoing> {
    let spec = p.parse(id, json.as_bytes()).unwrap();
    let mut out = Vec::new();
    p.upsert(id, spec, Written { revision: 1, time: ts(written), replay: 1 }, ts(now), &mut out);
    out
}

fn pop(p: &mut Plan, now: &str) -> Vec<Outgoing> {
    let mut out = Vec::new();
    assert!(p.pop_due(ts(now), &mut out).is_empty());
    out
}

fn fires(out: &[Outgoing]) -> Vec<(String, String)> {
    out.iter()
        .filter_map(|o| match &o.body {
            Body::Due(d) => Some((d.schedule.clone(), d.scheduled_for.to_string())),
            Body::Missed(_) | Body::Withdraw(_) => None,
        })
        .collect()
}

fn missed(out: &[Outgoing]) -> Vec<(String, u64, String)> {
    out.iter()
        .filter_map(|o| match &o.body {
            Body::Missed(e) => {
                Some((e.schedule.clone().unwrap(), e.count.unwrap(), e.scheduled_for.unwrap().to_string()))
            }
            Body::Due(_) | Body::Withdraw(_) => None,
        })
        .collect()
}

/// The withdrawals in `out`: run id, and the replacing fire's run id.
fn withdrawals(out: &[Outgoing]) -> Vec<(String, Option<String>)> {
    out.iter()
        .filter_map(|o| match &o.body {
            Body::Withdraw(w) => Some((w.run_id.clone(), w.then.as_ref().map(|d| d.run_id()))),
            _ => None,
        })
        .collect()
}

fn ack_all(p: &mut Plan, out: &[Outgoing]) {
    for o in out {
        p.acked(o.partition, o.epoch, o.hold);
    }
}

#[test]
fn fires_in_order_and_replans() {
    let mut p = owning_all(0);
    put(&mut p, "a", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    put(&mut p, "b", r#"{"every": "15s", "task": "t"}"#, T0, T0);
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:00:10Z")));
    let s = |id: &str, t: &str| (id.to_string(), format!("2026-01-01T00:00:{t}Z"));
    assert_eq!(
        fires(&pop(&mut p, "2026-01-01T00:00:30Z")),
        vec![s("a", "10"), s("b", "15"), s("a", "20"), s("a", "30"), s("b", "30")]
    );
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:00:40Z")));
}

#[test]
fn removed_and_replaced_schedules_drop_their_old_slots() {
    let mut p = owning_all(0);
    put(&mut p, "a", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    put(&mut p, "a", r#"{"every": "1m", "task": "t"}"#, T0, T0);
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:01:00Z")));
    assert_eq!(p.remove("a", "deleted", ts(T0), &mut Vec::new()), Some((partition_of("a"), false)));
    assert_eq!(p.next_release(), None);
    assert!(pop(&mut p, "2026-01-02T00:00:00Z").is_empty());
    assert!(p.is_empty());
}

#[test]
fn paused_schedules_do_not_fire_and_resume_without_catching_up() {
    let mut p = owning_all(0);
    put(&mut p, "s", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    assert_eq!(fires(&pop(&mut p, "2026-01-01T00:00:10Z")).len(), 1);
    put(
        &mut p,
        "s",
        r#"{"every": "10s", "task": "t", "paused": true}"#,
        "2026-01-01T00:00:12Z",
        "2026-01-01T00:00:12Z",
    );
    assert!(pop(&mut p, "2026-01-01T00:01:00Z").is_empty());
    // Resumed at 01:05: the occurrences while paused are neither fired nor missed.
    let out = put(&mut p, "s", r#"{"every": "10s", "task": "t"}"#, "2026-01-01T00:01:05Z", "2026-01-01T00:01:05Z");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(fires(&pop(&mut p, "2026-01-01T00:01:10Z")), vec![("s".into(), "2026-01-01T00:01:10Z".into())]);
}

#[test]
fn max_runs_stops_after_that_many_fires_and_counts_them() {
    let mut p = owning_all(0);
    put(&mut p, "m", r#"{"every": "10s", "task": "t", "max_runs": 2}"#, T0, T0);
    let out = pop(&mut p, "2026-01-01T00:10:00Z");
    assert_eq!(fires(&out).len(), 2);
    assert_eq!(out[1].count, Some(FiredCount { fired: 2, last: ts("2026-01-01T00:00:20Z") }));
    assert_eq!(p.next_release(), None);
}

#[test]
fn max_runs_continues_from_the_stored_count_after_a_takeover() {
    let mut p = plan(0);
    put(&mut p, "m", r#"{"every": "10s", "task": "t", "max_runs": 3}"#, T0, T0);
    let counts = HashMap::from([("m".to_string(), FiredCount { fired: 2, last: ts("2026-01-01T00:00:20Z") })]);
    let mut out = Vec::new();
    let part = partition_of("m");
    // The watermark lags the count: the count's last fire is the floor.
    p.acquire(
        part,
        ts("2100-01-01T00:00:00Z"),
        Some(ts("2026-01-01T00:00:15Z")),
        &counts,
        ts("2026-01-01T00:00:25Z"),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    let out = pop(&mut p, "2026-01-01T00:10:00Z");
    assert_eq!(fires(&out), vec![("m".into(), "2026-01-01T00:00:30Z".into())]);
    assert_eq!(out[0].count.as_ref().map(|c| c.fired), Some(3));
    assert_eq!(p.next_release(), None);
}

#[test]
fn start_and_end_bound_the_fires() {
    let mut p = owning_all(0);
    put(
        &mut p,
        "b",
        r#"{"every": "10s", "task": "t", "start_at": "2026-01-01T00:00:30Z", "end_at": "2026-01-01T00:00:50Z"}"#,
        T0,
        T0,
    );
    let got: Vec<String> = fires(&pop(&mut p, "2026-01-01T00:10:00Z")).into_iter().map(|f| f.1).collect();
    assert_eq!(got, vec!["2026-01-01T00:00:30Z", "2026-01-01T00:00:40Z", "2026-01-01T00:00:50Z"]);
}

#[test]
fn every_with_phase_fires_offset_from_the_minute() {
    let mut p = owning_all(0);
    put(&mut p, "ph", r#"{"every": "1m", "phase": "15s", "task": "t"}"#, T0, T0);
    let got: Vec<String> = fires(&pop(&mut p, "2026-01-01T00:02:00Z")).into_iter().map(|f| f.1).collect();
    assert_eq!(got, vec!["2026-01-01T00:00:15Z", "2026-01-01T00:01:15Z"]);
}

#[test]
fn jitter_delays_the_start_but_not_the_nominal_time() {
    let mut p = owning_all(0);
    put(&mut p, "j", r#"{"every": "1m", "task": "t", "jitter": "30s"}"#, T0, T0);
    // Released at the nominal time, carrying the jittered start.
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:01:00Z")));
    let out = pop(&mut p, "2026-01-01T00:01:00Z");
    let Body::Due(due) = &out[0].body else { panic!("{out:?}") };
    assert_eq!(due.scheduled_for, ts("2026-01-01T00:01:00Z"));
    let offset = jitter_offset("j", due.scheduled_for, Duration::from_secs(30));
    let expected = due.scheduled_for.checked_add(signed(offset)).unwrap();
    assert_eq!(out[0].fire_at, expected);
    assert_eq!(due.not_before, (expected > due.scheduled_for).then_some(expected));
}

#[test]
fn lookahead_stages_fires_early_with_not_before() {
    let mut p = owning_all(2000);
    put(&mut p, "s", r#"{"cron": "0 * * * * *", "task": "t"}"#, T0, T0);
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:00:58Z")));
    let out = pop(&mut p, "2026-01-01T00:00:58Z");
    let Body::Due(due) = &out[0].body else { panic!("{out:?}") };
    assert_eq!(due.scheduled_for, ts("2026-01-01T00:01:00Z"));
    assert_eq!(due.not_before, Some(ts("2026-01-01T00:01:00Z")));
    // The watermark is the time processed, not the staged fire's time.
    assert_eq!(p.watermark(partition_of("s")), Some(ts("2026-01-01T00:00:58Z")));
}

#[test]
fn watermark_is_held_below_fires_in_flight() {
    let mut p = owning_all(0);
    let part = partition_of("w");
    put(&mut p, "w", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    let out = pop(&mut p, "2026-01-01T00:00:25Z");
    assert_eq!(out.len(), 2);
    assert_eq!(p.watermark(part), Some(ts("2026-01-01T00:00:09.999999999Z")));
    p.acked(part, out[0].epoch, out[0].hold);
    assert_eq!(p.watermark(part), Some(ts("2026-01-01T00:00:19.999999999Z")));
    p.acked(part, out[1].epoch, out[1].hold);
    assert_eq!(p.watermark(part), Some(ts("2026-01-01T00:00:25Z")));
    let progress = p.progress();
    assert!(progress.contains(&(part, ts("2026-01-01T00:00:25Z"), true)), "{progress:?}");
    assert!(p.progress().contains(&(part, ts("2026-01-01T00:00:25Z"), false)));
}

#[test]
fn takeover_replays_from_the_watermark_under_each_policy() {
    let now = "2026-01-01T00:00:05.5Z";
    for (policy, fired, missed_count) in [("all", 5, 0), ("latest", 1, 4), ("skip", 1, 4)] {
        let mut p = plan(0);
        let json = format!(r#"{{"every": "1s", "task": "t", "misfire": {{"policy": "{policy}"}}}}"#);
        put(&mut p, "s", &json, "2025-12-31T00:00:00Z", "2025-12-31T00:00:00Z");
        let mut out = Vec::new();
        p.acquire(partition_of("s"), ts("2100-01-01T00:00:00Z"), Some(ts(T0)), &HashMap::new(), ts(now), &mut out);
        // :05 is 0.5 s late, within the 1 s threshold: it fires under every policy.
        assert_eq!(fires(&out).len(), fired, "{policy}");
        assert_eq!(fires(&out).last().map(|f| f.1.as_str()), Some("2026-01-01T00:00:05Z"), "{policy}");
        let m = missed(&out);
        if missed_count > 0 {
            assert_eq!(m, vec![("s".into(), missed_count, "2026-01-01T00:00:04Z".into())], "{policy}");
        } else {
            assert!(m.is_empty(), "{policy}");
        }
        assert_eq!(fires(&pop(&mut p, "2026-01-01T00:00:06Z")), vec![("s".into(), "2026-01-01T00:00:06Z".into())]);
    }
}

#[test]
fn a_new_schedule_does_not_catch_up_from_before_it_was_written() {
    let mut p = owning_all(0);
    // Written at :30.2, seen at :30.4: nothing before :30.2 fires or is missed.
    let out = put(&mut p, "n", r#"{"every": "1s", "task": "t"}"#, "2026-01-01T00:00:30.2Z", "2026-01-01T00:00:30.4Z");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:00:31Z")));
    // Written at :40.9, seen at :41.3: :41 is late but within the threshold.
    let out = put(&mut p, "m", r#"{"every": "1s", "task": "t"}"#, "2026-01-01T00:00:40.9Z", "2026-01-01T00:00:41.3Z");
    assert_eq!(fires(&out), vec![("m".into(), "2026-01-01T00:00:41Z".into())]);
}

#[test]
fn an_update_does_not_refire_what_was_fired() {
    let mut p = owning_all(0);
    put(&mut p, "u", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    let fired = pop(&mut p, "2026-01-01T00:00:10Z");
    ack_all(&mut p, &fired);
    // The update is written before the last fire (clock skew): still no refire.
    let out = put(
        &mut p,
        "u",
        r#"{"every": "10s", "task": "t", "payload": 2}"#,
        "2026-01-01T00:00:09Z",
        "2026-01-01T00:00:11Z",
    );
    assert!(out.is_empty(), "{out:?}");
    let out = pop(&mut p, "2026-01-01T00:00:20Z");
    let Body::Due(due) = &out[0].body else { panic!("{out:?}") };
    assert_eq!((due.scheduled_for, due.payload.clone()), (ts("2026-01-01T00:00:20Z"), serde_json::json!(2)));
}

#[test]
fn a_lost_partition_stops_firing_and_ignores_late_acks() {
    let mut p = owning_all(0);
    let part = partition_of("x");
    put(&mut p, "x", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    let out = pop(&mut p, "2026-01-01T00:00:10Z");
    p.lose(part);
    assert_eq!(p.watermark(part), None);
    assert!(p.acked(part, out[0].epoch, out[0].hold).is_none());
    assert!(pop(&mut p, "2026-01-01T00:10:00Z").is_empty());
    assert_eq!(p.owned(), usize::from(PARTITIONS) - 1);
}

#[test]
fn an_expired_lease_stops_firing_at_once() {
    let mut p = plan(0);
    put(&mut p, "x", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    let part = partition_of("x");
    let mut out = Vec::new();
    p.acquire(part, ts("2026-01-01T00:00:15Z"), Some(ts(T0)), &HashMap::new(), ts(T0), &mut out);
    assert_eq!(fires(&pop(&mut p, "2026-01-01T00:00:10Z")).len(), 1);
    assert_eq!(p.pop_due(ts("2026-01-01T00:00:20Z"), &mut out), vec![part]);
    assert!(out.is_empty());
    assert_eq!(p.owned(), 0);
}

#[test]
fn a_released_partition_hands_over_once_its_fires_are_stored() {
    let mut p = owning_all(0);
    let part = partition_of("r");
    put(&mut p, "r", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    let out = pop(&mut p, "2026-01-01T00:00:12Z");
    assert_eq!(p.release(part), None, "a fire is still in flight");
    assert!(pop(&mut p, "2026-01-01T00:10:00Z").is_empty(), "no new fires while handing over");
    assert_eq!(p.acked(part, out[0].epoch, out[0].hold), Some((part, ts("2026-01-01T00:00:12Z"))));
    assert_eq!(p.watermark(part), None);
    let other = partition_of("other-partition");
    assert_ne!(other, part);
    assert_eq!(p.release(other), Some(ts("2026-01-01T00:10:00Z")), "nothing in flight: at once");
}

#[test]
fn a_replay_after_a_reconnect_keeps_what_it_mentions_and_drops_the_rest() {
    let mut p = owning_all(0);
    put(&mut p, "kept", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    put(&mut p, "gone", r#"{"every": "10s", "task": "t"}"#, T0, T0);
    // Replay 2 repeats `kept` at the loaded revision and never mentions `gone`.
    assert!(p.seen("kept", 1, 2));
    assert!(!p.seen("kept", 2, 2), "a new revision must be loaded");
    assert!(!p.seen("unknown", 1, 2));
    let swept = p.sweep(2, ts(T0), &mut Vec::new());
    assert_eq!(swept, vec![("gone".to_string(), partition_of("gone"), false)]);
    assert_eq!(p.len(), 1);
    assert_eq!(fires(&pop(&mut p, "2026-01-01T00:00:10Z")), vec![("kept".into(), "2026-01-01T00:00:10Z".into())]);
}

#[test]
fn schedules_with_an_overlap_policy_are_not_staged() {
    let mut p = owning_all(2000);
    put(&mut p, "gated", r#"{"every": "10s", "task": "t", "overlap": "skip"}"#, T0, T0);
    // Published at its time: the dispatcher decides overlap when it sees the fire.
    assert_eq!(p.next_release(), Some(ts("2026-01-01T00:00:10Z")));
    let out = pop(&mut p, "2026-01-01T00:00:10Z");
    let Body::Due(due) = &out[0].body else { panic!("{out:?}") };
    assert_eq!(due.not_before, None);
}

/// `every: 1s` staged 2 s ahead, popped at 00:00:10: the fires of :11 and :12
/// are out, not yet due.
fn staged_every_second() -> Plan {
    let mut p = owning_all(2000);
    put(&mut p, "s", r#"{"every": "1s", "task": "t"}"#, T0, T0);
    let out = pop(&mut p, "2026-01-01T00:00:10Z");
    let last = fires(&out).last().cloned().unwrap();
    assert_eq!(last, ("s".into(), "2026-01-01T00:00:12Z".into()));
    p
}

#[test]
fn deleting_withdraws_every_staged_fire_not_yet_due() {
    let mut p = staged_every_second();
    let mut out = Vec::new();
    p.remove("s", "deleted", ts("2026-01-01T00:00:10.5Z"), &mut out);
    assert_eq!(
        withdrawals(&out),
        vec![("s.s.20260101T000011Z".into(), None), ("s.s.20260101T000012Z".into(), None)],
        "the fire of :10 is due already and stays"
    );
    assert!(fires(&out).is_empty());
}

#[test]
fn pausing_withdraws_staged_fires_without_replacing_them() {
    let mut p = staged_every_second();
    let now = "2026-01-01T00:00:10.5Z";
    let out = put(&mut p, "s", r#"{"every": "1s", "task": "t", "paused": true}"#, now, now);
    assert_eq!(withdrawals(&out), vec![("s.s.20260101T000011Z".into(), None), ("s.s.20260101T000012Z".into(), None)]);
    assert!(fires(&out).is_empty() && pop(&mut p, "2026-01-01T00:01:00Z").is_empty());
}

#[test]
fn an_edit_replaces_staged_fires_from_the_next_one() {
    let mut p = staged_every_second();
    let now = "2026-01-01T00:00:10.5Z";
    // Every 500 ms from now on: :11 and :12 are replaced under revision 1,
    // :11.5 is new, then it goes on after the last staged fire.
    let out = put(&mut p, "s", r#"{"every": "500ms", "task": "t"}"#, now, now);
    assert_eq!(
        withdrawals(&out),
        vec![
            ("s.s.20260101T000011Z".into(), Some("s.s.20260101T000011Z.r1".into())),
            ("s.s.20260101T000012Z".into(), Some("s.s.20260101T000012Z.r1".into())),
        ]
    );
    assert_eq!(fires(&out), vec![("s".into(), "2026-01-01T00:00:11.5Z".into())]);
    let next = fires(&pop(&mut p, "2026-01-01T00:00:11Z"));
    assert_eq!(next, vec![("s".into(), "2026-01-01T00:00:12.5Z".into()), ("s".into(), "2026-01-01T00:00:13Z".into())]);
    // A second edit withdraws the replacements under their own run ids.
    let mut out = Vec::new();
    p.remove("s", "deleted", ts("2026-01-01T00:00:11.2Z"), &mut out);
    let ids: Vec<String> = withdrawals(&out).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            "s.s.20260101T000011_500000000Z",
            "s.s.20260101T000012Z.r1",
            "s.s.20260101T000012_500000000Z",
            "s.s.20260101T000013Z"
        ]
    );
}

#[test]
fn an_edit_with_nothing_staged_withdraws_nothing() {
    let mut p = owning_all(0);
    put(&mut p, "s", r#"{"every": "1s", "task": "t"}"#, T0, T0);
    assert_eq!(fires(&pop(&mut p, "2026-01-01T00:00:10Z")).len(), 10);
    let now = "2026-01-01T00:00:10.5Z";
    let out = put(&mut p, "s", r#"{"every": "1s", "task": "u"}"#, now, now);
    assert!(out.is_empty(), "{out:?}");
    let mut out = Vec::new();
    p.remove("s", "deleted", ts(now), &mut out);
    assert!(out.is_empty(), "{out:?}");
}
