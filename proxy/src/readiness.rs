//! Whether the proxy is ready: what the admin listener's `/readyz` answers, and what a route with
//! `answer: ready` answers. The conditions are handed in by whoever wires the proxy (main.rs), so that this
//! module, and the listeners that ask it, depend on none of the parts they describe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One condition: `Some(why)` while it does not hold.
type Condition = Box<dyn Fn() -> Option<&'static str> + Send + Sync>;

pub struct Readiness {
    draining: Arc<AtomicBool>,
    conditions: Vec<Condition>,
}

impl Readiness {
    /// Ready unless `draining` is set (after SIGTERM) or a condition added with [`Readiness::require`] fails.
    pub fn new(draining: Arc<AtomicBool>) -> Readiness {
        Readiness { draining, conditions: Vec::new() }
    }

    /// Also require `condition` (e.g. a token in hand): `Some(why)` while it does not hold.
    pub fn require(mut self, condition: impl Fn() -> Option<&'static str> + Send + Sync + 'static) -> Readiness {
        self.conditions.push(Box::new(condition));
        self
    }

    /// `Ok` when ready, else why not (draining first, then the conditions in the order they were added).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        self.conditions.iter().find_map(|condition| condition()).map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_wins_then_the_first_condition_that_fails() {
        let draining = Arc::new(AtomicBool::new(false));
        let token = Arc::new(AtomicBool::new(false));
        let seen = token.clone();
        let readiness = Readiness::new(draining.clone())
            .require(move || (!seen.load(Ordering::Relaxed)).then_some("waiting for a token"))
            .require(|| None);
        assert_eq!(readiness.check(), Err("waiting for a token"));
        token.store(true, Ordering::Relaxed);
        assert_eq!(readiness.check(), Ok(()));
        draining.store(true, Ordering::Relaxed);
        assert_eq!(readiness.check(), Err("draining"));
    }
}
