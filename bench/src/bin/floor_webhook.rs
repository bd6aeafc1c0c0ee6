//! The webhook's floor (bench/webhook.sh): to be written.
fn main() {}
