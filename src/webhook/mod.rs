//! Sentry's integration-platform webhooks: issue lifecycle changes and comments with who made
//! them, alert firings, and full error events, pushed by Sentry to `POST /sentry/webhook`.
//!
//! The intake ([`intake`]) verifies a delivery and keeps it in a KV inbox, one key per
//! delivery, answering within Sentry's one-second budget without calling Sentry or Cloud
//! Storage (unless inline flush is on). The next run drains the inbox ([`drain`], and for
//! `error` webhooks the `events` collection itself) with the pull's two-phase commit.
//!
//! Facts from Sentry's source (`sentry_apps/api/serializers/app_platform_event.py`,
//! `SentryApp.build_signature`): the body is `json.dumps` of `{action, installation, data,
//! actor}`; `Sentry-Hook-Signature` is the lowercase hex HMAC-SHA256 of the body with the
//! integration's client secret; `Sentry-Hook-Timestamp` is Unix seconds when sent;
//! `Request-ID` is a fresh random UUID for every send. So a retry of the same change carries a
//! new Request-ID and timestamp and the same body, and the timestamp is not signed: the inbox
//! is keyed by a digest of the signed body, which collapses retries and duplicate deliveries
//! (and a replayed body) into one, and the Request-ID is kept in the record.

pub mod drain;
pub mod intake;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ports::KeyValue;
use crate::time::{parse_rfc3339, rfc3339};

/// The route Sentry's internal integration posts to (scripts outside the crate rely on it).
pub const ROUTE: &str = "/sentry/webhook";

/// The largest delivery accepted: the record (a header line and the body) must fit in one KV
/// value (1 MB on every Spin platform). `issue`, `comment` and alert bodies are a few KB; an
/// `error` body is the whole event, which Sentry caps near 1 MB, so the rare larger one is
/// refused (413) and reaches the bucket through the pull.
pub const MAX_BODY_BYTES: usize = 1_000_000;

/// A delivery whose `Sentry-Hook-Timestamp` is further than this from now is refused.
pub const MAX_SKEW_SECS: f64 = 300.0;

/// Inbox keys start here: `v1/inbox/{kind}/{received}-{digest}`.
pub const INBOX_PREFIX: &str = "v1/inbox/";

/// The drain's record: its pending object, the digests recently delivered, the last delivery.
pub const DRAIN_KEY: &str = "v1/webhook/drain";

/// The intake's counters (refusals by reason, resources acknowledged but not kept).
pub const INTAKE_KEY: &str = "v1/webhook/intake";

/// Fermyon Cloud's limit on the keys of a store, which the inbox shares with the state.
pub const STORE_KEYS: usize = 1024;

/// The intake refuses a delivery (503, Sentry retries it) once the store holds this many keys:
/// a quarter of the store stays for the collector's own state, which must never be refused.
pub const STORE_KEYS_FOR_INBOX: usize = STORE_KEYS * 3 / 4;

/// How long a delivered digest is remembered, so a late retry of Sentry's is recognised.
/// Sentry's retries come within minutes; an identical body an hour later is taken for a new
/// change (an issue payload carries no time or id of the change itself).
pub const RECENT_SECS: i64 = 3600;

/// The most digests remembered (32 hex digits and a time each: about 50 bytes in JSON, so
/// the drain's record stays near half a megabyte at most).
pub const MAX_RECENT: usize = 10_000;

/// Where a resource's deliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `issue` and `comment`: one line each in `issue_activity/`.
    Activity,
    /// `event_alert` and `metric_alert`: one line each in `alerts/`.
    Alert,
    /// `error`: the event, in `events/`, once with what the pull delivers.
    Event,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Activity, Kind::Alert, Kind::Event];

    /// The kind of a `Sentry-Hook-Resource`; `None` for resources not kept (`installation`:
    /// Sentry's audit log records it; and any resource Sentry adds later).
    pub fn of(resource: &str) -> Option<Kind> {
        match resource {
            "issue" | "comment" => Some(Kind::Activity),
            "event_alert" | "metric_alert" => Some(Kind::Alert),
            "error" => Some(Kind::Event),
            _ => None,
        }
    }

    /// The folder under `gcs_prefix` its objects go to.
    pub fn stream(self) -> &'static str {
        match self {
            Kind::Activity => "issue_activity",
            Kind::Alert => "alerts",
            Kind::Event => "events",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Activity => "a",
            Kind::Alert => "l",
            Kind::Event => "e",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

/// The first 32 hex digits of the SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> String {
    crate::gcs::sha256_hex(bytes)[..32].to_string()
}

