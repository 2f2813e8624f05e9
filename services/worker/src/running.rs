//! The outage every run's NATS trouble reports to: a leaf module, so that
//! any part of the worker (the context's handlers and stores included) may
//! report to it without importing the context.

/// Running work fails for reasons outside the run (a stream or bucket
/// without a leader, NATS unreachable): one line when it starts, one when it
/// ends. Each run retries through its work message's redelivery.
pub(crate) static RUNNING: jetsched_runtime::Outage = jetsched_runtime::Outage::new("running work");
