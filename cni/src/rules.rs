//! The egress lock as data: which packets a locked pod's network namespace lets through. Pure; the
//! netlink encoding is in [`crate::nft`].
//!
//! Everything a rule here does not accept is dropped by the chains' policy after the last rule counted it.

use std::fmt;

/// What the webhook's policy says about one pod: the proxy's UID and the ports that admit inbound connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub proxy_uid: u32,
    pub inbound_ports: Vec<u16>,
}

/// The nftables table the lock lives in (family `inet`: IPv4 and IPv6 in one).
pub const TABLE: &str = "tollgate";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Packets the pod sends (hook `output`).
    Output,
    /// Packets addressed to the pod (hook `input`).
    Input,
}

impl Chain {
    pub const ALL: [Chain; 2] = [Chain::Output, Chain::Input];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Output => "output",
            Chain::Input => "input",
        }
    }

    pub fn from_name(name: &str) -> Option<Chain> {
        Chain::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// One condition of a rule; a rule matches when all of its conditions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The packet leaves through (output) or arrived on (input) the loopback interface, which is always
    /// interface 1 in a network namespace.
    Loopback,
    /// The sending socket was opened by this UID.
    SocketUid(u32),
    /// The packet belongs to the reply direction of a tracked connection: a connection someone outside
    /// opened to us, which `input` admits only on the proxy's ports.
    ReplyDirection,
    /// Established or related (ICMP errors) to a tracked connection.
    EstablishedOrRelated,
    TcpDestinationPort(u16),
    /// ICMPv6 of this type (neighbour discovery, which IPv6 needs to reach anything at all).
    Icmpv6Type(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    /// A counter on the rule (the final drop rules: what the lock stopped, for diagnostics).
    pub counter: bool,
    pub verdict: Verdict,
    /// Stored with the rule in the kernel (nft shows it as the rule's comment); CHECK compares them.
    pub tag: String,
}

const ROUTER_SOLICIT: u8 = 133;
const ROUTER_ADVERT: u8 = 134;
const NEIGHBOUR_SOLICIT: u8 = 135;
const NEIGHBOUR_ADVERT: u8 = 136;

/// The rules of the lock, in order, both chains.
pub fn ruleset(lock: &Lock) -> Vec<Rule> {
    let rule = |chain, matches: Vec<Match>, tag: String| Rule { chain, matches, counter: false, verdict: Verdict::Accept, tag };
    let mut rules = vec![
        rule(Chain::Output, vec![Match::Loopback], "tollgate: loopback".into()),
        rule(Chain::Output, vec![Match::ReplyDirection], "tollgate: replies to admitted connections".into()),
        rule(Chain::Output, vec![Match::SocketUid(lock.proxy_uid)], format!("tollgate: the proxy (uid {})", lock.proxy_uid)),
    ];
    for kind in [ROUTER_SOLICIT, NEIGHBOUR_SOLICIT, NEIGHBOUR_ADVERT] {
        rules.push(rule(Chain::Output, vec![Match::Icmpv6Type(kind)], format!("tollgate: neighbour discovery ({kind})")));
    }
    rules.push(drop_rule(Chain::Output));
    rules.push(rule(Chain::Input, vec![Match::Loopback], "tollgate: loopback".into()));
    rules.push(rule(Chain::Input, vec![Match::EstablishedOrRelated], "tollgate: established".into()));
    for &port in &lock.inbound_ports {
        rules.push(rule(Chain::Input, vec![Match::TcpDestinationPort(port)], format!("tollgate: proxy port {port}")));
    }
    for kind in [ROUTER_ADVERT, NEIGHBOUR_SOLICIT, NEIGHBOUR_ADVERT] {
        rules.push(rule(Chain::Input, vec![Match::Icmpv6Type(kind)], format!("tollgate: neighbour discovery ({kind})")));
    }
    rules.push(drop_rule(Chain::Input));
    rules
}

fn drop_rule(chain: Chain) -> Rule {
    Rule { chain, matches: vec![], counter: true, verdict: Verdict::Drop, tag: format!("tollgate: dropped ({})", chain.name()) }
}

/// The tag of the rule that counts what a chain dropped.
pub fn drop_tag(chain: Chain) -> String {
    drop_rule(chain).tag
}

/// nft syntax, for logs and documentation (`nft list table inet tollgate` prints the same rules).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = if self.chain == Chain::Output { "oif" } else { "iif" };
        let mut parts: Vec<String> = self
            .matches
            .iter()
            .map(|m| match *m {
                Match::Loopback => format!("meta {direction} \"lo\""),
                Match::SocketUid(uid) => format!("meta skuid {uid}"),
                Match::ReplyDirection => "ct direction reply".into(),
                Match::EstablishedOrRelated => "ct state established,related".into(),
                Match::TcpDestinationPort(port) => format!("tcp dport {port}"),
                Match::Icmpv6Type(kind) => format!("icmpv6 type {kind}"),
            })
            .collect();
        if self.counter {
            parts.push("counter".into());
        }
        parts.push(match self.verdict {
            Verdict::Accept => "accept".into(),
            Verdict::Drop => "drop".into(),
        });
        write!(f, "{} comment \"{}\"", parts.join(" "), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_proxy_and_loopback_leave_and_only_the_proxy_ports_admit() {
        let rules = ruleset(&Lock { proxy_uid: 10001, inbound_ports: vec![15006, 15021] });
        let text: Vec<String> = rules.iter().map(|r| format!("{} {r}", r.chain.name())).collect();
        let accepted_out: Vec<&String> = text.iter().filter(|t| t.starts_with("output") && t.contains(" accept ")).collect();
        assert!(accepted_out.iter().any(|t| t.contains("meta skuid 10001 accept")));
        assert!(accepted_out.iter().all(|t| !t.contains("tcp") && !t.contains("udp")), "{accepted_out:?}");
        let accepted_in: Vec<&String> = text.iter().filter(|t| t.starts_with("input") && t.contains("dport")).collect();
        assert_eq!(accepted_in.len(), 2);
        for chain in Chain::ALL {
            let last = rules.iter().rfind(|r| r.chain == chain).unwrap();
            assert_eq!((last.verdict, last.counter, last.matches.len()), (Verdict::Drop, true, 0));
        }
        let mut tags: Vec<(Chain, &str)> = rules.iter().map(|r| (r.chain, r.tag.as_str())).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), rules.len(), "tags identify rules within a chain");
    }
}