/// A delivery's identity, the first 32 hex digits of the SHA-256 of what makes it one change.
/// Sentry gives every send a new Request-ID, and rebuilds an issue webhook's body when it
/// retries one (the issue serialized again: its `count` and `lastSeen` may have moved since),
/// so an `issue` delivery is identified by its action, the issue, the actor and the issue's
/// new state; a `comment` by its action, comment, text and time; an `event_alert` by its rule
/// and event; an `error` by its event; anything else by its whole signed body.
pub fn identity(resource: &str, body: &Value, raw: &[u8]) -> String {
    let at = |p: &str| body.pointer(p).cloned().unwrap_or(Value::Null);
    let parts = match resource {
        "issue" => vec![
            at("/data/issue/id"),
            at("/data/issue/status"),
            at("/data/issue/substatus"),
            at("/data/issue/statusDetails"),
            at("/data/issue/assignedTo"),
        ],
        "comment" => vec![
            at("/data/comment_id"),
            at("/data/comment"),
            at("/data/timestamp"),
        ],
        "event_alert" => vec![at("/data/triggered_rule"), at("/data/event/event_id")],
        "error" => vec![at("/data/error/event_id")],
        _ => return digest(raw),
    };
    let mut key = vec![Value::from(resource), at("/action"), at("/actor")];
    key.extend(parts);
    digest(&serde_json::to_vec(&key).unwrap_or_default())
}

/// An inbox key: `v1/inbox/{kind}/{received}-{digest}` (Unix seconds, 32 hex digits), and
/// for an `error` delivery `-{project}` after it, so each shard finds its own without reading.
pub fn inbox_key(kind: Kind, received: i64, digest: &str, project: Option<u64>) -> String {
    let project = project.map(|p| format!("-{p}")).unwrap_or_default();
    format!(
        "{INBOX_PREFIX}{}/{received:010}-{digest}{project}",
        kind.tag()
    )
}

/// An inbox key read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxKey<'a> {
    pub kind: Kind,
    pub received: i64,
    pub digest: &'a str,
    /// An `error` delivery's project.
    pub project: Option<u64>,
}

/// An inbox key read back; `None` for anything else.
pub fn parse_key(key: &str) -> Option<InboxKey<'_>> {
    let rest = key.strip_prefix(INBOX_PREFIX)?;
    let (tag, rest) = rest.split_once('/')?;
    let kind = Kind::from_tag(tag)?;
    let (received, rest) = rest.split_once('-')?;
    let (digest, project) = match (kind, rest.split_once('-')) {
        (Kind::Event, Some((d, p)))
            if !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (d, Some(p.parse().ok()?))
        }
        (Kind::Event, _) => return None,
        (_, None) => (rest, None),
        (_, Some(_)) => return None,
    };
    let ok = digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok || received.len() != 10 || !received.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(InboxKey {
        kind,
        received: received.parse().ok()?,
        digest,
        project,
    })
}

/// What the intake records with a delivery, on the record's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub resource: String,
    pub request_id: String,
    /// `Sentry-Hook-Timestamp`: when Sentry sent it.
    pub sent_at: i64,
    pub received_at: i64,
    /// The intake tried to write it straight away (see [`inline_object_name`]).
    #[serde(default)]
    pub inline: bool,
}

