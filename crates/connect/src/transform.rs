//! Single message transforms (SMTs) and their predicates: Kafka Connect's record-at-a-time
//! reshaping, with Kafka's class names, config keys and meaning, so that the `transforms.*`
//! and `predicates.*` keys of a connector config written for Kafka run unchanged.
//!
//! Values are JSON: a Kafka struct is an object. When a key or value carries a schema, the
//! transforms that add, drop or rename fields keep its `fields` list in step; without one
//! they work on objects alone. As in Kafka, the field transforms pass tombstones (a null key
//! or value) through untouched.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::convert::{field_name, kind};
use crate::{ConnectError, ConnectRecord, Data};

/// Reshapes one record; `None` drops it (as Filter does).
pub trait Transform: Send + Sync {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError>;
}

/// A condition on a record, deciding whether a transform applies to it.
pub trait Predicate: Send + Sync {
    fn test(&self, r: &ConnectRecord) -> bool;
}

/// A transform applied only to the records its predicate holds for (or, negated, does not),
/// as Kafka does for `transforms.<alias>.predicate` and `.negate`.
pub struct Conditional {
    pub inner: Box<dyn Transform>,
    pub predicate: Box<dyn Predicate>,
    pub negate: bool,
}

impl Transform for Conditional {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        if self.predicate.test(&r) != self.negate { self.inner.apply(r) } else { Ok(Some(r)) }
    }
}

const PACKAGE: &str = "org.apache.kafka.connect.transforms.";
const PREDICATE_PACKAGE: &str = "org.apache.kafka.connect.transforms.predicates.";

/// The transforms, by Kafka class name, for `connect plugins`.
pub const TRANSFORMS: &[(&str, &str)] = &[
    (
        "org.apache.kafka.connect.transforms.InsertField$Key",
        "Adds the topic, partition, offset, timestamp or a static value as key fields (topic.field, partition.field, offset.field, timestamp.field, static.field, static.value).",
    ),
    ("org.apache.kafka.connect.transforms.InsertField$Value", "As InsertField$Key, on the value."),
    (
        "org.apache.kafka.connect.transforms.ReplaceField$Key",
        "Keeps (include), drops (exclude) and renames (renames=old:new,...) key fields.",
    ),
    ("org.apache.kafka.connect.transforms.ReplaceField$Value", "As ReplaceField$Key, on the value."),
    (
        "org.apache.kafka.connect.transforms.MaskField$Key",
        "Replaces key fields with their type's empty value, or with replacement.",
    ),
    ("org.apache.kafka.connect.transforms.MaskField$Value", "As MaskField$Key, on the value."),
    ("org.apache.kafka.connect.transforms.ValueToKey", "Makes the key an object of the value's fields (fields)."),
    ("org.apache.kafka.connect.transforms.ExtractField$Key", "Replaces the key with one of its fields (field)."),
    ("org.apache.kafka.connect.transforms.ExtractField$Value", "Replaces the value with one of its fields (field)."),
    (
        "org.apache.kafka.connect.transforms.TimestampRouter",
        "Renames the topic to topic.format with the record's UTC timestamp in timestamp.format.",
    ),
    (
        "org.apache.kafka.connect.transforms.RegexRouter",
        "Renames a topic that wholly matches regex to replacement ($1 for groups).",
    ),
    ("org.apache.kafka.connect.transforms.Filter", "Drops the record; used with a predicate."),
    (
        DEBEZIUM_UNWRAP,
        "Debezium's change events to rows: the value becomes its after state; a delete is dropped (delete.handling.mode=drop), kept as its before state with __deleted=true (rewrite) or made a null value (none); tombstones dropped unless drop.tombstones=false.",
    ),
];

/// Debezium's transform from change events to row states.
const DEBEZIUM_UNWRAP: &str = "io.debezium.transforms.ExtractNewRecordState";

/// The predicates, by Kafka class name, for `connect plugins`.
pub const PREDICATES: &[(&str, &str)] = &[
    (
        "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
        "The topic wholly matches the regular expression pattern.",
    ),
    ("org.apache.kafka.connect.transforms.predicates.HasHeaderKey", "The record has a header called name."),
    ("org.apache.kafka.connect.transforms.predicates.RecordIsTombstone", "The record's value is null."),
];

/// Builds the transform `transforms.<alias>.type` names from its own keys (`props`, with
/// the `transforms.<alias>.` prefix removed). Keys it does not use are ignored, as in Kafka.
pub fn build(alias: &str, props: &BTreeMap<String, String>) -> Result<Box<dyn Transform>, ConnectError> {
    let p = Props { prefix: format!("transforms.{alias}."), map: props };
    let class = p.required("type")?;
    let unknown = || p.err("type", format!("unknown transform '{class}' (known: {})", short_names(TRANSFORMS)));
    if class == DEBEZIUM_UNWRAP {
        return Ok(Box::new(ExtractNewRecordState::new(&p)?));
    }
    let Some(name) = class.strip_prefix(PACKAGE) else { return Err(unknown()) };
    let (base, side) = match name.split_once('$') {
        None => (name, None),
        Some((base, "Key")) => (base, Some(Side::Key)),
        Some((base, "Value")) => (base, Some(Side::Value)),
        Some(_) => return Err(unknown()),
    };
    let transform: Box<dyn Transform> = match (base, side) {
        ("InsertField", Some(side)) => Box::new(InsertField::new(side, &p)),
        ("ReplaceField", Some(side)) => Box::new(ReplaceField::new(side, &p)?),
        ("MaskField", Some(side)) => Box::new(MaskField {
            side,
            fields: p.required_list("fields")?,
            replacement: p.get("replacement").map(str::to_owned),
        }),
        ("ExtractField", Some(side)) => Box::new(ExtractField::new(side, &p)?),
        ("ValueToKey", None) => Box::new(ValueToKey { fields: p.required_list("fields")? }),
        ("TimestampRouter", None) => Box::new(TimestampRouter::new(&p)?),
        ("RegexRouter", None) => Box::new(RegexRouter::new(&p)?),
        ("Filter", None) => Box::new(Filter),
        _ => return Err(unknown()),
    };
    Ok(transform)
}

