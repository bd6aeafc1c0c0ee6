//! tollgate-webhook: a Kubernetes mutating admission webhook that hardens analysis pods.
//!
//! The decision is a pure function, [`harden::harden`]: (policy, pod) → JSONPatch and the list of
//! changes, or a denial naming every violation. [`review`] wraps it in AdmissionReview; the HTTPS server
//! ([`server`]) and the CLI are thin shells over those two.

// The policy and its quantities are contracts (tollgate-api); re-exported under their old paths.
pub use tollgate_api::{policy, quantity};

pub mod events;
pub mod harden;
pub mod labels;
pub mod metrics;
pub mod patch;
pub mod pool;
pub mod reload;
pub mod review;
pub mod server;
pub mod tls;
pub mod workload;
