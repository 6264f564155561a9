//! Writing results: JSON lines, to stdout, atomically to a file, or to a rotated file.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::record::{capture_line, Capture, FlowRecord};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
}

/// Records as JSON lines, then the captures' lines (a recording's account of itself).
pub fn write_json_lines(
    mut w: impl Write,
    records: &[FlowRecord],
    captures: &[Capture],
) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    for c in captures {
        w.write_all(capture_line(c).as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Writes records and captures to `path` (or stdout for `None`). A file is written beside
/// the target and renamed into place, so readers never see half a file.
pub fn emit_records(
    path: Option<&Path>,
    records: &[FlowRecord],
    captures: &[Capture],
) -> Result<(), OutputError> {
    match path {
        None => write_json_lines(std::io::stdout().lock(), records, captures)
            .map_err(OutputError::Stdout),
        Some(path) => write_atomic(path, |f| {
            write_json_lines(std::io::BufWriter::new(f), records, captures)
        }),
    }
}

pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let err = |source| OutputError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.flowpol-tmp"));
    let result = std::fs::File::create(&tmp).and_then(|f| {
        write(&f)?;
        f.sync_all()
    });
    if let Err(e) = result.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// JSON lines appended to a file that is rotated by size, as log shippers expect: when the
/// file would pass `max_bytes`, it becomes `<file>.1` (`.1` becomes `.2`, ... up to `keep`
/// files; the oldest goes). Lines are never split across files.
pub struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl Rotating {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> Result<Self, OutputError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| OutputError::Write {
                path: path.to_owned(),
                source,
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep,
            file: std::io::BufWriter::new(file),
            size,
        })
    }

    /// Appends the records, one line each, and flushes.
    pub fn write(&mut self, records: &[FlowRecord]) -> Result<(), OutputError> {
        self.write_lines(
            records
                .iter()
                .map(|r| serde_json::to_vec(r).expect("a flow record serializes")),
        )
    }

    /// Appends a capture's line (what the recording lost since the last one).
    pub fn write_capture(&mut self, capture: &Capture) -> Result<(), OutputError> {
        self.write_lines(std::iter::once(capture_line(capture).into_bytes()))
    }

    fn write_lines(&mut self, lines: impl Iterator<Item = Vec<u8>>) -> Result<(), OutputError> {
        let path = self.path.clone();
        let err = |source| OutputError::Write { path, source };
        for mut line in lines {
            line.push(b'\n');
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate().map_err(err.clone())?;
            }
            self.file.write_all(&line).map_err(err.clone())?;
            self.size += line.len() as u64;
        }
        self.file.flush().map_err(err)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

/// Where repetition `i` of `of` writes: `path` itself when there is one, else `path` with
/// `.i` before its extension (`flows.jsonl` -> `flows.2.jsonl`).
pub fn repetition(path: &Path, i: u32, of: u32) -> PathBuf {
    if of <= 1 {
        return path.to_owned();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{i}"),
    };
    path.with_file_name(name)
}

/// What a real enforcer's run measured, written beside that run's records
/// ([`enforced_beside`]) so that `flowpol compare` can show each enforcer's time to enforce.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcedFacts {
    pub enforcer: String,
    /// From its start until it let traffic through, before any policy existed.
    pub ready_seconds: f64,
    /// From the policies' creation until a canary showed them enforced; absent when they
    /// deny nothing a canary can try.
    pub propagation_seconds: Option<f64>,
}

/// `records.enforced.json` for the records file `records`.
pub fn enforced_beside(records: &Path) -> PathBuf {
    let mut name = records.as_os_str().to_owned();
    name.push(".enforced.json");
    PathBuf::from(name)
}

/// Writes `facts` beside the records file `records`, atomically.
pub fn write_enforced(records: &Path, facts: &EnforcedFacts) -> Result<(), OutputError> {
    write_atomic(&enforced_beside(records), |f| {
        serde_json::to_writer_pretty(f, facts).map_err(std::io::Error::other)
    })
}

/// Rows as aligned columns (two spaces apart, no trailing blanks), one line each.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    columns_of(rows)
}

/// [`columns`] for rows of any length (a table whose columns are runs, say).
pub fn columns_of<R: AsRef<[String]>>(rows: &[R]) -> String {
    let n = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref().get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_get_their_number_before_the_extension() {
        let p = Path::new("out/flows.jsonl");
        assert_eq!(repetition(p, 1, 1), p);
        assert_eq!(repetition(p, 2, 3), Path::new("out/flows.2.jsonl"));
        assert_eq!(repetition(Path::new("flows"), 3, 3), Path::new("flows.3"));
    }

    #[test]
    fn atomic_write_leaves_old_file_on_failure() {
        let dir = std::env::temp_dir().join(format!("flowpol-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let failed = write_atomic(&path, |_| Err(std::io::Error::other("disk full")));
        assert!(failed.unwrap_err().to_string().contains("records.jsonl"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary file left behind"
        );
        write_atomic(&path, |mut f| f.write_all(b"new\n")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use crate::record::{Endpoint, Protocol, Verdict};

    #[test]
    fn rotation_keeps_whole_lines_and_at_most_keep_old_files() {
        let dir = std::env::temp_dir().join(format!("flowpol-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let r = FlowRecord::new(
            Protocol::TCP,
            Endpoint::new("10.0.0.1".parse().unwrap(), None),
            Endpoint::new("10.0.0.2".parse().unwrap(), Some(80)),
            Some(Verdict::Established),
        );
        let line = serde_json::to_vec(&r).unwrap().len() as u64 + 1;
        // Room for two lines per file; seven lines -> files of 2, 2, 2 (one dropped) and 1.
        let mut out = Rotating::open(&path, 2 * line, 2).unwrap();
        for _ in 0..7 {
            out.write(std::slice::from_ref(&r)).unwrap();
        }
        let lines = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap();
            for l in text.lines() {
                serde_json::from_str::<FlowRecord>(l).expect("whole lines only");
            }
            text.lines().count()
        };
        assert_eq!(lines(&path), 1);
        assert_eq!(lines(&dir.join("flows.jsonl.1")), 2);
        assert_eq!(lines(&dir.join("flows.jsonl.2")), 2);
        assert!(!dir.join("flows.jsonl.3").exists(), "keep = 2");
        // Reopened, it appends after what is there.
        drop(out);
        let mut out = Rotating::open(&path, 2 * line, 2).unwrap();
        out.write(std::slice::from_ref(&r)).unwrap();
        assert_eq!(lines(&path), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
