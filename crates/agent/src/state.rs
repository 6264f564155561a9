//! The agent's state directory (a hostPath in the DaemonSet): what could not be written to
//! the API server before the agent stopped is kept there ([`Spill`]) and taken back by the
//! next start on the same node. The file is written whole (temporary file, fsync, rename)
//! and removed as soon as it is read, so a later crash can never make it count twice.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use flowpol_analysis::observed::{Spill, SPILL_VERSION};

const FILE: &str = "observed-pending.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a flowpol agent state file ({cause}); move it away to start afresh")]
    Invalid { path: PathBuf, cause: String },
    #[error("{path}: kept by the agent of node {found}, this is node {node}")]
    OtherNode {
        path: PathBuf,
        found: String,
        node: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Takes the spill kept in `dir` for `node`, if any, and removes the file.
pub fn take(dir: &Path, node: &str) -> Result<Option<Spill>, StateError> {
    let path = dir.join(FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let invalid = |cause: String| StateError::Invalid {
        path: path.clone(),
        cause,
    };
    let spill: Spill = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    if spill.version != SPILL_VERSION {
        return Err(invalid(format!(
            "version {}, this build reads {SPILL_VERSION}",
            spill.version
        )));
    }
    if spill.node != node {
        return Err(StateError::OtherNode {
            path,
            found: spill.node,
            node: node.to_owned(),
        });
    }
    fs::remove_file(&path).map_err(io(&path))?;
    Ok(Some(spill))
}

/// Keeps `spill` in `dir` for the next start; returns the file written.
pub fn keep(dir: &Path, spill: &Spill) -> Result<PathBuf, StateError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_vec(spill).expect("a spill serializes");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(node: &str) -> Spill {
        Spill {
            version: SPILL_VERSION,
            node: node.into(),
            workloads: Vec::new(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowpol-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn kept_then_taken_once() {
        let d = dir("roundtrip");
        assert_eq!(take(&d, "n1").unwrap(), None, "nothing kept yet");
        let path = keep(&d, &spill("n1")).unwrap();
        assert!(path.exists());
        assert_eq!(take(&d, "n1").unwrap(), Some(spill("n1")));
        assert_eq!(take(&d, "n1").unwrap(), None, "taken once");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "no leftovers");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_bad_or_foreign_file_is_refused_and_left_in_place() {
        let d = dir("bad");
        fs::create_dir_all(&d).unwrap();
        let path = d.join(FILE);
        fs::write(&path, b"{\"version\": 1, \"node\": \"n1\"").unwrap();
        let err = take(&d, "n1").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: not a flowpol agent state file (",
                path.display()
            )),
            "{err}"
        );
        let mut s = serde_json::to_value(spill("n1")).unwrap();
        s["version"] = 2.into();
        fs::write(&path, s.to_string()).unwrap();
        let err = take(&d, "n1").unwrap_err().to_string();
        assert!(err.contains("version 2, this build reads 1"), "{err}");
        keep(&d, &spill("n2")).unwrap();
        let err = take(&d, "n1").unwrap_err().to_string();
        assert!(
            err.ends_with("kept by the agent of node n2, this is node n1"),
            "{err}"
        );
        assert!(path.exists(), "a refused file is not removed");
        fs::remove_dir_all(&d).unwrap();
    }
}
