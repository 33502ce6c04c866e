//! The built component through the host: both exports, KV persistence across invocations,
//! the outbound allow-list, and variable resolution.

use std::path::{Path, PathBuf};
use std::time::Duration;

use collector_host::google::FakeGcs;
use collector_host::manifest::ProvidedVariables;
use collector_host::testing::{
    build_component, http_request, repo_root, temp_dir, RecordedRequest, RecordingServer, Reply,
};
use collector_host::{App, HostOptions, Outcome, Trigger};
use serde_json::json;

const TOKEN: &str = "sntryu_test_token_0123456789abcdef";

/// Answers organization details the way sentry.io does, naming itself as the region, and a
/// Discover pre-scan that finds no events (so a run reads nothing and writes nothing).
async fn sentry_stub() -> RecordingServer {
    RecordingServer::start(|req: &RecordedRequest| {
        if req.method == "GET" && req.target == "/api/0/organizations/acme/" {
            Reply::json(
                200,
                &json!({"id": "1", "slug": "acme", "name": "Acme", "links": {
                    "organizationUrl": "https://acme.sentry.io",
                    "regionUrl": format!("http://{}", req.header("host").unwrap_or_default()),
                }}),
            )
        } else if req.method == "GET"
            && req.target.starts_with("/api/0/organizations/acme/events/?")
        {
            Reply::json(200, &json!({"data": [], "meta": {"fields": {}}}))
        } else {
            Reply::json(
                404,
                &json!({"detail": "The requested resource does not exist"}),
            )
        }
    })
    .await
    .unwrap()
}

fn org_detail_requests(server: &RecordingServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.target == "/api/0/organizations/acme/")
        .count()
}

fn variables(sentry: &str, extra: &[(&str, &str)]) -> ProvidedVariables {
    let mut cli: Vec<(String, String)> = [
        ("gcs_bucket", "secops-sentry"),
        ("gcs_access_token", "ya29.test-access-token"),
        ("sentry_org", "acme"),
        ("sentry_auth_token", TOKEN),
        ("sentry_api_base", sentry),
        ("sentry_region_hosts", sentry),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for (n, v) in extra {
        cli.retain(|(k, _)| k != n);
        cli.push((n.to_string(), v.to_string()));
    }
    ProvidedVariables {
        cli,
        env: Vec::new(),
    }
}

fn options(manifest: PathBuf, state: &Path, vars: ProvidedVariables) -> HostOptions {
    HostOptions {
        manifest: Some(manifest),
        state_dir: Some(state.to_path_buf()),
        runtime_config: None,
        variables: vars,
        clock_offset: None,
        output_sink: None,
        max_memory: None,
    }
}

fn manifest() -> PathBuf {
    build_component().expect("component builds");
    repo_root().join("spin.toml")
}

fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("the run printed its summary");
    serde_json::from_str(line).expect("the summary is JSON")
}

