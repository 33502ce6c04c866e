//! Requests to Sentry with pacing, retries and the run's deadline, and the three reads the
//! events stream needs: the Discover pre-scan, the project list, and a page of project events.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use url::Url;

use super::ratelimit::Pacer;
use super::{authorized_get, classify_status, link, SentryError};
use crate::config::SentryConfig;
use crate::ports::{Env, InboundResponse, Timeouts, TransportError};
use crate::retry;
use crate::time::{parse_rfc3339, rfc3339};

/// A request is not started unless this much time remains before the deadline.
const MIN_REQUEST_SECS: f64 = 1.0;
const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;
const MAX_SMALL_BODY: usize = 4 * 1024 * 1024;
/// Snuba throttling comes back as a 400 with this detail; it is worth a retry.
const QUERY_TIMEOUT: &str = "Query timeout";

/// Counters for the run summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestStats {
    pub requests: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub waited_secs: f64,
}

/// A half-open window `[start, end)` in whole Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// One event exactly as the API returned it, with the fields we read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub event_id: String,
    pub date_created: i64,
    /// The event's JSON text, one line.
    pub json: String,
}

pub struct Page {
    pub events: Vec<RawEvent>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct EventKeys<'a> {
    #[serde(rename = "eventID", borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "dateCreated", borrow)]
    date_created: std::borrow::Cow<'a, str>,
}

/// Splits a page body into events, keeping each one's JSON text as returned. Anything that is
/// not an array of objects with an `eventID` and a parsable `dateCreated` is refused whole:
/// a body that is not events is never written as events.
pub fn parse_events_page(body: &[u8]) -> Result<Vec<RawEvent>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the page is not UTF-8".to_string())?;
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|_| "the page is not a JSON array".to_string())?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let keys: EventKeys = serde_json::from_str(raw.get()).map_err(|_| {
                format!("item {i} of the page is not an event with eventID and dateCreated")
            })?;
            let date_created = parse_rfc3339(&keys.date_created)
                .ok_or_else(|| format!("item {i} of the page has an unreadable dateCreated"))?;
            if keys.event_id.is_empty() || keys.event_id.len() > 128 {
                return Err(format!("item {i} of the page has an invalid eventID"));
            }
            // NDJSON needs one line per event: re-encode compactly if the server pretty-printed.
            let json = if raw.get().contains(['\n', '\r']) {
                let value: serde_json::Value =
                    serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
                value.to_string()
            } else {
                raw.get().to_string()
            };
            Ok(RawEvent {
                event_id: keys.event_id.into_owned(),
                date_created,
                json,
            })
        })
        .collect()
}

/// A project as the pre-scan or the project list names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRef {
    pub id: u64,
}

/// Requests to one org, sharing pacing and counters for a run.
pub struct SentryClient<'e> {
    env: Env<'e>,
    cfg: &'e SentryConfig,
    region: Url,
    deadline: f64,
    pacer: RefCell<Pacer>,
    stats: RefCell<RequestStats>,
}

impl<'e> SentryClient<'e> {
    pub fn new(env: Env<'e>, cfg: &'e SentryConfig, region: Url, deadline: f64) -> Self {
        SentryClient {
            env,
            cfg,
            region,
            deadline,
            pacer: RefCell::new(Pacer::default()),
            stats: RefCell::new(RequestStats::default()),
        }
    }

    pub fn stats(&self) -> RequestStats {
        self.stats.borrow().clone()
    }

    fn jitter(&self) -> f64 {
        self.env.clock.now().fract()
    }

    /// Waits until `until` if the deadline allows; otherwise reports that time ran out.
    fn wait_until(&self, until: f64) -> Result<(), SentryError> {
        let now = self.env.clock.now();
        if until + MIN_REQUEST_SECS > self.deadline {
            return Err(SentryError::OutOfTime);
        }
        if until > now {
            self.env.clock.sleep(until - now);
            self.stats.borrow_mut().waited_secs += until - now;
        }
        Ok(())
    }

