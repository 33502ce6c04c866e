//! The HTTP routes, independent of Spin: a request in, a response out.
//!
//! | route | auth | purpose |
//! |---|---|---|
//! | `POST /pubsub` | OIDC or shared secret | a Pub/Sub push envelope starts a run |
//! | `POST /run` (or `GET`) | OIDC or shared secret | a scheduler or an operator starts a run |
//! | `GET /healthz` | none | liveness and whether the configuration is valid |
//! | `GET /status` | OIDC or shared secret | per stream: watermark, lag, last run, in progress; backfills (HTML for browsers) |
//! | `POST /backfill` | OIDC or shared secret | starts, changes or cancels a stream's backfill (409 with the reason when it cannot) |
//! | `POST /sentry/webhook` | Sentry's signature | keeps a Sentry webhook delivery in the inbox for the next run (see `webhook::intake`) |
//!
//! Status codes of a run, chosen for Pub/Sub (2xx acks; anything else is redelivered with
//! backoff, and after N attempts goes to a dead-letter topic):
//! - 200: the run completed, or stopped at its time budget (the next run resumes), or was
//!   skipped because another run of the shard holds the lease. Acked: nothing to redo.
//! - 400: a malformed envelope or bad options. Acked by nobody, but redelivery cannot fix it;
//!   nothing was changed.
//! - 401: no or bad credentials.
//! - 500: the configuration is invalid, or Sentry or Cloud Storage refused the credentials or
//!   permissions: someone must act; the undelivered message keeps the problem visible in
//!   Pub/Sub's metrics and dead-letter topic.
//! - 503: a transient failure (Sentry or Cloud Storage 5xx, timeouts, the JWKS unreachable):
//!   Pub/Sub redelivers with backoff.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::config::{Config, KNOWN_STREAMS};
use crate::lease;
use crate::ports::Env;
use crate::push_auth::{self, Refusal};
use crate::run::{self, RunError, RunOptions, RunOutcome};
use crate::shard::Shard;
use crate::state::{self, keys, LastRun, StreamStatus};
use crate::status_page::{self, LastRunRow, StatusView, StreamRow};

/// Request bodies larger than this are refused with 413: a push envelope is a few KB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most a request to `path` may carry: a webhook delivery can hold a whole event.
pub fn max_body_bytes(path: &str) -> usize {
    if path == crate::webhook::ROUTE {
        crate::webhook::MAX_BODY_BYTES
    } else {
        MAX_BODY_BYTES
    }
}

/// An incoming request, reduced to what the routes need.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        ApiResponse {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }

    /// A JSON `{"error": message}` answer.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &json!({ "error": message }))
    }
}

/// Routes a request. Unknown paths get 404, known paths with the wrong method 405.
pub fn handle(env: &Env, req: &ApiRequest) -> ApiResponse {
    let allowed: &[&str] = match req.path.as_str() {
        "/healthz" | "/status" => &["GET", "HEAD"],
        "/pubsub" => &["POST"],
        // GET too, for schedulers that can only fetch a URL; never HEAD, which must not act.
        "/run" => &["POST", "GET"],
        // Changes the deployment's shard layout: an operator's act, never a fetch.
        "/migrate" => &["POST"],
        // Starts, changes or cancels a stream's backfill: an operator's act too.
        "/backfill" => &["POST"],
        crate::webhook::ROUTE => &["POST"],
        _ => return ApiResponse::error(404, "no such route"),
    };
    if !allowed.contains(&req.method.as_str()) {
        let mut resp = ApiResponse::error(405, "method not allowed");
        resp.headers.push(("allow", allowed.join(", ")));
        return resp;
    }
    let declared = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let cap = max_body_bytes(&req.path);
    if req.body.len() > cap || declared.is_some_and(|n| n > cap) {
        return too_large(env, &req.path);
    }
    if req.path == "/healthz" {
        return healthz(env);
    }
    let config = match Config::load(env.vars) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    // Authenticated by Sentry's signature over the body, not by the push credentials.
    if req.path == crate::webhook::ROUTE {
        return webhook(env, &config, req);
    }
    match push_auth::authorize(env, &config.push, req.header("authorization"), &req.query) {
        Ok(_) => {}
        Err(Refusal::Unauthorized(reason)) => {
            eprintln!("refused {} {}: {reason}", req.method, req.path);
            let mut resp = ApiResponse::error(401, "unauthorized");
            resp.headers
                .push(("www-authenticate", "Bearer".to_string()));
            return resp;
        }
        Err(Refusal::Unavailable(reason)) => {
            eprintln!(
                "could not authenticate {} {}: {reason}",
                req.method, req.path
            );
            return ApiResponse::error(503, "authentication is temporarily unavailable");
        }
    }
    match req.path.as_str() {
        "/status" => status(env, &config, req.header("accept")),
        "/pubsub" => match pubsub_options(&req.body) {
            Ok(options) => run(env, &config, &options),
            Err(e) => ApiResponse::error(400, &e),
        },
        "/migrate" => {
            match migrate_shards(&req.query, config.push.shared_secret_param.as_deref()) {
                Ok(to) => match run::migrate(env, &config, to) {
                    Ok(done) => {
                        println!("{}", serde_json::to_string(&done).unwrap_or_default());
                        ApiResponse::json(200, &json!(done))
                    }
                    Err(e) => run_error(e),
                },
                Err(e) => ApiResponse::error(400, &e),
            }
        }
        "/backfill" => {
            match backfill_query(&req.query, config.push.shared_secret_param.as_deref()) {
                Ok(ask) => match run::request_backfill(env, &config, &ask) {
                    Ok(answer) => {
                        println!("{}", serde_json::to_string(&answer).unwrap_or_default());
                        ApiResponse::json(200, &answer)
                    }
                    Err(RunError::Busy(m)) => {
                        ApiResponse::json(409, &json!({ "error": m, "retryable": false }))
                    }
                    Err(e) => run_error(e),
                },
                Err(e) => ApiResponse::error(400, &e),
            }
        }
        _ => match query_options(&req.query, config.push.shared_secret_param.as_deref()) {
            Ok(options) => run(env, &config, &options),
            Err(e) => ApiResponse::error(400, &e),
        },
    }
}

