//! jetsched's public contract: every subject, stream, bucket and consumer
//! definition, header name and payload type. Services and the CLI build all
//! names through [`Names`] and all payloads through these types, so the
//! contract lives in one place; `schemas/` is its JSON Schema form and a test
//! keeps the two in agreement.

pub mod backfill;
pub mod codec;
pub mod duration;
pub mod event;
pub mod hash;
pub mod headers;
pub mod message;
pub mod names;
pub mod overlap;
pub mod permissions;
pub mod resources;
pub mod routing;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod task;
pub mod ticker;
pub mod trigger;
pub mod window;
pub mod workflow;

pub use backfill::{Backfill, BackfillProgress, BackfillReport, BackfillStatus};
pub use duration::{HumanDuration, parse_duration};
pub use event::{RunEvent, RunStatus};
pub use message::{DueFire, WithdrawReply, WorkItem, WorkerInfo};
pub use names::{BANDS, DEFAULT_PREFIX, DEFAULT_QUEUE, InboxKind, NameError, Names, UNDISPATCHED_QUEUE, validate_name};
pub use permissions::{Granted, Missing, Permissions, Role, Scope};
pub use resources::{ByteAmount, Cores, Need, Resources, Room};
pub use routing::{RateLimit, Routing, render_template};
pub use run::RunRecord;
pub use schedule::{Misfire, MisfirePolicy, Overlap, ScheduleDef, TaskRef};
pub use setup::{Handles, SetupError, TickerBuckets, Topology};
pub use task::{Handler, RetryPolicy, TaskDef};
pub use trigger::{EventTrigger, TriggerEvent};
pub use window::{Window, WindowDef};
pub use workflow::{StepOutcome, StepStart, WorkflowState};
