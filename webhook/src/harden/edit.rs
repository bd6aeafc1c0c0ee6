//! Writing to the pod: every edit goes through the patch builder, and each change is recorded as it is made.

use serde_json::Value;

use super::Change;
use crate::patch::{PatchBuilder, Path, Seg, join};

/// Writes through the patch builder and records each change.
pub(super) struct Editor<'d> {
    pub(super) builder: PatchBuilder<'d>,
    pub(super) changes: Vec<Change>,
}

impl<'d> Editor<'d> {
    pub(super) fn new(doc: &'d mut Value) -> Self {
        Editor { builder: PatchBuilder::new(doc), changes: Vec::new() }
    }

    pub(super) fn change(&mut self, scope: &str, action: impl Into<String>) {
        self.changes.push(Change { scope: scope.to_owned(), action: action.into() });
    }

    /// Set `rel` under `base` (a field path for the message) when missing.
    pub(super) fn default(&mut self, scope: &str, base: &Path, rel: &[&'static str], value: Value) {
        let path = join(base, rel.iter().map(|s| Seg::from(*s)));
        let shown = compact(&value);
        if self.builder.set_if_absent(&path, value) {
            self.change(scope, format!("set {}={shown}", rel.join(".")));
        }
    }

    /// Set `rel` under `base` to `value`, whatever was there.
    pub(super) fn force(&mut self, scope: &str, base: &Path, rel: &[&'static str], value: Value) {
        let path = join(base, rel.iter().map(|s| Seg::from(*s)));
        let shown = compact(&value);
        if self.builder.set(&path, value) {
            self.change(scope, format!("set {}={shown}", rel.join(".")));
        }
    }
}

/// A value as a change shows it: a string without its quotes.
pub(super) fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
