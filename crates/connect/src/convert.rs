//! Converters: how a record's key or value [`Data`] becomes the bytes stored in a topic and
//! back (`key.converter`, `value.converter`), under Kafka Connect's class names so that
//! connector configs written for Kafka read the same here.
//!
//! Raw bytes travel inside [`Data`] as standard base64 strings with a `bytes` schema, which is
//! how Kafka's JsonConverter writes them too: a value read by one converter can be written
//! by another without a special case.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::{ConnectError, Data};

const STRING_CLASS: &str = "org.apache.kafka.connect.storage.StringConverter";
const BYTES_CLASS: &str = "org.apache.kafka.connect.converters.ByteArrayConverter";
const JSON_CLASS: &str = "org.apache.kafka.connect.json.JsonConverter";

/// The converters, by Kafka class name, for `connect plugins`.
pub const CONVERTERS: &[(&str, &str)] = &[
    (STRING_CLASS, "UTF-8 text; values that are not strings are written as their JSON text (short name: string)."),
    (BYTES_CLASS, "Raw bytes, passed through unchanged (short name: bytes)."),
    (
        JSON_CLASS,
        "JSON; with schemas.enable=true inside Kafka's {\"schema\": ..., \"payload\": ...} envelope (short name: json).",
    ),
];

/// Turns [`Data`] into the bytes of a record's key or value and back. `None` bytes (a
/// tombstone, or a record without a key) and `Value::Null` stand for each other.
pub trait Converter: Send + Sync {
    fn to_bytes(&self, data: &Data) -> Result<Option<Bytes>, ConnectError>;
    fn to_data(&self, bytes: Option<&[u8]>) -> Result<Data, ConnectError>;
}

/// The converter a `key.converter` or `value.converter` names, by Kafka class or short name.
pub fn converter(class: &str, schemas_enable: bool) -> Result<Box<dyn Converter>, ConnectError> {
    match class.trim() {
        "string" | STRING_CLASS => Ok(Box::new(StringConverter)),
        "bytes" | BYTES_CLASS => Ok(Box::new(BytesConverter)),
        "json" | JSON_CLASS => Ok(Box::new(JsonConverter { schemas_enable })),
        other => Err(ConnectError::config(
            "converter",
            format!("unknown converter '{other}' (string, bytes, json or their Kafka class names)"),
        )),
    }
}

/// Kafka's StringConverter: text in, text out; the schema is not kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringConverter;

impl Converter for StringConverter {
    fn to_bytes(&self, data: &Data) -> Result<Option<Bytes>, ConnectError> {
        Ok(match &data.value {
            Value::Null => None,
            Value::String(s) => Some(Bytes::from(s.clone())),
            other => Some(Bytes::from(other.to_string())),
        })
    }

    fn to_data(&self, bytes: Option<&[u8]>) -> Result<Data, ConnectError> {
        let Some(bytes) = bytes else { return Ok(Data::plain(Value::Null)) };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ConnectError::Data(format!("StringConverter: the bytes are not UTF-8 text: {e}")))?;
        Ok(Data::plain(Value::String(text.to_owned())))
    }
}

/// Kafka's ByteArrayConverter: the bytes as they are, carried as base64 in [`Data`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesConverter;

fn bytes_schema() -> Value {
    json!({"type": "bytes", "optional": true})
}

impl Converter for BytesConverter {
    fn to_bytes(&self, data: &Data) -> Result<Option<Bytes>, ConnectError> {
        match &data.value {
            Value::Null => Ok(None),
            Value::String(s) => base64_decode(s)
                .map(|b| Some(Bytes::from(b)))
                .ok_or_else(|| ConnectError::Data("ByteArrayConverter: the value is not valid base64".to_string())),
            other => Err(ConnectError::Data(format!(
                "ByteArrayConverter needs bytes (a base64 string), got {}",
                kind(other)
            ))),
        }
    }

    fn to_data(&self, bytes: Option<&[u8]>) -> Result<Data, ConnectError> {
        let value = bytes.map_or(Value::Null, |b| Value::String(base64_encode(b)));
        Ok(Data { schema: Some(bytes_schema()), value })
    }
}

