//! flowpol and the API server: [`crd`] is the ObservedTraffic custom resource, [`watch`] keeps the cluster model live from watchers,
//! [`publish`] creates objects (the lab's pods, as a cluster would hold them), and [`store`]
//! writes each node's share of the ObservedTraffic edges; [`identity`] gives a program (the lab's
//! enforcers) a ServiceAccount token to reach the API server with.
pub mod crd;
pub mod identity;
pub mod publish;
pub mod store;
pub mod watch;
