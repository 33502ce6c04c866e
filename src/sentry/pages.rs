//! Splitting a list endpoint's page into items, whatever the endpoint wraps them in.
//!
//! Each item keeps its JSON text exactly as returned (one line), with the two fields the
//! collector reads from it: an identity for de-duplication and a time for the window. A body
//! that is not the documented shape, or an item without those fields, refuses the whole page:
//! a body that is not data (an error, a proxy's HTML page) is never written as data.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::time::parse_rfc3339;

/// What the page's JSON wraps its items in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// A bare array (project events, issues).
    Array,
    /// `{"rows": [...]}` (audit logs).
    Rows,
    /// `{"data": [...], "meta": {...}}` (Discover / Explore).
    Data,
}

/// How to read one endpoint's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub envelope: Envelope,
    /// The field naming the item (`eventID`, `id`).
    pub id_field: &'static str,
    /// The RFC 3339 field the window applies to (`dateCreated`, `lastSeen`, `timestamp`).
    pub time_field: &'static str,
    /// The identity includes the time: an issue is a new line each time its `lastSeen` moves.
    pub key_includes_time: bool,
}

/// One item of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What de-duplication compares: the id, or `id@time` when the shape says so.
    pub key: String,
    /// The time field, whole Unix seconds.
    pub time: i64,
    /// The item's JSON text, one line.
    pub json: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub items: Vec<Item>,
    /// Discover said `meta.dataScanned: "partial"`: the rows are a sample.
    pub partial: bool,
}

#[derive(Deserialize)]
struct RowsBody<'a> {
    #[serde(borrow)]
    rows: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct DataBody<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "dataScanned", default)]
    data_scanned: Option<String>,
}

/// The two fields of an item, read without building the rest of it.
#[derive(Default)]
struct Picked {
    id: Option<String>,
    time: Option<String>,
}

struct Picker<'s> {
    shape: &'s Shape,
}

impl<'de> DeserializeSeed<'de> for Picker<'_> {
    type Value = Picked;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Picked, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Picked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Picked, A::Error> {
        let mut picked = Picked::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.shape.id_field {
                picked.id = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
            } else if key == self.shape.time_field {
                picked.time = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(picked)
    }
}

/// The most bytes an id may have; anything longer is not an id Sentry writes.
const MAX_ID_BYTES: usize = 128;

/// Splits a page body into items. See the module documentation.
pub fn parse_page(body: &[u8], shape: &Shape) -> Result<Parsed, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the page is not UTF-8".to_string())?;
    let (raw_items, partial): (Vec<&RawValue>, bool) = match shape.envelope {
        Envelope::Array => (
            serde_json::from_str(text).map_err(|_| "the page is not a JSON array".to_string())?,
            false,
        ),
        Envelope::Rows => {
            let b: RowsBody = serde_json::from_str(text)
                .map_err(|_| "the page is not {\"rows\": [...]}".to_string())?;
            (b.rows, false)
        }
        Envelope::Data => {
            let b: DataBody = serde_json::from_str(text)
                .map_err(|_| "the page is not Discover's {\"data\": [...]}".to_string())?;
            let partial = b
                .meta
                .and_then(|m| m.data_scanned)
                .is_some_and(|s| s == "partial");
            (b.data, partial)
        }
    };
    let items = raw_items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| parse_item(i, raw, shape))
        .collect::<Result<Vec<Item>, String>>()?;
    Ok(Parsed { items, partial })
}

