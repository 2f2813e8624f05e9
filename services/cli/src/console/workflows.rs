//! Workflows: each workflow task's DAG and its latest runs; a workflow
//! run's page (in [`super::runs`]) draws the DAG with each step's state,
//! live.
//!
//! The graph is SVG written here: steps in columns by their depth (the
//! longest chain of `depends_on` before them), in name order within a
//! column, edges as curves from each upstream step. A workflow has a few
//! dozen steps at most; a layout library would bring a whole graph engine
//! for that.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use futures::TryStreamExt;
use jetsched_contract::task::Step;
use jetsched_contract::{RunStatus, TaskDef, WorkflowState};
use maud::{Markup, html};

use super::view::{self, Page, Section};
use super::{Console, Req, failure, respond};

const NODE_W: i64 = 170;
const NODE_H: i64 = 48;
const GAP_X: i64 = 70;
const GAP_Y: i64 = 22;
const PAD: i64 = 8;

/// Each step's column: 0 for steps with no upstream, else one more than
/// its deepest upstream step.
pub fn columns(steps: &BTreeMap<String, Step>) -> BTreeMap<String, usize> {
    fn depth(name: &str, steps: &BTreeMap<String, Step>, memo: &mut BTreeMap<String, usize>, guard: usize) -> usize {
        if let Some(d) = memo.get(name) {
            return *d;
        }
        // Definitions are checked for cycles when stored; this only stops a bad one from recursing forever.
        if guard > steps.len() {
            return 0;
        }
        let d = steps
            .get(name)
            .map_or(0, |s| s.depends_on.iter().map(|up| depth(up, steps, memo, guard + 1) + 1).max().unwrap_or(0));
        memo.insert(name.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    for name in steps.keys() {
        depth(name, steps, &mut memo, 0);
    }
    memo.retain(|k, _| steps.contains_key(k));
    memo
}

/// A step's place and state in the drawing.
struct Node<'a> {
    name: &'a str,
    step: &'a Step,
    x: i64,
    y: i64,
    state: &'static str,
    run_id: Option<&'a str>,
    note: Option<&'a str>,
}

/// The DAG of `steps` with the states in `state`; `live` overrides a step's
/// state with its run's current status (a started step shows `started`).
pub fn graph(steps: &BTreeMap<String, Step>, state: &WorkflowState, live: &BTreeMap<String, RunStatus>) -> Markup {
    let cols = columns(steps);
    let mut rows_in: BTreeMap<usize, i64> = BTreeMap::new();
    let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
    for (name, step) in steps {
        let col = cols.get(name).copied().unwrap_or(0);
        let row = rows_in.entry(col).or_insert(0);
        let s = state.steps.get(name);
        let status = live.get(name).copied().or(s.and_then(|s| s.status));
        nodes.insert(
            name,
            Node {
                name,
                step,
                x: PAD + col as i64 * (NODE_W + GAP_X),
                y: PAD + *row * (NODE_H + GAP_Y),
                state: status.map_or("waiting", |s| s.as_str()),
                run_id: s.and_then(|s| s.run_id.as_deref()),
                note: s.and_then(|s| s.error.as_deref()),
            },
        );
        *row += 1;
    }
    let width = nodes.values().map(|n| n.x + NODE_W + PAD).max().unwrap_or(PAD);
    let height = nodes.values().map(|n| n.y + NODE_H + PAD).max().unwrap_or(PAD);
    html! {
        svg.dag #dag xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
            @for node in nodes.values() {
                @for up in &node.step.depends_on {
                    @if let Some(from) = nodes.get(up.as_str()) {
                        @let (x1, y1, x2, y2) = (from.x + NODE_W, from.y + NODE_H / 2, node.x, node.y + NODE_H / 2);
                        path.edge d={ "M" (x1) "," (y1) " C" (x1 + GAP_X / 2) "," (y1) " " (x2 - GAP_X / 2) "," (y2) " " (x2) "," (y2) } {}
                    }
                }
            }
            @for node in nodes.values() {
                g.step data-step=(node.name) data-state=(node.state) {
                    title { (node.name) ": " (node.state) @if let Some(n) = node.note { " (" (n) ")" } }
                    @if let Some(run) = node.run_id {
                        a href={ "/runs/" (run) } { (box_(node)) }
                    } @else {
                        (box_(node))
                    }
                }
            }
        }
        p.legend {
            @for s in ["waiting", "queued", "started", "succeeded", "failed", "dead", "skipped", "cancelled"] {
                span class={ "cell s-" (s) } {} " " (s) " "
            }
        }
    }
}

