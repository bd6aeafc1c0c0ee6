//! The lock in the kernel: nf_tables over netlink, in whatever network namespace the process is in.
//!
//! Hand-written on purpose: the handful of messages the lock needs (one table, two base chains, a dozen rules
//! of meta/ct/payload/cmp/counter/immediate expressions, a rule dump) fit in this file, and the plugin stays
//! one static-enough binary with no dependency on the node's `nft`/`iptables` or on libnftnl. The maintained
//! Rust nftables crates are either GPL (rustables, tollgate is Apache-2.0) or a general netlink toolkit two
//! orders of magnitude larger than what is used. Attribute layouts follow `linux/netfilter/nf_tables.h`.
//!
//! Every change is one nfnetlink batch, which the kernel applies atomically or not at all.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeVal;

use crate::rules::{Chain, Lock, Match, Rule, TABLE, Verdict, ruleset};

// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV6: u8 = 10;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_OIF: u32 = 5;
const NFT_META_IIF: u32 = 4;
const NFT_META_SKUID: u32 = 10;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const CT_STATE_ESTABLISHED: u32 = 1 << 1;
const CT_STATE_RELATED: u32 = 1 << 2;
const CT_DIRECTION_REPLY: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const LOOPBACK_IFINDEX: u32 = 1;
/// libnftnl's userdata TLV for a rule comment, so that `nft list` shows the tag as `comment "…"`.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel refused {what}: {source}")]
    Refused { what: String, source: io::Error },
    #[error("no answer from nf_tables within {0:?}")]
    Timeout(Duration),
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
}

impl NftError {
    /// The table (or the whole nf_tables state of the namespace) is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NftError::Refused { source, .. } if source.raw_os_error() == Some(libc_enoent()))
    }
}

const fn libc_enoent() -> i32 {
    2
}

// ---- encoding ---------------------------------------------------------------------------------------------

/// A netlink message buffer with nested attributes.
struct Writer {
    buf: Vec<u8>,
    seq: u32,
    /// (seq, what) of every message that asked for an ACK, to name a refusal.
    acked: Vec<(u32, String)>,
}

impl Writer {
    fn new(first_seq: u32) -> Writer {
        Writer { buf: Vec::with_capacity(4096), seq: first_seq, acked: Vec::new() }
    }

