//! What the checks found: every violation, each fixable or not under the policy, before anything is changed.

use serde_json::Value;

use super::rules::{Denial, Rule, Violation};
use crate::patch::{Path, get};
use crate::policy::{OnExceed, OnViolation, Policy};

/// How a violation is fixed.
#[derive(Debug, Clone)]
pub(super) enum Fix {
    Set(Path, Value),
    Remove(Path),
}

impl Fix {
    fn path(&self) -> &Path {
        match self {
            Fix::Set(path, _) | Fix::Remove(path) => path,
        }
    }

    /// Whether `self`, at or under `outer`'s path, leaves what `outer` writes as it is: then the two give one
    /// result in either order and `outer` alone is written.
    fn kept_by(&self, outer: &Fix) -> bool {
        let rel = &self.path()[outer.path().len()..];
        match (outer, self) {
            // Nothing under a removed field is left to fix.
            (Fix::Remove(_), _) => !rel.is_empty() || matches!(self, Fix::Remove(_)),
            (Fix::Set(_, written), Fix::Set(_, value)) => get(written, rel) == Some(value),
            (Fix::Set(_, written), Fix::Remove(_)) => !rel.is_empty() && get(written, rel).is_none(),
        }
    }
}

/// A violation the policy fixes: the fix (none when a fix at an enclosing path writes it already), and what the
/// change says it did.
#[derive(Debug, Clone)]
pub(super) struct Fixed {
    pub(super) violation: Violation,
    pub(super) fix: Option<Fix>,
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
        let mut violation = Violation { rule, scope: scope.to_owned(), field: field.into(), problem: problem.into() };
        let mut fix = fix;
        if let Some((new, _)) = &fix {
            // Two fixes of one field, or of a field and what encloses it, must agree: otherwise the result would
            // depend on their order, and a fix could undo another. Neither is made; the pod is denied naming both.
            let conflicts: Vec<usize> = (0..self.violations.len()).filter(|&i| self.conflicts(i, new)).collect();
            if !conflicts.is_empty() {
                for i in conflicts {
                    let (other, other_fix) = &mut self.violations[i];
                    other.problem = format!("{} (tollgate cannot fix it together with {})", other.problem, violation.field);
                    let field = other.field.clone();
                    *other_fix = None;
                    violation.problem = format!("{} (tollgate cannot fix it together with {field})", violation.problem);
                }
                fix = None;
            }
        }
        self.violations.push((violation, fix));
    }

    /// Whether the fix of violation `i` and `new` touch one field, or one encloses the other, and disagree.
    fn conflicts(&self, i: usize, new: &Fix) -> bool {
        let Some((old, _)) = &self.violations[i].1 else { return false };
        if new.path().starts_with(old.path()) {
            !new.kept_by(old)
        } else if old.path().starts_with(new.path()) {
            !old.kept_by(new)
        } else {
            false
        }
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

    /// Every fix, in the order found (all are fixable once [`Findings::denial`] said none). A fix another one
    /// writes already (at an enclosing field, or the same field found earlier) is not written again.
    pub(super) fn into_fixes(self) -> Vec<Fixed> {
        let fixes: Vec<(Violation, Fix, String)> =
            self.violations.into_iter().filter_map(|(violation, fix)| fix.map(|(fix, fixed)| (violation, fix, fixed))).collect();
        let covered = |i: usize, path: &Path| {
            fixes.iter().enumerate().any(|(j, (_, other, _))| path.starts_with(other.path()) && (other.path().len() < path.len() || j < i))
        };
        let written: Vec<bool> = fixes.iter().enumerate().map(|(i, (_, fix, _))| !covered(i, fix.path())).collect();
        fixes
            .into_iter()
            .zip(written)
            .map(|((violation, fix, fixed), write)| Fixed { violation, fix: write.then_some(fix), fixed })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::patch::Seg;

    fn path(segs: &[&'static str]) -> Path {
        segs.iter().map(|s| Seg::from(*s)).collect()
    }

    /// The fixes found in this order under override: what is written, and the denied fields.
    fn settle(fixes: Vec<(&'static str, Fix)>) -> (Vec<Option<Fix>>, Vec<String>) {
        let policy = Policy::from_yaml("onViolation: override\n").unwrap();
        let mut f = Findings::new(&policy);
        for (field, fix) in fixes {
            f.insecure(Rule::VolumeTypes, "pod", field, "is wrong", fix, "fixed");
        }
        let denied = f.denial().map_or_else(Vec::new, |d| d.violations.into_iter().map(|v| v.problem).collect());
        (f.into_fixes().into_iter().map(|fixed| fixed.fix).collect(), denied)
    }

    fn written(fixes: &[Option<Fix>]) -> Vec<String> {
        fixes.iter().flatten().map(|fix| format!("{fix:?}")).collect()
    }

    #[test]
    fn an_enclosing_fix_is_written_alone_in_either_order() {
        let outer = || Fix::Set(path(&["spec", "v"]), json!({"name": "v", "emptyDir": {}}));
        let inner = || Fix::Remove(path(&["spec", "v", "hostPath"]));
        for order in [vec![("a", outer()), ("b", inner())], vec![("b", inner()), ("a", outer())]] {
            let (fixes, denied) = settle(order);
            assert!(denied.is_empty(), "{denied:?}");
            assert_eq!(written(&fixes), vec![format!("{:?}", outer())]);
        }
    }

    #[test]
    fn one_field_fixed_twice_alike_is_written_once() {
        let fix = || Fix::Set(path(&["spec", "v"]), json!(1));
        let (fixes, denied) = settle(vec![("a", fix()), ("b", fix())]);
        assert!(denied.is_empty(), "{denied:?}");
        assert_eq!(fixes.len(), 2);
        assert_eq!(written(&fixes), vec![format!("{:?}", fix())]);
    }

    #[test]
    fn fixes_that_disagree_deny_both_fields_in_either_order() {
        let cases = [
            (Fix::Set(path(&["spec", "v"]), json!(1)), Fix::Set(path(&["spec", "v"]), json!(2))),
            (Fix::Set(path(&["spec", "v"]), json!(1)), Fix::Remove(path(&["spec", "v"]))),
            (Fix::Set(path(&["spec", "v"]), json!({"a": 1})), Fix::Set(path(&["spec", "v", "a"]), json!(2))),
            (Fix::Set(path(&["spec", "v"]), json!({"a": 1})), Fix::Remove(path(&["spec", "v", "a"]))),
        ];
        for (one, two) in cases {
            for order in [vec![("first", one.clone()), ("second", two.clone())], vec![("second", two.clone()), ("first", one.clone())]] {
                let (_, denied) = settle(order);
                assert_eq!(denied.len(), 2, "{one:?} and {two:?}: {denied:?}");
                assert!(denied.iter().all(|d| d.contains("tollgate cannot fix it together with")), "{denied:?}");
            }
        }
    }

    #[test]
    fn fixes_of_separate_fields_are_all_written() {
        let (fixes, denied) = settle(vec![
            ("a", Fix::Set(path(&["spec", "a"]), json!(1))),
            ("ab", Fix::Set(path(&["spec", "ab"]), json!(1))),
            ("b", Fix::Remove(path(&["spec", "b"]))),
        ]);
        assert!(denied.is_empty(), "{denied:?}");
        assert_eq!(written(&fixes).len(), 3);
    }
}
