//! flowpol's pure core: what the node side records ([`record`]), what the cluster declares
//! ([`cluster`], [`policy`]), and what follows from holding one against the other:
//! [`attribute`] names both ends of a flow, [`eval`] and [`verify`] judge flows by the
//! policies, [`compare`] sets two runs side by side, [`plan`] chooses active probe attempts,
//! [`suggest`] writes least-privilege policies and [`observed`] keeps edges per workload.
//! [`output`] reads and writes records. No aya, kube or tokio: this builds and tests on
//! stable Rust without the eBPF toolchain.
#![deny(unsafe_code)]
pub mod attribute;
pub mod cluster;
pub mod compare;
pub mod eval;
pub mod observed;
pub mod output;
pub mod plan;
pub mod policy;
pub mod record;
pub mod suggest;
pub mod validation;
pub mod verify;
