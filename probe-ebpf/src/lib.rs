//! Empty library target: lets probe-user declare a build dependency on this crate, so cargo
//! rebuilds the probe when it changes. The programs are in the `flowpol-probe` binary.
#![no_std]