    /// Starts a message; returns where its header is, for [`Writer::end`].
    fn begin(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by end()
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.extend_from_slice(&[family, 0]); // nfgenmsg: family, NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end(&mut self, start: usize, what: Option<String>) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        if let Some(what) = what {
            self.acked.push((self.seq, what));
        }
        self.seq += 1;
    }

    fn nft_message(&mut self, msg: u16, flags: u16, family: u8) -> usize {
        self.begin((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags, family, 0)
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        self.buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn attr_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn attr_be32(&mut self, kind: u16, value: u32) {
        self.attr(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Writer)) {
        self.nest(NFTA_LIST_ELEM, |w| {
            w.attr_str(NFTA_EXPR_NAME, name);
            w.nest(NFTA_EXPR_DATA, data);
        });
    }

    fn load_meta(&mut self, key: u32) {
        self.expr("meta", |w| {
            w.attr_be32(NFTA_META_DREG, NFT_REG_1);
            w.attr_be32(NFTA_META_KEY, key);
        });
    }

    fn load_ct(&mut self, key: u32) {
        self.expr("ct", |w| {
            w.attr_be32(NFTA_CT_DREG, NFT_REG_1);
            w.attr_be32(NFTA_CT_KEY, key);
        });
    }

    fn load_transport(&mut self, offset: u32, len: u32) {
        self.expr("payload", |w| {
            w.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.attr_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
            w.attr_be32(NFTA_PAYLOAD_OFFSET, offset);
            w.attr_be32(NFTA_PAYLOAD_LEN, len);
        });
    }

    fn compare(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |w| {
            w.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
            w.attr_be32(NFTA_CMP_OP, op);
            w.nest(NFTA_CMP_DATA, |w| w.attr(NFTA_DATA_VALUE, value));
        });
    }

    fn mask(&mut self, mask: &[u8]) {
        let zero = vec![0u8; mask.len()];
        self.expr("bitwise", |w| {
            w.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.attr_be32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.attr_be32(NFTA_BITWISE_LEN, mask.len() as u32);
            w.nest(NFTA_BITWISE_MASK, |w| w.attr(NFTA_DATA_VALUE, mask));
            w.nest(NFTA_BITWISE_XOR, |w| w.attr(NFTA_DATA_VALUE, &zero));
        });
    }

    fn condition(&mut self, chain: Chain, m: Match) {
        match m {
            Match::Loopback => {
                self.load_meta(if chain == Chain::Output { NFT_META_OIF } else { NFT_META_IIF });
                self.compare(NFT_CMP_EQ, &LOOPBACK_IFINDEX.to_ne_bytes());
            }
            Match::SocketUid(uid) => {
                self.load_meta(NFT_META_SKUID);
                self.compare(NFT_CMP_EQ, &uid.to_ne_bytes());
            }
            Match::ReplyDirection => {
                self.load_ct(NFT_CT_DIRECTION);
                self.compare(NFT_CMP_EQ, &[CT_DIRECTION_REPLY]);
            }
            Match::EstablishedOrRelated => {
                self.load_ct(NFT_CT_STATE);
                self.mask(&(CT_STATE_ESTABLISHED | CT_STATE_RELATED).to_ne_bytes());
                self.compare(NFT_CMP_NEQ, &0u32.to_ne_bytes());
            }
            Match::TcpDestinationPort(port) => {
                self.load_meta(NFT_META_L4PROTO);
                self.compare(NFT_CMP_EQ, &[IPPROTO_TCP]);
                self.load_transport(2, 2);
                self.compare(NFT_CMP_EQ, &port.to_be_bytes());
            }
            Match::Icmpv6Type(kind) => {
                self.load_meta(NFT_META_NFPROTO);
                self.compare(NFT_CMP_EQ, &[NFPROTO_IPV6]);
                self.load_meta(NFT_META_L4PROTO);
                self.compare(NFT_CMP_EQ, &[IPPROTO_ICMPV6]);
                self.load_transport(0, 1);
                self.compare(NFT_CMP_EQ, &[kind]);
            }
        }
    }

    fn rule(&mut self, rule: &Rule) {
        let start = self.nft_message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, NFPROTO_INET);
        self.attr_str(NFTA_RULE_TABLE, TABLE);
        self.attr_str(NFTA_RULE_CHAIN, rule.chain.name());
        self.nest(NFTA_RULE_EXPRESSIONS, |w| {
            for &m in &rule.matches {
                w.condition(rule.chain, m);
            }
            if rule.counter {
                w.expr("counter", |w| {
                    w.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                    w.attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
                });
            }
            let code = match rule.verdict {
                Verdict::Accept => NF_ACCEPT,
                Verdict::Drop => NF_DROP,
            };
            w.expr("immediate", |w| {
                w.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                w.nest(NFTA_IMMEDIATE_DATA, |w| w.nest(NFTA_DATA_VERDICT, |w| w.attr_be32(NFTA_VERDICT_CODE, code)));
            });
        });
        self.attr(NFTA_RULE_USERDATA, &comment(&rule.tag));
        self.end(start, Some(format!("{} rule \"{}\"", rule.chain.name(), rule.tag)));
    }

    fn table(&mut self, msg: u16, flags: u16) {
        let start = self.nft_message(msg, flags | NLM_F_ACK, NFPROTO_INET);
        self.attr_str(NFTA_TABLE_NAME, TABLE);
        let verb = if msg == NFT_MSG_DELTABLE { "deleting" } else { "creating" };
        self.end(start, Some(format!("{verb} table inet {TABLE}")));
    }

    fn base_chain(&mut self, chain: Chain) {
        let start = self.nft_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, NFPROTO_INET);
        self.attr_str(NFTA_CHAIN_TABLE, TABLE);
        self.attr_str(NFTA_CHAIN_NAME, chain.name());
        let hook = if chain == Chain::Output { NF_INET_LOCAL_OUT } else { NF_INET_LOCAL_IN };
        self.nest(NFTA_CHAIN_HOOK, |w| {
            w.attr_be32(NFTA_HOOK_HOOKNUM, hook);
            w.attr_be32(NFTA_HOOK_PRIORITY, 0);
        });
        self.attr_be32(NFTA_CHAIN_POLICY, NF_DROP);
        self.attr_str(NFTA_CHAIN_TYPE, "filter");
        self.end(start, Some(format!("chain {}", chain.name())));
    }

    fn batch(&mut self, body: impl FnOnce(&mut Writer)) {
        let start = self.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.end(start, None);
        body(self);
        let start = self.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.end(start, None);
    }
}

