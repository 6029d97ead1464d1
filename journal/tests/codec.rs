//! The record codec: golden byte vectors, arbitrary bytes never panic, the fuzz corpus.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use tryswap_fsm::{
    ArtifactRef, Endpoint, EventKind, Generation, Mode, Network, ProcessIdentity, Protocol, Reason,
    ReloadId, Sha256, SlotName, Stage,
};
use tryswap_journal::codec::{self, CodecError, LIMIT};
use tryswap_journal::{
    decode_record, encode_record, stored_chain, Actor, ActorKind, Record, LEGACY_RECORD_FORMAT,
    RECORD_FORMAT,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 30, 45).unwrap()
}

fn record(seq: u64, event: EventKind, prev_chain: u32) -> Record {
    Record {
        format: RECORD_FORMAT,
        seq,
        at: at(),
        reload: ReloadId::from_u128(0x0197_2a3b_4c5d_7e6f_8091_a2b3_c4d5_e6f7),
        slot: SlotName::new("demo").unwrap(),
        event,
        prev_chain,
        actor: Actor::default(),
        reason: None,
    }
}

/// [`samples`] as format 1 wrote them: no actor, no reason.
fn legacy_samples() -> Vec<Record> {
    samples()
        .into_iter()
        .map(|mut r| {
            r.format = LEGACY_RECORD_FORMAT;
            r.actor = Actor::default();
            r.reason = None;
            r
        })
        .collect()
}

trait By {
    fn by(self, actor: Actor, reason: Option<&str>) -> Self;
}

impl By for Record {
    fn by(mut self, actor: Actor, reason: Option<&str>) -> Self {
        self.actor = actor;
        self.reason = reason.map(str::to_owned);
        self
    }
}

/// A few records whose encoding is pinned.
pub fn samples() -> Vec<Record> {
    vec![
        record(
            1,
            EventKind::Staged {
                mode: Mode::Activate,
                generation: Generation(1),
                artifact: ArtifactRef {
                    sha256: Sha256([0x11; 32]),
                    config_sha256: None,
                },
                previous: None,
            },
            0,
        )
        .by(
            Actor {
                kind: ActorKind::Cli,
                uid: Some(1000),
                pid: Some(4242),
            },
            Some("ticket 42"),
        ),
        record(
            2,
            EventKind::Launched {
                process: Some(ProcessIdentity {
                    pid: 4242,
                    start_time: 987_654,
                    boot_id: "b0".into(),
                }),
                log_path: Some("logs/demo/1.log".into()),
            },
            0x1234_5678,
        ),
        record(300, EventKind::Activated, 0xdead_beef).by(Actor::of(ActorKind::Recovery), None),
        record(
            301,
            EventKind::RolledBack {
                stage: Stage::Validated,
                reason: Reason::timeout("no handshake"),
            },
            7,
        ),
        record(
            70_000,
            EventKind::Relaunched {
                generation: Generation(3),
                process: None,
                log_path: None,
                endpoint: Some(Endpoint {
                    core_version: 1,
                    app_version: 2,
                    network: Network::Unix,
                    address: "/tmp/p".into(),
                    protocol: Protocol::NetRpc,
                    server_cert: None,
                }),
            },
            u32::MAX,
        ),
    ]
}

/// The samples as format 1 (before `actor` and `reason`) stored them: still decoded, and
/// re-encoded to the same bytes (their CRCs are chain values later records carry).
const LEGACY_GOLDEN: [&str; 5] = [
    concat!(
        "010114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0100011111111111111111111111111111111111111111111111111111111111111111000000e229e3e5"
    ),
    concat!(
        "010214323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0201fb9210fc06120f00026230010f6c6f67732f64656d6f2f312e6c6f67fc78563412f7efe7c9"
    ),
    concat!(
        "01fb2c0114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464",
        "656d6f05fcefbeadde5d146faa"
    ),
    concat!(
        "01fb2d0114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464",
        "656d6f0602010c6e6f2068616e647368616b650796679ce4"
    ),
    concat!(
        "01fc7011010014323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f7",
        "0464656d6f0903000001010201062f746d702f700100fcffffffff89f98e6b"
    ),
];

