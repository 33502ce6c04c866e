//! Requests to Sentry with pacing, retries and the run's deadline, and the three reads the
//! events stream needs: the Discover pre-scan, the project list, and a page of project events.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::Url;

use super::pages::{parse_page, Parsed};
use super::ratelimit::Pacer;
use super::{authorized_get, classify_status, link, SentryError};
use crate::config::SentryConfig;
use crate::ports::{Env, InboundResponse, TransportError};
use crate::retry::{self, Attempt, Failure};
use crate::streams::{Kind, StreamDef};
use crate::time::rfc3339;
use crate::window::Window;

/// Whether a request that timed out at `now` was cut off by the deadline after starting with
/// `left_at_start` seconds to go, too few for a busy Sentry (or host) to answer: time ran out.
/// One that started with more and still did not finish is Sentry being slow, and is reported.
fn cut_by_deadline(left_at_start: f64, now: f64, deadline: f64) -> bool {
    now + 0.5 >= deadline && left_at_start < SHORT_REQUEST_SECS
}

/// A request that starts with less time than this before the deadline may be cut off by it
/// without anything being wrong.
const SHORT_REQUEST_SECS: f64 = 3.0;

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
    /// Time spent parsing page bodies (compute, not waiting).
    pub parse_secs: f64,
}

/// What Sentry answered a request the client did not fail on: the data, or a 400 with
/// Sentry's detail, which only the caller can read (a 400 may mean "no multi-project queries").
#[derive(Debug)]
pub enum Answer<T> {
    Data(T),
    Refused(String),
}

impl<T> Answer<T> {
    /// The data, or the refusal's detail made an error by `refused`.
    pub fn or_refused<E>(self, refused: impl FnOnce(String) -> E) -> Result<T, E> {
        match self {
            Answer::Data(t) => Ok(t),
            Answer::Refused(detail) => Err(refused(detail)),
        }
    }
}

/// One page of a list endpoint: its items and the `next` cursor, if there is a next page.
pub struct Page {
    pub parsed: Parsed,
    pub next: Option<String>,
}

/// A project as the pre-scan or the project list names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRef {
    pub id: u64,
    /// Events in the range asked for (the pre-scan's `count()`); 0 when unknown.
    pub count: u64,
}

/// Requests to one org, sharing pacing and counters for a run.
pub struct SentryClient<'e> {
    env: Env<'e>,
    cfg: &'e SentryConfig,
    region: Url,
    deadline: Cell<f64>,
    pacer: RefCell<Pacer>,
    stats: RefCell<RequestStats>,
}

impl<'e> SentryClient<'e> {
    pub fn new(env: Env<'e>, cfg: &'e SentryConfig, region: Url, deadline: f64) -> Self {
        SentryClient {
            env,
            cfg,
            region,
            deadline: Cell::new(deadline),
            pacer: RefCell::new(Pacer::default()),
            stats: RefCell::new(RequestStats::default()),
        }
    }

    /// Moves the time after which no request starts (each stream gets its share of a run).
    pub fn set_deadline(&self, deadline: f64) {
        self.deadline.set(deadline);
    }

    /// Leaves `share` of each rate-limit window's requests unused (see [`Pacer::set_reserve`]).
    pub fn set_rate_limit_reserve(&self, share: f64) {
        self.pacer.borrow_mut().set_reserve(share);
    }

    pub fn deadline(&self) -> f64 {
        self.deadline.get()
    }

    /// Seconds until the deadline.
    pub fn secs_left(&self) -> f64 {
        self.deadline.get() - self.env.clock.now()
    }

    pub fn stats(&self) -> RequestStats {
        self.stats.borrow().clone()
    }

    fn jitter(&self) -> f64 {
        self.env.clock.now().fract()
    }

    /// Waits until `until` if the deadline allows; otherwise reports that time ran out. A
    /// request starts only with [`MIN_REQUEST_SECS`] left after the wait (or after now, when
    /// `until` is already past).
    fn wait_until(&self, until: f64) -> Result<(), SentryError> {
        let now = self.env.clock.now();
        if until.max(now) + MIN_REQUEST_SECS > self.deadline.get() {
            return Err(SentryError::OutOfTime);
        }
        if until > now {
            self.env.clock.sleep(until - now);
            self.stats.borrow_mut().waited_secs += until - now;
        }
        Ok(())
    }

