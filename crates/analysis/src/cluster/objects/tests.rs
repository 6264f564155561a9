use super::*;
use crate::cluster::AddressHolder;

const T10: &str = "2026-01-01T10:00:00Z";
const T11: &str = "2026-01-01T11:00:00Z";
const T1130: &str = "2026-01-01T11:30:00Z";
const T12: &str = "2026-01-01T12:00:00Z";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn pod(name: &str, uid: &str, ip: &str, phase: PodPhase, created: &str) -> Object {
    Object::Pod(PodObj {
        namespace: "a".into(),
        name: name.into(),
        uid: uid.into(),
        labels: Arc::default(),
        ips: vec![ip.parse().unwrap()],
        node: None,
        host_network: false,
        phase,
        ports: Arc::new([]),
        owner: None,
        created: Some(at(created)),
    })
}

fn who(c: &Cluster, ip: &str, t: &str) -> String {
    match c.endpoint_at(ip.parse().unwrap(), at(t)) {
        AddressHolder::Pod(p) => c.pod_name(p),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_relist_retires_pods_deleted_unseen() {
    let mut o = Objects::default();
    o.apply(
        pod("old", "u1", "10.0.0.1", PodPhase::Running, T10),
        at(T10),
    );
    o.apply(
        pod("kept", "u2", "10.0.0.2", PodPhase::Running, T10),
        at(T10),
    );
    let relisted = vec![pod("kept", "u2", "10.0.0.2", PodPhase::Running, T10)];
    o.replace(Kind::Pod, relisted, at(T12));
    assert_eq!(o.count(Kind::Pod), 1);
    let c = o.build(true).unwrap();
    assert_eq!(who(&c, "10.0.0.1", "2026-01-01T11:59:59Z"), "a/old");
    assert!(matches!(
        c.endpoint("10.0.0.1".parse().unwrap()),
        AddressHolder::External(_)
    ));
    o.expire(at("2026-01-01T12:00:01Z"));
    assert!(o.gone.is_empty(), "forgotten after the grace period");
}

#[test]
fn a_pod_that_finishes_or_is_replaced_leaves_its_past_tenure() {
    let mut o = Objects::default();
    o.apply(
        pod("job", "u1", "10.0.0.1", PodPhase::Running, T10),
        at(T10),
    );
    o.apply(
        pod("job", "u1", "10.0.0.1", PodPhase::Succeeded, T10),
        at(T11),
    );
    // A StatefulSet pod re-created under the same name, its deletion never seen.
    o.apply(
        pod("db-0", "u2", "10.0.0.2", PodPhase::Running, T10),
        at(T10),
    );
    o.apply(
        pod("db-0", "u3", "10.0.0.3", PodPhase::Running, T1130),
        at(T1130),
    );
    let c = o.build(true).unwrap();
    assert_eq!(who(&c, "10.0.0.1", "2026-01-01T10:59:59Z"), "a/job");
    assert!(who(&c, "10.0.0.1", T11).starts_with("External"));
    assert_eq!(who(&c, "10.0.0.2", T11), "a/db-0");
    assert!(who(&c, "10.0.0.2", T1130).starts_with("External"));
}

#[test]
fn live_data_hands_an_address_over_a_snapshot_refuses() {
    let mut o = Objects::default();
    o.apply(
        pod("old", "u1", "10.0.0.1", PodPhase::Running, T10),
        at(T10),
    );
    // The new holder's creation arrived before the old one's deletion.
    o.apply(
        pod("new", "u2", "10.0.0.1", PodPhase::Running, T11),
        at(T11),
    );
    assert!(matches!(
        o.build(false),
        Err(ModelError::AddressClash { .. })
    ));
    let c = o.build(true).unwrap();
    assert_eq!(who(&c, "10.0.0.1", "2026-01-01T10:30:00Z"), "a/old");
    assert_eq!(who(&c, "10.0.0.1", T11), "a/new");
    match c.endpoint("10.0.0.1".parse().unwrap()) {
        AddressHolder::Pod(p) => assert_eq!(c.pod_name(p), "a/new"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deleting_owners_and_policies_by_key() {
    let mut o = Objects::default();
    let now = at(T10);
    for kind in ["ReplicaSet", "Job"] {
        let meta = ObjectMeta {
            name: Some("x".into()),
            namespace: Some("a".into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    kind: "Deployment".into(),
                    name: "d".into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..ObjectMeta::default()
        };
        o.apply(owned_obj(kind, &meta).unwrap(), now);
    }
    assert_eq!((o.count(Kind::ReplicaSet), o.count(Kind::Job)), (1, 1));
    o.delete(Kind::Job, "a", "x", now);
    assert_eq!((o.count(Kind::ReplicaSet), o.count(Kind::Job)), (1, 0));
    o.replace(Kind::ReplicaSet, Vec::new(), now);
    assert_eq!(o.count(Kind::ReplicaSet), 0);
}
