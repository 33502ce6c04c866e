//! The endpoints of the other streams, each with its own paginator and quirks:
//!
//! - issues (`/organizations/{org}/issues/`): derived from the events (one issue per project
//!   and group), `lastSeen` the newest visible event, mutable; `query` defaults to
//!   `is:unresolved`; the date range selects issues with events in it, and `count`,
//!   `userCount`, `firstSeen`, `lastSeen` describe those events only (`lifetime` holds the
//!   all-time values); `sort=date` pages newest `lastSeen` first with score cursors
//!   (`{lastSeen ms}:{offset}:{is_prev}`), so an issue that moves does not shift the pages after
//!   it; `limit` at most 100; `collapse=stats` drops `stats`, `lifetime` and `filtered`,
//!   `groupStatsPeriod=` only `stats`; several projects without global views: 400;
//! - audit logs (`/organizations/{org}/audit-logs/`): `{"rows": [...], "options": [...]}`,
//!   newest first, `DateTimePaginator` cursors (`{epoch ms}:{offset}:{is_prev}`), no date
//!   filter, 403 for a token without `org:write`;
//! - Discover / Explore datasets (`transactions`, `spans`, `logs`): flat rows of the requested
//!   fields (20 at most, unknown ones refused), sorted by every `sort` given (each a selected
//!   field, `-` for descending) and by nothing else: rows that tie come back in a new random
//!   order on every query, as Snuba returns them; offset paging
//!   that silently stops at 10,000 rows (`results="false"` at the cap: the worst case), and
//!   `meta.dataScanned` that says `partial` when sampling is switched on.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::index::{Order, EMPTY_ORDER};
use crate::{time, Event, Params, Rng, Sim, SimResponse, State};

/// Rows one Discover query can page through by offset.
pub const OFFSET_CAP: usize = 10_000;

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    /// Milliseconds since the epoch.
    pub date_created_ms: i64,
    pub event: String,
    pub actor: String,
}

/// One row of a Discover / Explore dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExploreRow {
    pub dataset: &'static str,
    pub id: String,
    pub project_id: u64,
    /// Whole seconds (Discover's `timestamp` precision).
    pub timestamp: i64,
    /// Invisible before this time.
    pub received_at: i64,
    pub n: u64,
}

/// A value a Discover sort compares.
#[derive(Debug, Clone, PartialEq)]
enum SortKey {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Eq for SortKey {}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use SortKey::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            // One field has one type; across types, by variant.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl SortKey {
    fn rank(&self) -> u8 {
        match self {
            SortKey::Int(_) => 0,
            SortKey::Float(_) => 1,
            SortKey::Text(_) => 2,
        }
    }
}

/// One version of an issue: its id and a `lastSeen` it had.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IssueVersion {
    pub id: String,
    pub last_seen: String,
}

pub const DATASETS: &[&str] = &["transactions", "spans", "logs"];

/// Fields the simulator knows per dataset (Sentry refuses unknown ones).
fn known_field(dataset: &str, field: &str) -> bool {
    const COMMON: &[&str] = &[
        "id",
        "timestamp",
        "project",
        "project.id",
        "environment",
        "release",
        "user.id",
        "user.email",
        "user.ip",
        "trace",
        "sdk.name",
        "platform",
        "count()",
    ];
    const TRANSACTIONS: &[&str] = &[
        "transaction",
        "transaction.op",
        "transaction.status",
        "transaction.duration",
        "http.method",
        "http.status_code",
    ];
    const SPANS: &[&str] = &[
        "span.op",
        "span.description",
        "span.duration",
        "span.status",
        "is_transaction",
        "transaction",
        "parent_span",
    ];
    const LOGS: &[&str] = &["message", "severity", "severity_number"];
    COMMON.contains(&field)
        || match dataset {
            "transactions" => TRANSACTIONS.contains(&field),
            "spans" => SPANS.contains(&field),
            "logs" => LOGS.contains(&field),
            _ => false,
        }
}

/// The issue id of a project's group (ids are org-wide in Sentry).
pub fn issue_id(project_id: u64, group_id: u64) -> u64 {
    project_id * 1_000_000 + group_id
}

struct Issue<'a> {
    id: u64,
    project_id: u64,
    group_id: u64,
    first_seen: i64,
    last_seen: i64,
    count: u64,
    latest: &'a Event,
}

fn ms_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rest = ms.rem_euclid(1000);
    let s = time::rfc3339(secs);
    format!("{}.{rest:03}Z", s.trim_end_matches('Z'))
}

