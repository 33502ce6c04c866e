//! Backfill on the simulator, through the built component: a deployment collects live for a
//! while; then the history before its first window is asked for (`POST /backfill` for
//! `events`, the `backfill_start` variable for every stream). Over many runs, with new events
//! and events arriving late on both sides of the seam, the live track stays current, the
//! backfill finishes by itself, and the bucket holds exactly the truth of the whole range:
//! nothing lost, nothing delivered twice, not at the seam either.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sentry_sim::time::parse_rfc3339;
use sentry_sim::{Rng, SimOptions};
use serde_json::Value;

/// Simulated time between runs (a cron every ten minutes).
const INTERVAL: i64 = 600;
const LAG: i64 = 60;
const SECRET: &str = "backfill-test-shared-secret-0123456789abcdef";
const STREAMS: [&str; 3] = ["events", "audit_logs", "spans"];
const HISTORY: i64 = 4 * 86_400;

/// New data for the interval ahead: events and spans of three projects (a fifth of them
/// ingested up to 25 minutes late), audit entries.
fn add_data(rig: &Rig, rng: &mut Rng, from: i64, to: i64) {
    for p in 1..=3 {
        rig.sim.generate(rng, p, 15, from, to, 0.2, 1500);
        rig.sim
            .generate_rows(rng, "spans", p, 15, from, to, 0.2, 1500);
    }
    rig.sim.generate_audit(rng, 2, from, to);
}

fn time(v: &Value) -> i64 {
    v.as_str()
        .and_then(parse_rfc3339)
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

fn backfill_of<'a>(summary: &'a Value, stream: &str) -> Option<&'a Value> {
    summary["backfill"]
        .as_array()?
        .iter()
        .find(|b| b["stream"] == stream)
}

