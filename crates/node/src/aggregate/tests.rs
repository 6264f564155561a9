use super::*;
use crate::{
    decode::decode,
    script::{bytes, event},
};
use probe_common::{AF_INET, FLOW_KIND_UDP, IPPROTO_TCP, IPPROTO_UDP, UDP_LOCAL_RESPONDER};

fn agg() -> Aggregator {
    Aggregator::new(
        Some("node-a".into()),
        Clock::from_offset_ns(1_700_000_000_000_000_000),
        HashMap::from([(12, "NETFILTER_DROP".into())]),
    )
}

fn obs(kind: EventKind, protocol: u8, f: impl FnOnce(&mut probe_common::Event)) -> Observation {
    let mut ev = event(kind, AF_INET, protocol);
    f(&mut ev);
    decode(&bytes(&ev)).expect("test event decodes")
}

#[test]
fn tcp_connections_aggregate_with_exact_counts() {
    let mut a = agg();
    for i in 0..5u16 {
        a.add(obs(EventKind::TcpEstablishedOut, IPPROTO_TCP, |e| {
            e.sport = 40000 + i
        }));
    }
    a.add(obs(EventKind::TcpEstablishedIn, IPPROTO_TCP, |_| {}));
    a.add(obs(EventKind::TcpFailed, IPPROTO_TCP, |e| e.errno = 111));
    a.add(obs(EventKind::TcpFailed, IPPROTO_TCP, |e| e.errno = 110));
    let recs = a.records();
    assert_eq!(recs.len(), 4, "{recs:#?}");
    let est_client = recs
        .iter()
        .find(|r| {
            r.verdict == Some(Verdict::Established)
                && r.observer.as_ref().unwrap().side == Side::Client
        })
        .expect("client record");
    assert_eq!(est_client.count, 5);
    assert_eq!(
        est_client.src.port, None,
        "ports varied, so none is claimed"
    );
    let refused = recs
        .iter()
        .find(|r| r.verdict == Some(Verdict::Refused))
        .expect("refused");
    assert_eq!(refused.error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(refused.src.port, Some(40000));
    let timeout = recs
        .iter()
        .find(|r| r.verdict == Some(Verdict::Timeout))
        .expect("timeout");
    assert_eq!(timeout.error.as_deref(), Some("ETIMEDOUT"));
    assert_eq!(a.totals().connections.get(&Verdict::Established), Some(&6));
}

#[test]
fn udp_flow_takes_kernel_counters_and_answered_flag() {
    let mut a = agg();
    let o = obs(EventKind::Udp, IPPROTO_UDP, |e| {
        e.flags = UDP_LOCAL_INITIATOR;
        e.key.kind = FLOW_KIND_UDP;
    });
    let key = o.key;
    a.add(o);
    assert_eq!(a.records()[0].verdict, Some(Verdict::Sent));
    a.update_counters(
        &key,
        FlowStats {
            first_ns: 1_500,
            last_ns: 9_000,
            packets: 3,
            replies: 2,
            flags: UDP_ANSWERED,
            netns: 9,
            ..FlowStats::ZERO
        },
    );
    let r = &a.records()[0];
    assert_eq!(
        (r.verdict, r.count, r.replies),
        (Some(Verdict::Answered), 3, Some(2))
    );
    assert_eq!(r.observer.as_ref().unwrap().side, Side::Client);
    assert_eq!(
        r.observer.as_ref().unwrap().netns,
        9,
        "netns learnt in the kernel after the first event"
    );
    assert_eq!(
        r.last_seen,
        Some(Clock::from_offset_ns(1_700_000_000_000_000_000).wall(9_000))
    );
}

#[test]
fn udp_flows_of_several_sockets_merge_into_one_record() {
    let mut a = agg();
    for cookie in 1..=3u64 {
        a.add(obs(EventKind::Udp, IPPROTO_UDP, |e| {
            e.flags = UDP_LOCAL_INITIATOR | UDP_ANSWERED;
            e.key.cookie = cookie;
        }));
    }
    let recs = a.records();
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(
        (recs[0].count, recs[0].verdict),
        (3, Some(Verdict::Answered))
    );
}

#[test]
fn udp_server_side_is_received_until_answered() {
    let mut a = agg();
    a.add(obs(EventKind::Udp, IPPROTO_UDP, |e| {
        e.flags = UDP_LOCAL_RESPONDER
    }));
    let r = &a.records()[0];
    assert_eq!(
        (r.verdict, r.observer.as_ref().unwrap().side),
        (Some(Verdict::Received), Side::Server)
    );
}

#[test]
fn drops_are_named_from_btf() {
    let mut a = agg();
    a.add(obs(EventKind::Drop, IPPROTO_TCP, |e| e.key.reason = 12));
    a.add(obs(EventKind::Drop, IPPROTO_TCP, |e| {
        e.key.reason = 77;
        e.key.dport = 1;
    }));
    let t = a.totals();
    assert_eq!(t.drops_by_reason.get("NETFILTER_DROP"), Some(&1));
    assert_eq!(t.drops_by_reason.get("REASON_77"), Some(&1));
}

#[test]
fn take_hands_out_each_connection_and_packet_once_and_retires_idle_flows() {
    let mut a = agg();
    a.add(obs(EventKind::TcpEstablishedOut, IPPROTO_TCP, |_| {}));
    let o = obs(EventKind::Udp, IPPROTO_UDP, |e| {
        e.flags = UDP_LOCAL_INITIATOR;
        e.key.kind = FLOW_KIND_UDP;
    });
    let key = o.key;
    a.add(o);
    let stats = |packets, last_ns| FlowStats {
        first_ns: 1_000,
        last_ns,
        packets,
        ..FlowStats::ZERO
    };
    a.update_counters(&key, stats(2, 2_000));
    let (first, retired) = a.take(0, &[]);
    let mut counts: Vec<(Protocol, u64)> = first.iter().map(|r| (r.protocol, r.count)).collect();
    counts.sort();
    assert_eq!(counts, vec![(Protocol::TCP, 1), (Protocol::UDP, 2)]);
    assert!(retired.is_empty());
    // Three more packets: only they are handed out, starting after the last one taken.
    a.update_counters(&key, stats(5, 7_000));
    let (second, _) = a.take(0, &[]);
    assert_eq!(
        second.len(),
        1,
        "the connection was handed out already: {second:#?}"
    );
    assert_eq!(second[0].count, 3);
    let clock = Clock::from_offset_ns(1_700_000_000_000_000_000);
    assert_eq!(second[0].first_seen, Some(clock.wall(2_001)));
    assert_eq!(second[0].last_seen, Some(clock.wall(7_000)));
    // Nothing new: not idle yet at 5_000, retired at 8_000 and its key returned.
    assert_eq!(a.take(5_000, &[]), (vec![], vec![]));
    assert_eq!(a.take(8_000, &[]), (vec![], vec![key]));
    assert!(a.records().is_empty());
}

/// Same connection, two errnos: the order is the records', not the hash map's.
#[test]
fn records_come_out_in_one_order_whatever_the_arrival() {
    let failed = |errno: u32| {
        obs(EventKind::TcpFailed, IPPROTO_TCP, |e| {
            e.errno = errno;
        })
    };
    let (timedout, unreachable) = (
        failed(libc::ETIMEDOUT as u32),
        failed(libc::EHOSTUNREACH as u32),
    );
    let mut a = agg();
    a.add(timedout.clone());
    a.add(unreachable.clone());
    let mut b = agg();
    b.add(unreachable);
    b.add(timedout);
    let errors = |records: Vec<FlowRecord>| -> Vec<Option<String>> {
        records.into_iter().map(|r| r.error).collect()
    };
    let want = vec![
        Some("EHOSTUNREACH".to_owned()),
        Some("ETIMEDOUT".to_owned()),
    ];
    assert_eq!(errors(a.records()), want);
    assert_eq!(errors(b.records()), want);
    assert_eq!(errors(a.take(u64::MAX, &[]).0), want);
}
