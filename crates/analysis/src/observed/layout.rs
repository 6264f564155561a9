//! How a workload's edges are laid out in `ObservedTraffic` objects, so that no object
//! outgrows what the API server and etcd accept at any cluster size. Pure.
//!
//! - One object per (workload, node), each with one writer: the node's agent. A node's
//!   writes never touch another node's objects, and `managedFields` holds one entry of a
//!   fixed size (`spec.edges` is an atomic list, owned whole by its one manager).
//! - A share too large for one object is split into pages by a hash of each edge's key:
//!   the fewest pages, a power of two, that keep every object under [`MAX_OBJECT_BYTES`].
//!   Doubling the count splits each page in two and keeps the old pages' names, so a share
//!   never shrinks back and no object is ever orphaned.
//! - Labels name the workload and the node, so a workload's objects (or one node's share
//!   of it) are one label-selected list: [`selector`]. An agent reads its own share back
//!   by name instead (page 0, which says how many pages there are, then the others): a
//!   point read, where a list would make the store scan the namespace.
use std::collections::BTreeMap;

use super::{TrafficObject, WireEdge, WireKey};
use crate::{cluster::Workload, policy::Direction};

/// The most an `ObservedTraffic` object may take as the API server returns it, metadata and
/// `managedFields` included: well under etcd's default request limit (1.5 MiB) and
/// kube-apiserver's body limit (3 MiB).
pub const MAX_OBJECT_BYTES: usize = 512 * 1024;

/// Room left for everything but the edges: metadata with the longest names (253-character
/// workload and node, 63-character namespace), labels, `managedFields`' one entry,
/// timestamps and the spec's other fields take 1.8 KiB as the real API server returns
/// them (probe-user/tests/store_layout.rs measures it).
pub const OVERHEAD_BYTES: usize = 8 * 1024;

/// What the edges of one object may take, serialized.
pub const EDGE_BYTES: usize = MAX_OBJECT_BYTES - OVERHEAD_BYTES;

/// The most pages one share may have. With edges spread by a 64-bit hash this is never
/// reached: it only stops a pathological share (edges each near [`EDGE_BYTES`]) short.
const MAX_PAGES: u32 = 1 << 16;

pub const LABEL_KIND: &str = "flowpol.io/workload-kind";
pub const LABEL_WORKLOAD: &str = "flowpol.io/workload";
pub const LABEL_NODE: &str = "flowpol.io/node";

/// The labels of a share's objects.
pub fn labels(w: &Workload, node: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (LABEL_KIND, label_value(&w.kind.to_string())),
        (LABEL_WORKLOAD, label_value(&w.name)),
        (LABEL_NODE, label_value(node)),
    ])
}

/// The label selector of a workload's objects, or of `node`'s share of them. Label values
/// of long names are shortened (see [`label_value`]): a reader checks the spec as well.
pub fn selector(w: &Workload, node: Option<&str>) -> String {
    let mut s = format!(
        "{LABEL_KIND}={},{LABEL_WORKLOAD}={}",
        label_value(&w.kind.to_string()),
        label_value(&w.name)
    );
    if let Some(n) = node {
        s.push_str(&format!(",{LABEL_NODE}={}", label_value(n)));
    }
    s
}

/// `text` as a label value: itself when it is one (at most 63 characters, letters, digits,
/// `-`, `_`, `.`, starting and ending with a letter or digit), else a prefix of it and a
/// hash of the whole.
pub fn label_value(text: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let edges_ok = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_alphanumeric())
            && t.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if text.len() <= 63 && text.chars().all(allowed) && (text.is_empty() || edges_ok(text)) {
        return text.to_owned();
    }
    let prefix: String = text
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(46)
        .collect();
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = format!("{:016x}", fnv(&[text.as_bytes()]));
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The name of page `page` of `node`'s share of `w`: readable, then a hash of the three,
/// so names are unique however names are shortened or spelled.
pub fn object_name(w: &Workload, node: &str, page: u32) -> String {
    let hash = fnv(&[
        w.kind.to_string().as_bytes(),
        w.name.as_bytes(),
        node.as_bytes(),
        &page.to_le_bytes(),
    ]);
    let mut prefix = crate::cluster::object_name(&format!("{}-{}.{node}", w.kind, w.name));
    prefix.truncate(253 - 17);
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{hash:016x}")
}

/// A share's edges did not fit however many pages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{bytes} bytes of edges cannot be laid out in pages of {EDGE_BYTES} (one edge takes {largest})"
)]
pub struct Oversized {
    pub bytes: usize,
    pub largest: usize,
}