fn comment(tag: &str) -> Vec<u8> {
    let mut value = tag.as_bytes()[..tag.len().min(250)].to_vec();
    value.push(0);
    let mut tlv = vec![NFTNL_UDATA_RULE_COMMENT, value.len() as u8];
    tlv.extend_from_slice(&value);
    tlv
}

fn comment_text(userdata: &[u8]) -> Option<String> {
    let (&[kind, len], rest) = userdata.split_first_chunk::<2>()?;
    let value = rest.get(..len as usize)?;
    (kind == NFTNL_UDATA_RULE_COMMENT).then(|| String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned())
}

/// The batch that makes the table exactly the lock: any earlier table of that name is replaced in the same
/// transaction (creating it first makes the delete valid either way).
fn install_batch(lock: &Lock, first_seq: u32) -> Writer {
    let mut w = Writer::new(first_seq);
    w.batch(|w| {
        w.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
        w.table(NFT_MSG_DELTABLE, 0);
        w.table(NFT_MSG_NEWTABLE, NLM_F_CREATE);
        for chain in Chain::ALL {
            w.base_chain(chain);
        }
        for rule in ruleset(lock) {
            w.rule(&rule);
        }
    });
    w
}

fn remove_batch(first_seq: u32) -> Writer {
    let mut w = Writer::new(first_seq);
    w.batch(|w| w.table(NFT_MSG_DELTABLE, 0));
    w
}

// ---- decoding ---------------------------------------------------------------------------------------------

/// Attributes of one level: (type without flags, payload).
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let (&[l0, l1, t0, t1], _) = data.split_first_chunk::<4>()?;
        let len = u16::from_ne_bytes([l0, l1]) as usize;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((u16::from_ne_bytes([t0, t1]) & !NLA_F_NESTED, payload))
    })
}

/// One rule as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub chain: String,
    pub tag: Option<String>,
    /// Packets counted by the rule's counter, if it has one.
    pub packets: Option<u64>,
}

fn parse_rule(attrs: &[u8]) -> Installed {
    let mut rule = Installed { chain: String::new(), tag: None, packets: None };
    for (kind, payload) in attributes(attrs) {
        match kind {
            NFTA_RULE_CHAIN => rule.chain = String::from_utf8_lossy(payload.strip_suffix(&[0]).unwrap_or(payload)).into(),
            NFTA_RULE_USERDATA => rule.tag = comment_text(payload),
            NFTA_RULE_EXPRESSIONS => {
                for (_, element) in attributes(payload) {
                    let mut name: &[u8] = b"";
                    let mut data: &[u8] = b"";
                    for (kind, payload) in attributes(element) {
                        match kind {
                            NFTA_EXPR_NAME => name = payload,
                            NFTA_EXPR_DATA => data = payload,
                            _ => {}
                        }
                    }
                    if name == b"counter\0" {
                        rule.packets = attributes(data)
                            .find(|(kind, _)| *kind == NFTA_COUNTER_PACKETS)
                            .and_then(|(_, v)| v.try_into().ok())
                            .map(u64::from_be_bytes);
                    }
                }
            }
            _ => {}
        }
    }
    rule
}

// ---- transport --------------------------------------------------------------------------------------------

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A netlink socket to nf_tables of the current network namespace.
pub struct Nftables {
    fd: OwnedFd,
    seq: u32,
}

