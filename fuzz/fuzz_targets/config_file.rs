//! Fuzzes the config file parser: no input panics, and every accepted config keeps the
//! rules validation promises.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tryswap::config::{Config, ProbeKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let names: BTreeSet<_> = config.slots.iter().map(|s| &s.name).collect();
            assert_eq!(
                names.len(),
                config.slots.len(),
                "duplicate slot names accepted"
            );
            assert!(config.admin.listen.is_none() || config.admin.token_file.is_some());
            for slot in &config.slots {
                let h = &slot.handshake;
                assert!(!h.app_protocol_versions.is_empty());
                assert!(!h.protocols.is_empty());
                assert!(h.min_port <= h.max_port);
                assert!(!h.magic_cookie_key.is_empty());
                assert!(slot.probe.success_threshold >= 1 && slot.probe.failure_threshold >= 1);
                assert!(!slot.probe.period.is_zero() && !slot.probe.timeout.is_zero());
                assert!(!slot.start_timeout.is_zero() && !slot.stop_timeout.is_zero());
                if let ProbeKind::Exec { command } = &slot.probe.kind {
                    assert!(!command.is_empty());
                }
                assert!(slot
                    .env
                    .keys()
                    .all(|k| !k.is_empty() && !k.contains(['=', '\0'])));
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