/// Builds the predicate `predicates.<name>.type` names from its own keys (`props`, with the
/// `predicates.<name>.` prefix removed).
pub fn predicate(name: &str, props: &BTreeMap<String, String>) -> Result<Box<dyn Predicate>, ConnectError> {
    let p = Props { prefix: format!("predicates.{name}."), map: props };
    let class = p.required("type")?;
    match class.strip_prefix(PREDICATE_PACKAGE) {
        Some("TopicNameMatches") => {
            let pattern = p.required("pattern")?;
            let regex =
                anchored(pattern).map_err(|e| p.err("pattern", format!("not a valid regular expression: {e}")))?;
            Ok(Box::new(TopicNameMatches(regex)))
        }
        Some("HasHeaderKey") => Ok(Box::new(HasHeaderKey(p.required("name")?.to_owned()))),
        Some("RecordIsTombstone") => Ok(Box::new(RecordIsTombstone)),
        _ => Err(p.err("type", format!("unknown predicate '{class}' (known: {})", short_names(PREDICATES)))),
    }
}

/// The last part of each class name, for error messages.
fn short_names(list: &[(&str, &str)]) -> String {
    list.iter().map(|&(class, _)| class.rsplit('.').next().unwrap_or(class)).collect::<Vec<_>>().join(", ")
}

/// A transform's or predicate's own keys, naming the full key in errors.
struct Props<'a> {
    prefix: String,
    map: &'a BTreeMap<String, String>,
}

impl<'a> Props<'a> {
    fn err(&self, key: &str, reason: impl Into<String>) -> ConnectError {
        ConnectError::config(format!("{}{key}", self.prefix), reason)
    }

    /// The trimmed value, `None` when absent or empty (Kafka trims its string configs).
    fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str) -> Result<&'a str, ConnectError> {
        self.get(key).ok_or_else(|| self.err(key, "is required"))
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    fn required_list(&self, key: &str) -> Result<Vec<String>, ConnectError> {
        let list = self.list(key);
        if list.is_empty() {
            Err(self.err(key, "is required: a comma-separated list of field names"))
        } else {
            Ok(list)
        }
    }
}

/// Which half of a record a `$Key` or `$Value` transform works on.
#[derive(Debug, Clone, Copy)]
enum Side {
    Key,
    Value,
}

impl Side {
    /// The transform's name in errors, e.g. `InsertField$Value`.
    fn who(self, transform: &str) -> String {
        match self {
            Self::Key => format!("{transform}$Key"),
            Self::Value => format!("{transform}$Value"),
        }
    }

    /// Runs `edit` on the key or value, passing a tombstone (null) through untouched.
    fn edit(
        self,
        mut r: ConnectRecord,
        edit: impl FnOnce(&mut Data) -> Result<(), ConnectError>,
    ) -> Result<Option<ConnectRecord>, ConnectError> {
        let data = match self {
            Self::Key => &mut r.key,
            Self::Value => &mut r.value,
        };
        if !data.value.is_null() {
            edit(data)?;
        }
        Ok(Some(r))
    }
}

fn data_error(who: &str, what: impl std::fmt::Display) -> ConnectError {
    ConnectError::Data(format!("{who}: {what}"))
}

fn not_an_object(who: &str, value: &Value) -> ConnectError {
    data_error(who, format!("needs an object (a struct or map), got {}", kind(value)))
}

fn object_mut<'a>(who: &str, value: &'a mut Value) -> Result<&'a mut Map<String, Value>, ConnectError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(not_an_object(who, other)),
    }
}

fn schema_type(schema: &Value) -> String {
    schema.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned()
}

/// A struct schema's field entries.
fn fields<'a>(who: &str, schema: &'a Value) -> Result<&'a [Value], ConnectError> {
    match schema.get("fields").and_then(Value::as_array) {
        Some(fields) if schema_type(schema) == "struct" => Ok(fields.as_slice()),
        _ => Err(data_error(who, format!("needs a struct schema, got type '{}'", schema_type(schema)))),
    }
}

fn fields_mut<'a>(who: &str, schema: &'a mut Value) -> Result<&'a mut Vec<Value>, ConnectError> {
    let ty = schema_type(schema);
    match schema.get_mut("fields").and_then(Value::as_array_mut) {
        Some(fields) if ty == "struct" => Ok(fields),
        _ => Err(data_error(who, format!("needs a struct schema, got type '{ty}'"))),
    }
}

/// A field InsertField adds: `name!` is required in the schema, `name?` or `name` optional.
struct Target {
    name: String,
    optional: bool,
}

impl Target {
    fn parse(spec: &str) -> Self {
        match spec.strip_suffix('!') {
            Some(name) => Self { name: name.to_owned(), optional: false },
            None => Self { name: spec.strip_suffix('?').unwrap_or(spec).to_owned(), optional: true },
        }
    }

    fn entry(&self, ty: &str) -> Value {
        json!({"type": ty, "optional": self.optional, "field": self.name})
    }
}

struct InsertField {
    side: Side,
    topic: Option<Target>,
    partition: Option<Target>,
    offset: Option<Target>,
    timestamp: Option<Target>,
    static_field: Option<Target>,
    static_value: Option<String>,
}

