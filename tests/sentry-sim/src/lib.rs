//! A Sentry simulator for tests, the demo and benchmarks, faithful to what the collector relies
//! on, modelled on Sentry's server code (`getsentry/sentry`: `src/sentry/api/paginator.py`,
//! `src/sentry/middleware/ratelimit.py` and the endpoints themselves):
//!
//! - project events: `GenericOffsetPaginator` (newest first by `-timestamp, -event_id`,
//!   `0:offset:0` cursors, `per_page` at most 100, capped at 10 with `full=true`), `start`/`end`
//!   validation, and a legacy mode that ignores them like self-hosted Sentry before 2025;
//! - Discover `field=project.id&field=count()` grouping, and the 400 "You cannot view events
//!   from multiple projects." for orgs without global views;
//! - a `Link` header built on a different host than the one called;
//! - sentry.io's rate limits, with a 429 whose body is a JSON string and no `Retry-After`;
//! - events with an event time and a later ingestion time, visible only once ingested;
//! - issues, audit logs and the Discover / Explore datasets of the other streams, each with
//!   its own paginator (see `streams.rs`);
//! - a ground-truth listing, request counters, and forced faults;
//! - pages that stay cheap with a million events or rows stored: the lists are kept sorted
//!   as each endpoint pages them, rebuilt after any change (see `index.rs`).
//!
//! Time is a [`SimClock`]: real time plus an offset the test can move forward, shared with the
//! component's wall clock through the host.

#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Either, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use index::Table;

mod index;
mod streams;
pub mod time;
pub mod webhooks;

pub use streams::{issue_id, AuditEntry, ExploreRow, IssueVersion, DATASETS, OFFSET_CAP};

/// A response body: whole, or sent a few bytes at a time.
type SimBody = Either<Full<Bytes>, http_body_util::channel::Channel<Bytes>>;

/// Bytes per piece of a trickled body.
const TRICKLE_CHUNK: usize = 256;

/// Real time plus an adjustable offset, in seconds.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    offset: Arc<AtomicI64>,
}

impl SimClock {
    pub fn now_f64(&self) -> f64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        real + self.offset.load(Ordering::SeqCst) as f64
    }

    pub fn now(&self) -> i64 {
        self.now_f64().floor() as i64
    }

    /// Moves simulated time forward.
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn offset(&self) -> Arc<AtomicI64> {
        self.offset.clone()
    }
}

/// SplitMix64: small, seeded, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    pub slug: String,
}

/// One simulated error event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub project_id: u64,
    pub group_id: u64,
    /// Event time from the SDK (`dateCreated`), whole seconds.
    pub date_created: i64,
    /// When Sentry ingested it; invisible before.
    pub received_at: i64,
    pub title: String,
    /// Extra payload, to make events of a chosen size.
    pub padding: usize,
}

impl Event {
    fn simple_json(&self, project_slug: &str) -> Value {
        json!({
            "id": self.event_id,
            "eventID": self.event_id,
            "groupID": issue_id(self.project_id, self.group_id).to_string(),
            "projectID": self.project_id.to_string(),
            "event.type": "error",
            "title": self.title,
            "message": format!("{} in {project_slug}", self.title),
            "culprit": "/api/checkout/",
            "location": "app/checkout.py:42",
            "platform": "python",
            "dateCreated": time::rfc3339(self.date_created),
            "tags": [
                {"key": "environment", "value": "production"},
                {"key": "level", "value": "error"},
                {"key": "server_name", "value": "web-1"},
            ],
            "user": {"id": "42", "email": "user@example.com", "ip_address": "203.0.113.7", "username": null, "name": null, "data": null},
            "crashFile": null,
            "metadata": {"type": "ValueError", "value": self.title, "padding": "x".repeat(self.padding)},
        })
    }

    fn full_json(&self, project_slug: &str) -> Value {
        let mut v = self.simple_json(project_slug);
        let extra = json!({
            "type": "error",
            "dateReceived": time::rfc3339(self.received_at),
            "size": 2048 + self.padding,
            "dist": null,
            "release": null,
            "entries": [{"type": "exception", "data": {"values": [{"type": "ValueError", "value": self.title, "stacktrace": {"frames": [
                {"function": "checkout", "filename": "app/checkout.py", "lineNo": 42, "inApp": true, "context": [[41, "    total = cart.total()"], [42, "    raise ValueError(msg)"]]}
            ]}}]}}],
            "contexts": {"runtime": {"name": "CPython", "version": "3.12.1", "type": "runtime"}},
            "context": {},
            "packages": {},
            "sdk": {"name": "sentry.python", "version": "2.19.0"},
            "errors": [],
            "fingerprints": ["{{ default }}"],
            "groupingConfig": {"id": "newstyle:2023-01-11", "enhancements": "eJybzDRxY25-UmZOqpWRgYGphQAsigYm"},
            "occurrence": null,
            "_meta": {},
            "userReport": null,
            "sdkUpdates": [],
            "resolvedWith": [],
            "nextEventID": null,
            "previousEventID": null,
        });
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        v
    }
}

