//! Typed JSON of values, as changes, row states and conflicts store and
//! send them: sea-query's own serde form of [`Value`], except for a JSON
//! `null`, which that form writes as it writes SQL NULL (`{"Json":null}`
//! for both). Here a JSON `null` is `{"JsonNull":null}`, so it stays a
//! JSON `null` on every replica; everything else reads and writes exactly
//! as before (text written before this form reads the same).
//!
//! Used through `#[serde(with = ...)]` on the fields that hold values, and
//! by the stores that write value maps directly.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use sea_orm::Value;
use serde::de::{
    self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// The tag of a JSON `null`.
const JSON_NULL: &str = "JsonNull";

/// A value, serialised in the typed form.
pub(crate) struct Typed<'a>(pub(crate) &'a Value);

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Json(Some(j)) if j.is_null() => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(JSON_NULL, &())?;
                m.end()
            }
            v => v.serialize(s),
        }
    }
}

/// A value read in the typed form.
pub(crate) struct Owned(pub(crate) Value);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Owned;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a typed value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Owned, A::Error> {
        let Some(tag) = map.next_key_seed(Tag)? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        if tag == JSON_NULL {
            map.next_value::<IgnoredAny>()?;
            return Ok(Owned(Value::Json(Some(Box::new(serde_json::Value::Null)))));
        }
        // sea-query's own form, from the tag already read on.
        let rest = de::value::MapAccessDeserializer::new(TagFirst {
            tag: Some(tag),
            map,
        });
        Value::deserialize(rest).map(Owned)
    }
}

/// The tags of sea-query's form: a tag read is one of these, not a copy
/// of its text (a change of 7 columns has 7). Another tag is read as text,
/// for sea-query's deserializer to refuse by name.
const TAGS: &[&str] = &[
    JSON_NULL,
    "Bool",
    "TinyInt",
    "SmallInt",
    "Int",
    "BigInt",
    "TinyUnsigned",
    "SmallUnsigned",
    "Unsigned",
    "BigUnsigned",
    "Float",
    "Double",
    "String",
    "Enum",
    "Char",
    "Bytes",
    "Json",
    "ChronoDate",
    "ChronoTime",
    "ChronoDateTime",
    "ChronoDateTimeUtc",
    "ChronoDateTimeLocal",
    "ChronoDateTimeWithTimeZone",
    "Uuid",
    "Decimal",
    "BigDecimal",
    "Array",
    "Vector",
];

/// Reads a value's tag.
struct Tag;

impl<'de> DeserializeSeed<'de> for Tag {
    type Value = Cow<'static, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Tag {
    type Value = Cow<'static, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the tag of a typed value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(match TAGS.iter().find(|t| **t == s) {
            Some(t) => Cow::Borrowed(*t),
            None => Cow::Owned(s.to_owned()),
        })
    }
}

/// A map whose first key was read already: it is given again first.
struct TagFirst<A> {
    tag: Option<Cow<'static, str>>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TagFirst<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.tag.take() {
            Some(tag) => seed
                .deserialize(IntoDeserializer::<A::Error>::into_deserializer(tag))
                .map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// `#[serde(with)]` for one value.
pub(crate) mod value {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        Typed(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Owned::deserialize(d).map(|o| o.0)
    }
}

/// `#[serde(with)]` for an optional value.
pub(crate) mod option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&Typed(v)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Ok(Option::<Owned>::deserialize(d)?.map(|o| o.0))
    }
}

/// `#[serde(with)]` for named values (a change's columns): a sequence of
/// `[name, value]` pairs.
pub(crate) mod columns {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[(String, Value)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (name, value) in v {
            seq.serialize_element(&Pair(name, value))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Value)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, Value)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("named typed values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((name, Owned(v))) = seq.next_element::<(String, Owned)>()? {
                    out.push((name, v));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }

    struct Pair<'a>(&'a String, &'a Value);

    impl Serialize for Pair<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(self.0)?;
            t.serialize_element(&Typed(self.1))?;
            t.end()
        }
    }
}

/// `#[serde(with)]` for a map of values by column (a row state's values).
pub(crate) mod map {
    use super::*;

    #[cfg(test)]
    pub(crate) fn serialize<S: Serializer, K: Serialize>(
        v: &BTreeMap<K, &Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        entries(v.iter().map(|(k, v)| (k, *v)), s)
    }