/// Kafka's JsonConverter. With `schemas_enable`, each key or value is written inside the
/// `{"schema": ..., "payload": ...}` envelope (its schema inferred when the data has none)
/// and only that envelope is read back.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonConverter {
    pub schemas_enable: bool,
}

const NOT_AN_ENVELOPE: &str = "JsonConverter with schemas.enable requires \"schema\" and \"payload\" fields and may not \
     contain additional fields. If you are trying to deserialize plain JSON data, set schemas.enable=false in your \
     converter configuration.";

impl Converter for JsonConverter {
    fn to_bytes(&self, data: &Data) -> Result<Option<Bytes>, ConnectError> {
        if data.value.is_null() {
            return Ok(None);
        }
        let mut out = String::new();
        if self.schemas_enable {
            let schema = data.schema.as_ref().map_or_else(|| Cow::Owned(infer_schema(&data.value)), Cow::Borrowed);
            let schema: &Value = &schema;
            // Written by hand, not through serde_json's sorted maps, so that keys come in the
            // order Kafka writes them and a struct's fields in the schema's order.
            out.push_str("{\"schema\":");
            write_schema(&mut out, schema);
            out.push_str(",\"payload\":");
            write_value(&mut out, Some(schema), &data.value);
            out.push('}');
        } else {
            write_value(&mut out, data.schema.as_ref(), &data.value);
        }
        Ok(Some(Bytes::from(out)))
    }

    fn to_data(&self, bytes: Option<&[u8]>) -> Result<Data, ConnectError> {
        let Some(bytes) = bytes else { return Ok(Data::plain(Value::Null)) };
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| ConnectError::Data(format!("JsonConverter: the bytes are not JSON: {e}")))?;
        if !self.schemas_enable {
            return Ok(Data::plain(json));
        }
        match json {
            Value::Object(mut m) if m.len() == 2 && m.contains_key("schema") && m.contains_key("payload") => {
                // A null schema is Kafka's way of writing a schemaless value in the envelope.
                let schema = m.remove("schema").filter(|s| !s.is_null());
                let value = m.remove("payload").unwrap_or(Value::Null);
                Ok(Data { schema, value })
            }
            _ => Err(ConnectError::Data(NOT_AN_ENVELOPE.to_string())),
        }
    }
}

/// A schema for a value that came without one: every part optional, integers int64, a
/// struct's fields in the object's key order, an array's items typed by its first element.
fn infer_schema(value: &Value) -> Value {
    let simple = |ty: &str| json!({"type": ty, "optional": true});
    match value {
        Value::Null | Value::String(_) => simple("string"),
        Value::Bool(_) => simple("boolean"),
        Value::Number(n) if n.is_f64() => simple("float64"),
        Value::Number(_) => simple("int64"),
        Value::Array(items) => {
            let item = items.first().map_or_else(|| simple("string"), infer_schema);
            json!({"type": "array", "items": item, "optional": true})
        }
        Value::Object(map) => {
            let fields: Vec<Value> = map
                .iter()
                .map(|(name, v)| {
                    let mut field = infer_schema(v);
                    if let Value::Object(f) = &mut field {
                        f.insert("field".to_string(), Value::from(name.as_str()));
                    }
                    field
                })
                .collect();
            json!({"type": "struct", "fields": fields, "optional": true})
        }
    }
}

/// The order in which Kafka's JsonConverter writes a schema's keys (a struct field's own
/// name last); keys it does not know follow, sorted.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "items",
    "keys",
    "values",
    "fields",
    "optional",
    "name",
    "version",
    "doc",
    "parameters",
    "default",
    "field",
];

fn write_schema(out: &mut String, schema: &Value) {
    let Value::Object(map) = schema else {
        out.push_str(&schema.to_string());
        return;
    };
    write_object(out, ordered(map, SCHEMA_KEYS), |out, key, v| match (key, v) {
        ("fields", Value::Array(fields)) => write_array(out, fields, write_schema),
        ("items" | "keys" | "values", _) => write_schema(out, v),
        _ => out.push_str(&v.to_string()),
    });
}