/// An inbox record: the metadata as one JSON line, then the body exactly as signed.
pub fn encode_record(meta: &Meta, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(meta).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// A record read back; `None` when it is not one.
pub fn decode_record(bytes: &[u8]) -> Option<(Meta, &[u8])> {
    let split = bytes.iter().position(|&b| b == b'\n')?;
    let meta = serde_json::from_slice(&bytes[..split]).ok()?;
    Some((meta, &bytes[split + 1..]))
}

/// An `error` delivery's event: id, time, project, and the event as one line of the pull's
/// shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub event_id: String,
    pub time: i64,
    pub project: u64,
    pub line: Vec<u8>,
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.len() <= 20 => s.parse().ok(),
        _ => None,
    }
}

/// The time of an event: `timestamp` (Unix seconds, with its fraction) or `datetime`.
fn event_time(e: &Value) -> Option<f64> {
    if let Some(t) = e.get("timestamp").and_then(Value::as_f64) {
        if t.is_finite() && t > 0.0 && t < 1e11 {
            return Some(t);
        }
    }
    let text = e.get("datetime").and_then(Value::as_str)?;
    let secs = parse_rfc3339(text)?;
    let frac = text
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .filter(|f| !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()))
        .map_or(0.0, |f| {
            f.parse::<f64>().unwrap_or(0.0) / 10f64.powi(f.len() as i32)
        });
    Some(secs as f64 + frac)
}

/// Tags as the events API writes them (`[{"key", "value"}]`), from the event payload's pairs.
fn api_tags(tags: Option<&Value>) -> Value {
    let pairs = tags
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    Value::Array(
        pairs
            .iter()
            .filter_map(|p| match p {
                Value::Array(kv) if kv.len() == 2 => {
                    Some(serde_json::json!({ "key": kv[0], "value": kv[1] }))
                }
                Value::Object(_) => Some(p.clone()),
                _ => None,
            })
            .collect(),
    )
}

/// The event in the shape the pull writes (the project events list's), so the `events/` feed
/// parses both paths' lines alike. Sentry's `error` webhook carries the event's stored
/// payload, in other names (`event_id`, `datetime`, tag pairs): each field the list shows is
/// moved to its API name. (With `sentry_full_events` the pull writes the event details' shape,
/// whose stack frames and entries are not the stored payload's: `error` deliveries are then
/// left to the pull.)
fn api_event(e: &Value, id: &str, time: f64, project: u64) -> Value {
    let pick = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    serde_json::json!({
        "id": id,
        "eventID": id,
        "groupID": e.get("issue_id").map(|i| match i { Value::Number(n) => Value::String(n.to_string()), other => other.clone() }),
        "projectID": project.to_string(),
        "event.type": e.get("type").cloned().unwrap_or_else(|| "error".into()),
        "title": pick("title"),
        "message": pick("message"),
        "culprit": pick("culprit"),
        "location": pick("location"),
        "platform": pick("platform"),
        "dateCreated": rfc3339(time.floor() as i64),
        "tags": api_tags(e.get("tags")),
        "user": pick("user"),
        "crashFile": null,
        "metadata": pick("metadata"),
    })
}

/// The event of an `error` body (`data.error`), or why it cannot be kept.
pub fn webhook_event(payload: &Value) -> Result<WebhookEvent, String> {
    let e = payload
        .pointer("/data/error")
        .filter(|e| e.is_object())
        .ok_or("an error webhook without data.error")?;
    let id = e
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("data.error.event_id is not a 32-digit hex id")?
        .to_ascii_lowercase();
    let time = event_time(e).ok_or("data.error has no readable timestamp or datetime")?;
    let project = e
        .get("project")
        .and_then(as_u64)
        .ok_or("data.error.project is not a project id")?;
    let line = serde_json::to_vec(&api_event(e, &id, time, project)).map_err(|e| e.to_string())?;
    Ok(WebhookEvent {
        event_id: id,
        time: time.floor() as i64,
        project,
        line,
    })
}