/// `node`'s share of `w` (in `namespace`) as objects: at least `at_least` pages (the count
/// the cluster already holds), more when needed to keep each under [`MAX_OBJECT_BYTES`].
/// Every page is returned, empty ones included (each replaces what its object held), the
/// last page first: page 0, whose count of pages is the one read back, is written last.
pub fn paginate(
    namespace: &str,
    w: &Workload,
    node: &str,
    mut edges: Vec<WireEdge>,
    at_least: u32,
) -> Result<Vec<TrafficObject>, Oversized> {
    edges.sort_by(|a, b| a.key.cmp(&b.key));
    let sized: Vec<(u64, usize)> = edges
        .iter()
        .map(|e| {
            let bytes = serde_json::to_vec(e).map_or(0, |v| v.len()) + 1;
            (edge_hash(&e.key), bytes)
        })
        .collect();
    let total = sized.iter().map(|s| s.1).sum();
    let largest = sized.iter().map(|s| s.1).max().unwrap_or(0);
    if largest > EDGE_BYTES {
        return Err(Oversized {
            bytes: total,
            largest,
        });
    }
    let mut pages = at_least.max(1).next_power_of_two();
    loop {
        let mut load = vec![0usize; pages as usize];
        for &(hash, bytes) in &sized {
            load[page_of(hash, pages)] += bytes;
        }
        if load.iter().all(|&b| b <= EDGE_BYTES) {
            break;
        }
        if pages >= MAX_PAGES {
            return Err(Oversized {
                bytes: total,
                largest,
            });
        }
        pages *= 2;
    }
    let mut objects: Vec<TrafficObject> = (0..pages)
        .map(|page| TrafficObject {
            namespace: namespace.to_owned(),
            name: object_name(w, node, page),
            workload: w.clone(),
            node: node.to_owned(),
            page,
            pages,
            edges: Vec::new(),
        })
        .collect();
    for (e, &(hash, _)) in edges.into_iter().zip(&sized) {
        objects[page_of(hash, pages)].edges.push(e);
    }
    objects.reverse();
    Ok(objects)
}

/// A digest of what an object holds, to skip writing a page that did not change.
pub fn digest(o: &TrafficObject) -> u64 {
    fnv(&[serde_json::to_vec(&o.edges).unwrap_or_default().as_slice()])
}

/// The page of an edge when there are `pages` (a power of two): the hash's low bits, so
/// doubling the count splits page `i` into `i` and `i + pages`.
fn page_of(hash: u64, pages: u32) -> usize {
    (hash & u64::from(pages - 1)) as usize
}