impl InsertField {
    fn new(side: Side, p: &Props) -> Self {
        let target = |key: &str| p.get(key).map(Target::parse);
        Self {
            side,
            topic: target("topic.field"),
            partition: target("partition.field"),
            offset: target("offset.field"),
            timestamp: target("timestamp.field"),
            static_field: target("static.field"),
            static_value: p.get("static.value").map(str::to_owned),
        }
    }
}

impl Transform for InsertField {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        let who = self.side.who("InsertField");
        let (topic, partition, offset, timestamp) = (r.topic.clone(), r.partition, r.offset, r.timestamp_ms);
        self.side.edit(r, |data| {
            // (name, value, schema entry) of each field added, in Kafka's order.
            let mut added: Vec<(&str, Value, Value)> = Vec::new();
            if let Some(t) = &self.topic {
                added.push((t.name.as_str(), Value::from(topic), t.entry("string")));
            }
            if let Some(t) = &self.partition {
                added.push((t.name.as_str(), partition.map_or(Value::Null, Value::from), t.entry("int32")));
            }
            if let Some(t) = &self.offset {
                // Only records read from a topic have an offset, as Kafka only allows it on sinks.
                let offset = offset.ok_or_else(|| {
                    data_error(&who, "offset.field needs a record read from a topic (a sink's); this one has no offset")
                })?;
                added.push((t.name.as_str(), Value::from(offset), t.entry("int64")));
            }
            if let Some(t) = &self.timestamp {
                let entry = json!({
                    "type": "int64", "optional": t.optional, "name": "org.apache.kafka.connect.data.Timestamp",
                    "version": 1, "field": t.name
                });
                added.push((t.name.as_str(), Value::from(timestamp), entry));
            }
            if let Some(t) = &self.static_field {
                let value = self.static_value.clone().map_or(Value::Null, Value::from);
                added.push((t.name.as_str(), value, t.entry("string")));
            }
            let map = object_mut(&who, &mut data.value)?;
            if let Some(schema) = &mut data.schema {
                let fields = fields_mut(&who, schema)?;
                for (name, _, entry) in &added {
                    fields.retain(|f| field_name(f) != Some(*name));
                    fields.push(entry.clone());
                }
            }
            map.extend(added.into_iter().map(|(name, value, _)| (name.to_owned(), value)));
            Ok(())
        })
    }
}

struct ReplaceField {
    side: Side,
    include: Vec<String>,
    exclude: Vec<String>,
    renames: Vec<(String, String)>,
}