/// Checks the shape every kept body has: a JSON object with an `action` and a `data` object
/// holding what the resource names (so an `issue` body cannot be relabelled an alert: the
/// resource header is not signed).
pub fn check_body(resource: &str, body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_string())?;
    if !v.get("action").is_some_and(Value::is_string) {
        return Err("the body has no action".into());
    }
    let data = v
        .get("data")
        .filter(|d| d.is_object())
        .ok_or("the body has no data object")?;
    let has = |k: &str| data.get(k).is_some_and(|x| !x.is_null());
    let fits = match resource {
        "issue" => data.get("issue").is_some_and(Value::is_object),
        "comment" => has("comment_id") && has("issue_id"),
        "event_alert" => data.get("event").is_some_and(Value::is_object),
        "metric_alert" => data.get("metric_alert").is_some_and(Value::is_object),
        // The event itself is read (and refused if unreadable) by `webhook_event`, once.
        "error" => data.get("error").is_some_and(Value::is_object),
        _ => true,
    };
    if !fits {
        return Err(format!("the body is not a {resource} delivery"));
    }
    Ok(v)
}

/// The NDJSON line of an `issue`, `comment` or alert delivery: what happened, who did it, to
/// which issue or alert, when; the delivery's Request-ID and times; and the payload as
/// Sentry sent it (its insignificant line breaks made spaces, so it stays one line).
pub fn activity_line(meta: &Meta, body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?;
    let (time, subject) = match meta.resource.as_str() {
        "issue" => {
            let issue = data.get("issue");
            let pick = |k: &str| issue.and_then(|i| i.get(k)).cloned();
            (
                None,
                serde_json::json!({ "issue": {
                    "id": pick("id"),
                    "shortId": pick("shortId"),
                    "title": pick("title"),
                    "status": pick("status"),
                    "substatus": pick("substatus"),
                    "statusDetails": pick("statusDetails"),
                    "assignedTo": pick("assignedTo"),
                    "project": pick("project"),
                    "web_url": pick("web_url"),
                }}),
            )
        }
        "comment" => (
            data.get("timestamp")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339),
            serde_json::json!({ "issue": {
                "id": data.get("issue_id"),
                "project": { "slug": data.get("project_slug") },
            }, "comment": {
                "id": data.get("comment_id"),
                "text": data.get("comment"),
            }}),
        ),
        "event_alert" => (
            None,
            serde_json::json!({ "alert": {
                "rule": data.get("triggered_rule"),
                "issue_alert": data.get("issue_alert").and_then(|a| a.get("title")),
                "event_id": data.pointer("/event/event_id"),
                "issue_id": data.pointer("/event/issue_id"),
                "project": data.pointer("/event/project"),
            }}),
        ),
        "metric_alert" => (
            None,
            serde_json::json!({ "alert": {
                "title": data.get("description_title"),
                "text": data.get("description_text"),
                "rule": data.pointer("/metric_alert/alert_rule/name"),
                "web_url": data.get("web_url"),
            }}),
        ),
        _ => return None,
    };
    let mut line = serde_json::json!({
        "resource": meta.resource,
        "action": v.get("action"),
        "time": rfc3339(time.unwrap_or(meta.sent_at)),
        "actor": v.get("actor"),
        "request_id": meta.request_id,
        "sent_at": rfc3339(meta.sent_at),
        "received_at": rfc3339(meta.received_at),
    });
    if let (Some(line), Some(subject)) = (line.as_object_mut(), subject.as_object()) {
        for (k, val) in subject {
            line.insert(k.clone(), val.clone());
        }
    }
    let mut out = serde_json::to_vec(&line).ok()?;
    // `"payload":` and the body as signed, in place of the closing brace.
    out.pop();
    out.extend_from_slice(b",\"payload\":");
    out.extend(
        body.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.extend_from_slice(b"}");
    Some(out)
}

/// The object an inline flush writes a delivery to: named by its digest alone, so whichever
/// of two racing intakes writes it, and the drain after either, name the same object.
pub fn inline_object_name(prefix: &str, org: &str, kind: Kind, digest: &str) -> String {
    let stream = kind.stream();
    format!("{prefix}{stream}/webhook/{org}-{stream}.webhook-{digest}.ndjson")
}