/// A Sentry webhook delivery (see `webhook::intake`); a 503 says when to retry.
fn webhook(env: &Env, config: &Config, req: &ApiRequest) -> ApiResponse {
    let delivery = crate::webhook::intake::Delivery {
        headers: &req.headers,
        body: &req.body,
    };
    let answer = crate::webhook::intake::handle(env, config, &delivery);
    let mut resp = ApiResponse::json(answer.status, &answer.body);
    if answer.status == 503 {
        resp.headers.push(("retry-after", "60".to_string()));
    }
    resp
}

/// A 413 for a body over the route's cap (a webhook refusal is counted).
pub fn too_large(env: &Env, path: &str) -> ApiResponse {
    if path == crate::webhook::ROUTE {
        crate::webhook::intake::refuse(env, "too_large", env.clock.now());
    }
    ApiResponse::error(413, "request body too large")
}

fn config_error(e: &crate::config::ConfigError) -> ApiResponse {
    ApiResponse::json(
        500,
        &json!({
            "error": "invalid configuration",
            "invalid_settings": e.settings(),
            "problems": e.problems.iter().map(|p| json!({"setting": p.setting, "problem": p.message})).collect::<Vec<_>>(),
        }),
    )
}

/// Liveness plus whether the configuration is valid. Names the wrong settings and why, never a
/// value. 503 when the configuration is invalid, so a platform health check notices.
fn healthz(env: &Env) -> ApiResponse {
    match Config::load(env.vars) {
        Ok(_) => ApiResponse::json(200, &json!({ "status": "ok", "configuration_valid": true })),
        Err(e) => ApiResponse::json(
            503,
            &json!({
                "status": "misconfigured",
                "configuration_valid": false,
                "invalid_settings": e.settings(),
                "problems": e.problems.iter().map(|p| json!({"setting": p.setting, "problem": p.message})).collect::<Vec<_>>(),
            }),
        ),
    }
}

/// Checks the run options a caller may set.
fn options(streams: Option<&str>, shard: Option<&str>) -> Result<RunOptions, String> {
    let streams = match streams {
        None => None,
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() || names.iter().any(|n| !KNOWN_STREAMS.contains(&n.as_str())) {
                return Err(format!(
                    "streams must be a comma-separated list of {}",
                    KNOWN_STREAMS.join(", ")
                ));
            }
            Some(names)
        }
    };
    let shard = match shard {
        None => Shard::WHOLE,
        Some(s) => Shard::parse(s)?,
    };
    Ok(RunOptions { streams, shard })
}

/// `/migrate?shards=N`. Any other parameter (but the shared secret's) is refused.
pub fn migrate_shards(query: &str, secret_param: Option<&str>) -> Result<u32, String> {
    let mut shards = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "shards" if shards.is_none() => shards = Some(v.into_owned()),
            p if Some(p) == secret_param => {}
            other => {
                return Err(format!(
                    "unknown or repeated query parameter {other:?}; use shards"
                ))
            }
        }
    }
    let text = shards.ok_or("say how many shards: /migrate?shards=N")?;
    match text.parse::<u32>() {
        Ok(n) if (1..=crate::shard::MAX_SHARDS).contains(&n) && text.len() <= 2 => Ok(n),
        _ => Err(format!(
            "shards must be a number from 1 to {}",
            crate::shard::MAX_SHARDS
        )),
    }
}

