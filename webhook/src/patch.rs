//! Building a JSONPatch while applying it: every edit changes the working document and records the
//! operation that makes the same edit, so the patch is exactly as long as the list of edits (linear in
//! the pod, never a whole-document diff).
//!
//! tollgate's own containers are rendered once per policy, as values and as JSON text: their operations
//! carry the text, so that a review neither copies nor serialises them again.

use std::borrow::Cow;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// A path into a JSON document: object keys and array indices.
pub type Path = Vec<Seg>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// Most keys are literals: borrowed, so building a path allocates only its vector.
    Key(Cow<'static, str>),
    Index(usize),
}

impl From<&'static str> for Seg {
    fn from(key: &'static str) -> Self {
        Seg::Key(Cow::Borrowed(key))
    }
}

impl From<String> for Seg {
    fn from(key: String) -> Self {
        Seg::Key(Cow::Owned(key))
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// `path!["spec", "containers", 0, "securityContext"]`
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { ::std::vec::Vec::<$crate::patch::Seg>::from([$($crate::patch::Seg::from($seg)),*]) };
}

/// `base` extended with more segments.
pub fn join(base: &Path, rest: impl IntoIterator<Item = Seg>) -> Path {
    let mut path = base.clone();
    path.extend(rest);
    path
}

/// The JSON pointer to `path`, written straight into one string (RFC 6901: `~` as `~0`, `/` as `~1`):
/// a pointer per patch operation, so no token is allocated on the way.
fn pointer(path: &[Seg]) -> PointerBuf {
    let mut text = String::with_capacity(path.len() * 16);
    for seg in path {
        text.push('/');
        match seg {
            Seg::Key(key) if key.contains(['~', '/']) => {
                for c in key.chars() {
                    match c {
                        '~' => text.push_str("~0"),
                        '/' => text.push_str("~1"),
                        c => text.push(c),
                    }
                }
            }
            Seg::Key(key) => text.push_str(key),
            Seg::Index(index) => text.push_str(itoa::Buffer::new().format(*index)),
        }
    }
    PointerBuf::parse(text).expect("an escaped pointer is valid")
}

/// Read-only lookup; `null` counts as absent.
pub fn get<'v>(doc: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    let mut node = doc;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(key), Value::Object(map)) => map.get(key.as_ref())?,
            (Seg::Index(index), Value::Array(items)) => items.get(*index)?,
            _ => return None,
        };
    }
    (!node.is_null()).then_some(node)
}

fn get_mut<'v>(doc: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut node = doc;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(key), Value::Object(map)) => map.get_mut(key.as_ref())?,
            (Seg::Index(index), Value::Array(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(node)
}

/// One operation of a [`Patch`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Json(PatchOperation),
    /// An `add` (or a `replace`) whose value is JSON text already.
    Text {
        replace: bool,
        path: PointerBuf,
        json: String,
    },
}

/// A JSONPatch as tollgate builds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Patch(pub Vec<Op>);

impl Patch {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The patch as JSON, as the API server receives it.
    pub fn to_json(&self) -> Vec<u8> {
        let text: usize = self.0.iter().map(|op| if let Op::Text { json, .. } = op { json.len() } else { 0 }).sum();
        let mut out = Vec::with_capacity(text + 96 * self.0.len() + 2);
        out.push(b'[');
        for (index, op) in self.0.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            match op {
                Op::Json(op) => serde_json::to_writer(&mut out, op).expect("a patch operation serialises"),
                Op::Text { replace, path, json } => {
                    out.extend_from_slice(if *replace { br#"{"op":"replace","path":"# } else { br#"{"op":"add","path":"# });
                    serde_json::to_writer(&mut out, path.as_str()).expect("a string serialises");
                    out.extend_from_slice(br#","value":"#);
                    out.extend_from_slice(json.as_bytes());
                    out.push(b'}');
                }
            }
        }
        out.push(b']');
        out
    }

    /// The same patch as json-patch's type (text values parsed), to apply it.
    pub fn to_json_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.to_json()).expect("tollgate's patch is valid JSON")
    }
}

pub struct PatchBuilder<'d> {
    doc: &'d mut Value,
    ops: Vec<Op>,
}

impl<'d> PatchBuilder<'d> {
    pub fn new(doc: &'d mut Value) -> Self {
        PatchBuilder { doc, ops: Vec::new() }
    }

    pub fn doc(&self) -> &Value {
        self.doc
    }

    pub fn get(&self, path: &[Seg]) -> Option<&Value> {
        get(self.doc, path)
    }

