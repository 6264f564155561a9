//! Cluster snapshots (kubectl List, multi-document YAML or JSON): any text is read into a
//! model or refused with an error, never a panic.
#![no_main]
use flowpol_analysis::{cluster::snapshot, policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(snap) = snapshot::parse("fuzz", text) {
        // What was read compiles or is refused per policy, as the commands do.
        let _ = policy::compile_all(&snap.policies);
    }
});