fn parse_item(i: usize, raw: &RawValue, shape: &Shape) -> Result<Item, String> {
    let missing = || {
        format!(
            "item {i} of the page is not an object with {} and {}",
            shape.id_field, shape.time_field
        )
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let picked = Picker { shape }
        .deserialize(&mut de)
        .map_err(|_| missing())?;
    let (Some(id), Some(time_text)) = (picked.id, picked.time) else {
        return Err(missing());
    };
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(format!(
            "item {i} of the page has an invalid {}",
            shape.id_field
        ));
    }
    let time = parse_rfc3339(&time_text).ok_or_else(|| {
        format!(
            "item {i} of the page has an unreadable {}",
            shape.time_field
        )
    })?;
    // NDJSON needs one line per item: re-encode compactly if the server pretty-printed.
    let json = if raw.get().contains(['\n', '\r']) {
        let value: serde_json::Value =
            serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        value.to_string()
    } else {
        raw.get().to_string()
    };
    let key = if shape.key_includes_time {
        format!("{id}@{time_text}")
    } else {
        id
    };
    Ok(Item { key, time, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: Shape = Shape {
        envelope: Envelope::Array,
        id_field: "eventID",
        time_field: "dateCreated",
        key_includes_time: false,
    };

    #[test]
    fn only_arrays_of_events_are_data() {
        let ok = br#"[{"eventID":"a1","dateCreated":"2026-11-26T10:00:00Z","title":"x"}]"#;
        let page = parse_page(ok, &EVENTS).unwrap();
        assert_eq!(page.items[0].key, "a1");
        assert_eq!(
            page.items[0].json,
            r#"{"eventID":"a1","dateCreated":"2026-11-26T10:00:00Z","title":"x"}"#
        );
        for (body, needle) in [
            (&b"\xff\xfe[]"[..], "UTF-8"),
            (&b"<html>502 Bad Gateway</html>"[..], "JSON array"),
            (
                &br#""You are attempting to use this endpoint too frequently""#[..],
                "JSON array",
            ),
            (&br#"{"detail": "Invalid token"}"#[..], "JSON array"),
            (&br#"[{"eventID": "a1"}]"#[..], "eventID and dateCreated"),
            (
                &br#"[{"eventID": "a1", "dateCreated": "yesterday"}]"#[..],
                "dateCreated",
            ),
            (
                &br#"[{"eventID": "", "dateCreated": "2026-11-26T10:00:00Z"}]"#[..],
                "eventID",
            ),
            (
                &br#"[{"eventID": "a\nb", "dateCreated": "2026-11-26T10:00:00Z"}]"#[..],
                "invalid eventID",
            ),
            (&br#"[1, 2]"#[..], "item 0"),
        ] {
            let err = parse_page(body, &EVENTS).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_pretty_printed_item_becomes_one_line() {
        let body = b"[\n  {\n    \"eventID\": \"a1\",\n    \"dateCreated\": \"2026-11-26T10:00:00Z\",\n    \"message\": \"two\\nlines\"\n  }\n]";
        let page = parse_page(body, &EVENTS).unwrap();
        assert!(!page.items[0].json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&page.items[0].json).unwrap();
        assert_eq!(v["message"], "two\nlines");
    }

    #[test]
    fn issues_are_keyed_by_id_and_last_seen() {
        let shape = Shape {
            envelope: Envelope::Array,
            id_field: "id",
            time_field: "lastSeen",
            key_includes_time: true,
        };
        let body = br#"[{"id":"7","lastSeen":"2026-11-26T10:00:00.123Z","title":"t"},{"id":8,"lastSeen":"2026-11-26T09:00:00Z"}]"#;
        let page = parse_page(body, &shape).unwrap();
        assert_eq!(page.items[0].key, "7@2026-11-26T10:00:00.123Z");
        assert_eq!(page.items[1].key, "8@2026-11-26T09:00:00Z");
        assert_eq!(page.items[0].time, page.items[1].time + 3600);
    }

    #[test]
    fn audit_rows_and_discover_data_are_unwrapped() {
        let rows = Shape {
            envelope: Envelope::Rows,
            id_field: "id",
            time_field: "dateCreated",
            key_includes_time: false,
        };
        let page = parse_page(
            br#"{"rows":[{"id":"1","dateCreated":"2026-11-26T10:00:00Z","event":"member.invite"}],"options":["member.invite"]}"#,
            &rows,
        )
        .unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(!page.partial);
        assert!(parse_page(
            br#"[{"id":"1","dateCreated":"2026-11-26T10:00:00Z"}]"#,
            &rows
        )
        .unwrap_err()
        .contains("rows"));

        let data = Shape {
            envelope: Envelope::Data,
            id_field: "id",
            time_field: "timestamp",
            key_includes_time: false,
        };
        let page = parse_page(
            br#"{"data":[{"id":"ab","timestamp":"2026-11-26T10:00:00+00:00"}],"meta":{"fields":{},"dataScanned":"partial"}}"#,
            &data,
        )
        .unwrap();
        assert!(page.partial);
        assert_eq!(
            page.items[0].time,
            parse_rfc3339("2026-11-26T10:00:00Z").unwrap()
        );
        let page = parse_page(br#"{"data":[],"meta":{"dataScanned":"full"}}"#, &data).unwrap();
        assert!(!page.partial && page.items.is_empty());
        assert!(parse_page(br#"{"detail":"Query timeout"}"#, &data)
            .unwrap_err()
            .contains("Discover"));
    }
}
