//! The events pipeline end to end: the built component in the host, against the Sentry
//! simulator and fake-gcs-server, over many runs with simulated hours between them.

mod common;

use common::*;
use sentry_sim::{Rng, SimOptions};

const HOUR: i64 = 3600;
/// Late events arrive up to this long after their event time; `overlap` must cover it.
const MAX_LATE: i64 = 2 * HOUR;

struct Org {
    busy: Vec<u64>,
    per_hour: u64,
}

/// Adds an hour of events (10% late by up to two hours) to each busy project.
fn add_hour(rig: &Rig, org: &Org, rng: &mut Rng, from: i64) {
    for &p in &org.busy {
        rig.sim
            .generate(rng, p, org.per_hour, from, from + HOUR, 0.10, MAX_LATE);
    }
}

/// 100 projects, 5 busy: a 6-hour history, then six hourly runs with new events between them,
/// then one run after every late event has arrived. The bucket must hold exactly the events
/// of the covered period.
async fn consecutive_runs_deliver_exactly_the_truth(options: SimOptions, seed: u64) -> Rig {
    let mut rig = Rig::start(options).await;
    add_projects(&rig.sim, 100);
    rig.set("lookback", "6h");
    rig.set("overlap", "3h");
    rig.set("lag", "1m");
    let org = Org {
        busy: vec![3, 17, 42, 77, 99],
        per_hour: 40,
    };
    let mut rng = Rng::new(seed);
    let t0 = rig.clock.now();
    for h in (1..=6).rev() {
        add_hour(&rig, &org, &mut rng, t0 - h * HOUR);
    }
    let first = rig.run_ok().await;
    let first_start =
        sentry_sim::time::parse_rfc3339(events_summary(&first)["window_start"].as_str().unwrap())
            .unwrap();
    assert!(
        (0..=2).contains(&(first_start - (t0 - 6 * HOUR))),
        "the first window starts at now - lookback"
    );

    for _ in 0..6 {
        let from = rig.clock.now();
        add_hour(&rig, &org, &mut rng, from);
        rig.clock.advance(HOUR);
        let s = rig.run_ok().await;
        let ev = events_summary(&s);
        assert!(ev["error"].is_null(), "{ev}");
        assert_eq!(ev["window_finished"], true, "{ev}");
    }
    // Let every late event arrive, then one more run collects them.
    rig.clock.advance(MAX_LATE + 60);
    let last = rig.run_ok().await;
    let watermark =
        sentry_sim::time::parse_rfc3339(events_summary(&last)["watermark"].as_str().unwrap())
            .unwrap();

    let truth = rig.sim.truth(first_start, watermark, rig.clock.now());
    assert!(
        truth.len() > 1000,
        "the scenario should move real volume, got {}",
        truth.len()
    );
    assert!(
        truth
            .iter()
            .filter(|e| e.received_at - e.date_created >= 60)
            .count()
            > 50,
        "late events are part of it"
    );
    let delivered = rig.delivered().await;
    assert_exact(&delivered, &truth);
    rig
}