/// The drain's record (written only under the lease).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainState {
    /// The lease epoch of the last writer: an older holder must not write over it.
    #[serde(default)]
    pub epoch: u64,
    /// An object being written: its inbox keys are deleted once it is confirmed.
    #[serde(default)]
    pub pending: Option<PendingBatch>,
    /// Digests delivered lately, with when: a late duplicate of one is dropped.
    #[serde(default)]
    pub recent: Vec<(String, i64)>,
    #[serde(default)]
    pub last_delivery: Option<i64>,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub duplicates: u64,
    /// The last drain's error, if it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// An object the drain is writing (the two-phase commit's first phase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingBatch {
    pub name: String,
    pub content: String,
    pub keys: Vec<String>,
    pub digests: Vec<String>,
}

impl DrainState {
    pub fn knows(&self, digest: &str) -> bool {
        self.recent.iter().any(|(d, _)| d == digest)
    }

    /// Forgets digests older than [`RECENT_SECS`] unless an inbox key still carries one (a run
    /// that died before deleting it, however long ago: its next drain must still drop it).
    pub fn forget_old(&mut self, now: i64, in_inbox: &std::collections::HashSet<&str>) {
        self.recent
            .retain(|(d, at)| *at > now - RECENT_SECS || in_inbox.contains(d.as_str()));
    }

    /// Remembers digests delivered at `now`, forgetting the oldest past [`MAX_RECENT`].
    pub fn remember(&mut self, digests: &[String], now: i64) {
        for d in digests {
            if !self.knows(d) {
                self.recent.push((d.clone(), now));
            }
        }
        let over = self.recent.len().saturating_sub(MAX_RECENT);
        self.recent.drain(..over);
    }
}

/// The intake's counters. Concurrent refusals may each miss the other's increment: they are
/// a display, and every refusal is also logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntakeCounts {
    /// Refusals by reason: `bad_signature`, `stale_timestamp`, `too_large`, `malformed`,
    /// `inbox_full`, `store_failed`.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Deliveries of resources not kept, by resource.
    #[serde(default)]
    pub ignored: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub last_refused_at: Option<i64>,
    /// Inline flushes that failed (the delivery stayed in the inbox).
    #[serde(default)]
    pub inline_failed: u64,
    /// `error` deliveries acknowledged but not kept because their share of the inbox was full
    /// (the pull collects those events anyway).
    #[serde(default)]
    pub errors_left_to_the_pull: u64,
}

/// What `/status` shows of the inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InboxView {
    pub configured: bool,
    /// Deliveries waiting, by folder.
    pub pending: std::collections::BTreeMap<&'static str, u64>,
    pub oldest_received_at: Option<String>,
    pub oldest_age_secs: Option<i64>,
    pub last_delivery: Option<String>,
    pub delivered: u64,
    pub duplicates: u64,
    pub refused: std::collections::BTreeMap<String, u64>,
    pub ignored: std::collections::BTreeMap<String, u64>,
    pub inline_failed: u64,
    pub errors_left_to_the_pull: u64,
    pub last_error: Option<String>,
}

/// The inbox as `/status` shows it, from the key list and two small records.
pub fn view(kv: &dyn KeyValue, configured: bool, now: i64) -> InboxView {
    let keys = kv.keys().unwrap_or_default();
    let mut v = InboxView {
        configured,
        ..InboxView::default()
    };
    let mut oldest: Option<i64> = None;
    for key in &keys {
        if let Some(k) = parse_key(key) {
            *v.pending.entry(k.kind.stream()).or_default() += 1;
            oldest = Some(oldest.map_or(k.received, |o| o.min(k.received)));
        }
    }
    v.oldest_received_at = oldest.map(rfc3339);
    v.oldest_age_secs = oldest.map(|o| (now - o).max(0));
    if let Ok(Some(d)) = crate::state::load::<DrainState>(kv, DRAIN_KEY) {
        v.last_delivery = d.last_delivery.map(rfc3339);
        v.delivered = d.delivered;
        v.duplicates = d.duplicates;
        v.last_error = d.error;
    }
    if let Ok(Some(c)) = crate::state::load::<IntakeCounts>(kv, INTAKE_KEY) {
        v.refused = c.refused;
        v.ignored = c.ignored;
        v.inline_failed = c.inline_failed;
        v.errors_left_to_the_pull = c.errors_left_to_the_pull;
    }
    v
}

#[cfg(test)]
mod tests;