    /// GET with pacing and retries. Returns only 2xx responses; `Ok(Err(detail))` hands a
    /// non-retryable 400's body back so the caller can read Sentry's detail.
    fn get(
        &self,
        endpoint: &'static str,
        what: &str,
        url: Url,
        max_bytes: usize,
    ) -> Result<Result<InboundResponse, String>, SentryError> {
        let mut attempt = 0;
        loop {
            self.wait_until(self.pacer.borrow().ready_at(endpoint))?;
            let mut request = authorized_get(self.cfg, url.clone());
            request.max_response_bytes = max_bytes;
            request.timeouts = Timeouts::within(self.deadline - self.env.clock.now());
            self.stats.borrow_mut().requests += 1;
            let transient = match self.env.http.send(&request) {
                Err(TransportError::Denied(m)) => {
                    return Err(super::from_transport(what, TransportError::Denied(m)))
                }
                Err(TransportError::BodyTooLarge(n)) => {
                    return Err(SentryError::Malformed(format!(
                        "{what}: the response is larger than {n} bytes"
                    )))
                }
                Err(e) => format!("{what}: {e}"),
                Ok(resp) => {
                    let now = self.env.clock.now();
                    self.pacer
                        .borrow_mut()
                        .observe(endpoint, &resp, now, self.jitter());
                    match resp.status {
                        200..=299 => return Ok(Ok(resp)),
                        429 => {
                            let mut stats = self.stats.borrow_mut();
                            stats.rate_limited += 1;
                            format!("{what}: rate limited (429)")
                        }
                        400 => {
                            let detail = String::from_utf8_lossy(&resp.body);
                            if detail.contains(QUERY_TIMEOUT) {
                                format!("{what}: Sentry's query timed out")
                            } else {
                                return Ok(Err(detail.chars().take(300).collect()));
                            }
                        }
                        s if s >= 500 => format!("{what}: Sentry answered {s}"),
                        _ => return Err(classify_status(what, &resp)),
                    }
                }
            };
            attempt += 1;
            if attempt >= retry::MAX_ATTEMPTS {
                return Err(SentryError::Transient(format!(
                    "{transient}, {attempt} attempts"
                )));
            }
            self.stats.borrow_mut().retries += 1;
            // A 429 already set the endpoint's wait; others back off. A failure that the
            // budget leaves no time to retry is reported as the failure, not as time running
            // out: the operator must see a Sentry that keeps failing.
            let backoff_until = self.env.clock.now() + retry::backoff(attempt - 1, self.jitter());
            let until = backoff_until.max(self.pacer.borrow().ready_at(endpoint));
            match self.wait_until(until) {
                Err(SentryError::OutOfTime) if !transient.contains("(429)") => {
                    return Err(SentryError::Transient(format!(
                        "{transient}; no time left in this run to retry"
                    )));
                }
                other => other?,
            }
        }
    }

    fn org_url(&self, tail: &str) -> Url {
        let mut url = self.region.clone();
        url.set_path(&format!("/api/0/organizations/{}/{tail}", self.cfg.org));
        url
    }

