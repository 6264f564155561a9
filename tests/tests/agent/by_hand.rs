//! The shop's edges worked by hand from its traffic list (crates/lab/scenarios/shop.yaml),
//! so the agent e2e's expectation is not only the aggregator agreeing with itself.
use serde_json::{json, Value};

use super::support::Edges;

/// One edge of a workload: (namespace/Kind/name, direction, peer, port, protocol, counts
/// by verdict, the reason a filter dropped packets of it).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    &'static str,
    &'static [(&'static str, u64)],
    Option<&'static str>,
);

/// Every pod is bare (its own workload, kind Pod); both ends run on the one node. Each
/// traffic item makes a client-side edge on the sender's object, and one on the receiver's
/// where the receiver is a pod that saw it; web's IPv4 and IPv6 connections to cart share one
/// edge (the peer is the workload), checkout's to payment-api do not (the peer is an address).
/// Attempts the policies deny time out at the sender, where its egress filter drops the SYN;
/// the SYN to cart's closed port 9091 is dropped by cart's kernel (nothing listens), which
/// resets it, and so is the datagram to payment-api's port 514. A drop names both ends, so
/// it counts on each end that is a pod (web's SYN to postgres on postgres' object too).
// A table: one row a line.
#[rustfmt::skip]
const SHOP: &[Row] = &[
    ("ingress-nginx/Pod/ingress-controller", "egress", "shop/Pod/web-0", 8080, "TCP", &[("established", 5)], None),
    ("shop/Pod/web-0", "ingress", "ingress-nginx/Pod/ingress-controller", 8080, "TCP", &[("established", 5)], None),
    ("shop/Pod/web-0", "egress", "kube-system/Pod/coredns-0", 53, "UDP", &[("answered", 4)], None),
    ("shop/Pod/web-0", "egress", "shop/Pod/cart-0", 9090, "TCP", &[("established", 5)], None),
    ("shop/Pod/web-0", "egress", "data/Pod/postgres-0", 5432, "TCP", &[("timeout", 1)], Some("NETFILTER_DROP")),
    ("shop/Pod/web-0", "egress", "203.0.113.10", 443, "TCP", &[("timeout", 1)], Some("NETFILTER_DROP")),
    ("shop/Pod/web-0", "egress", "shop/Pod/cart-0", 9091, "TCP", &[("refused", 1)], Some("NO_SOCKET")),
    ("shop/Pod/cart-0", "ingress", "shop/Pod/web-0", 9090, "TCP", &[("established", 5)], None),
    ("shop/Pod/cart-0", "ingress", "shop/Pod/web-0", 9091, "TCP", &[], Some("NO_SOCKET")),
    ("shop/Pod/cart-0", "egress", "data/Pod/postgres-0", 5432, "TCP", &[("established", 2)], None),
    ("shop/Pod/cart-0", "egress", "payments/Pod/checkout-0", 8443, "TCP", &[("established", 2)], None),
    ("shop/Pod/cart-0", "egress", "203.0.113.10", 514, "UDP", &[("sent", 1)], Some("NO_SOCKET")),
    ("data/Pod/postgres-0", "ingress", "shop/Pod/cart-0", 5432, "TCP", &[("established", 2)], None),
    ("data/Pod/postgres-0", "ingress", "shop/Pod/web-0", 5432, "TCP", &[], Some("NETFILTER_DROP")),
    ("payments/Pod/checkout-0", "ingress", "shop/Pod/cart-0", 8443, "TCP", &[("established", 2)], None),
    ("payments/Pod/checkout-0", "egress", "kube-system/Pod/coredns-0", 53, "UDP", &[("answered", 2)], None),
    ("payments/Pod/checkout-0", "egress", "203.0.113.10", 443, "TCP", &[("established", 2)], None),
    ("payments/Pod/checkout-0", "egress", "2001:db8::10", 443, "TCP", &[("established", 1)], None),
    ("payments/Pod/checkout-0", "egress", "203.0.113.66", 443, "TCP", &[("timeout", 1)], Some("NETFILTER_DROP")),
    ("kube-system/Pod/coredns-0", "ingress", "shop/Pod/web-0", 53, "UDP", &[("answered", 4)], None),
    ("kube-system/Pod/coredns-0", "ingress", "payments/Pod/checkout-0", 53, "UDP", &[("answered", 2)], None),
];

/// Checks `edges` (the shop run `runs` times) against the table: the same objects and edges,
/// each verdict's count exactly, except how many packets were dropped (retransmissions
/// vary): only that some were, and why.
pub(crate) fn assert_shop_by_hand(edges: &Edges, runs: u64) {
    let mut want = Edges::new();
    for (object, direction, peer, port, protocol, counts, dropped) in SHOP {
        let key = format!(
            "{} {} {port}/{}",
            json!(direction),
            json!(peer),
            json!(protocol)
        );
        let mut verdicts: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(v, n)| ((*v).to_owned(), json!(n * runs)))
            .collect();
        if let Some(reason) = dropped {
            verdicts.insert("dropped".into(), json!("some"));
            verdicts.insert("dropReasons".into(), json!({*reason: "some"}));
        }
        want.entry((*object).to_owned())
            .or_default()
            .insert(key, Value::Object(verdicts));
    }
    // Drop counts as "some": at least one packet per run.
    let mut got = edges.clone();
    for counts in got.values_mut().flat_map(|e| e.values_mut()) {
        if let Some(n) = counts.get("dropped").and_then(Value::as_u64) {
            assert!(n >= runs, "{counts}");
            counts["dropped"] = json!("some");
        }
        if let Some(reasons) = counts.get_mut("dropReasons").and_then(Value::as_object_mut) {
            for n in reasons.values_mut() {
                *n = json!("some");
            }
        }
    }
    assert_eq!(
        got, want,
        "the shop's edges against the table worked by hand"
    );
}