/// `/backfill?stream=S&start=T` (a date, a time or a duration back from now) or
/// `/backfill?stream=S&cancel=true`. Any other parameter (but the shared secret's) is refused.
pub fn backfill_query(query: &str, secret_param: Option<&str>) -> Result<run::BackfillAsk, String> {
    let mut stream = None;
    let mut start = None;
    let mut cancel = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "stream" if stream.is_none() => stream = Some(v.into_owned()),
            "start" if start.is_none() => start = Some(v.into_owned()),
            "cancel" if cancel.is_none() => cancel = Some(v.into_owned()),
            p if Some(p) == secret_param => {}
            other => {
                return Err(format!(
                    "unknown or repeated query parameter {other:?}; use stream with start or cancel=true"
                ))
            }
        }
    }
    let stream = stream.ok_or("say which stream: /backfill?stream=events&start=90d")?;
    if !KNOWN_STREAMS.contains(&stream.as_str()) {
        return Err(format!(
            "stream must be one of {}",
            KNOWN_STREAMS.join(", ")
        ));
    }
    match (start, cancel.as_deref()) {
        (Some(start), None) => Ok(run::BackfillAsk::Start { stream, start }),
        (None, Some("true")) => Ok(run::BackfillAsk::Cancel { stream }),
        _ => Err("give start (a date such as 2026-09-01, or a duration back such as 90d) or cancel=true, not both".into()),
    }
}

/// `/run?streams=...&shard=i/n`. Any other parameter (but the shared secret's) is refused.
pub fn query_options(query: &str, secret_param: Option<&str>) -> Result<RunOptions, String> {
    let mut streams = None;
    let mut shard = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "streams" if streams.is_none() => streams = Some(v.into_owned()),
            "shard" if shard.is_none() => shard = Some(v.into_owned()),
            p if Some(p) == secret_param => {}
            other => {
                return Err(format!(
                    "unknown or repeated query parameter {other:?}; use streams and shard"
                ))
            }
        }
    }
    options(streams.as_deref(), shard.as_deref())
}

#[derive(Deserialize)]
struct Envelope {
    message: PushMessage,
    #[allow(dead_code)]
    subscription: Option<String>,
}

#[derive(Deserialize)]
struct PushMessage {
    data: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// A Pub/Sub push envelope: `{"message": {"data": base64, "attributes": {...}, ...},
/// "subscription": "..."}`. Attributes `streams` and `shard` narrow the run; attributes
/// starting with `goog` are Google's and ignored; anything else is refused.
pub fn pubsub_options(body: &[u8]) -> Result<RunOptions, String> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|_| "not a Pub/Sub push envelope: expected {\"message\": {...}}".to_string())?;
    if let Some(data) = &envelope.message.data {
        STANDARD
            .decode(data)
            .map_err(|_| "message.data is not base64".to_string())?;
    }
    let attrs = &envelope.message.attributes;
    if let Some(other) = attrs
        .keys()
        .find(|k| !matches!(k.as_str(), "streams" | "shard") && !k.starts_with("goog"))
    {
        return Err(format!(
            "unknown message attribute {other:?}; use streams and shard"
        ));
    }
    options(
        attrs.get("streams").map(String::as_str),
        attrs.get("shard").map(String::as_str),
    )
}

fn run(env: &Env, config: &Config, options: &RunOptions) -> ApiResponse {
    match run::run_with(env, config, run::Trigger::Http, options) {
        Ok(RunOutcome::Ran(summary)) => {
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            ApiResponse::json(200, &json!(summary))
        }
        Ok(RunOutcome::Skipped(skipped)) => ApiResponse::json(200, &json!(skipped)),
        Err(e) => run_error(e),
    }
}

/// The answer for a run (or migration) that could not do its work.
fn run_error(e: RunError) -> ApiResponse {
    match e {
        RunError::Config(e) => config_error(&e),
        RunError::Options(m) => ApiResponse::error(400, &m),
        // A conflict someone must resolve: Pub/Sub must not redeliver it.
        RunError::Layout(m) => {
            eprintln!("run refused: {m}");
            ApiResponse::json(409, &json!({ "error": m, "retryable": false }))
        }
        e => {
            let status = if e.is_transient() { 503 } else { 500 };
            let mut body = json!({ "error": e.to_string(), "retryable": e.is_transient() });
            if let RunError::Streams(summary) = &e {
                println!("{}", serde_json::to_string(summary).unwrap_or_default());
                body["summary"] = json!(summary);
            }
            eprintln!("run failed: {e}");
            ApiResponse::json(status, &body)
        }
    }
}

