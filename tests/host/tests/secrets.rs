//! Secrets audit: full collections in every auth mode, then everything the component printed,
//! returned over HTTP, stored in KV and wrote to the bucket is searched for the Sentry token,
//! the private key, the access token and the shared secret. None may appear.

mod common;

use std::sync::Arc;

use collector_host::google::{token_endpoint, Accept, TestKey};
use common::*;
use sentry_sim::SimOptions;

const SENTRY_TOKEN: &str = "sntryu_AUDIT7f3c9e2b1a8d4c6e0f5a9b3d7c1e8f2a";
const ACCESS_TOKEN: &str = "ya29.AUDIT-access-4e8c2a6f9b1d3e5c7a9f";
const SHARED_SECRET: &str = "AUDIT-shared-secret-9c4e1a7f3b8d2e6c0a5f9b3d";
const EMAIL: &str = "writer@test-project.iam.gserviceaccount.com";

/// Pieces of the private key's PEM body: any one of them appearing means the key leaked.
fn key_fragments(key: &TestKey) -> Vec<String> {
    key.private_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(|l| l[..40].to_string())
        .collect()
}

struct Audit {
    haystack: String,
}

impl Audit {
    fn add(&mut self, what: &str, text: &str) {
        self.haystack.push_str(&format!("\n=== {what}\n{text}"));
    }

    async fn add_rig(&mut self, rig: &mut Rig) {
        self.add_rig_but(rig, &[]).await;
    }

    /// Everything but the KV records named in `skip`.
    async fn add_rig_but(&mut self, rig: &mut Rig, skip: &[&str]) {
        for (k, v) in rig.kv_snapshot() {
            if !skip.contains(&k.as_str()) {
                self.add(&format!("KV {k}"), &String::from_utf8_lossy(&v));
            }
        }
        for o in rig.all_objects().await {
            let body = rig.gcs.download(&o.name).await.unwrap();
            self.add(
                &format!("object {}", o.name),
                &format!("{}\n{}", o.metadata, String::from_utf8_lossy(&body)),
            );
        }
        let output = rig.output.lock().unwrap().clone();
        self.add("served output", &output);
    }

    fn assert_clean(&self, secrets: &[(&str, String)]) {
        for (name, secret) in secrets {
            if let Some(at) = self.haystack.find(secret.as_str()) {
                let start = self.haystack[..at].rfind("\n=== ").unwrap_or(0);
                let place: String = self.haystack[start..]
                    .lines()
                    .nth(1)
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect();
                panic!("the {name} appears in {place}");
            }
        }
    }
}

