//! flowpol's eBPF probe.
//!
//! One module per attach point; every program has the same shape (`prog` calls `try_prog` and
//! swallows the error, since a tracing program cannot fail the traced operation). Offsets into
//! kernel structs and tracepoint records are never compiled in: userspace reads them from the
//! running kernel's BTF and tracefs and writes them into [`config::CONFIG`] before load.
#![no_std]
#![no_main]
#![allow(
    unreachable_pub,
    reason = "the loader reaches programs, maps and CONFIG by symbol name, not through Rust paths"
)]

mod config;
mod drop;
mod emit;
mod maps;
mod net;
mod tcp;
mod udp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic, so this never runs.
    unsafe { core::hint::unreachable_unchecked() }
}