/// sentry.io's limits per caller (the endpoints' rate-limit configuration in Sentry's 2024 code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub window_secs: i64,
    pub concurrent: u32,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub org: String,
    pub token: String,
    /// Ignore `start`/`end` on project events (self-hosted Sentry before 2025).
    pub legacy_no_date_filter: bool,
    /// Multi-project Discover (`organizations:global-views`).
    pub global_views: bool,
    /// Enforce sentry.io's rate limits.
    pub rate_limits: bool,
    /// Endpoint classes (such as `project-events`) exempt from the rate limits.
    pub unlimited: Vec<&'static str>,
    /// The host `Link` URLs are built on (not the one called).
    pub link_base: String,
    /// What `links.regionUrl` says; `None`: the simulator's own URL.
    pub region_url: Option<String>,
    /// Added to every response.
    pub latency: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            org: "acme".into(),
            token: "sntryu_simulated_token_0123456789".into(),
            legacy_no_date_filter: false,
            global_views: true,
            rate_limits: true,
            unlimited: Vec::new(),
            link_base: "https://acme.sentry.example".into(),
            region_url: None,
            latency: Duration::ZERO,
        }
    }
}

pub const PROJECT_EVENTS_LIMIT: Limit = Limit {
    requests: 60,
    window_secs: 60,
    concurrent: 1,
};
pub const DISCOVER_LIMIT: Limit = Limit {
    requests: 50,
    window_secs: 1,
    concurrent: 50,
};
pub const DEFAULT_LIMIT: Limit = Limit {
    requests: 40,
    window_secs: 1,
    concurrent: 25,
};

/// Counters the tests read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests per endpoint class ("org", "projects", "discover", "project-events").
    pub requests: BTreeMap<&'static str, u64>,
    /// Project-events requests per project id.
    pub project_event_requests: BTreeMap<u64, u64>,
    /// 429s the simulator sent on its own (the client had been told the bucket was empty).
    pub avoidable_429s: u64,
    /// 429s sent because a test forced them.
    pub forced_429s: u64,
    pub unauthorized: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    window_start: i64,
    used: u32,
    in_flight: u32,
}

