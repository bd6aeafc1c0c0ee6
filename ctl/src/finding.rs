//! What every check of `tollgate check` reports, and what it reads: one module that the checks ([`crate::check`],
//! [`crate::locks`], [`crate::preflight`], [`crate::proxies`]) all use, so none imports another for it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, as a stable id (`ca-bundle`, `routes`, ...).
    pub check: &'static str,
    /// What it was checked on: the configuration, a pod, a namespace.
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    /// What to do about it; none for what is fine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Something read from the cluster, or why it could not be (`Err`: forbidden, unreachable, ...).
pub type Read<T> = Result<T, String>;