    /// Set `path` to `value`, creating missing (or null) parent objects in one operation.
    /// Returns false when the value was already there.
    pub fn set(&mut self, path: &[Seg], value: Value) -> bool {
        self.edit(path, value, false)
    }

    /// [`PatchBuilder::set`] only when `path` is missing or null, in the same walk down the path.
    /// Returns false when something was there.
    pub fn set_if_absent(&mut self, path: &[Seg], value: Value) -> bool {
        self.edit(path, value, true)
    }

    fn edit(&mut self, path: &[Seg], value: Value, only_if_absent: bool) -> bool {
        assert!(!path.is_empty(), "set needs a non-empty path");
        // One walk down the path: `existing` is the deepest segment that can take the edit (the first that
        // is missing, null or not a container, or the last), `present` whether that segment is there.
        let mut node: &Value = self.doc;
        let mut existing = 0;
        let mut present = false;
        for (depth, seg) in path.iter().enumerate() {
            existing = depth;
            let next = match (seg, node) {
                (Seg::Key(key), Value::Object(map)) => map.get(key.as_ref()),
                (Seg::Index(index), Value::Array(items)) => items.get(*index),
                _ => None,
            };
            let Some(next) = next else { break };
            present = true;
            if depth + 1 == path.len() {
                if !next.is_null() && (only_if_absent || *next == value) {
                    return false;
                }
                break;
            }
            if !matches!(next, Value::Object(_) | Value::Array(_)) {
                break;
            }
            present = false;
            node = next;
        }
        // Wrap the value in the objects that are missing below that segment.
        let mut wrapped = value;
        for seg in path[existing + 1..].iter().rev() {
            let Seg::Key(key) = seg else {
                unreachable!("an index into a missing array cannot be created");
            };
            let mut map = Map::new();
            map.insert(key.to_string(), wrapped);
            wrapped = Value::Object(map);
        }
        let target = &path[..=existing];
        let (last, parent_path) = target.split_last().expect("set needs a non-empty path");
        let parent = get_mut(self.doc, parent_path).expect("parent exists");
        match (last, parent) {
            (Seg::Key(key), Value::Object(map)) => {
                map.insert(key.to_string(), wrapped.clone());
            }
            (Seg::Index(index), Value::Array(items)) if *index < items.len() => items[*index] = wrapped.clone(),
            _ => unreachable!("set into a non-container: {target:?}"),
        }
        let path = pointer(target);
        self.ops.push(Op::Json(if present || matches!(last, Seg::Index(_)) {
            PatchOperation::Replace(ReplaceOperation { path, value: wrapped })
        } else {
            PatchOperation::Add(AddOperation { path, value: wrapped })
        }));
        true
    }

    /// Append to the array at `path`, creating it when missing.
    pub fn append(&mut self, path: &[Seg], value: Value) {
        match get_mut(self.doc, path) {
            Some(Value::Array(items)) => {
                items.push(value.clone());
                let mut target = pointer(path);
                target.push_back("-");
                self.ops.push(Op::Json(PatchOperation::Add(AddOperation { path: target, value })));
            }
            _ => {
                self.set(path, Value::Array(vec![value]));
            }
        }
    }

    /// Insert `value`, whose JSON text is `json`, into the array at `path` before `index`, creating the array
    /// when missing: the operation carries the text.
    pub fn insert_json(&mut self, path: &[Seg], index: usize, value: Value, json: &str) {
        if let Some(Value::Array(items)) = get_mut(self.doc, path)
            && index <= items.len()
        {
            items.insert(index, value);
            let mut target = pointer(path);
            target.push_back(index.to_string());
            self.ops.push(Op::Text { replace: false, path: target, json: json.to_owned() });
            return;
        }
        // No array there yet: under an object, it goes in whole, holding the value.
        if let Some((Seg::Key(key), parent)) = path.split_last()
            && let Some(Value::Object(map)) = get_mut(self.doc, parent)
        {
            let replace = map.insert(key.to_string(), Value::Array(vec![value])).is_some();
            self.ops.push(Op::Text { replace, path: pointer(path), json: format!("[{json}]") });
            return;
        }
        self.set(path, Value::Array(vec![value]));
    }

    /// Remove the member or element at `path`, if present.
    pub fn remove(&mut self, path: &[Seg]) -> bool {
        let Some((last, parent_path)) = path.split_last() else { return false };
        let removed = match (last, get_mut(self.doc, parent_path)) {
            (Seg::Key(key), Some(Value::Object(map))) => map.remove(key.as_ref()).is_some(),
            (Seg::Index(index), Some(Value::Array(items))) if *index < items.len() => {
                items.remove(*index);
                true
            }
            _ => false,
        };
        if removed {
            self.ops.push(Op::Json(PatchOperation::Remove(RemoveOperation { path: pointer(path) })));
        }
        removed
    }

