//! Ring-buffer events past the version check: the first two bytes are forced to this
//! build's ABI version, so the decoder's kind, protocol and address checks are what gets
//! exercised; whatever decodes is fed to the aggregator, whose first take must equal its
//! running view.
#![no_main]
use std::collections::HashMap;

use flowpol_node::{
    aggregate::{Aggregator, Clock},
    decode::decode,
};
use libfuzzer_sys::fuzz_target;
use probe_common::{Event, ABI_VERSION};

fuzz_target!(|data: &[u8]| {
    let size = std::mem::size_of::<Event>();
    let mut agg = Aggregator::new(None, Clock::from_offset_ns(0), HashMap::new());
    for chunk in data.chunks(size) {
        let mut bytes = chunk.to_vec();
        if bytes.len() >= 2 {
            bytes[..2].copy_from_slice(&ABI_VERSION.to_ne_bytes());
        }
        if let Ok(obs) = decode(&bytes) {
            assert_eq!(bytes.len(), size, "only whole events decode");
            agg.add(obs);
        }
    }
    // The first take hands out exactly what the running view holds.
    let records = agg.records();
    let (taken, _) = agg.take(u64::MAX, &[]);
    assert_eq!(taken, records);
});
