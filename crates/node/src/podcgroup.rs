//! Which pod a local socket belongs to, from its cgroup: the kubelet puts every pod's
//! containers under a cgroup named after the pod's UID, with either cgroup driver:
//!
//! - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/...`
//!   (dashes of the UID written as underscores; Guaranteed pods sit right under
//!   `kubepods.slice`),
//! - cgroupfs: `kubepods/burstable/pod<uid>/<container>`.
//!
//! The probe reports the cgroup v2 id of a socket, which is the inode number of its cgroup
//! directory. This beats addresses where they are ambiguous: hostNetwork pods share their
//! node's address, but not their cgroup. Ids are never reused while the machine runs, so
//! scans can be merged.
use std::{collections::HashMap, os::unix::fs::MetadataExt, path::Path};

pub use flowpol_analysis::attribute::CgroupPods;

/// How deep below the root pod cgroups are looked for (kubelet's sit at depth 3 or 4).
const MAX_DEPTH: usize = 6;

/// The pod UID a cgroup directory name carries, if it is a pod's.
pub fn pod_uid(dir_name: &str) -> Option<String> {
    // The last "pod": "kubepods" comes first, and a UID (hex) cannot hold one.
    let at = dir_name.rfind("pod")?;
    let rest = &dir_name[at + 3..];
    let uid: String = rest
        .chars()
        .take(36)
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    let shape_ok = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    let end_ok = matches!(&rest[36.min(rest.len())..], "" | ".slice");
    (shape_ok && end_ok).then_some(uid)
}

/// Every cgroup below `root` that belongs to a pod (the pod's own and its containers').
/// Unreadable directories are skipped: cgroups come and go while the tree is walked.
pub fn scan(root: &Path) -> CgroupPods {
    let mut found = CgroupPods::new();
    visit(root, None, 0, &mut |_, ino, uid| {
        found.insert(ino, uid.to_owned());
    });
    found
}

/// Pod UID -> the processes in its cgroups (containers included), for entering a pod's
/// network namespace from the node through `/proc/<pid>/ns/net`.
pub fn pids(root: &Path) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    visit(root, None, 0, &mut |dir, _, uid| {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        out.entry(uid.to_owned())
            .or_default()
            .extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    });
    out
}

/// Calls `found(dir, inode, pod UID)` for every pod cgroup below `dir`, descending only into
/// kubepods cgroups and pods.
fn visit(dir: &Path, pod: Option<&str>, depth: usize, found: &mut impl FnMut(&Path, u64, &str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        let name = e.file_name();
        let own = pod_uid(&name.to_string_lossy());
        let uid = own.as_deref().or(pod);
        if let Some(uid) = uid {
            found(&e.path(), meta.ino(), uid);
        }
        if depth + 1 < MAX_DEPTH && (uid.is_some() || name.to_string_lossy().contains("kubepods")) {
            visit(&e.path(), uid, depth + 1, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9";

    #[test]
    fn names_from_both_cgroup_drivers() {
        let systemd = format!("kubepods-burstable-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&systemd).as_deref(), Some(UID));
        assert_eq!(
            pod_uid(&format!("kubepods-pod{}.slice", UID.replace('-', "_"))).as_deref(),
            Some(UID)
        );
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        for not_a_pod in [
            "kubepods-burstable.slice",
            "cri-containerd-0f1e2d3c4b5a.scope",
            "pod1234",
            &format!("pod{UID}x"),
            "podzzzzzzzz-4b5a-6978-8695-a4b3c2d1e0f9",
        ] {
            assert_eq!(pod_uid(not_a_pod), None, "{not_a_pod}");
        }
    }

    #[test]
    fn scans_pod_cgroups_and_their_containers() {
        let root = std::env::temp_dir().join(format!("flowpol-cgroups-{}", std::process::id()));
        let pod = root
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                UID.replace('-', "_")
            ));
        let container = pod.join("cri-containerd-abc.scope");
        let other = root.join("system.slice/sshd.service");
        for d in [&container, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let found = scan(&root);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(found.get(&ino(&pod)).map(String::as_str), Some(UID));
        assert_eq!(found.get(&ino(&container)).map(String::as_str), Some(UID));
        assert_eq!(found.len(), 2, "only pod cgroups: {found:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
