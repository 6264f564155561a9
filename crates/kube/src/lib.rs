//! flowpol and the API server: [`watch`] keeps the cluster model live from watchers,
//! [`publish`] creates objects (the lab's pods, as a cluster would hold them), and [`store`]
//! writes each node's share of the ObservedTraffic edges.
pub mod publish;
pub mod store;
pub mod watch;