/// Compact JSON, with a struct's fields in its schema's order when the schema is known.
fn write_value(out: &mut String, schema: Option<&Value>, value: &Value) {
    match value {
        Value::Object(map) => {
            let fields = schema.and_then(|s| s.get("fields")).and_then(Value::as_array).map(Vec::as_slice);
            let fields = fields.unwrap_or_default();
            let names: Vec<&str> = fields.iter().filter_map(field_name).collect();
            // A map's entries all share its `values` schema.
            let values = schema.and_then(|s| s.get("values"));
            write_object(out, ordered(map, &names), |out, key, v| {
                let child = fields.iter().find(|f| field_name(f) == Some(key)).or(values);
                write_value(out, child, v);
            });
        }
        Value::Array(items) => {
            let item = schema.and_then(|s| s.get("items"));
            write_array(out, items, |out, v| write_value(out, item, v));
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A map's entries with the keys in `first` first, in that order, then the others.
fn ordered<'a>(map: &'a Map<String, Value>, first: &[&str]) -> Vec<(&'a str, &'a Value)> {
    let mut entries: Vec<(&str, &Value)> =
        first.iter().filter_map(|k| map.get_key_value(*k)).map(|(k, v)| (k.as_str(), v)).collect();
    entries.extend(map.iter().map(|(k, v)| (k.as_str(), v)).filter(|(k, _)| !first.contains(k)));
    entries
}

fn write_object<'a>(
    out: &mut String,
    entries: Vec<(&'a str, &'a Value)>,
    mut write: impl FnMut(&mut String, &'a str, &'a Value),
) {
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(k).to_string());
        out.push(':');
        write(out, k, v);
    }
    out.push('}');
}

fn write_array<'a>(out: &mut String, items: &'a [Value], mut write: impl FnMut(&mut String, &'a Value)) {
    out.push('[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, v);
    }
    out.push(']');
}

/// The name of a struct schema's field entry.
pub(crate) fn field_name(field: &Value) -> Option<&str> {
    field.get("field").and_then(Value::as_str)
}