/// One cron run after `INTERVAL` with new data; asserts live collection is current.
async fn step(rig: &mut Rig, rng: &mut Rng) -> Value {
    let from = rig.clock.now();
    add_data(rig, rng, from, from + INTERVAL);
    rig.clock.advance(INTERVAL);
    let s = rig.run_ok().await;
    let now = rig.clock.now();
    for stream in STREAMS {
        let live = stream_summary(&s, stream);
        assert_eq!(live["error"], Value::Null, "{stream}: {live}");
        assert_eq!(live["up_to_date"], true, "{stream} fell behind: {live}");
        let lag = now - time(&live["watermark"]);
        assert!(
            lag <= INTERVAL + LAG,
            "{stream}: live lag {lag} s is over one run interval plus the lag setting"
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_fills_the_history_exactly_once_while_live_stays_current() {
    let mut rig = Rig::start(SimOptions {
        latency: Duration::from_millis(15),
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 4);
    let mut rng = Rng::new(2026);
    let t0 = rig.clock.now();
    for p in 1..=3 {
        rig.sim
            .generate(&mut rng, p, 2500, t0 - HISTORY, t0, 0.05, 1500);
        rig.sim
            .generate_rows(&mut rng, "spans", p, 2500, t0 - HISTORY, t0, 0.05, 1500);
    }
    rig.sim.generate_audit(&mut rng, 150, t0 - HISTORY, t0);
    rig.set("streams", &STREAMS.join(","));
    rig.set("lookback", "1h");
    rig.set("overlap", "30m");
    rig.set("lag", "1m");
    rig.set("max_window", "12h");
    rig.set("time_budget", "8s");
    rig.set("push_shared_secret", SECRET);

    // Live for a while. Each stream's live track begins at its first window's start.
    let first = rig.run_ok().await;
    let mut origin: BTreeMap<&str, i64> = BTreeMap::new();
    for stream in STREAMS {
        origin.insert(
            stream,
            time(&stream_summary(&first, stream)["window_start"]),
        );
    }
    // Events and spans from just before the seam, ingested only after the live track began:
    // the live track never reads before its origin, so they are the backfill's to deliver.
    let seam = origin["events"];
    for p in 1..=3 {
        rig.sim
            .generate(&mut rng, p, 20, seam - 900, seam, 1.0, 1500);
        rig.sim.generate_rows(
            &mut rng,
            "spans",
            p,
            20,
            origin["spans"] - 900,
            origin["spans"],
            1.0,
            1500,
        );
    }
    for _ in 0..3 {
        step(&mut rig, &mut rng).await;
    }

    // An operator asks for two days of events; what cannot be honoured is refused, saying why.
    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let ask = |target: &'static str| {
        let served = &served;
        let auth = auth.clone();
        async move {
            let resp = served
                .request("POST", target, &[("authorization", &auth)], b"")
                .await;
            let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            (resp.status, body)
        }
    };
    let now = rig.clock.now();
    let (status, body) = ask("/backfill?stream=events&start=2d").await;
    assert_eq!(status, 200, "{body}");
    let start = now - 2 * 86_400;
    assert_eq!(time(&body["start"]), start);
    assert_eq!(time(&body["seam"]), seam);
    // The estimate is Sentry's count of the range, with requests and time at its limits.
    let truth_rows = rig.sim.truth_count(start, seam, now);
    assert_eq!(body["estimate"]["rows"], truth_rows, "{body}");
    assert!(body["estimate"]["requests"].as_u64().unwrap() >= truth_rows / 100);
    assert!(body["estimate"]["secs_at_rate_limit"].as_f64().unwrap() > 0.0);
    for (target, status, says) in [
        ("/backfill?stream=events&start=120d", 409, "90 days"),
        ("/backfill?stream=events&start=20m", 409, "already covered"),
        (
            "/backfill?stream=issues&start=2d",
            400,
            "not collected here",
        ),
        ("/backfill?stream=events&start=soon", 400, "a duration back"),
        (
            "/backfill?stream=spans&cancel=true",
            409,
            "no backfill to cancel",
        ),
        ("/backfill?stream=events", 400, "give start"),
        (
            "/backfill?stream=events&start=2d&cancel=true",
            400,
            "not both",
        ),
    ] {
        let (got, body) = ask(target).await;
        assert_eq!(got, status, "{target}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(says),
            "{target}: {body}"
        );
    }
    let unauthenticated = served
        .request("POST", "/backfill?stream=events&start=2d", &[], b"")
        .await;
    assert_eq!(unauthenticated.status, 401);
    drop(served);

    // A few runs on events alone, then the variable asks for four days of every stream
    // (for events: further back than the request it replaces).
    let mut summaries = Vec::new();
    for _ in 0..2 {
        summaries.push(step(&mut rig, &mut rng).await);
    }
    assert!(
        backfill_of(&summaries[0], "events").is_some(),
        "the backfill ran after live collection: {}",
        summaries[0]
    );
    assert!(backfill_of(&summaries[0], "spans").is_none());
    rig.set("backfill_start", "4d");
    let mut done: BTreeMap<&str, i64> = BTreeMap::new();
    let mut runs = 0;
    while done.len() < STREAMS.len() {
        runs += 1;
        assert!(
            runs <= 80,
            "the backfill did not finish in 80 runs: {done:?}"
        );
        let s = step(&mut rig, &mut rng).await;
        for stream in STREAMS {
            if let Some(b) = backfill_of(&s, stream) {
                assert_eq!(b["error"], Value::Null, "{stream}: {b}");
                assert_eq!(b["track"], "backfill");
                for o in b["objects"].as_array().unwrap() {
                    let name = o["name"].as_str().unwrap();
                    assert!(
                        name.starts_with(&format!("{PREFIX}{stream}/"))
                            && name.contains(".backfill-"),
                        "{name}: backfill objects are named so, in the stream's prefix"
                    );
                }
                if b["backfill"]["done"] == true {
                    done.insert(stream, time(&b["backfill"]["read_back_to"]));
                }
            }
        }
        summaries.push(s);
    }
    eprintln!(
        "the backfill finished in {runs} runs after the variable was set; read back to {done:?}"
    );
    assert!(
        runs > 2,
        "the backfill took {runs} runs: too few to show it spreads"
    );
    // Every live run after the request also ran the backfill with what was left.
    let backfill_runs = summaries
        .iter()
        .filter(|s| backfill_of(s, "events").is_some())
        .count();
    assert!(backfill_runs >= 3, "{backfill_runs}");

    // Settle: every late event has arrived; the live track catches up.
    rig.clock.advance(1800);
    let last = rig.run_ok().await;
    let now = rig.clock.now();
    for stream in STREAMS {
        let from = done[stream];
        assert!(
            from <= origin[stream] - 3 * 86_400,
            "{stream}: read back to {from}"
        );
        let end = time(&stream_summary(&last, stream)["watermark"]);
        let truth: Vec<String> = match stream {
            "events" => rig.sim.truth_ids(from, end, now),
            "audit_logs" => rig
                .sim
                .audit_truth(from, end)
                .into_iter()
                .map(|a| a.id.to_string())
                .collect(),
            _ => rig.sim.rows_truth_ids(stream, from, end, now),
        };
        let field = if stream == "events" { "eventID" } else { "id" };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for id in rig.stream_ids(stream, field).await {
            *counts.entry(id).or_default() += 1;
        }
        let lost = truth.iter().filter(|id| !counts.contains_key(*id)).count();
        let duplicated: usize = counts.values().filter(|n| **n > 1).map(|n| n - 1).sum();
        let truth_set: std::collections::BTreeSet<&String> = truth.iter().collect();
        let extra = counts.keys().filter(|id| !truth_set.contains(id)).count();
        assert_eq!(
            (lost, duplicated, extra),
            (0, 0, 0),
            "{stream}: lost, duplicated, outside [{from}, {end}) of {} in truth",
            truth.len()
        );
        assert!(truth.len() > 100, "{stream}: {} rows", truth.len());
        eprintln!(
            "{stream}: {} rows in [{from}, {end}), exactly once",
            truth.len()
        );
    }
    // `/status` shows each backfill, done.
    let served = rig.serve().await;
    let resp = served
        .request(
            "GET",
            "/status",
            &[("authorization", &auth), ("accept", "application/json")],
            b"",
        )
        .await;
    let status: Value = serde_json::from_slice(&resp.body).unwrap();
    for stream in STREAMS {
        let b = status["backfill"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["stream"] == stream)
            .unwrap_or_else(|| panic!("{stream} missing from /status: {status}"));
        assert_eq!(b["done"], true, "{b}");
        assert!(b["rows"].as_u64().unwrap() > 0, "{b}");
    }
}

/// A deployment from before the live track's origin was recorded: its checkpoint has none.
/// The first run of this version takes it from the earliest of its own objects in the bucket
/// (another org's or shard's objects listed before them do not count), so a backfill then
/// reads up to exactly where the old deployment began: nothing twice, nothing missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_older_than_origins_backfills_up_to_its_first_window() {
    let mut rig = Rig::without_rate_limits(3).await;
    let mut rng = Rng::new(77);
    let t0 = rig.clock.now();
    for p in 1..=3 {
        rig.sim
            .generate(&mut rng, p, 600, t0 - 2 * 86_400, t0, 0.0, 60);
    }
    rig.set("lookback", "2h");
    rig.set("overlap", "30m");
    let first = rig.run_ok().await;
    let began = time(&events_summary(&first)["window_start"]);
    // Someone else's object sorts before ours (an hour folder earlier, another org).
    let early = sentry_sim::time::rfc3339(began - 86_400);
    let folder = &early[..13].replace(['-', 'T'], "/");
    rig.gcs
        .upload(
            &format!("{PREFIX}events/{folder}/other-org-events-20200101T000000Z-20200101T010000Z-00000-0123456789abcdef.ndjson"),
            b"{\"eventID\": \"another-org-event\"}\n",
        )
        .await
        .expect("upload");
    for _ in 0..2 {
        let from = rig.clock.now();
        add_data(&rig, &mut rng, from, from + INTERVAL);
        rig.clock.advance(INTERVAL);
        rig.run_ok().await;
    }
    // What an older version left: the same checkpoint without its origin.
    let app = collector_host::App::load(&rig.options(), collector_host::Trigger::Cron).unwrap();
    let store = app.store("default").unwrap();
    let key = "v1/events/checkpoint";
    let mut cp: Value = serde_json::from_slice(&store.get(key).unwrap().unwrap()).unwrap();
    assert!(cp.get("origin").is_some(), "{cp}");
    cp.as_object_mut().unwrap().remove("origin");
    store.set(key, cp.to_string().as_bytes()).unwrap();
    rig.clock.advance(INTERVAL);
    rig.run_ok().await;
    rig.set("backfill_start", "1d");
    let mut done = None;
    for _ in 0..10 {
        rig.clock.advance(INTERVAL);
        let s = rig.run_ok().await;
        if let Some(b) = backfill_of(&s, "events") {
            assert_eq!(time(&b["backfill"]["seam"]), began, "{b}");
            if b["backfill"]["done"] == true {
                done = Some(time(&b["backfill"]["read_back_to"]));
                break;
            }
        }
    }
    let from = done.expect("the backfill finished");
    let last = rig.run_ok().await;
    let end = time(&events_summary(&last)["watermark"]);
    let truth = rig.sim.truth_ids(from, end, rig.clock.now());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in rig.stream_ids("events", "eventID").await {
        *counts.entry(id).or_default() += 1;
    }
    let lost = truth.iter().filter(|id| !counts.contains_key(*id)).count();
    let duplicated: usize = counts.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    assert_eq!((lost, duplicated), (0, 0), "of {} events", truth.len());
    assert!(truth.len() > 300);
}
