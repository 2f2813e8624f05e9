//! Workflows: a task with `steps` is a DAG of other tasks. Its run record
//! keeps each step's outcome; dispatchers start a step when its trigger rule
//! holds, and skip it when the rule can no longer hold.
//!
//! Step runs are named `<workflow run id>.<step>`. A root step receives the
//! workflow's payload; a step with upstream steps receives
//! `{"workflow": <workflow payload>, "upstream": {"<step>": <its result>, ...}}`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::RunStatus;
use crate::task::{Step, Trigger};

/// Where each step of one workflow run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WorkflowState {
    /// The workflow run's payload (dependents receive it).
    #[serde(default)]
    pub payload: Value,
    /// Per step.
    pub steps: BTreeMap<String, StepState>,
}

/// One step of a workflow run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StepState {
    /// `None` while waiting for its upstream steps; `queued` once started;
    /// then its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The step's run id once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The handler's result (JSON), for dependents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `<prefix>.step.<task>`: start one step of a workflow run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepStart {
    /// The workflow run.
    pub workflow_run: String,
    /// The workflow task's name.
    pub workflow: String,
    /// The step.
    pub step: String,
    /// The step's payload.
    #[serde(default)]
    pub payload: Value,
    /// Schedule of the workflow run, if scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Nominal time of the workflow run, if scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Timestamp>,
}

/// Body of `<prefix>.advance.<task>` (the step's task): a step reached an outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepOutcome {
    /// The workflow run.
    pub workflow_run: String,
    /// The step.
    pub step: String,
    /// The step's run id.
    pub run_id: String,
    /// Its outcome (a terminal status).
    pub status: RunStatus,
    /// Its result, when it succeeded with JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepOutcome {
    /// Its `Nats-Msg-Id`: one outcome per step run and status, however many
    /// times a crash makes a service report it.
    pub fn msg_id(&self) -> String {
        format!("advance:{}:{}", self.run_id, self.status)
    }
}

/// The run id of `step` in `workflow_run`.
pub fn step_run_id(workflow_run: &str, step: &str) -> String {
    format!("{workflow_run}.{step}")
}

/// What to do with a waiting step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its trigger rule holds: start it.
    Start,
    /// Its rule can no longer hold.
    Skip(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Waiting,
    Running,
    Success,
    Failed,
    Skipped,
}

fn kind(s: Option<&StepState>) -> Kind {
    match s.and_then(|s| s.status) {
        None => Kind::Waiting,
        Some(RunStatus::Succeeded) => Kind::Success,
        Some(RunStatus::Skipped) => Kind::Skipped,
        Some(RunStatus::Dead | RunStatus::Expired | RunStatus::Cancelled | RunStatus::Rejected) => Kind::Failed,
        Some(_) => Kind::Running,
    }
}

/// Decisions for every waiting step whose fate is now known.
pub fn decide(steps: &BTreeMap<String, Step>, state: &WorkflowState) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for (name, step) in steps {
        if kind(state.steps.get(name)) != Kind::Waiting {
            continue;
        }
        let up: Vec<(&String, Kind)> = step.depends_on.iter().map(|d| (d, kind(state.steps.get(d)))).collect();
        let done = up.iter().all(|(_, k)| matches!(k, Kind::Success | Kind::Failed | Kind::Skipped));
        let any = |want: Kind| up.iter().find(|(_, k)| *k == want).map(|(n, _)| n.as_str());
        let decision = match step.trigger {
            Trigger::AllSuccess => match (any(Kind::Failed), any(Kind::Skipped)) {
                (Some(f), _) => Some(Decision::Skip(format!("upstream step {f} failed"))),
                (None, Some(s)) => Some(Decision::Skip(format!("upstream step {s} was skipped"))),
                (None, None) if done => Some(Decision::Start),
                _ => None,
            },
            Trigger::AllDone => done.then_some(Decision::Start),
            Trigger::OneSuccess => match any(Kind::Success) {
                Some(_) => Some(Decision::Start),
                None if done => Some(Decision::Skip("no upstream step succeeded".to_string())),
                None => None,
            },
            Trigger::OneFailed => match any(Kind::Failed) {
                Some(_) => Some(Decision::Start),
                None if done => Some(Decision::Skip("no upstream step failed".to_string())),
                None => None,
            },
            Trigger::NoneFailed => match any(Kind::Failed) {
                Some(f) => Some(Decision::Skip(format!("upstream step {f} failed"))),
                None if done => Some(Decision::Start),
                None => None,
            },
        };
        if let Some(d) = decision {
            out.push((name.clone(), d));
        }
    }
    out
}

/// The workflow's own outcome once every step has one: `dead` if any step
/// failed, `succeeded` otherwise (skipped steps do not fail it).
pub fn outcome(state: &WorkflowState) -> Option<RunStatus> {
    let kinds: Vec<Kind> = state.steps.values().map(|s| kind(Some(s))).collect();
    if kinds.iter().any(|k| matches!(k, Kind::Waiting | Kind::Running)) {
        return None;
    }
    Some(if kinds.contains(&Kind::Failed) { RunStatus::Dead } else { RunStatus::Succeeded })
}

