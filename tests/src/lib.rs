//! Helpers for the privileged end-to-end tests (run by `cargo xtask test`, as root).
use flowpol_lab::{
    enforce::{self, Fault},
    netns,
    run::{self, LabReport},
    scenario,
};

/// The binary under test, as just built: `cargo xtask test` builds it and names it in
/// FLOWPOL_BIN; otherwise it is built here, once per test process, so a stale binary is
/// never what runs.
pub fn binary() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Ok(bin) = std::env::var("FLOWPOL_BIN") {
                return bin;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--package", "probe-user", "--bin", "flowpol"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building flowpol failed");
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/flowpol").to_owned()
        })
        .clone()
}

/// Says that the calling test does not run, and why: on stderr, and in the file xtask's
/// tally reads (FLOWPOL_SKIPS), so it is counted as skipped, not as passed. Under `cargo
/// xtask test` (FLOWPOL_E2E=required) a skip is a failure.
pub fn skip(why: &str) {
    assert!(
        std::env::var("FLOWPOL_E2E").as_deref() != Ok("required"),
        "end-to-end tests are required, but {why}"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    eprintln!("skipping {test}: {why}");
    if let Some(path) = std::env::var_os("FLOWPOL_SKIPS") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("the skip list opens");
        writeln!(f, "{test}").expect("the skip list is written");
    }
}

/// Whether privileged tests can run; when not, the test is [`skip`]ped.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("end-to-end tests need root (they load eBPF and create network namespaces)");
    }
    root
}

/// Runs a lab scenario given as YAML and returns its report; asserts nothing was left behind.
/// Its NetworkPolicies, if any, are enforced faithfully, as `flowpol lab` does by default.
pub fn run_lab(yaml: &str) -> LabReport {
    run_lab_with_faults(yaml, &[])
}

/// [`run_lab`] with the policy enforcer behaving like a CNI with these bugs.
pub fn run_lab_with_faults(yaml: &str, faults: &[Fault]) -> LabReport {
    run_resolved(
        scenario::parse("test scenario", yaml).expect("test scenario is valid"),
        faults,
    )
}

/// [`run_lab_with_faults`] for a scenario already read (and perhaps changed).
pub fn run_resolved(mut resolved: scenario::Resolved, faults: &[Fault]) -> LabReport {
    if !resolved.scenario.policies.is_empty() {
        enforce::install(&mut resolved, faults).expect("the scenario's policies compile");
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = rt
        .block_on(run::run(resolved, Some("test-node".into())))
        .unwrap_or_else(|e| panic!("lab run failed: {e}"));
    assert_no_leftovers();
    report
}

/// The suggestion from a lab run's records (named from the run's own cluster), and the
/// run's lab with its declared policies replaced by it, ready to run again.
pub fn enforcing_the_suggestion(
    report: &LabReport,
) -> (flowpol_analysis::suggest::Suggestion, scenario::Resolved) {
    use flowpol_analysis::{attribute, suggest};
    let declared = enforce::declared(&report.resolved).expect("the run's policies compile");
    let mut records = report.records.clone();
    attribute::enrich(&declared.cluster, &mut records);
    let s = suggest::suggest(&declared.cluster, &records, &suggest::Options::default());
    let mut next = report.resolved.clone();
    next.scenario.policies = s
        .policies
        .iter()
        .map(|p| serde_yaml::to_value(p).expect("a policy serializes"))
        .collect();
    (s, next)
}

/// One IPv4 TCP connection from `from` to `to`:`port`, closed gracefully.
pub fn one_connection(
    from: &str,
    to: &str,
    port: u16,
    expect: Option<flowpol_analysis::record::Verdict>,
) -> scenario::Traffic {
    scenario::Traffic {
        from: from.into(),
        to: to.into(),
        port,
        protocol: flowpol_analysis::record::Protocol::TCP,
        count: 1,
        family: scenario::Family::Ipv4,
        parallel: 1,
        close: scenario::Close::Graceful,
        held: false,
        expect,
    }
}

/// No lab namespace (with its links and nft tables) and no lab nft table in this namespace.
pub fn assert_no_leftovers() {
    assert_eq!(
        netns::leftovers(),
        Vec::<String>::new(),
        "the lab left namespaces behind"
    );
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft runs");
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.contains(flowpol_lab::nft::TABLE),
        "a lab nft table leaked into the root namespace: {tables}"
    );
}
