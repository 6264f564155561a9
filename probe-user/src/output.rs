//! Writing results: JSON lines, to stdout or atomically to a file.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::record::FlowRecord;

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

pub fn write_json_lines(mut w: impl Write, records: &[FlowRecord]) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Writes records to `path` (or stdout for `None`). A file is written beside the target and
/// renamed into place, so readers never see half a file.
pub fn emit_records(path: Option<&Path>, records: &[FlowRecord]) -> Result<(), OutputError> {
    match path {
        None => write_json_lines(std::io::stdout().lock(), records).map_err(OutputError::Stdout),
        Some(path) => write_atomic(path, |f| {
            write_json_lines(std::io::BufWriter::new(f), records)
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

/// Rows as aligned columns (two spaces apart, no trailing blanks), one line each.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
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
}
