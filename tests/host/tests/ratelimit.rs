//! Pacing against sentry.io's real limits (60 requests per 60 s for project events).

mod common;

use common::*;
use sentry_sim::{Rng, SimOptions};

const HOUR: i64 = 3600;

/// Moves the simulated clock so that the current rate-limit minute has `left` seconds to go.
fn align_to_minute(rig: &Rig, left: i64) {
    let now = rig.clock.now();
    let into = now.rem_euclid(60);
    rig.clock.advance((60 - left - into).rem_euclid(60));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_needing_more_than_sixty_pages_waits_for_the_reset_instead_of_a_429() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let mut rng = Rng::new(11);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 6_500, now - 5 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    rig.set("time_budget", "120s");
    // The first 60 pages fit in the current minute; the rest must wait for the next one.
    align_to_minute(&rig, 12);
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["events"], 6_500, "{ev}");
    // Each page after the first reads the previous page's last row again (the check that no
    // row above moved): 100 + 65 x 99 >= 6,500.
    assert_eq!(ev["pages"], 66);
    assert_eq!(ev["window_finished"], true);
    assert_eq!(ev["rate_limited"], 0, "{ev}");
    assert!(
        ev["waited_secs"].as_f64().unwrap() >= 1.0,
        "the pacer waited for the reset: {ev}"
    );
    let c = rig.sim.counters();
    assert_eq!(c.avoidable_429s, 0, "{c:?}");
    assert_eq!(c.requests["project-events"], 66);
    assert_eq!(rig.delivered().await.len(), 6_500);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_429_is_waited_out_until_reset_and_the_run_succeeds() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let mut rng = Rng::new(12);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 150, now - 3 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    rig.sim.force_429(1, 3);
    let started = std::time::Instant::now();
    let s = rig.run_ok().await;
    let ev = events_summary(&s);
    assert_eq!(ev["rate_limited"], 1, "{ev}");
    assert!(ev["waited_secs"].as_f64().unwrap() >= 3.0, "{ev}");
    assert!(started.elapsed().as_secs_f64() >= 3.0);
    assert_eq!(ev["events"], 150);
    let c = rig.sim.counters();
    assert_eq!((c.forced_429s, c.avoidable_429s), (1, 0), "{c:?}");
    assert_eq!(rig.delivered().await.len(), 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_budget_stops_cleanly_and_the_next_run_resumes_exactly_there() {
    let mut rig = Rig::start(SimOptions::default()).await;
    add_projects(&rig.sim, 1);
    let mut rng = Rng::new(13);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 6_200, now - 5 * HOUR, now - HOUR, 0.0, 60);
    rig.set("lookback", "6h");
    rig.set("time_budget", "5s");
    // 60 pages go at once, then the bucket is empty for longer than the budget allows.
    align_to_minute(&rig, 50);
    let s = rig.run_ok().await;
    let first = events_summary(&s).clone();
    assert_eq!(first["window_finished"], false, "{first}");
    // 60 pages, each after the first with one row read again: 100 + 59 x 99.
    assert_eq!(first["events"], 5_941, "{first}");
    assert_eq!(first["rate_limited"], 0);
    // Next minute: the rest.
    rig.clock.advance(60);
    let s = rig.run_ok().await;
    let second = events_summary(&s);
    assert_eq!(second["window_finished"], true, "{second}");
    assert_eq!(second["events"], 259, "{second}");
    assert_eq!(
        second["window_start"], first["window_start"],
        "the same window resumed"
    );
    assert_eq!(rig.delivered().await.len(), 6_200);
    assert_eq!(rig.sim.counters().avoidable_429s, 0);
}