/// What a JSON value is, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 section 4), as Java's `Base64.getEncoder()`.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding may be left out, as Java's `Base64.getDecoder()` allows.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    // One leftover character cannot hold a byte; padding must complete the last quantum.
    if body.len() % 4 == 1 || (padding > 0 && body.len() % 4 + padding != 4) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(c: &dyn Converter, data: &Data) -> Vec<u8> {
        c.to_bytes(data).unwrap().unwrap().to_vec()
    }

    fn is_data_error(r: Result<Data, ConnectError>, needle: &str) -> bool {
        matches!(r, Err(ConnectError::Data(m)) if m.contains(needle))
    }

    #[test]
    fn string_converter_round_trips_text_and_writes_other_values_as_json() {
        let c = StringConverter;
        let data = Data::plain(json!("héllo"));
        assert_eq!(String::from_utf8(written(&c, &data)).unwrap(), "héllo");
        assert_eq!(c.to_data(Some("héllo".as_bytes())).unwrap(), data);
        assert_eq!(written(&c, &Data::plain(json!({"a": [1, true]}))), b"{\"a\":[1,true]}");
        assert!(is_data_error(c.to_data(Some(&[0x66, 0xff])), "not UTF-8"));
    }

    #[test]
    fn bytes_converter_carries_bytes_as_base64() {
        let c = BytesConverter;
        let data = c.to_data(Some(&[0, 1, 2, 255])).unwrap();
        assert_eq!(data, Data { schema: Some(json!({"type": "bytes", "optional": true})), value: json!("AAEC/w==") });
        assert_eq!(written(&c, &data), [0, 1, 2, 255]);
        assert!(c.to_bytes(&Data::plain(json!("not base64!"))).is_err());
        assert!(c.to_bytes(&Data::plain(json!(12))).is_err());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_decode("Zm8").as_deref(), Some(&b"fo"[..]));
        for bad in ["Z", "Zm9v!", "Zg=", "Zg===", "Z==="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_converter_without_schemas_is_plain_json() {
        let c = JsonConverter { schemas_enable: false };
        let data = Data::plain(json!({"id": 7, "tags": ["a", "b"], "nested": {"x": null}}));
        let bytes = written(&c, &data);
        assert_eq!(bytes, b"{\"id\":7,\"nested\":{\"x\":null},\"tags\":[\"a\",\"b\"]}");
        assert_eq!(c.to_data(Some(&bytes)).unwrap(), data);
        assert!(is_data_error(c.to_data(Some(b"{oops")), "not JSON"));
    }

    #[test]
    fn json_converter_writes_a_struct_envelope_as_kafka_does() {
        let c = JsonConverter { schemas_enable: true };
        let data = Data {
            schema: Some(json!({
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": false, "field": "name"},
                    {"type": "int32", "optional": true, "field": "age"},
                    {"type": "bytes", "optional": true, "field": "photo"}
                ],
                "optional": false,
                "name": "com.example.Person"
            })),
            value: json!({"name": "Ada", "age": 36, "photo": "AAE="}),
        };
        let bytes = written(&c, &data);
        let expected = concat!(
            r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"name"},"#,
            r#"{"type":"int32","optional":true,"field":"age"},{"type":"bytes","optional":true,"field":"photo"}],"#,
            r#""optional":false,"name":"com.example.Person"},"payload":{"name":"Ada","age":36,"photo":"AAE="}}"#
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
        assert_eq!(c.to_data(Some(&bytes)).unwrap(), data);
    }

    #[test]
    fn json_converter_infers_a_schema_when_the_data_has_none() {
        let c = JsonConverter { schemas_enable: true };
        let bytes = written(&c, &Data::plain(json!({"id": 7, "tags": ["a"], "score": 1.5, "ok": true})));
        let expected = concat!(
            r#"{"schema":{"type":"struct","fields":[{"type":"int64","optional":true,"field":"id"},"#,
            r#"{"type":"boolean","optional":true,"field":"ok"},{"type":"float64","optional":true,"field":"score"},"#,
            r#"{"type":"array","items":{"type":"string","optional":true},"optional":true,"field":"tags"}],"#,
            r#""optional":true},"payload":{"id":7,"ok":true,"score":1.5,"tags":["a"]}}"#
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
        assert_eq!(
            written(&c, &Data::plain(json!("x"))),
            br#"{"schema":{"type":"string","optional":true},"payload":"x"}"#
        );
    }

    #[test]
    fn json_converter_with_schemas_reads_only_the_envelope() {
        let c = JsonConverter { schemas_enable: true };
        assert!(is_data_error(c.to_data(Some(br#"{"id":1}"#)), "schemas.enable=false"));
        assert!(is_data_error(c.to_data(Some(br#"{"schema":null,"payload":1,"x":2}"#)), "schemas.enable=false"));
        assert_eq!(c.to_data(Some(br#"{"schema":null,"payload":{"id":1}}"#)).unwrap(), Data::plain(json!({"id": 1})));
    }

    #[test]
    fn tombstones_are_null_both_ways() {
        for (class, _) in CONVERTERS {
            let c = converter(class, true).unwrap();
            assert_eq!(c.to_bytes(&Data::plain(Value::Null)).unwrap(), None, "{class}");
            assert_eq!(c.to_data(None).unwrap().value, Value::Null, "{class}");
        }
    }

    #[test]
    fn converters_answer_to_class_and_short_names_only() {
        for name in ["string", "bytes", "json", STRING_CLASS, BYTES_CLASS, JSON_CLASS] {
            assert!(converter(name, false).is_ok(), "{name}");
        }
        assert_eq!(
            converter("avro", false).err(),
            Some(ConnectError::config(
                "converter",
                "unknown converter 'avro' (string, bytes, json or their Kafka class names)"
            ))
        );
    }
}
