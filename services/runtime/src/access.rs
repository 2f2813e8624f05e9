//! What this connection may do on NATS, asked of the server at start-up
//! (`$SYS.REQ.USER.INFO`), compared with what a role needs
//! ([`jetsched_contract::permissions`]). A service whose user lacks a
//! permission stops at once with a message naming it, instead of retrying
//! forever against requests the server silently refuses (a denied publish
//! is answered by an asynchronous `-ERR` the request never sees: it only
//! times out).

use std::time::Duration;

use async_nats::{Client, StatusCode};
use jetsched_contract::permissions::{Granted, Missing, Permissions, Role, USER_INFO_SUBJECT};

/// How long the server gets to say what this connection may do.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Most missing permissions named in the error; the rest are counted.
const NAMED: usize = 12;

/// What the server said about this connection.
#[derive(Debug, Clone)]
pub enum Access {
    /// Its permissions (unrestricted parts are `None`).
    Known(Granted),
    /// The server did not say: no system account, or this user may not ask
    /// (`$SYS.REQ.USER.INFO` not in its publish allow-list), or the
    /// connection is not up yet.
    Unknown(String),
}

impl Access {
    /// Whether this connection may publish to `subject` (assumed yes when
    /// unknown: the server is the judge).
    pub fn may_publish(&self, subject: &str) -> bool {
        match self {
            Access::Known(g) => g.may_publish(subject),
            Access::Unknown(_) => true,
        }
    }
}

/// Asks the server what this connection may do.
pub async fn ask(client: &Client) -> Access {
    match tokio::time::timeout(ASK_TIMEOUT, client.request(USER_INFO_SUBJECT, bytes::Bytes::new())).await {
        Err(_) => Access::Unknown(format!("no answer on {USER_INFO_SUBJECT} within {ASK_TIMEOUT:?}")),
        Ok(Err(err)) => Access::Unknown(format!("{USER_INFO_SUBJECT}: {err}")),
        Ok(Ok(reply)) if reply.status == Some(StatusCode::NO_RESPONDERS) => {
            Access::Unknown(format!("nothing answers {USER_INFO_SUBJECT} (no system account)"))
        }
        Ok(Ok(reply)) => match Granted::from_user_info(&reply.payload) {
            Ok(granted) => Access::Known(granted),
            Err(why) => Access::Unknown(format!("{USER_INFO_SUBJECT}: {why}")),
        },
    }
}

/// A connection whose user lacks permissions its role needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "the NATS user lacks permissions the {role} role needs: {list}. `jetsched permissions {role}` prints \
     the role's whole allow-list (docs/OPERATIONS.md, \"Security\")"
)]
pub struct MissingPermissions {
    role: Role,
    list: String,
    /// What is missing.
    pub missing: Vec<Missing>,
}

/// Checks `access` against what `role` needs.
pub fn check(access: &Access, role: Role, needed: &Permissions) -> Result<(), MissingPermissions> {
    let Access::Known(granted) = access else { return Ok(()) };
    let missing = granted.missing(needed);
    if missing.is_empty() {
        return Ok(());
    }
    let mut list: Vec<String> = missing.iter().take(NAMED).map(|m| m.to_string()).collect();
    if missing.len() > NAMED {
        list.push(format!("and {} more", missing.len() - NAMED));
    }
    Err(MissingPermissions { role, list: list.join("; "), missing })
}
