//! The chaos suite: many seeded sequences of runs with faults injected everywhere the pipeline
//! touches the world. After each sequence the bucket is compared with the simulator's truth:
//! nothing lost, nothing duplicated (not even when a run dies between an upload and its
//! checkpoint: the pending-object record settles that), state readable, no trap but the
//! injected kills.
//!
//! `CHAOS_SEQUENCES` (default 200) sets how many sequences run; `CHAOS_SEED` the first seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use collector_host::google::Accept;
use collector_host::kv::KvFaults;
use collector_host::Outcome;
use common::*;
use sentry_sim::{Rng, SimOptions};

const STEP: i64 = 30 * 60;
const MAX_LATE: i64 = 3600;

#[derive(Debug, Default, Clone)]
struct Tally {
    sequences: u64,
    runs: u64,
    faults: BTreeMap<&'static str, u64>,
    events: u64,
    lost: u64,
    duplicated: u64,
    /// Runs that failed after an object of theirs landed (settled by the next run).
    crash_windows: u64,
    outcomes: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.sequences += other.sequences;
        self.runs += other.runs;
        for (k, v) in &other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.events += other.events;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.crash_windows += other.crash_windows;
    }
}

async fn sequence(seed: u64) -> Tally {
    let mut t = Tally {
        sequences: 1,
        ..Tally::default()
    };
    let mut rng = Rng::new(seed);
    let mut rig = Rig::start(SimOptions {
        // Real limits would make every sequence wait for minutes; 429s are injected instead.
        rate_limits: false,
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 6);
    let proxy = rig
        .behind_proxy(Accept::Static("ya29.test-static-token".into()))
        .await;
    rig.set("lookback", "3h");
    rig.set("overlap", "2h");
    rig.set("lag", "1m");
    let busy = [1u64, 3, 4];
    let now = rig.clock.now();
    for &p in &busy {
        rig.sim
            .generate(&mut rng, p, 40, now - 3 * 3600, now, 0.2, MAX_LATE);
    }
    // The first window starts at now - lookback as of the first run that saved its plan.
    let mut first_start = i64::MAX;
    let steps = 4 + rng.below(3);
    for _ in 0..steps {
        let mut faults = KvFaults {
            key_prefix: "v1/events/".into(),
            ..KvFaults::default()
        };
        let budget = if rng.chance(0.1) {
            *t.faults.entry("time budget of 2 s").or_default() += 1;
            "2s"
        } else {
            "20s"
        };
        rig.set("time_budget", budget);
        if rng.chance(0.2) {
            let status = [500, 502, 503][rng.below(3) as usize];
            rig.sim
                .force_status(1 + rng.below(3) as u32, status, "Server Error");
            *t.faults.entry("Sentry 5xx").or_default() += 1;
        }
        if rng.chance(0.1) {
            rig.sim
                .force_status(1, 400, "Query timeout. Please try again.");
            *t.faults.entry("Sentry query timeout").or_default() += 1;
        }
        if rng.chance(0.1) {
            rig.sim.force_429(1 + rng.below(2) as u32, 1);
            *t.faults.entry("Sentry 429").or_default() += 1;
        }
        if rng.chance(0.1) {
            rig.sim.truncate_next(1);
            *t.faults.entry("Sentry truncated body").or_default() += 1;
        }
        if rng.chance(0.1) {
            rig.sim.drop_next(1 + rng.below(2) as u32);
            *t.faults.entry("Sentry connection dropped").or_default() += 1;
        }
        if rng.chance(0.15) {
            proxy
                .fail_next
                .store(1 + rng.below(3) as u32, Ordering::SeqCst);
            *t.faults.entry("GCS 503").or_default() += 1;
        }
        if rng.chance(0.1) {
            proxy
                .throttle_next
                .store(1 + rng.below(2) as u32, Ordering::SeqCst);
            *t.faults.entry("GCS 429").or_default() += 1;
        }
        if rng.chance(0.15) {
            proxy.lose_reply_next.store(1, Ordering::SeqCst);
            *t.faults.entry("GCS reply lost after upload").or_default() += 1;
        }
        let kill = rng.chance(0.2);
        if kill {
            faults.kill_at_set = Some(rng.below(4) as u32);
            *t.faults.entry("instance killed at a KV write").or_default() += 1;
        }
        if !kill && rng.chance(0.1) {
            faults.fail_set = true;
            faults.fail_set_after = rng.below(3) as u32;
            *t.faults.entry("KV write errors").or_default() += 1;
        }
        if rng.chance(0.05) {
            faults.fail_get = true;
            *t.faults.entry("KV read errors").or_default() += 1;
        }
        let objects_before = rig.objects().await.len();
        let inv = rig
            .run_with(|app| app.store("default").unwrap().set_faults(faults.clone()))
            .await;
        t.runs += 1;
        let objects_after = rig.objects().await.len();
        let outcome = match &inv.outcome {
            Outcome::Ok => "ok",
            Outcome::GuestError(_) => "error reported",
            Outcome::Trap(m) => {
                assert!(
                    m.contains("killed by fault injection"),
                    "seed {seed}: an unexpected trap: {m}"
                );
                "killed"
            }
        };
        *t.outcomes.entry(outcome).or_default() += 1;
        if let Some(start) = inv
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|s| {
                s["streams"][0]["window_start"]
                    .as_str()
                    .and_then(sentry_sim::time::parse_rfc3339)
            })
            .next()
        {
            first_start = first_start.min(start);
        }
        if std::env::var("CHAOS_VERBOSE").is_ok() {
            eprintln!(
                "seed {seed} run {}: {outcome} faults {faults:?}\n{:?}\n{}\n{}",
                t.runs, inv.outcome, inv.stdout, inv.stderr
            );
        }
        // An object landed in a run that then died, could not checkpoint, or never learned
        // that its upload landed (a lost reply, then no time to retry): the crash window.
        if objects_after > objects_before && outcome != "ok" {
            t.crash_windows += 1;
        }
        proxy.fail_next.store(0, Ordering::SeqCst);
        proxy.lose_reply_next.store(0, Ordering::SeqCst);
        proxy.throttle_next.store(0, Ordering::SeqCst);
        rig.sim.force_status(0, 200, "");
        rig.sim.truncate_next(0);
        rig.sim.drop_next(0);
        let from = rig.clock.now();
        for &p in &busy {
            let count = 15 + rng.below(20);
            rig.sim
                .generate(&mut rng, p, count, from, from + STEP, 0.2, MAX_LATE);
        }
        rig.clock.advance(STEP);
    }
    // Settle: no faults, every late event arrived, run until caught up.
    rig.clock.advance(MAX_LATE + 120);
    rig.set("time_budget", "60s");
    let mut watermark = None;
    for _ in 0..4 {
        let s = rig.run_ok().await;
        t.runs += 1;
        let ev = events_summary(&s);
        if let Some(start) = ev["window_start"]
            .as_str()
            .and_then(sentry_sim::time::parse_rfc3339)
        {
            first_start = first_start.min(start);
        }
        if ev["window_finished"] == true || ev["up_to_date"] == true {
            watermark = ev["watermark"]
                .as_str()
                .and_then(sentry_sim::time::parse_rfc3339);
            break;
        }
    }
    let watermark = watermark.unwrap_or_else(|| panic!("seed {seed}: the stream did not catch up"));
    let truth: BTreeSet<String> = rig
        .sim
        .truth(first_start, watermark, rig.clock.now())
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let delivered = rig.delivered().await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _, _) in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    t.events = truth.len() as u64;
    t.lost = truth
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count() as u64;
    t.duplicated = counts
        .values()
        .filter(|n| **n > 1)
        .map(|n| (*n - 1) as u64)
        .sum();
    assert_eq!(t.lost, 0, "seed {seed}: {} events lost: {t:?}", t.lost);
    assert_eq!(
        t.duplicated, 0,
        "seed {seed}: {} duplicates ({} runs failed after an object of theirs landed): {t:?}",
        t.duplicated, t.crash_windows
    );
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_sequences_lose_nothing() {
    let sequences: u64 = std::env::var("CHAOS_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let parallel = 10;
    let mut total = Tally::default();
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (first..first + sequences).collect();
    for batch in seeds.chunks(parallel) {
        let handles: Vec<_> = batch.iter().map(|&s| tokio::spawn(sequence(s))).collect();
        for h in handles {
            total.add(&h.await.expect("a sequence panicked"));
        }
    }
    println!(
        "chaos: {} sequences, {} runs in {:.0?}; events {}, lost {}, duplicated {} (crash windows {}); outcomes {:?}; faults {:?}",
        total.sequences,
        total.runs,
        started.elapsed(),
        total.events,
        total.lost,
        total.duplicated,
        total.crash_windows,
        total.outcomes,
        total.faults
    );
    assert_eq!((total.lost, total.duplicated), (0, 0));
    assert!(
        total.crash_windows > 0,
        "some runs died between an upload and its checkpoint"
    );
    assert!(
        total.faults.len() >= 8,
        "every kind of fault was injected: {:?}",
        total.faults
    );
    assert!(total.outcomes.get("killed").copied().unwrap_or(0) > 0);
}