/// `value:offset:is_prev` of a score or date cursor.
fn score_cursor(params: &Params) -> Option<(i64, usize)> {
    let c = params.get("cursor")?;
    let mut parts = c.split(':');
    let value = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some((value, offset))
}

/// Newest-first paging by a score: items with a score at most the cursor's, skipping `offset`
/// of them, and the next cursor (the last item's score, and how many items with that score
/// have been returned).
fn page_by_score<T>(
    items: &[T],
    score: impl Fn(&T) -> i64,
    cursor: Option<(i64, usize)>,
    per_page: usize,
) -> (Vec<&T>, Option<(i64, usize)>) {
    let eligible: Vec<&T> = items
        .iter()
        .filter(|i| cursor.is_none_or(|(v, _)| score(i) <= v))
        .collect();
    let skip = cursor.map_or(0, |(_, o)| o);
    let page: Vec<&T> = eligible.iter().skip(skip).take(per_page).copied().collect();
    let more = eligible.len() > skip + page.len();
    let next = match page.last() {
        Some(last) if more => {
            let v = score(last);
            let same = page.iter().filter(|i| score(i) == v).count();
            let carried = match cursor {
                Some((cv, o)) if cv == v => o,
                _ => 0,
            };
            Some((v, same + carried))
        }
        _ => None,
    };
    (page, next)
}

impl Sim {
    /// Adds `count` audit-log entries with times uniform in `[from, to)` (milliseconds apart,
    /// several in one second).
    pub fn generate_audit(&self, rng: &mut Rng, count: u64, from: i64, to: i64) {
        const EVENTS: &[&str] = &[
            "member.invite",
            "member.remove",
            "member.edit",
            "project.edit",
            "org.edit",
            "api-key.create",
            "sentry-app.install",
        ];
        let mut st = self.state.lock().unwrap();
        for _ in 0..count {
            let ms = from * 1000 + rng.below(((to - from).max(1) * 1000) as u64) as i64;
            let id = st.audit.len() as u64 + 1;
            st.audit.push(AuditEntry {
                id,
                date_created_ms: ms,
                event: EVENTS[rng.below(EVENTS.len() as u64) as usize].to_string(),
                actor: format!("user{}@example.com", rng.below(20)),
            });
        }
    }