#[derive(Debug, Default)]
struct State {
    projects: Vec<Project>,
    /// Indexed by project, newest first (see `index.rs`).
    events: Table<Event>,
    audit: Vec<AuditEntry>,
    /// Indexed by dataset and project, oldest first.
    rows: Table<ExploreRow>,
    /// Discover answers say `dataScanned: "partial"` (for spans and logs, unless the query
    /// asks `sampling=HIGHEST_ACCURACY`).
    sampled: bool,
    /// The sampling weight of every span and log (1 / the SDK's sample rate): `count()`
    /// of those datasets is extrapolated by it unless `disableAggregateExtrapolation=1`.
    sample_weight: f64,
    counters: Counters,
    buckets: BTreeMap<&'static str, Bucket>,
    /// The next N project-events requests get a 429 that resets this many seconds later.
    forced_429: Option<(u32, i64)>,
    /// Scopes the token lacks: a request to a class listed here gets 403.
    forbidden: Vec<&'static str>,
    /// The next N requests (any class but "org") get this status and body.
    forced_status: Option<(u32, u16, String)>,
    /// Only requests of this class get the forced status (None: any class but "org").
    forced_status_class: Option<&'static str>,
    /// The next N requests (any class but "org") are answered this much later.
    forced_delay: Option<(u32, Duration)>,
    /// The next N project-events pages are cut off halfway.
    truncate_next: u32,
    /// The next N requests after region discovery get their connection closed, no answer.
    drop_next: u32,
    /// Events served without `eventID` and `id` (a bad item in Sentry's data).
    poisoned: std::collections::BTreeSet<String>,
    /// The next N bodies after region discovery are sent a few bytes at a time this far apart.
    trickle_next: Option<(u32, Duration)>,
    /// Once this many requests of the class have been served, these projects are deleted.
    deletion: Option<(&'static str, u64, Vec<u64>)>,
    /// After each request of the class, these events are deleted ("delete and discard"), a
    /// batch a request, until no batch is left.
    event_deletions: Option<(&'static str, std::collections::VecDeque<Vec<String>>)>,
    /// Once this many requests of the class have been served, the next one's body trickles
    /// (a stalled answer in the middle of a run).
    stall: Option<(&'static str, u64, Duration)>,
    /// Issues whose status or assignee a user changed (see `webhooks.rs`): status, substatus,
    /// assignee, overlaid on what the events imply.
    issue_changes: BTreeMap<u64, (String, Value, Value)>,
}

/// The simulator. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Sim {
    pub options: Arc<SimOptions>,
    pub clock: SimClock,
    state: Arc<Mutex<State>>,
    base_url: Arc<Mutex<String>>,
    /// Seeds the order of ties, a new one for every Discover query.
    queries: Arc<AtomicU64>,
}

impl Sim {
    /// A new seed for each query, so ties are ordered differently every time.
    pub(crate) fn next_query_seed(&self) -> u64 {
        self.queries.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new(options: SimOptions, clock: SimClock) -> Sim {
        Sim {
            options: Arc::new(options),
            clock,
            state: Arc::new(Mutex::new(State::default())),
            queries: Arc::new(AtomicU64::new(0)),
            base_url: Arc::new(Mutex::new(String::new())),
        }
    }

    /// Serves on 127.0.0.1 (an ephemeral port unless `port` is given) in the current tokio
    /// runtime until the returned server is dropped.
    pub async fn serve(&self, port: u16) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        *self.base_url.lock().unwrap() = format!("http://{addr}");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let sim = self.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => match c { Ok((c, _)) => c, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                // Like Sentry's front ends: answers are not held back by Nagle's algorithm.
                let _ = conn.set_nodelay(true);
                let sim = sim.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let sim = sim.clone();
                        async move {
                            match sim.handle(req).await {
                                Some(resp) => Ok(resp),
                                // An error from the service makes hyper close the connection.
                                None => Err(std::io::Error::other(
                                    "connection dropped by the simulator",
                                )),
                            }
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        Ok(SimServer { addr, _stop: stop })
    }

    pub fn add_project(&self, id: u64, slug: &str) {
        let mut st = self.state.lock().unwrap();
        st.projects.push(Project {
            id,
            slug: slug.into(),
        });
        st.projects.sort_by_key(|p| p.id);
    }

    pub fn projects(&self) -> Vec<Project> {
        self.state.lock().unwrap().projects.clone()
    }

    pub fn add_event(&self, event: Event) {
        self.state.lock().unwrap().events.push(event);
    }

    /// Deletes events now, as Sentry's "delete and discard" does (gone from every list).
    pub fn delete_events(&self, ids: &[String]) {
        self.state
            .lock()
            .unwrap()
            .events
            .retain(|e| !ids.contains(&e.event_id));
    }

    /// Adds `count` events to a project with event times uniform in `[from, to)`. Each is
    /// ingested seconds later, or, with probability `late_share`, up to `max_late_secs` later.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        rng: &mut Rng,
        project_id: u64,
        count: u64,
        from: i64,
        to: i64,
        late_share: f64,
        max_late_secs: i64,
    ) {
        let mut st = self.state.lock().unwrap();
        for _ in 0..count {
            let date_created = from + rng.below((to - from).max(1) as u64) as i64;
            let delay = if rng.chance(late_share) {
                60 + rng.below((max_late_secs - 60).max(1) as u64) as i64
            } else {
                rng.below(30) as i64
            };
            let event_id = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
            st.events.push(Event {
                event_id,
                project_id,
                group_id: 1000 + rng.below(50),
                date_created,
                received_at: date_created + delay,
                title: format!("ValueError: checkout failed #{}", rng.below(1000)),
                padding: 0,
            });
        }
    }

    /// Events with an event time in `[start, end)` that are ingested by `visible_at`.
    pub fn truth(&self, start: i64, end: i64, visible_at: i64) -> Vec<Event> {
        let st = self.state.lock().unwrap();
        st.events
            .iter()
            .filter(|e| {
                e.date_created >= start && e.date_created < end && e.received_at <= visible_at
            })
            .cloned()
            .collect()
    }

    /// How many events [`Sim::truth`] lists, without copying them.
    pub fn truth_count(&self, start: i64, end: i64, visible_at: i64) -> u64 {
        self.truth_count_by_project(start, end, visible_at)
            .values()
            .sum()
    }

    /// [`Sim::truth_count`] per project (the projects with any).
    pub fn truth_count_by_project(
        &self,
        start: i64,
        end: i64,
        visible_at: i64,
    ) -> BTreeMap<u64, u64> {
        let st = self.state.lock().unwrap();
        let received = |p: u32| st.events[p as usize].received_at;
        let mut counts = BTreeMap::new();
        for (project, order) in &st.events.index().by_project {
            let range = event_range(&st.events, order, Some(start), Some(end));
            let n = order.count_visible(range, visible_at, received);
            if n > 0 {
                counts.insert(*project, n as u64);
            }
        }
        counts
    }

    /// The ids of the events [`Sim::truth`] lists, in the same order.
    pub fn truth_ids(&self, start: i64, end: i64, visible_at: i64) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.events
            .iter()
            .filter(|e| {
                e.date_created >= start && e.date_created < end && e.received_at <= visible_at
            })
            .map(|e| e.event_id.clone())
            .collect()
    }

    pub fn all_events(&self) -> Vec<Event> {
        self.state.lock().unwrap().events.to_vec()
    }

    pub fn counters(&self) -> Counters {
        self.state.lock().unwrap().counters.clone()
    }

    pub fn reset_counters(&self) {
        self.state.lock().unwrap().counters = Counters::default();
    }

    /// The next `n` project-events requests get a 429 whose `-Reset` is `reset_in` seconds away.
    pub fn force_429(&self, n: u32, reset_in: i64) {
        self.state.lock().unwrap().forced_429 = Some((n, reset_in));
    }

    /// The next `n` requests after region discovery answer `status` with `body` (a 502, or
    /// Snuba's "Query timeout" 400). `n` = 0 clears it.
    pub fn force_status(&self, n: u32, status: u16, body: &str) {
        let mut st = self.state.lock().unwrap();
        st.forced_status = (n > 0).then(|| (n, status, body.to_string()));
        st.forced_status_class = None;
    }

    /// Like [`Sim::force_status`], for requests of one class only ("project-events", ...).
    pub fn force_status_for(&self, class: &'static str, n: u32, status: u16, body: &str) {
        let mut st = self.state.lock().unwrap();
        st.forced_status = (n > 0).then(|| (n, status, body.to_string()));
        st.forced_status_class = Some(class);
    }

    /// The next `n` requests after region discovery are answered `delay` late (slower than
    /// the component's timeouts, for example).
    pub fn force_delay(&self, n: u32, delay: Duration) {
        self.state.lock().unwrap().forced_delay = (n > 0).then_some((n, delay));
    }

    /// The next `n` requests after region discovery get their connection closed unanswered.
    pub fn drop_next(&self, n: u32) {
        self.state.lock().unwrap().drop_next = n;
    }

    /// The bodies of the next `n` requests after region discovery arrive a few bytes every
    /// `every`: within any between-bytes timeout, and far slower than any run.
    pub fn trickle_next(&self, n: u32, every: Duration) {
        self.state.lock().unwrap().trickle_next = (n > 0).then_some((n, every));
    }

    /// Once `after` requests of `class` have been answered, the body of the next one of that
    /// class trickles `every` apart: a run that stalls after reading part of its window.
    pub fn stall_after(&self, class: &'static str, after: u64, every: Duration) {
        self.state.lock().unwrap().stall = Some((class, after, every));
    }

    /// The next `n` project-events pages are cut off halfway (a body cut short).
    pub fn truncate_next(&self, n: u32) {
        self.state.lock().unwrap().truncate_next = n;
    }

    /// The event is served without `eventID` and `id` from now on: an item no collector can
    /// identify, which must not stop the stream.
    pub fn poison(&self, event_id: &str) {
        self.state
            .lock()
            .unwrap()
            .poisoned
            .insert(event_id.to_string());
    }

    /// Deletes a project as Sentry does: it leaves the project list and `project=-1` results
    /// with all its data, its event list answers 404, and naming it in Discover gives 403.
    pub fn remove_project(&self, id: u64) {
        remove_project(&mut self.state.lock().unwrap(), id);
    }

    /// Deletes `projects` once `after` requests of `class` ("project-events", "discover", ...)
    /// have been answered: projects that vanish in the middle of a run.
    pub fn delete_projects_after(&self, class: &'static str, after: u64, projects: Vec<u64>) {
        self.state.lock().unwrap().deletion = Some((class, after, projects));
    }

    /// Deletes events as Sentry's "delete and discard" does (gone from every list): `batches`
    /// one after each answered request of `class`, the first after the next such request.
    pub fn delete_events_between_pages(&self, class: &'static str, batches: Vec<Vec<String>>) {
        self.state.lock().unwrap().event_deletions = Some((class, batches.into()));
    }

    /// Requests to this endpoint class answer 403 (a token without the scope).
    pub fn forbid(&self, class: &'static str) {
        self.state.lock().unwrap().forbidden.push(class);
    }

    pub fn url(&self) -> String {
        self.base_url.lock().unwrap().clone()
    }

    /// `None`: drop the connection without an answer.
    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Option<hyper::Response<SimBody>> {
        let (parts, _body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if classify(&self.options.org, &path).is_some_and(|c| c != "org") {
            let mut st = self.state.lock().unwrap();
            if st.drop_next > 0 {
                st.drop_next -= 1;
                return None;
            }
        }
        let query = parts.uri.query().unwrap_or("").to_string();
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let class = classify(&self.options.org, &path);
        if let Some(class) = class {
            self.state
                .lock()
                .unwrap()
                .buckets
                .entry(class)
                .or_default()
                .in_flight += 1;
        }
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        let faulted = class.is_some_and(|c| c != "org");
        let delay = faulted
            .then(|| take_one(&mut self.state.lock().unwrap().forced_delay))
            .flatten();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let resp = self.respond(parts.method.as_str(), &path, &query, &auth);
        if let Some(class) = class {
            let mut st = self.state.lock().unwrap();
            let b = st.buckets.entry(class).or_default();
            b.in_flight = b.in_flight.saturating_sub(1);
        }
        let mut builder = hyper::Response::builder().status(resp.status);
        for (n, v) in &resp.headers {
            builder = builder.header(n.as_str(), v.as_str());
        }
        let trickle = faulted
            .then(|| {
                let mut st = self.state.lock().unwrap();
                let stalled = match (st.stall, class) {
                    (Some((c, after, every)), Some(class)) if c == class => {
                        // `respond` has counted this request already.
                        let served = st.counters.requests.get(class).copied().unwrap_or(0);
                        (served > after).then(|| {
                            st.stall = None;
                            every
                        })
                    }
                    _ => None,
                };
                stalled.or_else(|| take_one(&mut st.trickle_next))
            })
            .flatten();
        let body = match trickle {
            None => Either::Left(Full::new(Bytes::from(resp.body))),
            Some(every) => {
                // The status and headers now, then the body a few bytes at a time: each gap
                // shorter than any between-bytes timeout, the whole far longer than a run.
                let (mut tx, body) = http_body_util::channel::Channel::new(1);
                let bytes = resp.body;
                tokio::spawn(async move {
                    for chunk in bytes.chunks(TRICKLE_CHUNK) {
                        if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                });
                Either::Right(body)
            }
        };
        Some(builder.body(body).expect("simulator response"))
    }

    /// Answers one request (synchronously; the HTTP layer is a thin wrapper).
    pub fn respond(
        &self,
        method: &str,
        path: &str,
        query: &str,
        authorization: &str,
    ) -> SimResponse {
        let params = Params::parse(query);
        let org = &self.options.org;
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let Some(class) = classify(org, path) else {
            return SimResponse::json(
                404,
                &json!({"detail": "The requested resource does not exist"}),
            );
        };
        if method != "GET" {
            return SimResponse::json(
                405,
                &json!({"detail": format!("Method \"{method}\" not allowed.")}),
            );
        }
        let now = self.clock.now();
        let mut st = self.state.lock().unwrap();
        let served = st.counters.requests.get(class).copied().unwrap_or(0);
        if let Some((c, after, projects)) = st.deletion.clone() {
            if c == class && served >= after {
                st.deletion = None;
                for p in projects {
                    remove_project(&mut st, p);
                }
            }
        }
        *st.counters.requests.entry(class).or_default() += 1;
        if authorization != format!("Bearer {}", self.options.token) {
            st.counters.unauthorized += 1;
            return SimResponse::json(401, &json!({"detail": "Invalid token"}));
        }
        if class != "org" && st.forced_status_class.is_none_or(|c| c == class) {
            if let Some((n, status, body)) = st.forced_status.clone() {
                st.forced_status = if n > 1 {
                    Some((n - 1, status, body.clone()))
                } else {
                    None
                };
                return SimResponse::json(status, &json!({ "detail": body }));
            }
        }
        if st.forbidden.contains(&class) {
            return SimResponse::json(
                403,
                &json!({"detail": "You do not have permission to perform this action."}),
            );
        }
        let limit = match class {
            "project-events" => PROJECT_EVENTS_LIMIT,
            "discover" => DISCOVER_LIMIT,
            _ => DEFAULT_LIMIT,
        };
        let mut rate_headers = Vec::new();
        if class == "project-events" {
            if let Some((n, reset_in)) = st.forced_429 {
                st.forced_429 = if n > 1 { Some((n - 1, reset_in)) } else { None };
                st.counters.forced_429s += 1;
                let bucket = st.buckets.entry(class).or_default();
                // The forced limit holds until its reset, like a real exhausted window.
                bucket.window_start = now + reset_in - limit.window_secs;
                bucket.used = limit.requests;
                return too_many(limit, now + reset_in);
            }
        }
        if self.options.rate_limits && !self.options.unlimited.contains(&class) {
            let bucket = st.buckets.entry(class).or_default();
            let window_start = now - now.rem_euclid(limit.window_secs);
            if window_start > bucket.window_start {
                bucket.window_start = window_start;
                bucket.used = 0;
            }
            let reset = bucket.window_start + limit.window_secs;
            // in_flight counts this request too when it came over HTTP.
            if bucket.used >= limit.requests || bucket.in_flight > limit.concurrent {
                st.counters.avoidable_429s += 1;
                return too_many(limit, reset);
            }
            bucket.used += 1;
            rate_headers = vec![
                (
                    "x-sentry-rate-limit-limit".to_string(),
                    limit.requests.to_string(),
                ),
                (
                    "x-sentry-rate-limit-remaining".to_string(),
                    (limit.requests - bucket.used).to_string(),
                ),
                ("x-sentry-rate-limit-reset".to_string(), reset.to_string()),
                (
                    "x-sentry-rate-limit-concurrentlimit".to_string(),
                    limit.concurrent.to_string(),
                ),
                (
                    "x-sentry-rate-limit-concurrentremaining".to_string(),
                    limit
                        .concurrent
                        .saturating_sub(bucket.in_flight.max(1))
                        .to_string(),
                ),
            ];
        }
        let answered_class = class;
        let mut resp = match class {
            "org" => self.org_details(),
            "projects" => self.project_list(&st, &params, path),
            "discover" => self.discover(&st, &params, path, now),
            "issues" => self.issues(&st, &params, path, now),
            "audit-logs" => self.audit_logs(&st, &params, path, now),
            _ => {
                let project = segments[4];
                let found = st
                    .projects
                    .iter()
                    .find(|p| p.slug == project || p.id.to_string() == project)
                    .cloned();
                match found {
                    None => SimResponse::json(
                        404,
                        &json!({"detail": "The requested resource does not exist"}),
                    ),
                    Some(p) => {
                        *st.counters.project_event_requests.entry(p.id).or_default() += 1;
                        let mut resp = self.project_events(&st, &p, &params, path, now);
                        if st.truncate_next > 0 {
                            st.truncate_next -= 1;
                            let half = resp.body.len() / 2;
                            resp.body.truncate(half);
                        }
                        resp
                    }
                }
            }
        };
        resp.headers.extend(rate_headers);
        // Events deleted after this answer: the next page sees them gone.
        if let Some((c, batches)) = st.event_deletions.as_mut() {
            if *c == answered_class {
                if let Some(ids) = batches.pop_front() {
                    st.events.retain(|e| !ids.contains(&e.event_id));
                }
            }
        }
        resp
    }

    fn org_details(&self) -> SimResponse {
        let region = self
            .options
            .region_url
            .clone()
            .unwrap_or_else(|| self.url());
        SimResponse::json(
            200,
            &json!({
                "id": "1",
                "slug": self.options.org,
                "name": "Acme",
                "dateCreated": "2018-11-06T21:19:55.101Z",
                "status": {"id": "active", "name": "active"},
                "isEarlyAdopter": false,
                "require2FA": false,
                "avatar": {"avatarType": "letter_avatar", "avatarUuid": null},
                "features": if self.options.global_views { json!(["global-views"]) } else { json!([]) },
                "links": {"organizationUrl": format!("https://{}.sentry.example", self.options.org), "regionUrl": region},
                "hasAuthProvider": false,
                "allowMemberInvite": true,
                "allowMemberProjectCreation": true,
                "allowSuperuserAccess": false,
            }),
        )
    }

    fn project_list(&self, st: &State, params: &Params, path: &str) -> SimResponse {
        let per_page = match params.per_page(100) {
            Ok(n) => n,
            Err(r) => return r,
        };
        let offset = params.offset();
        let items: Vec<Value> = st
            .projects
            .iter()
            .skip(offset)
            .take(per_page)
            .map(project_json)
            .collect();
        let more = st.projects.len() > offset + per_page;
        self.paged(json!(items), path, params, offset, per_page, more)
    }

    fn discover(&self, st: &State, params: &Params, path: &str, now: i64) -> SimResponse {
        let projects = params.all("project");
        let multi = projects.is_empty() || projects.iter().any(|p| p == "-1") || projects.len() > 1;
        if multi && !self.options.global_views {
            return SimResponse::json(
                400,
                &json!({"detail": "You cannot view events from multiple projects."}),
            );
        }
        let fields = params.all("field");
        if fields.len() > 20 {
            return SimResponse::json(
                400,
                &json!({"detail": "You can view up to 20 fields at a time. Please delete some and try again."}),
            );
        }
        let wanted: Vec<u64> = projects
            .iter()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != u64::MAX)
            .collect();
        // A project named explicitly that the org does not have (any more): 403.
        if wanted
            .iter()
            .any(|w| !st.projects.iter().any(|p| p.id == *w))
        {
            return SimResponse::json(
                403,
                &json!({"detail": "You do not have permission to perform this action."}),
            );
        }
        // `project=-1` (all projects) wins over projects named beside it.
        let wanted = if projects.iter().any(|p| p == "-1") {
            Vec::new()
        } else {
            wanted
        };
        let dataset = params.get("dataset").unwrap_or("errors");
        if let Some(d) = DATASETS.iter().find(|d| **d == dataset) {
            let wanted = (!wanted.is_empty()).then_some(wanted);
            return self.explore(st, d, params, path, now, wanted);
        }
        if dataset != "errors" {
            return SimResponse::json(
                400,
                &json!({"detail": format!("Invalid dataset: {dataset}")}),
            );
        }
        let by_second = fields == ["project.id", "timestamp", "count()"];
        if fields != ["project.id", "count()"] && !by_second {
            return SimResponse::json(
                400,
                &json!({"detail": "the simulator answers only field=project.id&field=count() and field=project.id&field=timestamp&field=count()"}),
            );
        }
        let sorts = params.all("sort");
        if sorts
            .iter()
            .any(|s| !fields.contains(&s.trim_start_matches('-').to_string()))
        {
            return SimResponse::json(
                400,
                &json!({"detail": "Cannot sort by a field that is not selected."}),
            );
        }
        let (start, end) = match params.date_range() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let per_page = match params.per_page(100) {
            Ok(n) => n,
            Err(r) => return r,
        };
        if by_second {
            if sorts != ["timestamp"] {
                return SimResponse::json(
                    400,
                    &json!({"detail": "the simulator sorts per-second counts only by timestamp"}),
                );
            }
            // `project=-1` (or none): every project; otherwise the ones named.
            let wanted = (!wanted.is_empty()).then_some(wanted);
            return self.second_counts(st, params, path, now, (start, end), per_page, wanted);
        }
        // Visible events with an event time in the range, per project (the ones with any).
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for (project, order) in &st.events.index().by_project {
            if wanted.is_empty() || wanted.contains(project) {
                let range = event_range(&st.events, order, start, end);
                let n = order.count_visible(range, now, |p| st.events[p as usize].received_at);
                if n > 0 {
                    counts.insert(*project, n as u64);
                }
            }
        }
        let offset = params.offset();
        let rows: Vec<Value> = counts
            .iter()
            .skip(offset)
            .take(per_page)
            .map(|(p, c)| json!({"project.id": p, "count()": c}))
            .collect();
        let more = counts.len() > offset + per_page;
        let body = json!({
            "data": rows,
            "meta": {"fields": {"project.id": "integer", "count()": "integer"}, "units": {"project.id": null, "count()": null}, "isMetricsData": false, "isMetricsExtractedData": false, "tips": {}, "datasetReason": "unchanged", "dataset": "errors", "dataScanned": "full"},
        });
        self.paged(body, path, params, offset, per_page, more)
    }

    /// Discover `field=project.id&field=timestamp&field=count()&sort=timestamp` on errors:
    /// one row per project and second with visible events (`timestamp` is whole seconds),
    /// sorted by the second only, so the projects of one second come back in a fresh order
    /// on every query (Snuba sorts by what `sort` names and nothing else).
    #[allow(clippy::too_many_arguments)]
    fn second_counts(
        &self,
        st: &State,
        params: &Params,
        path: &str,
        now: i64,
        (start, end): (Option<i64>, Option<i64>),
        per_page: usize,
        wanted: Option<Vec<u64>>,
    ) -> SimResponse {
        let mut counts: BTreeMap<(i64, u64), u64> = BTreeMap::new();
        for (project, order) in &st.events.index().by_project {
            if wanted.as_ref().is_none_or(|w| w.contains(project)) {
                let range = event_range(&st.events, order, start, end);
                for &p in &order.positions()[range] {
                    let e = &st.events[p as usize];
                    if e.received_at <= now {
                        *counts.entry((e.date_created, *project)).or_default() += 1;
                    }
                }
            }
        }
        let mut rows: Vec<((i64, u64), u64)> = counts.into_iter().collect();
        let mut rng = Rng::new(self.next_query_seed());
        let mut i = 0;
        while i < rows.len() {
            let j = i + rows[i..]
                .iter()
                .take_while(|r| r.0 .0 == rows[i].0 .0)
                .count();
            for k in (i + 1..j).rev() {
                let m = i + rng.below((k - i + 1) as u64) as usize;
                rows.swap(k, m);
            }
            i = j;
        }
        let offset = params.offset();
        let page: Vec<Value> = rows
            .iter()
            .skip(offset)
            .take(per_page)
            .map(|((t, p), n)| {
                let ts = format!("{}+00:00", time::rfc3339(*t).trim_end_matches('Z'));
                json!({"project.id": p, "timestamp": ts, "count()": n})
            })
            .collect();
        let more = rows.len() > offset + per_page;
        let body = json!({
            "data": page,
            "meta": {"fields": {"project.id": "integer", "timestamp": "date", "count()": "integer"}, "units": {"project.id": null, "timestamp": null, "count()": null}, "isMetricsData": false, "isMetricsExtractedData": false, "tips": {}, "datasetReason": "unchanged", "dataset": "errors", "dataScanned": "full"},
        });
        self.paged(body, path, params, offset, per_page, more)
    }

    fn project_events(
        &self,
        st: &State,
        project: &Project,
        params: &Params,
        path: &str,
        now: i64,
    ) -> SimResponse {
        let full = params.get("full").is_some_and(|v| v == "true" || v == "1");
        let per_page = match params.per_page(100) {
            Ok(n) if full => n.min(10),
            Ok(n) => n,
            Err(r) => return r,
        };
        let (start, end) = if self.options.legacy_no_date_filter {
            (None, None)
        } else {
            match params.date_range() {
                Ok(r) => r,
                Err(r) => return r,
            }
        };
        // DESC_ORDERING: -timestamp, -event_id; the project's events in that order, the range
        // a slice of it, and the page the visible events `offset..` of the slice.
        let received = |p: u32| st.events[p as usize].received_at;
        let offset = params.offset();
        let (hits, page) = match st.events.index().by_project.get(&project.id) {
            None => (0, Vec::new()),
            Some(order) => {
                let range = event_range(&st.events, order, start, end);
                let hits = order.count_visible(range.clone(), now, received);
                let page: Vec<&Event> =
                    match order.nth_visible(range.clone(), offset, now, received) {
                        None => Vec::new(),
                        Some(first) => order.positions()[first..range.end]
                            .iter()
                            .map(|&p| &st.events[p as usize])
                            .filter(|e| e.received_at <= now)
                            .take(per_page)
                            .collect(),
                    };
                (hits, page)
            }
        };
        let page: Vec<Value> = page
            .iter()
            .map(|e| {
                let mut v = if full {
                    e.full_json(&project.slug)
                } else {
                    e.simple_json(&project.slug)
                };
                if st.poisoned.contains(&e.event_id) {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("eventID");
                        o.remove("id");
                    }
                }
                v
            })
            .collect();
        let more = hits > offset + per_page;
        let mut resp = self.paged(json!(page), path, params, offset, per_page, more);
        resp.headers.push(("x-hits".into(), hits.to_string()));
        resp
    }

    /// A page with Sentry's Link header, built on `link_base` rather than the host called.
    fn paged(
        &self,
        body: Value,
        path: &str,
        params: &Params,
        offset: usize,
        per_page: usize,
        more: bool,
    ) -> SimResponse {
        let prev = format!("0:{}:1", offset.saturating_sub(per_page));
        let next = format!("0:{}:0", offset + per_page);
        self.link_page(body, path, params, (&prev, offset > 0), (&next, more))
    }
}

/// The endpoint class of a path, or `None` for paths the simulator does not serve.
fn classify(org: &str, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "0", "organizations", o] if *o == org => Some("org"),
        ["api", "0", "organizations", o, "projects"] if *o == org => Some("projects"),
        ["api", "0", "organizations", o, "events"] if *o == org => Some("discover"),
        ["api", "0", "organizations", o, "issues"] if *o == org => Some("issues"),
        ["api", "0", "organizations", o, "audit-logs"] if *o == org => Some("audit-logs"),
        ["api", "0", "projects", o, _, "events"] if *o == org => Some("project-events"),
        _ => None,
    }
}

