//! Replays the fuzz corpora of `fuzz/corpus/handshake_line`, `fuzz/corpus/config_file` and
//! `fuzz/corpus/admin_body` on stable Rust: no file makes a parser panic. Seeds named `ok-*` must be accepted and
//! `bad-*` refused; files added by fuzzing runs (other names) only have to not panic.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use tryswap::admin_body::{
    parse_compact_body, parse_config_reload_body, parse_reload_body, ReloadRequest,
};
use tryswap::config::{Config, HandshakeConfig};
use tryswap::internals::handshake::parse_line;
use tryswap_fsm::{Protocol, SlotName};

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let path: PathBuf = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Checks the `ok-`/`bad-` naming convention and that both kinds of seed exist.
fn check_expectation(name: &str, accepted: bool, seen: &mut BTreeSet<&'static str>, why: &str) {
    if name.starts_with("ok-") {
        seen.insert("ok");
        assert!(accepted, "seed {name} should be accepted: {why}");
    } else if name.starts_with("bad-") {
        seen.insert("bad");
        assert!(!accepted, "seed {name} should be refused");
    }
}

#[test]
fn handshake_line_corpus() {
    let files = corpus("handshake_line");
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    // The same rules as fuzz/fuzz_targets/handshake_line.rs.
    let mut rules = HandshakeConfig::for_slot(&SlotName::new("fuzz").unwrap());
    rules.app_protocol_versions = vec![1, 2];
    rules.protocols = vec![Protocol::Grpc, Protocol::NetRpc];
    let mut seen = BTreeSet::new();
    for (name, bytes) in &files {
        let line = String::from_utf8_lossy(bytes);
        let result = parse_line(&line, &rules);
        let why = match &result {
            Ok(_) => String::new(),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.chars().any(char::is_control), "{name}: {msg:?}");
                msg
            }
        };
        check_expectation(name, result.is_ok(), &mut seen, &why);
    }
    assert_eq!(seen.len(), 2, "need both ok- and bad- seeds");
}

#[test]
fn config_file_corpus() {
    let files = corpus("config_file");
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    let mut seen = BTreeSet::new();
    let origin = Path::new("fuzz.toml");
    for (name, bytes) in &files {
        // As the fuzz target: only UTF-8 is parsed (Config::load refuses anything else).
        let result = std::str::from_utf8(bytes)
            .map_err(|e| e.to_string())
            .and_then(|text| Config::parse(text, origin).map_err(|e| e.to_string()));
        let why = result.as_ref().err().cloned().unwrap_or_default();
        check_expectation(name, result.is_ok(), &mut seen, &why);
        // Lossy text must not panic either.
        let _ = Config::parse(&String::from_utf8_lossy(bytes), origin);
    }
    assert_eq!(seen.len(), 2, "need both ok- and bad- seeds");
}

#[test]
fn admin_body_corpus() {
    let files = corpus("admin_body");
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    let mut seen = BTreeSet::new();
    // As fuzz/fuzz_targets/admin_body.rs: messages are one line without control characters.
    let check = |name: &str, msg: String| {
        assert!(!msg.is_empty(), "{name}: empty message");
        assert!(!msg.chars().any(char::is_control), "{name}: {msg:?}");
        msg
    };
    for (name, bytes) in &files {
        // `ok-`/`bad-` is about the reload body; the other parsers only must not panic.
        let result = parse_reload_body(bytes);
        let why = match &result {
            Ok(ReloadRequest::Candidate { spec, .. }) => {
                let artifact = spec.executable.as_deref().expect("artifact");
                assert!(!artifact.as_os_str().is_empty(), "{name}");
                String::new()
            }
            Ok(ReloadRequest::Rollback { to }) => {
                assert!(to.is_none_or(|g| g.0 > 0), "{name}");
                String::new()
            }
            Err(e) => check(name, e.to_string()),
        };
        check_expectation(name, result.is_ok(), &mut seen, &why);
        if let Err(e) = parse_config_reload_body(bytes) {
            check(name, e.to_string());
        }
        if let Err(e) = parse_compact_body(bytes) {
            check(name, e.to_string());
        }
    }
    assert_eq!(seen.len(), 2, "need both ok- and bad- seeds");
}
