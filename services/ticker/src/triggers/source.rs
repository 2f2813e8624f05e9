//! What both loops of a hosted trigger share (events one by one in
//! [`crate::triggers::runner`], held ones in [`crate::triggers::hold`]): the
//! trigger's spec and opened consumer, its pull requests, and turning a
//! delivered message into an event, a submission and an ack.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt;
use jetsched_contract::ticker::TriggerState;
use jetsched_contract::trigger::Source;
use jetsched_contract::{EventTrigger, TriggerEvent};
use jetsched_runtime::Outage;
use jiff::Timestamp;

use crate::triggers::Ctx;
use crate::triggers::event::{self, Stored, Submission};

/// Submissions cannot be stored (the inbox without a leader): one line when
/// it starts and one when it ends, however many triggers fail.
pub(crate) static SUBMITTING: Outage = Outage::new("submitting triggered runs");

/// How long a pull request waits for events before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// What the host runs: one trigger of one task as of one definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The task it starts.
    pub task: String,
    /// Its index in the task's `triggers`.
    pub index: u32,
    /// The task definition's KV revision.
    pub revision: u64,
    /// Events stored from this instant on are read (the write time of the
    /// definition); a consumer that exists already keeps its position.
    pub start: Timestamp,
    /// The trigger.
    pub trigger: EventTrigger,
    /// Its consumer's name.
    pub consumer: String,
    /// The ticker partition hosting it.
    pub partition: u16,
}

impl Spec {
    /// The stream holding its events, and the consumer's subject filter.
    pub fn stream_and_filter(&self, ctx: &Ctx) -> (String, Option<String>) {
        let names = &ctx.names;
        match self.trigger.source() {
            Source::Stream { stream, subject } => (stream.to_string(), subject.map(str::to_string)),
            Source::Subject(subject) => (names.triggers_stream(), Some(subject.to_string())),
            Source::Kv { bucket, key } => (names.bucket_stream(bucket), Some(names.kv_subject(bucket, key))),
        }
    }
}

/// A trigger's consumer, opened.
pub(crate) struct Opened {
    pub stream: JsStream,
    pub stream_name: String,
    pub consumer: PullConsumer,
    /// Its registration (with a journaled batch, if any) and that entry's revision.
    pub state: TriggerState,
    pub state_revision: u64,
}

/// Acks an event (a lost ack means a redelivery, which the run id absorbs).
pub(crate) async fn ack(msg: &Message) {
    if let Err(err) = msg.ack().await {
        tracing::debug!(%err, "cannot ack a trigger event; it comes back after ack_wait");
    }
}

/// Publishes `submission` to the task's inbox subject and waits for the ack.
/// The run's trace continues the event's, when it carries one.
pub(crate) async fn submit(
    ctx: &Ctx,
    spec: &Spec,
    submission: &Submission,
    source: Option<&HeaderMap>,
) -> Result<(), String> {
    let span = tracing::info_span!(
        "trigger",
        otel.kind = "producer",
        task = %spec.task,
        trigger = spec.index,
        msg_id = %submission.msg_id
    );
    let subject = ctx.names.submit_subject(&spec.task);
    let publish = ctx.publisher.publish(subject, HeaderMap::new(), &submission.msg_id, submission.body.clone().into());
    let result = jetsched_runtime::trace::Carried::from_headers(source).run_in(span, publish).await;
    match result {
        Ok(ack) => {
            SUBMITTING.recovered();
            tracing::debug!(task = %spec.task, msg_id = %submission.msg_id, duplicate = ack.duplicate, "triggered");
            Ok(())
        }
        Err(err) => {
            SUBMITTING.failed(&err);
            Err(err.to_string())
        }
    }
}

/// The event a delivered message stands for; `None` when the message
/// carries no stream metadata (it is acked and dropped: without a position
/// it has no run id).
pub(crate) fn event_of(ctx: &Ctx, spec: &Spec, stream: &str, msg: &Message) -> Option<TriggerEvent> {
    let Ok(info) = msg.info() else {
        tracing::warn!(task = %spec.task, subject = %msg.subject, "trigger event without stream metadata; dropped");
        return None;
    };
    let stored = Stored {
        stream,
        subject: msg.subject.as_str(),
        seq: info.stream_sequence,
        stored_nanos: info.published.unix_timestamp_nanos(),
        headers: msg.headers.as_ref(),
        body: &msg.payload,
    };
    Some(event::event(&ctx.names, &spec.trigger, &stored))
}

/// Pull requests for events, each standing for [`PULL_EXPIRES`], renewed as
/// they end. [`Pulls::request`] sends one when none stands (not
/// cancel-safe: call it outside `select!`); [`Pulls::next`] waits for the
/// next event (cancel-safe).
pub(crate) struct Pulls<'a> {
    consumer: &'a PullConsumer,
    batch: Option<async_nats::jetstream::consumer::pull::Batch>,
}

impl<'a> Pulls<'a> {
    pub fn new(consumer: &'a PullConsumer) -> Self {
        Pulls { consumer, batch: None }
    }

    /// Whether a request stands (events may still come from it).
    pub fn is_active(&self) -> bool {
        self.batch.is_some()
    }

    /// Sends a request for up to `n` events unless one stands.
    pub async fn request(&mut self, n: usize) -> Result<(), String> {
        if self.batch.is_some() {
            return Ok(());
        }
        let request = self.consumer.batch().max_messages(n).expires(PULL_EXPIRES).messages();
        let batch = tokio::time::timeout(PULL_EXPIRES * 2, request)
            .await
            .map_err(|_| "pull request timed out".to_string())?
            .map_err(|e| format!("cannot pull events: {e}"))?;
        self.batch = Some(batch);
        Ok(())
    }

    /// The next event; `Ok(None)` when the request ended (request again).
    pub async fn next(&mut self) -> Result<Option<Message>, String> {
        let Some(batch) = self.batch.as_mut() else { return Ok(None) };
        // The server ends a request at its expiry; one whose answer never
        // comes (the server went away) is given up after a while.
        match tokio::time::timeout(PULL_EXPIRES * 3, batch.next()).await {
            Ok(Some(Ok(msg))) => Ok(Some(msg)),
            Ok(Some(Err(err))) => {
                self.batch = None;
                Err(format!("pulling events failed: {err}"))
            }
            Ok(None) => {
                self.batch = None;
                Ok(None)
            }
            Err(_) => {
                self.batch = None;
                Err("no answer to a pull request".to_string())
            }
        }
    }
}