    /// GETs every page of a list endpoint, following `next` cursors, handing each body to
    /// `on_page`. `Ok(Err(detail))` is a 400 with Sentry's detail.
    fn for_each_page(
        &self,
        endpoint: &'static str,
        what: &str,
        base: &Url,
        mut on_page: impl FnMut(&[u8]) -> Result<(), SentryError>,
    ) -> Result<Result<(), String>, SentryError> {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = base.clone();
            if let Some(c) = &cursor {
                url.query_pairs_mut().append_pair("cursor", c);
            }
            let (body, next) = match self.get_with_link(endpoint, what, url, MAX_SMALL_BODY)? {
                Ok(page) => page,
                Err(detail) => return Ok(Err(detail)),
            };
            on_page(&body)?;
            match next {
                Some(c) => cursor = Some(c),
                None => return Ok(Ok(())),
            }
        }
    }

    /// Projects with at least one error event in the window, from one Discover query
    /// (`field=project.id&field=count()`), or `None` when the org cannot query several projects
    /// at once ("You cannot view events from multiple projects.").
    pub fn active_projects(&self, window: Window) -> Result<Option<Vec<ProjectRef>>, SentryError> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "project.id")]
            project_id: serde_json::Value,
            #[serde(rename = "count()")]
            count: Option<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Vec<Row>,
        }
        let what = "the active-project pre-scan (Discover)";
        let mut url = self.org_url("events/");
        url.query_pairs_mut()
            .append_pair("field", "project.id")
            .append_pair("field", "count()")
            .append_pair("dataset", "errors")
            .append_pair("project", "-1")
            .append_pair("start", &rfc3339(window.start))
            .append_pair("end", &rfc3339(window.end))
            .append_pair("sort", "project.id")
            .append_pair("per_page", "100");
        let mut projects: Vec<ProjectRef> = Vec::new();
        let pages = self.for_each_page("discover", what, &url, |body| {
            let body: Body = serde_json::from_slice(body).map_err(|_| {
                SentryError::Malformed(format!(
                    "{what}: the body is not Discover's {{\"data\": [...]}}"
                ))
            })?;
            for row in body.data {
                let id = json_id(&row.project_id).ok_or_else(|| {
                    SentryError::Malformed(format!("{what}: a row has no numeric project.id"))
                })?;
                let count = row
                    .count
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(1);
                if count > 0 && !projects.iter().any(|p| p.id == id) {
                    projects.push(ProjectRef { id });
                }
            }
            Ok(())
        })?;
        match pages {
            Ok(()) => {
                projects.sort_by_key(|p| p.id);
                Ok(Some(projects))
            }
            Err(detail) if detail.contains("multiple projects") => Ok(None),
            Err(detail) => Err(SentryError::Fatal(format!(
                "{what}: Sentry refused the query (400): {detail}"
            ))),
        }
    }

    /// Every project of the org, for orgs without multi-project Discover.
    pub fn all_projects(&self) -> Result<Vec<ProjectRef>, SentryError> {
        #[derive(Deserialize)]
        struct Item {
            id: serde_json::Value,
        }
        let what = "the project list";
        let mut url = self.org_url("projects/");
        url.query_pairs_mut().append_pair("per_page", "100");
        let mut projects = Vec::new();
        self.for_each_page("projects", what, &url, |body| {
            let items: Vec<Item> = serde_json::from_slice(body).map_err(|_| {
                SentryError::Malformed(format!("{what}: the body is not a JSON array of projects"))
            })?;
            for item in items {
                let id = json_id(&item.id).ok_or_else(|| {
                    SentryError::Malformed(format!("{what}: a project has no numeric id"))
                })?;
                projects.push(ProjectRef { id });
            }
            Ok(())
        })?
        .map_err(|detail| {
            SentryError::Fatal(format!(
                "{what}: Sentry refused the request (400): {detail}"
            ))
        })?;
        projects.sort_by_key(|p| p.id);
        projects.dedup();
        Ok(projects)
    }

    /// One page of a project's error events in the window, newest first.
    pub fn events_page(
        &self,
        project: u64,
        window: Window,
        cursor: Option<&str>,
    ) -> Result<Page, SentryError> {
        let what = format!("events of project {project}");
        let mut url = self.region.clone();
        url.set_path(&format!(
            "/api/0/projects/{}/{project}/events/",
            self.cfg.org
        ));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("start", &rfc3339(window.start))
                .append_pair("end", &rfc3339(window.end));
            if self.cfg.full_events {
                // Sentry caps full pages at 10 (getsentry/sentry#122718).
                q.append_pair("full", "true").append_pair("per_page", "10");
            } else {
                q.append_pair("per_page", "100");
            }
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
        }
        let (body, next) = self
            .get_with_link("project-events", &what, url, MAX_PAGE_BYTES)?
            .map_err(|detail| {
                SentryError::Fatal(format!(
                    "{what}: Sentry refused the request (400): {detail}"
                ))
            })?;
        let events =
            parse_events_page(&body).map_err(|e| SentryError::Malformed(format!("{what}: {e}")))?;
        Ok(Page { events, next })
    }

    /// A 2xx body and the `next` cursor from its Link header.
    #[allow(clippy::type_complexity)]
    fn get_with_link(
        &self,
        endpoint: &'static str,
        what: &str,
        url: Url,
        max_bytes: usize,
    ) -> Result<Result<(Vec<u8>, Option<String>), String>, SentryError> {
        let resp = match self.get(endpoint, what, url, max_bytes)? {
            Ok(resp) => resp,
            Err(detail) => return Ok(Err(detail)),
        };
        let next = link::next_cursor(resp.header("link"))
            .map_err(|e| SentryError::Malformed(format!("{what}: {e}")))?;
        Ok(Ok((resp.body, next)))
    }
}

/// Sentry writes ids as strings ("42"); accept numbers too.
fn json_id(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_arrays_of_events_are_data() {
        let ok = br#"[{"eventID":"a1","dateCreated":"2026-11-26T10:00:00Z","title":"x"}]"#;
        let events = parse_events_page(ok).unwrap();
        assert_eq!(events[0].event_id, "a1");
        assert_eq!(
            events[0].json,
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
            (&br#"[1, 2]"#[..], "item 0"),
        ] {
            let err = parse_events_page(body).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_pretty_printed_event_becomes_one_line() {
        let body = b"[\n  {\n    \"eventID\": \"a1\",\n    \"dateCreated\": \"2026-11-26T10:00:00Z\",\n    \"message\": \"two\\nlines\"\n  }\n]";
        let events = parse_events_page(body).unwrap();
        assert!(!events[0].json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&events[0].json).unwrap();
        assert_eq!(v["message"], "two\nlines");
    }
}