    /// A map of `entries`, values in the typed form.
    pub(super) fn entries<'a, S: Serializer, K: Serialize>(
        entries: impl ExactSizeIterator<Item = (K, &'a Value)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(entries.len()))?;
        for (k, value) in entries {
            m.serialize_entry(&k, &Typed(value))?;
        }
        m.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Value>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BTreeMap<String, Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("typed values by name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, Owned(v))) = map.next_entry::<String, Owned>()? {
                    out.insert(name, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// `#[serde(with)]` for an owned map of values by column.
pub(crate) mod owned_map {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &BTreeMap<String, Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        super::map::entries(v.iter(), s)
    }

    pub(crate) use super::map::deserialize;
}

/// JSON text of named values (a change's columns), in the typed form.
pub(crate) fn columns_to_text(v: &[(String, Value)]) -> serde_json::Result<String> {
    let mut out = Vec::new();
    columns::serialize(v, &mut serde_json::Serializer::new(&mut out))?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Named values from typed JSON text.
pub(crate) fn columns_from_text(text: &str) -> serde_json::Result<Vec<(String, Value)>> {
    columns::deserialize(&mut serde_json::Deserializer::from_str(text))
}

/// JSON text of values by column, in the typed form.
#[cfg(test)]
pub(crate) fn map_to_text<K: Serialize>(v: &BTreeMap<K, &Value>) -> serde_json::Result<String> {
    let mut out = Vec::new();
    map::serialize(v, &mut serde_json::Serializer::new(&mut out))?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Values by column from typed JSON text.
pub(crate) fn map_from_text(text: &str) -> serde_json::Result<BTreeMap<String, Value>> {
    map::deserialize(&mut serde_json::Deserializer::from_str(text))
}

/// JSON text of a value, in the typed form.
pub(crate) fn to_text(v: &Value) -> serde_json::Result<String> {
    serde_json::to_string(&Typed(v))
}

/// A value from typed JSON text.
pub(crate) fn from_text(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Owned>(text).map(|o| o.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) {
        let text = to_text(&v).unwrap();
        assert_eq!(from_text(&text).unwrap(), v, "{text}");
    }

    #[test]
    fn a_json_null_is_not_sql_null() {
        let null = Value::Json(Some(Box::new(serde_json::Value::Null)));
        assert_eq!(to_text(&null).unwrap(), r#"{"JsonNull":null}"#);
        round_trip(null);
        round_trip(Value::Json(None));
        assert_eq!(to_text(&Value::Json(None)).unwrap(), r#"{"Json":null}"#);
    }

    #[test]
    fn every_other_value_keeps_sea_querys_form() {
        for v in [
            Value::Int(Some(-3)),
            Value::Int(None),
            Value::String(Some("ä \"q\"".into())),
            Value::Double(Some(8.227533489012526e-10)),
            Value::Bytes(Some(vec![0, 255])),
            Value::Json(Some(Box::new(serde_json::json!({"a": [1, null]})))),
            Value::Uuid(Some(uuid::Uuid::nil())),
            Value::ChronoDateTimeUtc(Some(chrono::DateTime::UNIX_EPOCH)),
        ] {
            assert_eq!(to_text(&v).unwrap(), serde_json::to_string(&v).unwrap());
            round_trip(v.clone());
            // Text of sea-query's form reads the same.
            assert_eq!(from_text(&serde_json::to_string(&v).unwrap()).unwrap(), v);
        }
    }

    #[test]
    fn columns_and_maps_keep_a_json_null() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct S {
            #[serde(with = "columns")]
            c: Vec<(String, Value)>,
            #[serde(with = "owned_map")]
            m: BTreeMap<String, Value>,
            #[serde(with = "option")]
            o: Option<Value>,
        }
        let null = Value::Json(Some(Box::new(serde_json::Value::Null)));
        let s = S {
            c: vec![("a".into(), null.clone()), ("b".into(), Value::Json(None))],
            m: [("x".to_owned(), null.clone())].into(),
            o: Some(null),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<S>(&text).unwrap(), s);
        // The form written before: pairs as arrays, maps as objects.
        let old = r#"{"c":[["a",{"Int":1}]],"m":{"x":{"String":"s"}},"o":null}"#;
        let read: S = serde_json::from_str(old).unwrap();
        assert_eq!(read.c, vec![("a".to_owned(), Value::Int(Some(1)))]);
        assert_eq!(read.o, None);
    }
}
