//! Offsets handed in by userspace (see `probe_common::ProbeConfig`).
use probe_common::ProbeConfig;

/// Filled in by userspace with `EbpfLoader::set_global` before load; lives in `.rodata`, so the
/// verifier sees every offset as a constant.
#[no_mangle]
pub static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// Reads one offset. Volatile, so the compiler cannot fold the all-zero initial value.
macro_rules! off {
    ($field:ident) => {{
        // Callers are often inside `unsafe` already; the block must stand on its own anyway.
        #[allow(unused_unsafe)]
        // SAFETY: reading a field of an immutable static.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$field) };
        v as usize
    }};
}
pub(crate) use off;
