//! flowpol on a node. The data's path, one module per stage: [`kernel`] (what the running
//! kernel looks like) -> [`capture`] (the eBPF sensor, the only aya code) -> [`decode`] (ring
//! buffer bytes to observations) -> [`aggregate`] (observations to flow records). [`session`]
//! ties capture to aggregation, starting from the connections [`existing`] finds open; [`podcgroup`] names the pod of a local socket; [`probing`]
//! runs active probe attempts from the pods of this node, through [`netns`] and [`client`].
//!
//! `unsafe` is denied except where the kernel is talked to directly (aya, setns, sockets).
#![deny(unsafe_code)]
pub mod aggregate;
pub mod capture;
pub mod client;
pub mod decode;
pub mod existing;
pub mod kernel;
pub mod netns;
pub mod podcgroup;
pub mod probing;
#[cfg(any(test, feature = "script"))]
pub mod script;
pub mod session;
pub mod shutdown;