/// Format 2: format 1's fields, then `actor` (kind index, uid and pid as options) and
/// `reason` (an optional string). Appended at the end, so a record's first fields are laid
/// out as before.
const GOLDEN: [&str; 5] = [
    concat!(
        "020114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f01000111111111111111111111111111111111111111111111111111111111111111110000000101fbe803",
        "01fb921001097469636b6574203432232908ef"
    ),
    concat!(
        "020214323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0201fb9210fc06120f00026230010f6c6f67732f64656d6f2f312e6c6f67fc78563412000000009297d178"
    ),
    concat!(
        "02fb2c0114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464",
        "656d6f05fcefbeadde04000000ddf0b187"
    ),
    concat!(
        "02fb2d0114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464",
        "656d6f0602010c6e6f2068616e647368616b65070000000010c62b90"
    ),
    concat!(
        "02fc7011010014323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f7",
        "0464656d6f0903000001010201062f746d702f700100fcffffffff00000000a840b602"
    ),
];

#[test]
fn format_1_records_still_decode_and_keep_their_bytes() {
    for (i, (record, golden)) in legacy_samples().iter().zip(LEGACY_GOLDEN).enumerate() {
        assert_eq!(
            &decode_record(&unhex(golden)).unwrap(),
            record,
            "legacy sample {i}"
        );
        assert_eq!(
            hex(&encode_record(record).unwrap()),
            golden,
            "legacy sample {i}"
        );
    }
}

#[test]
fn golden_vectors_pin_the_encoding() {
    for (i, (record, golden)) in samples().iter().zip(GOLDEN).enumerate() {
        let bytes = encode_record(record).unwrap();
        assert_eq!(hex(&bytes), golden, "sample {i}: the encoding changed");
        assert_eq!(
            &decode_record(&unhex(golden)).unwrap(),
            record,
            "sample {i}"
        );
    }
    // Spot-check the layout of the first: format, seq, RFC 3339 time, uuid, slot, event.
    let first = unhex(GOLDEN[0]);
    assert_eq!(&first[..3], &[0x02, 0x01, 20]);
    assert_eq!(&first[3..23], b"2025-06-01T12:30:45Z");
    assert_eq!(first[23], 16);
    // The trailer is the CRC32 of the body, and it is the chain value.
    let body = &first[..first.len() - 4];
    assert_eq!(stored_chain(&first), Some(crc32fast::hash(body)));
}

#[test]
fn every_flipped_bit_of_a_record_is_an_error() {
    let bytes = encode_record(&samples()[1]).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert!(decode_record(&bad).is_err(), "byte {i} bit {bit}");
        }
    }
    for len in 0..bytes.len() {
        assert!(decode_record(&bytes[..len]).is_err(), "truncated to {len}");
    }
}

/// Re-seals `body` with a valid CRC trailer.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    out
}

#[test]
fn a_future_record_format_is_named() {
    let mut record = samples()[2].clone();
    record.format = RECORD_FORMAT + 1;
    let bytes = encode_record(&record).unwrap();
    let err = decode_record(&bytes).unwrap_err();
    assert_eq!(
        err,
        CodecError::UnknownFormat {
            found: RECORD_FORMAT + 1,
            supported: RECORD_FORMAT
        }
    );
    assert!(err.to_string().contains("newer tryswap"), "{err}");
}