fn box_(node: &Node) -> Markup {
    html! {
        rect class={ "node s-" (node.state) } x=(node.x) y=(node.y) width=(NODE_W) height=(NODE_H) rx="6" {}
        text x=(node.x + 10) y=(node.y + 19) class="name" { (view::cut(node.name, 22).0) }
        text x=(node.x + 10) y=(node.y + 37) class="sub" { (node.state) " · " (view::cut(&node.step.task, 16).0) }
    }
}

/// The current status of each started step's run (its own record).
pub async fn step_statuses(c: &Console, state: &WorkflowState) -> anyhow::Result<BTreeMap<String, RunStatus>> {
    let mut out = BTreeMap::new();
    for (name, s) in &state.steps {
        let Some(run) = &s.run_id else { continue };
        if let Some(stored) = c.runs().get(run).await? {
            out.insert(name.clone(), c.current(run, stored.record.status));
        }
    }
    Ok(out)
}

/// `GET /workflows`: every workflow task, its DAG and latest runs.
pub async fn list(State(c): State<Console>, Req { session, params }: Req) -> Response {
    let h = c.h();
    let found = async {
        let mut keys: Vec<String> = h.tasks.keys().await?.try_collect().await?;
        keys.sort();
        let mut out = Vec::new();
        for name in keys {
            let Some(v) = h.tasks.get(&name).await? else { continue };
            let Some(steps) = TaskDef::from_json(&v).ok().and_then(|d| d.steps) else { continue };
            let args = crate::runlist::ListArgs { task: Some(name.clone()), limit: 10, ..Default::default() };
            let runs = crate::runlist::page(c.runs(), &args).await?.runs;
            out.push((name, steps, runs));
        }
        anyhow::Ok(out)
    }
    .await;
    let workflows = match found {
        Ok(w) => w,
        Err(err) => return failure(&session, err),
    };
    let body = html! {
        h1 { "Workflows" }
        @if workflows.is_empty() { p { "No workflow task (a task with " code { "steps" } ")." } }
        @for (name, steps, runs) in &workflows {
            section.workflow data-workflow=(name) {
                h2.mono { (name) }
                @let latest = runs.iter().find(|r| r.workflow.is_some());
                @match latest {
                    Some(r) => {
                        p { "Latest run " (view::run_link(&r.run_id)) " " (view::badge(r.status)) }
                        @if let Some(state) = &r.workflow { (graph(steps, state, &BTreeMap::new())) }
                    }
                    None => { (graph(steps, &WorkflowState::default(), &BTreeMap::new())) }
                }
                @if !runs.is_empty() {
                    table.runs { tbody { @for r in runs { (view::record_row(r)) } } }
                }
            }
        }
    };
    respond(Page::new("Workflows", Section::Workflows, &session).live_part(""), body, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(json: &str) -> BTreeMap<String, Step> {
        TaskDef::from_json(json.as_bytes()).unwrap().steps.unwrap()
    }

    #[test]
    fn columns_follow_the_longest_upstream_chain() {
        let s = steps(
            r#"{"steps": {"a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]},
                "c": {"task": "t", "depends_on": ["a", "b"]}, "d": {"task": "t"}}}"#,
        );
        let cols = columns(&s);
        assert_eq!(cols["a"], 0);
        assert_eq!(cols["b"], 1);
        assert_eq!(cols["c"], 2);
        assert_eq!(cols["d"], 0);
    }

    #[test]
    fn the_graph_shows_each_steps_state_and_escapes_names() {
        let s = steps(r#"{"steps": {"a": {"task": "t"}, "b": {"task": "t", "depends_on": ["a"]}}}"#);
        let mut state = WorkflowState::default();
        state.steps.entry("a".into()).or_default().status = Some(RunStatus::Succeeded);
        state.steps.entry("b".into()).or_default().status = Some(RunStatus::Queued);
        let live = BTreeMap::from([("b".to_string(), RunStatus::Started)]);
        let svg = graph(&s, &state, &live).into_string();
        assert!(svg.contains(r#"data-step="a" data-state="succeeded""#), "{svg}");
        assert!(svg.contains(r#"data-step="b" data-state="started""#), "{svg}");
        assert_eq!(svg.matches("class=\"edge\"").count(), 1);
    }
}
