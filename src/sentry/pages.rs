//! Splitting a list endpoint's page into items, whatever the endpoint wraps them in.
//!
//! Each item keeps its JSON text exactly as returned (one line), with the two fields the
//! collector reads from it: an identity for de-duplication and a time for the window. A body
//! that is not the documented shape refuses the whole page: a body that is not data (an
//! error, a proxy's HTML page) is never written as data. An item without a readable id or time
//! is set apart as rejected, for the collector to retry and then quarantine.

use std::ops::Range;

use crate::bytes::{is_ascii, plain_run};
use crate::identity::seen_key;
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
    /// The numeric field naming an org-wide row's project (`project.id` of Explore rows), so
    /// what was delivered can be counted per project; `None` where a read is of one project.
    pub project_field: Option<&'static str>,
}

/// One item of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What de-duplication compares (see [`seen_key`]): of the id, or of `id@time` when the
    /// shape says so.
    pub key: [u8; 16],
    /// The time field, whole Unix seconds.
    pub time: i64,
    /// Where the item's JSON text is in the page (one line).
    pub span: Range<usize>,
    /// The row's project, where the shape names a project field and the row has a whole
    /// number there.
    pub project: Option<u64>,
}

/// An item the page holds that cannot be collected: valid JSON, but without a readable id or
/// time. It is never written as data; the collector quarantines it once it persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where its JSON text is in the page (one line).
    pub span: Range<usize>,
    pub reason: String,
}

/// A parsed page: the body, and where each item is in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    body: Vec<u8>,
    pub items: Vec<Item>,
    /// Items without a readable id or time, in page order.
    pub rejected: Vec<Rejected>,
    /// Discover said `meta.dataScanned: "partial"`: the rows are a sample.
    pub partial: bool,
}

impl Parsed {
    /// The item's JSON text, one line.
    pub fn json(&self, item: &Item) -> &[u8] {
        &self.body[item.span.clone()]
    }

    /// A rejected item's JSON text, one line.
    pub fn rejected_json(&self, r: &Rejected) -> &[u8] {
        &self.body[r.span.clone()]
    }