impl ReplaceField {
    fn new(side: Side, p: &Props) -> Result<Self, ConnectError> {
        // Kafka 3 renamed whitelist and blacklist; the old names still work.
        let include = if p.get("include").is_some() { p.list("include") } else { p.list("whitelist") };
        let exclude = if p.get("exclude").is_some() { p.list("exclude") } else { p.list("blacklist") };
        let renames: Vec<(String, String)> = p
            .list("renames")
            .iter()
            .map(|pair| match pair.split_once(':') {
                Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
                    Ok((old.trim().to_owned(), new.trim().to_owned()))
                }
                _ => Err(p.err("renames", format!("invalid rename mapping '{pair}': expected old:new"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { side, include, exclude, renames })
    }

    fn keeps(&self, name: &str) -> bool {
        !self.exclude.iter().any(|f| f == name) && (self.include.is_empty() || self.include.iter().any(|f| f == name))
    }

    fn renamed<'s>(&'s self, name: &'s str) -> &'s str {
        self.renames.iter().find(|(old, _)| old == name).map_or(name, |(_, new)| new.as_str())
    }
}

impl Transform for ReplaceField {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        let who = self.side.who("ReplaceField");
        self.side.edit(r, |data| {
            let map = object_mut(&who, &mut data.value)?;
            *map = std::mem::take(map)
                .into_iter()
                .filter(|(name, _)| self.keeps(name))
                .map(|(name, value)| (self.renamed(&name).to_owned(), value))
                .collect();
            if let Some(schema) = &mut data.schema {
                let fields = fields_mut(&who, schema)?;
                fields.retain(|f| field_name(f).is_some_and(|name| self.keeps(name)));
                for f in fields.iter_mut() {
                    let renamed = field_name(f).map(|name| self.renamed(name).to_owned());
                    if let (Some(name), Value::Object(entry)) = (renamed, f) {
                        entry.insert("field".to_owned(), Value::String(name));
                    }
                }
            }
            Ok(())
        })
    }
}

struct MaskField {
    side: Side,
    fields: Vec<String>,
    replacement: Option<String>,
}

impl MaskField {
    /// Kafka's masks: the type's empty value, or the replacement for strings and numbers.
    fn masked(&self, who: &str, name: &str, value: &Value) -> Result<Value, ConnectError> {
        let Some(replacement) = &self.replacement else {
            return Ok(match value {
                Value::Null => Value::Null,
                Value::Bool(_) => Value::Bool(false),
                Value::Number(n) if n.is_f64() => json!(0.0),
                Value::Number(_) => json!(0),
                Value::String(_) => json!(""),
                Value::Array(_) => json!([]),
                Value::Object(_) => json!({}),
            });
        };
        let unusable =
            || data_error(who, format!("replacement '{replacement}' cannot mask field '{name}' ({})", kind(value)));
        match value {
            Value::Null => Ok(Value::Null),
            Value::String(_) => Ok(Value::String(replacement.clone())),
            Value::Number(n) if n.is_f64() => replacement
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(unusable),
            Value::Number(_) => replacement.parse::<i64>().map(Value::from).map_err(|_| unusable()),
            _ => Err(unusable()),
        }
    }
}

impl Transform for MaskField {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        let who = self.side.who("MaskField");
        self.side.edit(r, |data| {
            let map = object_mut(&who, &mut data.value)?;
            for name in &self.fields {
                if let Some(value) = map.get_mut(name) {
                    *value = self.masked(&who, name, value)?;
                }
            }
            Ok(())
        })
    }
}

struct ValueToKey {
    fields: Vec<String>,
}

const VALUE_TO_KEY: &str = "ValueToKey";

impl ValueToKey {
    /// A struct of the value schema's entries for the key's fields.
    fn key_schema(&self, value_schema: &Value) -> Result<Value, ConnectError> {
        let entries = fields(VALUE_TO_KEY, value_schema)?;
        let picked = self
            .fields
            .iter()
            .map(|name| {
                let entry = entries.iter().find(|f| field_name(f) == Some(name.as_str()));
                entry
                    .cloned()
                    .ok_or_else(|| data_error(VALUE_TO_KEY, format!("field '{name}' is not in the value's schema")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({"type": "struct", "fields": picked, "optional": false}))
    }
}

impl Transform for ValueToKey {
    fn apply(&self, mut r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        if r.value.value.is_null() {
            return Ok(Some(r));
        }
        let Value::Object(value) = &r.value.value else { return Err(not_an_object(VALUE_TO_KEY, &r.value.value)) };
        let key: Map<String, Value> =
            self.fields.iter().map(|f| (f.clone(), value.get(f).cloned().unwrap_or(Value::Null))).collect();
        let schema = r.value.schema.as_ref().map(|s| self.key_schema(s)).transpose()?;
        r.key = Data { schema, value: Value::Object(key) };
        Ok(Some(r))
    }
}

struct ExtractField {
    side: Side,
    /// The field, or with `field.syntax.version=V2` (KIP-821) its dotted path.
    path: Vec<String>,
}

impl ExtractField {
    fn new(side: Side, p: &Props) -> Result<Self, ConnectError> {
        let field = p.required("field")?;
        let path = match p.get("field.syntax.version") {
            None => vec![field.to_owned()],
            Some(v) if v.eq_ignore_ascii_case("V1") => vec![field.to_owned()],
            Some(v) if v.eq_ignore_ascii_case("V2") => field.split('.').map(str::to_owned).collect(),
            Some(v) => return Err(p.err("field.syntax.version", format!("'{v}' is not V1 or V2"))),
        };
        Ok(Self { side, path })
    }
}

impl Transform for ExtractField {
    fn apply(&self, r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        let who = self.side.who("ExtractField");
        self.side.edit(r, |data| {
            if !data.value.is_object() {
                return Err(not_an_object(&who, &data.value));
            }
            // A missing field extracts as null, as in Kafka without a schema.
            let value =
                self.path.iter().try_fold(&data.value, |v, name| v.get(name.as_str())).cloned().unwrap_or(Value::Null);
            let schema = match &data.schema {
                None => None,
                Some(schema) => {
                    let mut field = schema;
                    for name in &self.path {
                        field = fields(&who, field)?
                            .iter()
                            .find(|f| field_name(f) == Some(name.as_str()))
                            .ok_or_else(|| data_error(&who, format!("field '{name}' is not in the schema")))?;
                    }
                    let mut field = field.clone();
                    if let Value::Object(entry) = &mut field {
                        entry.remove("field");
                    }
                    Some(field)
                }
            };
            *data = Data { schema, value };
            Ok(())
        })
    }
}

/// A piece of a SimpleDateFormat pattern: literal text, or a field letter and its width.
enum Piece {
    Text(String),
    Field(char, usize),
}

struct TimestampRouter {
    topic_format: String,
    timestamp_format: Vec<Piece>,
}

impl TimestampRouter {
    fn new(p: &Props) -> Result<Self, ConnectError> {
        let topic_format = p.get("topic.format").unwrap_or("${topic}-${timestamp}").to_owned();
        let pattern = p.get("timestamp.format").unwrap_or("yyyyMMdd");
        let timestamp_format = date_pattern(pattern).map_err(|reason| p.err("timestamp.format", reason))?;
        Ok(Self { topic_format, timestamp_format })
    }
}

impl Transform for TimestampRouter {
    fn apply(&self, mut r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        let timestamp = format_date(&self.timestamp_format, r.timestamp_ms);
        r.topic = self.topic_format.replace("${topic}", &r.topic).replace("${timestamp}", &timestamp);
        Ok(Some(r))
    }
}

/// Parses Java SimpleDateFormat letters (`'...'` quotes text, `''` is a quote); only the
/// numeric fields y, M, d, H, m, s and S are supported.
fn date_pattern(pattern: &str) -> Result<Vec<Piece>, String> {
    fn text(pieces: &mut Vec<Piece>, c: char) {
        match pieces.last_mut() {
            Some(Piece::Text(s)) => s.push(c),
            _ => pieces.push(Piece::Text(c.to_string())),
        }
    }
    let mut pieces = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.next_if_eq(&'\'').is_some() {
                text(&mut pieces, '\'');
                continue;
            }
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in '{pattern}'")),
                    Some('\'') if chars.next_if_eq(&'\'').is_some() => text(&mut pieces, '\''),
                    Some('\'') => break,
                    Some(c) => text(&mut pieces, c),
                }
            }
        } else if c.is_ascii_alphabetic() {
            let mut width = 1;
            while chars.next_if_eq(&c).is_some() {
                width += 1;
            }
            if !"yMdHmsS".contains(c) || (c == 'M' && width > 2) {
                return Err(format!(
                    "'{}' is not supported (use y, M, MM, d, H, m, s and S, e.g. yyyyMMdd or yyyy-MM-dd'T'HH)",
                    c.to_string().repeat(width)
                ));
            }
            pieces.push(Piece::Field(c, width));
        } else {
            text(&mut pieces, c);
        }
    }
    Ok(pieces)
}

