//! `tollgate`, the admin's command. `check` looks at a live cluster the way `linkerd check` does: [`check`] is
//! the pure core (what is wrong in a [`check::Snapshot`] of the cluster, with a hint for each finding), and
//! [`gather`] the thin shell that takes the snapshot through the API server. Every check includes [`locks`]: per node, whether the egress lock is installed and ready. `check --proxy` adds
//! [`proxies`]: the pods whose proxy is not what tollgate would inject today; `check --pre`, before installing,
//! is [`preflight`].

pub mod check;
pub mod finding;
pub mod gather;
pub mod locks;
pub mod preflight;
pub mod proxies;