    /// The page's size in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// The most bytes an id may have; anything longer is not an id Sentry writes.
const MAX_ID_BYTES: usize = 128;
/// Nesting deeper than this is refused (a hostile body must not exhaust the stack).
const MAX_DEPTH: usize = 128;

/// Splits a page body into items, in one pass that checks the JSON grammar, finds each
/// item's text and reads its id and time. See the module documentation.
pub fn parse_page(body: Vec<u8>, shape: &Shape) -> Result<Parsed, String> {
    if !is_ascii(&body) && std::str::from_utf8(&body).is_err() {
        return Err("the page is not UTF-8".into());
    }
    let mut p = Scanner {
        b: &body,
        i: 0,
        depth: 0,
        line_breaks: false,
    };
    let (found, partial) = p.page(shape)?;
    p.ws();
    if p.i != body.len() {
        return Err(p.not_envelope(shape));
    }
    // Raw line breaks in valid JSON are whitespace between tokens, which the scanner saw.
    let flatten = p.line_breaks;
    let mut items = Vec::with_capacity(found.len());
    let mut rejected = Vec::new();
    // Rows of a page are mostly in the same second as the one before: its time text is
    // read once.
    let mut last_time = None;
    for (i, f) in found.into_iter().enumerate() {
        let span = f.span.clone();
        match item(i, &body, f, shape, &mut last_time) {
            Ok(it) => items.push(it),
            Err(reason) => rejected.push(Rejected { span, reason }),
        }
    }
    let mut body = body;
    if flatten {
        // Raw line breaks in valid JSON can only be whitespace between tokens (inside strings
        // they are escaped): a space keeps the item the same JSON on one line.
        let spans = items
            .iter()
            .map(|it| it.span.clone())
            .chain(rejected.iter().map(|r| r.span.clone()));
        for span in spans {
            for b in &mut body[span] {
                if *b == b'\n' || *b == b'\r' {
                    *b = b' ';
                }
            }
        }
    }
    Ok(Parsed {
        body,
        items,
        rejected,
        partial,
    })
}

/// An item as the scanner found it: its text, and the raw (quoted) text of its id and time
/// values when present.
struct Found {
    span: Range<usize>,
    id: Option<Range<usize>>,
    time: Option<Range<usize>>,
    project: Option<Range<usize>>,
}

/// One found item as an [`Item`]; `last_time` is the last (raw time text, time) read.
fn item<'b>(
    i: usize,
    body: &'b [u8],
    f: Found,
    shape: &Shape,
    last_time: &mut Option<(&'b [u8], i64)>,
) -> Result<Item, String> {
    let missing = || {
        format!(
            "item {i} of the page is not an object with {} and {}",
            shape.id_field, shape.time_field
        )
    };
    let (Some(id), Some(time)) = (f.id, f.time) else {
        return Err(missing());
    };
    let id = scalar_text(&body[id]).ok_or_else(missing)?;
    let time_text = scalar_text(&body[time.clone()])
        .filter(|_| body[time.start] == b'"')
        .ok_or_else(missing)?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(format!(
            "item {i} of the page has an invalid {}",
            shape.id_field
        ));
    }
    let raw_time = &body[time];
    let time = match *last_time {
        Some((raw, t)) if raw == raw_time => t,
        _ => {
            let t = parse_rfc3339(&time_text).ok_or_else(|| {
                format!(
                    "item {i} of the page has an unreadable {}",
                    shape.time_field
                )
            })?;
            *last_time = Some((raw_time, t));
            t
        }
    };
    let key = if shape.key_includes_time {
        seen_key(&format!("{id}@{time_text}"))
    } else {
        seen_key(&id)
    };
    // (A project that is not a plain whole number is left out: the row counts org-wide.)
    let project = f.project.and_then(|p| {
        let raw = &body[p];
        let digits = raw
            .strip_prefix(b"\"")
            .and_then(|r| r.strip_suffix(b"\""))
            .unwrap_or(raw);
        (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
            .flatten()
    });
    Ok(Item {
        key,
        time,
        span: f.span,
        project,
    })
}

/// The text of a JSON string (unescaped) or number; `None` for anything else.
fn scalar_text(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    match raw.first()? {
        b'"' => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains(&b'\\') {
                serde_json::from_slice::<String>(raw).ok().map(Into::into)
            } else {
                std::str::from_utf8(inner).ok().map(Into::into)
            }
        }
        b'-' | b'0'..=b'9' => std::str::from_utf8(raw).ok().map(Into::into),
        _ => None,
    }
}

/// A validating single-pass JSON scanner over a UTF-8 body (RFC 8259 grammar).
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    /// A raw line feed or carriage return was skipped as whitespace.
    line_breaks: bool,
}