fn format_date(pieces: &[Piece], epoch_ms: i64) -> String {
    let [year, month, day, hour, minute, second, milli] = utc_fields(epoch_ms);
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            // As in Java, yy is the year's last two digits.
            Piece::Field('y', 2) => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Piece::Field(letter, width) => {
                let n = match letter {
                    'y' => year,
                    'M' => month,
                    'd' => day,
                    'H' => hour,
                    'm' => minute,
                    's' => second,
                    _ => milli,
                };
                out.push_str(&format!("{n:0width$}", width = *width));
            }
        }
    }
    out
}

/// UTC year, month, day, hour, minute, second and millisecond of epoch milliseconds (Howard
/// Hinnant's days-to-civil algorithm; proleptic Gregorian, so years before 1582 differ from
/// Java's Julian ones).
fn utc_fields(epoch_ms: i64) -> [i64; 7] {
    let days = epoch_ms.div_euclid(86_400_000);
    let in_day = epoch_ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    [year, month, day, in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000]
}

struct RegexRouter {
    regex: Regex,
    /// The replacement in the regex crate's syntax.
    replacement: String,
}

impl RegexRouter {
    fn new(p: &Props) -> Result<Self, ConnectError> {
        let regex = anchored(p.required("regex")?)
            .map_err(|e| p.err("regex", format!("not a valid regular expression: {e}")))?;
        let replacement =
            java_replacement(&regex, p.required("replacement")?).map_err(|reason| p.err("replacement", reason))?;
        Ok(Self { regex, replacement })
    }
}

impl Transform for RegexRouter {
    fn apply(&self, mut r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        // Kafka renames only when the whole topic matches (Matcher.matches); the regex is
        // anchored, so the replacement's expansion is the whole new name.
        let renamed = self.regex.captures(&r.topic).map(|groups| {
            let mut topic = String::new();
            groups.expand(&self.replacement, &mut topic);
            topic
        });
        if let Some(topic) = renamed {
            r.topic = topic;
        }
        Ok(Some(r))
    }
}

/// A regex that must match the whole text, as Java's `Matcher.matches` requires.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    // Checked alone first, so that a pattern such as "a)|(b" cannot escape the anchors.
    Regex::new(pattern)?;
    Regex::new(&format!(r"\A(?:{pattern})\z"))
}

