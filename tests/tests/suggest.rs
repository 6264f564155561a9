//! Suggest, end to end in the lab: record the shop's traffic, suggest policies from it,
//! enforce the suggestion with the lab's enforcer, replay the same traffic: what worked
//! still works, what was blocked stays blocked, and a connection never observed is blocked.
use flowpol_analysis::record::Verdict;
use flowpol_e2e::{enforcing_the_suggestion, one_connection, privileged, run_lab, run_resolved};
use flowpol_lab::EXAMPLE_SCENARIO;

#[test]
fn the_suggestion_enforced_keeps_what_worked_and_blocks_the_rest() {
    if !privileged() {
        return;
    }
    let first = run_lab(EXAMPLE_SCENARIO);
    assert!(first.mismatches.is_empty(), "{:#?}", first.mismatches);
    // The shop again, its declared policies replaced by the suggestion, plus one
    // connection nobody made before: the web tier straight to checkout.
    let (s, mut next) = enforcing_the_suggestion(&first);
    assert!(s.inexact.is_empty(), "{:?}", s.inexact);
    for t in &mut next.scenario.traffic {
        t.expect = None;
    }
    next.scenario.traffic.push(one_connection(
        "shop/web-0",
        "payments/checkout-0",
        8443,
        None,
    ));
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
