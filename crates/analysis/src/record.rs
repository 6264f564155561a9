//! The flow record: the contract between capture and analysis (see docs/flow-record.md).
//!
//! Capture writes these as JSON lines; every analysis command reads them. Only `src.ip`,
//! `dst.ip`, `dst.port` and `protocol` are required on input, so records from other tools
//! (or hand-written ones) can be analysed too.
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Protocol {
    #[serde(alias = "tcp")]
    TCP,
    #[serde(alias = "udp")]
    UDP,
    #[serde(alias = "sctp")]
    SCTP,
}

impl Protocol {
    pub fn from_ipproto(p: u8) -> Option<Self> {
        match p {
            probe_common::IPPROTO_TCP => Some(Self::TCP),
            probe_common::IPPROTO_UDP => Some(Self::UDP),
            probe_common::IPPROTO_SCTP => Some(Self::SCTP),
            _ => None,
        }
    }
}

/// A protocol name that is not one of Kubernetes' (TCP, UDP, SCTP: case matters, as in the
/// API).
#[derive(Debug, thiserror::Error)]
#[error("unknown protocol `{0}` (TCP, UDP or SCTP)")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Self::TCP),
            "UDP" => Ok(Self::UDP),
            "SCTP" => Ok(Self::SCTP),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TCP => "TCP",
            Self::UDP => "UDP",
            Self::SCTP => "SCTP",
        })
    }
}

/// What happened to the flow, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// TCP handshake completed.
    Established,
    /// TCP connect() answered with RST (`ECONNREFUSED`).
    Refused,
    /// TCP connect() got no answer (timed out, unreachable, or abandoned by the caller).
    Timeout,
    /// Packets were dropped by the kernel (`drop_reason` says why).
    Dropped,
    /// UDP datagrams went out from the initiator; none came back.
    Sent,
    /// UDP datagrams arrived at the responder; none went back.
    Received,
    /// UDP datagrams went both ways.
    Answered,
}

impl Verdict {
    /// Every verdict, in the order of declaration.
    pub const ALL: [Verdict; 7] = [
        Verdict::Established,
        Verdict::Refused,
        Verdict::Timeout,
        Verdict::Dropped,
        Verdict::Sent,
        Verdict::Received,
        Verdict::Answered,
    ];
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Which end of the flow the observation was made at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The initiator's socket (TCP client, first UDP sender).
    Client,
    /// The responder's socket.
    Server,
    /// Neither socket: a packet dropped on its way (drops are seen where they happen).
    Path,
}

/// Where the probe saw the flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Observer {
    pub side: Side,
    /// Network namespace inode of the socket or device (0 when unknown).
    pub netns: u32,
    /// cgroup v2 id of the task that opened the connection, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Set when the connection was already established when the probe started: found
    /// among the node's sockets, not seen being made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
}

/// When an observation began, if not with the probe watching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// Established before the probe started.
    BeforeStart,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// Absent for a client whose port varied across the aggregated connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Who the address belonged to when the flow was seen (added by attribution).
    #[serde(flatten)]
    pub identity: Identity,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: Option<u16>) -> Self {
        Self {
            ip,
            port,
            identity: Identity::default(),
        }
    }
}

/// What an address was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Pod,
    Node,
    Service,
    External,
}

/// Attribution of an address: empty until a cluster model names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EndpointKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::cluster::Workload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `namespace/name` of the service whose address this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For a service address: the backends (address, target port, pod) that may have served
    /// the flow; exactly one when the server side was observed too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    pub protocol: Protocol,
    pub src: Endpoint,
    pub dst: Endpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Connections (TCP), datagrams from the initiator (UDP) or dropped packets.
    #[serde(default = "one")]
    pub count: u64,
    /// Datagrams from the responder (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<u64>,
    /// Why a connection failed, as the kernel's errno name (`ECONNREFUSED`, `ETIMEDOUT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<Observer>,
}

fn one() -> u64 {
    1
}

/// Widens the span `first`..`last` to cover `from`..`to` (`to` unknown: `from`); either
/// side may be unknown.
pub fn widen_span(
    first: &mut Option<DateTime<Utc>>,
    last: &mut Option<DateTime<Utc>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    *first = match (*first, from) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    *last = (*last).max(to.or(from));
}

