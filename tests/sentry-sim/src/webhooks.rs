//! Sentry's integration-platform webhooks, as Sentry sends them (`sentry_apps`'
//! `AppPlatformEvent`): the body is Python's `json.dumps` of `{action, installation, data,
//! actor}` (", " and ": " separators, non-ASCII escaped); `Sentry-Hook-Signature` is the hex
//! HMAC-SHA256 of the body with the client secret; `Sentry-Hook-Timestamp` is Unix seconds at
//! send time; `Request-ID` is a fresh random UUID (hex) for every send, retries included.
//!
//! Tests ask the simulator to change an issue (with the user who did it) or to announce an
//! event, and get the deliveries to send: the genuine one, and as drawn, Sentry's retry of it
//! (new Request-ID and timestamp; a later retry of an issue change is built again with
//! [`Sim::issue_webhook`], as Sentry's task does), a duplicate (the same request twice at once),
//! and hostile variants that must be refused (a forged signature, a stale timestamp: each of
//! a body that would be a change nobody made).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{issue_id, time, Event, Rng, Sim};

/// The installation every delivery names.
pub const INSTALLATION: &str = "a8e5d37a-696c-4c54-adb5-b3f28d64c7de";

/// One HTTP delivery.
#[derive(Debug, Clone)]
pub struct Hook {
    pub resource: String,
    pub body: Vec<u8>,
    pub request_id: String,
    pub timestamp: i64,
    pub signature: String,
    /// Sentry sent it with the right secret and a current timestamp: it must be accepted.
    pub genuine: bool,
}

/// How often each variant is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Mischief {
    pub retry: f64,
    pub duplicate: f64,
    pub forged: f64,
    pub stale: f64,
}

impl Mischief {
    /// The genuine delivery alone: no retry, duplicate or hostile copy.
    pub const NONE: Mischief = Mischief {
        retry: 0.0,
        duplicate: 0.0,
        forged: 0.0,
        stale: 0.0,
    };
}

impl Default for Mischief {
    fn default() -> Self {
        Mischief {
            retry: 0.2,
            duplicate: 0.1,
            forged: 0.1,
            stale: 0.1,
        }
    }
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Python's `json.dumps(v)`: `", "` and `": "` separators, non-ASCII as `\uXXXX`.
pub fn python_dumps(v: &Value) -> String {
    let mut out = String::new();
    dump(v, &mut out);
    out
}

fn dump(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump(item, out);
            }
            out.push('}');
        }
        Value::String(s) => dump_str(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn dump_str(s: &str, out: &mut String) {
    let quoted = serde_json::to_string(s).expect("a string");
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
}

fn body(action: &str, data: Value, actor: Value) -> Vec<u8> {
    // Sentry's key order: action, installation, data, actor.
    let mut m = serde_json::Map::new();
    m.insert("action".into(), json!(action));
    m.insert("installation".into(), json!({ "uuid": INSTALLATION }));
    m.insert("data".into(), data);
    m.insert("actor".into(), actor);
    python_dumps(&Value::Object(m)).into_bytes()
}

/// A user as an actor.
pub fn user(id: u64, name: &str) -> Value {
    json!({ "type": "user", "id": id, "name": name })
}

impl Sim {
    /// A user changes an issue (`resolved`, `unresolved`, `archived`, `assigned`): the API
    /// shows the new state from now on, and the webhook body announcing it is returned.
    pub fn change_issue(&self, issue: u64, action: &str, actor: (u64, &str)) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let (before, _) = self.issue_snapshot(issue, now)?;
        let assignee = before["assignedTo"].clone();
        match action {
            "resolved" => self.set_issue_state(issue, "resolved", Value::Null, assignee),
            "unresolved" => self.set_issue_state(issue, "unresolved", json!("ongoing"), assignee),
            "archived" => self.set_issue_state(
                issue,
                "ignored",
                json!("archived_until_escalating"),
                assignee,
            ),
            "assigned" => {
                let status = before["status"]
                    .as_str()
                    .unwrap_or("unresolved")
                    .to_string();
                self.set_issue_state(
                    issue,
                    &status,
                    before["substatus"].clone(),
                    json!({"type": "user", "id": actor.0.to_string(), "name": actor.1, "email": format!("{}@example.com", actor.1)}),
                )
            }
            _ => return None,
        }
        self.issue_webhook(issue, action, actor)
    }

    /// An issue webhook's body built now, as Sentry builds it again for each retry (the issue
    /// serialized as it is at that moment: its count and lastSeen may have moved).
    pub fn issue_webhook(&self, issue: u64, action: &str, actor: (u64, &str)) -> Option<Vec<u8>> {
        let (mut v, _) = self.issue_snapshot(issue, self.clock.now())?;
        let org = &self.options.org;
        let base = self.url();
        let project = v["project"]["id"].as_str().unwrap_or_default().to_string();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "url".into(),
                json!(format!("{base}/api/0/organizations/{org}/issues/{issue}/")),
            );
            o.insert(
                "web_url".into(),
                json!(format!("{base}/organizations/{org}/issues/{issue}/")),
            );
            o.insert(
                "project_url".into(),
                json!(format!(
                    "{base}/organizations/{org}/issues/?project={}",
                    project
                )),
            );
        }
        Some(body(action, json!({ "issue": v }), user(actor.0, actor.1)))
    }

    /// The `error` webhook body of an event (what Sentry posts when it is processed).
    pub fn error_webhook(&self, e: &Event) -> Vec<u8> {
        body(
            "created",
            json!({ "error": self.event_payload(e) }),
            json!({"type": "application", "id": "sentry", "name": "Sentry"}),
        )
    }

    /// The `event_alert` webhook body of an alert rule `rule` that `e` triggered.
    pub fn event_alert(&self, e: &Event, rule: &str) -> Vec<u8> {
        body(
            "triggered",
            json!({
                "event": self.event_payload(e),
                "triggered_rule": rule,
                "issue_alert": {"title": rule, "settings": [{"name": "channel", "value": "#security"}]},
            }),
            json!({"type": "application", "id": "sentry", "name": "Sentry"}),
        )
    }

    /// The `comment` webhook body of a user's comment on an issue.
    pub fn comment(
        &self,
        issue: u64,
        comment_id: u64,
        text: &str,
        actor: (u64, &str),
    ) -> Option<Vec<u8>> {
        let (_, slug) = self.issue_snapshot(issue, self.clock.now())?;
        Some(body(
            "created",
            json!({
                "comment": text,
                "project_slug": slug,
                "comment_id": comment_id,
                "issue_id": issue,
                "timestamp": format!("{}.118160Z", time::rfc3339(self.clock.now()).trim_end_matches('Z')),
            }),
            user(actor.0, actor.1),
        ))
    }

    /// An event as webhooks carry it (its stored payload, with API links).
    fn event_payload(&self, e: &Event) -> Value {
        let slug = self
            .projects()
            .into_iter()
            .find(|p| p.id == e.project_id)
            .map_or_else(|| "unknown".to_string(), |p| p.slug);
        let org = &self.options.org;
        let base = self.url();
        let issue = issue_id(e.project_id, e.group_id);
        let error = json!({
            "event_id": e.event_id,
            "project": e.project_id,
            "issue_id": issue.to_string(),
            "datetime": format!("{}.{:06}Z", time::rfc3339(e.date_created).trim_end_matches('Z'), 391_000),
            "timestamp": e.date_created as f64 + 0.391,
            "received": e.received_at as f64,
            "title": e.title,
            "message": "",
            "level": "error",
            "platform": "python",
            "culprit": "/api/checkout/",
            "location": "app/checkout.py",
            "logger": "",
            "type": "error",
            "version": "7",
            "metadata": {"type": "ValueError", "value": e.title},
            "exception": {"values": [{"type": "ValueError", "value": e.title}]},
            "tags": [["environment", "production"], ["level", "error"]],
            "user": {"ip_address": "203.0.113.7"},
            "url": format!("{base}/api/0/projects/{org}/{slug}/events/{}/", e.event_id),
            "web_url": format!("{base}/organizations/{org}/issues/{issue}/events/{}/", e.event_id),
            "issue_url": format!("{base}/api/0/issues/{issue}/"),
        });
        error
    }
}