/// FNV's low bits depend on the inputs' low bits only: mixed (splitmix64's finalizer) so
/// the page bits depend on every byte of the key.
fn edge_hash(k: &WireKey) -> u64 {
    let mut z = fnv(&[
        match k.direction {
            Direction::Ingress => b"ingress",
            Direction::Egress => b"egress",
        },
        k.peer.as_bytes(),
        &k.port.to_le_bytes(),
        k.protocol.to_string().as_bytes(),
    ]);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the parts, each ended by a zero byte: stable across builds and versions
/// (names and pages derived from it must not move when flowpol is upgraded), unlike std's
/// hasher.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        cluster::WorkloadKind,
        observed::{EdgeStats, Tally},
        record::{Protocol, Verdict},
    };

    /// Names at the limits Kubernetes sets: a 253-character object name, a 63-character
    /// namespace, a 253-character node name.
    fn longest() -> (String, Workload, String) {
        let ns = "n".repeat(63);
        let w = Workload {
            kind: WorkloadKind::StatefulSet,
            name: format!("{}.x", "w".repeat(251)),
        };
        (ns, w, format!("{}.internal", "node-".repeat(48)))
    }

    /// The largest edge an agent writes: the longest peer, every verdict at its maximum,
    /// 128 drop reasons with long names, both timestamps.
    fn largest_edge(i: u32) -> WireEdge {
        let mut verdicts = Tally::default();
        for v in Verdict::ALL {
            verdicts.add(v, u64::MAX);
        }
        let at = "2026-12-06T23:59:59.999999999Z".parse().unwrap();
        WireEdge {
            key: WireKey {
                direction: Direction::Egress,
                peer: format!("{}/StatefulSet/{:0>253}", "p".repeat(63), i),
                port: (i % 65536) as u16,
                protocol: Protocol::TCP,
            },
            stats: EdgeStats {
                verdicts,
                drop_reasons: (0..128)
                    .map(|r| {
                        (
                            format!("SOME_LONG_KERNEL_DROP_REASON_NAME_{r:03}"),
                            u64::MAX,
                        )
                    })
                    .collect(),
                first_seen: Some(at),
                last_seen: Some(at),
            },
        }
    }

    fn small_edge(port: u16) -> WireEdge {
        WireEdge {
            key: WireKey {
                direction: Direction::Ingress,
                peer: "shop/Deployment/web".into(),
                port,
                protocol: Protocol::TCP,
            },
            stats: EdgeStats::default(),
        }
    }

    #[test]
    fn the_largest_share_is_paged_under_the_bound() {
        let (ns, w, node) = longest();
        // ~6.6 KiB an edge, 2,000 edges: 13 MiB in all, 26 times what one object may hold.
        let edges: Vec<WireEdge> = (0..2000).map(largest_edge).collect();
        let one = serde_json::to_vec(&edges[0]).unwrap().len();
        assert!(one > 6_000, "{one}");
        let pages = paginate(&ns, &w, &node, edges.clone(), 1).unwrap();
        assert!(
            pages.len() >= 32 && pages.len().is_power_of_two(),
            "{}",
            pages.len()
        );
        let mut seen = BTreeSet::new();
        for p in &pages {
            let object = serde_json::to_vec(&p.to_value()).unwrap().len();
            let edges = serde_json::to_vec(&p.edges).unwrap().len();
            assert!(
                edges <= EDGE_BYTES,
                "page {}: {edges} bytes of edges",
                p.page
            );
            // Everything but the edges, before the server adds its metadata.
            assert!(object - edges < 2048, "page {}: {}", p.page, object - edges);
            assert!(p.name.len() <= 253, "{}", p.name);
            for e in &p.edges {
                assert!(seen.insert(e.key.clone()), "{:?} twice", e.key);
            }
        }
        assert_eq!(seen.len(), 2000, "every edge on one page");
        let names: BTreeSet<&str> = pages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), pages.len());
    }

    #[test]
    fn an_edge_that_no_page_can_hold_is_refused() {
        let mut e = small_edge(80);
        e.stats.drop_reasons = (0..40_000)
            .map(|r| (format!("REASON_{r:08}"), u64::MAX))
            .collect();
        let err = paginate("shop", &longest().1, "a", vec![e], 1).unwrap_err();
        assert!(err.largest > EDGE_BYTES, "{err}");
        assert!(err.to_string().contains("cannot be laid out"), "{err}");
    }

    #[test]
    fn doubling_the_pages_splits_each_in_two_and_keeps_the_names() {
        let w = Workload {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
        };
        let edges: Vec<WireEdge> = (0..4000).map(small_edge).collect();
        let two = paginate("shop", &w, "node-a", edges.clone(), 2).unwrap();
        let eight = paginate("shop", &w, "node-a", edges, 8).unwrap();
        assert_eq!((two.len(), eight.len()), (2, 8));
        let page_at = |pages: &[TrafficObject], port: u16| {
            pages
                .iter()
                .find(|p| p.edges.iter().any(|e| e.key.port == port))
                .unwrap()
                .page
        };
        for port in 0..4000 {
            assert_eq!(
                page_at(&eight, port) % 2,
                page_at(&two, port),
                "port {port}"
            );
        }
        for p in &two {
            let same = eight.iter().find(|q| q.page == p.page).unwrap();
            assert_eq!(p.name, same.name);
        }
        // Page 0, whose count is read back, comes last: written after the pages it counts.
        let order: Vec<(u32, u32)> = eight.iter().map(|p| (p.page, p.pages)).collect();
        assert_eq!(order, (0..8).rev().map(|p| (p, 8)).collect::<Vec<_>>());
        // Spread evenly enough: no page of eight holds more than twice its share.
        for p in &eight {
            assert!(p.edges.len() < 1000, "page {}: {}", p.page, p.edges.len());
        }
        // Fewer edges never mean fewer pages than the cluster holds.
        let kept = paginate("shop", &w, "node-a", vec![small_edge(1)], 8).unwrap();
        assert_eq!(kept.len(), 8);
        assert_eq!(kept.iter().map(|p| p.edges.len()).sum::<usize>(), 1);
    }

    #[test]
    fn names_and_labels_are_valid_and_distinct_for_any_names() {
        let dns = |s: &str| {
            s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let label = |s: &str| {
            s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let (_, long, long_node) = longest();
        let web = |name: &str| Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        };
        let mut names = BTreeSet::new();
        for (w, node) in [
            (long.clone(), long_node.clone()),
            (long.clone(), format!("{long_node}x")),
            (web("web.v2"), "a".into()),
            (web("web"), "v2.a".into()),
            (web("web"), "node-a".into()),
        ] {
            for page in [0, 1, 2] {
                let name = object_name(&w, &node, page);
                assert!(dns(&name), "{name}");
                assert!(names.insert(name.clone()), "{name} twice");
            }
            for (_, v) in labels(&w, &node) {
                assert!(label(&v), "{v}");
            }
        }
        // Short names are the label values themselves; long ones differ by their hash.
        assert_eq!(labels(&web("web"), "node-a")[LABEL_WORKLOAD], "web");
        assert_ne!(
            label_value(&long_node),
            label_value(&format!("{long_node}x"))
        );
        assert_eq!(
            selector(&web("web"), Some("node-a")),
            "flowpol.io/workload-kind=Deployment,flowpol.io/workload=web,flowpol.io/node=node-a"
        );
    }
}