impl Nftables {
    pub fn open() -> Result<Nftables, NftError> {
        let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
            .map_err(|e| NftError::Socket(e.into()))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| NftError::Socket(e.into()))?;
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|e| NftError::Socket(e.into()))?;
        socket::setsockopt(&fd, sockopt::RcvBuf, &(1 << 20)).map_err(|e| NftError::Socket(e.into()))?;
        // Sequence numbers only need to be unique on this socket.
        Ok(Nftables { fd, seq: 1 })
    }

    /// Installs the lock, replacing any earlier one, atomically.
    pub fn install(&mut self, lock: &Lock) -> Result<(), NftError> {
        let batch = install_batch(lock, self.seq);
        self.transact(batch)
    }

    /// Removes the lock; a namespace without it is not an error.
    pub fn remove(&mut self) -> Result<(), NftError> {
        let batch = remove_batch(self.seq);
        match self.transact(batch) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The rules of the lock's table as installed; `Err(is_not_found)` when there is no table.
    pub fn list(&mut self) -> Result<Vec<Installed>, NftError> {
        let mut w = Writer::new(self.seq);
        let start = w.nft_message(NFT_MSG_GETRULE, NLM_F_DUMP, NFPROTO_INET);
        w.attr_str(NFTA_RULE_TABLE, TABLE);
        w.end(start, None);
        self.seq = w.seq;
        self.send(&w.buf)?;
        let mut rules = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            for (kind, body) in messages(&buf[..n])? {
                match kind {
                    NLMSG_DONE => return Ok(rules),
                    NLMSG_ERROR => {
                        let code = error_code(body)?;
                        if code != 0 {
                            return Err(NftError::Refused {
                                what: format!("listing table inet {TABLE}"),
                                source: io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                        rules.push(parse_rule(body.get(4..).ok_or(NftError::Malformed("short rule"))?))
                    }
                    _ => {}
                }
            }
        }
    }

    fn transact(&mut self, batch: Writer) -> Result<(), NftError> {
        self.seq = batch.seq;
        self.send(&batch.buf)?;
        let mut pending = batch.acked;
        let mut buf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = self.recv(&mut buf)?;
            for (kind, body) in messages(&buf[..n])? {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(body)?;
                let seq = body.get(12..16).map(|s| u32::from_ne_bytes(s.try_into().unwrap())).unwrap_or(0);
                let what = pending.iter().find(|(s, _)| *s == seq).map(|(_, w)| w.clone());
                if code != 0 {
                    return Err(NftError::Refused {
                        what: what.unwrap_or_else(|| "the batch".into()),
                        source: io::Error::from_raw_os_error(code),
                    });
                }
                pending.retain(|(s, _)| *s != seq);
            }
        }
        Ok(())
    }

    fn send(&self, buf: &[u8]) -> Result<(), NftError> {
        socket::sendto(self.fd.as_raw_fd(), buf, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| NftError::Socket(e.into()))?;
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, NftError> {
        match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EAGAIN) => Err(NftError::Timeout(ANSWER_TIMEOUT)),
            Err(e) => Err(NftError::Socket(e.into())),
        }
    }
}

/// Netlink messages in one datagram: (type, body after the 16-byte header).
fn messages(mut data: &[u8]) -> Result<Vec<(u16, &[u8])>, NftError> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > data.len() {
            return Err(NftError::Malformed("message length"));
        }
        out.push((u16::from_ne_bytes(data[4..6].try_into().unwrap()), &data[16..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR body (0 for an ACK), positive.
fn error_code(body: &[u8]) -> Result<i32, NftError> {
    let raw = body.get(0..4).ok_or(NftError::Malformed("short error message"))?;
    Ok(-i32::from_ne_bytes(raw.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_framed_and_every_change_asks_for_an_ack() {
        let lock = Lock { proxy_uid: 10001, inbound_ports: vec![15006, 15021] };
        let w = install_batch(&lock, 7);
        let msgs = messages(&w.buf).unwrap();
        assert_eq!(msgs.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs.last().unwrap().0, NFNL_MSG_BATCH_END);
        // begin, 3 table messages, 2 chains, the rules, end
        assert_eq!(msgs.len(), 1 + 3 + 2 + ruleset(&lock).len() + 1);
        assert_eq!(w.acked.len(), msgs.len() - 2);
        assert_eq!(w.acked.first().unwrap().0, 8, "sequence numbers follow the batch begin");
    }

    #[test]
    fn rules_read_back_with_their_chain_tag_and_counter() {
        let lock = Lock { proxy_uid: 10001, inbound_ports: vec![15006] };
        let w = install_batch(&lock, 1);
        let rules: Vec<Installed> = messages(&w.buf)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| *k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE)
            .map(|(_, body)| parse_rule(&body[4..]))
            .collect();
        let expected = ruleset(&lock);
        assert_eq!(rules.len(), expected.len());
        for (got, want) in rules.iter().zip(&expected) {
            assert_eq!(got.chain, want.chain.name());
            assert_eq!(got.tag.as_deref(), Some(want.tag.as_str()));
            assert_eq!(got.packets, want.counter.then_some(0));
        }
    }

    #[test]
    fn attribute_parsing_stops_at_garbage_instead_of_panicking() {
        for data in [&[][..], &[1], &[3, 0, 1, 0], &[200, 0, 1, 0, 0, 0, 0, 0], &[8, 0, 1, 0, 1, 2]] {
            let _ = attributes(data).count();
            let _ = parse_rule(data);
            let _ = messages(data);
        }
    }
}
