//! The probe, for real, on the netns lab.
use flowpol_analysis::record::{FlowRecord, Protocol, Side, Since, Verdict};
use flowpol_e2e::{enforcing_the_suggestion, one_connection, privileged, run_lab, run_resolved};
use flowpol_lab::EXAMPLE_SCENARIO;

fn find<'a>(
    r: &'a [FlowRecord],
    host: &str,
    report: &flowpol_lab::run::LabReport,
    f: impl Fn(&FlowRecord) -> bool,
) -> Vec<&'a FlowRecord> {
    r.iter()
        .filter(|x| {
            x.observer
                .as_ref()
                .and_then(|o| report.hosts_by_inode.get(&o.netns))
                .map(String::as_str)
                == Some(host)
        })
        .filter(|x| f(x))
        .collect()
}

#[test]
fn shop_scenario_matches_capture_exactly() {
    if !privileged() {
        return;
    }
    let report = run_lab(EXAMPLE_SCENARIO);
    assert!(
        report.mismatches.is_empty(),
        "capture disagrees with the clients: {:#?}",
        report.mismatches
    );
    assert_eq!(report.summary.events_lost, 0);
    let recs = &report.records;

    // Dropped on its way out by the policy enforcer's nftables rules in the web pod's
    // namespace (its egress policy does not allow the database), with the kernel's reason.
    let drops = find(recs, "shop/web-0", &report, |r| {
        r.verdict == Some(Verdict::Dropped) && r.dst.port == Some(5432)
    });
    assert_eq!(drops.len(), 1, "{drops:#?}");
    assert_eq!(drops[0].drop_reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(
        drops[0].src.ip.to_string(),
        "10.244.0.11",
        "the web pod's SYN was dropped"
    );
    // The client saw a timeout, not a refusal.
    let timeout = find(recs, "shop/web-0", &report, |r| {
        r.dst.port == Some(5432) && r.verdict != Some(Verdict::Dropped)
    });
    assert_eq!(timeout.len(), 1, "{timeout:#?}");
    assert_eq!(timeout[0].verdict, Some(Verdict::Timeout));
    // A closed port: refused with ECONNREFUSED, and the kernel's NO_SOCKET drop of the SYN.
    let refused = find(recs, "shop/web-0", &report, |r| r.dst.port == Some(9091));
    assert_eq!(
        (refused[0].verdict, refused[0].error.as_deref()),
        (Some(Verdict::Refused), Some("ECONNREFUSED"))
    );
    // IPv6 is captured like IPv4.
    let v6 = find(recs, "shop/cart-0", &report, |r| {
        r.src.ip.is_ipv6() && r.verdict == Some(Verdict::Established)
    });
    assert_eq!(v6.iter().map(|r| r.count).sum::<u64>(), 2, "{v6:#?}");
    assert!(v6
        .iter()
        .all(|r| r.observer.as_ref().unwrap().side == Side::Server));
    // DNS-like UDP: answered on both sides, replies counted.
    let dns = find(recs, "shop/web-0", &report, |r| {
        r.protocol == Protocol::UDP && r.dst.port == Some(53)
    });
    assert_eq!(dns.len(), 1, "{dns:#?}");
    assert_eq!(
        (dns[0].verdict, dns[0].count, dns[0].replies),
        (Some(Verdict::Answered), 4, Some(4))
    );
    // A UDP service that never answers.
    let silent = find(recs, "shop/cart-0", &report, |r| {
        r.protocol == Protocol::UDP && r.dst.port == Some(514)
    });
    assert_eq!(
        (silent[0].verdict, silent[0].replies),
        (Some(Verdict::Sent), Some(0))
    );
    // Every record carries the node and RFC 3339 times.
    assert!(recs
        .iter()
        .all(|r| r.node.as_deref() == Some("test-node") && r.first_seen <= r.last_seen));
}

#[test]
fn timeouts_are_told_apart_from_refusals_and_drops_for_udp_and_egress() {
    if !privileged() {
        return;
    }
    let report = run_lab(
        "
name: edge
settings: {timeout: 500ms}
namespaces: [{name: a}]
pods:
  - {name: client, namespace: a}
  - {name: server, namespace: a, ports: [{port: 80}, {port: 81}, {port: 53, protocol: UDP}]}
traffic:
  - {from: a/client, to: a/server, port: 80, count: 2, expect: timeout}
  - {from: a/client, to: a/server, port: 53, protocol: UDP, count: 3, expect: sent}
  - {from: a/client, to: a/server, port: 80, count: 1, family: ipv6, expect: established}
  - {from: a/client, to: a/server, port: 81, count: 1, family: ipv6, expect: timeout}
drops:
  # Egress drop in the client: IPv4 only, so the IPv6 connection passes.
  - {pod: a/client, direction: egress, peer: 10.244.0.11, port: 80, protocol: TCP}
  - {pod: a/server, direction: egress, protocol: UDP}
  # Ingress drop in the server for IPv6 on port 81.
  - {pod: a/server, direction: ingress, peer: 'fd00:10:244::a', port: 81, protocol: TCP}
",
    );
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    let recs = &report.records;
    let egress_drops = find(recs, "a/client", &report, |r| {
        r.verdict == Some(Verdict::Dropped) && r.protocol == Protocol::TCP
    });
    assert!(
        !egress_drops.is_empty(),
        "the SYNs dropped on egress are reported: {recs:#?}"
    );
    assert!(egress_drops
        .iter()
        .all(|r| r.drop_reason.as_deref() == Some("NETFILTER_DROP")));
    // Each connect sends its SYN at least once; retransmissions add more.
    assert!(egress_drops.iter().map(|r| r.count).sum::<u64>() >= 2);
    // UDP answers dropped on the server's egress: the server saw the queries, never answered.
    let server = find(recs, "a/server", &report, |r| {
        r.protocol == Protocol::UDP && r.verdict == Some(Verdict::Received)
    });
    assert_eq!(server.iter().map(|r| r.count).sum::<u64>(), 3, "{recs:#?}");
    let udp_drops = find(recs, "a/server", &report, |r| {
        r.protocol == Protocol::UDP && r.verdict == Some(Verdict::Dropped)
    });
    assert_eq!(
        udp_drops.iter().map(|r| r.count).sum::<u64>(),
        3,
        "{udp_drops:#?}"
    );
}

#[test]
fn a_burst_of_20000_connections_is_accounted_for() {
    if !privileged() {
        return;
    }
    const N: u64 = 20_000;
    let report = run_lab(&format!(
        "
name: burst
namespaces: [{{name: a}}]
pods:
  - {{name: client, namespace: a}}
  - {{name: server, namespace: a, ports: [{{port: 8080}}]}}
traffic:
  - {{from: a/client, to: a/server, port: 8080, count: {N}, parallel: 4, close: reset}}
"
    ));
    let client: u64 = find(&report.records, "a/client", &report, |r| {
        r.verdict == Some(Verdict::Established)
    })
    .iter()
    .map(|r| r.count)
    .sum();
    let server: u64 = find(&report.records, "a/server", &report, |r| {
        r.verdict == Some(Verdict::Established)
    })
    .iter()
    .map(|r| r.count)
    .sum();
    let saw = |v| u64::from(*report.outcomes[0].results.get(&v).unwrap_or(&0));
    let (established, timed_out) = (saw(Verdict::Established), saw(Verdict::Timeout));
    // The machine may drop a SYN of such a burst now and then (the lab's one-thread server
    // falls behind): a handful of the clients' own attempts time out, and the capture must
    // say exactly that too.
    assert_eq!(established + timed_out, N, "{:?}", report.outcomes);
    assert!(timed_out <= N / 1000, "{:?}", report.outcomes);
    let client_timeouts: u64 = find(&report.records, "a/client", &report, |r| {
        r.verdict == Some(Verdict::Timeout)
    })
    .iter()
    .map(|r| r.count)
    .sum();
    // A handshake's last ACK that the server's kernel drops at its listener (the accept
    // queue full: the one-thread server behind) leaves a client established and no server
    // socket that ever was: the kernel's own count bounds what the server side may lack.
    let listener_drops = report.listen_drops.get("a/server").map_or(0, |d| d.drops);
    // So does any packet between the two that the probe saw dropped, with its reason (a
    // full backlog on the way, say).
    let ends: Vec<std::net::IpAddr> = report
        .resolved
        .hosts
        .iter()
        .filter(|h| h.id == "a/client" || h.id == "a/server")
        .flat_map(|h| [h.ipv4.into(), h.ipv6.into()])
        .collect();
    let dropped: Vec<&FlowRecord> = report
        .records
        .iter()
        .filter(|r| r.protocol == Protocol::TCP && r.verdict == Some(Verdict::Dropped))
        .filter(|r| ends.contains(&r.src.ip) && ends.contains(&r.dst.ip))
        .collect();
    let path_drops: u64 = dropped.iter().map(|r| r.count).sum();
    let lost = report.summary.events_lost;
    let tally = format!(
        "client {client} + server {server} + timeouts {client_timeouts} + lost {lost}, \
         {established} established and {timed_out} timed out, the server's kernel dropped \
         {listener_drops} at its listener; dropped between the two: {dropped:#?}"
    );
    // Every connection is in the records, on both sides, or the loss is reported exactly.
    let missing =
        (2 * established + timed_out).checked_sub(client + server + client_timeouts + lost);
    assert!(
        missing.is_some_and(|m| m <= listener_drops + path_drops),
        "{tally}"
    );
    if lost == 0 {
        assert_eq!(
            (client, client_timeouts),
            (established, timed_out),
            "{tally}"
        );
    }
    assert_eq!(report.summary.decode_errors, 0);
}

/// The kernel's count of what it dropped at a listener is read in the host's own namespace:
/// a listener that never accepts has room for one connection (backlog 0), so the SYNs of
/// the next clients are dropped there and those clients time out; a host beside it, with no
/// listener, counts nothing.
#[test]
fn a_full_accept_queue_is_counted_in_its_own_namespace() {
    use flowpol_lab::{netns::LabNet, netstat};
    use std::{net::TcpStream, os::fd::AsRawFd, time::Duration};
    if !privileged() {
        return;
    }
    let mut net = LabNet::create().unwrap();
    let (server, v4) = (
        std::net::Ipv4Addr::new(10, 244, 0, 2),
        std::net::Ipv4Addr::new(10, 244, 0, 3),
    );
    let ns = net.add_host(server, "fd00::2".parse().unwrap()).unwrap();
    let beside = net.add_host(v4, "fd00::3".parse().unwrap()).unwrap();
    let (before, quiet_before) = (netstat::read(&ns).unwrap(), netstat::read(&beside).unwrap());
    let connected = std::thread::scope(|s| {
        s.spawn(|| {
            flowpol_node::netns::enter(&ns).unwrap();
            let l = std::net::TcpListener::bind((server, 8080)).unwrap();
            // SAFETY: a valid listening socket; listen() again only sets the backlog.
            assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
            let addr = (server, 8080).into();
            (0..4)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)))
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    });
    assert_eq!(connected.len(), 1, "one connection fits a backlog of 0");
    let during = netstat::read(&ns).unwrap().since(before);
    // Each of the 3 others had its SYN dropped at least once (a retransmission may add one).
    assert!(during.overflows >= 3, "{during:?}");
    assert!(during.drops >= during.overflows, "{during:?}");
    assert_eq!(
        netstat::read(&beside).unwrap().since(quiet_before),
        netstat::ListenCounters::default()
    );
    drop(connected);
    drop(net);
    flowpol_e2e::assert_no_leftovers();
}