    /// Adds `count` rows to a dataset of a project, with times uniform in `[from, to)`, each
    /// visible a few seconds later, or up to `max_late_secs` later with probability
    /// `late_share`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_rows(
        &self,
        rng: &mut Rng,
        dataset: &'static str,
        project_id: u64,
        count: u64,
        from: i64,
        to: i64,
        late_share: f64,
        max_late_secs: i64,
    ) {
        assert!(DATASETS.contains(&dataset), "unknown dataset {dataset}");
        let mut st = self.state.lock().unwrap();
        for _ in 0..count {
            let timestamp = from + rng.below((to - from).max(1) as u64) as i64;
            let delay = if rng.chance(late_share) {
                60 + rng.below((max_late_secs - 60).max(1) as u64) as i64
            } else {
                rng.below(30) as i64
            };
            // Spans have 16-hex-digit ids, the others 32.
            let id = if dataset == "spans" {
                format!("{:016x}", rng.next_u64())
            } else {
                format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
            };
            st.rows.push(ExploreRow {
                dataset,
                id,
                project_id,
                timestamp,
                received_at: timestamp + delay,
                n: rng.below(1000),
            });
        }
    }

    /// Adds one row to a dataset.
    pub fn add_row(&self, row: ExploreRow) {
        assert!(
            DATASETS.contains(&row.dataset),
            "unknown dataset {}",
            row.dataset
        );
        self.state.lock().unwrap().rows.push(row);
    }

    /// Answers Discover queries with `meta.dataScanned: "partial"` (sampled) or not. Spans
    /// and logs queried with `sampling=HIGHEST_ACCURACY` scan the full data, as on Sentry.
    pub fn set_sampled(&self, sampled: bool) {
        self.state.lock().unwrap().sampled = sampled;
    }

    /// Spans and logs carry this sampling weight (sent at a sample rate of 1 / `weight`):
    /// `count()` over them is extrapolated, as Sentry's is, unless the query says
    /// `disableAggregateExtrapolation=1`.
    pub fn set_sample_weight(&self, weight: f64) {
        self.state.lock().unwrap().sample_weight = weight;
    }

    /// Audit entries in `[start, end)` (whole seconds).
    pub fn audit_truth(&self, start: i64, end: i64) -> Vec<AuditEntry> {
        let st = self.state.lock().unwrap();
        st.audit
            .iter()
            .filter(|a| {
                let s = a.date_created_ms.div_euclid(1000);
                s >= start && s < end
            })
            .cloned()
            .collect()
    }

    /// Rows of a dataset with a timestamp in `[start, end)` visible by `visible_at`.
    pub fn rows_truth(
        &self,
        dataset: &str,
        start: i64,
        end: i64,
        visible_at: i64,
    ) -> Vec<ExploreRow> {
        let st = self.state.lock().unwrap();
        st.rows
            .iter()
            .filter(|r| {
                r.dataset == dataset
                    && r.timestamp >= start
                    && r.timestamp < end
                    && r.received_at <= visible_at
            })
            .cloned()
            .collect()
    }

    /// How many rows [`Sim::rows_truth`] lists, without copying them.
    pub fn rows_truth_count(&self, dataset: &str, start: i64, end: i64, visible_at: i64) -> u64 {
        let st = self.state.lock().unwrap();
        let index = &st.rows.index().by_dataset;
        let Some(order) = DATASETS
            .iter()
            .find(|d| **d == dataset)
            .and_then(|d| index.get(&(*d, None)))
        else {
            return 0;
        };
        let pos = order.positions();
        let timestamp = |p: &u32| st.rows[*p as usize].timestamp;
        let lo = pos.partition_point(|p| timestamp(p) < start);
        let hi = pos.partition_point(|p| timestamp(p) < end).max(lo);
        order.count_visible(lo..hi, visible_at, |p| st.rows[p as usize].received_at) as u64
    }

    /// The ids of the rows [`Sim::rows_truth`] lists, in the same order.
    pub fn rows_truth_ids(
        &self,
        dataset: &str,
        start: i64,
        end: i64,
        visible_at: i64,
    ) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.rows
            .iter()
            .filter(|r| {
                r.dataset == dataset
                    && r.timestamp >= start
                    && r.timestamp < end
                    && r.received_at <= visible_at
            })
            .map(|r| r.id.clone())
            .collect()
    }

    /// An issue as the API shows it at `now` (as an issue webhook carries it), and the slug of
    /// its project.
    pub fn issue_snapshot(&self, issue: u64, now: i64) -> Option<(Value, String)> {
        let st = self.state.lock().unwrap();
        let found = issues_at(&st, now).into_iter().find(|i| i.id == issue)?;
        let v = self.issue_json(&st, &found);
        let slug = v["project"]["slug"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Some((v, slug))
    }

    /// Records a user's change of an issue: its status, substatus and assignee from now on.
    pub fn set_issue_state(&self, issue: u64, status: &str, substatus: Value, assignee: Value) {
        let mut st = self.state.lock().unwrap();
        st.issue_changes
            .insert(issue, (status.to_string(), substatus, assignee));
    }

    /// Every issue as it is at `now`: its id and current `lastSeen`.
    pub fn issue_versions(&self, now: i64) -> Vec<IssueVersion> {
        let st = self.state.lock().unwrap();
        issues_at(&st, now)
            .iter()
            .map(|i| IssueVersion {
                id: i.id.to_string(),
                last_seen: time::rfc3339(i.last_seen),
            })
            .collect()
    }

    pub(crate) fn issues(&self, st: &State, params: &Params, path: &str, now: i64) -> SimResponse {
        let limit = match params.get("limit") {
            None => 100,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return SimResponse::json(
                        400,
                        &json!({"detail": "limit must be between 1 and 100"}),
                    )
                }
            },
        };
        if params.get("sort").is_some_and(|s| s != "date") {
            return SimResponse::json(
                400,
                &json!({"detail": "the simulator sorts issues only by date"}),
            );
        }
        let (start, end) = match params.date_range() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let stats_period = match params.get("groupStatsPeriod") {
            None => Some("24h"),
            Some("") => None,
            Some(p @ ("24h" | "14d" | "auto")) => Some(p),
            Some(_) => {
                return SimResponse::json(
                    400,
                    &json!({"detail": "Invalid groupStatsPeriod. Valid choices are '', '24h', and '14d'"}),
                )
            }
        };
        let projects = params.all("project");
        let multi = projects.is_empty() || projects.iter().any(|p| p == "-1") || projects.len() > 1;
        if multi && !self.options.global_views {
            return SimResponse::json(
                400,
                &json!({"detail": "You do not have the multi project stream feature enabled"}),
            );
        }
        let wanted: Vec<u64> = projects.iter().filter_map(|p| p.parse().ok()).collect();
        // No `query` means Sentry's default, `is:unresolved`.
        let unresolved_only = params
            .get("query")
            .is_none_or(|q| q.contains("is:unresolved"));
        let collapse = params.all("collapse");
        // Sentry searches the events in the date range: an issue is listed if it has events
        // there, sorted by its last one there, and `count`, `userCount`, `firstSeen` and
        // `lastSeen` describe only those events; `lifetime` holds the all-time values.
        let in_range = issues_in(st, now, start, end);
        let lifetime: BTreeMap<u64, Issue> =
            issues_at(st, now).into_iter().map(|i| (i.id, i)).collect();
        let mut issues: Vec<Issue> = in_range
            .into_iter()
            .filter(|i| {
                (!unresolved_only || !resolved(i.group_id))
                    && (multi || wanted.contains(&i.project_id))
            })
            .collect();
        issues.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.id.cmp(&a.id)));
        let (page, next) =
            page_by_score(&issues, |i| i.last_seen * 1000, score_cursor(params), limit);
        let collapsed = |what: &str| collapse.iter().any(|c| c == what);
        let body: Vec<Value> = page
            .iter()
            .map(|i| {
                let mut v = self.issue_json(st, i);
                let o = v.as_object_mut().expect("an issue is an object");
                // Like Sentry's serializer: `collapse=stats` drops stats, lifetime and
                // filtered together; `groupStatsPeriod=` only the histogram.
                if !collapsed("stats") {
                    if let Some(period) = stats_period {
                        o.insert(
                            "stats".into(),
                            json!({ period: [[i.last_seen - i.last_seen % 3600, i.count]] }),
                        );
                    }
                    if !collapsed("lifetime") {
                        let all = lifetime.get(&i.id).unwrap_or(i);
                        o.insert(
                            "lifetime".into(),
                            json!({"count": all.count.to_string(), "userCount": 1, "firstSeen": time::rfc3339(all.first_seen), "lastSeen": time::rfc3339(all.last_seen), "stats": null}),
                        );
                    }
                    if !collapsed("filtered") {
                        o.insert("filtered".into(), Value::Null);
                    }
                }
                v
            })
            .collect();
        let cursor = |c: Option<(i64, usize)>, prev: bool| {
            c.map_or("0:0:0".to_string(), |(v, o)| {
                format!("{v}:{o}:{}", prev as u8)
            })
        };
        let next_cursor = cursor(next, false);
        let prev_cursor = format!("{}:0:1", page.first().map_or(0, |i| i.last_seen * 1000));
        self.link_page(
            json!(body),
            path,
            params,
            (&prev_cursor, params.get("cursor").is_some()),
            (&next_cursor, next.is_some()),
        )
    }

    /// An issue's own fields (the date-range-dependent ones from `i`), without `stats`,
    /// `lifetime` and `filtered`, which depend on the request.
    fn issue_json(&self, st: &State, i: &Issue) -> Value {
        let slug = st
            .projects
            .iter()
            .find(|p| p.id == i.project_id)
            .map_or("unknown".to_string(), |p| p.slug.clone());
        let status = if resolved(i.group_id) {
            "resolved"
        } else {
            "unresolved"
        };
        let changed = st.issue_changes.get(&i.id);
        let status = changed.map_or(status, |c| c.0.as_str());
        let mut v = json!({
            "id": i.id.to_string(),
            "shareId": null,
            "shortId": format!("{}-{}", slug.to_uppercase(), i.group_id),
            "title": i.latest.title,
            "culprit": "/api/checkout/",
            "permalink": format!("https://acme.sentry.example/issues/{}/", i.id),
            "logger": null,
            "level": "error",
            "status": status,
            "statusDetails": {},
            "substatus": if status == "resolved" { Value::Null } else { json!("ongoing") },
            "isPublic": false,
            "platform": "python",
            "priority": "medium",
            "priorityLockedAt": null,
            "seerFixabilityScore": null,
            "seerAutofixLastTriggered": null,
            "seerExplorerAutofixLastTriggered": null,
            "project": {"id": i.project_id.to_string(), "name": slug, "slug": slug, "platform": "python"},
            "type": "error",
            "issueType": "error",
            "issueCategory": "error",
            "metadata": {"type": "ValueError", "value": i.latest.title},
            "numComments": 0,
            "assignedTo": {"type": "team", "id": "2", "name": "backend"},
            "isBookmarked": false,
            "isSubscribed": false,
            "subscriptionDetails": null,
            "hasSeen": false,
            "annotations": [],
            "isUnhandled": false,
            "count": i.count.to_string(),
            "userCount": 1,
            "firstSeen": time::rfc3339(i.first_seen),
            "lastSeen": time::rfc3339(i.last_seen),
            "derivedData": {"blocker": "none", "progress": "none", "status": "open", "viewCount": 0, "hasOpenFixPr": false, "isAssigned": true, "hasRootCause": false, "lastCompletedAutofixStep": "none", "lastProgressedAt": time::rfc3339(i.first_seen)},
            "sessionCount": 0,
            "inbox": {"reason": 0, "reason_details": null, "date_added": time::rfc3339(i.first_seen)},
            "owners": {"type": "team", "owner": "team:2", "date_added": time::rfc3339(i.first_seen)},
        });
        let tail = json!({
            "integrationIssues": [],
            "sentryAppIssues": [],
            "latestEventHasAttachments": false,
            "matchingEventId": null,
            "matchingEventEnvironment": null,
        });
        if let (Some(o), Value::Object(tail)) = (v.as_object_mut(), tail) {
            o.extend(tail);
        }
        if let (Some(o), Some((_, substatus, assignee))) = (v.as_object_mut(), changed) {
            o.insert("substatus".into(), substatus.clone());
            o.insert("assignedTo".into(), assignee.clone());
        }
        v
    }

    pub(crate) fn audit_logs(
        &self,
        st: &State,
        params: &Params,
        path: &str,
        now: i64,
    ) -> SimResponse {
        let per_page = match params.per_page(100) {
            Ok(n) => n,
            Err(r) => return r,
        };
        let mut rows: Vec<&AuditEntry> = st
            .audit
            .iter()
            .filter(|a| a.date_created_ms.div_euclid(1000) <= now)
            .collect();
        rows.sort_by(|a, b| {
            b.date_created_ms
                .cmp(&a.date_created_ms)
                .then(b.id.cmp(&a.id))
        });
        let (page, next) =
            page_by_score(&rows, |a| a.date_created_ms, score_cursor(params), per_page);
        let body: Vec<Value> = page
            .iter()
            .map(|a| {
                json!({
                    "id": a.id.to_string(),
                    "actor": {"id": "7", "name": a.actor, "username": a.actor, "email": a.actor, "isActive": true},
                    "event": a.event,
                    "ipAddress": "198.51.100.23",
                    "note": format!("{} by {}", a.event, a.actor),
                    "targetObject": 42,
                    "targetUser": null,
                    "data": {"email": a.actor, "role": "member"},
                    "dateCreated": ms_rfc3339(a.date_created_ms),
                })
            })
            .collect();
        let options: Vec<&str> = vec!["member.invite", "member.remove", "org.edit"];
        let next_cursor = next.map_or("0:0:0".to_string(), |(v, o)| format!("{v}:{o}:0"));
        let prev_cursor = format!("{}:0:1", page.first().map_or(0, |a| a.date_created_ms));
        self.link_page(
            json!({"rows": body, "options": options}),
            path,
            params,
            (&prev_cursor, params.get("cursor").is_some()),
            (&next_cursor, next.is_some()),
        )
    }

    /// A Discover / Explore query on one of [`DATASETS`].
    pub(crate) fn explore(
        &self,
        st: &State,
        dataset: &'static str,
        params: &Params,
        path: &str,
        now: i64,
        projects: Option<Vec<u64>>,
    ) -> SimResponse {
        let fields = params.all("field");
        if let Some(f) = fields.iter().find(|f| !known_field(dataset, f)) {
            return SimResponse::json(
                400,
                &json!({"detail": format!("Invalid query. Unknown field: {f}")}),
            );
        }
        // Snuba orders by what `sort` names and nothing else: rows that tie on every sort
        // key come back in any order, a different one on every query (so offset paging over
        // ties skips some rows and repeats others).
        let mut sorts: Vec<(String, bool)> = Vec::new();
        for s in params.all("sort") {
            let (field, descending) = match s.strip_prefix('-') {
                Some(f) => (f.to_string(), true),
                None => (s.clone(), false),
            };
            if !fields.contains(&field) {
                return SimResponse::json(
                    400,
                    &json!({"detail": "Cannot sort by a field that is not selected."}),
                );
            }
            sorts.push((field, descending));
        }
        let (start, end) = match params.date_range() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let per_page = match params.per_page(100) {
            Ok(n) => n,
            Err(r) => return r,
        };
        // Spans and logs live in the EAP store, which has sampling modes and extrapolation.
        let eap = dataset != "transactions";
        let partial = st.sampled && !(eap && params.get("sampling") == Some("HIGHEST_ACCURACY"));
        // What the query selects, by a plain filter.
        let selected = |r: &ExploreRow| {
            r.dataset == dataset
                && r.received_at <= now
                && start.is_none_or(|s| r.timestamp >= s)
                && end.is_none_or(|e| r.timestamp < e)
                && projects.as_ref().is_none_or(|p| p.contains(&r.project_id))
        };
        // The same from the index: the rows of the dataset (of all projects, or of the one
        // named) in timestamp order, the date range a slice of them, the rows not yet
        // visible skipped. Several projects named (`discover` never asks that): the filter.
        let index = &st.rows.index().by_dataset;
        let order = |key: (&'static str, Option<u64>)| index.get(&key).unwrap_or(&EMPTY_ORDER);
        let indexed: Option<&Order> = match projects.as_deref() {
            None => Some(order((dataset, None))),
            Some([p]) => Some(order((dataset, Some(*p)))),
            Some([]) => Some(&EMPTY_ORDER),
            Some(_) => None,
        };
        let received = |p: u32| st.rows[p as usize].received_at;
        let timestamp = |p: &u32| st.rows[*p as usize].timestamp;
        let in_range = |order: &Order| {
            let pos = order.positions();
            let lo = start.map_or(0, |s| pos.partition_point(|p| timestamp(p) < s));
            let hi = end.map_or(pos.len(), |e| pos.partition_point(|p| timestamp(p) < e));
            lo..hi.max(lo)
        };
        if fields == ["count()"] {
            let mut count = match indexed {
                Some(order) => order.count_visible(in_range(order), now, received),
                None => st.rows.iter().filter(|r| selected(r)).count(),
            };
            if eap && params.get("disableAggregateExtrapolation") != Some("1") {
                count = (count as f64 * st.sample_weight.max(1.0)).round() as usize;
            }
            // An aggregate without other fields: one row for the whole range.
            let body = json!({
                "data": [{"count()": count}],
                "meta": {"fields": {"count()": "integer"}, "units": {"count()": null}, "isMetricsData": false, "isMetricsExtractedData": false, "tips": {}, "datasetReason": "unchanged", "dataset": dataset, "dataScanned": if partial { "partial" } else { "full" }},
            });
            return self.paged(body, path, params, 0, 1, false);
        }
        if fields == ["project.id", "count()"] {
            // Grouped by project: one row per project with rows in the range, in no promised
            // order (here by project id), paged like any aggregate.
            let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
            for r in st.rows.iter().filter(|r| selected(r)) {
                *counts.entry(r.project_id).or_default() += 1;
            }
            let weight = if eap && params.get("disableAggregateExtrapolation") != Some("1") {
                st.sample_weight.max(1.0)
            } else {
                1.0
            };
            let offset = params.offset();
            let rows: Vec<Value> = counts
                .iter()
                .skip(offset)
                .take(per_page)
                .map(|(p, c)| json!({"project.id": p, "count()": (*c as f64 * weight).round() as u64}))
                .collect();
            let more = counts.len() > offset + per_page;
            let body = json!({
                "data": rows,
                "meta": {"fields": {"project.id": "integer", "count()": "integer"}, "units": {"project.id": null, "count()": null}, "isMetricsData": false, "isMetricsExtractedData": false, "tips": {}, "datasetReason": "unchanged", "dataset": dataset, "dataScanned": if partial { "partial" } else { "full" }},
            });
            return self.paged(body, path, params, offset, per_page, more);
        }
        let slug_of = |r: &ExploreRow| -> String {
            st.projects
                .iter()
                .find(|p| p.id == r.project_id)
                .map_or("unknown".to_string(), |p| p.slug.clone())
        };
        let key = |r: &ExploreRow| -> Vec<SortKey> {
            sorts
                .iter()
                .map(|(field, _)| match field.as_str() {
                    "timestamp" => SortKey::Int(r.timestamp),
                    "id" => SortKey::Text(r.id.clone()),
                    f => match row_field(r, &slug_of(r), f) {
                        Value::Number(n) => SortKey::Float(n.as_f64().unwrap_or(0.0)),
                        Value::String(s) => SortKey::Text(s),
                        other => SortKey::Text(other.to_string()),
                    },
                })
                .collect()
        };
        let compare = |a: &[SortKey], b: &[SortKey]| -> std::cmp::Ordering {
            a.iter()
                .zip(b)
                .zip(&sorts)
                .map(
                    |((x, y), (_, descending))| {
                        if *descending {
                            y.cmp(x)
                        } else {
                            x.cmp(y)
                        }
                    },
                )
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        // Ties in a fresh order on every query.
        let mut rng = Rng::new(self.next_query_seed());
        let offset = params.offset();
        let (reachable, page) = match (indexed, sorts.first()) {
            (Some(order), Some((first, descending))) if first == "timestamp" => {
                // Sorted by time first: rows of different seconds are in the index's order
                // (or its reverse), so only the seconds of the page are sorted and shuffled.
                let range = in_range(order);
                let total = order.count_visible(range.clone(), now, received);
                // Offset paging stops at the cap, saying there is nothing more.
                let reachable = total.min(OFFSET_CAP);
                let page_end = reachable.min(offset.saturating_add(per_page));
                let page = if offset >= page_end {
                    Vec::new()
                } else {
                    // The page's first and last rows, counted oldest first.
                    let (first, last) = if *descending {
                        (total - page_end, total - 1 - offset)
                    } else {
                        (offset, page_end - 1)
                    };
                    let found = "a row the count includes";
                    let lo = order
                        .nth_visible(range.clone(), first, now, received)
                        .expect(found);
                    let hi = order
                        .nth_visible(lo..range.end, last - first, now, received)
                        .expect(found);
                    // Every row of those seconds, whose order the sort leaves open.
                    let pos = order.positions();
                    let (t_lo, t_hi) = (timestamp(&pos[lo]), timestamp(&pos[hi]));
                    let slice = &pos[range.clone()];
                    let w_lo = range.start + slice.partition_point(|p| timestamp(p) < t_lo);
                    let w_hi = range.start + slice.partition_point(|p| timestamp(p) <= t_hi);
                    let window: Vec<&ExploreRow> = pos[w_lo..w_hi]
                        .iter()
                        .map(|&p| &st.rows[p as usize])
                        .filter(|r| r.received_at <= now)
                        .collect();
                    // Where the window starts in the query's order.
                    let before = if *descending {
                        order.count_visible(w_hi..range.end, now, received)
                    } else {
                        order.count_visible(range.start..w_lo, now, received)
                    };
                    sort_shuffled(window, key, compare, &mut rng)
                        .into_iter()
                        .skip(offset - before)
                        .take(page_end - offset)
                        .collect()
                };
                (reachable, page)
            }
            _ => {
                let rows: Vec<&ExploreRow> = st.rows.iter().filter(|r| selected(r)).collect();
                let rows = sort_shuffled(rows, key, compare, &mut rng);
                // Offset paging stops at the cap, saying there is nothing more.
                let reachable = rows.len().min(OFFSET_CAP);
                let page: Vec<&ExploreRow> = rows
                    .into_iter()
                    .take(reachable)
                    .skip(offset)
                    .take(per_page)
                    .collect();
                (reachable, page)
            }
        };
        let page: Vec<Value> = page
            .iter()
            .map(|r| {
                let slug = st
                    .projects
                    .iter()
                    .find(|p| p.id == r.project_id)
                    .map_or("unknown".to_string(), |p| p.slug.clone());
                let mut row = Map::new();
                for f in &fields {
                    row.insert(f.clone(), row_field(r, &slug, f));
                }
                Value::Object(row)
            })
            .collect();
        let more = reachable > offset + per_page;
        let mut types = Map::new();
        for f in &fields {
            let t = match f.as_str() {
                "timestamp" => "date",
                "project.id" | "http.status_code" | "severity_number" => "integer",
                "transaction.duration" | "span.duration" => "duration",
                "is_transaction" => "boolean",
                _ => "string",
            };
            types.insert(f.clone(), json!(t));
        }
        let body = json!({
            "data": page,
            "meta": {"fields": types, "units": {}, "isMetricsData": false, "isMetricsExtractedData": false, "tips": {}, "datasetReason": "unchanged", "dataset": dataset, "dataScanned": if partial { "partial" } else { "full" }},
        });
        self.paged(body, path, params, offset, per_page, more)
    }

    /// A page with a Link header carrying the given cursors, built on `link_base` rather than
    /// the host called.
    pub(crate) fn link_page(
        &self,
        body: Value,
        path: &str,
        params: &Params,
        (prev, prev_results): (&str, bool),
        (next, next_results): (&str, bool),
    ) -> SimResponse {
        let query: String = params
            .pairs
            .iter()
            .filter(|(k, _)| k != "cursor")
            .map(|(k, v)| format!("{k}={v}&"))
            .collect();
        let base = format!("{}{}?{}", self.options.link_base, path, query);
        let link = format!(
            "<{base}cursor={prev}>; rel=\"previous\"; results=\"{prev_results}\"; cursor=\"{prev}\", <{base}cursor={next}>; rel=\"next\"; results=\"{next_results}\"; cursor=\"{next}\""
        );
        let mut resp = SimResponse::json(200, &body);
        resp.headers.push(("link".into(), link));
        resp
    }
}

/// Every fifth group is resolved (the default query hides it).
fn resolved(group_id: u64) -> bool {
    group_id.is_multiple_of(5)
}

fn issues_at(st: &State, now: i64) -> Vec<Issue<'_>> {
    issues_in(st, now, None, None)
}

