//! Fuzzes the journal's record decoder: any bytes must give a record or an error, never a
//! panic or an allocation past the codec limit. Seeds: `fuzz/corpus/record_decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = tryswap_journal::decode_record(data) {
        // Whatever decodes and re-encodes must decode to the same record.
        if let Ok(again) = tryswap_journal::encode_record(&record) {
            assert_eq!(
                tryswap_journal::decode_record(&again).expect("a re-encoded record decodes"),
                record
            );
        }
    }
});
