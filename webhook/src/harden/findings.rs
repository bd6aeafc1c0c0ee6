//! What the checks found: every violation, each fixable or not under the policy, before anything is changed.

use serde_json::Value;

use super::rules::{Denial, Rule, Violation};
use crate::patch::Path;
use crate::policy::{OnExceed, OnViolation, Policy};

/// How a violation is fixed.
#[derive(Debug, Clone)]
pub(super) enum Fix {
    Set(Path, Value),
    Remove(Path),
}

/// A violation the policy fixes: the fix, and what the change says it did.
#[derive(Debug, Clone)]
pub(super) struct Fixed {
    pub(super) violation: Violation,
    pub(super) fix: Fix,
    pub(super) fixed: String,
}

/// The violations found (each fixable or not under this policy).
pub(super) struct Findings<'p> {
    pub(super) policy: &'p Policy,
    /// The policy's, or the namespace's mode (`/mutate/warn`).
    pub(super) on_violation: OnViolation,
    violations: Vec<(Violation, Option<(Fix, String)>)>,
}

impl<'p> Findings<'p> {
    pub(super) fn new(policy: &'p Policy) -> Self {
        Self::in_mode(policy, policy.on_violation)
    }

    /// With `on_violation` in place of the policy's (a namespace's mode).
    pub(super) fn in_mode(policy: &'p Policy, on_violation: OnViolation) -> Self {
        Findings { policy, on_violation, violations: Vec::new() }
    }

    fn violation(&mut self, rule: Rule, scope: &str, field: impl Into<String>, problem: impl Into<String>, fix: Option<(Fix, String)>) {
        let violation = Violation { rule, scope: scope.to_owned(), field: field.into(), problem: problem.into() };
        self.violations.push((violation, fix));
    }

    /// An insecure setting: fixed only when the policy says `onViolation: override`.
    pub(super) fn insecure(
        &mut self,
        rule: Rule,
        scope: &str,
        field: &str,
        problem: impl Into<String>,
        fix: Fix,
        fixed: impl Into<String>,
    ) {
        let fix = (self.on_violation == OnViolation::Override).then(|| (fix, fixed.into()));
        self.violation(rule, scope, field, problem, fix);
    }

    /// A value above the policy's maximum: fixed only when the policy says `onExceed: clamp`.
    pub(super) fn excessive(
        &mut self,
        rule: Rule,
        scope: &str,
        field: &str,
        problem: impl Into<String>,
        fix: Fix,
        fixed: impl Into<String>,
    ) {
        let fix = (self.policy.resources.on_exceed == OnExceed::Clamp).then(|| (fix, fixed.into()));
        self.violation(rule, scope, field, problem, fix);
    }

    /// Never fixable: the request itself is wrong or hostile.
    pub(super) fn refused(&mut self, rule: Rule, scope: &str, field: impl Into<String>, problem: impl Into<String>) {
        self.violation(rule, scope, field, problem, None);
    }

    /// The denial, when anything found cannot be fixed under this policy.
    pub(super) fn denial(&self) -> Option<Denial> {
        self.violations
            .iter()
            .any(|(_, fix)| fix.is_none())
            .then(|| Denial { violations: self.violations.iter().map(|(v, _)| v.clone()).collect() })
    }

    /// Every fix, in the order found (all are fixable once [`Findings::denial`] said none).
    pub(super) fn into_fixes(self) -> Vec<Fixed> {
        self.violations.into_iter().filter_map(|(violation, fix)| fix.map(|(fix, fixed)| Fixed { violation, fix, fixed })).collect()
    }
}
