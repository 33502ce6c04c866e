//! Runs that overlap, as they do in production: cron ticks that do not wait for each other,
//! Pub/Sub redeliveries and an operator's `/run` at once, over a shared KV whose round trips
//! jitter by a second and more, and a run that stalls past its lease while another takes over.
//! Each event must still land exactly once, and no run may fail on the state.

mod common;

use std::time::Duration;

use collector_host::jitter::JitterProxy;
use collector_host::redis::RedisServer;
use collector_host::{App, Invocation, Outcome, Trigger};
use common::*;
use sentry_sim::Rng;

/// What one run did: collected (with its event count), or skipped for another's lease.
fn ran_or_skipped(inv: &Invocation) -> Option<u64> {
    assert!(
        matches!(inv.outcome, Outcome::Ok),
        "no run may fail, on state or otherwise: {:?}\n{}",
        inv.outcome,
        inv.stdout
    );
    let summary = summary(inv);
    if summary["skipped"] == true {
        return None;
    }
    Some(summary["streams"][0]["events"].as_u64().unwrap_or(0))
}

/// Runs started together, again and again (two 1.1 s apart, or four 0-2 s apart), over a
/// real `redis-server` behind a proxy that holds every packet 0-1.5 s: each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn runs_overlapping_on_a_jittery_redis_deliver_each_event_once() {
    let redis = RedisServer::start();
    let proxy = JitterProxy::start(redis.addr(), Duration::from_millis(1500), 71).unwrap();
    let mut rig = Rig::without_rate_limits(3).await;
    rig.runtime_config = Some(redis_runtime_config(&proxy.url()));
    rig.set("lookback", "1h");
    rig.set("time_budget", "90s");
    let first_start = rig.clock.now() - 3600;
    let mut rng = Rng::new(72);
    let mut rounds_with_two_collecting = 0;
    for round in 0..4 {
        let now = rig.clock.now();
        for p in 1..=3 {
            rig.sim
                .generate(&mut rng, p, 40, now - 900, now - 60, 0.2, 600);
        }
        rig.clock.advance(300);
        let mut runs = Vec::new();
        // Even rounds: two runs, the second 1.1 s after the first; odd rounds: four runs
        // started 0-2 s apart.
        let starts: Vec<u64> = if round % 2 == 0 {
            vec![0, 1100]
        } else {
            (0..4).map(|_| rng.below(2000)).collect()
        };
        for start_ms in starts {
            let app = App::load(&rig.options(), Trigger::Cron).expect("the app loads");
            let start_in = Duration::from_millis(start_ms);
            let ts = rig.clock.now() as u64;
            runs.push(tokio::spawn(async move {
                tokio::time::sleep(start_in).await;
                app.run_cron(ts).await.expect("the host runs the component")
            }));
        }
        let mut collected = 0;
        for run in runs {
            let inv = run.await.unwrap();
            if let Some(n) = ran_or_skipped(&inv) {
                collected += 1;
                eprintln!("round {round}: a run collected {n} events");
            }
        }
        assert!(collected >= 1, "round {round}: some run collected");
        if collected > 1 {
            rounds_with_two_collecting += 1;
        }
    }
    // Late events settle, then one last run on its own.
    rig.clock.advance(900);
    let inv = rig.run().await;
    ran_or_skipped(&inv).expect("a lone run collects");
    eprintln!("rounds in which more than one run collected: {rounds_with_two_collecting}");
    let truth = rig.sim.truth(first_start, rig.clock.now(), rig.clock.now());
    assert!(truth.len() >= 450, "{}", truth.len());
    assert_exact(&rig.delivered().await, &truth);
}

/// A run stalls on a Sentry answer after reading part of its window (a paused instance, a
/// trickling response) until its lease has expired; another run takes the shard over and
/// collects everything. When the first wakes it must write nothing: its buffered events are
/// the other run's now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_outlives_its_lease_writes_nothing_once_another_took_over() {
    let mut rig = Rig::without_rate_limits(1).await;
    let now = rig.clock.now();
    rig.sim
        .generate(&mut Rng::new(73), 1, 250, now - 3000, now - 600, 0.0, 0);
    rig.set("lookback", "1h");
    rig.set("time_budget", "20s");
    // The first events page arrives whole; the second a few bytes every 3 s.
    rig.sim
        .stall_after("project-events", 1, Duration::from_secs(3));
    let app = App::load(&rig.options(), Trigger::Cron).expect("the app loads");
    let ts = rig.clock.now() as u64;
    let first = tokio::spawn(async move { app.run_cron(ts).await.unwrap() });
    // Wait until the first run is stuck on its second page.
    for _ in 0..200 {
        if rig.sim.counters().requests.get("project-events").copied() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rig.sim.counters().requests.get("project-events").copied(),
        Some(2),
        "the first run is on its second page"
    );
    // Time passes beyond the first run's lease (budget + grace) while it is stuck.
    rig.clock.advance(120);
    let second = rig.run().await;
    assert_eq!(
        ran_or_skipped(&second),
        Some(250),
        "the second run takes the expired lease over and collects the window"
    );
    let first = first.await.unwrap();
    assert!(
        matches!(first.outcome, Outcome::Ok),
        "the first run stops without failing on state: {:?}\n{}",
        first.outcome,
        first.stdout
    );
    assert!(
        first.stdout.contains("another run"),
        "the first run says why it stopped: {}",
        first.stdout
    );
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
    // And the shard goes on normally afterwards.
    rig.clock.advance(300);
    let next = rig.run().await;
    ran_or_skipped(&next).expect("the next run collects");
}
