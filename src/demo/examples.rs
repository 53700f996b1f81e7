//! The demo's clusters: the repository's examples, embedded in the binary, with their host addresses
//! moved onto loopback so each simulated Talos node can listen at its own IP without root.
//!
//! Decision: a careful text substitution guided by the parsed document, not a re-serialisation. The
//! examples are what a user reads first, and their comments explain them; re-emitting the parsed YAML
//! would drop the comments. So the document is parsed (the same types `kiln::spec` uses) to learn
//! which addresses are *host* addresses — node IPs, VIP, gateway, nameservers, both ends of
//! `lbRange` —, each is mapped onto 127.0.0.0/8, and exactly those literals are replaced in the text.
//! Pod and service CIDRs stay as written: they are networks inside the cluster that nothing on the
//! host dials, and moving them onto loopback would make them look like something they are not.
//!
//! The mapping keeps the last octets so an address stays recognisable: `192.168.c.d → 127.0.c.d`
//! (the examples' LAN), any other `a.b.c.d → 127.b.c.d` (`1.1.1.1 → 127.1.1.1`), and addresses
//! already on loopback stay. Two addresses landing on the same loopback address are refused, never
//! merged.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::spec::ClusterDocument;

/// The example clusters as `(name, file text)`, exactly as in `examples/clusters/`.
pub const EXAMPLES: [(&str, &str); 2] = [
    (
        "production",
        include_str!("../../examples/clusters/production.yaml"),
    ),
    (
        "staging",
        include_str!("../../examples/clusters/staging.yaml"),
    ),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoopbackError {
    #[error("not a cluster document: {0}")]
    Parse(String),
    #[error("{0} is an IPv6 address; the demo moves only IPv4 host addresses onto loopback")]
    Ipv6(IpAddr),
    #[error("{a} and {b} would both become {to}")]
    Collision {
        a: Ipv4Addr,
        b: Ipv4Addr,
        to: Ipv4Addr,
    },
    #[error("{0} is still outside 127.0.0.0/8 after the rewrite")]
    Remains(Ipv4Addr),
}

/// Where the demo puts a host address.
pub fn to_loopback(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    match (a, b) {
        (127, _) => ip,
        (192, 168) => Ipv4Addr::new(127, 0, c, d),
        _ => Ipv4Addr::new(127, b, c, d),
    }
}

/// Every host address a cluster document names: what kiln or its nodes dial, bind or hand out.
pub fn host_addresses(doc: &ClusterDocument) -> Result<Vec<Ipv4Addr>, LoopbackError> {
    let spec = &doc.spec;
    let net = &spec.network;
    let mut out = vec![net.vip, net.gateway];
    for ns in &net.nameservers {
        match ns {
            IpAddr::V4(v4) => out.push(*v4),
            IpAddr::V6(v6) if v6.is_loopback() => {}
            IpAddr::V6(_) => return Err(LoopbackError::Ipv6(*ns)),
        }
    }
    if let Some(range) = &net.lb_range {
        out.extend([range.first, range.last]);
    }
    let groups = std::iter::once(&spec.control_plane).chain(spec.workers.as_ref());
    out.extend(groups.flat_map(|g| g.nodes.iter().map(|n| n.ip)));
    Ok(out)
}

/// The document with its host addresses on loopback; comments, order and everything else untouched.
pub fn loopback_document(text: &str) -> Result<String, LoopbackError> {
    let doc: ClusterDocument =
        serde_yaml::from_str(text).map_err(|e| LoopbackError::Parse(e.to_string()))?;
    let mut map: BTreeMap<Ipv4Addr, Ipv4Addr> = BTreeMap::new();
    let mut taken: BTreeMap<Ipv4Addr, Ipv4Addr> = BTreeMap::new();
    for ip in host_addresses(&doc)? {
        let to = to_loopback(ip);
        if let Some(&other) = taken.get(&to)
            && other != ip
        {
            return Err(LoopbackError::Collision {
                a: other,
                b: ip,
                to,
            });
        }
        taken.insert(to, ip);
        map.insert(ip, to);
    }
    let out = replace_literals(text, &map);
    // The rewrite is checked, not trusted: every host address of the result is on loopback.
    let redone: ClusterDocument =
        serde_yaml::from_str(&out).map_err(|e| LoopbackError::Parse(e.to_string()))?;
    if let Some(ip) = host_addresses(&redone)?
        .into_iter()
        .find(|ip| !ip.is_loopback())
    {
        return Err(LoopbackError::Remains(ip));
    }
    Ok(out)
}

/// Replaces each dotted-quad literal that is a key of `map`, and only whole literals: `192.168.2.16`
/// never matches inside `192.168.2.160`, nor `1.2.3.4` inside a version such as `v1.2.3.4.5`.
fn replace_literals(text: &str, map: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> String {
    let bytes = text.as_bytes();
    let is_part = |b: u8| b.is_ascii_digit() || b == b'.';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let starts_token = bytes[i].is_ascii_digit() && (i == 0 || !is_part(bytes[i - 1]));
        if starts_token {
            let end = (i..bytes.len())
                .find(|&j| !is_part(bytes[j]))
                .unwrap_or(bytes.len());
            let token = &text[i..end];
            match token.parse::<Ipv4Addr>().ok().and_then(|ip| map.get(&ip)) {
                Some(to) => out.push_str(&to.to_string()),
                None => out.push_str(token),
            }
            i = end;
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The demo clusters as `(name, text)`, with a note saying what changed.
pub fn demo_clusters() -> Result<Vec<(&'static str, String)>, (&'static str, LoopbackError)> {
    EXAMPLES
        .iter()
        .map(|(name, text)| {
            let moved = loopback_document(text).map_err(|e| (*name, e))?;
            Ok((*name, annotate(&moved)))
        })
        .collect()
}

const NOTE: &str = "# kiln demo: kiln's example with its host addresses moved onto loopback (192.168.c.d → \
                    127.0.c.d), where the\n# simulated Talos nodes listen. Edit it, commit and push: kiln \
                    reconciles the change.\n";

/// The note goes after a leading `yaml-language-server` modeline, which editors expect first.
fn annotate(text: &str) -> String {
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("# yaml-language-server") => {
            format!("{first}\n{NOTE}{rest}")
        }
        _ => format!("{NOTE}{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn addresses_map_onto_loopback_keeping_their_last_octets() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(to_loopback(ip("192.168.2.161")), ip("127.0.2.161"));
        assert_eq!(to_loopback(ip("1.1.1.1")), ip("127.1.1.1"));
        assert_eq!(to_loopback(ip("127.0.44.1")), ip("127.0.44.1"));
        assert_eq!(to_loopback(ip("10.20.30.40")), ip("127.20.30.40"));
    }

    #[test]
    fn only_whole_literals_of_the_map_are_replaced() {
        let map: BTreeMap<Ipv4Addr, Ipv4Addr> = [(
            "192.168.2.16".parse().unwrap(),
            "127.0.2.16".parse().unwrap(),
        )]
        .into();
        let text =
            "a: 192.168.2.16\nb: 192.168.2.160\nc: v192.168.2.16.1\nd: [192.168.2.16]\né: 1\n";
        assert_eq!(
            replace_literals(text, &map),
            "a: 127.0.2.16\nb: 192.168.2.160\nc: v192.168.2.16.1\nd: [127.0.2.16]\né: 1\n"
        );
    }

    /// The demo clusters are valid intent files (every rule of `kiln::spec::load`, cross-file ones
    /// included) and name no host address outside 127.0.0.0/8; comments and CIDRs survive.
    #[test]
    fn demo_clusters_load_cleanly_and_live_on_loopback() {
        let clusters = demo_clusters().expect("examples rewrite");
        assert_eq!(
            clusters.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["production", "staging"]
        );
        let paths: Vec<PathBuf> = clusters
            .iter()
            .map(|(n, _)| PathBuf::from(format!("clusters/{n}.yaml")))
            .collect();
        let outcome = crate::spec::load(
            paths
                .iter()
                .zip(&clusters)
                .map(|(p, (_, text))| (p.as_path(), text.as_str())),
        );
        let errors: Vec<String> = outcome.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(outcome.clusters.len(), 2);
        for cluster in &outcome.clusters {
            let net = &cluster.spec.network;
            assert!(net.vip.is_loopback() && net.gateway.is_loopback());
            assert!(net.nameservers.iter().all(IpAddr::is_loopback));
            let range = net.lb_range.as_ref().expect("both examples have a pool");
            assert!(range.first.is_loopback() && range.last.is_loopback());
            assert!(cluster.nodes.iter().all(|n| n.ip.is_loopback()));
            assert!(!net.pod_cidr.addr().is_loopback(), "pod CIDR stays");
        }
        let (_, production) = &clusters[0];
        assert!(production.starts_with("# yaml-language-server"));
        assert!(production.contains("# The established pattern"));
        assert!(production.contains("vip: 127.0.2.160"));
        assert!(production.contains("lbRange: 127.0.2.200-127.0.2.220"));
        assert!(production.contains("podCIDR: 10.244.0.0/16"));
        assert!(
            clusters[1]
                .1
                .contains("nameservers: [127.0.2.1, 127.1.1.1]")
        );
        // No address of the original LAN is left outside comments (the demo's note names the mapping).
        assert!(
            clusters
                .iter()
                .flat_map(|(_, t)| t.lines())
                .all(|l| l.trim_start().starts_with('#') || !l.contains("192.168."))
        );
    }

    #[test]
    fn a_collision_is_refused() {
        let (_, text) = EXAMPLES[1];
        let clash = text.replacen("gateway: 192.168.2.1", "gateway: 10.0.2.171", 1);
        assert!(matches!(
            loopback_document(&clash),
            Err(LoopbackError::Collision { .. })
        ));
    }
}