/// The Cloud Storage emulator, for the shard's lease every run takes.
async fn bucket() -> FakeGcs {
    FakeGcs::start("secops-sentry")
        .await
        .expect("fake-gcs-server starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_export_runs_and_reaches_the_configured_sentry() {
    let sentry = sentry_stub().await;
    let gcs = bucket().await;
    let state = temp_dir("cron");
    let app = App::load(
        &options(
            manifest(),
            &state,
            variables(&sentry.url(), &[("gcs_endpoint", &gcs.url)]),
        ),
        Trigger::Cron,
    )
    .unwrap();
    let inv = app.run_cron(1_795_720_976).await.unwrap();
    assert_eq!(inv.outcome, Outcome::Ok, "stderr: {}", inv.stderr);
    let s = summary(&inv.stdout);
    assert_eq!(s["trigger"], "cron");
    assert_eq!(s["org"], "acme");
    assert_eq!(s["region_url"], sentry.url());
    let requests = sentry.requests();
    assert_eq!(requests.len(), 2, "organization details and the pre-scan");
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    assert_eq!(s["streams"][0]["projects_active"], 0);
    assert_eq!(s["streams"][0]["window_finished"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_export_reports_invalid_configuration_as_an_error() {
    let state = temp_dir("cron-invalid");
    let vars = variables(
        "http://127.0.0.1:9",
        &[
            ("sentry_auth_token", "sntrys_org_token_value"),
            ("lag", "ten minutes"),
        ],
    );
    let app = App::load(&options(manifest(), &state, vars), Trigger::Cron).unwrap();
    let inv = app.run_cron(1).await.unwrap();
    let Outcome::GuestError(message) = inv.outcome else {
        panic!("expected an error, got {:?}", inv.outcome);
    };
    assert!(message.contains("sentry_auth_token"), "{message}");
    assert!(message.contains("org:ci"), "{message}");
    assert!(message.contains("lag"), "{message}");
    assert!(
        !message.contains("sntrys_org_token_value"),
        "the token leaked: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_export_serves_healthz_and_refuses_unknown_routes_and_methods() {
    let state = temp_dir("serve");
    for (vars, healthy) in [
        (variables("http://127.0.0.1:9", &[]), true),
        (
            variables("http://127.0.0.1:9", &[("gcs_bucket", "Not A Bucket")]),
            false,
        ),
    ] {
        let app = std::sync::Arc::new(
            App::load(&options(manifest(), &state, vars), Trigger::Http).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(collector_host::serve::serve(app, listener, async {
            let _ = stopped.await;
        }));

        let resp = http_request(addr, "GET", "/healthz", &[], b"")
            .await
            .unwrap();
        let body = resp.json().unwrap();
        if healthy {
            assert_eq!(resp.status, 200, "{body}");
            assert_eq!(body["configuration_valid"], true);
        } else {
            assert_eq!(resp.status, 503, "{body}");
            assert_eq!(body["configuration_valid"], false);
            assert_eq!(body["invalid_settings"], json!(["gcs_bucket"]));
            assert!(!String::from_utf8_lossy(&resp.body).contains("Not A Bucket"));
        }
        assert_eq!(resp.header("content-type"), Some("application/json"));

        let resp = http_request(addr, "GET", "/no-such-route", &[], b"")
            .await
            .unwrap();
        assert_eq!(resp.status, 404);
        let resp = http_request(addr, "POST", "/healthz", &[], b"{}")
            .await
            .unwrap();
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_state_persists_across_separate_host_processes() {
    let sentry = sentry_stub().await;
    let gcs = bucket().await;
    let state = temp_dir("persist");
    let manifest = manifest();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector-host"));
        cmd.arg("--from")
            .arg(&manifest)
            .arg("--state-dir")
            .arg(&state);
        for (n, v) in variables(&sentry.url(), &[("gcs_endpoint", &gcs.url)]).cli {
            cmd.arg("--variable").arg(format!("{n}={v}"));
        }
        let out = cmd.arg("cron").output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs.push(summary(&String::from_utf8_lossy(&out.stdout)));
    }
    assert_eq!(runs[0]["runs"], 1);
    assert_eq!(runs[1]["runs"], 2);
    // The region was cached in KV by the first process: the second did not ask again.
    assert_eq!(org_detail_requests(&sentry), 1);
    assert!(
        runs[1]["streams"][0]["watermark"].is_string(),
        "the checkpoint persisted"
    );
    assert!(state.join("key_value/default").is_dir());
}

/// Writes a copy of spin.toml whose allow-list names only `allowed`.
fn manifest_allowing_only(allowed: &[&str]) -> PathBuf {
    let allowed = allowed.join("\", \"");
    let text = std::fs::read_to_string(manifest()).unwrap();
    let start = text.find("allowed_outbound_hosts = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let wasm = repo_root().join("target/wasm32-wasip2/release/sentry_logs_collector.wasm");
    let text = format!(
        "{}allowed_outbound_hosts = [\"{allowed}\"]{}",
        &text[..start],
        &text[end..]
    )
    .replace(
        "target/wasm32-wasip2/release/sentry_logs_collector.wasm",
        &wasm.display().to_string(),
    );
    let dir = temp_dir("manifest");
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_outside_the_allow_list_are_refused_without_hanging() {
    let listed = sentry_stub().await;
    let unlisted = sentry_stub().await;
    let gcs = bucket().await;
    let path = manifest_allowing_only(&[&listed.url(), &gcs.url]);

    let state = temp_dir("denied");
    let app = App::load(
        &options(
            path.clone(),
            &state,
            variables(&unlisted.url(), &[("gcs_endpoint", &gcs.url)]),
        ),
        Trigger::Cron,
    )
    .unwrap();
    let inv = tokio::time::timeout(Duration::from_secs(30), app.run_cron(1))
        .await
        .expect("a refused request fails at once instead of hanging")
        .unwrap();
    let Outcome::GuestError(message) = inv.outcome else {
        panic!("expected a refusal, got {:?}", inv.outcome);
    };
    assert!(message.contains("allowed_outbound_hosts"), "{message}");
    assert_eq!(
        unlisted.requests().len(),
        0,
        "the unlisted server was reached"
    );

    let state = temp_dir("allowed");
    let app = App::load(
        &options(
            path,
            &state,
            variables(&listed.url(), &[("gcs_endpoint", &gcs.url)]),
        ),
        Trigger::Cron,
    )
    .unwrap();
    let inv = app.run_cron(1).await.unwrap();
    assert_eq!(inv.outcome, Outcome::Ok, "{}", inv.stderr);
    assert_eq!(org_detail_requests(&listed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_required_variable_is_refused_with_its_name() {
    let mut vars = variables("http://127.0.0.1:9", &[]);
    vars.cli.retain(|(n, _)| n != "sentry_org");
    let err = App::load(
        &options(manifest(), &temp_dir("missing"), vars),
        Trigger::Cron,
    )
    .err()
    .expect("loading must fail")
    .to_string();
    assert!(err.contains("sentry_org"), "{err}");

    // The binary says the same and exits non-zero; SPIN_VARIABLE_* counts as set.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector-host"))
        .arg("--from")
        .arg(manifest())
        .args(["--state-dir"])
        .arg(temp_dir("missing-bin"))
        .args([
            "--variable",
            "gcs_bucket=b1b",
            "--variable",
            "sentry_org=acme",
            "cron",
        ])
        .env_remove("SPIN_VARIABLE_SENTRY_AUTH_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sentry_auth_token"), "{stderr}");
}

#[test]
fn the_component_exports_the_http_handler_and_the_cron_event() {
    let wasm = build_component().unwrap();
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::from_file(&engine, wasm).unwrap();
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(
        exports
            .iter()
            .any(|e| e == "wasi:http/incoming-handler@0.2.0"),
        "{exports:?}"
    );
    assert!(
        exports.iter().any(|e| e == "handle-cron-event"),
        "{exports:?}"
    );
}