/// Issues as the events visible at `now` with an event time in `[start, end)` make them.
fn issues_in(st: &State, now: i64, start: Option<i64>, end: Option<i64>) -> Vec<Issue<'_>> {
    let mut by_issue: BTreeMap<u64, Issue> = BTreeMap::new();
    for e in st.events.iter().filter(|e| {
        e.received_at <= now
            && start.is_none_or(|s| e.date_created >= s)
            && end.is_none_or(|x| e.date_created < x)
    }) {
        let id = issue_id(e.project_id, e.group_id);
        let issue = by_issue.entry(id).or_insert(Issue {
            id,
            project_id: e.project_id,
            group_id: e.group_id,
            first_seen: e.date_created,
            last_seen: e.date_created,
            count: 0,
            latest: e,
        });
        issue.count += 1;
        issue.first_seen = issue.first_seen.min(e.date_created);
        if e.date_created >= issue.last_seen {
            issue.last_seen = e.date_created;
            issue.latest = e;
        }
    }
    by_issue.into_values().collect()
}

/// Rows sorted by their keys (a stable sort), each run of rows that tie in a random order.
fn sort_shuffled<'a>(
    rows: Vec<&'a ExploreRow>,
    key: impl Fn(&ExploreRow) -> Vec<SortKey>,
    compare: impl Fn(&[SortKey], &[SortKey]) -> std::cmp::Ordering,
    rng: &mut Rng,
) -> Vec<&'a ExploreRow> {
    let mut keyed: Vec<(Vec<SortKey>, &ExploreRow)> =
        rows.into_iter().map(|r| (key(r), r)).collect();
    keyed.sort_by(|a, b| compare(&a.0, &b.0));
    let mut i = 0;
    while i < keyed.len() {
        let mut j = i + 1;
        while j < keyed.len() && compare(&keyed[i].0, &keyed[j].0).is_eq() {
            j += 1;
        }
        for k in (i + 1..j).rev() {
            let m = i + rng.below((k - i + 1) as u64) as usize;
            keyed.swap(k, m);
        }
        i = j;
    }
    keyed.into_iter().map(|(_, r)| r).collect()
}