fn request_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// The deliveries of one change: the genuine one first, then what `mischief` draws. A
/// duplicate has the genuine one's Request-ID; a retry a new one and a later timestamp.
pub fn deliveries(
    resource: &str,
    body: &[u8],
    secret: &str,
    now: i64,
    rng: &mut Rng,
    mischief: Mischief,
) -> Vec<Hook> {
    let hook = |body: &[u8], id: String, timestamp: i64, signature: String, genuine: bool| Hook {
        resource: resource.to_string(),
        body: body.to_vec(),
        request_id: id,
        timestamp,
        signature,
        genuine,
    };
    let genuine = hook(body, request_id(rng), now, sign(secret, body), true);
    let mut out = vec![genuine.clone()];
    if rng.chance(mischief.duplicate) {
        out.push(genuine.clone());
    }
    if rng.chance(mischief.retry) {
        out.push(hook(
            body,
            request_id(rng),
            now + 1 + rng.below(30) as i64,
            sign(secret, body),
            true,
        ));
    }
    // A change nobody made: a different actor, so if it were kept the bucket would show it.
    let forged_body = String::from_utf8_lossy(body)
        .replacen("\"actor\": {", "\"actor\": {\"forged\": true, ", 1)
        .into_bytes();
    if rng.chance(mischief.forged) {
        let wrong = sign("not-the-client-secret-at-all-00000", &forged_body);
        out.push(hook(&forged_body, request_id(rng), now, wrong, false));
    }
    if rng.chance(mischief.stale) {
        out.push(hook(
            &forged_body,
            request_id(rng),
            now - 301 - rng.below(3600) as i64,
            sign(secret, &forged_body),
            false,
        ));
    }
    out
}

/// Posts a delivery to `addr` (the collector's HTTP route) and returns the status and body.
pub async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    hook: &Hook,
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nRequest-ID: {}\r\nSentry-Hook-Resource: {}\r\nSentry-Hook-Timestamp: {}\r\nSentry-Hook-Signature: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        hook.request_id,
        hook.resource,
        hook.timestamp,
        hook.signature,
        hook.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&hook.body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
