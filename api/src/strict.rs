//! Reading a file's JSON value into typed configuration, strictly: a struct only from a mapping.
//!
//! serde's derived structs also accept a sequence of their fields in order, and `serde_json`'s value
//! deserializer offers one when asked for a struct, so `routes: [[...]]` or `security: [1000]` would be read
//! as a struct's fields by position: a file an admin never meant, accepted silently. [`deserialize`] reads
//! through a wrapper that refuses that and is otherwise `serde_json`'s value deserializer, with the failing
//! field's path (`serde_path_to_error`).

use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Unexpected, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Error, Value};

/// `value` as a `T`, refusing a sequence where a struct is expected; the error carries the field's path.
pub fn deserialize<T: DeserializeOwned>(value: &Value) -> Result<T, serde_path_to_error::Error<Error>> {
    serde_path_to_error::deserialize(Strict(value))
}

/// A JSON value whose structs, at any depth, are read from objects only.
#[derive(Clone, Copy)]
struct Strict<'v>(&'v Value);

impl<'de> IntoDeserializer<'de, Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> de::Deserializer<'de> for Strict<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Strict));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(map) => {
                let mut entries = MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))));
                let value = visitor.visit_map(&mut entries)?;
                entries.end()?;
                Ok(value)
            }
            // A scalar holds no struct: serde_json reads it as it always does.
            scalar => de::Deserializer::deserialize_any(scalar, visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            // `{variant: content}`: the content read strictly too.
            Value::Object(map) => {
                visitor.visit_enum(MapAccessDeserializer::new(MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))))))
            }
            other => de::Deserializer::deserialize_enum(other, name, variants, visitor),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Inner {
        port: u16,
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum Mode {
        Plain,
        With(Inner),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        map: BTreeMap<String, Inner>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    fn error(value: Value) -> String {
        let e = deserialize::<Outer>(&value).unwrap_err();
        format!("{}: {}", e.path(), e.inner())
    }

    #[test]
    fn reads_what_serde_json_reads_from_objects() {
        let value = json!({"inner": {"port": 80}, "list": [{"port": 1, "name": "a"}], "map": {"x": {"port": 2}},
            "mode": {"with": {"port": 3}}});
        let strict: Outer = deserialize(&value).unwrap();
        assert_eq!(strict, Outer::deserialize(&value).unwrap());
        let plain: Outer = deserialize(&json!({"inner": {"port": 80}, "mode": "plain"})).unwrap();
        assert_eq!(plain.mode, Some(Mode::Plain));
    }

    #[test]
    fn a_sequence_is_no_struct_at_any_depth() {
        // serde_json alone reads each of these by position.
        let cases = [
            (json!({"inner": [80]}), "inner: invalid type: sequence, expected struct Inner"),
            (json!({"inner": {"port": 80}, "list": [[1]]}), "list[0]: invalid type: sequence, expected struct Inner"),
            (json!({"inner": {"port": 80}, "map": {"x": [2]}}), "map.x: invalid type: sequence, expected struct Inner"),
            (json!({"inner": {"port": 80}, "mode": {"with": [3]}}), "mode.with: invalid type: sequence, expected struct Inner"),
            (json!([{"port": 80}]), ".: invalid type: sequence, expected struct Outer"),
        ];
        for (value, expected) in cases {
            assert!(Outer::deserialize(&value).is_ok(), "serde_json alone accepts {value}");
            assert_eq!(error(value), expected);
        }
    }

    #[test]
    fn scalars_and_unknown_fields_fail_as_before() {
        assert_eq!(error(json!({"inner": {"port": "80"}})), "inner.port: invalid type: string \"80\", expected u16");
        assert_eq!(error(json!({"inner": {"port": 70000}})), "inner.port: invalid value: integer `70000`, expected u16");
        assert_eq!(error(json!({"inner": {"port": 80, "extra": 1}})), "inner.extra: unknown field `extra`, expected `port` or `name`");
        assert_eq!(error(json!({"inner": 5})), "inner: invalid type: integer `5`, expected struct Inner");
    }
}
