//! Fuzzes the admin API's request-body parsers (`tryswap::admin_body`): no input panics,
//! every refusal has a one-line message without control characters, and every accepted
//! reload body asks for something the supervisor can act on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tryswap::admin_body::{
    parse_compact_body, parse_config_reload_body, parse_reload_body, BodyError, ReloadRequest,
};

fn check_error(err: &BodyError) {
    let message = err.to_string();
    assert!(!message.is_empty(), "empty message for {err:?}");
    assert!(!message.chars().any(char::is_control), "{message:?}");
}

fuzz_target!(|data: &[u8]| {
    match parse_reload_body(data) {
        Ok(ReloadRequest::Candidate { spec, .. }) => {
            let artifact = spec.executable.expect("a candidate names its artifact");
            let artifact = artifact.to_str().expect("paths come from JSON strings");
            assert!(!artifact.is_empty() && !artifact.contains('\0'));
            if let Some(config) = spec.config {
                let config = config.to_str().expect("paths come from JSON strings");
                assert!(!config.is_empty() && !config.contains('\0'));
            }
        }
        Ok(ReloadRequest::Rollback { to }) => {
            if let Some(generation) = to {
                assert!(generation.0 > 0);
            }
        }
        Err(err) => check_error(&err),
    }
    if let Err(err) = parse_config_reload_body(data) {
        check_error(&err);
    }
    match parse_compact_body(data) {
        // Blank bodies take the default.
        Ok(keep) if data.iter().all(u8::is_ascii_whitespace) => {
            assert_eq!(keep, tryswap_journal::DEFAULT_KEEP_PER_SLOT);
        }
        Ok(_) => {}
        Err(err) => check_error(&err),
    }
});
