//! End-to-end payload encryption (AES-256-GCM), for users who want the NATS
//! operator and the streams to hold only ciphertext (Temporal's payload
//! codec is the model).
//!
//! A sealed payload is a JSON object anywhere a payload goes (a submission
//! body, a work item, a schedule's payload, a run record's result):
//!
//! ```json
//! {"$sealed": {"alg": "AES-256-GCM", "kid": "k2", "data": "<base64 of nonce || ciphertext>"}}
//! ```
//!
//! `data` is the 12-byte random nonce followed by the AES-256-GCM ciphertext
//! and its 16-byte tag, in standard base64 with padding; the associated data
//! is the key id (UTF-8), so a blob cannot be passed off under another key.
//! Messages that carry a sealed payload as their whole body also name the
//! key in the `Jetsched-Key-Id` header. Services pass sealed payloads
//! through untouched; only holders of the key file (the submitting CLI or
//! program, workers running local handlers, NATS functions) open them.
//!
//! A key file lists keys, one per line, `<key id> <base64 of 32 bytes>`;
//! `#` starts a comment. The first key seals; all of them open, so keys are
//! rotated by putting a new key first and keeping the old ones for as long
//! as runs sealed with them may be read.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

/// One key, ready to seal and open.
type Cipher = LessSafeKey;

/// The algorithm name sealed payloads carry.
pub const ALGORITHM: &str = "AES-256-GCM";

/// The key of a sealed payload's JSON object.
pub const SEALED: &str = "$sealed";

/// Why a key file or a sealed payload cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The key file is unreadable or malformed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The payload names a key the key file does not hold.
    #[error("the payload is sealed with key {0:?}, which the key file does not hold (keep old keys after rotating)")]
    UnknownKey(String),
    /// Authentication failed: another key under the same id, or altered data.
    #[error("cannot open the payload sealed with key {0:?}: wrong key or altered data")]
    Open(String),
    /// The sealed object itself is malformed.
    #[error("malformed sealed payload: {0}")]
    Malformed(String),
}

/// Keys by id; the first one seals.
#[derive(Clone)]
pub struct Keyring {
    active: String,
    keys: BTreeMap<String, std::sync::Arc<Cipher>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keyring").field("active", &self.active).field("ids", &self.keys.keys()).finish()
    }
}