    /// GET with pacing and retries. Returns only 2xx responses as data; a non-retryable 400
    /// is handed back with its body, so the caller can read Sentry's detail.
    fn get(
        &self,
        call: &Call,
        url: Url,
        max_bytes: usize,
    ) -> Result<Answer<InboundResponse>, SentryError> {
        let endpoint = call.endpoint;
        let deadline = retry::Deadline(self.deadline.get());
        let on_retry = |wait: f64| {
            let mut stats = self.stats.borrow_mut();
            stats.retries += 1;
            stats.waited_secs += wait;
        };
        let jitter = || self.jitter();
        let policy = retry::Retry {
            clock: self.env.clock,
            deadline,
            min_request_secs: MIN_REQUEST_SECS,
            jitter: &jitter,
            on_retry: &on_retry,
        };
        policy.run(
            || {
                if let Err(e) = self.wait_until(self.pacer.borrow().ready_at(endpoint)) {
                    return Attempt::Done(Err(e));
                }
                let failure = self.attempt(call, &url, max_bytes);
                let not_before = self.pacer.borrow().ready_at(endpoint);
                match failure {
                    Attempt::Failed(f) => Attempt::Failed(Failure { not_before, ..f }),
                    done => done,
                }
            },
            |failure, attempts, why| match why {
                retry::GaveUp::Attempts => {
                    SentryError::Transient(format!("{}, {attempts} attempts", failure.message))
                }
                // A retry the budget leaves no time for still counts as one. A 429 waits for
                // its reset, which the run's share may not reach: time ran out. Any other
                // failure is reported as the failure: the operator must see a Sentry that
                // keeps failing.
                retry::GaveUp::Time => {
                    self.stats.borrow_mut().retries += 1;
                    if failure.message.contains("(429)") {
                        SentryError::OutOfTime
                    } else {
                        SentryError::Transient(format!(
                            "{}; no time left in this run to retry",
                            failure.message
                        ))
                    }
                }
            },
        )
    }

    /// One request of [`SentryClient::get`], its answer classified: 2xx and a 400 with
    /// Sentry's detail are done, 429s, 5xx, timeouts and Snuba's query timeouts worth another
    /// attempt, anything else an error naming what to fix.
    fn attempt(
        &self,
        call: &Call,
        url: &Url,
        max_bytes: usize,
    ) -> Attempt<Answer<InboundResponse>, SentryError> {
        let (endpoint, what) = (call.endpoint, call.what.as_str());
        let mut request = authorized_get(self.cfg, url.clone());
        request.max_response_bytes = max_bytes;
        let now = self.env.clock.now();
        request.bound_by(self.deadline.get(), now);
        let left_at_start = self.deadline.get() - now;
        self.stats.borrow_mut().requests += 1;
        let failed = |message: String| Attempt::Failed(Failure::new(message));
        match self.env.http.send(&request) {
            Err(TransportError::Denied(m)) => {
                Attempt::Done(Err(super::from_transport(what, TransportError::Denied(m))))
            }
            Err(TransportError::BodyTooLarge(n)) => Attempt::Done(Err(SentryError::Malformed(
                format!("{what}: the response is larger than {n} bytes"),
            ))),
            // Cut off by the run's own deadline (its share for this stream), having started
            // with only a few seconds left: time ran out, Sentry did not fail.
            Err(TransportError::Timeout(_))
                if cut_by_deadline(left_at_start, self.env.clock.now(), self.deadline.get()) =>
            {
                Attempt::Done(Err(SentryError::OutOfTime))
            }
            Err(e) => failed(format!("{what}: {e}")),
            Ok(resp) => {
                let now = self.env.clock.now();
                self.pacer
                    .borrow_mut()
                    .observe(endpoint, &resp, now, self.jitter());
                match resp.status {
                    200..=299 => Attempt::Done(Ok(Answer::Data(resp))),
                    429 => {
                        self.stats.borrow_mut().rate_limited += 1;
                        failed(format!("{what}: rate limited (429)"))
                    }
                    400 => {
                        let detail = String::from_utf8_lossy(&resp.body);
                        if detail.contains(QUERY_TIMEOUT) {
                            failed(format!("{what}: Sentry's query timed out"))
                        } else {
                            Attempt::Done(Ok(Answer::Refused(detail.chars().take(300).collect())))
                        }
                    }
                    s if s >= 500 => failed(format!("{what}: Sentry answered {s}")),
                    _ => Attempt::Done(Err(classify_status(what, call.permission, &resp))),
                }
            }
        }
    }