impl FlowRecord {
    /// One occurrence of a flow, with nothing else known (no times, node or observer).
    pub fn new(protocol: Protocol, src: Endpoint, dst: Endpoint, verdict: Option<Verdict>) -> Self {
        Self {
            first_seen: None,
            last_seen: None,
            protocol,
            src,
            dst,
            verdict,
            drop_reason: None,
            count: 1,
            replies: None,
            error: None,
            node: None,
            observer: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_record_is_accepted() {
        let r: FlowRecord = serde_json::from_str(
            r#"{"protocol":"TCP","src":{"ip":"10.0.0.1"},"dst":{"ip":"fd00::2","port":443}}"#,
        )
        .expect("minimal record parses");
        assert_eq!(r.count, 1);
        assert_eq!(r.dst.port, Some(443));
        assert_eq!(r.verdict, None);
        assert!(r.dst.ip.is_ipv6());
    }

    #[test]
    fn verdicts_serialize_as_documented() {
        let names: Vec<String> = Verdict::ALL.iter().map(Verdict::to_string).collect();
        assert_eq!(
            names,
            [
                "established",
                "refused",
                "timeout",
                "dropped",
                "sent",
                "received",
                "answered"
            ]
        );
    }

    #[test]
    fn bad_protocol_is_rejected() {
        let err = serde_json::from_str::<FlowRecord>(
            r#"{"protocol":"ICMP","src":{"ip":"10.0.0.1"},"dst":{"ip":"10.0.0.2","port":1}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ICMP"), "{err}");
    }
}

/// Largest flow file read.
pub const MAX_FLOWS_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read flow records from {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("flow file {path} is {size} bytes; the limit is {MAX_FLOWS_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("{path}:{line}: not a flow record")]
    Parse {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: the record has no dst.port; analysis needs src.ip, dst.ip, dst.port and protocol")]
    NoPort { path: String, line: usize },
}

mod capture;
pub use capture::Capture;

/// A flow file's content: its records, and the account each recording in it gave of itself.
#[derive(Clone, Debug, Default)]
pub struct Flows {
    pub records: Vec<FlowRecord>,
    pub captures: Vec<Capture>,
}

impl Flows {
    /// Why flows may be missing, one line per recording that lost some.
    pub fn missing_flows(&self) -> Vec<String> {
        self.captures
            .iter()
            .filter_map(Capture::missing_flows)
            .collect()
    }
}

/// The JSON line of a recording's [`Capture`].
pub fn capture_line(capture: &Capture) -> String {
    serde_json::to_string(&capture::Line {
        capture: std::borrow::Cow::Borrowed(capture),
    })
    .expect("a capture serializes")
}

/// Reads JSON lines of flow records (blank lines are skipped), naming file and line on error.
/// The lines of recordings' [`Capture`]s are left out: [`read_flows`] keeps them.
pub fn read_json_lines(path: &std::path::Path) -> Result<Vec<FlowRecord>, ReadError> {
    read_flows(path).map(|f| f.records)
}

/// Reads a flow file: records and captures.
pub fn read_flows(path: &std::path::Path) -> Result<Flows, ReadError> {
    use std::io::BufRead;
    let shown = path.display().to_string();
    let io = |source| ReadError::Io {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FLOWS_BYTES {
        return Err(ReadError::TooLarge { path: shown, size });
    }
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out = Flows::default();
    for (i, line) in file.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with(capture::PREFIX) {
            let c: capture::Line =
                serde_json::from_str(&line).map_err(|source| ReadError::Parse {
                    path: shown.clone(),
                    line: i + 1,
                    source,
                })?;
            out.captures.push(c.capture.into_owned());
            continue;
        }
        let r: FlowRecord = serde_json::from_str(&line).map_err(|source| ReadError::Parse {
            path: shown.clone(),
            line: i + 1,
            source,
        })?;
        if r.dst.port.is_none() {
            return Err(ReadError::NoPort {
                path: shown.clone(),
                line: i + 1,
            });
        }
        out.records.push(r);
    }
    Ok(out)
}