#[tokio::test(flavor = "multi_thread")]
async fn hourly_runs_with_late_events_lose_nothing_and_duplicate_nothing() {
    let rig = consecutive_runs_deliver_exactly_the_truth(SimOptions::default(), 7).await;
    let c = rig.sim.counters();
    // Quiet projects cost nothing: the pre-scan named only the busy ones.
    let asked: Vec<u64> = c.project_event_requests.keys().copied().collect();
    assert_eq!(asked, vec![3, 17, 42, 77, 99]);
    assert_eq!(c.avoidable_429s, 0, "{c:?}");
    assert_eq!(c.unauthorized, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_start_and_end_is_filtered_client_side() {
    let options = SimOptions {
        legacy_no_date_filter: true,
        ..SimOptions::default()
    };
    consecutive_runs_deliver_exactly_the_truth(options, 8).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_without_multi_project_discover_reads_every_project() {
    let options = SimOptions {
        global_views: false,
        // Reading 100 projects a run exceeds 60 requests a minute; pacing has its own test.
        rate_limits: false,
        ..SimOptions::default()
    };
    let rig = consecutive_runs_deliver_exactly_the_truth(options, 9).await;
    let c = rig.sim.counters();
    assert_eq!(c.project_event_requests.len(), 100, "every project is read");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_the_pre_scan_shows_empty_gets_no_request() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 10);
    let now = rig.clock.now();
    let mut rng = Rng::new(3);
    rig.sim
        .generate(&mut rng, 4, 30, now - 3 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["projects_active"], 1, "{ev}");
    assert_eq!(ev["events"], 30);
    let c = rig.sim.counters();
    assert_eq!(
        c.project_event_requests.keys().copied().collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(c.requests.get("discover"), Some(&1));
    assert_eq!(
        c.requests.get("projects"),
        None,
        "no project list is needed with Discover"
    );
    assert_eq!(rig.delivered().await.len(), 30);
}

/// Four of eight projects are deleted while the window's plan (persisted, and resumed by every
/// later run) still names them: their event lists answer 404. The run skips them with a
/// warning once the project list confirms they are gone, collects the others, and later runs
/// go on as usual.
#[tokio::test(flavor = "multi_thread")]
async fn projects_deleted_after_the_plan_named_them_are_skipped_and_the_rest_collected() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 8);
    let now = rig.clock.now();
    let mut rng = Rng::new(48);
    for p in 1..=8 {
        rig.sim
            .generate(&mut rng, p, 40, now - 3 * HOUR, now - HOUR, 0.0, 60);
    }
    rig.set("lookback", "6h");
    // Projects 1 and 2 are read, then 5 to 8 are deleted.
    rig.sim
        .delete_projects_after("project-events", 2, vec![5, 6, 7, 8]);
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["window_finished"], true, "{ev}");
    assert_eq!(ev["events"], 160, "{ev}");
    let warnings = ev["warnings"].to_string();
    for p in 5..=8 {
        assert!(
            warnings.contains(&format!("project {p} no longer exists")),
            "{ev}"
        );
    }
    let c = rig.sim.counters();
    assert_eq!(c.requests.get("projects"), Some(&1), "one project list");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_eq!(truth.len(), 160);
    assert_exact(&rig.delivered().await, &truth);

    // Later runs are not stuck on the deleted projects.
    rig.clock.advance(HOUR);
    let t = rig.clock.now();
    for p in 1..=4 {
        rig.sim
            .generate(&mut rng, p, 10, t - 50 * 60, t - 5 * 60, 0.0, 60);
    }
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["events"], 40, "{s}");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
}

/// A project that answers 404 but is still in the project list is a real refusal: the run
/// fails and says so, and nothing is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_for_a_project_the_org_still_has_is_not_skipped() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    let now = rig.clock.now();
    let mut rng = Rng::new(49);
    for p in 1..=2 {
        rig.sim
            .generate(&mut rng, p, 20, now - 3 * HOUR, now - HOUR, 0.0, 60);
    }
    // Every project-events request answers 404.
    rig.sim.force_status_for(
        "project-events",
        1_000,
        404,
        "The requested resource does not exist",
    );
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(
        message.contains("events of project 1: not found (404)"),
        "{message}"
    );
    assert_eq!(rig.sim.counters().requests.get("projects"), Some(&1));
    assert!(rig.objects().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_ndjson_events_never_overwritten_and_no_state_lands_in_the_bucket() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 3);
    let mut rng = Rng::new(4);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 250, now - 5 * HOUR, now - HOUR, 0.0, 60);
    rig.sim
        .generate(&mut rng, 2, 5, now - 5 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    rig.set("overlap", "2h");
    for _ in 0..3 {
        let s = rig.run_ok().await;
        assert!(events_summary(&s)["error"].is_null());
        rig.objects().await;
        let t = rig.clock.now();
        rig.sim.generate(&mut rng, 1, 20, t - 30 * 60, t, 0.0, 60);
        rig.clock.advance(HOUR);
    }
    rig.run_ok().await;
    let delivered = rig.delivered().await;
    assert_eq!(delivered.len(), 255 + 60);
    for (_, line, name) in &delivered {
        assert!(
            line.get("dateCreated").is_some() && line.get("title").is_some(),
            "{name}: not an event"
        );
        assert!(name.ends_with(".ndjson"), "{name}");
    }
    let objects = rig.objects().await;
    assert!(
        objects.iter().all(|o| o.name.starts_with("sentry/events/")),
        "only event objects in the bucket"
    );
    for o in &objects {
        assert_eq!(
            o.metadata["writer"]
                .as_str()
                .map(|w| w.starts_with("sentry-logs-collector/")),
            Some(true)
        );
        // The content id: a 64-bit hash and the CRC-32C Cloud Storage checked, in hex.
        let id = o.metadata["content"].as_str().unwrap_or_default();
        assert!(
            id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(
            o.name.contains(&format!("-{}.ndjson", &id[..16])),
            "{}",
            o.name
        );
    }
    // No checkpoint or cache is stored as an object.
    assert!(
        rig.state
            .join("key_value/default")
            .read_dir()
            .unwrap()
            .count()
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_objects_hold_the_same_lines() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let mut rng = Rng::new(5);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 120, now - 2 * HOUR, now - HOUR, 0.0, 60);
    rig.set("gcs_gzip", "true");
    rig.run_ok().await;
    let objects = rig.objects().await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].name.ends_with(".ndjson.gz"));
    assert_eq!(objects[0].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(rig.delivered().await.len(), 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_events_are_collected_ten_per_page() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let mut rng = Rng::new(6);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 35, now - 2 * HOUR, now - HOUR, 0.0, 60);
    rig.set("sentry_full_events", "true");
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["pages"], 4);
    let delivered = rig.delivered().await;
    assert_eq!(delivered.len(), 35);
    assert!(
        delivered.iter().all(|(_, v, _)| v.get("entries").is_some()),
        "full events carry entries"
    );
}