fn row_field(r: &ExploreRow, slug: &str, field: &str) -> Value {
    match field {
        "id" => json!(r.id),
        // Discover writes timestamps with an explicit offset.
        "timestamp" => json!(format!(
            "{}+00:00",
            time::rfc3339(r.timestamp).trim_end_matches('Z')
        )),
        "project" => json!(slug),
        "project.id" => json!(r.project_id),
        "environment" => json!("production"),
        "release" => json!("web@1.4.2"),
        "user.id" => json!(format!("{}", r.n % 50)),
        "user.email" => json!(format!("user{}@example.com", r.n % 50)),
        "user.ip" => json!("203.0.113.7"),
        "trace" => json!(format!("{:032x}", r.n.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
        "sdk.name" => json!("sentry.python"),
        "platform" => json!("python"),
        "transaction" => json!(format!("/api/orders/{}", r.n % 7)),
        "transaction.op" => json!("http.server"),
        "transaction.status" => json!(if r.n.is_multiple_of(11) {
            "internal_error"
        } else {
            "ok"
        }),
        "transaction.duration" | "span.duration" => json!((r.n % 900) as f64 + 0.5),
        "http.method" => json!("GET"),
        "http.status_code" => json!(if r.n.is_multiple_of(11) { 500 } else { 200 }),
        "span.op" => json!("db"),
        "span.description" => json!("SELECT * FROM orders WHERE id = %s"),
        "span.status" => json!("ok"),
        "is_transaction" => json!(false),
        "parent_span" => json!(format!("{:016x}", r.n)),
        "message" => json!(format!("order {} processed", r.n)),
        "severity" => json!(if r.n.is_multiple_of(13) {
            "error"
        } else {
            "info"
        }),
        "severity_number" => json!(if r.n.is_multiple_of(13) { 17 } else { 9 }),
        _ => Value::Null,
    }
}
