//! flowpol: watch what pods really say to each other and hold it against the declared
//! NetworkPolicies.
//!
//! The data's path, one module per stage:
//! [`kernel`] (what the running kernel looks like) -> [`capture`] (the probe, the only aya code)
//! -> [`decode`] (ring buffer bytes to observations) -> [`aggregate`] (observations to
//! [`record`]s) -> output. [`session`] ties capture to aggregation; [`lab`] builds a cluster
//! stand-in out of network namespaces.
//!
//! `unsafe` is denied except where the kernel is talked to directly (aya, setns, sockets).
#![deny(unsafe_code)]
pub mod agent;
pub mod aggregate;
pub mod attribute;
pub mod capture;
pub mod cluster;
pub mod compare;
pub mod decode;
pub mod eval;
pub mod kernel;
pub mod lab;
pub mod node_probe;
pub mod observed;
pub mod output;
pub mod podcgroup;
pub mod policy;
pub mod probe;
pub mod record;
pub mod session;
pub mod shutdown;
pub mod suggest;
pub mod verify;
