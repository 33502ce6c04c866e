//! `POST /sentry/webhook`: verify a delivery and keep it in the KV inbox, within Sentry's one
//! second, with no call to Sentry (and none to Cloud Storage unless inline flush is on).
//!
//! Answers: 200 kept (or already kept, or a resource not kept: acknowledged and counted);
//! 401 a missing or wrong signature, or a timestamp more than five minutes from now; 400 a
//! malformed delivery; 413 a body over [`MAX_BODY_BYTES`]; 404 when no
//! `sentry_webhook_secret` is set; 503 when the inbox is full or KV failed (Sentry retries
//! it). A refusal keeps nothing of the delivery.

use hmac::{Hmac, KeyInit, Mac};
use rsa::sha2::Sha256;
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::gcs::{self, GcsClient};
use crate::ports::Env;
use crate::retry::Deadline;

/// Inline flush gives its upload this long, so the answer stays well inside Sentry's second.
pub const INLINE_BUDGET_SECS: f64 = 0.5;

/// Whether `signature` (the header: 64 hex digits) is the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time.
pub fn signature_ok(secret: &str, body: &[u8], signature: Option<&str>) -> bool {
    let Some(sig) = signature.map(str::trim) else {
        return false;
    };
    if sig.len() != 64 {
        return false;
    }
    let Some(bytes) = crate::hex::decode(sig) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

/// The HMAC-SHA256 of `body` under `secret`, in lowercase hex (what Sentry sends).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    crate::hex::encode(&mac.finalize().into_bytes())
}

/// A refusal: its status, its reason (the counter's name) and what the answer says.
struct Refused(u16, &'static str, String);

/// A delivery as the route received it: header names in lower case, the body as sent.
pub struct Delivery<'a> {
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Delivery<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer: a status and a JSON body (a 503 asks Sentry to retry after a minute).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    fn ok(body: serde_json::Value) -> Answer {
        Answer { status: 200, body }
    }
}

/// A Request-ID as Sentry sends it (32 hex digits, or a dashed UUID); anything else of at most
/// 64 letters, digits and dashes is kept too; longer or stranger text is refused.
fn request_id(value: Option<&str>) -> Result<String, Refused> {
    let v = value.map(str::trim).unwrap_or("");
    if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(v.to_string())
    } else {
        Err(Refused(400, "malformed", "Request-ID is not an id".into()))
    }
}

/// `Sentry-Hook-Timestamp`: Unix seconds (an integer as Sentry sends, or a decimal).
fn sent_at(value: Option<&str>, now: f64) -> Result<i64, Refused> {
    let t: f64 = value
        .map(str::trim)
        .filter(|v| v.len() <= 20)
        .and_then(|v| v.parse().ok())
        .filter(|t: &f64| t.is_finite())
        .ok_or_else(|| {
            Refused(
                400,
                "malformed",
                "Sentry-Hook-Timestamp is not Unix seconds".into(),
            )
        })?;
    if (t - now).abs() > MAX_SKEW_SECS {
        return Err(Refused(
            401,
            "stale_timestamp",
            "Sentry-Hook-Timestamp is more than 5 minutes from now".into(),
        ));
    }
    Ok(t as i64)
}

/// Handles a delivery. The caller has routed it here and checked the method.
pub fn handle(env: &Env, config: &Config, req: &Delivery) -> Answer {
    let Some(secret) = config.webhook.secret.as_ref() else {
        return Answer {
            status: 404,
            body: json!({"error": "webhooks are not configured: set sentry_webhook_secret to the internal integration's client secret"}),
        };
    };
    let started = env.clock.now();
    match accept(env, config, secret.expose(), req, started) {
        Ok(answer) => answer,
        Err(Refused(status, reason, message)) => {
            refuse(env, reason, started);
            Answer {
                status,
                body: json!({ "error": message }),
            }
        }
    }
}

