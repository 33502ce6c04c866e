//! Shard layouts: a run of another layout is refused (it would read the lookback again next
//! to the deployment's), and `/migrate` moves `events` between layouts carrying every
//! shard's position and delivered ids, so nothing is lost or repeated across the change,
//! late events included.

mod common;

use common::*;
use sentry_sim::{Rng, SimOptions};
use serde_json::Value;

const SECRET: &str = "0123456789abcdef0123456789abcdef-layout";
const HOUR: i64 = 3600;

/// Half an hour of events in every other project, a fifth of them up to 40 minutes late.
fn add_half_hour(rig: &Rig, rng: &mut Rng) {
    let now = rig.clock.now();
    for p in (1..=30).step_by(2) {
        rig.sim.generate(rng, p, 6, now - 1800, now - 60, 0.2, 2400);
    }
}

async fn post(served: &Served, target: &str) -> (u16, Value) {
    let auth = format!("Bearer {SECRET}");
    let r = served
        .request("POST", target, &[("authorization", auth.as_str())], b"")
        .await;
    let body = r.json().unwrap_or(Value::Null);
    (r.status, body)
}

/// One round of the given layout: every shard's run at once.
async fn round(served: &Served, shards: u32) {
    let targets: Vec<String> = (0..shards)
        .map(|i| {
            if shards == 1 {
                "/run".to_string()
            } else {
                format!("/run?shard={i}/{shards}")
            }
        })
        .collect();
    let answers = futures::future::join_all(targets.iter().map(|t| post(served, t))).await;
    for ((status, body), target) in answers.iter().zip(&targets) {
        assert_eq!(*status, 200, "{target}: {body}");
        assert!(body["skipped"].is_null(), "{target}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shard_layout_changes_only_by_a_migration_that_loses_and_repeats_nothing() {
    let mut rig = Rig::without_rate_limits(30).await;
    rig.set("lookback", "2h");
    rig.set("overlap", "1h");
    rig.set("push_shared_secret", SECRET);
    let first_start = rig.clock.now() - 2 * HOUR;
    let mut rng = Rng::new(97);
    let served = rig.serve().await;

    // Unsharded for a while.
    for _ in 0..2 {
        add_half_hour(&rig, &mut rng);
        rig.clock.advance(1800);
        round(&served, 1).await;
    }
    // A sharded run next to it is refused, and writes nothing.
    let objects = rig.objects().await.len();
    add_half_hour(&rig, &mut rng);
    rig.clock.advance(1800);
    let (status, body) = post(&served, "/run?shard=0/4").await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("as 1 shard(s)") && message.contains("/migrate?shards=4"),
        "{message}"
    );
    assert_eq!(rig.objects().await.len(), objects);

    // Migrate to four shards and go on, late events still arriving for the old windows.
    let (status, body) = post(&served, "/migrate?shards=4").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["from"], serde_json::json!([1]));
    let carried: u64 = body["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ids"].as_u64().unwrap())
        .sum();
    assert!(carried > 0, "delivered ids are carried: {body}");
    for _ in 0..3 {
        round(&served, 4).await;
        add_half_hour(&rig, &mut rng);
        rig.clock.advance(1800);
    }
    let (status, body) = post(&served, "/run").await;
    assert_eq!(status, 409, "now the unsharded run is refused: {body}");

    // And back to one, mid-stream.
    let (status, body) = post(&served, "/migrate?shards=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["from"], serde_json::json!([4]));
    for _ in 0..2 {
        round(&served, 1).await;
        add_half_hour(&rig, &mut rng);
        rig.clock.advance(1800);
    }
    // Late events settle.
    rig.clock.advance(HOUR);
    round(&served, 1).await;
    let truth = rig
        .sim
        .truth(first_start, rig.clock.now() - 120, rig.clock.now());
    assert!(truth.len() > 400, "{}", truth.len());
    assert_exact(&rig.delivered().await, &truth);
    // No state of the old layouts is left behind.
    let keys: Vec<String> = rig.kv_snapshot().into_keys().collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("v1/events.s")),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_waits_for_running_shards_and_asks_for_a_number() {
    let mut rig = Rig::with_history(SimOptions::default(), 4, 4, 150, 0.0, 98).await;
    rig.set("push_shared_secret", SECRET);
    rig.set("time_budget", "20s");
    let served = rig.serve().await;
    for bad in [
        "/migrate",
        "/migrate?shards=0",
        "/migrate?shards=65",
        "/migrate?shards=x",
        "/migrate?shards=2&shard=1/2",
    ] {
        let (status, body) = post(&served, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A run stuck on a slow Sentry answer holds its lease: the migration must not go ahead.
    rig.sim
        .stall_after("project-events", 1, std::time::Duration::from_millis(300));
    let running = {
        let served = &served;
        async move { post(served, "/run").await }
    };
    let migrate_meanwhile = async {
        for _ in 0..200 {
            if rig.sim.counters().requests.get("project-events").copied() >= Some(2) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        post(&served, "/migrate?shards=2").await
    };
    let ((run_status, run_body), (status, body)) = tokio::join!(running, migrate_meanwhile);
    // (The stuck run itself ends at its budget: done, or a timeout to retry.)
    assert!(
        run_status == 200 || run_body["retryable"] == true,
        "{run_status} {run_body}"
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("holds its lease"),
        "{body}"
    );
    let before = rig.kv_snapshot();
    assert_eq!(
        before.get("v1/layout").map(|v| v.as_slice()),
        Some(&b"{\"shards\":1}"[..])
    );

    // A migration to the layout in place changes nothing.
    let (status, body) = post(&served, "/migrate?shards=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["note"].as_str().unwrap().contains("already"), "{body}");
    let changed: Vec<_> = rig
        .kv_snapshot()
        .into_iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(changed, Vec::<String>::new());
}