/// Translates a Java replacement (`$1`, `${name}`, `\` escaping the next character) into
/// the regex crate's syntax, where `$1a` would name a group "1a" and `$` must be doubled.
/// Like Java, a group number takes as many digits as still name an existing group.
fn java_replacement(regex: &Regex, text: &str) -> Result<String, String> {
    let groups = regex.captures_len() - 1;
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(c) => out.push(c),
                None => return Err("ends with '\\' (escape a character or write \\\\)".to_owned()),
            },
            '$' if chars.next_if_eq(&'{').is_some() => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("'${{{name}' is missing its '}}'")),
                    }
                }
                if !regex.capture_names().flatten().any(|n| n == name) {
                    return Err(format!("the regex has no group named '{name}'"));
                }
                out.push_str(&format!("${{{name}}}"));
            }
            '$' => {
                let Some(mut n) = chars.next().and_then(|d| d.to_digit(10)).map(|d| d as usize) else {
                    return Err("'$' must be followed by a group number or {name} (write \\$ for a dollar)".to_owned());
                };
                if n > groups {
                    return Err(format!("the regex has no group {n}"));
                }
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    let longer = n * 10 + d as usize;
                    if longer > groups {
                        break;
                    }
                    n = longer;
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Filter;

impl Transform for Filter {
    fn apply(&self, _r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        Ok(None)
    }
}

/// Debezium's ExtractNewRecordState.
struct ExtractNewRecordState {
    drop_tombstones: bool,
    deletes: DeleteHandling,
}

#[derive(Clone, Copy, PartialEq)]
enum DeleteHandling {
    Drop,
    Rewrite,
    None,
}

impl ExtractNewRecordState {
    fn new(p: &Props) -> Result<Self, ConnectError> {
        let drop_tombstones = match p.get("drop.tombstones") {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(p.err("drop.tombstones", format!("'{v}' is not true or false"))),
        };
        let deletes = match p.get("delete.handling.mode") {
            None | Some("drop") => DeleteHandling::Drop,
            Some("rewrite") => DeleteHandling::Rewrite,
            Some("none") => DeleteHandling::None,
            Some(v) => return Err(p.err("delete.handling.mode", format!("'{v}' is not drop, rewrite or none"))),
        };
        Ok(Self { drop_tombstones, deletes })
    }
}

/// The schema of an envelope's field `name`, as a schema of its own.
fn envelope_field(schema: &Option<Value>, name: &str) -> Option<Value> {
    let fields = schema.as_ref()?.get("fields")?.as_array()?;
    let mut field = fields.iter().find(|f| field_name(f) == Some(name))?.clone();
    if let Value::Object(entry) = &mut field {
        entry.remove("field");
        entry.insert("optional".into(), Value::Bool(false));
    }
    Some(field)
}

impl Transform for ExtractNewRecordState {
    fn apply(&self, mut r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        if r.value.value.is_null() {
            return Ok((!self.drop_tombstones).then_some(r));
        }
        // Not a change event (a heartbeat, or already a row): left as it is.
        let Some(op) = r.value.value.get("op").and_then(Value::as_str).map(str::to_owned) else { return Ok(Some(r)) };
        let rewrite = self.deletes == DeleteHandling::Rewrite;
        let state = if op == "d" {
            match self.deletes {
                DeleteHandling::Drop => return Ok(None),
                DeleteHandling::None => {
                    r.value = Data::default();
                    return Ok(Some(r));
                }
                DeleteHandling::Rewrite => "before",
            }
        } else {
            "after"
        };
        let mut value = r.value.value.get(state).cloned().unwrap_or(Value::Null);
        let mut schema = envelope_field(&r.value.schema, state);
        if rewrite {
            let deleted = if op == "d" { "true" } else { "false" };
            if let Value::Object(m) = &mut value {
                m.insert("__deleted".into(), deleted.into());
            }
            if let Some(fields) = schema.as_mut().and_then(|s| s.get_mut("fields")).and_then(Value::as_array_mut) {
                fields.push(serde_json::json!({"field": "__deleted", "type": "string", "optional": true}));
            }
        }
        r.value = Data { schema, value };
        Ok(Some(r))
    }
}

struct TopicNameMatches(Regex);

impl Predicate for TopicNameMatches {
    fn test(&self, r: &ConnectRecord) -> bool {
        self.0.is_match(&r.topic)
    }
}

struct HasHeaderKey(String);

impl Predicate for HasHeaderKey {
    fn test(&self, r: &ConnectRecord) -> bool {
        r.headers.iter().any(|(k, _)| *k == self.0)
    }
}

struct RecordIsTombstone;

impl Predicate for RecordIsTombstone {
    fn test(&self, r: &ConnectRecord) -> bool {
        r.value.value.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A record read from `orders` partition 2 at offset 42, at 2023-11-14T22:13:20Z.
    fn record(value: Value) -> ConnectRecord {
        ConnectRecord {
            topic: "orders".to_owned(),
            partition: Some(2),
            offset: Some(42),
            key: Data::plain(json!("k1")),
            value: Data::plain(value),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn run(pairs: &[(&str, &str)], r: ConnectRecord) -> Result<Option<ConnectRecord>, ConnectError> {
        build("t", &props(pairs))?.apply(r)
    }

    fn applied(pairs: &[(&str, &str)], r: ConnectRecord) -> ConnectRecord {
        run(pairs, r).unwrap().unwrap()
    }

    fn config_error_key(result: Result<Box<dyn Transform>, ConnectError>) -> String {
        match result {
            Err(ConnectError::Config { key, .. }) => key,
            Err(e) => panic!("expected a config error, got {e}"),
            Ok(_) => panic!("expected a config error"),
        }
    }

    #[test]
    fn extract_new_record_state_turns_change_events_into_rows() {
        let unwrap = [("type", DEBEZIUM_UNWRAP)];
        let event = |op: &str| {
            record(json!({"before": {"id": 1, "qty": 1}, "after": {"id": 1, "qty": 2}, "op": op, "source": {}}))
        };
        assert_eq!(applied(&unwrap, event("u")).value.value, json!({"id": 1, "qty": 2}));
        assert!(run(&unwrap, event("d")).unwrap().is_none(), "deletes dropped by default");
        assert!(run(&unwrap, record(Value::Null)).unwrap().is_none(), "tombstones dropped by default");
        let keep = [("type", DEBEZIUM_UNWRAP), ("drop.tombstones", "false"), ("delete.handling.mode", "rewrite")];
        assert!(applied(&keep, record(Value::Null)).value.value.is_null());
        assert_eq!(applied(&keep, event("d")).value.value, json!({"id": 1, "qty": 1, "__deleted": "true"}));
        assert_eq!(applied(&keep, event("c")).value.value["__deleted"], "false");
        // With a schema, the row's schema is the after field's.
        let mut r = event("c");
        r.value.schema = Some(json!({"type": "struct", "fields": [
            {"field": "after", "type": "struct", "optional": true, "fields": [{"field": "id", "type": "int32"}]}]}));
        let schema = applied(&unwrap, r).value.schema.unwrap();
        assert_eq!(schema, json!({"type": "struct", "optional": false, "fields": [{"field": "id", "type": "int32"}]}));
        assert_eq!(applied(&unwrap, record(json!({"id": 3}))).value.value, json!({"id": 3}), "not an event");
        let bad = build("t", &props(&[("type", DEBEZIUM_UNWRAP), ("delete.handling.mode", "keep")]));
        assert_eq!(config_error_key(bad), "transforms.t.delete.handling.mode");
    }

    fn data_error_message(result: Result<Option<ConnectRecord>, ConnectError>) -> String {
        match result {
            Err(ConnectError::Data(m)) => m,
            other => panic!("expected a data error, got {other:?}"),
        }
    }

    fn struct_schema(fields: Value) -> Value {
        json!({"type": "struct", "fields": fields, "optional": false})
    }

    const INSERT: &str = "org.apache.kafka.connect.transforms.InsertField$Value";

    #[test]
    fn insert_field_adds_the_record_metadata() {
        let out = applied(
            &[
                ("type", INSERT),
                ("topic.field", "src"),
                ("partition.field", "part"),
                ("offset.field", "off!"),
                ("timestamp.field", "ts?"),
                ("static.field", "origin"),
                ("static.value", "sluice"),
            ],
            record(json!({"id": 1})),
        );
        let expected =
            json!({"id": 1, "src": "orders", "part": 2, "off": 42, "ts": 1_700_000_000_000_i64, "origin": "sluice"});
        assert_eq!(out.value, Data::plain(expected));
    }

    #[test]
    fn insert_field_extends_a_struct_schema() {
        let mut r = record(json!({"id": 1}));
        r.value.schema = Some(struct_schema(json!([{"type": "int32", "optional": false, "field": "id"}])));
        let out = applied(&[("type", INSERT), ("topic.field", "src!")], r);
        let fields = json!([
            {"type": "int32", "optional": false, "field": "id"},
            {"type": "string", "optional": false, "field": "src"}
        ]);
        assert_eq!(out.value.schema, Some(struct_schema(fields)));
        assert_eq!(out.value.value, json!({"id": 1, "src": "orders"}));
    }

    #[test]
    fn insert_field_refuses_what_it_cannot_do_and_passes_tombstones() {
        let message = data_error_message(run(&[("type", INSERT), ("topic.field", "t")], record(json!("text"))));
        assert_eq!(message, "InsertField$Value: needs an object (a struct or map), got a string");
        let source = ConnectRecord { offset: None, ..record(json!({})) };
        assert!(data_error_message(run(&[("type", INSERT), ("offset.field", "o")], source)).contains("no offset"));
        let tombstone = record(Value::Null);
        assert_eq!(applied(&[("type", INSERT), ("topic.field", "t")], tombstone.clone()), tombstone);
    }

    #[test]
    fn replace_field_includes_excludes_and_renames_with_the_schema() {
        let mut r = record(json!({"id": 1, "secret": "x", "name": "Ada", "extra": true}));
        r.value.schema = Some(struct_schema(json!([
            {"type": "int32", "optional": false, "field": "id"},
            {"type": "string", "optional": true, "field": "secret"},
            {"type": "string", "optional": true, "field": "name"},
            {"type": "boolean", "optional": true, "field": "extra"}
        ])));
        let pairs = [
            ("type", "org.apache.kafka.connect.transforms.ReplaceField$Value"),
            ("include", "id, secret, name"),
            ("exclude", "secret"),
            ("renames", "name:full_name,id:order_id"),
        ];
        let out = applied(&pairs, r.clone());
        assert_eq!(out.value.value, json!({"order_id": 1, "full_name": "Ada"}));
        let fields = json!([
            {"type": "int32", "optional": false, "field": "order_id"},
            {"type": "string", "optional": true, "field": "full_name"}
        ]);
        assert_eq!(out.value.schema, Some(struct_schema(fields)));
        // Kafka 2's names for include and exclude.
        let old = [("type", pairs[0].1), ("whitelist", "id, secret"), ("blacklist", "secret")];
        assert_eq!(applied(&old, r).value.value, json!({"id": 1}));
        let bad = props(&[("type", pairs[0].1), ("renames", "a:b,c")]);
        assert_eq!(config_error_key(build("t", &bad)), "transforms.t.renames");
    }

    #[test]
    fn mask_field_empties_values_or_replaces_them() {
        let value = json!({"s": "secret", "i": 7, "f": 1.5, "b": true, "a": [1], "o": {"x": 1}, "n": null, "kept": 1});
        let ty = ("type", "org.apache.kafka.connect.transforms.MaskField$Value");
        let out = applied(&[ty, ("fields", "s,i,f,b,a,o,n,missing")], record(value));
        let expected = json!({"s": "", "i": 0, "f": 0.0, "b": false, "a": [], "o": {}, "n": null, "kept": 1});
        assert_eq!(out.value.value, expected);
        let out = applied(&[ty, ("fields", "s,i"), ("replacement", "99")], record(json!({"s": "x", "i": 7})));
        assert_eq!(out.value.value, json!({"s": "99", "i": 99}));
        let refused = run(&[ty, ("fields", "b"), ("replacement", "x")], record(json!({"b": true})));
        assert!(data_error_message(refused).starts_with("MaskField$Value: replacement 'x' cannot mask field 'b'"));
        assert_eq!(config_error_key(build("t", &props(&[ty]))), "transforms.t.fields");
    }

    #[test]
    fn value_to_key_builds_the_key_and_its_schema() {
        let ty = ("type", "org.apache.kafka.connect.transforms.ValueToKey");
        let out = applied(&[ty, ("fields", "id,missing")], record(json!({"id": 1, "name": "Ada"})));
        assert_eq!(out.key, Data::plain(json!({"id": 1, "missing": null})));
        let mut r = record(json!({"id": 1, "name": "Ada"}));
        let id = json!({"type": "int32", "optional": false, "field": "id"});
        r.value.schema = Some(struct_schema(json!([id, {"type": "string", "optional": true, "field": "name"}])));
        let out = applied(&[ty, ("fields", "id")], r.clone());
        assert_eq!(out.key, Data { schema: Some(struct_schema(json!([id]))), value: json!({"id": 1}) });
        assert!(data_error_message(run(&[ty, ("fields", "nope")], r)).contains("'nope' is not in the value's schema"));
        assert!(data_error_message(run(&[ty, ("fields", "id")], record(json!([1])))).contains("got an array"));
    }

    #[test]
    fn extract_field_narrows_the_key_or_value() {
        let mut r = record(json!({"id": 1, "address": {"city": "Oslo"}}));
        r.key = Data::plain(json!({"id": 9}));
        let key = ("type", "org.apache.kafka.connect.transforms.ExtractField$Key");
        assert_eq!(applied(&[key, ("field", "id")], r.clone()).key, Data::plain(json!(9)));
        let value = ("type", "org.apache.kafka.connect.transforms.ExtractField$Value");
        let nested = applied(&[value, ("field", "address.city"), ("field.syntax.version", "V2")], r.clone());
        assert_eq!(nested.value.value, json!("Oslo"));
        // Without V2 a dot is part of the field's name.
        assert_eq!(applied(&[value, ("field", "address.city")], r.clone()).value.value, Value::Null);
        r.value.schema = Some(struct_schema(json!([
            {"type": "int32", "optional": false, "field": "id"},
            {"type": "struct", "fields": [], "optional": true, "field": "address"}
        ])));
        let out = applied(&[value, ("field", "id")], r);
        assert_eq!(out.value, Data { schema: Some(json!({"type": "int32", "optional": false})), value: json!(1) });
        assert!(data_error_message(run(&[value, ("field", "id")], record(json!(5)))).contains("got a number"));
        let bad = props(&[value, ("field", "a"), ("field.syntax.version", "V3")]);
        assert_eq!(config_error_key(build("t", &bad)), "transforms.t.field.syntax.version");
    }

    #[test]
    fn timestamp_router_formats_utc_dates() {
        let ty = ("type", "org.apache.kafka.connect.transforms.TimestampRouter");
        assert_eq!(applied(&[ty], record(Value::Null)).topic, "orders-20231114");
        let custom =
            [ty, ("topic.format", "${timestamp}_${topic}"), ("timestamp.format", "yyyy-MM-dd'T'HH:mm:ss.SSS''yy")];
        assert_eq!(applied(&custom, record(Value::Null)).topic, "2023-11-14T22:13:20.000'23_orders");
        for (ms, day) in [(-1, "1969-12-31 23:59:59"), (951_782_400_000, "2000-02-29 00:00:00")] {
            let pattern = date_pattern("yyyy-MM-dd HH:mm:ss").unwrap();
            assert_eq!(format_date(&pattern, ms), day);
        }
        let bad = props(&[ty, ("timestamp.format", "EEE yyyy")]);
        assert_eq!(config_error_key(build("t", &bad)), "transforms.t.timestamp.format");
    }

    #[test]
    fn regex_router_renames_only_whole_matches_with_java_groups() {
        let ty = ("type", "org.apache.kafka.connect.transforms.RegexRouter");
        let rename = |regex: &str, replacement: &str, topic: &str| {
            let r = ConnectRecord { topic: topic.to_owned(), ..record(Value::Null) };
            applied(&[ty, ("regex", regex), ("replacement", replacement)], r).topic
        };
        assert_eq!(rename("(.*)-raw", "$1-clean", "orders-raw"), "orders-clean");
        assert_eq!(rename("(.*)-raw", "$1-clean", "orders-raw-2"), "orders-raw-2");
        // Java reads $12 as group 1 then "2" when there is no group 12; \$ is a dollar.
        assert_eq!(rename("(o)(r.*)", "$2$12\\$", "orders"), "rderso2$");
        assert_eq!(rename("(?P<base>.*)-v1", "${base}-v2", "orders-v1"), "orders-v2");
        for (regex, replacement, key) in [
            ("(", "x", "transforms.t.regex"),
            ("(a)", "$2", "transforms.t.replacement"),
            ("a", "$", "transforms.t.replacement"),
        ] {
            let bad = props(&[ty, ("regex", regex), ("replacement", replacement)]);
            assert_eq!(config_error_key(build("t", &bad)), key, "{regex} {replacement}");
        }
    }

    #[test]
    fn filter_applies_where_its_predicate_holds() {
        let filter = build("drop", &props(&[("type", "org.apache.kafka.connect.transforms.Filter")])).unwrap();
        let test_topics = props(&[
            ("type", "org.apache.kafka.connect.transforms.predicates.TopicNameMatches"),
            ("pattern", "test-.*"),
        ]);
        let conditional =
            Conditional { inner: filter, predicate: predicate("isTest", &test_topics).unwrap(), negate: false };
        let on = |topic: &str| ConnectRecord { topic: topic.to_owned(), ..record(json!(1)) };
        assert_eq!(conditional.apply(on("test-a")).unwrap(), None);
        assert!(conditional.apply(on("prod-test-a")).unwrap().is_some());
        let negated = Conditional { negate: true, ..conditional };
        assert!(negated.apply(on("test-a")).unwrap().is_some());
        assert_eq!(negated.apply(on("prod")).unwrap(), None);
    }

    #[test]
    fn predicates_test_headers_and_tombstones_and_name_bad_keys() {
        let make = |pairs: &[(&str, &str)]| predicate("p", &props(pairs));
        let has = make(&[("type", "org.apache.kafka.connect.transforms.predicates.HasHeaderKey"), ("name", "trace")])
            .unwrap();
        let mut r = record(json!(1));
        assert!(!has.test(&r));
        r.headers.push(("trace".to_owned(), bytes::Bytes::from_static(b"1")));
        assert!(has.test(&r));
        let tombstone = make(&[("type", "org.apache.kafka.connect.transforms.predicates.RecordIsTombstone")]).unwrap();
        assert!(!tombstone.test(&r) && tombstone.test(&record(Value::Null)));
        let key = |pairs: &[(&str, &str)]| match make(pairs) {
            Err(ConnectError::Config { key, .. }) => key,
            _ => String::new(),
        };
        assert_eq!(key(&[("type", "TopicNameMatches")]), "predicates.p.type");
        assert_eq!(
            key(&[("type", "org.apache.kafka.connect.transforms.predicates.TopicNameMatches")]),
            "predicates.p.pattern"
        );
        assert_eq!(
            key(&[("type", "org.apache.kafka.connect.transforms.predicates.TopicNameMatches"), ("pattern", "(")]),
            "predicates.p.pattern"
        );
    }

    #[test]
    fn unknown_or_missing_types_name_the_type_key() {
        for ty in [
            "org.apache.kafka.connect.transforms.Nope",
            "InsertField$Value",
            "org.apache.kafka.connect.transforms.ValueToKey$Key",
        ] {
            assert_eq!(config_error_key(build("t", &props(&[("type", ty)]))), "transforms.t.type", "{ty}");
        }
        assert_eq!(config_error_key(build("t", &props(&[]))), "transforms.t.type");
        assert!(TRANSFORMS.iter().all(|(class, _)| class.starts_with(PACKAGE) || *class == DEBEZIUM_UNWRAP));
        assert!(PREDICATES.iter().all(|(class, _)| class.starts_with(PREDICATE_PACKAGE)));
    }
}
