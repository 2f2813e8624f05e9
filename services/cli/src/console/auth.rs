//! Who may act. The console is read-only unless started with
//! `--allow-actions` and a token. An operator logs in once with the token
//! (`POST /login`); the console then sets a session cookie (`HttpOnly`,
//! `SameSite=Strict`) and puts the session's CSRF token in every action
//! form. An action (a `POST`) is carried out when it comes
//! - from a logged-in browser: the session cookie, the form's `csrf` field
//!   equal to that session's token, and no `Sec-Fetch-Site: cross-site`
//!   (another site can make a browser send the cookie, never read the
//!   token); or
//! - from a script: `Authorization: Bearer <token>` (a header another site
//!   cannot make a browser send).
//!
//! Sessions live in this process's memory for [`SESSION_TTL`]; restarting
//! the console logs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use subtle::ConstantTimeEq as _;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "jetsched_console";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest are dropped).
const MAX_SESSIONS: usize = 1_000;

/// The console's access rules and open sessions.
pub struct Auth {
    /// The token actions need; `None`: read-only.
    token: Option<String>,
    sessions: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    csrf: String,
    expires: Instant,
}

/// What the requester of a page may do.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The console takes actions at all.
    pub actions_allowed: bool,
    csrf: Option<String>,
}

impl Session {
    /// Logged in on a console that takes actions.
    pub fn can_act(&self) -> bool {
        self.csrf.is_some()
    }

    /// The CSRF token to put in action forms.
    pub fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Started without `--allow-actions`.
    ReadOnly,
    /// No valid session or token.
    NotLoggedIn,
    /// Session cookie without the matching form token, or a cross-site request.
    Csrf,
}

impl Refusal {
    /// What to tell the requester.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "this console is read-only (start it with --allow-actions and a token)",
            Refusal::NotLoggedIn => "log in with the console's token first (/login)",
            Refusal::Csrf => "the form's token does not match your session; reload the page and try again",
        }
    }
}

impl Auth {
    /// Actions allowed with `token`, or read-only (`None`).
    pub fn new(token: Option<String>) -> Auth {
        Auth { token, sessions: Mutex::new(HashMap::new()) }
    }

    /// Whether actions are allowed at all.
    pub fn actions_allowed(&self) -> bool {
        self.token.is_some()
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token.as_deref().is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
    }

    /// Opens a session when `given` is the token; returns its cookie value.
    pub fn login(&self, given: &str) -> anyhow::Result<Option<String>> {
        if !self.token_matches(given) {
            return Ok(None);
        }
        let id = random_token()?;
        let entry = Entry { csrf: random_token()?, expires: Instant::now() + SESSION_TTL };
        let Ok(mut sessions) = self.sessions.lock() else { anyhow::bail!("session store poisoned") };
        let now = Instant::now();
        sessions.retain(|_, e| e.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), entry);
        Ok(Some(id))
    }

    /// Ends the session in `headers`' cookie.
    pub fn logout(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut sessions)) = (session_cookie(headers), self.sessions.lock()) {
            sessions.remove(id);
        }
    }

    /// The session of a request.
    pub fn session(&self, headers: &HeaderMap) -> Session {
        let mut session = Session { actions_allowed: self.actions_allowed(), csrf: None };
        if !session.actions_allowed {
            return session;
        }
        if let (Some(id), Ok(sessions)) = (session_cookie(headers), self.sessions.lock())
            && let Some(entry) = sessions.get(id).filter(|e| e.expires > Instant::now())
        {
            session.csrf = Some(entry.csrf.clone());
        }
        session
    }

    /// Whether an action request with form field `csrf` may be carried out.
    pub fn authorize(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), Refusal> {
        if !self.actions_allowed() {
            return Err(Refusal::ReadOnly);
        }
        if let Some(bearer) =
            headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        {
            return if self.token_matches(bearer.trim()) { Ok(()) } else { Err(Refusal::NotLoggedIn) };
        }
        let Some(expected) = self.session(headers).csrf else { return Err(Refusal::NotLoggedIn) };
        let cross_site = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
        let matches = csrf.is_some_and(|c| bool::from(c.as_bytes().ct_eq(expected.as_bytes())));
        if cross_site || !matches {
            return Err(Refusal::Csrf);
        }
        Ok(())
    }
}

/// The session id in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that opens session `id`.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that ends the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// 128 random bits from the operating system, as hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, format!("other=1; {COOKIE_NAME}={id}").parse().unwrap());
        h
    }

    #[test]
    fn read_only_refuses_everything() {
        let auth = Auth::new(None);
        assert_eq!(auth.login("x").unwrap(), None);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(auth.authorize(&h, None), Err(Refusal::ReadOnly));
    }

    #[test]
    fn a_session_acts_only_with_its_csrf_token_from_the_same_site() {
        let auth = Auth::new(Some("secret".into()));
        assert_eq!(auth.login("wrong").unwrap(), None);
        let id = auth.login("secret").unwrap().unwrap();
        let headers = with_cookie(&id);
        let session = auth.session(&headers);
        let csrf = session.csrf().unwrap().to_string();
        assert_eq!(auth.authorize(&headers, Some(&csrf)), Ok(()));
        assert_eq!(auth.authorize(&headers, None), Err(Refusal::Csrf));
        assert_eq!(auth.authorize(&headers, Some("guess")), Err(Refusal::Csrf));
        let mut cross = headers.clone();
        cross.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(auth.authorize(&cross, Some(&csrf)), Err(Refusal::Csrf));
        assert_eq!(auth.authorize(&HeaderMap::new(), Some(&csrf)), Err(Refusal::NotLoggedIn));
        auth.logout(&headers);
        assert_eq!(auth.authorize(&headers, Some(&csrf)), Err(Refusal::NotLoggedIn));
    }

    #[test]
    fn a_script_acts_with_the_bearer_token() {
        let auth = Auth::new(Some("secret".into()));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert_eq!(auth.authorize(&h, None), Ok(()));
        h.insert(AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(auth.authorize(&h, None), Err(Refusal::NotLoggedIn));
    }
}