/// The wait for a real enforcer ends in an error when nothing enforces the policies: the
/// shop's namespaces with no rules at all let the denied canary through. With flowpol's
/// enforcer in place of a real one, the same canaries pass at once.
#[test]
fn the_canary_wait_fails_when_nothing_enforces_and_passes_when_something_does() {
    use flowpol_lab::{
        enforce,
        enforcer::{canary, EnforcerError},
        scenario, Lab,
    };
    use std::sync::{atomic::AtomicBool, Arc};
    use std::time::Duration;
    if !privileged() {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let shop = scenario::parse("shop", EXAMPLE_SCENARIO).unwrap();
    let declared = enforce::declared(&shop).unwrap();
    let engine = declared.engine();

    let open = Lab::create(shop.clone()).unwrap();
    let canaries = canary::choose(&open, &engine).unwrap();
    assert_eq!(
        canaries.iter().map(|c| c.allowed).collect::<Vec<_>>(),
        [false, true],
        "one canary the policies deny, one they allow"
    );
    match canary::wait(
        &open,
        &canaries,
        std::time::Instant::now(),
        Duration::from_secs(2),
        &stop,
    ) {
        Err(EnforcerError::NotEnforcing {
            canaries: wrong, ..
        }) => {
            assert_eq!(wrong.len(), 1, "{wrong:?}");
            assert!(wrong[0].ends_with("which the policies deny"), "{wrong:?}");
        }
        other => panic!("an unenforced lab passed the canary wait: {other:?}"),
    }
    drop(open);

    let mut enforced = shop;
    enforce::install(&mut enforced, &[]).unwrap();
    let lab = Lab::create(enforced).unwrap();
    canary::wait(
        &lab,
        &canaries,
        std::time::Instant::now(),
        Duration::from_secs(10),
        &stop,
    )
    .unwrap();
    drop(lab);
    flowpol_e2e::assert_no_leftovers();
}

/// flowpol started after the workloads (tests/fixtures/scenario-open-before.yaml): the
/// connections open before the recording appear once per side, marked as such; the UDP
/// datagrams the sender's own egress filter dropped appear as the client's `sent` flow
/// beside the drop; and the suggestion from that recording keeps the held connections'
/// reconnects working while it blocks what was never seen.
#[test]
fn a_recording_started_after_the_traffic_leaves_nothing_out() {
    if !privileged() {
        return;
    }
    let yaml = include_str!("../fixtures/scenario-open-before.yaml");
    let report = run_lab(yaml);
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    assert_eq!(report.summary.events_lost, 0);
    let recs = &report.records;
    let before = |r: &FlowRecord| r.observer.as_ref().unwrap().since == Some(Since::BeforeStart);
    // The pool: 2 connections, on the API's side and on the database's, each once.
    let pool_client = find(recs, "app/api-0", &report, |r| r.dst.port == Some(5432));
    assert_eq!(pool_client.len(), 1, "{pool_client:#?}");
    assert_eq!(
        (
            pool_client[0].verdict,
            pool_client[0].count,
            before(pool_client[0])
        ),
        (Some(Verdict::Established), 2, true)
    );
    assert_eq!(pool_client[0].observer.as_ref().unwrap().side, Side::Client);
    let api_ip = report.resolved.host("app/api-0").unwrap().ipv4;
    let pg_server = find(recs, "data/pg-0", &report, |r| r.dst.port == Some(5432));
    let from_api: Vec<_> = pg_server
        .iter()
        .filter(|r| r.src.ip == std::net::IpAddr::V4(api_ip))
        .collect();
    assert_eq!(from_api.len(), 1, "{pg_server:#?}");
    assert_eq!((from_api[0].count, before(from_api[0])), (2, true));
    assert_eq!(from_api[0].observer.as_ref().unwrap().side, Side::Server);
    // The worker's connection was made while recording: not marked.
    let worker = find(recs, "app/worker-0", &report, |r| r.dst.port == Some(5432));
    assert_eq!(worker.len(), 1, "{worker:#?}");
    assert!(!before(worker[0]));
    // DNS dropped by the worker's own egress filter: the client knew (EPERM), and the
    // capture has both its send and the drop.
    let dns_item = 2;
    assert_eq!(
        report.outcomes[dns_item].send_errors,
        [("EPERM".to_owned(), 2)].into()
    );
    let sent = find(recs, "app/worker-0", &report, |r| {
        r.protocol == Protocol::UDP && r.verdict == Some(Verdict::Sent)
    });
    assert_eq!(sent.iter().map(|r| r.count).sum::<u64>(), 2, "{recs:#?}");
    assert!(sent
        .iter()
        .all(|r| r.observer.as_ref().unwrap().side == Side::Client));
    let dropped = find(recs, "app/worker-0", &report, |r| {
        r.protocol == Protocol::UDP && r.verdict == Some(Verdict::Dropped)
    });
    assert_eq!(
        dropped.iter().map(|r| r.count).sum::<u64>(),
        2,
        "{dropped:#?}"
    );
    assert!(dropped
        .iter()
        .all(|r| r.drop_reason.as_deref() == Some("NETFILTER_DROP")));

    // The suggestion from this recording, enforced: the pool reconnects (now while
    // recording), the worker still reaches the database, and the database never called
    // the API, so it may not.
    let (_, mut next) = enforcing_the_suggestion(&report);
    next.scenario.traffic.truncate(2);
    for t in &mut next.scenario.traffic {
        t.held = false;
    }
    next.scenario.traffic.push(one_connection(
        "data/pg-0",
        "app/api-0",
        8080,
        Some(Verdict::Timeout),
    ));
    let second = run_resolved(next, &[]);
    assert!(second.mismatches.is_empty(), "{:#?}", second.mismatches);
}
