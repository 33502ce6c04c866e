//! The runtime-config examples in `deploy/runtime-config/`, loaded the way `spin up
//! --runtime-config-file` loads them: the component's state in a real Redis (Debian's
//! `redis-server`, started here), collection across runs exactly as with the default store,
//! and a Redis that goes away failing the run instead of losing its place.

mod common;

use std::path::PathBuf;
use std::process::Command;

use collector_host::redis::RedisServer;
use collector_host::testing::{build_component, repo_root, temp_dir};
use collector_host::Outcome;
use common::*;
use sentry_sim::{Rng, SimOptions};

/// The two examples as one runtime config, the Redis URL pointed at `url` (the example's is
/// the cluster's Service, which does not resolve here); nothing else changed.
fn example_runtime_config(url: &str) -> PathBuf {
    let redis =
        std::fs::read_to_string(repo_root().join("deploy/runtime-config/redis.toml")).unwrap();
    let example_url = "url = \"redis://redis.sentry-collector.svc.cluster.local:6379\"";
    assert!(redis.contains(example_url));
    let outbound =
        std::fs::read_to_string(repo_root().join("deploy/runtime-config/outbound-http.toml"))
            .unwrap();
    let text = format!(
        "{}\n{outbound}",
        redis.replace(example_url, &format!("url = \"{url}\""))
    );
    let path = temp_dir("runtime-config").join("runtime-config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_lives_in_redis_and_collection_resumes_from_it() {
    let mut redis = RedisServer::start();
    let mut rig = Rig::with_history(SimOptions::default(), 6, 3, 40, 0.0, 91).await;
    rig.runtime_config = Some(example_runtime_config(&redis.url));
    let first_start = rig.clock.now() - 6 * 3600;

    rig.run_ok().await;
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("v1/events")),
        "the checkpoint is in Redis: {keys:?}"
    );
    assert!(
        !rig.state.join("key_value").exists(),
        "nothing is kept on disk when the store is Redis"
    );

    // New events, then a second run resumes from the Redis checkpoint.
    let now = rig.clock.now();
    let mut rng = Rng::new(92);
    rig.sim
        .generate(&mut rng, 2, 25, now - 600, now - 120, 0.0, 0);
    rig.clock.advance(300);
    rig.run_ok().await;
    let truth = rig.sim.truth(first_start, rig.clock.now(), rig.clock.now());
    assert!(truth.len() >= 140, "{}", truth.len());
    let delivered = rig.delivered().await;
    assert_exact(&delivered, &truth);
    let objects_before = rig.objects().await.len();

    // Redis goes away: the run fails, names the store, and writes nothing.
    redis.stop();
    rig.sim.generate(
        &mut rng,
        1,
        10,
        rig.clock.now() - 240,
        rig.clock.now() - 90,
        0.0,
        0,
    );
    rig.clock.advance(300);
    let inv = rig.run().await;
    let message = match &inv.outcome {
        Outcome::Ok => panic!("a run without its state store must fail"),
        Outcome::GuestError(m) | Outcome::Trap(m) => m.clone(),
    };
    assert!(
        message.contains("key-value store") && message.contains("cannot reach Redis"),
        "{message}"
    );
    assert_eq!(rig.objects().await.len(), objects_before);
}

#[test]
fn a_mistaken_runtime_config_stops_the_host_with_its_name() {
    build_component().expect("the component builds");
    let dir = temp_dir("bad-runtime-config");
    let bad = dir.join("runtime-config.toml");
    // The mistake the guide warns about, spelled wrong as well.
    std::fs::write(&bad, "[outbound_http]\npooling = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_collector-host"))
        .arg("--from")
        .arg(repo_root().join("spin.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--runtime-config-file")
        .arg(&bad)
        .args(["--variable", "gcs_bucket=b", "--variable", "sentry_org=o"])
        .args(["--variable", "sentry_auth_token=t"])
        .arg("cron")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("runtime config") && stderr.contains("pooling"),
        "{stderr}"
    );
}
