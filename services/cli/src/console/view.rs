//! What every page shares: the frame (navigation, live-update hook), status
//! badges, times, size-capped JSON, action forms. Pages are `maud`
//! templates: every interpolated value is HTML-escaped unless it is wrapped
//! in `PreEscaped`, which only the server's own SVG charts are.

use jetsched_contract::{RunEvent, RunRecord, RunStatus};
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::auth::Session;

/// Longest JSON shown in a page; longer values are cut with a note.
pub const MAX_SHOWN_BYTES: usize = 16 * 1024;

/// The sections of the console, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Schedules,
    Runs,
    Workflows,
    DeadLetters,
    Workers,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Overview, "/", "Overview"),
    (Section::Schedules, "/schedules", "Schedules"),
    (Section::Runs, "/runs", "Runs"),
    (Section::Workflows, "/workflows", "Workflows"),
    (Section::DeadLetters, "/dlq", "Dead letters"),
    (Section::Workers, "/workers", "Workers"),
];

/// A whole page. `live` is the query of the server-sent event stream the
/// page listens to (`None`: no live updates); `refresh` is what the page's
/// script does with an event (see console.js).
pub struct Page<'a> {
    pub title: &'a str,
    pub section: Section,
    pub session: &'a Session,
    pub live: Option<String>,
    pub refresh: Refresh,
    pub notice: Option<&'a str>,
}

/// What the page's script does with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing.
    None,
    /// Prepend the event's row to `#live-rows`.
    Rows,
    /// Reload `#live-part` from the same URL.
    Part,
}

impl<'a> Page<'a> {
    /// A page with no live updates.
    pub fn new(title: &'a str, section: Section, session: &'a Session) -> Page<'a> {
        Page { title, section, session, live: None, refresh: Refresh::None, notice: None }
    }

    /// Reloads its live part on events matching `query` (and on ticks).
    pub fn live_part(self, query: impl Into<String>) -> Page<'a> {
        Page { live: Some(query.into()), refresh: Refresh::Part, ..self }
    }

    /// Puts rows of events matching `query` on top of its table.
    pub fn live_rows(self, query: Option<String>) -> Page<'a> {
        Page { live: query, refresh: Refresh::Rows, ..self }
    }

    /// The frame around `body`.
    pub fn render(&self, body: Markup) -> Markup {
        let refresh = match self.refresh {
            Refresh::None => "none",
            Refresh::Rows => "rows",
            Refresh::Part => "part",
        };
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · jetsched" }
                    link rel="stylesheet" href="/assets/console.css";
                    script src="/assets/console.js" defer {}
                }
                body data-live=[self.live.as_deref()] data-refresh=(refresh) {
                    header.top {
                        a.brand href="/" { "jetsched" }
                        nav {
                            @for (section, href, label) in SECTIONS {
                                a href=(href) class=[(section == self.section).then_some("active")] { (label) }
                            }
                        }
                        span.who {
                            @if self.session.can_act() {
                                "actions enabled"
                            } @else if self.session.actions_allowed {
                                a href="/login" { "log in for actions" }
                            } @else {
                                "read-only"
                            }
                            " · "
                            span #live-state { "live: connecting" }
                        }
                    }
                    main {
                        @if let Some(notice) = self.notice {
                            p.notice { (notice) }
                        }
                        (body)
                    }
                }
            }
        }
    }
}

/// A coloured status badge.
pub fn badge(status: RunStatus) -> Markup {
    html! { span class={ "badge s-" (status.as_str()) } { (status.as_str()) } }
}

/// A time as `HH:MM:SS.mmm` UTC with the full instant on hover.
pub fn time(t: Timestamp) -> Markup {
    let dt = jiff::tz::TimeZone::UTC.to_datetime(t);
    let short =
        format!("{:02}:{:02}:{:02}.{:03}", dt.hour(), dt.minute(), dt.second(), dt.subsec_nanosecond() / 1_000_000);
    html! { time datetime=(t) title=(t) { (short) } }
}

/// Link to a run's page.
pub fn run_link(run_id: &str) -> Markup {
    html! { a.mono href={ "/runs/" (run_id) } { (run_id) } }
}

/// `value` as indented JSON, cut at [`MAX_SHOWN_BYTES`].
pub fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    capped(&text)
}

/// Text in a `<pre>`, cut at [`MAX_SHOWN_BYTES`] with a note.
pub fn capped(text: &str) -> Markup {
    let (shown, cut) = cut(text, MAX_SHOWN_BYTES);
    html! {
        pre.data { (shown) }
        @if cut > 0 { p.note { "… " (cut) " more bytes not shown" } }
    }
}

/// The first `max` bytes of `text` (at a character boundary) and how many were left out.
pub fn cut(text: &str, max: usize) -> (&str, usize) {
    if text.len() <= max {
        return (text, 0);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], text.len() - end)
}

/// One row of a run table, for an event: what the live stream sends and
/// the runs page's script prepends. Every value is escaped.
pub fn event_row(e: &RunEvent) -> Markup {
    html! {
        tr data-run=[e.run_id.as_deref()] data-status=(e.status.as_str()) {
            td { (time(e.at)) }
            td { (badge(e.status)) }
            td.mono { (e.task) }
            td { @match &e.run_id { Some(id) => (run_link(id)), None => span.mono { (e.key.as_deref().unwrap_or("-")) } } }
            td { @if e.attempt > 0 { (e.attempt) } }
            td { @if let Some(ms) = e.duration_ms { (ms) " ms" } }
            td.err { @if let Some(err) = &e.error { (cut(err, 300).0) } }
        }
    }
}

/// One row of a run table for a record (same columns as an event's row).
pub fn record_row(r: &RunRecord) -> Markup {
    let took = match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => Some(f.duration_since(s).as_millis()),
        _ => None,
    };
    html! {
        tr data-run=(r.run_id) data-status=(r.status.as_str()) {
            td { (time(r.updated_at)) }
            td { (badge(r.status)) }
            td.mono { (r.task) }
            td { (run_link(&r.run_id)) }
            td { @if r.attempt > 0 { (r.attempt) } }
            td { @if let Some(ms) = took { (ms) " ms" } }
            td.err { @if let Some(e) = &r.error { (cut(e, 300).0) } }
        }
    }
}

/// The header of a table of [`event_row`]s.
pub fn event_table(rows: Markup) -> Markup {
    html! {
        table.runs {
            thead { tr { th { "time (UTC)" } th { "status" } th { "task" } th { "run" } th { "attempt" } th { "took" } th { "error" } } }
            tbody #live-rows { (rows) }
        }
    }
}

/// A button that POSTs `fields` to `action` with the session's CSRF token;
/// absent when the session cannot act.
pub fn action(session: &Session, action: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    let Some(csrf) = session.csrf() else { return html! {} };
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            button type="submit" { (label) }
        }
    }
}

/// Server-drawn SVG (plotters' output, not user text) inline in a page.
pub fn svg(svg: &str) -> Markup {
    html! { div.chart { (PreEscaped(svg)) } }
}

/// `s` as a query value.
pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `n` followed by `one` or `many`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_escape_user_text() {
        let mut e = RunEvent::new(RunStatus::Failed, "t", Some("r".into()));
        e.error = Some("<script>alert(1)</script>".into());
        let html = event_row(&e).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn cut_stops_at_a_character_boundary() {
        assert_eq!(cut("héllo", 2), ("h", 5));
        assert_eq!(cut("abc", 5), ("abc", 0));
    }
}
