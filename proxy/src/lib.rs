//! tollgate-proxy: the injected sidecar, the analysis pod's only authenticated way out.
//!
//! The decisions are pure: [`target::check`] makes a request target safe or refuses it,
//! [`routes::decide`] maps (routes, method, target) to forward-or-refuse, and [`local::refusal`] keeps
//! credentials away from addresses that are the pod's own. The pingora services are thin shells over them.
//! What became of a request is a [`decision::Decision`]; each layer owns its metrics ([`metrics`] registers
//! them, `main.rs` hands them in).

// The route table and its units are contracts (tollgate-api), re-exported under their old paths.
pub use tollgate_api::proxy::{config, routes, target};
pub use tollgate_api::units;

pub mod admin;
pub mod audit;
pub mod client;
pub mod connections;
pub mod decision;
pub mod drain;
pub mod egress;
pub mod headers;
pub mod ingress;
pub mod jwt;
pub mod local;
pub mod metrics;
pub mod readiness;
pub mod resolve;
pub mod tokens;
pub mod tunnel;
