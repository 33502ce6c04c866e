//! Each Cloud Storage auth mode through the built component, with a proxy in front of the
//! emulator that checks every bearer token and a token endpoint that verifies signatures.

mod common;

use std::sync::Arc;

use collector_host::google::{token_endpoint, Accept, TestKey};
use collector_host::Outcome;
use common::*;
use sentry_sim::{Rng, SimOptions};

const EMAIL: &str = "writer@test-project.iam.gserviceaccount.com";

async fn rig_with_events(n: u64) -> Rig {
    Rig::with_history(SimOptions::default(), 1, 1, n, 0.0, 21).await
}

fn sim_now(rig: &Rig) -> Arc<dyn Fn() -> f64 + Send + Sync> {
    rig.now_fn()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_minted_access_token_is_sent_as_is() {
    let mut rig = rig_with_events(20).await;
    let proxy = rig
        .behind_proxy(Accept::Static("ya29.operator-token".into()))
        .await;
    rig.set("gcs_access_token", "ya29.operator-token");
    rig.run_ok().await;
    assert_eq!(rig.delivered().await.len(), 20);
    assert_eq!(*proxy.rejected.lock().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_jwt_needs_no_token_endpoint() {
    let mut rig = rig_with_events(20).await;
    let key = Arc::new(TestKey::generate(EMAIL).unwrap());
    let proxy = rig
        .behind_proxy(Accept::SelfSigned(key.clone(), sim_now(&rig)))
        .await;
    rig.unset("gcs_access_token");
    rig.set(
        "gcp_service_account_key",
        &key.key_file("https://oauth2.googleapis.com/token"),
    );
    rig.run_ok().await;
    assert_eq!(rig.delivered().await.len(), 20);
    assert_eq!(*proxy.rejected.lock().unwrap(), 0);
    let tokens = proxy.seen_tokens.lock().unwrap().clone();
    assert!(!tokens.is_empty());
    let (header, claims) = key.verify(&tokens[0]).unwrap();
    assert_eq!(header["kid"], key.key_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_exchange_mints_once_and_reuses_the_cached_token() {
    let mut rig = rig_with_events(20).await;
    let key = Arc::new(TestKey::generate(EMAIL).unwrap());
    let (tokens, issued) = token_endpoint(key.clone(), sim_now(&rig)).await.unwrap();
    let proxy = rig.behind_proxy(Accept::Issued(issued.clone())).await;
    rig.use_token_exchange(&key, &tokens);
    let first = rig.run_ok().await;
    assert_eq!(first["tokens_minted"], 1);
    // Two more runs with new events: the cached token is reused.
    for _ in 0..2 {
        let now = rig.clock.now();
        rig.sim.generate(
            &mut Rng::new(now as u64),
            1,
            5,
            now - 1800,
            now - 120,
            0.0,
            60,
        );
        rig.clock.advance(600);
        let s = rig.run_ok().await;
        assert_eq!(s["tokens_minted"], 0, "{s}");
    }
    assert_eq!(issued.count(), 1, "one token for three runs");
    assert_eq!(rig.delivered().await.len(), 30);
    assert_eq!(*proxy.rejected.lock().unwrap(), 0);
    // The assertion went to the token endpoint only, never to Cloud Storage.
    assert!(proxy
        .seen_tokens
        .lock()
        .unwrap()
        .iter()
        .all(|t| t.starts_with("ya29.test-")));

    // An hour later the cached token is near expiry and a new one is minted.
    rig.clock.advance(3600);
    let s = rig.run_ok().await;
    assert_eq!(s["tokens_minted"], 1, "{s}");
    assert_eq!(issued.count(), 2);
}

/// A cached access token that Cloud Storage refuses (401: revoked before it expired) is
/// dropped from KV too, so the retry mints a new one instead of reloading the refused one.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_cloud_storage_refuses_is_dropped_and_a_new_one_minted() {
    let mut rig = rig_with_events(20).await;
    let key = Arc::new(TestKey::generate(EMAIL).unwrap());
    let (tokens, issued) = token_endpoint(key.clone(), sim_now(&rig)).await.unwrap();
    let proxy = rig.behind_proxy(Accept::Issued(issued.clone())).await;
    rig.use_token_exchange(&key, &tokens);
    let first = rig.run_ok().await;
    assert_eq!(first["tokens_minted"], 1);
    let cached = |rig: &Rig| -> Vec<u8> {
        rig.kv_snapshot()
            .into_iter()
            .find(|(k, _)| k == "v1/gcs-token")
            .map(|(_, v)| v)
            .expect("the exchanged token is cached in KV")
    };
    let before = cached(&rig);
    issued.revoke_all();
    let now = rig.clock.now();
    rig.sim
        .generate(&mut Rng::new(50), 1, 5, now - 1800, now - 120, 0.0, 60);
    rig.clock.advance(600);
    let s = rig.run_ok().await;
    assert_eq!(s["tokens_minted"], 1, "{s}");
    assert_eq!(issued.count(), 2);
    assert_eq!(
        *proxy.rejected.lock().unwrap(),
        1,
        "one refusal, then the new token"
    );
    assert_ne!(
        cached(&rig),
        before,
        "the refused token is no longer cached"
    );
    assert_eq!(rig.delivered().await.len(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_token_endpoint_does_not_know_fails_naming_the_setting() {
    let mut rig = rig_with_events(5).await;
    let known = Arc::new(TestKey::generate(EMAIL).unwrap());
    let other = TestKey::generate(EMAIL).unwrap();
    let (tokens, issued) = token_endpoint(known.clone(), sim_now(&rig)).await.unwrap();
    rig.unset("gcs_access_token");
    rig.set("gcs_auth_mode", "token_exchange");
    rig.set("gcp_token_origin", &tokens.url());
    // Same key id, different key: the signature does not verify.
    rig.set(
        "gcp_service_account_key",
        &other
            .key_file(&format!("{}/token", tokens.url()))
            .replace(&other.key_id, &known.key_id),
    );
    let inv = rig.run().await;
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(message.contains("gcp_service_account_key"), "{message}");
    assert!(message.contains("Invalid JWT Signature"), "{message}");
    assert!(!message.contains("BEGIN PRIVATE KEY"), "{message}");
    assert_eq!(issued.count(), 0);
    assert!(rig.objects().await.is_empty());
    // The credential is checked before anything is read from Sentry.
    assert_eq!(rig.sim.counters().requests.get("project-events"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_private_key_is_an_error_naming_the_setting_not_a_panic() {
    let mut rig = rig_with_events(5).await;
    let key = TestKey::generate(EMAIL).unwrap();
    let broken = key
        .key_file("https://oauth2.googleapis.com/token")
        .replace("MII", "XXX");
    rig.unset("gcs_access_token");
    rig.set("gcp_service_account_key", &broken);
    let inv = rig.run().await;
    let Outcome::GuestError(message) = &inv.outcome else {
        panic!("expected an error, not {:?}", inv.outcome);
    };
    assert!(message.contains("gcp_service_account_key"), "{message}");
    assert!(message.contains("PKCS#8"), "{message}");
    assert_eq!(
        rig.sim.counters().requests.get("project-events"),
        None,
        "nothing read without a usable credential"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_failing_for_a_moment_is_retried() {
    let mut rig = rig_with_events(10).await;
    let key = Arc::new(TestKey::generate(EMAIL).unwrap());
    let (tokens, issued) = token_endpoint(key.clone(), sim_now(&rig)).await.unwrap();
    let _proxy = rig.behind_proxy(Accept::Issued(issued.clone())).await;
    rig.use_token_exchange(&key, &tokens);
    issued.fail_next(2);
    let s = rig.run_ok().await;
    assert_eq!(s["tokens_minted"], 1);
    assert_eq!(tokens.requests().len(), 3, "two 500s, then a token");
    assert_eq!(rig.delivered().await.len(), 10);
}
