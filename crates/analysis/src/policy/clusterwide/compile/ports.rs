//! Ports and protocols: v1alpha2 `protocols` and v1alpha1 `ports`, and the egress rule that
//! named ports exist only on pods.
use super::{count, err, exactly_one, required, Checked, Version};
use crate::{
    policy::clusterwide::{api, ClusterPeer, ProtocolMatch},
    record::Protocol,
    validation::{FieldError, Problem},
};

/// A required port number, checked.
fn required_port(n: Option<i64>, field: &str) -> Checked<u16> {
    port_number(*required(n.as_ref(), field)?, field)
}

fn port_number(n: i64, field: &str) -> Checked<u16> {
    if !(1..=65535).contains(&n) {
        return err(
            field,
            Problem::OutOfRange {
                value: n,
                min: 1,
                max: 65535,
            },
        );
    }
    Ok(n as u16)
}

pub(super) fn cnp_protocols(
    list: Option<&[api::CnpProtocol]>,
    field: &str,
) -> Checked<Vec<ProtocolMatch>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    count(field, list.len(), 25)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        exactly_one(
            &field,
            &["tcp", "udp", "sctp", "destinationNamedPort"],
            &[
                p.tcp.is_some(),
                p.udp.is_some(),
                p.sctp.is_some(),
                p.destination_named_port.is_some(),
            ],
        )?;
        let (protocol, pp, key) = match (&p.tcp, &p.udp, &p.sctp, &p.destination_named_port) {
            (Some(pp), ..) => (Protocol::TCP, pp, "tcp"),
            (_, Some(pp), ..) => (Protocol::UDP, pp, "udp"),
            (_, _, Some(pp), _) => (Protocol::SCTP, pp, "sctp"),
            (.., Some(name)) => {
                out.push(ProtocolMatch::Named(name.clone()));
                continue;
            }
            _ => unreachable!("exactly_one checked"),
        };
        // minProperties 1: `tcp: {}` is refused; destinationPort is its only field.
        let field = format!("{field}.{key}.destinationPort");
        let port = required(pp.destination_port.as_ref(), &field)?;
        exactly_one(
            &field,
            &["number", "range"],
            &[port.number.is_some(), port.range.is_some()],
        )?;
        let (start, end) = match (&port.number, &port.range) {
            (Some(n), _) => {
                let n = port_number(*n, &format!("{field}.number"))?;
                (n, n)
            }
            (None, Some(r)) => {
                let f = format!("{field}.range");
                let start = required_port(r.start, &format!("{f}.start"))?;
                let end = required_port(r.end, &format!("{f}.end"))?;
                if start >= end {
                    return err(f, Problem::StartNotBelowEnd { start, end });
                }
                (start, end)
            }
            (None, None) => unreachable!("exactly_one checked"),
        };
        out.push(ProtocolMatch::Ports {
            protocol,
            start,
            end,
        });
    }
    Ok(out)
}

fn anp_protocol(p: Option<&str>, field: &str) -> Checked<Protocol> {
    p.unwrap_or("TCP")
        .parse()
        .map_err(|e: crate::record::UnknownProtocol| FieldError::new(field, e.into()))
}

pub(super) fn anp_ports(
    list: Option<&[api::AnpPort]>,
    field: &str,
    v: Version,
) -> Checked<Vec<ProtocolMatch>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    count(field, list.len(), v.max_items)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        exactly_one(
            &field,
            &["portNumber", "namedPort", "portRange"],
            &[
                p.port_number.is_some(),
                p.named_port.is_some(),
                p.port_range.is_some(),
            ],
        )?;
        out.push(match (&p.port_number, &p.named_port, &p.port_range) {
            (Some(n), ..) => {
                let f = format!("{field}.portNumber");
                let protocol = anp_protocol(n.protocol.as_deref(), &format!("{f}.protocol"))?;
                let port = required_port(n.port, &format!("{f}.port"))?;
                ProtocolMatch::Ports {
                    protocol,
                    start: port,
                    end: port,
                }
            }
            (_, Some(name), _) => ProtocolMatch::Named(name.clone()),
            (.., Some(r)) => {
                let f = format!("{field}.portRange");
                let protocol = anp_protocol(r.protocol.as_deref(), &format!("{f}.protocol"))?;
                let start = required_port(r.start, &format!("{f}.start"))?;
                let end = required_port(r.end, &format!("{f}.end"))?;
                // v1alpha1 has no CEL for it, but a range that ends before it starts is
                // nothing an implementation can match.
                if start > end {
                    return err(f, Problem::StartNotBelowEnd { start, end });
                }
                ProtocolMatch::Ports {
                    protocol,
                    start,
                    end,
                }
            }
            _ => unreachable!("exactly_one checked"),
        });
    }
    Ok(out)
}

/// The experimental channel's egress CEL rule: named ports exist only on pods.
pub(super) fn egress_named_ports(
    protocols: Vec<ProtocolMatch>,
    peers: &[ClusterPeer],
    field: &str,
) -> Checked<Vec<ProtocolMatch>> {
    let non_pod = peers.iter().any(|p| {
        matches!(
            p,
            ClusterPeer::Nodes(_) | ClusterPeer::Networks(_) | ClusterPeer::DomainNames(_)
        )
    });
    if non_pod
        && protocols
            .iter()
            .any(|p| matches!(p, ProtocolMatch::Named(_)))
    {
        return err(field, Problem::NamedPortWithNonPodPeer);
    }
    Ok(protocols)
}
