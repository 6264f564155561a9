//! `cargo xtask demo`: the whole loop on the built-in lab, step by step, files under
//! `target/demo/`: record the shop under faithful policy enforcement and verify it; break
//! the enforcer like a buggy CNI, verify again and compare; probe the policies actively;
//! suggest policies from the traffic, enforce them instead, and replay.
use anyhow::Result;

use crate::setup::{cargo, sh};

const FLOWPOL: &str = "target/release/flowpol";
const DIR: &str = "target/demo";

fn step(title: &str) {
    eprintln!("\n=== {title}");
}

pub fn run() -> Result<()> {
    cargo(&["build", "--release", "--package", "probe-user"])?;
    std::fs::create_dir_all(DIR)?;
    let file = |name: &str| format!("{DIR}/{name}");
    let (cluster, flows, faulty, probed) = (
        file("cluster.yaml"),
        file("flows.jsonl"),
        file("flows-ignore-egress.jsonl"),
        file("probe-named-ports.jsonl"),
    );
    step("1. the shop lab, its NetworkPolicies enforced faithfully, recorded and checked");
    sh(
        FLOWPOL,
        &["lab", "--check", "--cluster-out", &cluster, "-o", &flows],
    )?;
    step("2. verify: no enforcement gap, no over-block (the gate CI pipelines would use)");
    sh(
        FLOWPOL,
        &[
            "verify",
            "--cluster",
            &cluster,
            "--flows",
            &flows,
            "--fail-on",
            "enforcement_gap,over_block",
        ],
    )?;
    step("3. the same shop on a CNI that ignores egress policies");
    sh(FLOWPOL, &["lab", "--fault", "ignore-egress", "-o", &faulty])?;
    step("4. verify finds the traffic that got out although policy denies it");
    sh(
        FLOWPOL,
        &["verify", "--cluster", &cluster, "--flows", &faulty],
    )?;
    step("5. compare the two runs");
    sh(
        FLOWPOL,
        &["compare", &flows, &faulty, "--cluster", &cluster],
    )?;
    step("6. probe the policies actively, on a CNI that ignores named ports, and verify");
    sh(
        FLOWPOL,
        &["probe", "--fault", "ignore-named-ports", "-o", &probed],
    )?;
    sh(
        FLOWPOL,
        &["verify", "--cluster", &cluster, "--flows", &probed],
    )?;
    let (suggested, replayed) = (file("suggested.yaml"), file("flows-suggested.jsonl"));
    step("7. suggest least-privilege policies from what the shop really did");
    sh(
        FLOWPOL,
        &[
            "suggest",
            "--cluster",
            &cluster,
            "--flows",
            &flows,
            "--explain",
            "-o",
            &suggested,
        ],
    )?;
    step("8. enforce the suggestion instead of the hand-written policies, and replay");
    sh(FLOWPOL, &["lab", "--policies", &suggested, "-o", &replayed])?;
    step("9. compare: what worked still works; only what never worked (a closed port) changed");
    sh(
        FLOWPOL,
        &["compare", &flows, &replayed, "--cluster", &cluster],
    )?;
    eprintln!("\nfiles are in {DIR}/");
    Ok(())
}