fn too_many(limit: Limit, reset: i64) -> SimResponse {
    let mut resp = SimResponse::json(
        429,
        &json!(format!(
            "You are attempting to use this endpoint too frequently. Limit is {} requests in {} seconds",
            limit.requests, limit.window_secs
        )),
    );
    resp.headers.extend([
        (
            "x-sentry-rate-limit-limit".to_string(),
            limit.requests.to_string(),
        ),
        ("x-sentry-rate-limit-remaining".to_string(), "0".to_string()),
        ("x-sentry-rate-limit-reset".to_string(), reset.to_string()),
        (
            "x-sentry-rate-limit-concurrentlimit".to_string(),
            limit.concurrent.to_string(),
        ),
    ]);
    resp
}

fn project_json(p: &Project) -> Value {
    let mut v = json!({
        "id": p.id.to_string(), "slug": p.slug, "name": p.slug, "platform": "python",
        "dateCreated": "2024-01-01T00:00:00.000000Z", "isBookmarked": false, "isMember": true,
        "features": [], "firstEvent": null, "firstTransactionEvent": false, "access": [], "hasAccess": true,
        "team": {"id": "2", "name": "Backend", "slug": "backend"}, "teams": [{"id": "2", "name": "Backend", "slug": "backend"}],
        "platforms": ["python"], "environments": ["production"], "latestRelease": null,
    });
    for flag in [
        "hasFeedbacks",
        "hasFlags",
        "hasInsightsAgentMonitoring",
        "hasInsightsAppStart",
        "hasInsightsAssets",
        "hasInsightsCaches",
        "hasInsightsDb",
        "hasInsightsHttp",
        "hasInsightsMCP",
        "hasInsightsQueues",
        "hasInsightsScreenLoad",
        "hasInsightsVitals",
        "hasLogs",
        "hasMinifiedStackTrace",
        "hasMonitors",
        "hasNewFeedbacks",
        "hasProfiles",
        "hasReplays",
        "hasSessions",
        "hasTraceMetrics",
        "hasUserReports",
    ] {
        v[flag] = json!(false);
    }
    v
}

