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
    let now = env.clock.now();
    match accept(env, config, secret.expose(), req, now) {
        Ok(answer) => answer,
        Err(Refused(status, reason, message)) => {
            refuse(env, reason, now);
            Answer {
                status,
                body: json!({ "error": message }),
            }
        }
    }
}

/// Counts a refusal (best effort) and logs it; nothing of the delivery is kept.
pub fn refuse(env: &Env, reason: &str, now: f64) {
    eprintln!("webhook refused: {reason}");
    let mut counts: IntakeCounts = crate::state::load(env.kv, INTAKE_KEY)
        .ok()
        .flatten()
        .unwrap_or_default();
    *counts.refused.entry(reason.to_string()).or_default() += 1;
    counts.last_refused_at = Some(now as i64);
    let _ = crate::state::save(env.kv, INTAKE_KEY, &counts);
}

fn accept(
    env: &Env,
    config: &Config,
    secret: &str,
    req: &Delivery,
    now: f64,
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
    let sent = sent_at(req.header("sentry-hook-timestamp"), now)?;
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
    super::check_body(kind, req.body).map_err(|m| Refused(400, "malformed", m))?;
    let digest = super::digest(req.body);
    let keys = env.kv.keys().map_err(|e| {
        Refused(
            503,
            "store_failed",
            format!("the inbox could not be read: {e}"),
        )
    })?;
    let suffix = format!("-{digest}");
    if keys
        .iter()
        .any(|k| k.starts_with(INBOX_PREFIX) && k.ends_with(&suffix))
    {
        return Ok(Answer::ok(json!({ "kept": true, "duplicate": true })));
    }
    let inbox = keys.iter().filter(|k| k.starts_with(INBOX_PREFIX)).count();
    if inbox >= config.webhook.inbox_max || keys.len() >= STORE_KEYS_FOR_INBOX {
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
        received_at: now as i64,
        inline,
    };
    let key = inbox_key(kind, meta.received_at, &digest);
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
        let started = env.clock.now();
        let written = flush_inline(env, config, kind, &digest, &meta, req.body);
        answer["inline_ms"] = json!(((env.clock.now() - started) * 1000.0).round());
        match written {
            Ok(()) => answer["inline"] = json!("written"),
            Err(e) => {
                // The delivery stays in the inbox: the next run writes it (or finds the object).
                eprintln!("webhook inline flush failed, left in the inbox: {e}");
                answer["inline"] = json!("left in the inbox");
                let mut counts: IntakeCounts = crate::state::load(env.kv, INTAKE_KEY)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                counts.inline_failed += 1;
                let _ = crate::state::save(env.kv, INTAKE_KEY, &counts);
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
    let mut counts: IntakeCounts = crate::state::load(env.kv, INTAKE_KEY)
        .ok()
        .flatten()
        .unwrap_or_default();
    if counts.ignored.len() < 32 || counts.ignored.contains_key(&name) {
        *counts.ignored.entry(name).or_default() += 1;
        let _ = crate::state::save(env.kv, INTAKE_KEY, &counts);
    }
    Answer::ok(json!({ "kept": false, "reason": "resource not collected" }))
}

/// Writes one delivery's line as its own object, named by its digest, within
/// [`INLINE_BUDGET_SECS`]. On success the inbox key is deleted; on failure it stays.
fn flush_inline(
    env: &Env,
    config: &Config,
    kind: Kind,
    digest: &str,
    meta: &Meta,
    body: &[u8],
) -> Result<(), String> {
    let mut line = activity_line(meta, body).ok_or("the delivery has no line")?;
    line.push(b'\n');
    let name = inline_object_name(&config.gcs.prefix, &config.sentry.org, kind, digest);
    let content = gcs::Content::of(&line);
    let deadline = Deadline(env.clock.now() + INLINE_BUDGET_SECS);
    let client = GcsClient::new(*env, &config.gcs, deadline).map_err(|e| e.to_string())?;
    match client.create(&name, line, &content, 1) {
        Ok(_) => {}
        // A racing delivery of the same body wrote it first (its line carries its own
        // Request-ID): the change is in the bucket once.
        Err(gcs::GcsError::Fatal(m)) if m.contains("already exists") => {}
        Err(e) => return Err(e.to_string()),
    }
    let key = inbox_key(kind, meta.received_at, digest);
    // Deleted only now the object is confirmed. If this fails, the drain finds the object.
    env.kv.delete(&key).map_err(|e| format!("KV delete: {e}"))?;
    Ok(())
}
