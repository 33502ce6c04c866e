//! The HTTP trigger through `collector-host serve`: authentication (OIDC against a loopback
//! JWKS, shared secret), Pub/Sub envelopes and status codes, leases, shards, health and status.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use collector_host::google::{hmac_sha256, TestKey};
use collector_host::testing::{RecordedRequest, RecordingServer, Reply};
use common::*;
use sentry_sim::{Rng, SimOptions};
use serde_json::{json, Value};

const HOUR: i64 = 3600;
const AUDIENCE: &str = "https://collector.example.com/pubsub";
const PUSHER: &str = "pubsub-push@test-project.iam.gserviceaccount.com";
const SECRET: &str = "0123456789abcdef0123456789abcdef-shared";

/// A JWKS endpoint serving the keys in `keys`, counting fetches.
struct Jwks {
    server: RecordingServer,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(keys: Vec<Value>) -> Jwks {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (k, f) = (keys.clone(), fetches.clone());
    let server = RecordingServer::start(move |req: &RecordedRequest| {
        if req.target != "/oauth2/v3/certs" {
            return Reply::json(404, &json!({}));
        }
        f.fetch_add(1, Ordering::SeqCst);
        let mut reply = Reply::json(200, &json!({ "keys": *k.lock().unwrap() }));
        reply.headers.push((
            "cache-control".into(),
            "public, max-age=3600, must-revalidate, no-transform".into(),
        ));
        reply
    })
    .await
    .unwrap();
    Jwks {
        server,
        keys,
        fetches,
    }
}

async fn rig_with_events() -> Rig {
    Rig::with_history(SimOptions::default(), 4, 4, 15, 0.0, 51).await
}

fn google_claims(rig: &Rig) -> Value {
    let now = rig.clock.now();
    json!({
        "iss": "https://accounts.google.com", "aud": AUDIENCE, "azp": "1234567890",
        "email": PUSHER, "email_verified": true, "sub": "1234567890",
        "iat": now - 10, "exp": now + 3590,
    })
}

fn envelope(attributes: Value) -> Vec<u8> {
    json!({
        "message": {"data": STANDARD.encode("{}"), "attributes": attributes, "messageId": "1234", "publishTime": "2026-11-26T10:00:00.000Z"},
        "subscription": "projects/test-project/subscriptions/sentry-collector",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn google_oidc_tokens_are_verified_and_everything_else_is_refused() {
    let mut rig = rig_with_events().await;
    let key = TestKey::generate(PUSHER).unwrap();
    let other = TestKey::generate(PUSHER).unwrap();
    let certs = jwks(vec![key.jwk()]).await;
    rig.set("push_oidc_audience", AUDIENCE);
    rig.set(
        "push_oidc_emails",
        &format!("someone@example.com, {PUSHER}"),
    );
    rig.set(
        "push_jwks_url",
        &format!("{}/oauth2/v3/certs", certs.server.url()),
    );
    rig.set("push_jwks_origin", &certs.server.url());
    let served = rig.serve().await;
    let header = json!({"alg": "RS256", "kid": key.key_id, "typ": "JWT"});
    let post = |token: Option<String>| {
        let served = &served;
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            served
                .request("POST", "/pubsub", &headers, &envelope(json!({})))
                .await
        }
    };

    // A valid token collects.
    let resp = post(Some(key.sign_jwt(&header, &google_claims(&rig)))).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json().unwrap()["streams"][0]["events"], 60);
    assert_eq!(certs.fetches.load(Ordering::SeqCst), 1);
    let requests_after_valid = rig.sim.counters().requests.clone();
    let objects_after_valid = rig.objects().await.len();

    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = google_claims(&rig);
        edit(&mut c);
        c
    };
    let signing_input = |h: &Value, c: &Value| {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        )
    };
    let hs256_header = json!({"alg": "HS256", "kid": key.key_id, "typ": "JWT"});
    let hs256_input = signing_input(&hs256_header, &google_claims(&rig));
    let hs256 = format!(
        "{hs256_input}.{}",
        URL_SAFE_NO_PAD.encode(hmac_sha256(
            key.public_pem().as_bytes(),
            hs256_input.as_bytes()
        ))
    );
    let none = format!(
        "{}.",
        signing_input(
            &json!({"alg": "none", "kid": key.key_id}),
            &google_claims(&rig)
        )
    );
    let forged = other.sign_jwt(&header, &google_claims(&rig));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("bad signature", Some(forged)),
        ("alg none", Some(none)),
        ("HS256 with the public key as secret", Some(hs256)),
        (
            "wrong aud",
            Some(key.sign_jwt(
                &header,
                &claims(&|c| c["aud"] = "https://other.example.com/pubsub".into()),
            )),
        ),
        (
            "wrong iss",
            Some(key.sign_jwt(
                &header,
                &claims(&|c| c["iss"] = "https://evil.example.com".into()),
            )),
        ),
        (
            "expired",
            Some(key.sign_jwt(
                &header,
                &claims(&|c| {
                    let now = c["iat"].as_i64().unwrap();
                    c["iat"] = (now - 7200).into();
                    c["exp"] = (now - 3600).into();
                }),
            )),
        ),
        (
            "email not allowed",
            Some(key.sign_jwt(
                &header,
                &claims(&|c| c["email"] = "intruder@test-project.iam.gserviceaccount.com".into()),
            )),
        ),
        (
            "email not verified",
            Some(key.sign_jwt(&header, &claims(&|c| c["email_verified"] = false.into()))),
        ),
        ("garbage", Some("not-a-token".into())),
        ("missing header", None),
    ];
    for (name, token) in cases {
        let resp = post(token).await;
        assert_eq!(
            resp.status,
            401,
            "{name}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{name}");
    }
    // Many requests, one JWKS fetch.
    assert_eq!(
        certs.fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );

    // An unknown kid refetches the JWKS once (not more than every few seconds).
    rig.clock.advance(10);
    let unknown = other.sign_jwt(
        &json!({"alg": "RS256", "kid": other.key_id}),
        &google_claims(&rig),
    );
    assert_eq!(post(Some(unknown.clone())).await.status, 401, "unknown kid");
    assert_eq!(certs.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(post(Some(unknown)).await.status, 401);
    assert_eq!(
        certs.fetches.load(Ordering::SeqCst),
        2,
        "no second refetch right away"
    );

    // None of the refused requests collected anything.
    assert_eq!(rig.sim.counters().requests, requests_after_valid);
    assert_eq!(rig.objects().await.len(), objects_after_valid);

    // Google rotates its keys: the new key is found after a refetch.
    certs.keys.lock().unwrap().push(other.jwk());
    rig.clock.advance(10);
    let resp = post(Some(other.sign_jwt(
        &json!({"alg": "RS256", "kid": other.key_id}),
        &google_claims(&rig),
    )))
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_secret_works_in_the_header_or_the_configured_query_parameter() {
    let mut rig = rig_with_events().await;
    rig.set("push_shared_secret", SECRET);
    rig.set("push_shared_secret_param", "token");
    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let resp = served
        .request("POST", "/run", &[("authorization", &auth)], b"")
        .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let resp = served
        .request("POST", &format!("/run?token={SECRET}"), &[], b"")
        .await;
    assert_eq!(resp.status, 200);
    for bad in [
        "/run",
        "/run?token=wrong",
        "/run?token=0123456789abcdef0123456789abcdef-share",
    ] {
        assert_eq!(
            served.request("POST", bad, &[], b"").await.status,
            401,
            "{bad}"
        );
    }
    assert_eq!(
        served
            .request("POST", "/run", &[("authorization", "Bearer wrong")], b"")
            .await
            .status,
        401
    );
    assert_eq!(served.request("GET", "/status", &[], b"").await.status, 401);
    let body = served
        .request("GET", "/status", &[("authorization", &auth)], b"")
        .await;
    assert!(!String::from_utf8_lossy(&body.body).contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_configured_auth_the_run_routes_refuse_unless_explicitly_opened() {
    let mut rig = rig_with_events().await;
    let served = rig.serve().await;
    for (method, path) in [("POST", "/run"), ("POST", "/pubsub"), ("GET", "/status")] {
        assert_eq!(
            served
                .request(method, path, &[], &envelope(json!({})))
                .await
                .status,
            401,
            "{path}"
        );
    }
    assert_eq!(rig.sim.counters().requests.get("project-events"), None);
    drop(served);
    rig.set("allow_unauthenticated", "true");
    let served = rig.serve().await;
    assert_eq!(served.request("POST", "/run", &[], b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn pubsub_envelopes_run_or_are_refused_without_touching_state() {
    let mut rig = rig_with_events().await;
    rig.set("push_shared_secret", SECRET);
    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];

    let resp = served
        .request("POST", "/pubsub", &headers, &envelope(json!({})))
        .await;
    assert_eq!(resp.status, 200, "a completed run acks");
    let summary = resp.json().unwrap();
    assert_eq!(summary["streams"][0]["events"], 60);
    assert_eq!(summary["streams"][0]["window_finished"], true);

    let before = rig.kv_snapshot();
    let requests = rig.sim.counters().requests.clone();
    let bad_data = json!({"message": {"data": "%%% not base64 %%%"}}).to_string();
    for (name, body) in [
        ("not JSON", b"{not json".to_vec()),
        (
            "no message",
            br#"{"subscription": "projects/p/subscriptions/s"}"#.to_vec(),
        ),
        ("bad base64", bad_data.into_bytes()),
        ("bad shard", envelope(json!({"shard": "5/4"}))),
        ("unknown stream", envelope(json!({"streams": "everything"}))),
        ("unknown attribute", envelope(json!({"org": "other"}))),
    ] {
        let resp = served.request("POST", "/pubsub", &headers, &body).await;
        assert_eq!(
            resp.status,
            400,
            "{name}: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    assert_eq!(rig.kv_snapshot(), before, "KV is unchanged");
    assert_eq!(rig.sim.counters().requests, requests, "nothing was read");

    let big = vec![b' '; 70 * 1024];
    assert_eq!(
        served
            .request("POST", "/pubsub", &headers, &big)
            .await
            .status,
        413
    );
    assert_eq!(
        served.request("GET", "/pubsub", &headers, b"").await.status,
        405
    );
    assert_eq!(
        served
            .request("POST", "/nowhere", &headers, b"")
            .await
            .status,
        404
    );

    // A transient upstream failure asks Pub/Sub to redeliver.
    rig.sim.force_status(100, 503, "Service Unavailable");
    rig.clock.advance(HOUR);
    let resp = served
        .request("POST", "/pubsub", &headers, &envelope(json!({})))
        .await;
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json().unwrap()["retryable"], true);
    rig.sim.force_status(0, 200, "");

    // A permission problem is not transient: 500, so it stays visible.
    rig.sim.forbid("project-events");
    let now = rig.clock.now();
    rig.sim
        .generate(&mut Rng::new(52), 2, 3, now - 1800, now - 120, 0.0, 60);
    rig.clock.advance(600);
    let resp = served
        .request("POST", "/pubsub", &headers, &envelope(json!({})))
        .await;
    assert_eq!(resp.status, 500, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json().unwrap()["retryable"], false);
}

/// Sends `head` (a request line and headers), then `body`, then keeps the connection open
/// without finishing the body; returns the status line of whatever comes back within 10 s.
async fn status_before_the_body_ends(served: &Served, head: String, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and stop reading at any point: a failed write is fine.
    let _ = conn.write_all(&body).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within 10 s: the body is being waited for"
    );
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

/// A body declared larger than the cap is refused before any of it is read, and one that
/// turns out larger (chunked) as soon as it passes the cap: neither waits for the rest.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_refused_without_reading_it_all() {
    let mut rig = rig_with_events().await;
    rig.set("push_shared_secret", SECRET);
    let served = rig.serve().await;
    let before = rig.kv_snapshot();

    let head = format!(
        "POST /pubsub HTTP/1.1\r\nhost: collector\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n"
    );
    let status = status_before_the_body_ends(&served, head, b"{".to_vec()).await;
    assert!(status.contains(" 413"), "{status}");

    let head = format!(
        "POST /pubsub HTTP/1.1\r\nhost: collector\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut chunks = Vec::new();
    for _ in 0..10 {
        chunks.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunks.extend_from_slice(&[b' '; 8192]);
        chunks.extend_from_slice(b"\r\n");
    }
    let status = status_before_the_body_ends(&served, head, chunks).await;
    assert!(status.contains(" 413"), "{status}");

    assert_eq!(rig.kv_snapshot(), before, "KV is unchanged");
    assert!(rig.objects().await.is_empty(), "no run started");
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_concurrent_runs_of_one_shard_collect_once() {
    let mut rig = rig_with_events().await;
    rig.set("push_shared_secret", SECRET);
    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let headers = [("authorization", auth.as_str())];
    let requests = (0..8).map(|_| served.request("POST", "/run", &headers, b""));
    let responses = futures::future::join_all(requests).await;
    let mut ran = 0;
    let mut skipped = 0;
    for r in &responses {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        if v["skipped"] == true {
            skipped += 1;
        } else {
            ran += 1;
        }
    }
    assert_eq!((ran, skipped), (1, 7));
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_exact(&rig.delivered().await, &truth);
    // The lease is released: the next run goes ahead.
    let r = served
        .request("POST", "/run", &[("authorization", auth.as_str())], b"")
        .await;
    assert!(
        r.json().unwrap()["skipped"].is_null(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn four_concurrent_shards_deliver_exactly_what_one_run_would() {
    let mut rig = Rig::start(SimOptions {
        // Shards sharing one token share Sentry's limits; that is about pacing, not this.
        rate_limits: false,
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, 40);
    let now = rig.clock.now();
    let mut rng = Rng::new(53);
    for p in (1..=40).step_by(3) {
        rig.sim
            .generate(&mut rng, p, 20, now - 4 * HOUR, now - HOUR, 0.0, 60);
    }
    rig.set("lookback", "6h");
    rig.set("push_shared_secret", SECRET);
    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let targets: Vec<String> = (0..4).map(|i| format!("/run?shard={i}/4")).collect();
    let headers = [("authorization", auth.as_str())];
    let responses = futures::future::join_all(
        targets
            .iter()
            .map(|t| served.request("POST", t, &headers, b"")),
    )
    .await;
    let mut per_shard = Vec::new();
    for r in &responses {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        assert!(v["skipped"].is_null(), "each shard has its own lease: {v}");
        per_shard.push(v["streams"][0]["events"].as_u64().unwrap());
    }
    assert!(
        per_shard.iter().filter(|&&n| n > 0).count() >= 3,
        "the work is spread: {per_shard:?}"
    );
    let truth = rig.sim.truth(0, i64::MAX, rig.clock.now());
    assert_eq!(per_shard.iter().sum::<u64>() as usize, truth.len());
    let delivered = rig.delivered().await;
    assert_exact(&delivered, &truth);
    assert!(
        delivered
            .iter()
            .all(|(_, _, name)| name.contains("-events.s")),
        "objects name their shard"
    );
    // Each shard keeps its own checkpoint.
    let keys: Vec<String> = rig.kv_entries().into_iter().map(|(k, _)| k).collect();
    for i in 0..4 {
        assert!(
            keys.contains(&format!("v1/events.s{i}of4/checkpoint")),
            "{keys:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_names_broken_settings_without_secrets_and_status_shows_lag() {
    let mut rig = rig_with_events().await;
    rig.set("sentry_auth_token", "sntrys_ZZSECRETZZ");
    rig.set("push_shared_secret", "ZZSHORTZZ");
    rig.set("overlap", "forever");
    let served = rig.serve().await;
    let resp = served.request("GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 503);
    let body = String::from_utf8_lossy(&resp.body).to_string();
    assert!(
        !body.contains("ZZSECRETZZ") && !body.contains("ZZSHORTZZ"),
        "{body}"
    );
    let v = resp.json().unwrap();
    assert_eq!(
        v["invalid_settings"],
        json!(["sentry_auth_token", "overlap", "push_shared_secret"])
    );
    drop(served);

    rig.set("sentry_auth_token", &rig.sim.options.token.clone());
    rig.set("push_shared_secret", SECRET);
    rig.set("overlap", "1h");
    let served = rig.serve().await;
    assert_eq!(
        served.request("GET", "/healthz", &[], b"").await.status,
        200
    );
    let auth = format!("Bearer {SECRET}");
    let status = served
        .request("GET", "/status", &[("authorization", auth.as_str())], b"")
        .await
        .json()
        .unwrap();
    assert_eq!(
        status["streams"][0]["watermark"],
        Value::Null,
        "no run yet: {status}"
    );
    assert_eq!(
        served
            .request("POST", "/run", &[("authorization", auth.as_str())], b"")
            .await
            .status,
        200
    );
    rig.clock.advance(600);
    let status = served
        .request("GET", "/status", &[("authorization", auth.as_str())], b"")
        .await
        .json()
        .unwrap();
    let events = &status["streams"][0];
    assert_eq!(events["stream"], "events");
    let lag = events["lag_secs"].as_i64().unwrap();
    assert!(
        (600..=700).contains(&lag),
        "lag is now minus the watermark: {status}"
    );
    assert_eq!(events["in_progress"], false);
    assert_eq!(events["last_run"]["events"], 60);
    assert_eq!(events["last_error"], Value::Null);
}