#[test]
fn trailing_bytes_and_huge_lengths_are_errors() {
    let bytes = encode_record(&samples()[0]).unwrap();
    let body = &bytes[..bytes.len() - 4];
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(matches!(
        decode_record(&seal(&longer)),
        Err(CodecError::Trailing { extra: 1, .. })
    ));
    // A string length of 2^40 must be refused by the limit, not allocated.
    let mut huge = vec![0x01, 0x01];
    huge.push(0xfd);
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge.extend_from_slice(&[b'x'; 16]);
    let err = decode_record(&seal(&huge)).unwrap_err();
    assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    // Values over the limit are refused when encoding too.
    let big = "x".repeat(LIMIT + 1);
    assert!(matches!(
        codec::encode("big", &big),
        Err(CodecError::TooLarge { .. })
    ));
    // Times that RFC 3339 cannot carry are refused when encoding, never written.
    let mut ancient = samples()[0].clone();
    ancient.at = Utc.with_ymd_and_hms(-3, 1, 1, 0, 0, 0).unwrap();
    assert!(encode_record(&ancient).is_err());
    // An invalid slot name inside a well-sealed record is an error.
    let mut bad_slot = body.to_vec();
    let at = bad_slot.windows(4).position(|w| w == b"demo").unwrap();
    bad_slot[at] = b'/';
    assert!(decode_record(&seal(&bad_slot)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_record(&bytes);
        // Also with a valid CRC, so the body decoder is reached.
        let _ = decode_record(&seal(&bytes));
        let _ = codec::decode::<tryswap_journal::SlotView>("slot view", &bytes);
        let _ = codec::decode::<tryswap_journal::ReloadView>("reload view", &bytes);
    }

    #[test]
    fn mutated_records_never_panic(
        pick in 0usize..5,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let bytes = encode_record(&samples()[pick]).unwrap();
        let mut body = bytes[..bytes.len() - 4].to_vec();
        for (index, value) in edits {
            let i = index.index(body.len());
            body[i] = value;
        }
        if let Ok(record) = decode_record(&seal(&body)) {
            // Whatever decodes and re-encodes decodes to the same record.
            if let Ok(again) = encode_record(&record) {
                prop_assert_eq!(decode_record(&again).unwrap(), record);
            }
        }
    }
}

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/record_decode")
}

#[test]
fn the_fuzz_corpus_decodes_without_panic() {
    let dir = corpus_dir();
    let mut seen = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if decode_record(&bytes).is_ok() {
            valid += 1;
        }
        seen += 1;
    }
    assert!(
        seen >= samples().len(),
        "corpus {} has {seen} files",
        dir.display()
    );
    assert!(valid >= samples().len(), "the seeds include valid records");
}

/// Writes the seed corpus: `TRYSWAP_WRITE_FUZZ_SEEDS=1 cargo test -p tryswap-journal
/// --test codec -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    if std::env::var_os("TRYSWAP_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (i, record) in samples().iter().enumerate() {
        std::fs::write(
            dir.join(format!("record-{i}")),
            encode_record(record).unwrap(),
        )
        .unwrap();
    }
    let bytes = encode_record(&samples()[1]).unwrap();
    std::fs::write(dir.join("truncated"), &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    flipped[10] ^= 0x80;
    std::fs::write(dir.join("bad-crc"), flipped).unwrap();
}

/// The bake events came last in the event enum: old records keep their encoding (the
/// vectors above) and these pin the new ones. Pinned as format 1 records (as journals of
/// that format hold them); the event's bytes are the same inside a format 2 record.
fn bake_samples() -> Vec<Record> {
    let legacy = |mut r: Record| {
        r.format = LEGACY_RECORD_FORMAT;
        r
    };
    let samples = vec![
        record(
            46,
            EventKind::ActivatedBaking {
                until_ms: 1_748_781_045_000,
            },
            0x0102_0304,
        ),
        record(47, EventKind::Confirmed, 0x0506_0708),
        record(
            48,
            EventKind::Reverted {
                reason: tryswap_fsm::Reason::error("exited"),
            },
            0x090a_0b0c,
        ),
    ];
    samples.into_iter().map(legacy).collect()
}

