//! Request bodies of the daemon's admin API: parsing and checking, without HTTP.
//!
//! Each parser takes the raw body bytes and either returns what the request asks for or
//! a [`BodyError`] whose message names the offending field, so a client sees exactly what
//! to fix. An empty body (only ASCII whitespace) is refused where the request needs
//! fields and stands for the defaults where it does not.

use std::borrow::Cow;
use std::path::PathBuf;

use serde_json::{Map, Value};
use tryswap_fsm::Generation;

use crate::supervisor::CandidateSpec;

/// A parsed `POST /v1/slots/{slot}/reloads` body.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadRequest {
    /// `{"artifact": …, "config_file": …, "dry_run": …}`.
    Candidate {
        /// The candidate and its config file.
        spec: CandidateSpec,
        /// Try only.
        dry_run: bool,
    },
    /// `{"rollback": true}` or `{"rollback_to": N}`.
    Rollback {
        /// The generation to bring back (default: the previous one).
        to: Option<Generation>,
    },
}

/// Why a request body was refused. The message is meant for the client as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body as a whole is wrong: empty where fields are needed, not JSON, or a JSON
    /// value other than an object.
    #[error("{0}")]
    Body(String),
    /// One field is unknown, of the wrong type or value, missing, or not allowed with
    /// another field; the message names it.
    #[error("{message}")]
    Field {
        /// The offending field, as the client spelled it.
        field: String,
        /// The whole message, naming the field.
        message: String,
    },
}

impl BodyError {
    fn field(field: &str, message: String) -> Self {
        BodyError::Field {
            field: field.to_owned(),
            message,
        }
    }

    /// The field the error is about, if it is about one field.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            BodyError::Body(_) => None,
            BodyError::Field { field, .. } => Some(field),
        }
    }
}

const RELOAD_FIELDS: &str = "artifact, bake, config_file, dry_run, rollback, rollback_to, reason";

/// True for a body that counts as empty: nothing but ASCII whitespace.
fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn path_field(
    body: &Map<String, Value>,
    field: &str,
    what: &str,
) -> Result<Option<PathBuf>, BodyError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(BodyError::field(
            field,
            format!("field `{field}` must not be empty ({what})"),
        )),
        Some(Value::String(s)) if s.contains('\0') => Err(BodyError::field(
            field,
            format!("field `{field}` must not contain a NUL character"),
        )),
        Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(BodyError::field(
            field,
            format!(
                "field `{field}` must be a string ({what}), not {}",
                kind_of(other)
            ),
        )),
    }
}

fn bool_field(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, BodyError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(BodyError::field(
            field,
            format!(
                "field `{field}` must be true or false, not {}",
                kind_of(other)
            ),
        )),
    }
}