/// Counts a refusal and logs it; nothing of the delivery is kept. Counted only when webhooks
/// are on, and at most once a second (a flood of forged deliveries must not become a flood
/// of KV writes): every refusal is logged.
pub fn refuse(env: &Env, reason: &str, now: f64) {
    eprintln!("webhook refused: {reason}");
    let on = env
        .vars
        .get("sentry_webhook_secret")
        .ok()
        .flatten()
        .is_some_and(|s| !s.trim().is_empty());
    if !on {
        return;
    }
    update(env, |c| {
        if c.last_refused_at.is_some_and(|t| t == now as i64) {
            return false;
        }
        *c.refused.entry(reason.to_string()).or_default() += 1;
        c.last_refused_at = Some(now as i64);
        true
    });
}

/// Changes the intake's counters (best effort: a display); written back only if `change`
/// says so.
fn update(env: &Env, change: impl FnOnce(&mut IntakeCounts) -> bool) {
    let mut counts: IntakeCounts = crate::state::load(env.kv, INTAKE_KEY)
        .ok()
        .flatten()
        .unwrap_or_default();
    if change(&mut counts) {
        let _ = crate::state::save(env.kv, INTAKE_KEY, &counts);
    }
}

/// Adds one to a counter of the intake's.
fn count(env: &Env, add: impl FnOnce(&mut IntakeCounts)) {
    update(env, |c| {
        add(c);
        true
    });
}

fn accept(
    env: &Env,
    config: &Config,
    secret: &str,
    req: &Delivery,
    started: f64,
) -> Result<Answer, Refused> {
    if req.body.len() > MAX_BODY_BYTES {
        return Err(Refused(413, "too_large", "request body too large".into()));
    }
    // The signature first: nothing else is looked at for a caller who cannot sign.
    if !signature_ok(secret, req.body, req.header("sentry-hook-signature")) {
        return Err(Refused(
            401,
            "bad_signature",
            "Sentry-Hook-Signature does not match the body".into(),
        ));
    }
    let sent = sent_at(req.header("sentry-hook-timestamp"), started)?;
    let request_id = request_id(req.header("request-id"))?;
    let resource = req.header("sentry-hook-resource").unwrap_or("").trim();
    if resource.is_empty() {
        return Err(Refused(
            400,
            "malformed",
            "Sentry-Hook-Resource is missing".into(),
        ));
    }
    let Some(kind) = Kind::of(resource) else {
        return Ok(ignored(env, resource));
    };
    if kind == Kind::Event && !config.streams.iter().any(|s| s == "events") {
        return Ok(ignored(env, "error (events is not a collected stream)"));
    }
    if kind == Kind::Event && config.sentry.full_events {
        // The pull writes the event details' shape, which a webhook's payload does not have.
        return Ok(ignored(env, "error (left to the pull: sentry_full_events)"));
    }
    let body = super::check_body(resource, req.body).map_err(|m| Refused(400, "malformed", m))?;
    let project = match kind {
        Kind::Event => Some(
            super::webhook_event(&body)
                .map_err(|m| Refused(400, "malformed", m))?
                .project,
        ),
        _ => None,
    };
    let digest = super::identity(resource, &body, req.body);
    let keys = env.kv.keys().map_err(|e| {
        Refused(
            503,
            "store_failed",
            format!("the inbox could not be read: {e}"),
        )
    })?;
    let inbox: Vec<InboxKey> = keys.iter().filter_map(|k| parse_key(k)).collect();
    if inbox.iter().any(|k| k.digest == digest) {
        return Ok(Answer::ok(json!({ "kept": true, "duplicate": true })));
    }
    let full = inbox.len() >= config.webhook.inbox_max || keys.len() >= STORE_KEYS_FOR_INBOX;
    if kind == Kind::Event {
        // Error events get at most half the inbox, so they never crowd out what only
        // webhooks carry; past it they are left to the pull, which collects every event.
        let events = inbox.iter().filter(|k| k.kind == Kind::Event).count();
        if full || events >= config.webhook.inbox_max / 2 {
            count(env, |c| c.errors_left_to_the_pull += 1);
            return Ok(Answer::ok(
                json!({ "kept": false, "reason": "the inbox's share for error events is full; the pull collects the event" }),
            ));
        }
    } else if full {
        return Err(Refused(
            503,
            "inbox_full",
            "the inbox is full until the next run drains it; Sentry will retry".into(),
        ));
    }
    let inline = config.webhook.inline && kind != Kind::Event;
    let meta = Meta {
        resource: resource.to_string(),
        request_id,
        sent_at: sent,
        received_at: started as i64,
        inline,
    };
    let key = inbox_key(kind, meta.received_at, &digest, project);
    env.kv
        .set(&key, &encode_record(&meta, req.body))
        .map_err(|e| {
            Refused(
                503,
                "store_failed",
                format!("the delivery could not be kept: {e}"),
            )
        })?;
    let mut answer = json!({ "kept": true });
    if inline {
        let written = flush_inline(env, config, kind, &key, &meta, req.body, started);
        answer["inline_ms"] = json!(((env.clock.now() - started) * 1000.0).round());
        match written {
            Ok(()) => answer["inline"] = json!("written"),
            Err(e) => {
                // The delivery stays in the inbox: the next run writes it (or finds the object).
                eprintln!("webhook inline flush failed, left in the inbox: {e}");
                answer["inline"] = json!("left in the inbox");
                count(env, |c| c.inline_failed += 1);
            }
        }
    }
    Ok(Answer::ok(answer))
}

