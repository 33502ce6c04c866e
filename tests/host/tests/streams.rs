//! The other streams end to end (issues, audit logs, the Explore datasets): the built
//! component in the host, against the Sentry simulator and fake-gcs-server. Each stream is
//! delivered exactly once across runs with new data arriving between them, and a failure in
//! one never stops the others.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use collector_host::Outcome;
use common::*;
use sentry_sim::{Rng, SimOptions, DATASETS};
use serde_json::Value;

const ALL: &str = "events,issues,audit_logs,transactions,spans,logs";
const MIN: i64 = 60;
/// Late items arrive up to this long after their time; `overlap` covers it.
const MAX_LATE: i64 = 20 * MIN;

/// New data in `[from, to)` for every stream: events (and so issues), audit entries, and
/// rows of each dataset, 10% of the events and rows late.
fn add_data(rig: &Rig, rng: &mut Rng, from: i64, to: i64) {
    for p in 1..=3 {
        rig.sim.generate(rng, p, 60, from, to, 0.1, MAX_LATE);
        for d in DATASETS {
            rig.sim
                .generate_rows(rng, d, p, 80, from, to, 0.1, MAX_LATE);
        }
    }
    rig.sim.generate_audit(rng, 40, from, to);
}

/// How many times each key was delivered.
fn counts(keys: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    counts
}

/// Nothing twice, nothing outside `allowed`, everything in `required`.
fn assert_once(
    stream: &str,
    got: &BTreeMap<String, usize>,
    required: &BTreeSet<String>,
    allowed: &BTreeSet<String>,
) {
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "{stream}: delivered twice: {twice:?}");
    let keys: BTreeSet<String> = got.keys().cloned().collect();
    let lost: Vec<_> = required.difference(&keys).take(5).collect();
    assert!(
        lost.is_empty(),
        "{stream}: {} of {} lost, e.g. {lost:?}",
        required.difference(&keys).count(),
        required.len()
    );
    let extra: Vec<_> = keys.difference(allowed).take(5).collect();
    assert!(extra.is_empty(), "{stream}: not in the truth: {extra:?}");
}

