//! tollgate's egress lock: inside a hardened pod, only the proxy's UID may open a connection that leaves the
//! pod. A chained CNI plugin ([`plugin`]) installs nftables rules ([`rules`], encoded in [`nft`]) in the pod's
//! network namespace when the runtime sets the pod up; [`install`] chains the plugin into a node's CNI
//! configuration, as the DaemonSet does.

pub mod install;
pub mod netns;
pub mod nft;
pub mod plugin;
pub mod rules;