impl Keyring {
    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Keyring, CodecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CodecError::KeyFile { path: path.display().to_string(), reason: e.to_string() })?;
        Keyring::parse(&text).map_err(|reason| CodecError::KeyFile { path: path.display().to_string(), reason })
    }

    /// Parses a key file's text.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut active = None;
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (kid, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {}: expected `<key id> <base64 key>`", n + 1))?;
            crate::validate_name("key id", kid).map_err(|e| format!("line {}: {e}", n + 1))?;
            let bytes = STANDARD.decode(key.trim()).map_err(|e| format!("line {}: key is not base64: {e}", n + 1))?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("line {}: a key is 32 bytes, this one {}", n + 1, bytes.len()))?;
            if keys.insert(kid.to_string(), std::sync::Arc::new(LessSafeKey::new(key))).is_some() {
                return Err(format!("line {}: key id {kid} appears twice", n + 1));
            }
            active.get_or_insert_with(|| kid.to_string());
        }
        let active = active.ok_or("no key in the file")?;
        Ok(Keyring { active, keys })
    }

    /// The id of the key that seals.
    pub fn active(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` with the active key.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Value, CodecError> {
        let cipher = self.keys.get(&self.active).ok_or_else(|| CodecError::UnknownKey(self.active.clone()))?;
        let mut nonce = [0u8; 12];
        SystemRandom::new().fill(&mut nonce).map_err(|_| CodecError::Malformed("no random nonce".to_string()))?;
        let mut data = plaintext.to_vec();
        cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(self.active.as_bytes()), &mut data)
            .map_err(|_| CodecError::Open(self.active.clone()))?;
        data.splice(0..0, nonce);
        Ok(serde_json::json!({SEALED: {"alg": ALGORITHM, "kid": self.active, "data": STANDARD.encode(data)}}))
    }

    /// Seals a JSON value (its compact JSON text).
    pub fn seal_value(&self, value: &Value) -> Result<Value, CodecError> {
        self.seal(&serde_json::to_vec(value).map_err(|e| CodecError::Malformed(e.to_string()))?)
    }

    /// Opens a sealed object's plaintext bytes.
    pub fn open(&self, sealed: &Value) -> Result<Vec<u8>, CodecError> {
        let inner = sealed.get(SEALED).ok_or_else(|| CodecError::Malformed(format!("no {SEALED:?} key")))?;
        let field = |name: &str| {
            inner.get(name).and_then(Value::as_str).ok_or_else(|| CodecError::Malformed(format!("no {name:?}")))
        };
        let alg = field("alg")?;
        if alg != ALGORITHM {
            return Err(CodecError::Malformed(format!("algorithm {alg:?}, not {ALGORITHM}")));
        }
        let kid = field("kid")?;
        let cipher = self.keys.get(kid).ok_or_else(|| CodecError::UnknownKey(kid.to_string()))?;
        let data = STANDARD.decode(field("data")?).map_err(|e| CodecError::Malformed(format!("data: {e}")))?;
        if data.len() < 12 + 16 {
            return Err(CodecError::Malformed("data is shorter than a nonce and a tag".to_string()));
        }
        let (nonce, ct) = data.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError::Malformed("nonce".to_string()))?;
        let mut buf = ct.to_vec();
        let plain = cipher
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| CodecError::Open(kid.to_string()))?;
        Ok(plain.to_vec())
    }

    /// Opens every sealed object in `value` (nested ones included, as in a
    /// workflow step's payload made of upstream results), in place.
    pub fn open_all(&self, value: &mut Value) -> Result<(), CodecError> {
        if is_sealed(value) {
            let bytes = self.open(value)?;
            *value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            return Ok(());
        }
        match value {
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.open_all(v)),
            Value::Object(map) => map.values_mut().try_for_each(|v| self.open_all(v)),
            _ => Ok(()),
        }
    }
}

/// Whether `value` is a sealed payload.
pub fn is_sealed(value: &Value) -> bool {
    value.as_object().is_some_and(|o| o.len() == 1 && o.get(SEALED).is_some_and(Value::is_object))
}

/// The key id of a sealed payload, anywhere in `value` (the first found).
pub fn sealed_key(value: &Value) -> Option<&str> {
    if is_sealed(value) {
        return value.get(SEALED)?.get("kid")?.as_str();
    }
    match value {
        Value::Array(items) => items.iter().find_map(sealed_key),
        Value::Object(map) => map.values().find_map(sealed_key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn sealed_payloads_open_with_their_key_and_keep_no_plaintext() {
        let ring = Keyring::parse(&format!("# keys\nk2 {}\nk1 {}\n", key(2), key(1))).unwrap();
        assert_eq!(ring.active(), "k2");
        let sealed = ring.seal_value(&serde_json::json!({"card": "4111-1111"})).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("4111"), "{sealed}");
        assert_eq!(sealed_key(&sealed), Some("k2"));
        let mut v = serde_json::json!({"upstream": sealed});
        ring.open_all(&mut v).unwrap();
        assert_eq!(v, serde_json::json!({"upstream": {"card": "4111-1111"}}));
    }

    #[test]
    fn rotation_keeps_old_payloads_readable_and_a_wrong_key_says_so() {
        let old = Keyring::parse(&format!("k1 {}", key(1))).unwrap();
        let sealed = old.seal(b"old").unwrap();
        let rotated = Keyring::parse(&format!("k2 {}\nk1 {}", key(2), key(1))).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), b"old");
        let dropped = Keyring::parse(&format!("k2 {}", key(2))).unwrap();
        assert_eq!(dropped.open(&sealed), Err(CodecError::UnknownKey("k1".into())));
        let wrong = Keyring::parse(&format!("k1 {}", key(9))).unwrap();
        assert_eq!(wrong.open(&sealed), Err(CodecError::Open("k1".into())));
        // The key id is bound to the data: relabelling fails too.
        let mut relabelled = sealed.clone();
        relabelled[SEALED]["kid"] = "k2".into();
        assert_eq!(rotated.open(&relabelled), Err(CodecError::Open("k2".into())));
    }

    #[test]
    fn key_files_are_checked() {
        assert!(Keyring::parse("").unwrap_err().contains("no key"));
        assert!(Keyring::parse("k1 notbase64!").unwrap_err().contains("base64"));
        assert!(Keyring::parse(&format!("k1 {}", STANDARD.encode([0u8; 16]))).unwrap_err().contains("32 bytes"));
        assert!(Keyring::parse(&format!("k1 {}\nk1 {}", key(1), key(2))).unwrap_err().contains("twice"));
        let debug = format!("{:?}", Keyring::parse(&format!("k1 {}", key(7))).unwrap());
        assert!(!debug.contains(&key(7)), "{debug}");
    }
}
