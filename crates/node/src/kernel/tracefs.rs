//! Tracepoint record layouts from tracefs `format` files, and where tracefs lives.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Offset and size of one tracepoint field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

/// Parses the `field:` lines of a tracefs `format` file into name -> field.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // "__u8 saddr[4]" -> "saddr"; "const void * skaddr" -> "skaddr".
        let name = decl.rsplit([' ', '*']).next().unwrap_or("");
        let name = name.split('[').next().unwrap_or("");
        if !name.is_empty() {
            out.insert(name.to_owned(), Field { offset, size });
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing) and mounting it at /sys/kernel/tracing failed")]
    NotMounted {
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel has no tracepoint {group}/{name} ({path} is missing): this kernel cannot run the probe")]
    NoTracepoint {
        group: String,
        name: String,
        path: PathBuf,
    },
    #[error("tracepoint {group}/{name} has no field `{field}` of {size} bytes in {path}")]
    BadField {
        group: String,
        name: String,
        field: String,
        size: usize,
        path: PathBuf,
    },
    #[error("the fields flowpol reads from tracepoint {group}/{name} end at byte {bytes}, beyond the {} the probe copies", probe_common::COPY_MAX)]
    RecordTooLarge {
        group: String,
        name: String,
        bytes: usize,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The tracefs mount point, mounting it when it is missing (as root we may).
#[expect(unsafe_code, reason = "mount(2) has no safe wrapper in std")]
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; a failed mount changes nothing.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// A tracepoint's fields, read from `<tracefs>/events/<group>/<name>/format`.
pub struct Tracepoint {
    pub group: String,
    pub name: String,
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl Tracepoint {
    pub fn load(root: &Path, group: &str, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("events").join(group).join(name).join("format");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TracefsError::NoTracepoint {
                    group: group.into(),
                    name: name.into(),
                    path,
                })
            }
            Err(source) => return Err(TracefsError::Read { path, source }),
        };
        Ok(Self::from_format(group, name, path, &text))
    }

    pub fn from_format(group: &str, name: &str, path: PathBuf, text: &str) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
            path,
            fields: parse_format(text),
        }
    }

    /// Bytes from the record's start to the end of the last of `fields` (all must exist).
    pub fn extent(&self, fields: &[&str]) -> Result<u16, TracefsError> {
        let mut end = 0;
        for name in fields {
            let f = self
                .fields
                .get(*name)
                .ok_or_else(|| TracefsError::BadField {
                    group: self.group.clone(),
                    name: self.name.clone(),
                    field: (*name).into(),
                    size: 0,
                    path: self.path.clone(),
                })?;
            end = end.max(f.offset + f.size);
        }
        if end > probe_common::COPY_MAX {
            return Err(TracefsError::RecordTooLarge {
                group: self.group.clone(),
                name: self.name.clone(),
                bytes: end,
            });
        }
        Ok(end as u16)
    }

    pub fn has(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }

    /// Offset of `field`, checking that it has the size the probe reads.
    pub fn offset(&self, field: &str, size: usize) -> Result<u16, TracefsError> {
        match self.fields.get(field) {
            Some(f) if f.size == size && f.offset <= u16::MAX as usize => Ok(f.offset as u16),
            _ => Err(TracefsError::BadField {
                group: self.group.clone(),
                name: self.name.clone(),
                field: field.into(),
                size,
                path: self.path.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str =
        include_str!("../../tests/fixtures/inet_sock_set_state.format");

    #[test]
    fn parses_real_format_file() {
        let tp = Tracepoint::from_format(
            "sock",
            "inet_sock_set_state",
            "x".into(),
            INET_SOCK_SET_STATE,
        );
        assert_eq!(tp.offset("skaddr", 8).unwrap(), 8);
        assert_eq!(tp.offset("newstate", 4).unwrap(), 20);
        assert_eq!(tp.offset("saddr", 4).unwrap(), 32);
        assert_eq!(tp.offset("daddr_v6", 16).unwrap(), 56);
        assert_eq!(tp.offset("common_pid", 4).unwrap(), 4);
        assert_eq!(tp.extent(&["skaddr", "daddr_v6"]).unwrap(), 72);
        assert!(tp.extent(&["skaddr", "nope"]).is_err());
    }

    #[test]
    fn a_kernel_without_the_tracepoint_is_named_in_the_error() {
        let root = std::env::temp_dir().join(format!("flowpol-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("events/skb")).unwrap();
        let err = Tracepoint::load(&root, "skb", "kfree_skb")
            .err()
            .expect("missing tracepoint is an error");
        let msg = err.to_string();
        assert!(
            msg.contains("skb/kfree_skb") && msg.contains("cannot run the probe"),
            "{msg}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn wrong_size_or_missing_field_is_an_error_naming_it() {
        let tp = Tracepoint::from_format(
            "sock",
            "inet_sock_set_state",
            "x".into(),
            INET_SOCK_SET_STATE,
        );
        let err = tp.offset("saddr", 16).unwrap_err().to_string();
        assert!(err.contains("saddr") && err.contains("16 bytes"), "{err}");
        assert!(tp.offset("nope", 4).is_err());
        assert!(!tp.has("reason"));
    }
}