/// Per stream and shard: watermark, lag behind now, the last run's counts and error, and
/// whether a run is in progress; HTML for browsers, JSON otherwise.
fn status(env: &Env, config: &Config, accept: Option<&str>) -> ApiResponse {
    let view = status_view(env, config);
    if !status_page::prefers_html(accept) {
        let mut resp = ApiResponse::json(200, &view.to_json());
        resp.headers.push(("vary", "Accept".to_string()));
        return resp;
    }
    ApiResponse {
        status: 200,
        headers: status_page::HTML_HEADERS
            .iter()
            .map(|(n, v)| (*n, v.to_string()))
            .collect(),
        body: view.to_html().into_bytes(),
    }
}

fn status_view(env: &Env, config: &Config) -> StatusView {
    let now = env.clock.now() as i64;
    let mut records: Vec<StreamStatus> = env
        .kv
        .keys()
        .unwrap_or_default()
        .iter()
        .filter(|k| k.starts_with(StreamStatus::PREFIX))
        .filter_map(|k| state::load::<StreamStatus>(env.kv, k).ok().flatten())
        .collect();
    for stream in &config.streams {
        if !records.iter().any(|r| &r.stream == stream) {
            records.push(StreamStatus {
                stream: stream.clone(),
                shard: Shard::WHOLE.to_string(),
                ..StreamStatus::default()
            });
        }
    }
    records.sort_by(|a, b| (&a.stream, &a.shard).cmp(&(&b.stream, &b.shard)));
    let streams = records
        .into_iter()
        .map(|r| {
            let suffix = Shard::parse(&r.shard).unwrap_or_default().suffix();
            StreamRow {
                in_progress: lease::is_held(env, &suffix),
                last_run: (r.finished_at > 0).then_some(LastRunRow {
                    finished_at: r.finished_at,
                    window_finished: r.window_finished,
                    pages: r.pages,
                    events: r.events,
                    objects: r.objects,
                    bytes: r.bytes,
                }),
                stream: r.stream,
                shard: r.shard,
                watermark: r.watermark,
                last_error: r.error,
                last_warnings: r.warnings,
            }
        })
        .collect();
    let last: Option<LastRun> = state::load(env.kv, keys::LAST_RUN).ok().flatten();
    let mut backfill: Vec<crate::backfill::Status> = env
        .kv
        .keys()
        .unwrap_or_default()
        .iter()
        .filter(|k| k.starts_with(crate::backfill::Status::PREFIX))
        .filter_map(|k| state::load(env.kv, k).ok().flatten())
        .collect();
    backfill.sort_by(|a, b| (&a.stream, &a.shard).cmp(&(&b.stream, &b.shard)));
    StatusView {
        inbox: crate::webhook::view(env.kv, config.webhook.secret.is_some(), now),
        backfill,
        now,
        org: config.sentry.org.clone(),
        runs: last.as_ref().map_or(0, |l| l.runs),
        last_run_error: last.and_then(|l| l.error),
        streams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(attrs: serde_json::Value, data: &str) -> Vec<u8> {
        json!({"message": {"data": data, "attributes": attrs, "messageId": "1", "publishTime": "2026-11-26T10:00:00Z"}, "subscription": "projects/p/subscriptions/s"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn pubsub_envelopes_carry_streams_and_shard() {
        let o = pubsub_options(&envelope(json!({}), "e30=")).unwrap();
        assert_eq!(o, RunOptions::default());
        let o = pubsub_options(&envelope(
            json!({"streams": "events", "shard": "2/4", "googclient_x": "1"}),
            "e30=",
        ))
        .unwrap();
        assert_eq!(o.streams, Some(vec!["events".to_string()]));
        assert_eq!(o.shard, Shard { index: 2, count: 4 });
        assert!(
            pubsub_options(br#"{"message": {}}"#).is_ok(),
            "data is optional"
        );
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for (body, needle) in [
            (b"not json".to_vec(), "envelope"),
            (br#"{"subscription": "s"}"#.to_vec(), "envelope"),
            (br#"{"message": "x"}"#.to_vec(), "envelope"),
            (envelope(json!({}), "!!not base64!!"), "base64"),
            (envelope(json!({"shard": "4/4"}), "e30="), "shard"),
            (envelope(json!({"shard": 1}), "e30="), "envelope"),
            (envelope(json!({"streams": "bogus"}), "e30="), "streams"),
            (
                envelope(json!({"project": "x"}), "e30="),
                "unknown message attribute",
            ),
        ] {
            let err = pubsub_options(&body).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn run_query_parameters_are_checked() {
        assert_eq!(query_options("", None).unwrap(), RunOptions::default());
        let o = query_options("streams=events&shard=0/2&token=x", Some("token")).unwrap();
        assert_eq!(o.shard, Shard { index: 0, count: 2 });
        assert!(query_options("token=x", None)
            .unwrap_err()
            .contains("token"));
        assert!(query_options("shard=0/2&shard=1/2", None).is_err());
        assert!(query_options("shard=9", None).is_err());
    }
}
