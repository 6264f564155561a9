//! ObservedTraffic objects as the API server could return them: read, or refused naming the
//! field; what is read turns back into JSON that reads the same.
#![no_main]
use flowpol_analysis::observed::TrafficObject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(object) = TrafficObject::parse(&value) {
        let again = TrafficObject::parse(&object.to_value()).expect("what was read reads back");
        assert_eq!(again, object);
    }
});
