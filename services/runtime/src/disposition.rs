//! What a service does with a JetStream message it has handled (an inbox
//! message, a work message): one type for every service, mapped to the
//! acknowledgement in one place.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

/// The single decision about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (handled, rejected into the DLQ, a duplicate): ack.
    Ack,
    /// Not yet, or transient trouble: deliver it again after the delay
    /// (a nak with delay; the server keeps it, so a crash loses nothing).
    Retry(Duration),
}

impl Disposition {
    /// Acks or naks `msg` as decided.
    pub async fn apply(self, msg: &Message) -> Result<(), async_nats::Error> {
        match self {
            Disposition::Ack => msg.ack().await,
            Disposition::Retry(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
        }
    }
}
