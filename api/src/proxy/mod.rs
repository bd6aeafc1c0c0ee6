//! The proxy's route table: the raw configuration as written (YAML), its compilation into checked types
//! ([`config::Config::load`], every error naming its field) and the pure decisions on those types (which route
//! a request takes, what target it may carry). The proxy runs on them; `tollgate check` and the chart's
//! tests load them the same way, without the proxy.

pub mod config;
pub mod headers;
pub mod routes;
pub mod target;
