//! Fire-time computation for jetsched schedules, free of I/O so that every
//! rule (cron with L/W/#, every with phase, at, DST policies, bounds, jitter)
//! is unit-tested without NATS.

pub mod calendar;
pub mod cron;

pub use calendar::{Calendar, DstPolicy, FoldPolicy, GapPolicy, Rule, Span, jitter_offset};
pub use cron::{Cron, CronError};