fn ids(lines: &[(Value, String)], field: &str) -> Vec<String> {
    lines
        .iter()
        .map(|(v, name)| {
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a line has no {field}: {v}"))
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stream_delivers_its_truth_exactly_once_across_runs() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 3);
    rig.set("streams", ALL);
    rig.set("lookback", "2h");
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    let mut rng = Rng::new(61);
    let t0 = rig.clock.now();
    add_data(&rig, &mut rng, t0 - 90 * MIN, t0 - 2 * MIN);

    // Issues change: every version an issue has when a run starts must be delivered once;
    // a version that appears during a run may be (it is the current one until the next).
    let mut required_issues = BTreeSet::new();
    let mut allowed_issues = BTreeSet::new();
    let version_keys = |rig: &Rig| -> BTreeSet<String> {
        rig.sim
            .issue_versions(rig.clock.now())
            .into_iter()
            .map(|v| format!("{}@{}", v.id, v.last_seen))
            .collect()
    };
    for run in 0..5 {
        if run > 0 {
            let from = rig.clock.now();
            rig.clock.advance(30 * MIN);
            if run < 4 {
                add_data(&rig, &mut rng, from - 2 * MIN, rig.clock.now() - 2 * MIN);
            }
        }
        required_issues.extend(version_keys(&rig));
        let summary = rig.run_ok().await;
        allowed_issues.extend(version_keys(&rig));
        for stream in ALL.split(',') {
            let s = stream_summary(&summary, stream);
            assert!(s["error"].is_null(), "{stream}: {s}");
            assert_eq!(s["window_finished"], true, "{stream}: {s}");
        }
    }
    allowed_issues.extend(required_issues.iter().cloned());
    let now = rig.clock.now();

    let events = rig.delivered().await;
    assert_exact(&events, &rig.sim.truth(0, i64::MAX, now));

    let issues = rig.stream_lines("issues").await;
    let issue_keys: Vec<String> = issues
        .iter()
        .map(|(v, name)| {
            format!(
                "{}@{}",
                v["id"].as_str().unwrap_or_else(|| panic!("{name}: no id")),
                v["lastSeen"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no lastSeen"))
            )
        })
        .collect();
    let got = counts(issue_keys);
    assert_once("issues", &got, &required_issues, &allowed_issues);
    // Versions: the same issue appears again with each newer lastSeen.
    let distinct_issues: BTreeSet<&str> =
        got.keys().map(|k| k.split('@').next().unwrap()).collect();
    assert!(
        got.len() > distinct_issues.len() + 20,
        "issues moved between runs: {} lines for {} issues",
        got.len(),
        distinct_issues.len()
    );
    // `query=` collects resolved issues too (Sentry's default query hides them).
    assert!(issues.iter().any(|(v, _)| v["status"] == "resolved"));
    assert!(issues.iter().all(|(v, _)| v.get("stats").is_none()));

    let audit = rig.stream_lines("audit_logs").await;
    let truth: BTreeSet<String> = rig
        .sim
        .audit_truth(0, i64::MAX)
        .into_iter()
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(truth.len(), 160);
    assert_once("audit_logs", &counts(ids(&audit, "id")), &truth, &truth);
    assert!(audit
        .iter()
        .all(|(v, _)| v["event"].is_string() && v["actor"].is_object()));

    for d in DATASETS {
        let lines = rig.stream_lines(d).await;
        let truth: BTreeSet<String> = rig
            .sim
            .rows_truth(d, 0, i64::MAX, now)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(truth.len(), 4 * 3 * 80, "{d}");
        assert_once(d, &counts(ids(&lines, "id")), &truth, &truth);
        // Flat rows of the documented fields, nothing else.
        let (row, name) = &lines[0];
        assert!(row.as_object().unwrap().len() <= 20, "{name}");
        assert!(
            row["timestamp"].is_string() && row["project.id"].is_number(),
            "{name}"
        );
    }

    // Each stream under its own prefix, named for its stream.
    for o in rig.objects().await {
        let stream = o.name[PREFIX.len()..]
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(STREAMS.contains(&stream.as_str()), "{}", o.name);
        let file = o.name.rsplit('/').next().unwrap();
        assert!(file.starts_with(&format!("acme-{stream}-")), "{}", o.name);
    }
    // Each stream has its own checkpoint and status record.
    let keys: Vec<String> = rig.kv_entries().into_iter().map(|(k, _)| k).collect();
    for stream in ALL.split(',') {
        assert!(
            keys.contains(&format!("v1/{stream}/checkpoint")),
            "{keys:?}"
        );
        assert!(keys.contains(&format!("v1/status/{stream}")), "{keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_org_write_collects_every_other_stream() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 3);
    rig.set("streams", ALL);
    rig.set("lookback", "2h");
    rig.sim.forbid("audit-logs");
    let mut rng = Rng::new(62);
    let now = rig.clock.now();
    add_data(&rig, &mut rng, now - 90 * MIN, now - 2 * MIN);
    for _ in 0..2 {
        let inv = rig.run().await;
        let Outcome::GuestError(message) = &inv.outcome else {
            panic!(
                "the run must report the audit-log failure: {:?}",
                inv.outcome
            );
        };
        assert!(
            message.contains("audit_logs")
                && message.contains("403")
                && message.contains("org:write"),
            "{message}"
        );
        assert!(!message.contains(&rig.sim.options.token));
        let summary = summary(&inv);
        let audit = stream_summary(&summary, "audit_logs");
        assert_eq!(audit["error_is_transient"], false, "{audit}");
        assert_eq!(audit["events"], 0);
        for stream in ["events", "issues", "transactions", "spans", "logs"] {
            let s = stream_summary(&summary, stream);
            assert!(s["error"].is_null(), "{stream}: {s}");
            assert_eq!(s["window_finished"], true, "{stream}: {s}");
        }
        rig.clock.advance(30 * MIN);
    }
    assert!(rig.stream_lines("audit_logs").await.is_empty());
    for stream in ["events", "issues", "transactions", "spans", "logs"] {
        assert!(!rig.stream_lines(stream).await.is_empty(), "{stream}");
    }
    // /status-visible state: the audit log's failure is recorded for the operator.
    let status = rig.kv_snapshot();
    let audit: Value = serde_json::from_slice(&status["v1/status/audit_logs"]).unwrap();
    assert!(
        audit["error"].as_str().unwrap().contains("org:write"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_over_the_offset_cap_is_split_and_fully_delivered() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    rig.set("streams", "spans,logs");
    rig.set("lookback", "2h");
    let mut rng = Rng::new(63);
    let now = rig.clock.now();
    // 25,000 spans in one window: two and a half times what one query can page through.
    rig.sim.generate_rows(
        &mut rng,
        "spans",
        1,
        15_000,
        now - 100 * MIN,
        now - 10 * MIN,
        0.0,
        60,
    );
    rig.sim.generate_rows(
        &mut rng,
        "spans",
        2,
        10_000,
        now - 100 * MIN,
        now - 10 * MIN,
        0.0,
        60,
    );
    // 10,050 log rows in one single second, and some around it: the one case a split by time
    // cannot reach. It must be reported, never passed over silently.
    let crowded = now - 50 * MIN;
    rig.sim
        .generate_rows(&mut rng, "logs", 1, 10_050, crowded, crowded + 1, 0.0, 60);
    rig.sim.generate_rows(
        &mut rng,
        "logs",
        1,
        500,
        now - 100 * MIN,
        now - 10 * MIN,
        0.0,
        60,
    );

    let summary = rig.run_ok().await;
    let spans = stream_summary(&summary, "spans");
    assert_eq!(spans["window_finished"], true, "{spans}");
    assert!(spans["queries_split"].as_u64().unwrap() >= 2, "{spans}");
    assert!(spans["warnings"].as_array().unwrap().is_empty(), "{spans}");
    let later = rig.clock.now();
    let truth: BTreeSet<String> = rig
        .sim
        .rows_truth("spans", 0, i64::MAX, later)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(truth.len(), 25_000);
    let lines = rig.stream_lines("spans").await;
    assert_once("spans", &counts(ids(&lines, "id")), &truth, &truth);

    let logs = stream_summary(&summary, "logs");
    let warnings = logs["warnings"].to_string();
    assert!(
        warnings.contains("share the second") && warnings.contains("not collected"),
        "{logs}"
    );
    let lines = rig.stream_lines("logs").await;
    let got = counts(ids(&lines, "id"));
    let all: BTreeSet<String> = rig
        .sim
        .rows_truth("logs", 0, i64::MAX, later)
        .into_iter()
        .map(|r| r.id)
        .collect();
    let outside: BTreeSet<String> = rig
        .sim
        .rows_truth("logs", 0, i64::MAX, later)
        .into_iter()
        .filter(|r| r.timestamp != crowded)
        .map(|r| r.id)
        .collect();
    // Every row outside the crowded second, and exactly the cap's worth of that second.
    assert_once("logs", &got, &outside, &all);
    assert_eq!(got.len(), outside.len() + 10_000);
}

/// Spans arrive in one-second bursts of hundreds, and Sentry returns rows that tie on the
/// sort key in a new order on every query (the simulator shuffles them): offset paging that
/// sorts by `timestamp` alone skips some rows of a burst and repeats others. Every query
/// needs a total order.
#[tokio::test(flavor = "multi_thread")]
async fn bursts_of_rows_in_one_second_are_all_delivered_whatever_order_ties_come_in() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    rig.set("streams", "spans");
    rig.set("lookback", "2h");
    rig.set("overlap", "10m");
    let mut rng = Rng::new(65);
    let burst = |rig: &Rig, rng: &mut Rng, at: i64| {
        let n = 450 + rng.below(351);
        let project = 1 + rng.below(2);
        rig.sim
            .generate_rows(rng, "spans", project, n, at, at + 1, 0.0, 2);
    };
    let now = rig.clock.now();
    for k in 0..10 {
        burst(&rig, &mut rng, now - 100 * MIN + k * 7 * MIN);
    }
    let first = rig.run_ok().await;
    assert_eq!(stream_summary(&first, "spans")["window_finished"], true);
    // More bursts, some inside the overlap the next run reads again.
    rig.clock.advance(30 * MIN);
    let now = rig.clock.now();
    for k in 0..6 {
        burst(&rig, &mut rng, now - 38 * MIN + k * 5 * MIN);
    }
    let second = rig.run_ok().await;
    assert_eq!(stream_summary(&second, "spans")["window_finished"], true);
    let truth: BTreeSet<String> = rig
        .sim
        .rows_truth("spans", 0, i64::MAX, rig.clock.now())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(truth.len() > 16 * 450, "{}", truth.len());
    let lines = rig.stream_lines("spans").await;
    assert_once("spans", &counts(ids(&lines, "id")), &truth, &truth);
}

#[tokio::test(flavor = "multi_thread")]
async fn explore_without_global_views_reads_each_project_and_sampling_is_reported() {
    let mut rig = Rig::start(SimOptions {
        global_views: false,
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 3);
    rig.set("streams", "transactions");
    rig.set("lookback", "2h");
    rig.sim.set_sampled(true);
    let mut rng = Rng::new(64);
    let now = rig.clock.now();
    for p in 1..=3 {
        rig.sim.generate_rows(
            &mut rng,
            "transactions",
            p,
            150,
            now - 90 * MIN,
            now - 5 * MIN,
            0.0,
            60,
        );
    }
    let summary = rig.run_ok().await;
    let s = stream_summary(&summary, "transactions");
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("one project at a time"), "{s}");
    assert!(warnings.contains("dataScanned = partial"), "{s}");
    assert_eq!(s["projects_active"], 3, "{s}");
    let truth: BTreeSet<String> = rig
        .sim
        .rows_truth("transactions", 0, i64::MAX, rig.clock.now())
        .into_iter()
        .map(|r| r.id)
        .collect();
    let lines = rig.stream_lines("transactions").await;
    assert_once("transactions", &counts(ids(&lines, "id")), &truth, &truth);
}

/// Without global views an Explore dataset is read one named project at a time; a project
/// deleted after the list was made answers 403 when named. It is skipped once the project list
/// confirms it is gone; the others are collected.
#[tokio::test(flavor = "multi_thread")]
async fn explore_skips_a_project_deleted_while_it_is_read_one_project_at_a_time() {
    let mut rig = four_projects_of_spans(
        SimOptions {
            global_views: false,
            ..SimOptions::default()
        },
        66,
    )
    .await;
    // The org-wide query (400), then projects 1 and 2 (two pages each): then 3 is deleted.
    rig.sim.delete_projects_after("discover", 5, vec![3]);
    let summary = rig.run_ok().await;
    let s = stream_summary(&summary, "spans");
    assert_eq!(s["window_finished"], true, "{s}");
    assert!(
        s["warnings"]
            .to_string()
            .contains("project 3 no longer exists"),
        "{s}"
    );
    let truth = spans_truth(&rig);
    assert_eq!(truth.len(), 360);
    let lines = rig.stream_lines("spans").await;
    assert_once("spans", &counts(ids(&lines, "id")), &truth, &truth);
}

/// Sentry scopes an issue's count, userCount, firstSeen and lastSeen to the request's date
/// range; the all-time values are in `lifetime`, which `collapse=stats` would remove. Every
/// issue line carries them. An org without multi-project search is read project by project.
#[tokio::test(flavor = "multi_thread")]
async fn issues_carry_their_all_time_counts_even_without_global_views() {
    for global_views in [true, false] {
        let mut rig = Rig::start(SimOptions {
            global_views,
            ..SimOptions::default()
        })
        .await;
        add_projects(&rig.sim, 2);
        rig.set("streams", "issues");
        rig.set("lookback", "1h");
        let mut rng = Rng::new(67);
        let now = rig.clock.now();
        // Ten hours of history, of which the first window sees the last hour only.
        for p in 1..=2 {
            rig.sim.generate(
                &mut rng,
                p,
                400,
                now - 10 * 60 * MIN,
                now - 2 * MIN,
                0.0,
                60,
            );
        }
        let summary = rig.run_ok().await;
        let s = stream_summary(&summary, "issues");
        assert_eq!(s["window_finished"], true, "{s}");
        let lines = rig.stream_lines("issues").await;
        assert!(lines.len() > 10, "{}", lines.len());
        let truth: BTreeMap<String, (u64, String)> = {
            let now = rig.clock.now();
            let mut all: BTreeMap<String, (u64, i64)> = BTreeMap::new();
            for e in rig.sim.all_events().iter().filter(|e| e.received_at <= now) {
                let id = sentry_sim::issue_id(e.project_id, e.group_id).to_string();
                let entry = all.entry(id).or_insert((0, i64::MAX));
                entry.0 += 1;
                entry.1 = entry.1.min(e.date_created);
            }
            all.into_iter()
                .map(|(id, (n, first))| (id, (n, sentry_sim::time::rfc3339(first))))
                .collect()
        };
        let mut scoped = 0;
        for (v, name) in &lines {
            let id = v["id"].as_str().unwrap();
            let (count, first) = &truth[id];
            assert_eq!(
                v["lifetime"]["count"].as_str(),
                Some(count.to_string().as_str()),
                "{name}: {v}"
            );
            assert_eq!(v["lifetime"]["firstSeen"].as_str(), Some(first.as_str()));
            assert!(v.get("stats").is_none(), "no histogram");
            let in_window: u64 = v["count"].as_str().unwrap().parse().unwrap();
            scoped += usize::from(in_window < *count);
        }
        assert!(scoped > 0, "the top-level counts cover the window only");
        if !global_views {
            assert!(
                s["warnings"].to_string().contains("one project at a time"),
                "{s}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_split_events_and_shard_zero_reads_the_org_wide_streams() {
    let mut rig = Rig::start(SimOptions {
        rate_limits: false,
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 3);
    rig.set("streams", "events,audit_logs,logs");
    rig.set("lookback", "2h");
    rig.set("push_shared_secret", "a-shared-secret-for-this-test-only");
    let mut rng = Rng::new(65);
    let now = rig.clock.now();
    add_data(&rig, &mut rng, now - 90 * MIN, now - 2 * MIN);
    let served = rig.serve().await;
    let headers = [("authorization", "Bearer a-shared-secret-for-this-test-only")];
    for i in [1, 0] {
        let r = served
            .request("POST", &format!("/run?shard={i}/2"), &headers, b"")
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        for stream in ["audit_logs", "logs"] {
            let s = stream_summary(&v, stream);
            assert_eq!(s["shard"], format!("{i}/2"));
            if i == 0 {
                assert!(s["events"].as_u64().unwrap() > 0, "{s}");
            } else {
                assert_eq!(s["events"], 0, "{s}");
                assert!(s["warnings"].to_string().contains("shard 0/2"), "{s}");
            }
        }
    }
    let truth: BTreeSet<String> = rig
        .sim
        .audit_truth(0, i64::MAX)
        .into_iter()
        .map(|a| a.id.to_string())
        .collect();
    let audit = rig.stream_lines("audit_logs").await;
    assert_once("audit_logs", &counts(ids(&audit, "id")), &truth, &truth);
    // Org-wide streams keep the unsharded checkpoint and names; events are per shard.
    let keys: Vec<String> = rig.kv_entries().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.contains(&"v1/audit_logs/checkpoint".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"v1/events.s1of2/checkpoint".to_string()),
        "{keys:?}"
    );
    assert!(audit
        .iter()
        .all(|(_, name)| name.contains("/acme-audit_logs-2")));
    let events = rig.delivered().await;
    assert_exact(&events, &rig.sim.truth(0, i64::MAX, rig.clock.now()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_in_one_stream_does_not_starve_the_others() {
    let mut rig = Rig::start(SimOptions {
        // Every answer takes 300 ms: the events backlog needs far more than the budget.
        latency: std::time::Duration::from_millis(300),
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 2);
    rig.set("streams", "events,audit_logs");
    rig.set("lookback", "6h");
    rig.set("time_budget", "10s");
    let mut rng = Rng::new(66);
    let now = rig.clock.now();
    for p in 1..=2 {
        rig.sim
            .generate(&mut rng, p, 4000, now - 6 * 3600, now - 10 * MIN, 0.0, 60);
    }
    rig.sim
        .generate_audit(&mut rng, 30, now - 5 * 3600, now - 10 * MIN);
    let summary = rig.run_ok().await;
    let events = stream_summary(&summary, "events");
    let audit = stream_summary(&summary, "audit_logs");
    assert_eq!(events["window_finished"], false, "{events}");
    // Sentry answers every request, each in 300 ms: only the deadline can end the run, and it
    // must (a request starts only with a second left; the last object's upload has its reserve).
    let elapsed = summary["elapsed_ms"].as_f64().unwrap();
    assert!(elapsed < 11_000.0, "a 10 s budget took {elapsed} ms");
    assert!(events["events"].as_u64().unwrap() > 0, "{events}");
    assert_eq!(audit["window_finished"], true, "{audit}");
    assert_eq!(audit["events"], 30, "{audit}");
}

/// A project deleted between two pages of one org-wide Explore query: the rows it had before
/// the cursor are gone, so Sentry's offsets of every later row drop by as many. A reader that
/// follows Sentry's cursor skips that many rows of the other projects (the next window's
/// overlap count cannot be trusted to see it: the deleted rows delivered and the rows skipped
/// cancel out). Each page is asked for from the row before the cursor and must start with
/// the last row read; when it does not, the query starts again at that row's time.
#[tokio::test(flavor = "multi_thread")]
async fn explore_loses_nothing_to_a_project_deleted_between_two_pages() {
    let mut rig = four_projects_of_spans(SimOptions::default(), 68).await;
    // Two pages of the query (200 of 480 rows, about 50 of them project 1's), then project 1
    // is deleted.
    rig.sim.delete_projects_after("discover", 2, vec![1]);
    let summary = rig.run_ok().await;
    let s = stream_summary(&summary, "spans");
    assert_eq!(s["window_finished"], true, "{s}");
    let truth = spans_truth(&rig);
    assert_eq!(truth.len(), 360);
    let lines = rig.stream_lines("spans").await;
    let delivered = counts(ids(&lines, "id"));
    let missing: Vec<_> = truth
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "{} rows skipped: {s}", missing.len());
    assert!(delivered.values().all(|&n| n == 1), "{s}");
    assert!(s["queries_split"].as_u64() >= Some(1), "{s}");
}

/// Four projects of 120 spans each between 90 and 5 minutes ago; the rig collects `spans`
/// alone with a 2 h lookback.
async fn four_projects_of_spans(options: SimOptions, seed: u64) -> Rig {
    let mut rig = Rig::start(options).await;
    add_projects(&rig.sim, 4);
    rig.set("streams", "spans");
    rig.set("lookback", "2h");
    let mut rng = Rng::new(seed);
    let now = rig.clock.now();
    for p in 1..=4 {
        rig.sim.generate_rows(
            &mut rng,
            "spans",
            p,
            120,
            now - 90 * MIN,
            now - 5 * MIN,
            0.0,
            60,
        );
    }
    rig
}

/// The ids of every span Sentry holds now.
fn spans_truth(rig: &Rig) -> BTreeSet<String> {
    rig.sim
        .rows_truth("spans", 0, i64::MAX, rig.clock.now())
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_datasets_overlap_is_read_again_only_in_the_parts_late_rows_arrived_in() {
    let mut rig = Rig::without_rate_limits(2).await;
    rig.set("streams", "spans");
    rig.set("lookback", "2h");
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    // As in production: spans sent at a 25% sample rate (`count()` is extrapolated by
    // their weight unless asked not to be), and a store that answers large ranges from a
    // downsampled tier unless asked for the full data.
    rig.sim.set_sample_weight(4.0);
    rig.sim.set_sampled(true);
    let mut rng = Rng::new(73);
    let now = rig.clock.now();
    // About two spans a second in each project.
    for p in 1..=2 {
        rig.sim.generate_rows(
            &mut rng,
            "spans",
            p,
            14_000,
            now - 120 * MIN,
            now - 120,
            0.0,
            60,
        );
    }
    rig.run_ok().await;
    let from = rig.clock.now();
    rig.clock.advance(15 * MIN);
    for p in 1..=2 {
        rig.sim
            .generate_rows(&mut rng, "spans", p, 1_800, from, from + 13 * MIN, 0.0, 60);
    }
    // Three late spans, spread over the overlap.
    for (n, back) in [50 * MIN, 31 * MIN, 7 * MIN].into_iter().enumerate() {
        rig.sim.add_row(sentry_sim::ExploreRow {
            dataset: "spans",
            id: format!("{:016x}", 0x1a7e0 + n),
            project_id: 1 + n as u64 % 2,
            timestamp: from - back,
            received_at: rig.clock.now() - 60,
            n: 7,
        });
    }
    rig.sim.reset_counters();
    let s = rig.run_ok().await;
    let spans = stream_summary(&s, "spans");
    assert_eq!(spans["events"], 3 + 2 * 1_800, "{spans}");
    // The ~14,000 spans of the overlap are not read again: only the parts around the late
    // ones, each fewer rows than a page or a second.
    let dup = spans["duplicates_dropped"].as_u64().unwrap();
    assert!(dup < 3 * 100, "{spans}");
    let c = rig.sim.counters();
    let discover = c.requests.get("discover").copied().unwrap_or(0);
    assert!(discover < 120, "{c:?}");
    let truth: BTreeSet<String> = rig
        .sim
        .rows_truth("spans", 0, i64::MAX, rig.clock.now())
        .into_iter()
        .map(|r| r.id)
        .collect();
    let lines = rig.stream_lines("spans").await;
    assert_once("spans", &counts(ids(&lines, "id")), &truth, &truth);
}

/// A project deleted while late rows of another arrive in the same overlap: Sentry's count of
/// the overlap equals what was delivered (the deleted rows are gone from it, the late ones
/// added), so an org-wide count alone would skip the overlap and lose the late rows. Rows
/// carry their project, and Sentry's per-project count names the deleted one: its rows leave
/// the comparison, and the late rows are read.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_project_does_not_hide_late_rows_of_another() {
    let mut rig = four_projects_of_spans(
        SimOptions {
            rate_limits: false,
            ..SimOptions::default()
        },
        91,
    )
    .await;
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    rig.run_ok().await;
    let now = rig.clock.now();
    // Project 4's spans in the overlap (the last hour before the watermark) go with it ...
    let in_overlap = rig
        .sim
        .rows_truth("spans", now - 60 - 3600, now - 60, now)
        .into_iter()
        .filter(|r| r.project_id == 4)
        .count();
    assert!(in_overlap > 10, "{in_overlap}");
    rig.sim.remove_project(4);
    // ... and exactly as many spans of project 1 arrive late in it.
    for n in 0..in_overlap {
        rig.sim.add_row(sentry_sim::ExploreRow {
            dataset: "spans",
            id: format!("{:016x}", 0x1a7e_0000 + n),
            project_id: 1,
            timestamp: now - 60 - 3000 + n as i64 * 30,
            received_at: now + 60,
            n: 7,
        });
    }
    rig.clock.advance(5 * MIN);
    let s = rig.run_ok().await;
    let spans = stream_summary(&s, "spans");
    assert!(
        spans["events"].as_u64().unwrap() >= in_overlap as u64,
        "{spans}"
    );
    let lines = rig.stream_lines("spans").await;
    let delivered = counts(ids(&lines, "id"));
    let lost: Vec<String> = (0..in_overlap)
        .map(|n| format!("{:016x}", 0x1a7e_0000 + n))
        .filter(|id| !delivered.contains_key(id))
        .collect();
    assert!(lost.is_empty(), "{} late spans lost: {lost:?}", lost.len());
    assert!(
        delivered.values().all(|&n| n == 1),
        "a span delivered twice"
    );
}
