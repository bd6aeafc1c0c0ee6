//! Bare pingora (bench/proxy.sh): to be written.
fn main() {}
