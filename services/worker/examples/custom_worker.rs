//! A worker binary with Rust handlers: `cargo run -p jetsched-worker --example
//! custom_worker -- --nats-url nats://127.0.0.1:4222`. Tasks run it with
//! `{"handler": {"type": "builtin", "name": "word-count"}}`.

use jetsched_worker::{Builtins, Invocation, Outcome};
use serde_json::json;

/// Counts the words of `payload.text`; saves progress so a retry resumes.
async fn word_count(inv: Invocation) -> Outcome {
    let Some(text) = inv.payload.get("text").and_then(|t| t.as_str()) else {
        return Outcome::permanent("payload.text must be a string");
    };
    let words = text.split_whitespace().count();
    if let Err(err) = inv.save_checkpoint(&json!({ "counted": words })).await {
        return Outcome::retry(format!("cannot save progress: {err}"));
    }
    Outcome::ok(json!({ "words": words }))
}

fn main() -> std::process::ExitCode {
    let mut handlers = Builtins::default();
    handlers.register("word-count", word_count);
    jetsched_worker::app::main(handlers)
}