const BAKE_GOLDEN: [&str; 3] = [
    concat!(
        "012e14323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0bfd0815792b97010000fc04030201dd48a7b7"
    ),
    concat!(
        "012f14323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0cfc0807060565862546"
    ),
    concat!(
        "013014323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
        "6f0d0006657869746564fc0c0b0a09694789b8"
    ),
];

#[test]
fn bake_events_have_pinned_encodings() {
    for (i, (record, golden)) in bake_samples().iter().zip(BAKE_GOLDEN).enumerate() {
        let bytes = encode_record(record).unwrap();
        assert_eq!(hex(&bytes), golden, "bake sample {i}: the encoding changed");
        assert_eq!(&decode_record(&unhex(golden)).unwrap(), record);
    }
}

/// The keep-alive's restart intent came after the bake events: it pins its own encoding
/// (as a format 1 record, like the bake events; the event's bytes are the same inside a
/// format 2 record).
const RESTART_GOLDEN: &str = concat!(
    "013114323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
    "6f0e03fc100f0e0dffce9125"
);

#[test]
fn the_restart_intent_has_a_pinned_encoding() {
    let mut record = record(
        49,
        EventKind::Restarting {
            generation: Generation(3),
        },
        0x0d0e_0f10,
    );
    record.format = LEGACY_RECORD_FORMAT;
    let bytes = encode_record(&record).unwrap();
    assert_eq!(hex(&bytes), RESTART_GOLDEN, "the encoding changed");
    assert_eq!(&decode_record(&unhex(RESTART_GOLDEN)).unwrap(), &record);
    assert!(record.needs_durable_flush(), "the intent precedes a spawn");
}

/// The adoption of a process a restored journal did not know (`recover --adopt`) came after
/// the restart intent: it pins its own encoding, as a format 2 record with its actor and
/// the operator's reason.
const ADOPTED_GOLDEN: &str = concat!(
    "023214323032352d30362d30315431323a33303a34355a1001972a3b4c5d7e6f8091a2b3c4d5e6f70464656d",
    "6f0f02abababababababababababababababababababababababababababababababab01cdcdcdcdcdcdcdcd",
    "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd010101fb9210fc40e20100046230307401122f73",
    "2f6c6f67732f64656d6f2f322e6c6f67010101010d2f732f746d702f702e736f636b00000319706964203432",
    "34322072616e2067656e65726174696f6e2032fc141312110101fbe803014d010f726573746f726564206261",
    "636b75708a81d783",
);

#[test]
fn the_adoption_has_a_pinned_encoding() {
    let mut record = record(
        50,
        EventKind::Adopted {
            generation: Generation(2),
            artifact: ArtifactRef {
                sha256: Sha256([0xab; 32]),
                config_sha256: Some(Sha256([0xcd; 32])),
            },
            previous: Some(Generation(1)),
            process: Some(ProcessIdentity {
                pid: 4242,
                start_time: 123_456,
                boot_id: "b00t".into(),
            }),
            log_path: Some("/s/logs/demo/2.log".into()),
            endpoint: Some(Endpoint {
                core_version: 1,
                app_version: 1,
                network: Network::Unix,
                address: "/s/tmp/p.sock".into(),
                protocol: Protocol::Grpc,
                server_cert: None,
            }),
            reason: Reason::recovered("pid 4242 ran generation 2"),
        },
        0x1112_1314,
    );
    record.actor = Actor {
        kind: ActorKind::Cli,
        uid: Some(1000),
        pid: Some(77),
    };
    record.reason = Some("restored backup".into());
    let bytes = encode_record(&record).unwrap();
    assert_eq!(hex(&bytes), ADOPTED_GOLDEN, "the encoding changed");
    assert_eq!(&decode_record(&unhex(ADOPTED_GOLDEN)).unwrap(), &record);
    assert!(
        record.needs_durable_flush(),
        "the adoption precedes stopping the former generation"
    );
}