/// A response before it is put on the wire.
#[derive(Debug, Clone)]
pub struct SimResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SimResponse {
    fn json(status: u16, value: &Value) -> SimResponse {
        SimResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("serialising JSON"),
        }
    }
}

/// Query parameters, in order, percent-decoded.
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(query: &str) -> Params {
        Params {
            pairs: url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        }
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn per_page(&self, max: usize) -> Result<usize, SimResponse> {
        match self.get("per_page") {
            None => Ok(100),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > max => Err(SimResponse::json(
                    400,
                    &json!({"detail": format!("Invalid per_page value. Cannot exceed {max}.")}),
                )),
                Ok(n) if n > 0 => Ok(n),
                _ => Err(SimResponse::json(
                    400,
                    &json!({"detail": "Invalid per_page value."}),
                )),
            },
        }
    }
    /// `0:offset:is_prev`; only the offset matters (GenericOffsetPaginator).
    fn offset(&self) -> usize {
        self.get("cursor")
            .and_then(|c| c.split(':').nth(1))
            .and_then(|o| o.parse().ok())
            .unwrap_or(0)
    }
    #[allow(clippy::type_complexity)]
    fn date_range(&self) -> Result<(Option<i64>, Option<i64>), SimResponse> {
        let bad = || {
            SimResponse::json(
                400,
                &json!({"detail": "Invalid date range parameters provided"}),
            )
        };
        match (self.get("start"), self.get("end")) {
            (None, None) => Ok((None, None)),
            (Some(s), Some(e)) => {
                let s = time::parse_rfc3339(s).ok_or_else(bad)?;
                let e = time::parse_rfc3339(e).ok_or_else(bad)?;
                if s >= e {
                    Err(bad())
                } else {
                    Ok((Some(s), Some(e)))
                }
            }
            _ => Err(bad()),
        }
    }
}

/// A running simulator; dropping it stops the server.
pub struct SimServer {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SimServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads a response body to text, for tests that call the simulator over HTTP.
pub async fn body_text(resp: hyper::Response<hyper::body::Incoming>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn remove_project(st: &mut State, id: u64) {
    st.projects.retain(|p| p.id != id);
    st.events.retain(|e| e.project_id != id);
    st.rows.retain(|r| r.project_id != id);
}

/// The slice of a project's events (newest first) with an event time in `[start, end)`.
fn event_range(
    events: &[Event],
    order: &index::Order,
    start: Option<i64>,
    end: Option<i64>,
) -> std::ops::Range<usize> {
    let pos = order.positions();
    let date = |p: &u32| events[*p as usize].date_created;
    let lo = end.map_or(0, |x| pos.partition_point(|p| date(p) >= x));
    let hi = start.map_or(pos.len(), |s| pos.partition_point(|p| date(p) >= s));
    lo..hi.max(lo)
}

/// Uses one of the `n` faults left in `slot`: its value, clearing the slot after the last.
fn take_one<T: Copy>(slot: &mut Option<(u32, T)>) -> Option<T> {
    let (n, value) = (*slot)?;
    *slot = (n > 1).then_some((n - 1, value));
    Some(value)
}
