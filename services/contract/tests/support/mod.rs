//! Shared by `schemas.rs` (the definitions users write) and `schemas_messages.rs` (the
//! messages and records the services write): the schemas, compiled, and the assertions that
//! hold them and the Rust parsers in agreement.
//!
//! The schemas refer to each other with relative `$ref`s (`task.json#/$defs/duration`);
//! they are registered under their `file://` URIs so that resolution works offline.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jetsched_contract::{
    Backfill, DueFire, RunEvent, RunRecord, ScheduleDef, StepOutcome, StepStart, TaskDef, TriggerEvent, WindowDef,
    WorkItem, WorkerInfo,
};
use jsonschema::{Draft, Registry, Validator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A Rust parser's verdict on a document: the services accept it, or the reason they do not.
pub type Parser = fn(&str) -> Result<(), String>;

/// Every schema file, with the parser the services use for what it describes.
pub const SCHEMA_FILES: [(&str, Parser); 14] = [
    ("task.json", parse_task),
    ("schedule.json", parse_schedule),
    ("window.json", parse_window),
    ("run-event.json", parse_serde::<RunEvent>),
    ("run-record.json", parse_serde::<RunRecord>),
    ("due-fire.json", parse_serde::<DueFire>),
    ("work-item.json", parse_serde::<WorkItem>),
    ("step-start.json", parse_serde::<StepStart>),
    ("step-outcome.json", parse_serde::<StepOutcome>),
    ("ticker-state.json", parse_ticker_state),
    ("overlap-state.json", parse_serde::<jetsched_contract::overlap::OverlapState>),
    ("worker.json", parse_serde::<WorkerInfo>),
    ("backfill.json", parse_backfill),
    ("trigger-event.json", parse_serde::<TriggerEvent>),
];

/// The schemas as JSON and as compiled validators.
pub struct Schemas {
    raw: BTreeMap<&'static str, Value>,
    validators: BTreeMap<&'static str, Validator>,
}

impl Schemas {
    pub fn raw(&self, file: &str) -> &Value {
        &self.raw[file]
    }

    /// Whether `doc` is valid under `file`, with the errors when it is not.
    pub fn verdict(&self, file: &str, doc: &Value) -> Result<(), String> {
        let errors: Vec<String> = self.validators[file].iter_errors(doc).map(|e| e.to_string()).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").canonicalize().expect("schemas/ directory exists")
}

fn file_uri(dir: &Path, file: &str) -> String {
    format!("file://{}/{file}", dir.display())
}

pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = schema_dir();
        let raw: BTreeMap<&'static str, Value> = SCHEMA_FILES
            .iter()
            .map(|(file, _)| {
                let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
                let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
                (*file, value)
            })
            .collect();
        let registry = Registry::new()
            .extend(raw.iter().map(|(file, value)| (file_uri(&dir, file), value.clone())))
            .expect("schema URIs are valid")
            .prepare()
            .expect("schemas resolve against each other");
        let validators = raw
            .iter()
            .map(|(file, value)| {
                let validator = jsonschema::options()
                    .with_draft(Draft::Draft202012)
                    // `format` is only an annotation in 2020-12 unless asked for; the services
                    // reject malformed timestamps and dates, so the test asserts it.
                    .should_validate_formats(true)
                    .with_registry(&registry)
                    .with_base_uri(file_uri(&dir, file))
                    .build(value)
                    .unwrap_or_else(|e| panic!("{file} is not a valid 2020-12 schema: {e}"));
                (*file, validator)
            })
            .collect();
        Schemas { raw, validators }
    })
}

// ---- the Rust side's verdicts ----

pub fn parse_task(doc: &str) -> Result<(), String> {
    TaskDef::from_json(doc.as_bytes()).map(drop)
}

pub fn parse_schedule(doc: &str) -> Result<(), String> {
    ScheduleDef::from_json("s", doc.as_bytes()).map(drop)
}

pub fn parse_window(doc: &str) -> Result<(), String> {
    WindowDef::from_json("w", doc.as_bytes()).map(drop)
}

/// Either value a ticker keeps in its bucket: a watermark or a fire count
/// (which the ticker only writes once a fire is stored, so never 0).
pub fn parse_ticker_state(doc: &str) -> Result<(), String> {
    use jetsched_contract::ticker::{FiredCount, TriggerState, Watermark};
    let watermark = serde_json::from_str::<Watermark>(doc).map(drop).map_err(|e| e.to_string());
    let count = serde_json::from_str::<FiredCount>(doc)
        .map_err(|e| e.to_string())
        .and_then(|c| if c.fired == 0 { Err("a stored count is at least 1".to_string()) } else { Ok(()) });
    let trigger = serde_json::from_str::<TriggerState>(doc).map(drop).map_err(|e| e.to_string());
    watermark.or(count).or(trigger)
}