    pub fn into_patch(self) -> Patch {
        Patch(self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(mut doc: Value, edit: impl FnOnce(&mut PatchBuilder), expected: Value, expected_ops: usize) {
        let original = doc.clone();
        let mut builder = PatchBuilder::new(&mut doc);
        edit(&mut builder);
        let ops = builder.into_patch();
        assert_eq!(doc, expected);
        assert_eq!(ops.len(), expected_ops, "{ops:?}");
        let mut replayed = original;
        json_patch::patch(&mut replayed, &ops.to_json_patch()).expect("patch applies");
        assert_eq!(replayed, expected, "the patch reproduces the edit");
    }

    #[test]
    fn set_creates_missing_parents_in_one_operation() {
        check(
            json!({"spec": {}}),
            |b| assert!(b.set(&path!["spec", "securityContext", "seccompProfile", "type"], json!("RuntimeDefault"))),
            json!({"spec": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}}),
            1,
        );
        check(
            json!({"spec": {"securityContext": null}}),
            |b| assert!(b.set(&path!["spec", "securityContext", "runAsUser"], json!(1))),
            json!({"spec": {"securityContext": {"runAsUser": 1}}}),
            1,
        );
    }

    #[test]
    fn set_is_a_no_op_when_equal_and_a_replace_otherwise() {
        check(json!({"a": {"b": 1}}), |b| assert!(!b.set(&path!["a", "b"], json!(1))), json!({"a": {"b": 1}}), 0);
        check(json!({"a": {"b": 1}}), |b| assert!(b.set(&path!["a", "b"], json!(2))), json!({"a": {"b": 2}}), 1);
        check(json!({"a": [1, 2]}), |b| assert!(b.set(&path!["a", 1], json!(3))), json!({"a": [1, 3]}), 1);
    }

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped() {
        check(
            json!({"metadata": {"labels": {}}}),
            |b| {
                b.set(&path!["metadata", "labels", "tollgate.dev/injected"], json!("true"));
                b.set(&path!["metadata", "labels", "a~b"], json!("x"));
            },
            json!({"metadata": {"labels": {"tollgate.dev/injected": "true", "a~b": "x"}}}),
            2,
        );
    }

    #[test]
    fn append_insert_remove() {
        check(
            json!({"l": [1]}),
            |b| {
                b.append(&path!["l"], json!(2));
                b.insert_json(&path!["l"], 0, json!(0), "0");
                b.append(&path!["m"], json!("new"));
                b.insert_json(&path!["n"], 0, json!("first"), r#""first""#);
                assert!(b.remove(&path!["l", 1]));
                assert!(!b.remove(&path!["l", 9]));
                assert!(!b.remove(&path!["absent"]));
            },
            json!({"l": [0, 2], "m": ["new"], "n": ["first"]}),
            5,
        );
    }

    #[test]
    fn insert_json_edits_and_carries_the_text() {
        let value = json!({"name": "x", "n": 1});
        let text = r#"{"name":"x","n":1}"#;
        check(
            json!({"spec": {"l": [1], "null": null}, "a/b": {}}),
            |b| {
                b.insert_json(&path!["spec", "l"], 0, value.clone(), text);
                b.insert_json(&path!["spec", "m"], 0, value.clone(), text);
                b.insert_json(&path!["spec", "null"], 0, value.clone(), text);
                b.insert_json(&path!["a/b", "l"], 0, value.clone(), text);
                b.insert_json(&path!["new", "l"], 0, value.clone(), text);
            },
            json!({"spec": {"l": [value, 1], "m": [value], "null": [value]}, "a/b": {"l": [value]}, "new": {"l": [value]}}),
            5,
        );
        let mut doc = json!({"spec": {}});
        let mut builder = PatchBuilder::new(&mut doc);
        builder.insert_json(&path!["spec", "l"], 0, value, text);
        let json = String::from_utf8(builder.into_patch().to_json()).unwrap();
        assert_eq!(json, r#"[{"op":"add","path":"/spec/l","value":[{"name":"x","n":1}]}]"#);
    }

    #[test]
    fn set_if_absent_leaves_what_is_there() {
        check(
            json!({"a": {"b": 1, "n": null}}),
            |b| {
                assert!(!b.set_if_absent(&path!["a", "b"], json!(2)));
                assert!(b.set_if_absent(&path!["a", "n"], json!(3)));
                assert!(b.set_if_absent(&path!["a", "c", "d"], json!(4)));
            },
            json!({"a": {"b": 1, "n": 3, "c": {"d": 4}}}),
            2,
        );
    }
}
