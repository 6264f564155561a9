//! Lab scenarios: any text is resolved or refused with an error naming the place, never a
//! panic; a resolved scenario describes itself as a cluster the snapshot reader accepts.
#![no_main]
use flowpol_lab::{objects, scenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resolved) = scenario::parse("fuzz", text) {
        objects::model(&resolved).expect("a valid scenario is a valid cluster");
    }
});
