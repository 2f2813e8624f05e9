//! Checkpoints: a handler saves progress under its run id in
//! `jetsched-checkpoints`, and the next attempt of the run receives the last
//! one. NATS functions save with a plain KV put (any language, or `nats kv
//! put jetsched-checkpoints <run-id> <json>`) and receive it in the
//! `Jetsched-Checkpoint` header; exec commands write JSON to the file named by
//! `JETSCHED_CHECKPOINT_FILE` and receive it in `JETSCHED_CHECKPOINT`; Rust
//! handlers call [`crate::handlers::Invocation::save_checkpoint`].

use std::path::PathBuf;

use async_nats::jetstream::kv::Store;
use serde_json::Value;

/// Saves checkpoints of one run.
#[derive(Clone)]
pub struct Checkpoints {
    store: std::sync::Arc<Store>,
    run_id: String,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").field("run_id", &self.run_id).finish()
    }
}

impl Checkpoints {
    /// Checkpoints of `run_id`.
    pub fn new(store: std::sync::Arc<Store>, run_id: &str) -> Self {
        Checkpoints { store, run_id: run_id.to_string() }
    }

    /// The last saved checkpoint, if any.
    pub async fn load(&self) -> anyhow::Result<Option<Value>> {
        match self.store.get(&self.run_id).await? {
            Some(bytes) if !bytes.is_empty() => Ok(Some(serde_json::from_slice(&bytes)?)),
            _ => Ok(None),
        }
    }

    /// Saves `value` as the latest checkpoint.
    pub async fn save(&self, value: &Value) -> anyhow::Result<()> {
        self.store.put(&self.run_id, serde_json::to_vec(value)?.into()).await?;
        Ok(())
    }
}

/// The file an exec command may write its checkpoint to; saved whenever it
/// changes (checked at every heartbeat and when the command ends).
pub struct CheckpointFile {
    path: PathBuf,
    saved: Vec<u8>,
}

impl CheckpointFile {
    /// A fresh path for `run_id`'s attempt `attempt`.
    pub fn new(run_id: &str, attempt: u32) -> Self {
        let safe: String =
            run_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path =
            std::env::temp_dir().join(format!("jetsched-{}-{safe}-{attempt}.checkpoint.json", std::process::id()));
        CheckpointFile { path, saved: Vec::new() }
    }

    /// Its path, for the command's environment.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Saves the file's content if it changed and is JSON.
    pub async fn sync(&mut self, checkpoints: &Checkpoints) {
        let Ok(bytes) = tokio::fs::read(&self.path).await else { return };
        if bytes.is_empty() || bytes == self.saved {
            return;
        }
        // Not JSON (possibly half-written): try again at the next sync.
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            match checkpoints.save(&value).await {
                Ok(()) => self.saved = bytes,
                Err(err) => {
                    tracing::debug!(%err, "cannot save checkpoint");
                    crate::running::RUNNING.failed(&format_args!("cannot save checkpoint: {err}"));
                }
            }
        }
    }
}

impl Drop for CheckpointFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