fn generation_field(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<Generation>, BodyError> {
    let message = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match n.as_u64().filter(|g| *g > 0) {
            Some(g) => return Ok(Some(Generation(g))),
            None => {
                format!("field `{field}` must be a generation number (a positive integer), not {n}")
            }
        },
        Some(other) => format!(
            "field `{field}` must be a generation number, not {}",
            kind_of(other)
        ),
    };
    Err(BodyError::field(field, message))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_object(body: &[u8], example: &str) -> Result<Map<String, Value>, BodyError> {
    if is_blank(body) {
        return Err(BodyError::Body(format!(
            "the body is empty: expected a JSON object such as {example}"
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(BodyError::Body(format!(
            "the body must be a JSON object such as {example}, not {}",
            kind_of(&other)
        ))),
        Err(e) => Err(BodyError::Body(format!("the body is not valid JSON: {e}"))),
    }
}

/// A client-given key as it is shown in a message: as is, except that control characters
/// are escaped (`\n`, `\u{7f}`) so the message stays one printable line wherever it is
/// printed or logged.
fn shown(key: &str) -> Cow<'_, str> {
    if key.chars().any(char::is_control) {
        let mut escaped = String::with_capacity(key.len() + 8);
        for c in key.chars() {
            if c.is_control() {
                escaped.extend(c.escape_debug());
            } else {
                escaped.push(c);
            }
        }
        Cow::Owned(escaped)
    } else {
        Cow::Borrowed(key)
    }
}

/// Refuses the first key of `map` that is not in `expected` (a `", "`-separated list).
fn only_fields(map: &Map<String, Value>, expected: &str) -> Result<(), BodyError> {
    let Some(key) = map
        .keys()
        .find(|key| !expected.split(", ").any(|f| f == *key))
    else {
        return Ok(());
    };
    let one_of = if expected.contains(", ") {
        "one of "
    } else {
        ""
    };
    Err(BodyError::field(
        key,
        format!(
            "unknown field `{}` (expected {one_of}{expected})",
            shown(key)
        ),
    ))
}

/// Parses and checks a `POST /v1/slots/{slot}/reloads` body: a candidate
/// (`artifact`, optional `config_file` and `dry_run`) or a rollback (`rollback: true` or
/// `rollback_to: N`). Errors name the offending field.
pub fn parse_reload_body(body: &[u8]) -> Result<ReloadRequest, BodyError> {
    parse_reload_with_bake(body).map(|(request, _)| request)
}

/// [`parse_reload_body`] with the optional `bake` field: the bake window (`"30s"`,
/// overriding the slot's `bake`; `"0s"`: none). Refused with a dry run.
pub fn parse_reload_with_bake(
    body: &[u8],
) -> Result<(ReloadRequest, Option<std::time::Duration>), BodyError> {
    let map = json_object(body, r#"{"artifact": "/path/to/plugin"}"#)?;
    let bake = match map.get("bake") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            crate::config::parse_bake(text)
                .map_err(|e| BodyError::field("bake", format!("field `bake`: {e}")))?,
        ),
        Some(other) => {
            return Err(BodyError::field(
                "bake",
                format!(
                    "field `bake` must be a duration such as \"30s\", not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    if bake.is_some() && bool_field(&map, "dry_run")? == Some(true) {
        return Err(BodyError::field(
            "bake",
            "field `bake` is not allowed with `dry_run`: a dry run activates nothing".to_owned(),
        ));
    }
    parse_reload_map(map).map(|request| (request, bake))
}

fn parse_reload_map(map: Map<String, Value>) -> Result<ReloadRequest, BodyError> {
    only_fields(&map, RELOAD_FIELDS)?;
    let artifact = path_field(&map, "artifact", "the candidate plugin executable's path")?;
    let config_file = path_field(&map, "config_file", "the candidate's config file path")?;
    let dry_run = bool_field(&map, "dry_run")?;
    let rollback = bool_field(&map, "rollback")?.unwrap_or(false);
    let rollback_to = generation_field(&map, "rollback_to")?;
    if rollback || rollback_to.is_some() {
        let with = if rollback_to.is_some() {
            "rollback_to"
        } else {
            "rollback"
        };
        for (field, given) in [
            ("artifact", artifact.is_some()),
            ("config_file", config_file.is_some()),
            ("dry_run", dry_run == Some(true)),
        ] {
            if given {
                return Err(BodyError::field(
                    field,
                    format!(
                        "field `{field}` is not allowed with `{with}`: a rollback reactivates a stored generation"
                    ),
                ));
            }
        }
        return Ok(ReloadRequest::Rollback { to: rollback_to });
    }
    let Some(artifact) = artifact else {
        return Err(BodyError::field(
            "artifact",
            "field `artifact` is required: the candidate plugin executable's path (or give `rollback`: true)"
                .to_owned(),
        ));
    };
    Ok(ReloadRequest::Candidate {
        spec: CandidateSpec {
            executable: Some(artifact),
            config: config_file,
        },
        dry_run: dry_run.unwrap_or(false),
    })
}

/// Parses a `POST /v1/config/reload` body: empty (no dry run) or `{"dry_run": bool}`.
/// Returns whether only a dry run is asked for.
pub fn parse_config_reload_body(body: &[u8]) -> Result<bool, BodyError> {
    if is_blank(body) {
        return Ok(false);
    }
    let map = json_object(body, r#"{"dry_run": false}"#)?;
    only_fields(&map, "dry_run, reason")?;
    Ok(bool_field(&map, "dry_run")?.unwrap_or(false))
}

/// Parses a `POST /v1/journal/compact` body: empty or `{"keep": N}`. Returns how many
/// records to keep per slot, [`tryswap_journal::DEFAULT_KEEP_PER_SLOT`] when not given.
pub fn parse_compact_body(body: &[u8]) -> Result<usize, BodyError> {
    if is_blank(body) {
        return Ok(tryswap_journal::DEFAULT_KEEP_PER_SLOT);
    }
    let map = json_object(body, r#"{"keep": 100}"#)?;
    only_fields(&map, "keep")?;
    match map.get("keep") {
        None | Some(Value::Null) => Ok(tryswap_journal::DEFAULT_KEEP_PER_SLOT),
        Some(Value::Number(n)) => {
            n.as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| {
                    BodyError::field(
                        "keep",
                        format!("field `keep` must be a non-negative integer, not {n}"),
                    )
                })
        }
        Some(other) => Err(BodyError::field(
            "keep",
            format!(
                "field `keep` must be a non-negative integer, not {}",
                kind_of(other)
            ),
        )),
    }
}

/// The longest operator reason accepted (`--reason`, API `"reason"`), in bytes.
pub const REASON_MAX: usize = 1024;

/// Checks an operator reason: 1 to [`REASON_MAX`] bytes without control characters
/// (it is shown in tables and logs). Returns why not.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("the reason is empty".to_owned());
    }
    if reason.len() > REASON_MAX {
        return Err(format!(
            "the reason is {} bytes, over the {REASON_MAX}-byte limit",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason holds a control character (a newline, a tab, …)".to_owned());
    }
    Ok(())
}

/// The optional `"reason"` field of a mutating request's body (reload, start, stop,
/// recover, config reload): `None` for an empty body or no field.
pub fn parse_reason(body: &[u8]) -> Result<Option<String>, BodyError> {
    if is_blank(body) {
        return Ok(None);
    }
    let map = json_object(body, r#"{"reason": "ticket 42"}"#)?;
    match map.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(reason)) => check_reason(reason)
            .map(|()| Some(reason.clone()))
            .map_err(|why| BodyError::field("reason", format!("field `reason`: {why}"))),
        Some(other) => Err(BodyError::field(
            "reason",
            format!("field `reason` must be a string, not {}", kind_of(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        parse_reload_body(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reload_bodies_are_parsed_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_reload_body(br#"{"artifact":"/p","config_file":"/c","dry_run":true}"#).unwrap(),
            ReloadRequest::Candidate {
                spec: CandidateSpec::executable("/p").with_config("/c"),
                dry_run: true
            }
        );
        assert_eq!(
            parse_reload_body(br#"{"rollback_to":2}"#).unwrap(),
            ReloadRequest::Rollback {
                to: Some(Generation(2))
            }
        );
        assert_eq!(
            parse_reload_body(br#"{"rollback":true}"#).unwrap(),
            ReloadRequest::Rollback { to: None }
        );
        assert!(bad(r#"{"artifact":5}"#).contains("`artifact`"));
        assert!(bad(r#"{"dry_run":"yes"}"#).contains("`dry_run`"));
        assert!(bad(r#"{}"#).contains("`artifact` is required"));
        assert!(bad(r#"{"artefact":"/p"}"#).contains("unknown field `artefact`"));
        assert!(bad(r#"{"rollback_to":0}"#).contains("`rollback_to`"));
        assert!(bad(r#"{"rollback":true,"artifact":"/p"}"#).contains("`artifact`"));
        assert!(bad("[1]").contains("JSON object"));
        assert!(bad("{").contains("not valid JSON"));
        assert!(bad("").contains("empty"));
    }

    #[test]
    fn reload_body_messages_are_unchanged() {
        assert_eq!(
            bad(r#"{"artefact":"/p"}"#),
            "unknown field `artefact` (expected one of artifact, bake, config_file, dry_run, rollback, rollback_to, reason)"
        );
        assert_eq!(
            bad(" \n"),
            r#"the body is empty: expected a JSON object such as {"artifact": "/path/to/plugin"}"#
        );
        assert_eq!(
            bad(r#"{"artifact":""}"#),
            "field `artifact` must not be empty (the candidate plugin executable's path)"
        );
        assert_eq!(
            bad(r#"{"artifact":"/a\u0000b"}"#),
            "field `artifact` must not contain a NUL character"
        );
        assert_eq!(
            bad(r#"{"config_file":[]}"#),
            "field `config_file` must be a string (the candidate's config file path), not an array"
        );
        assert_eq!(
            bad(r#"{"rollback_to":-1}"#),
            "field `rollback_to` must be a generation number (a positive integer), not -1"
        );
        assert_eq!(
            bad(r#"{"rollback_to":"2"}"#),
            "field `rollback_to` must be a generation number, not a string"
        );
        assert_eq!(
            bad(r#"{"rollback_to":3,"dry_run":true}"#),
            "field `dry_run` is not allowed with `rollback_to`: a rollback reactivates a stored generation"
        );
        // A false dry run is allowed with a rollback; a false rollback is a candidate.
        assert_eq!(
            parse_reload_body(br#"{"rollback":true,"dry_run":false}"#).unwrap(),
            ReloadRequest::Rollback { to: None }
        );
        assert_eq!(
            parse_reload_body(br#"{"rollback":false,"artifact":"/p"}"#).unwrap(),
            ReloadRequest::Candidate {
                spec: CandidateSpec::executable("/p"),
                dry_run: false
            }
        );
        let e = parse_reload_body(br#"{"rollback":1}"#).unwrap_err();
        assert_eq!(e.field_name(), Some("rollback"));
        assert_eq!(
            e.to_string(),
            "field `rollback` must be true or false, not a number"
        );
        assert_eq!(parse_reload_body(b"null").unwrap_err().field_name(), None);
    }

    /// Found by `fuzz/fuzz_targets/admin_body.rs` (seed
    /// `fuzz/corpus/admin_body/bad-unknown-field-control-char.json`): an unknown key was
    /// copied into the message as is, control characters included.
    #[test]
    fn reload_bodies_with_a_bake() {
        let (request, bake) = parse_reload_with_bake(br#"{"artifact":"/p","bake":"3s"}"#).unwrap();
        assert_eq!(bake, Some(std::time::Duration::from_secs(3)));
        assert!(matches!(request, ReloadRequest::Candidate { .. }));
        let (request, bake) = parse_reload_with_bake(br#"{"rollback":true,"bake":"0s"}"#).unwrap();
        assert_eq!(bake, Some(std::time::Duration::ZERO));
        assert_eq!(request, ReloadRequest::Rollback { to: None });
        let bad = |body: &str| parse_reload_with_bake(body.as_bytes()).unwrap_err();
        assert_eq!(
            bad(r#"{"artifact":"/p","bake":3}"#).field_name(),
            Some("bake")
        );
        assert!(bad(r#"{"artifact":"/p","bake":"soon"}"#)
            .to_string()
            .contains("not a duration"));
        assert!(bad(r#"{"artifact":"/p","bake":"3s","dry_run":true}"#)
            .to_string()
            .contains("not allowed with `dry_run`"));
    }

    #[test]
    fn unknown_keys_with_control_characters_are_escaped() {
        let e = parse_reload_body(b"{\"\x7f\":null}").unwrap_err();
        assert_eq!(e.field_name(), Some("\u{7f}"));
        assert_eq!(
            e.to_string(),
            "unknown field `\\u{7f}` (expected one of artifact, bake, config_file, dry_run, rollback, rollback_to, reason)"
        );
        let e = parse_config_reload_body(br#"{"a\nb\u001b[31m":1}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown field `a\\nb\\u{1b}[31m` (expected one of dry_run, reason)"
        );
        let e = parse_compact_body(br#"{"k\teep\u0085":1}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown field `k\\teep\\u{85}` (expected keep)"
        );
        // Printable non-ASCII keys are shown as given.
        assert_eq!(
            parse_compact_body("{\"kéép\":1}".as_bytes())
                .unwrap_err()
                .to_string(),
            "unknown field `kéép` (expected keep)"
        );
    }

    #[test]
    fn config_reload_bodies() {
        assert!(!parse_config_reload_body(b"").unwrap());
        assert!(!parse_config_reload_body(b" \r\n").unwrap());
        assert!(!parse_config_reload_body(br#"{"dry_run":null}"#).unwrap());
        assert!(parse_config_reload_body(br#"{"dry_run":true}"#).unwrap());
        let e = parse_config_reload_body(br#"{"dry_run":1}"#).unwrap_err();
        assert!(e.to_string().contains("`dry_run`"), "{e}");
        assert_eq!(
            parse_config_reload_body(br#"{"dry":true}"#)
                .unwrap_err()
                .to_string(),
            "unknown field `dry` (expected one of dry_run, reason)"
        );
        assert_eq!(
            parse_config_reload_body(b"true").unwrap_err().to_string(),
            r#"the body must be a JSON object such as {"dry_run": false}, not a boolean"#
        );
    }

    #[test]
    fn compact_bodies() {
        let default = tryswap_journal::DEFAULT_KEEP_PER_SLOT;
        assert_eq!(parse_compact_body(b"").unwrap(), default);
        assert_eq!(parse_compact_body(b"\n\t ").unwrap(), default);
        assert_eq!(parse_compact_body(b"{}").unwrap(), default);
        assert_eq!(parse_compact_body(br#"{"keep":null}"#).unwrap(), default);
        assert_eq!(parse_compact_body(br#"{"keep":0}"#).unwrap(), 0);
        assert_eq!(parse_compact_body(br#" {"keep": 7} "#).unwrap(), 7);
        let msg = |body: &str| parse_compact_body(body.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            msg(r#"{"keep":-1}"#),
            "field `keep` must be a non-negative integer, not -1"
        );
        assert_eq!(
            msg(r#"{"keep":1.5}"#),
            "field `keep` must be a non-negative integer, not 1.5"
        );
        assert_eq!(
            msg(r#"{"keep":"5"}"#),
            "field `keep` must be a non-negative integer, not a string"
        );
        assert_eq!(msg(r#"{"kept":5}"#), "unknown field `kept` (expected keep)");
        assert_eq!(
            msg("[]"),
            r#"the body must be a JSON object such as {"keep": 100}, not an array"#
        );
        assert!(msg("{\"keep\":").starts_with("the body is not valid JSON: "));
        assert_eq!(
            parse_compact_body(br#"{"keep":"5"}"#)
                .unwrap_err()
                .field_name(),
            Some("keep")
        );
    }
}
