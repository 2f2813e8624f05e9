//! Header names on jetsched messages, in one place.

/// JetStream de-duplication id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The run id; handlers use it as an idempotency key.
pub const RUN_ID: &str = "Jetsched-Run-Id";
/// The attempt number, starting at 1.
pub const ATTEMPT: &str = "Jetsched-Attempt";
/// RFC 3339 instant by which the handler must finish.
pub const DEADLINE: &str = "Jetsched-Deadline";
/// Set by a NATS function handler on a failed reply, with the reason.
pub const ERROR: &str = "Jetsched-Error";
/// `false` on a failed reply makes the failure permanent (no retry).
pub const RETRYABLE: &str = "Jetsched-Retryable";
/// Submission: importance override (0-10).
pub const IMPORTANCE: &str = "Jetsched-Importance";
/// Submission: do not start before this RFC 3339 instant.
pub const NOT_BEFORE: &str = "Jetsched-Not-Before";
/// The task name, on requests to handlers and on dead letters.
pub const TASK: &str = "Jetsched-Task";
/// The schedule id, when the run was fired by a schedule.
pub const SCHEDULE: &str = "Jetsched-Schedule";
/// Nominal fire time of a scheduled run (RFC 3339).
pub const SCHEDULED_FOR: &str = "Jetsched-Scheduled-For";
/// On a dead letter: why the message was dead-lettered.
pub const REASON: &str = "Jetsched-Reason";
/// On a dead letter: the subject the message was first published to.
pub const ORIGINAL_SUBJECT: &str = "Jetsched-Original-Subject";
/// To a handler: the last checkpoint its run saved (compact JSON), when small enough.
pub const CHECKPOINT: &str = "Jetsched-Checkpoint";
/// To a NATS function: where a cancel request for its run is published.
pub const CANCEL_SUBJECT: &str = "Jetsched-Cancel-Subject";
/// Submission: the run this one replays (set by `jetsched dlq replay`).
pub const REPLAY_OF: &str = "Jetsched-Replay-Of";
/// To a handler of a broadcast run: this worker's 0-based share index.
pub const SHARD_INDEX: &str = "Jetsched-Shard-Index";
/// To a handler of a broadcast run: how many workers got a share.
pub const SHARD_TOTAL: &str = "Jetsched-Shard-Total";
/// On a task log message: what the output came from (`stdout`, `stderr`,
/// `reply`, `response`, `log`, `jetsched`).
pub const LOG_SOURCE: &str = "Jetsched-Log-Source";
/// The key a sealed payload (the whole body) is sealed with (see `codec`).
pub const KEY_ID: &str = "Jetsched-Key-Id";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// The importance a submission asks for in [`IMPORTANCE`]: a whole number 0-10.
pub fn parse_importance(value: &str) -> Result<u8, String> {
    match value.trim().parse::<u8>() {
        Ok(i) if i <= 10 => Ok(i),
        _ => Err(format!("{IMPORTANCE} must be a whole number 0-10, got {}", shown(value))),
    }
}

/// The instant a submission asks to wait for in [`NOT_BEFORE`] (RFC 3339).
pub fn parse_not_before(value: &str) -> Result<jiff::Timestamp, String> {
    value
        .trim()
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("{NOT_BEFORE} must be an RFC 3339 instant, got {} ({e})", shown(value)))
}

/// A user's value in an error message: quoted, and cut when long.
pub fn shown(value: &str) -> String {
    const KEEP: usize = 64;
    if value.len() <= KEEP {
        return format!("{value:?}");
    }
    let mut cut = KEEP;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..cut], value.len())
}

/// Longest reason an `invalid` or `rejected` event carries.
pub const MAX_REASON: usize = 1024;

/// `reason` cut to [`MAX_REASON`] bytes, saying so: a reason quoting a
/// user's mebibyte-long value must still fit an event.
pub fn bounded(reason: String) -> String {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut cut = MAX_REASON;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &reason[..cut], reason.len())
}