async fn rig() -> Rig {
    let options = SimOptions {
        token: SENTRY_TOKEN.into(),
        ..SimOptions::default()
    };
    let mut rig = Rig::with_history(options, 3, 3, 40, 0.1, 71).await;
    rig.set("sentry_auth_token", SENTRY_TOKEN);
    rig
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_output_responses_state_or_objects() {
    let key = Arc::new(TestKey::generate(EMAIL).unwrap());
    let mut audit = Audit {
        haystack: String::new(),
    };

    // 1. A pre-minted access token, over cron and over HTTP with a shared secret.
    let mut rig = rig().await;
    let _proxy = rig.behind_proxy(Accept::Static(ACCESS_TOKEN.into())).await;
    rig.set("gcs_access_token", ACCESS_TOKEN);
    rig.set("push_shared_secret", SHARED_SECRET);
    rig.set("push_shared_secret_param", "token");
    let inv = rig.run().await;
    audit.add("cron stdout", &inv.stdout);
    audit.add("cron stderr", &inv.stderr);
    assert_eq!(summary(&inv)["streams"][0]["events"], 120);
    let served = rig.serve().await;
    let auth = format!("Bearer {SHARED_SECRET}");
    rig.clock.advance(600);
    for (method, target, headers) in [
        (
            "POST",
            "/run".to_string(),
            vec![("authorization", auth.as_str())],
        ),
        ("POST", format!("/run?token={SHARED_SECRET}"), vec![]),
        (
            "GET",
            "/status".to_string(),
            vec![("authorization", auth.as_str())],
        ),
        ("GET", "/healthz".to_string(), vec![]),
        (
            "POST",
            "/run".to_string(),
            vec![("authorization", "Bearer wrong")],
        ),
        (
            "POST",
            "/pubsub".to_string(),
            vec![("authorization", auth.as_str())],
        ),
    ] {
        let resp = served
            .request(method, &target, &headers, b"{not an envelope")
            .await;
        audit.add(
            &format!(
                "{method} {} -> {}",
                target.split('?').next().unwrap_or_default(),
                resp.status
            ),
            &format!(
                "{:?}\n{}",
                resp.headers,
                String::from_utf8_lossy(&resp.body)
            ),
        );
    }
    // A broken configuration: the error names settings, never values.
    rig.set("sentry_auth_token", &format!("sntrys_{SENTRY_TOKEN}"));
    let inv = rig.run().await;
    audit.add(
        "config error",
        &format!("{:?}\n{}\n{}", inv.outcome, inv.stdout, inv.stderr),
    );
    rig.set("sentry_auth_token", SENTRY_TOKEN);
    audit.add_rig(&mut rig).await;
    drop(served);

    // 2. A self-signed JWT.
    let mut rig = self::rig().await;
    let _proxy = rig
        .behind_proxy(Accept::SelfSigned(key.clone(), rig.now_fn()))
        .await;
    rig.unset("gcs_access_token");
    rig.set(
        "gcp_service_account_key",
        &key.key_file("https://oauth2.googleapis.com/token"),
    );
    let inv = rig.run().await;
    assert_eq!(summary(&inv)["streams"][0]["events"], 120, "{}", inv.stderr);
    audit.add("self-signed stdout", &inv.stdout);
    audit.add("self-signed stderr", &inv.stderr);
    audit.add_rig(&mut rig).await;

    // 3. The token exchange, and a key the endpoint refuses.
    let mut rig = self::rig().await;
    let (tokens, issued) = token_endpoint(key.clone(), rig.now_fn()).await.unwrap();
    let _proxy = rig.behind_proxy(Accept::Issued(issued.clone())).await;
    rig.use_token_exchange(&key, &tokens);
    let inv = rig.run().await;
    assert_eq!(summary(&inv)["streams"][0]["events"], 120, "{}", inv.stderr);
    audit.add("exchange stdout", &inv.stdout);
    audit.add("exchange stderr", &inv.stderr);
    let wrong = TestKey::generate(EMAIL).unwrap();
    let mut wrong_key_file = wrong.key_file(&format!("{}/token", tokens.url()));
    wrong_key_file = wrong_key_file.replace(&wrong.key_id, &key.key_id);
    rig.set("gcp_service_account_key", &wrong_key_file);
    rig.clock.advance(2 * 3600);
    let inv = rig.run().await;
    audit.add(
        "refused key",
        &format!("{:?}\n{}\n{}", inv.outcome, inv.stdout, inv.stderr),
    );
    // The exchanged access token lives in KV, under its one record, by design (Spin keeps
    // nothing between requests; docs/deploy.md says who can read it); nowhere else.
    let exchanged = issued.all();
    assert_eq!(exchanged.len(), 1);
    let kv = rig.kv_snapshot();
    let holding: Vec<&String> = kv
        .iter()
        .filter(|(_, v)| String::from_utf8_lossy(v).contains(&exchanged[0]))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        holding,
        ["v1/gcs-token"],
        "the exchanged token's places in KV"
    );
    audit.add_rig_but(&mut rig, &["v1/gcs-token"]).await;

    let mut secrets = vec![
        ("exchanged access token", exchanged[0].clone()),
        ("Sentry token", SENTRY_TOKEN.to_string()),
        ("access token", ACCESS_TOKEN.to_string()),
        ("shared secret", SHARED_SECRET.to_string()),
    ];
    secrets.extend(key_fragments(&key).into_iter().map(|f| ("private key", f)));
    secrets.extend(
        key_fragments(&wrong)
            .into_iter()
            .map(|f| ("refused private key", f)),
    );
    assert!(
        audit.haystack.len() > 100_000,
        "the audit looked at real output"
    );
    audit.assert_clean(&secrets);
}
