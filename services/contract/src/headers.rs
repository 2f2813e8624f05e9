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
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";