/// The payload a step receives.
pub fn step_payload(step: &Step, state: &WorkflowState) -> Value {
    if step.depends_on.is_empty() {
        return state.payload.clone();
    }
    let upstream: serde_json::Map<String, Value> = step
        .depends_on
        .iter()
        .map(|d| (d.clone(), state.steps.get(d).and_then(|s| s.result.clone()).unwrap_or(Value::Null)))
        .collect();
    serde_json::json!({ "workflow": state.payload, "upstream": upstream })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskDef;

    fn steps(json: &str) -> BTreeMap<String, Step> {
        TaskDef::from_json(json.as_bytes()).unwrap().steps.unwrap()
    }

    fn with(state: &mut WorkflowState, step: &str, status: RunStatus) {
        state.steps.entry(step.to_string()).or_default().status = Some(status);
    }

    fn fresh(steps: &BTreeMap<String, Step>) -> WorkflowState {
        WorkflowState { payload: Value::Null, steps: steps.keys().map(|k| (k.clone(), StepState::default())).collect() }
    }

    const DIAMOND: &str = r#"{"steps": {"a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]},
        "c": {"task": "t", "depends_on": ["a"]}, "d": {"task": "t", "depends_on": ["b", "c"]}}}"#;

    #[test]
    fn diamond_starts_roots_then_fans_out_then_in() {
        let s = steps(DIAMOND);
        let mut st = fresh(&s);
        assert_eq!(decide(&s, &st), vec![("a".to_string(), Decision::Start)]);
        with(&mut st, "a", RunStatus::Succeeded);
        assert_eq!(decide(&s, &st), vec![("b".into(), Decision::Start), ("c".into(), Decision::Start)]);
        with(&mut st, "b", RunStatus::Succeeded);
        with(&mut st, "c", RunStatus::Started);
        assert!(decide(&s, &st).is_empty(), "d waits for c");
        with(&mut st, "c", RunStatus::Succeeded);
        assert_eq!(decide(&s, &st), vec![("d".into(), Decision::Start)]);
        with(&mut st, "d", RunStatus::Succeeded);
        assert_eq!(outcome(&st), Some(RunStatus::Succeeded));
    }

    #[test]
    fn failure_skips_all_success_dependents() {
        let s = steps(DIAMOND);
        let mut st = fresh(&s);
        with(&mut st, "a", RunStatus::Dead);
        let d = decide(&s, &st);
        assert!(d.iter().all(|(_, d)| matches!(d, Decision::Skip(r) if r.contains("a failed"))), "{d:?}");
        with(&mut st, "b", RunStatus::Skipped);
        with(&mut st, "c", RunStatus::Skipped);
        assert!(matches!(&decide(&s, &st)[..], [(n, Decision::Skip(_))] if n == "d"));
        with(&mut st, "d", RunStatus::Skipped);
        assert_eq!(outcome(&st), Some(RunStatus::Dead));
    }

    #[test]
    fn trigger_rules_behave_as_named() {
        let s = steps(
            r#"{"steps": {"x": {"task": "t"}, "y": {"task": "t"},
            "done": {"task": "t", "depends_on": ["x", "y"], "trigger": "all_done"},
            "any_ok": {"task": "t", "depends_on": ["x", "y"], "trigger": "one_success"},
            "on_fail": {"task": "t", "depends_on": ["x", "y"], "trigger": "one_failed"},
            "no_fail": {"task": "t", "depends_on": ["x", "y"], "trigger": "none_failed"}}}"#,
        );
        let mut st = fresh(&s);
        with(&mut st, "x", RunStatus::Dead);
        let d: BTreeMap<String, Decision> = decide(&s, &st).into_iter().collect();
        assert_eq!(d.get("on_fail"), Some(&Decision::Start), "one_failed starts at the first failure");
        assert!(matches!(d.get("no_fail"), Some(Decision::Skip(_))));
        assert!(!d.contains_key("done") && !d.contains_key("any_ok"), "waiting for y");
        with(&mut st, "y", RunStatus::Succeeded);
        let d: BTreeMap<String, Decision> = decide(&s, &st).into_iter().collect();
        assert_eq!(d.get("done"), Some(&Decision::Start));
        assert_eq!(d.get("any_ok"), Some(&Decision::Start));

        let mut ok = fresh(&s);
        with(&mut ok, "x", RunStatus::Succeeded);
        with(&mut ok, "y", RunStatus::Succeeded);
        let d: BTreeMap<String, Decision> = decide(&s, &ok).into_iter().collect();
        assert_eq!(d.get("on_fail"), Some(&Decision::Skip("no upstream step failed".into())));
        assert_eq!(d.get("no_fail"), Some(&Decision::Start));
    }

    #[test]
    fn dependents_receive_upstream_results() {
        let s = steps(DIAMOND);
        let mut st = fresh(&s);
        st.payload = serde_json::json!({"day": "mon"});
        st.steps.get_mut("b").unwrap().result = Some(serde_json::json!(2));
        st.steps.get_mut("c").unwrap().result = Some(serde_json::json!({"c": 3}));
        assert_eq!(step_payload(&s["a"], &st), serde_json::json!({"day": "mon"}));
        assert_eq!(
            step_payload(&s["d"], &st),
            serde_json::json!({"workflow": {"day": "mon"}, "upstream": {"b": 2, "c": {"c": 3}}})
        );
    }
}