/// Events deleted while a window is paged ("delete and discard" in Sentry, or retention
/// cleanup) shift every later row of the newest-first list up: with offset paging the rows
/// at each page boundary were never read. Every event still in Sentry must be delivered,
/// also inside a second holding more events than a page (full events come ten a page).
async fn deletions_between_pages_lose_nothing(full: bool, seed: u64) {
    let mut rig = Rig::without_rate_limits(1).await;
    let now = rig.clock.now();
    let mut rng = Rng::new(seed);
    rig.sim
        .generate(&mut rng, 1, 260, now - 2 * HOUR, now - HOUR, 0.0, 0);
    // A burst: 25 events in one second.
    rig.sim
        .generate(&mut rng, 1, 25, now - 90 * 60, now - 90 * 60 + 1, 0.0, 0);
    if full {
        rig.set("sentry_full_events", "true");
    }
    let per_page = if full { 10 } else { 100 };
    // Newest first, as Sentry lists them: after the k-th page, three of the events the
    // pages so far returned are deleted.
    let mut listed = rig.sim.truth(0, i64::MAX, now);
    listed.sort_by(|a, b| {
        b.date_created
            .cmp(&a.date_created)
            .then_with(|| b.event_id.cmp(&a.event_id))
    });
    let mut deleted = std::collections::BTreeSet::new();
    let mut batches = Vec::new();
    for k in 1..=(listed.len() / per_page) {
        let read: Vec<_> = listed[..k * per_page]
            .iter()
            .filter(|e| !deleted.contains(&e.event_id))
            .map(|e| e.event_id.clone())
            .collect();
        let batch: Vec<String> = (0..3)
            .map(|i| read[(k * 7 + i * 13) % read.len()].clone())
            .filter(|id| deleted.insert(id.clone()))
            .collect();
        batches.push(batch);
    }
    rig.sim
        .delete_events_between_pages("project-events", batches);
    rig.set("lookback", "3h");
    rig.run_ok().await;
    let delivered = rig.delivered().await;
    let mut counts = std::collections::BTreeMap::new();
    for (id, _, _) in &delivered {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "an event was delivered twice"
    );
    let remaining = rig.sim.truth(0, i64::MAX, rig.clock.now());
    // The batches the run's requests got to.
    let deleted: std::collections::BTreeSet<String> = listed
        .iter()
        .filter(|e| !remaining.iter().any(|r| r.event_id == e.event_id))
        .map(|e| e.event_id.clone())
        .collect();
    assert!(deleted.len() >= 6, "{} deleted while paging", deleted.len());
    let lost: Vec<_> = remaining
        .iter()
        .filter(|e| !counts.contains_key(&e.event_id))
        .map(|e| e.event_id.clone())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} events still in Sentry were never delivered ({} deleted while paging)",
        lost.len(),
        remaining.len(),
        deleted.len()
    );
    assert!(
        counts
            .keys()
            .all(|id| deleted.contains(id) || remaining.iter().any(|e| &e.event_id == id)),
        "only events that existed were delivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_deleted_between_pages_shift_no_event_out_of_reach() {
    deletions_between_pages_lose_nothing(false, 41).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_deleted_between_full_pages_of_ten_shift_no_event_out_of_reach() {
    deletions_between_pages_lose_nothing(true, 42).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_projects_cut_is_reported_not_silent() {
    let rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 5);
    let mut rng = Rng::new(7);
    let now = rig.clock.now();
    for p in 1..=5 {
        rig.sim
            .generate(&mut rng, p, 3, now - 2 * HOUR, now - HOUR, 0.0, 60);
    }
    let mut rig = rig;
    rig.set("max_projects", "2");
    let inv = rig.run().await;
    let s = summary(&inv);
    let ev = events_summary(&s);
    assert_eq!(ev["projects_cut"], 3, "{ev}");
    assert!(
        ev["warnings"].to_string().contains("max_projects cut 3"),
        "{ev}"
    );
    assert!(inv.stderr.contains("max_projects cut 3"), "{}", inv.stderr);
    assert_eq!(rig.delivered().await.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_upload_and_checkpoint_repeats_nothing() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    let mut rng = Rng::new(31);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 80, now - 3 * HOUR, now - HOUR, 0.0, 60);
    rig.sim
        .generate(&mut rng, 2, 40, now - 3 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    // The object lands, then the checkpoint cannot be written (the instance "dies" there).
    let inv = rig
        .run_with(|app| {
            app.store("default")
                .unwrap()
                .set_faults(collector_host::kv::KvFaults {
                    fail_get: false,
                    fail_set: true,
                    // The window's plan and the pending mark (with the ids' segments) are
                    // saved; the checkpoint after the upload is not.
                    key_prefix: "v1/events/checkpoint".into(),
                    fail_set_after: 2,
                    kill_at_set: None,
                    ..Default::default()
                })
        })
        .await;
    assert!(
        matches!(inv.outcome, collector_host::Outcome::GuestError(ref m) if m.contains("checkpoint")),
        "{:?}",
        inv.outcome
    );
    assert_eq!(rig.objects().await.len(), 1, "the object landed");
    // The next run finds the object still marked pending, sees it in the bucket with the
    // expected hash, keeps it, and does not read those events again.
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert!(
        ev["warnings"].to_string().contains("interrupted run"),
        "{ev}"
    );
    assert_eq!(ev["objects"], serde_json::json!([]), "{ev}");
    assert_eq!(ev["window_finished"], true);
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
    assert_eq!(rig.objects().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_with_our_name_but_other_content_is_a_conflict_not_a_success() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(32),
        1,
        10,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    rig.run_with(|app| {
        app.store("default")
            .unwrap()
            .set_faults(collector_host::kv::KvFaults {
                fail_get: false,
                fail_set: true,
                key_prefix: "v1/events/checkpoint".into(),
                fail_set_after: 2,
                kill_at_set: None,
                ..Default::default()
            })
    })
    .await;
    let objects = rig.objects().await;
    assert_eq!(objects.len(), 1);
    // Someone else writes different bytes under that name (the emulator allows overwrites).
    let name = &objects[0].name;
    let body = format!(
        "--b0undary\r\ncontent-type: application/json\r\n\r\n{{\"name\":\"{name}\",\"metadata\":{{\"sha256\":\"{}\"}}}}\r\n--b0undary\r\ncontent-type: text/plain\r\n\r\nnot ours\r\n--b0undary--\r\n",
        "0".repeat(64)
    );
    let target = format!("/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart");
    let resp = collector_host::testing::http_request(
        rig.gcs.addr(),
        "POST",
        &target,
        &[("content-type", "multipart/related; boundary=b0undary")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    rig.generations.clear();
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected a conflict, got {:?}", inv.outcome);
    };
    assert!(
        message.contains("already exists with different content"),
        "{message}"
    );
    assert_eq!(
        events_summary(&summary(&inv))["watermark"],
        serde_json::Value::Null,
        "nothing was checkpointed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_stays_within_kv_limits_for_an_org_of_a_thousand_projects() {
    let options = SimOptions {
        rate_limits: false,
        ..SimOptions::default()
    };
    let mut rig = Rig::start(options).await;
    add_projects(&rig.sim, 1000);
    let mut rng = Rng::new(33);
    let now = rig.clock.now();
    for p in 1..=1000 {
        rig.sim
            .generate(&mut rng, p, 35, now - 4 * HOUR, now - 10 * 60, 0.0, 60);
    }
    rig.set("lookback", "6h");
    rig.set("overlap", "6h");
    rig.set("time_budget", "300s");
    let mut most_keys = 0;
    let mut most_chunks = 0;
    for _ in 0..3 {
        let s = rig.run_ok().await;
        assert!(events_summary(&s)["error"].is_null(), "{s}");
        let entries = rig.kv_entries();
        most_keys = most_keys.max(entries.len());
        most_chunks = most_chunks.max(
            entries
                .iter()
                .filter(|(k, _)| k.starts_with("v1/events/ids/"))
                .count(),
        );
        let t = rig.clock.now();
        for p in (1..=1000).step_by(7) {
            rig.sim
                .generate(&mut rng, p, 2, t - 30 * 60, t - 5 * 60, 0.0, 60);
        }
        rig.clock.advance(HOUR);
    }
    rig.run_ok().await;
    let entries = rig.kv_entries();
    assert!(entries.len() <= 1024, "{} keys", entries.len());
    // The delivered ids of six hours of overlap, in segments by quarter-hour slab: within the
    // stream's budget of about 200 keys, whatever the org's size.
    assert!(
        entries.len() <= 210,
        "state stays within the key budget, got {}: {:?}",
        entries.len(),
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for (key, len) in &entries {
        assert!(key.len() <= 255, "{key}");
        assert!(*len <= 1024 * 1024, "{key}: {len} bytes");
    }
    assert!(most_keys <= 210, "at most {most_keys} keys");
    assert!(
        most_chunks >= 2,
        "35,000 ids over four hours need more than one segment"
    );
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
}

async fn small_rig(seed: u64) -> Rig {
    Rig::with_history(SimOptions::default(), 2, 1, 25, 0.0, seed).await
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_query_timeouts_are_retried_never_written() {
    for (status, body) in [(502, "Bad Gateway"), (400, "Query timeout. Please try again. If the problem persists try a smaller date range or fewer projects.")] {
        let mut rig = small_rig(41).await;
        rig.sim.force_status(2, status, body);
        let s = rig.run_ok().await;
        let ev = events_summary(&s);
        assert_eq!(ev["retries"], 2, "{status}: {ev}");
        assert_eq!(ev["events"], 25);
        let delivered = rig.delivered().await;
        assert_eq!(delivered.len(), 25);
        assert!(delivered.iter().all(|(_, v, _)| v.get("detail").is_none()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_failures_stop_the_stream_without_advancing() {
    let mut rig = small_rig(42).await;
    rig.sim.force_status(100, 503, "Service Unavailable");
    rig.set("time_budget", "20s");
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(message.contains("503"), "{message}");
    assert!(
        rig.objects().await.is_empty(),
        "an error body is never data"
    );
    rig.sim.force_status(0, 200, "");
    let s = rig.run_ok().await;
    assert_eq!(
        events_summary(&s)["events"],
        25,
        "the next run collects everything"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_scope_problems_name_what_to_fix() {
    let mut rig = small_rig(43).await;
    rig.set("sentry_auth_token", "sntryu_revoked");
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("{:?}", inv.outcome);
    };
    assert!(
        message.contains("401") && message.contains("sentry_auth_token"),
        "{message}"
    );
    assert!(
        !message.contains("sntryu_revoked"),
        "the token leaked: {message}"
    );

    let rig = small_rig(44).await;
    rig.sim.forbid("project-events");
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("{:?}", inv.outcome);
    };
    assert!(
        message.contains("403") && message.contains("Project Read"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_outside_sentry_region_hosts_never_gets_the_token() {
    let decoy = collector_host::testing::RecordingServer::start(|_| {
        collector_host::testing::Reply::json(200, &serde_json::json!([]))
    })
    .await
    .unwrap();
    let options = SimOptions {
        region_url: Some(decoy.url()),
        ..SimOptions::default()
    };
    let mut rig = Rig::start(options).await;
    add_projects(&rig.sim, 1);
    // Even with the decoy allowed by the host, the component refuses to send the token there.
    rig.set("lookback", "6h");
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("{:?}", inv.outcome);
    };
    assert!(message.contains("sentry_region_hosts"), "{message}");
    assert!(decoy.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_mid_window_checkpoints_nothing_and_the_next_run_delivers_it_all() {
    let mut rig = Rig::without_rate_limits(1).await;
    let now = rig.clock.now();
    // About 10 MiB of events: the buffer reaches the object size in the middle of the window.
    let mut rng = Rng::new(45);
    for i in 0..1_500u64 {
        rig.sim.add_event(sentry_sim::Event {
            event_id: format!("{:016x}{:016x}", rng.next_u64(), i),
            project_id: 1,
            group_id: 7,
            date_created: now - 3 * HOUR + (i as i64) * 5,
            received_at: now - 3 * HOUR + (i as i64) * 5,
            title: "a large event".into(),
            padding: 6_000,
        });
    }
    let proxy = rig
        .behind_proxy(collector_host::google::Accept::Static(
            "ya29.test-static-token".into(),
        ))
        .await;
    rig.set("lookback", "6h");
    // Room for the upload's retries even with every test of the file running at once.
    rig.set("time_budget", "20s");
    proxy
        .fail_uploads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected the upload to fail, got {:?}", inv.outcome);
    };
    assert!(
        message.contains("Cloud Storage") && message.contains("503"),
        "{message}"
    );
    assert!(
        events_summary(&summary(&inv))["pages"].as_u64().unwrap() >= 12,
        "the failure came mid-window"
    );
    proxy
        .fail_uploads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    rig.set("time_budget", "60s");
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["events"], 1_500, "{ev}");
    assert!(ev["objects"].as_array().unwrap().len() >= 2, "{ev}");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
}

/// An org of one project with `n` events, whose first run is killed at its upload's first
/// byte: the pending mark is saved, the object never lands. Returns the proxy in front of
/// Cloud Storage (failing nothing any more) with the budget back at 60 s.
async fn leave_a_pending_object(
    rig: &mut Rig,
    n: u64,
    seed: u64,
) -> collector_host::google::AuthProxy {
    use std::sync::atomic::Ordering::SeqCst;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(seed),
        1,
        n,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    let proxy = rig
        .behind_proxy(collector_host::google::Accept::Static(
            "ya29.test-static-token".into(),
        ))
        .await;
    rig.set("time_budget", "3s");
    proxy.fail_next.store(1_000, SeqCst);
    let inv = rig.run().await;
    assert!(
        matches!(inv.outcome, collector_host::Outcome::GuestError(_)),
        "{:?}",
        inv.outcome
    );
    assert!(rig.objects().await.is_empty());
    proxy.fail_next.store(0, SeqCst);
    rig.set("time_budget", "60s");
    proxy
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_object_that_never_landed_is_rolled_back_and_read_again() {
    let mut rig = Rig::start(SimOptions::default()).await;
    let _proxy = leave_a_pending_object(&mut rig, 50, 46).await;
    // New events arrive meanwhile; the rolled-back window is read again with them.
    let t = rig.clock.now();
    rig.sim
        .generate(&mut Rng::new(47), 1, 7, t - 2 * HOUR, t - HOUR, 0.0, 60);
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["events"], 57, "{s}");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
}

/// Settling a pending object needs to read it; a writer without `objectViewer` gets a 403.
/// That is a permission to fix (the run says which), not a transient error to retry forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_403_while_settling_a_pending_object_is_a_permission_to_fix() {
    let mut rig = Rig::start(SimOptions::default()).await;
    let proxy = leave_a_pending_object(&mut rig, 30, 53).await;
    proxy
        .forbid_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let inv = rig.run().await;
    let collector_host::Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    // Without objectViewer the shard's lease cannot be listed either: the run stops there,
    // before the settling, naming the same role, as a refusal (not a blip to retry).
    assert!(
        message.contains("objectViewer") && message.contains("permission denied (403)"),
        "{message}"
    );
    // Granted: the next run settles and delivers everything once.
    proxy
        .forbid_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["error"], serde_json::Value::Null, "{s}");
    assert_exact(
        &rig.delivered().await,
        &rig.sim.truth(0, i64::MAX, rig.clock.now()),
    );
}

/// One event Sentry serves without its id: the page is read again a bounded number of
/// times, then the item is set apart, as returned, under the stream's quarantine prefix
/// (outside the feed), reported, and the stream goes on. A later window that reads the
/// overlap again does not set it apart twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_item_without_its_id_is_quarantined_and_the_stream_goes_on() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    let mut rng = Rng::new(54);
    rig.sim
        .generate(&mut rng, 1, 150, now - 3 * HOUR, now - HOUR, 0.0, 60);
    rig.sim
        .generate(&mut rng, 1, 10, now - 40 * 60, now - 10 * 60, 0.0, 30);
    rig.set("lookback", "6h");
    rig.set("overlap", "1h");
    let mut all = rig.sim.truth(0, i64::MAX, rig.clock.now());
    all.sort_by_key(|e| e.date_created);
    // One bad item the next window's overlap does not reach, one it re-reads.
    let poisoned = [
        all[0].event_id.clone(),
        all.last().unwrap().event_id.clone(),
    ];
    for p in &poisoned {
        rig.sim.poison(p);
    }
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["quarantined"], 2, "{ev}");
    assert_eq!(ev["events"], 158, "{ev}");
    let warnings = ev["warnings"].as_array().unwrap();
    let set_apart: Vec<_> = warnings
        .iter()
        .filter(|w| w.to_string().contains("events-quarantine/"))
        .collect();
    assert_eq!(set_apart.len(), 1, "one warning a run: {ev}");
    let quarantine: Vec<String> = rig
        .objects()
        .await
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.starts_with(&format!("{PREFIX}events-quarantine/")))
        .collect();
    // The two items are on different pages: an object each.
    assert_eq!(quarantine.len(), 2, "{quarantine:?}");
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for name in &quarantine {
        let body = rig.gcs.download(name).await.unwrap();
        for l in body.trim_ascii_end().split(|b| *b == b'\n') {
            lines.push(serde_json::from_slice(l).unwrap());
        }
    }
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.get("eventID").is_none()));
    assert!(
        lines.iter().all(|l| l["title"].is_string()),
        "each item as Sentry returned it"
    );
    // /status says so too, until a later run of the stream replaces it.
    let secret = "0123456789abcdef0123456789abcdef-status";
    rig.set("push_shared_secret", secret);
    let served = rig.serve().await;
    let auth = format!("Bearer {secret}");
    let status = served
        .request(
            "GET",
            "/status",
            &[
                ("authorization", auth.as_str()),
                ("accept", "application/json"),
            ],
            b"",
        )
        .await;
    assert_eq!(status.status, 200);
    let status = status.json().unwrap();
    assert!(
        status["streams"][0]["last_warnings"]
            .to_string()
            .contains("events-quarantine/"),
        "{status}"
    );
    drop(served);

    // The next window: new events, and one late event in the overlap. Sentry counts the bad
    // item there while it was never delivered, so the overlap is read again: the late event is
    // delivered (a quarantined item must not stand in for it in the count), and the bad item
    // is not set apart twice.
    let watermark = rig.clock.now() - 60;
    rig.clock.advance(HOUR);
    let t = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 20, t - 50 * 60, t - 5 * 60, 0.0, 60);
    rig.sim.generate(
        &mut rng,
        1,
        1,
        watermark - 30 * 60,
        watermark - 29 * 60,
        0.0,
        30,
    );
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["quarantined"], 0, "{s}");
    assert_eq!(events_summary(&s)["events"], 21, "{s}");
    let truth: Vec<_> = rig
        .sim
        .truth(0, i64::MAX, rig.clock.now())
        .into_iter()
        .filter(|e| !poisoned.contains(&e.event_id))
        .collect();
    assert_exact(&rig.delivered().await, &truth);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overlap_is_read_again_only_where_late_events_arrived() {
    let mut rig = Rig::without_rate_limits(4).await;
    rig.set("lookback", "3h");
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    let mut rng = Rng::new(71);
    let now = rig.clock.now();
    for p in 1..=4 {
        rig.sim
            .generate(&mut rng, p, 300, now - 3 * HOUR, now - 120, 0.0, 60);
    }
    rig.run_ok().await;
    let from = rig.clock.now();
    rig.clock.advance(HOUR / 2);
    for p in 1..=4 {
        rig.sim
            .generate(&mut rng, p, 60, from, from + HOUR / 2 - 120, 0.0, 60);
    }
    // One late event in project 2, twenty minutes older than the last watermark.
    rig.sim.add_event(sentry_sim::Event {
        event_id: format!("{:032x}", 0x1a7e),
        project_id: 2,
        group_id: 1001,
        date_created: from - 20 * 60,
        received_at: rig.clock.now() - 60,
        title: "late".into(),
        padding: 0,
    });
    rig.sim.reset_counters();
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    // Projects 1, 3, 4 skip their overlap; project 2 reads again only the second of its
    // overlap where Sentry now counts more than was delivered (found by halving to the
    // minute, then per-second counts), not the ~33 events from that minute on.
    assert_eq!(ev["overlap_skipped"], 4, "{ev}");
    assert_eq!(ev["duplicates_dropped"], 0, "{ev}");
    let c = rig.sim.counters();
    for p in [1, 3, 4] {
        assert_eq!(c.project_event_requests.get(&p), Some(&1), "{c:?}");
    }
    // The late second and the new part.
    assert_eq!(c.project_event_requests.get(&2), Some(&2), "{c:?}");
    // Two pre-scans (new part, overlap), the halving's counts, one page of per-second counts.
    let discover = c.requests.get("discover").copied().unwrap_or(0);
    assert!((4..=13).contains(&discover), "{c:?}");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
    assert!(truth.iter().any(|e| e.title == "late"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_seen_in_one_second_reads_the_whole_overlap_again() {
    // Events deleted in a project's overlap and late ones arriving there can cancel out in a
    // count: here one deletion and one late event in the overlap's first half, so the halving
    // finds that half agreeing; later, a late event (where the halving stops agreeing), a
    // deletion, and another late event. Seeing the deletion in the per-second counts must
    // send the whole overlap to be read again, not only from where the halving stopped
    // agreeing (which loses the first late event).
    let mut rig = Rig::without_rate_limits(2).await;
    rig.set("lookback", "3h");
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    let mut rng = Rng::new(73);
    let now = rig.clock.now();
    for p in 1..=2 {
        rig.sim
            .generate(&mut rng, p, 600, now - 3 * HOUR, now - 120, 0.0, 60);
    }
    rig.run_ok().await;
    let from = rig.clock.now();
    rig.clock.advance(HOUR / 2);
    let delivered = rig.sim.truth(0, i64::MAX, rig.clock.now());
    let pick = |lo: i64, hi: i64| {
        delivered
            .iter()
            .find(|e| {
                e.project_id == 2 && e.date_created >= from - lo && e.date_created < from - hi
            })
            .map(|e| e.event_id.clone())
            .expect("an event of project 2 there")
    };
    // One deleted 55-50 minutes back, one 9-7 minutes back.
    rig.sim
        .delete_events(&[pick(55 * 60, 50 * 60), pick(9 * 60, 7 * 60)]);
    for (n, back) in [48 * 60, 20 * 60, 5 * 60].into_iter().enumerate() {
        rig.sim.add_event(sentry_sim::Event {
            event_id: format!("{:032x}", 0x1a7e0 + n),
            project_id: 2,
            group_id: 1001,
            date_created: from - back,
            received_at: rig.clock.now() - 60,
            title: format!("late {n}"),
            padding: 0,
        });
    }
    rig.run_ok().await;
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_eq!(
        truth.iter().filter(|e| e.title.starts_with("late")).count(),
        3
    );
    // Deleted events stay in the bucket (they were delivered); every event Sentry has is
    // there once.
    let got = rig.delivered().await;
    for e in &truth {
        let n = got.iter().filter(|(id, _, _)| *id == e.event_id).count();
        assert_eq!(n, 1, "{} ({}) delivered {n} times", e.event_id, e.title);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_projects_read_again_only_the_seconds_late_events_arrived_in() {
    let mut rig = Rig::without_rate_limits(4).await;
    rig.set("lookback", "2h");
    rig.set("overlap", "1h");
    rig.set("lag", "1m");
    let mut rng = Rng::new(72);
    let now = rig.clock.now();
    // Three projects with an event about every second: per-second counts of their overlap
    // take many pages, and a second often holds two (rows that tie on `timestamp`). Project 4
    // gets no late event: the per-second counts name only the others.
    for p in [1, 2, 4] {
        rig.sim
            .generate(&mut rng, p, 7000, now - 2 * HOUR, now - 120, 0.0, 60);
    }
    rig.run_ok().await;
    let from = rig.clock.now();
    rig.clock.advance(HOUR / 4);
    for p in [1, 2, 4] {
        rig.sim
            .generate(&mut rng, p, 900, from, from + HOUR / 4 - 120, 0.0, 60);
    }
    // Late events: two in project 1 (ten minutes apart), one in project 2, one in project 3
    // (which had nothing else).
    let late = [(1, 25 * 60), (1, 15 * 60), (2, 20 * 60), (3, 5 * 60)];
    for (n, &(project_id, back)) in late.iter().enumerate() {
        rig.sim.add_event(sentry_sim::Event {
            event_id: format!("{:032x}", 0x1a7e0 + n),
            project_id,
            group_id: 1001,
            date_created: from - back,
            received_at: rig.clock.now() - 60,
            title: "late".into(),
            padding: 0,
        });
    }
    rig.sim.reset_counters();
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    let c = rig.sim.counters();
    let pages: u64 = c.project_event_requests.values().sum();
    // Per project: its late seconds, then its new part's pages (~9 each).
    assert!(pages <= 40, "{c:?}");
    // Only the late seconds are read again (a second holds an event or two of the ~1,900
    // delivered from the last half hour of the overlap), besides the row each page by
    // position reads again to check its place.
    let dup = ev["duplicates_dropped"].as_u64().unwrap();
    assert!(dup <= pages + 8, "{ev}");
    assert_eq!(ev["up_to_date"], true, "{ev}");
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
    assert_eq!(truth.iter().filter(|e| e.title == "late").count(), 4);
}
