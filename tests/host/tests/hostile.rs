//! Hostile and broken responses: a Link header pointing elsewhere, a Sentry slower than any
//! timeout, oversized and non-event pages, one huge event.

mod common;

use std::time::{Duration, Instant};

use collector_host::testing::{RecordingServer, Reply};
use collector_host::Outcome;
use common::*;
use sentry_sim::{Event, Rng, SimOptions};

const HOUR: i64 = 3600;

fn event(rng: &mut Rng, project: u64, at: i64, padding: usize) -> Event {
    Event {
        event_id: format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
        project_id: project,
        group_id: 1,
        date_created: at,
        received_at: at,
        title: "big".into(),
        padding,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_header_pointing_at_another_host_never_receives_the_token() {
    let decoy = RecordingServer::start(|_| Reply::json(200, &serde_json::json!([])))
        .await
        .unwrap();
    let mut rig = Rig::start(SimOptions {
        link_base: decoy.url(),
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(61),
        1,
        250,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    // Even were the host to allow it, the component never follows the URL.
    rig.set("sentry_region_hosts", &rig.sim_server.url());
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["pages"], 3, "paged by cursor");
    assert_eq!(rig.delivered().await.len(), 250);
    assert!(
        decoy.requests().is_empty(),
        "the Link URL's host got a request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sentry_slower_than_the_budget_times_out_and_reports_it() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(62),
        1,
        20,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    rig.set("time_budget", "6s");
    rig.sim.force_delay(10, Duration::from_secs(60));
    let started = Instant::now();
    let inv = rig.run().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the run outlived its budget: {took:?}"
    );
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected a reported timeout, got {:?}", inv.outcome);
    };
    assert!(
        message.contains("timed out") || message.contains("no time left"),
        "{message}"
    );
    assert!(rig.objects().await.is_empty());
    rig.sim.force_delay(0, Duration::ZERO);
    rig.set("time_budget", "60s");
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["events"], 20);
}

/// A shared KV store so slow that the run's last writes end after its budget (chaos sequence
/// 40 in CI: state in Redis behind a 300 ms link). The run still gives its lease up: it holds
/// the lease for a grace period past the budget, and a release refused for the budget's sake
/// left the shard locked, so the next run, a moment later, was skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_ends_past_its_budget_on_a_slow_store_still_frees_its_lease() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(64),
        2,
        40,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    rig.set("time_budget", "6s");
    let started = Instant::now();
    let inv = rig
        .run_with(|app| {
            app.store("default")
                .unwrap()
                .set_faults(collector_host::kv::KvFaults {
                    key_prefix: "v1/".into(),
                    delay: Duration::from_secs(1),
                    ..Default::default()
                })
        })
        .await;
    let took = started.elapsed();
    // Measured inside the run: it recorded its end after its budget (and only then gave the
    // lease up).
    let last: serde_json::Value =
        serde_json::from_slice(&rig.kv_snapshot()["v1/last-run"]).expect("the last-run record");
    let ran = last["finished_at"].as_i64().unwrap() - last["started_at"].as_i64().unwrap();
    assert!(
        ran >= 7,
        "the run ended within its budget ({ran} s): the case is not built: {last}"
    );
    assert!(
        took < Duration::from_secs(6 + 30),
        "the run outlived its lease: {took:?}"
    );
    assert!(
        !matches!(inv.outcome, Outcome::Trap(_)),
        "{:?}\n{}",
        inv.outcome,
        inv.stderr
    );
    assert!(
        !inv.stderr.contains("could not release"),
        "the lease was not given up: {}",
        inv.stderr
    );
    // At once, with a fast store: the shard is free.
    rig.set("time_budget", "60s");
    let s = rig.run_ok().await;
    assert_ne!(s["skipped"], true, "the next run was skipped: {s}");
    let mut total = 0;
    for _ in 0..3 {
        total = rig.delivered().await.len();
        if total == 40 {
            break;
        }
        rig.run_ok().await;
    }
    assert_eq!(total, 40);
}

/// A Sentry answer that trickles in, a few bytes every half second (within every per-phase
/// timeout), for far longer than the run: the run still ends at its budget (so it cannot
/// outlive its lease), reports it, writes nothing, and the next run collects everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_response_trickling_past_the_budget_does_not_keep_the_run_alive() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(63),
        1,
        20,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    rig.set("lookback", "6h");
    rig.set("time_budget", "6s");
    // About 14 KB at 256 bytes every 500 ms: half a minute for one page.
    rig.sim.trickle_next(10, Duration::from_millis(500));
    let started = Instant::now();
    let inv = rig.run().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "the run outlived its budget: {took:?}"
    );
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected a reported timeout, got {:?}", inv.outcome);
    };
    assert!(message.contains("deadline"), "{message}");
    assert!(rig.objects().await.is_empty());
    rig.sim.trickle_next(0, Duration::ZERO);
    rig.set("time_budget", "60s");
    let s = rig.run_ok().await;
    assert_eq!(events_summary(&s)["events"], 20);
    assert_exact(
        &rig.delivered().await,
        &rig.sim.truth(0, i64::MAX, rig.clock.now()),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_non_event_pages_are_errors_never_data() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 2);
    let now = rig.clock.now();
    let mut rng = Rng::new(63);
    // Project 1: one page of about 36 MB, over the 32 MiB page cap.
    for i in 0..90 {
        rig.sim
            .add_event(event(&mut rng, 1, now - 2 * HOUR + i, 400_000));
    }
    rig.set("lookback", "6h");
    let inv = rig.run().await;
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(message.contains("larger than"), "{message}");
    assert!(rig.objects().await.is_empty());

    // A 200 whose body is not a list of events.
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    rig.sim
        .generate(&mut rng, 1, 5, now - 2 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    rig.sim.force_status(1, 200, "surprise");
    let inv = rig.run().await;
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(
        message.contains("Discover") || message.contains("not a JSON array"),
        "{message}"
    );
    assert!(rig.objects().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_huge_event_is_still_one_line() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    let mut rng = Rng::new(64);
    rig.sim
        .add_event(event(&mut rng, 1, now - 2 * HOUR, 3_000_000));
    rig.sim
        .add_event(event(&mut rng, 1, now - 2 * HOUR + 1, 10));
    rig.set("lookback", "6h");
    rig.run_ok().await;
    let delivered = rig.delivered().await;
    assert_eq!(delivered.len(), 2);
    let big = delivered
        .iter()
        .find(|(_, v, _)| v["metadata"]["padding"].as_str().map(str::len) == Some(3_000_000));
    assert!(big.is_some(), "the huge event arrived whole, on one line");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_storage_slower_than_the_budget_times_out_and_loses_nothing() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let now = rig.clock.now();
    rig.sim.generate(
        &mut Rng::new(65),
        1,
        30,
        now - 3 * HOUR,
        now - HOUR,
        0.0,
        60,
    );
    let proxy = rig
        .behind_proxy(collector_host::google::Accept::Static(
            "ya29.test-static-token".into(),
        ))
        .await;
    rig.set("lookback", "6h");
    rig.set("time_budget", "5s");
    proxy
        .delay_ms
        .store(8_000, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let inv = rig.run().await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!(
            "expected a reported timeout, got {:?}\n{}\n{}",
            inv.outcome, inv.stdout, inv.stderr
        );
    };
    assert!(message.contains("Cloud Storage"), "{message}");
    proxy.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    rig.set("time_budget", "60s");
    rig.run_ok().await;
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
}