impl Scanner<'_> {
    fn not_envelope(&self, shape: &Shape) -> String {
        match shape.envelope {
            Envelope::Array => "the page is not a JSON array".into(),
            Envelope::Rows => "the page is not {\"rows\": [...]}".into(),
            Envelope::Data => "the page is not Discover's {\"data\": [...]}".into(),
        }
    }

    fn ws(&mut self) {
        while let Some(&c @ (b' ' | b'\t' | b'\n' | b'\r')) = self.b.get(self.i) {
            self.line_breaks |= c == b'\n' || c == b'\r';
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The page: its items and whether Discover said the data was sampled.
    fn page(&mut self, shape: &Shape) -> Result<(Vec<Found>, bool), String> {
        let bad = |s: &Self| s.not_envelope(shape);
        if shape.envelope == Envelope::Array {
            return self
                .items(shape)
                .map(|f| (f, false))
                .ok_or_else(|| bad(self));
        }
        let list_key: &[u8] = if shape.envelope == Envelope::Rows {
            b"rows"
        } else {
            b"data"
        };
        if !self.eat(b'{') {
            return Err(bad(self));
        }
        let mut found = None;
        let mut partial = false;
        if !self.eat(b'}') {
            loop {
                let key = self.string().ok_or_else(|| bad(self))?;
                if !self.eat(b':') {
                    return Err(bad(self));
                }
                let key = &self.b[key.start + 1..key.end - 1];
                if key == list_key && found.is_none() {
                    found = Some(self.items(shape).ok_or_else(|| bad(self))?);
                } else if key == b"meta" && shape.envelope == Envelope::Data {
                    partial = self.meta().ok_or_else(|| bad(self))?;
                } else {
                    self.value().ok_or_else(|| bad(self))?;
                }
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    break;
                }
                return Err(bad(self));
            }
        }
        found.map(|f| (f, partial)).ok_or_else(|| bad(self))
    }

    /// Discover's `meta` object: whether `dataScanned` is `"partial"`.
    fn meta(&mut self) -> Option<bool> {
        if self.peek() != Some(b'{') {
            self.value()?;
            return Some(false);
        }
        self.i += 1;
        let mut partial = false;
        if self.eat(b'}') {
            return Some(false);
        }
        loop {
            let key = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            let value = self.value()?;
            if &self.b[key] == b"\"dataScanned\"" && &self.b[value] == b"\"partial\"" {
                partial = true;
            }
            if self.eat(b',') {
                continue;
            }
            return self.eat(b'}').then_some(partial);
        }
    }

    /// An array of objects, recording each object's span and its id and time values.
    fn items(&mut self, shape: &Shape) -> Option<Vec<Found>> {
        if !self.eat(b'[') {
            return None;
        }
        let mut found = Vec::new();
        if self.eat(b']') {
            return Some(found);
        }
        loop {
            self.ws();
            let start = self.i;
            let mut f = Found {
                span: start..start,
                id: None,
                time: None,
                project: None,
            };
            if self.peek() == Some(b'{') {
                self.i += 1;
                self.depth += 1;
                if !self.eat(b'}') {
                    loop {
                        let key = self.string()?;
                        if !self.eat(b':') {
                            return None;
                        }
                        let key = &self.b[key.start + 1..key.end - 1];
                        let value = self.value()?;
                        if key == shape.id_field.as_bytes() {
                            f.id = Some(value);
                        } else if key == shape.time_field.as_bytes() {
                            f.time = Some(value);
                        } else if shape.project_field.is_some_and(|p| key == p.as_bytes()) {
                            f.project = Some(value);
                        }
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b'}') {
                            break;
                        }
                        return None;
                    }
                }
                self.depth -= 1;
            } else {
                // Not an object: still valid JSON, refused with the item's number later.
                self.value()?;
            }
            f.span = start..self.i;
            found.push(f);
            if self.eat(b',') {
                continue;
            }
            return self.eat(b']').then_some(found);
        }
    }

    /// Any JSON value; returns its span.
    fn value(&mut self) -> Option<Range<usize>> {
        self.ws();
        let start = self.i;
        match *self.b.get(self.i)? {
            b'"' => return self.string(),
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return None;
                }
                let object = self.b[self.i] == b'{';
                self.i += 1;
                let close = if object { b'}' } else { b']' };
                if !self.eat(close) {
                    loop {
                        if object {
                            self.string()?;
                            if !self.eat(b':') {
                                return None;
                            }
                        }
                        self.value()?;
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(close) {
                            break;
                        }
                        return None;
                    }
                }
                self.depth -= 1;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        }
        Some(start..self.i)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<()> {
        if self.b[self.i] == b'-' {
            self.i += 1;
        }
        match self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// A string; returns its span, quotes included.
    fn string(&mut self) -> Option<Range<usize>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.i;
        self.i += 1;
        loop {
            let n = plain_run(&self.b[self.i..])?;
            self.i += n;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(start..self.i);
                }
                b'\\' => {
                    self.i += 1;
                    match *self.b.get(self.i)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                // A raw control character inside a string is not JSON.
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: Shape = Shape {
        envelope: Envelope::Array,
        id_field: "eventID",
        time_field: "dateCreated",
        key_includes_time: false,
        project_field: None,
    };

    #[test]
    fn only_arrays_of_events_are_data() {
        let ok = br#"[{"eventID":"a1","dateCreated":"2026-11-26T10:00:00Z","title":"x"}]"#;
        let page = parse_page(ok.to_vec(), &EVENTS).unwrap();
        assert_eq!(page.items[0].key, seen_key("a1"));
        assert_eq!(
            page.json(&page.items[0]),
            br#"{"eventID":"a1","dateCreated":"2026-11-26T10:00:00Z","title":"x"}"#
        );
        for (body, needle) in [
            (&b"\xff\xfe[]"[..], "UTF-8"),
            (&b"<html>502 Bad Gateway</html>"[..], "JSON array"),
            (
                &br#""You are attempting to use this endpoint too frequently""#[..],
                "JSON array",
            ),
            (&br#"{"detail": "Invalid token"}"#[..], "JSON array"),
        ] {
            let err = parse_page(body.to_vec(), &EVENTS).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        // Items without a readable id or time are set apart, never data.
        for (body, needle) in [
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
            let page = parse_page(body.to_vec(), &EVENTS).unwrap();
            assert!(page.items.is_empty(), "{needle}");
            assert!(
                page.rejected[0].reason.contains(needle),
                "{:?}",
                page.rejected
            );
        }
        // One bad item among good ones: the good ones are items, the bad one is kept whole.
        let page = parse_page(
            br#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z"},{"eventID":"b"},
{"eventID":"c","dateCreated":"2026-11-26T10:00:01Z"}]"#
                .to_vec(),
            &EVENTS,
        )
        .unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.rejected.len(), 1);
        assert_eq!(page.rejected_json(&page.rejected[0]), br#"{"eventID":"b"}"#);
    }

    #[test]
    fn a_pretty_printed_item_becomes_one_line() {
        let body = b"[\n  {\n    \"eventID\": \"a1\",\n    \"dateCreated\": \"2026-11-26T10:00:00Z\",\n    \"message\": \"two\\nlines\"\n  }\n]";
        let page = parse_page(body.to_vec(), &EVENTS).unwrap();
        assert!(!page.json(&page.items[0]).contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(page.json(&page.items[0])).unwrap();
        assert_eq!(v["message"], "two\nlines");
    }

    #[test]
    fn issues_are_keyed_by_id_and_last_seen() {
        let shape = Shape {
            envelope: Envelope::Array,
            id_field: "id",
            time_field: "lastSeen",
            key_includes_time: true,
            project_field: None,
        };
        let body = br#"[{"id":"7","lastSeen":"2026-11-26T10:00:00.123Z","title":"t"},{"id":8,"lastSeen":"2026-11-26T09:00:00Z"}]"#;
        let page = parse_page(body.to_vec(), &shape).unwrap();
        assert_eq!(page.items[0].key, seen_key("7@2026-11-26T10:00:00.123Z"));
        assert_eq!(page.items[1].key, seen_key("8@2026-11-26T09:00:00Z"));
        assert_eq!(page.items[0].time, page.items[1].time + 3600);
    }

    #[test]
    fn audit_rows_and_discover_data_are_unwrapped() {
        let rows = Shape {
            envelope: Envelope::Rows,
            id_field: "id",
            time_field: "dateCreated",
            key_includes_time: false,
            project_field: None,
        };
        let page = parse_page(
            br#"{"rows":[{"id":"1","dateCreated":"2026-11-26T10:00:00Z","event":"member.invite"}],"options":["member.invite"]}"#.to_vec(),
            &rows,
        )
        .unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(!page.partial);
        assert!(parse_page(
            br#"[{"id":"1","dateCreated":"2026-11-26T10:00:00Z"}]"#.to_vec(),
            &rows
        )
        .unwrap_err()
        .contains("rows"));

        let data = Shape {
            envelope: Envelope::Data,
            id_field: "id",
            time_field: "timestamp",
            key_includes_time: false,
            project_field: None,
        };
        let page = parse_page(
            br#"{"data":[{"id":"ab","timestamp":"2026-11-26T10:00:00+00:00"}],"meta":{"fields":{},"dataScanned":"partial"}}"#.to_vec(),
            &data,
        )
        .unwrap();
        assert!(page.partial);
        assert_eq!(
            page.items[0].time,
            parse_rfc3339("2026-11-26T10:00:00Z").unwrap()
        );
        let page = parse_page(
            br#"{"data":[],"meta":{"dataScanned":"full"}}"#.to_vec(),
            &data,
        )
        .unwrap();
        assert!(!page.partial && page.items.is_empty());
        // Explore rows name their project: a whole number (or its text) is taken, anything
        // else leaves the row org-wide.
        let explore = Shape {
            project_field: Some("project.id"),
            ..data
        };
        let page = parse_page(
            br#"{"data":[{"id":"a","timestamp":"2026-11-26T10:00:00+00:00","project.id":42},{"id":"b","project.id":"7","timestamp":"2026-11-26T10:00:01+00:00"},{"id":"c","timestamp":"2026-11-26T10:00:02+00:00","project.id":-1},{"id":"d","timestamp":"2026-11-26T10:00:03+00:00","project.id":1.5},{"id":"e","timestamp":"2026-11-26T10:00:04+00:00"}]}"#.to_vec(),
            &explore,
        )
        .unwrap();
        let projects: Vec<Option<u64>> = page.items.iter().map(|i| i.project).collect();
        assert_eq!(projects, [Some(42), Some(7), None, None, None]);
        let plain = parse_page(
            br#"{"data":[{"id":"a","timestamp":"2026-11-26T10:00:00+00:00","project.id":42}]}"#
                .to_vec(),
            &data,
        )
        .unwrap();
        assert_eq!(plain.items[0].project, None);
        assert!(parse_page(br#"{"detail":"Query timeout"}"#.to_vec(), &data)
            .unwrap_err()
            .contains("Discover"));
    }

    #[test]
    fn the_scanner_refuses_what_is_not_json() {
        let ok = |b: &str| parse_page(b.as_bytes().to_vec(), &EVENTS);
        let good = r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":[1,-2.5e3,true,null,{"x":"\u00e9\n"}]}]"#;
        assert_eq!(ok(good).unwrap().items.len(), 1);
        for bad in [
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":01}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":tru}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":"a	b"}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":"\x"}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z",}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z"}] x"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z"}"#,
            r#"[{"eventID":"a" "dateCreated":"2026-11-26T10:00:00Z"}]"#,
            r#"[{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":1.}]"#,
        ] {
            assert!(ok(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
        // Hostile nesting is refused, not a stack overflow.
        let deep = format!(
            r#"[{{"eventID":"a","dateCreated":"2026-11-26T10:00:00Z","n":{}{}}}]"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(ok(&deep).is_err());
        // Escaped ids are read unescaped; a number id is its text.
        let page = ok(r#"[{"eventID":"a\u0062","dateCreated":"2026-11-26T10:00:00Z"},{"eventID":12,"dateCreated":"2026-11-26T10:00:00Z"}]"#).unwrap();
        assert_eq!(page.items[0].key, seen_key("ab"));
        assert_eq!(page.items[1].key, seen_key("12"));
        // A time that is not a string is refused.
        let page = ok(r#"[{"eventID":"a","dateCreated":1790000000}]"#).unwrap();
        assert!(page.items.is_empty() && page.rejected.len() == 1);
        // Nested keys with the same name are not the item's.
        let page =
            ok(r#"[{"x":{"eventID":"no"},"eventID":"yes","dateCreated":"2026-11-26T10:00:00Z"}]"#)
                .unwrap();
        assert_eq!(page.items[0].key, seen_key("yes"));
    }
}
