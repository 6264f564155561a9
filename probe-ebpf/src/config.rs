//! Offsets handed in by userspace (see `probe_common::ProbeConfig`).
use aya_ebpf::helpers::bpf_probe_read_kernel_buf;

use crate::maps::SCRATCH;
use probe_common::{ProbeConfig, COPY_MAX};

/// Filled in by userspace with `EbpfLoader::set_global` before load; lives in `.rodata`, so the
/// verifier sees every offset as a constant.
#[no_mangle]
pub static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// Reads one offset. Volatile, so the compiler cannot fold the all-zero initial value.
macro_rules! off {
    ($field:ident) => {{
        #[allow(
            unused_unsafe,
            reason = "callers are often inside `unsafe` already; the block must stand on its own"
        )]
        // SAFETY: reading a field of an immutable static.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$field) };
        v as usize
    }};
}
pub(crate) use off;

/// The first bytes of a kernel object (a tracepoint record, a `sock_common`), copied with one
/// helper call into per-CPU scratch space. Fields are then read from the copy: the verifier
/// forbids context loads at offsets that are not immediates, and one copy is cheaper than a
/// helper call per field.
pub struct Copied {
    buf: *const [u8; COPY_MAX],
    len: usize,
}

impl Copied {
    /// Copies the first `len` bytes at `src` (`len` from [`off!`]: a constant to the verifier)
    /// into scratch `slot`.
    #[inline(always)]
    pub fn read(slot: u32, src: *const u8, len: usize) -> Result<Self, i64> {
        let buf = SCRATCH.get_ptr_mut(slot).ok_or(1i64)?;
        let len = if len < COPY_MAX { len } else { COPY_MAX };
        // SAFETY: `buf` is this CPU's slot, used by one program at a time; the probe read
        // faults safely on a bad pointer.
        unsafe { bpf_probe_read_kernel_buf(src, &mut (&mut *buf)[..len])? };
        Ok(Copied { buf, len })
    }

    /// The `T` at byte `offset` of the copy (zero if the copy is shorter).
    #[inline(always)]
    pub fn get<T: Copy + Default>(&self, offset: usize) -> T {
        if offset + core::mem::size_of::<T>() > self.len {
            return T::default();
        }
        // SAFETY: in bounds (checked above); read_unaligned has no alignment needs.
        unsafe { core::ptr::read_unaligned((self.buf as *const u8).add(offset) as *const T) }
    }
}
