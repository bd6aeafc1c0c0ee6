//! tollgate-proxy: the injected sidecar, the analysis pod's only authenticated way out.
//!
//! The decisions are pure: [`target::check`] makes a request target safe or refuses it,
//! [`routes::decide`] maps (routes, method, target) to forward-or-refuse, and [`local::refusal`] keeps
//! credentials away from addresses that are the pod's own. The pingora services are thin shells over them.

pub mod admin;
pub mod audit;
pub mod client;
pub mod config;
pub mod connections;
pub mod drain;
pub mod egress;
pub mod headers;
pub mod ingress;
pub mod jwt;
pub mod local;
pub mod metrics;
pub mod readiness;
pub mod resolve;
pub mod routes;
pub mod target;
pub mod tokens;
pub mod tunnel;
pub mod units;
