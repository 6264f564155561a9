//! Suggest, end to end in the lab: record the shop's traffic, suggest policies from it,
//! enforce the suggestion with the lab's enforcer, replay the same traffic: what worked
//! still works, what was blocked stays blocked, and a connection never observed is blocked.
use flowpol_analysis::{
    attribute,
    record::{Protocol, Verdict},
    suggest::{self, Options},
};
use flowpol_e2e::{privileged, run_lab, run_resolved};
use flowpol_lab::{
    enforce,
    scenario::{Close, Family, Traffic},
    EXAMPLE_SCENARIO,
};

#[test]
fn the_suggestion_enforced_keeps_what_worked_and_blocks_the_rest() {
    if !privileged() {
        return;
    }
    let first = run_lab(EXAMPLE_SCENARIO);
    assert!(first.mismatches.is_empty(), "{:#?}", first.mismatches);
    let declared = enforce::declared(&first.resolved).unwrap();
    let mut records = first.records.clone();
    attribute::enrich(&declared.cluster, &mut records);
    let s = suggest::suggest(&declared.cluster, &records, &Options::default());
    assert!(s.inexact.is_empty(), "{:?}", s.inexact);

    // The shop again, its declared policies replaced by the suggestion, plus one
    // connection nobody made before: the web tier straight to checkout.
    let mut next = first.resolved.clone();
    next.scenario.policies = s
        .policies
        .iter()
        .map(|p| serde_yaml::to_value(p).unwrap())
        .collect();
    for t in &mut next.scenario.traffic {
        t.expect = None;
    }
    next.scenario.traffic.push(Traffic {
        from: "shop/web-0".into(),
        to: "payments/checkout-0".into(),
        port: 8443,
        protocol: Protocol::TCP,
        count: 1,
        family: Family::Ipv4,
        parallel: 1,
        close: Close::Graceful,
        held: false,
        expect: None,
    });
    let second = run_resolved(next, &[]);
    let n = first.outcomes.len();
    for (before, after) in first.outcomes.iter().zip(&second.outcomes[..n]) {
        let t = &first.resolved.scenario.traffic[before.item];
        let worked = |o: &flowpol_lab::traffic::ClientSaw| {
            o.results.contains_key(&Verdict::Established)
                || o.results.contains_key(&Verdict::Answered)
        };
        if worked(before) {
            assert_eq!(
                before.results, after.results,
                "{} -> {}:{} {} worked before the suggestion, and must still",
                t.from, t.to, t.port, t.protocol
            );
        }
        if before.results.contains_key(&Verdict::Timeout) {
            assert_eq!(
                after.results, before.results,
                "{} -> {}:{} stays blocked",
                t.from, t.to, t.port
            );
        }
    }
    assert_eq!(
        second.outcomes[n].results,
        [(Verdict::Timeout, 1)].into(),
        "never observed, so not allowed"
    );
}