    fn org_url(&self, tail: &str) -> Url {
        let mut url = self.region.clone();
        url.set_path(&format!("/api/0/organizations/{}/{tail}", self.cfg.org));
        url
    }

    /// GETs every page of a list endpoint, following `next` cursors, handing each body to
    /// `on_page`; [`Answer::Refused`] is a 400 with Sentry's detail.
    fn for_each_page(
        &self,
        call: &Call,
        base: &Url,
        mut on_page: impl FnMut(&[u8]) -> Result<(), SentryError>,
    ) -> Result<Answer<()>, SentryError> {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = base.clone();
            if let Some(c) = &cursor {
                url.query_pairs_mut().append_pair("cursor", c);
            }
            let (body, next) = match self.get_with_link(call, url, MAX_SMALL_BODY)? {
                Answer::Data(page) => page,
                Answer::Refused(detail) => return Ok(Answer::Refused(detail)),
            };
            on_page(&body)?;
            match next {
                Some(c) => cursor = Some(c),
                None => return Ok(Answer::Data(())),
            }
        }
    }

    /// Projects with at least one error event in the window and how many, from one Discover
    /// query (`field=project.id&field=count()`) of every project (`only` empty: `project=-1`)
    /// or of the projects in `only` (at most 100; more count every project), or `None` when
    /// the org cannot query several projects at once ("You cannot view events from multiple
    /// projects.").
    pub fn active_projects(
        &self,
        window: Window,
        only: &[u64],
    ) -> Result<Option<Vec<ProjectRef>>, SentryError> {
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
        let call = Call::new(
            "discover",
            "the active-project pre-scan (Discover)".into(),
            ORG_READ,
        );
        let what = call.what.as_str();
        let named = if only.len() > 100 { &[][..] } else { only };
        let url = self.errors_query(&["project.id", "count()"], named, window, "project.id");
        let mut projects: Vec<ProjectRef> = Vec::new();
        let pages = self.for_each_page(&call, &url, |body| {
            let body: Body = serde_json::from_slice(body).map_err(|_| {
                SentryError::Malformed(format!(
                    "{what}: the body is not Discover's {{\"data\": [...]}}"
                ))
            })?;
            for row in body.data {
                let id = json_id(&row.project_id).ok_or_else(|| {
                    SentryError::Malformed(format!("{what}: a row has no numeric project.id"))
                })?;
                let count = discover_count(row.count.as_ref());
                if count > 0 && !projects.iter().any(|p| p.id == id) {
                    projects.push(ProjectRef { id, count });
                }
            }
            Ok(())
        })?;
        match pages {
            Answer::Data(()) => {
                projects.sort_by_key(|p| p.id);
                Ok(Some(projects))
            }
            Answer::Refused(detail) if is_no_global_views(&detail) => Ok(None),
            Answer::Refused(detail) => Err(SentryError::Fatal(format!(
                "{what}: Sentry refused the query (400): {detail}"
            ))),
        }
    }

    /// One page of per-second error counts of `projects` (at most [`MAX_SECOND_PROJECTS`])
    /// from `start` (inclusive) to `end`: Discover `field=project.id&field=timestamp&
    /// field=count()`, oldest second first. Rows are (project, second, count); the flag says
    /// whether Sentry has more rows (its `next` link). Seconds of one project that Sentry
    /// does not list have no events. The next page is asked for by time, not by offset
    /// (from the last second listed, which is listed again whole), so rows that arrive or go
    /// between pages cannot shift a second out of view.
    pub fn second_counts_page(
        &self,
        projects: &[u64],
        start: i64,
        end: i64,
    ) -> Result<(Vec<SecondCount>, bool), SentryError> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "project.id")]
            project_id: serde_json::Value,
            timestamp: String,
            #[serde(rename = "count()")]
            count: Option<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Vec<Row>,
        }
        let call = Call::new(
            "discover",
            "the per-second counts of late projects (Discover)".into(),
            ORG_READ,
        );
        let what = call.what.as_str();
        let projects = &projects[..projects.len().min(MAX_SECOND_PROJECTS)];
        let url = self.errors_query(
            &["project.id", "timestamp", "count()"],
            projects,
            Window { start, end },
            "timestamp",
        );
        let (body, next) =
            self.get_with_link(&call, url, MAX_SMALL_BODY)?
                .or_refused(|detail| {
                    SentryError::Fatal(format!("{what}: Sentry refused the query (400): {detail}"))
                })?;
        let body: Body = serde_json::from_slice(&body).map_err(|_| {
            SentryError::Malformed(format!(
                "{what}: the body is not Discover's {{\"data\": [...]}}"
            ))
        })?;
        let full = body.data.len() >= DISCOVER_PER_PAGE;
        let mut rows: Vec<SecondCount> = Vec::with_capacity(body.data.len());
        for row in body.data {
            let id = json_id(&row.project_id).ok_or_else(|| {
                SentryError::Malformed(format!("{what}: a row has no numeric project.id"))
            })?;
            let second = crate::time::parse_rfc3339(&row.timestamp).ok_or_else(|| {
                SentryError::Malformed(format!("{what}: a row's timestamp is not RFC 3339"))
            })?;
            if !projects.contains(&id) || second < start || second >= end {
                return Err(SentryError::Malformed(format!(
                    "{what}: a row is outside the projects or the range asked for"
                )));
            }
            // Paging by time relies on the order asked for: a second listed out of order
            // could hide seconds of the next page, so such a listing is not used.
            if rows.last().is_some_and(|&(_, before, _)| second < before) {
                return Err(SentryError::Malformed(format!(
                    "{what}: the rows are not in time order"
                )));
            }
            rows.push((id, second, discover_count(row.count.as_ref())));
        }
        // A full page without a next link is asked past once more: a lost Link header
        // must not end the listing early (seconds not listed would look empty).
        Ok((rows, next.is_some() || full))
    }

    /// A Discover query of error events: `fields`, of the projects named (every project,
    /// `project=-1`, when none are), over `range`, sorted by `sort`, full pages.
    fn errors_query(&self, fields: &[&str], projects: &[u64], range: Window, sort: &str) -> Url {
        let mut url = self.org_url("events/");
        {
            let mut q = url.query_pairs_mut();
            for f in fields {
                q.append_pair("field", f);
            }
            q.append_pair("dataset", "errors");
            if projects.is_empty() {
                q.append_pair("project", "-1");
            }
            for p in projects {
                q.append_pair("project", &p.to_string());
            }
            q.append_pair("start", &rfc3339(range.start))
                .append_pair("end", &rfc3339(range.end))
                .append_pair("sort", sort)
                .append_pair("per_page", &DISCOVER_PER_PAGE.to_string());
        }
        url
    }

    /// How many rows a Discover / Explore dataset holds in `range` for the whole org, or
    /// `None` when Sentry cannot say exactly: the org cannot query several projects at once,
    /// or the answer came from sampled data (`meta.dataScanned: "partial"`). The count is of
    /// stored rows: `disableAggregateExtrapolation=1`, or `count()` of spans sent at a sample
    /// rate below 1 is extrapolated by their weight, and never equals the rows delivered.
    pub fn dataset_count(&self, dataset: &str, range: Window) -> Result<Option<u64>, SentryError> {
        let counts = self.explore_counts(dataset, range, false)?;
        Ok(counts.map(|c| c.values().fold(0u64, |a, &n| a.saturating_add(n))))
    }

    /// The same per project (`field=project.id&field=count()`); projects without rows are not
    /// listed.
    pub fn dataset_project_counts(
        &self,
        dataset: &str,
        range: Window,
    ) -> Result<Option<BTreeMap<u64, u64>>, SentryError> {
        self.explore_counts(dataset, range, true)
    }

    /// `count()` of a dataset over `range`, by project or (under [`ORG_WIDE`]) for the org.
    fn explore_counts(
        &self,
        dataset: &str,
        range: Window,
        by_project: bool,
    ) -> Result<Option<BTreeMap<u64, u64>>, SentryError> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "project.id")]
            project_id: Option<serde_json::Value>,
            #[serde(rename = "count()")]
            count: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct Meta {
            #[serde(rename = "dataScanned")]
            data_scanned: Option<String>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Vec<Row>,
            meta: Option<Meta>,
        }
        let per = if by_project { " per project" } else { "" };
        let call = Call::new(
            "discover",
            format!("the {dataset} count{per} (Explore)"),
            ORG_READ,
        );
        let what = call.what.as_str();
        let mut url = self.org_url("events/");
        if by_project {
            url.query_pairs_mut()
                .append_pair("field", "project.id")
                .append_pair("per_page", "100");
        }
        url.query_pairs_mut()
            .append_pair("field", "count()")
            .append_pair("dataset", dataset)
            .append_pair("project", "-1")
            .append_pair("start", &rfc3339(range.start))
            .append_pair("end", &rfc3339(range.end))
            .append_pair("disableAggregateExtrapolation", "1")
            .append_pair("sampling", EXPLORE_SAMPLING);
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        let mut sampled = false;
        let pages = self.for_each_page(&call, &url, |body| {
            let body: Body = serde_json::from_slice(body).map_err(|_| {
                SentryError::Malformed(format!(
                    "{what}: the body is not Discover's {{\"data\": [...]}}"
                ))
            })?;
            sampled |= body
                .meta
                .and_then(|m| m.data_scanned)
                .is_some_and(|d| d == "partial");
            for row in body.data {
                let n = json_id(&row.count).ok_or_else(|| {
                    SentryError::Malformed(format!("{what}: count() is not a whole number"))
                })?;
                let project = match (by_project, row.project_id.as_ref()) {
                    (false, _) => ORG_WIDE,
                    (true, Some(id)) => json_id(id).ok_or_else(|| {
                        SentryError::Malformed(format!("{what}: a row has no numeric project.id"))
                    })?,
                    (true, None) => {
                        return Err(SentryError::Malformed(format!(
                            "{what}: a row has no project.id"
                        )))
                    }
                };
                let total = counts.entry(project).or_default();
                *total = total.saturating_add(n);
            }
            Ok(())
        })?;
        match pages {
            // An estimate cannot say that nothing arrived late: as if there were no count.
            Answer::Data(()) if sampled => Ok(None),
            Answer::Data(()) => Ok(Some(counts)),
            Answer::Refused(detail) if is_no_global_views(&detail) => Ok(None),
            Answer::Refused(detail) => Err(SentryError::Fatal(format!(
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
        let call = Call::new("projects", "the project list".into(), ORG_READ);
        let what = call.what.as_str();
        let mut url = self.org_url("projects/");
        url.query_pairs_mut().append_pair("per_page", "100");
        let mut projects = Vec::new();
        self.for_each_page(&call, &url, |body| {
            let items: Vec<Item> = serde_json::from_slice(body).map_err(|_| {
                SentryError::Malformed(format!("{what}: the body is not a JSON array of projects"))
            })?;
            for item in items {
                let id = json_id(&item.id).ok_or_else(|| {
                    SentryError::Malformed(format!("{what}: a project has no numeric id"))
                })?;
                projects.push(ProjectRef { id, count: 0 });
            }
            Ok(())
        })?
        .or_refused(|detail| {
            SentryError::Fatal(format!(
                "{what}: Sentry refused the request (400): {detail}"
            ))
        })?;
        projects.sort_by_key(|p| p.id);
        projects.dedup();
        Ok(projects)
    }

    /// One page of a stream: the request for `unit` (a project id, or [`ORG_WIDE`]) over
    /// `[start, end)`, continuing at `cursor`. [`Answer::Refused`] is a 400 with Sentry's
    /// detail (the caller decides whether it means "no multi-project queries").
    pub fn stream_page(
        &self,
        def: &StreamDef,
        unit: u64,
        range: Window,
        cursor: Option<&str>,
    ) -> Result<Answer<Page>, SentryError> {
        let (call, mut url) = match def.kind {
            Kind::Events => {
                let mut url = self.region.clone();
                url.set_path(&format!("/api/0/projects/{}/{unit}/events/", self.cfg.org));
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("start", &rfc3339(range.start))
                        .append_pair("end", &rfc3339(range.end));
                    if self.cfg.full_events {
                        // Sentry caps full pages at 10 (getsentry/sentry#122718).
                        q.append_pair("full", "true").append_pair("per_page", "10");
                    } else {
                        q.append_pair("per_page", "100");
                    }
                }
                let what = format!("events of project {unit}");
                (Call::new("project-events", what, def.permission), url)
            }
            Kind::Issues => {
                let mut url = self.org_url("issues/");
                url.query_pairs_mut()
                    // An empty query: all issues, not only the unresolved ones (the default).
                    .append_pair("query", "")
                    .append_pair("sort", "date")
                    .append_pair("project", &project_param(unit))
                    .append_pair("start", &rfc3339(range.start))
                    .append_pair("end", &rfc3339(range.end))
                    .append_pair("limit", "100")
                    // No histogram (bulky, and nothing a SIEM uses), but not `collapse=stats`,
                    // which would also drop `lifetime`: the top-level count, userCount,
                    // firstSeen and lastSeen cover only the window, `lifetime` all time.
                    .append_pair("groupStatsPeriod", "");
                let what = if unit == ORG_WIDE {
                    "the issue list".to_string()
                } else {
                    format!("the issue list of project {unit}")
                };
                (Call::new("issues", what, def.permission), url)
            }
            Kind::AuditLogs => {
                // A control-silo endpoint: the API base (sentry.io), never the region host.
                let mut url = self.cfg.api_base.clone();
                url.set_path(&format!(
                    "/api/0/organizations/{}/audit-logs/",
                    self.cfg.org
                ));
                url.set_query(None);
                url.query_pairs_mut().append_pair("per_page", "100");
                (
                    Call::new("audit-logs", "the audit log".into(), def.permission),
                    url,
                )
            }
            Kind::Explore(dataset) => {
                let mut url = self.org_url("events/");
                {
                    let mut q = url.query_pairs_mut();
                    for field in dataset.fields {
                        q.append_pair("field", field);
                    }
                    q.append_pair("dataset", dataset.name)
                        .append_pair("project", &project_param(unit))
                        .append_pair("start", &rfc3339(range.start))
                        .append_pair("end", &rfc3339(range.end))
                        // Rows of one second tie on `timestamp`, and Snuba returns ties in
                        // any order, a new one on every query: offset paging needs a total
                        // order, so the row id breaks ties.
                        .append_pair("sort", "timestamp")
                        .append_pair("sort", def.shape.id_field)
                        .append_pair("per_page", &EXPLORE_PER_PAGE.to_string())
                        // Every stored row, not a downsampled tier's sample.
                        .append_pair("sampling", EXPLORE_SAMPLING);
                }
                let what = if unit == ORG_WIDE {
                    format!("the {} dataset (Explore)", dataset.name)
                } else {
                    format!("the {} dataset of project {unit} (Explore)", dataset.name)
                };
                (Call::new("discover", what, def.permission), url)
            }
        };
        if let Some(c) = cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let (body, next) = match self.get_with_link(&call, url, MAX_PAGE_BYTES)? {
            Answer::Data(page) => page,
            Answer::Refused(detail) => return Ok(Answer::Refused(detail)),
        };
        let started = self.env.clock.now();
        let parsed = parse_page(body, &def.shape);
        self.stats.borrow_mut().parse_secs += (self.env.clock.now() - started).max(0.0);
        let parsed = parsed.map_err(|e| SentryError::Malformed(format!("{}: {e}", call.what)))?;
        Ok(Answer::Data(Page { parsed, next }))
    }

    /// A 2xx body and the `next` cursor from its Link header.
    fn get_with_link(
        &self,
        call: &Call,
        url: Url,
        max_bytes: usize,
    ) -> Result<Answer<LinkedBody>, SentryError> {
        let resp = match self.get(call, url, max_bytes)? {
            Answer::Data(resp) => resp,
            Answer::Refused(detail) => return Ok(Answer::Refused(detail)),
        };
        let next = link::next_cursor(resp.header("link"))
            .map_err(|e| SentryError::Malformed(format!("{}: {e}", call.what)))?;
        Ok(Answer::Data((resp.body, next)))
    }
}

/// A 2xx body and the `next` cursor of its Link header.
type LinkedBody = (Vec<u8>, Option<String>);

/// The unit of an org-wide read (`project=-1`); Sentry project ids start at 1.
pub const ORG_WIDE: u64 = 0;
/// Rows per Discover / Explore page (Sentry's maximum).
pub const EXPLORE_PER_PAGE: u64 = 100;
/// Rows a Discover query of error events asks for a page (Sentry's most).
const DISCOVER_PER_PAGE: usize = 100;

/// A row of per-second counts: (project, second, events).
pub type SecondCount = (u64, i64, u64);

/// Explore's sampling mode for everything the collector asks of a dataset: the full data
/// (`NORMAL` may answer a large range from a downsampled tier, `meta.dataScanned: "partial"`).
const EXPLORE_SAMPLING: &str = "HIGHEST_ACCURACY";

/// Projects per per-second count query: fewer than a page's rows, so the rows of any one
/// second fit in a page and paging by time always moves on.
pub const MAX_SECOND_PROJECTS: usize = 50;
const ORG_READ: &str = "Organization Read (org:read)";

/// Sentry's 400 for a multi-project query in an org without `global-views`: "You cannot view
/// events from multiple projects." (Discover) or "You do not have the multi project stream
/// feature enabled" (issue search).
pub fn is_no_global_views(detail: &str) -> bool {
    detail.contains("multiple projects") || detail.contains("multi project stream")
}

/// The `project` parameter for a unit: `-1` (every project) or the project's id.
fn project_param(unit: u64) -> String {
    if unit == ORG_WIDE {
        "-1".to_string()
    } else {
        unit.to_string()
    }
}

/// One kind of request: the rate-limit class, what to call it in messages, and what
/// permission a 403 means is missing.
struct Call {
    endpoint: &'static str,
    what: String,
    permission: &'static str,
}

impl Call {
    fn new(endpoint: &'static str, what: String, permission: &'static str) -> Call {
        Call {
            endpoint,
            what,
            permission,
        }
    }
}

/// A Discover `count()`: sampled data may count in floats (any above 0 is at least one
/// event); a row without a count has events.
fn discover_count(c: Option<&serde_json::Value>) -> u64 {
    c.and_then(|c| c.as_u64().or_else(|| c.as_f64().map(|f| f.ceil() as u64)))
        .unwrap_or(1)
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
    fn only_a_request_started_near_the_deadline_and_cut_by_it_is_time_running_out() {
        let deadline = 1_000.0;
        // Started 1.5 s before the deadline, cut at it: time ran out.
        assert!(cut_by_deadline(1.5, 999.8, deadline));
        assert!(cut_by_deadline(2.9, 1_000.0, deadline));
        // Started with 20 s to go and still not answered: Sentry is slow, reported.
        assert!(!cut_by_deadline(20.0, 1_000.0, deadline));
        // A timeout well before the deadline is Sentry's, whenever the request started.
        assert!(!cut_by_deadline(1.5, 995.0, deadline));
    }
}
