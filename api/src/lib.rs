//! tollgate's contracts, in one place: what the webhook, the proxy, the CNI plugin and `tollgate check` must
//! agree on, each written and read by the same code.
//!
//! The rule of this crate: types, their parsing and their validation; no I/O beyond reading a string, no
//! client, no server. Everything here builds without pingora, kube or a C compiler, so that every other
//! crate can depend on it (kube-core against kube-client is the model).

pub mod egress_lock;
pub mod errors;
pub mod names;
#[cfg(feature = "policy")]
pub mod policy;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "policy")]
pub mod quantity;
#[cfg(feature = "policy")]
pub mod strict;
#[cfg(feature = "policy")]
pub mod units;
