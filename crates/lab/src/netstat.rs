//! What a host's kernel says it threw away at its listeners (`/proc/net/netstat`, per
//! network namespace). A handshake the kernel drops there leaves the two ends disagreeing
//! for a reason no probe can see: with the accept queue full, the client's final ACK is
//! discarded, the client is `established` and the server socket never is.
use std::{collections::BTreeMap, path::Path};

use super::netns::NetError;

/// A namespace's TcpExt listener counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListenCounters {
    /// `ListenOverflows`: SYNs and final ACKs dropped because the accept queue was full.
    pub overflows: u64,
    /// `ListenDrops`: every segment dropped at a listener, the overflows included.
    pub drops: u64,
}

impl ListenCounters {
    /// The counts from `earlier` to `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            overflows: self.overflows.saturating_sub(earlier.overflows),
            drops: self.drops.saturating_sub(earlier.drops),
        }
    }
}

/// Parses `/proc/net/netstat`: pairs of lines, `TcpExt: Name ...` then `TcpExt: value ...`.
pub fn parse(text: &str) -> Result<ListenCounters, String> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let Some(values) = lines.next() else {
            return Err(format!("`{names}` has no line of values after it"));
        };
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let table: BTreeMap<&str, &str> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .collect();
        let get = |name: &str| -> Result<u64, String> {
            let v = table
                .get(name)
                .ok_or_else(|| format!("TcpExt has no {name}"))?;
            v.parse()
                .map_err(|_| format!("TcpExt {name} is `{v}`, not a count"))
        };
        return Ok(ListenCounters {
            overflows: get("ListenOverflows")?,
            drops: get("ListenDrops")?,
        });
    }
    Err("no TcpExt lines".into())
}

/// Reads the counters of namespace `ns` from a thread that enters it (`/proc/thread-self/net`
/// is the calling thread's namespace).
pub fn read(ns: &str) -> Result<ListenCounters, NetError> {
    let ns = ns.to_owned();
    std::thread::scope(|s| {
        s.spawn(|| {
            flowpol_node::netns::enter(&ns)?;
            let path = Path::new("/proc/thread-self/net/netstat");
            let fail = |stderr: String| NetError::Command {
                command: format!("read {} in {ns}", path.display()),
                stderr,
            };
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            parse(&text).map_err(fail)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Command {
                command: format!("read the counters of {ns}"),
                stderr: "the thread panicked".into(),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_counters_are_found_by_name() {
        // Shortened from this kernel's file; the names' order is the kernel's business.
        let text = "TcpExt: SyncookiesSent ListenDrops EmbryonicRsts ListenOverflows\n\
                    TcpExt: 0 7 1 5\n\
                    IpExt: InNoRoutes InTruncatedPkts\n\
                    IpExt: 0 0\n";
        assert_eq!(
            parse(text),
            Ok(ListenCounters {
                overflows: 5,
                drops: 7
            })
        );
        let later = ListenCounters {
            overflows: 9,
            drops: 12,
        };
        assert_eq!(
            later.since(parse(text).unwrap()),
            ListenCounters {
                overflows: 4,
                drops: 5
            }
        );
    }

    #[test]
    fn a_file_without_the_counters_says_what_is_missing() {
        assert_eq!(
            parse("TcpExt: ListenDrops\nTcpExt: 3\n"),
            Err("TcpExt has no ListenOverflows".into())
        );
        assert_eq!(
            parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 x\n"),
            Err("TcpExt ListenDrops is `x`, not a count".into())
        );
        assert_eq!(
            parse("TcpExt: ListenOverflows\n"),
            Err("`TcpExt: ListenOverflows` has no line of values after it".into())
        );
        assert_eq!(parse("IpExt: A\nIpExt: 1\n"), Err("no TcpExt lines".into()));
    }

    #[test]
    fn this_machines_own_counters_parse() {
        let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
        parse(&text).unwrap();
    }
}