/// A resource that is not kept: acknowledged (Sentry must not retry it) and counted.
fn ignored(env: &Env, resource: &str) -> Answer {
    let name: String = resource
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '(' | ')'))
        .take(60)
        .collect();
    count(env, |c| {
        if c.ignored.len() < 32 || c.ignored.contains_key(&name) {
            *c.ignored.entry(name).or_default() += 1;
        }
    });
    Answer::ok(json!({ "kept": false, "reason": "resource not collected" }))
}

/// Writes one delivery's line as its own object, named by its digest, so that the answer
/// leaves by [`INLINE_BUDGET_SECS`] after the request came (every Cloud Storage timeout is
/// cut to what is left). On success the inbox key is deleted; on failure it stays, marked
/// `inline`, and the drain writes it under the same name.
fn flush_inline(
    env: &Env,
    config: &Config,
    kind: Kind,
    key: &str,
    meta: &Meta,
    body: &[u8],
    started: f64,
) -> Result<(), String> {
    let deadline = started + INLINE_BUDGET_SECS;
    let left = deadline - env.clock.now();
    if left < 0.05 {
        return Err("no time left to write it within Sentry's second".into());
    }
    let digest = parse_key(key)
        .map(|k| k.digest.to_string())
        .unwrap_or_default();
    let mut line = activity_line(meta, body).ok_or("the delivery has no line")?;
    line.push(b'\n');
    let name = inline_object_name(&config.gcs.prefix, &config.sentry.org, kind, &digest);
    let client = GcsClient::new(*env, &config.gcs, Deadline(deadline))
        .map_err(|e| e.to_string())?
        .strict_deadline();
    // A token exchange (hourly, on token_exchange auth) is not bounded to a fraction of a
    // second: that delivery waits for the run instead.
    if !client.token_ready() {
        return Err("no access token at hand without a token request".into());
    }
    write_inline(&client, &name, line)?;
    // Deleted only now the object is confirmed. If this fails, the drain finds the object.
    env.kv.delete(key).map_err(|e| format!("KV delete: {e}"))?;
    Ok(())
}

/// Creates an inline object; `false` when it was there already. It is named by the
/// delivery's digest: one that exists (with this line, or with a racing copy's, which
/// differs only in Request-ID and times) means the change is in the bucket.
pub fn write_inline(client: &GcsClient, name: &str, line: Vec<u8>) -> Result<bool, String> {
    let content = gcs::Content::of(&line);
    match client.create(name, line, &content, 1) {
        Ok(uploaded) => Ok(!uploaded.already_present),
        Err(gcs::GcsError::Fatal(m)) if m.contains("already exists") => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}