pub fn parse_backfill(doc: &str) -> Result<(), String> {
    Backfill::from_json(doc.as_bytes()).map(drop)
}

pub fn parse_serde<T: DeserializeOwned>(doc: &str) -> Result<(), String> {
    serde_json::from_str::<T>(doc).map(drop).map_err(|e| e.to_string())
}

fn doc_json(doc: &str) -> Value {
    serde_json::from_str(doc).unwrap_or_else(|e| panic!("test document is not JSON: {e}: {doc}"))
}

// ---- assertions ----

/// Asserts that the schema `file` and `parse` both accept every document of `valid` and
/// both reject every document of `invalid` (each with a note saying what is wrong).
pub fn assert_agreement(file: &str, parse: Parser, valid: &[&str], invalid: &[(&str, &str)]) {
    let schemas = schemas();
    let mut failures = Vec::new();
    for doc in valid {
        if let Err(e) = schemas.verdict(file, &doc_json(doc)) {
            failures.push(format!("{file} rejects a valid document: {e}\n  {doc}"));
        }
        if let Err(e) = parse(doc) {
            failures.push(format!("the parser rejects a valid {file} document: {e}\n  {doc}"));
        }
    }
    for (why, doc) in invalid {
        if schemas.verdict(file, &doc_json(doc)).is_ok() {
            failures.push(format!("{file} accepts a document with {why}\n  {doc}"));
        }
        if parse(doc).is_ok() {
            failures.push(format!("the parser accepts a {file} document with {why}\n  {doc}"));
        }
    }
    assert!(failures.is_empty(), "{} disagreement(s):\n{}", failures.len(), failures.join("\n"));
}

/// Asserts that the schema accepts each document and `parse` rejects it, with a reason
/// containing the document's note.
pub fn assert_only_parser_rejects(file: &str, parse: Parser, docs: &[(&str, &str)]) {
    let schemas = schemas();
    for (needle, doc) in docs {
        if let Err(e) = schemas.verdict(file, &doc_json(doc)) {
            panic!("{file} was expected to accept (the parser's semantic check rejects it), but: {e}\n  {doc}");
        }
        match parse(doc) {
            Ok(()) => panic!("the parser accepts a {file} document it should reject ({needle})\n  {doc}"),
            Err(e) => assert!(e.contains(needle), "expected a reason containing {needle:?}, got {e:?}\n  {doc}"),
        }
    }
}

/// Asserts that the schema rejects each document (written in a spelling it does not
/// document) and `parse` still accepts it.
pub fn assert_only_schema_rejects(file: &str, parse: Parser, docs: &[(&str, &str)]) {
    let schemas = schemas();
    for (what, doc) in docs {
        assert!(
            schemas.verdict(file, &doc_json(doc)).is_err(),
            "{file} now accepts {what}; move it to the agreement table\n  {doc}"
        );
        if let Err(e) = parse(doc) {
            panic!("the parser now rejects {what} ({e}); move it to the agreement table\n  {doc}");
        }
    }
}

pub fn assert_valid(file: &str, value: &Value) {
    if let Err(e) = schemas().verdict(file, value) {
        panic!("{file} rejects a value the services write: {e}\n  {value}");
    }
}

/// Asserts that `value` serialized is valid under `file` and deserializes to itself.
pub fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(file: &str, value: &T) {
    let json = serde_json::to_value(value).unwrap_or_else(|e| panic!("serialize {value:?}: {e}"));
    assert_valid(file, &json);
    let back: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("read back {json}: {e}"));
    assert_eq!(&back, value, "{file}: the value changes on the way through JSON");
}

// ---- defaults ----

/// The `default` of every property of the object schema at `pointer` in `file`.
pub fn defaults(file: &str, pointer: &str) -> Map<String, Value> {
    let object = schemas().raw(file).pointer(pointer).unwrap_or_else(|| panic!("{file}#{pointer} exists"));
    object["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{file}#{pointer} has properties"))
        .iter()
        .filter_map(|(name, property)| Some((name.clone(), property.get("default")?.clone())))
        .collect()
}

/// `base` with `extra`'s fields added at `pointer` (an object inside `base`).
pub fn merged(base: &Value, pointer: &str, extra: Map<String, Value>) -> String {
    let mut doc = base.clone();
    let target =
        doc.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("{pointer} in {base}"));
    target.extend(extra);
    doc.to_string()
}

/// Asserts that `base` with the documented defaults of `file#defaults_at` written out at
/// `extra_at` reads as the same `T` as `base` itself.
pub fn assert_defaults<T: DeserializeOwned + PartialEq + Debug>(
    file: &str,
    base: &Value,
    extra_at: &str,
    defaults_at: &str,
) {
    let with_defaults = merged(base, extra_at, defaults(file, defaults_at));
    let read = |doc: &str| serde_json::from_str::<T>(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    assert_eq!(read(&with_defaults), read(&base.to_string()), "defaults of {file}#{defaults_at}");
}
