//! One test per validation rule, plus the guarantees that hold for all of them: every problem
//! is reported at once, each names its variable, and no message carries a configured value.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

struct Vars(HashMap<&'static str, String>);

impl VariableSource for Vars {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        if name == "provider_broken" {
            return Err("vault unreachable".into());
        }
        Ok(self.0.get(name).cloned())
    }
}

const KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n";

fn key_json(extra: &str) -> String {
    format!(
        r#"{{"type":"service_account","project_id":"p","private_key_id":"abc123","private_key":"{KEY_PEM}","client_email":"writer@p.iam.gserviceaccount.com","token_uri":"https://oauth2.googleapis.com/token"{extra}}}"#
    )
}

fn valid() -> Vars {
    Vars(HashMap::from([
        ("gcs_bucket", "secops-sentry".to_string()),
        ("gcs_access_token", "ya29.a0AfH6SM".to_string()),
        ("sentry_org", "acme".to_string()),
        ("sentry_auth_token", "sntryu_0123456789abcdef".to_string()),
    ]))
}

fn with(pairs: &[(&'static str, &str)]) -> Vars {
    let mut v = valid();
    for (k, val) in pairs {
        v.0.insert(k, val.to_string());
    }
    v
}

fn without(names: &[&str]) -> Vars {
    let mut v = valid();
    v.0.retain(|k, _| !names.contains(k));
    v
}

fn problems(vars: &Vars) -> Vec<Problem> {
    Config::load(vars)
        .expect_err("configuration should be invalid")
        .problems
}

/// Asserts that loading fails with exactly one problem, on `setting`, whose message contains
/// `needle`.
fn rejects(pairs: &[(&'static str, &str)], setting: &str, needle: &str) {
    let found = problems(&with(pairs));
    assert_eq!(found.len(), 1, "{pairs:?}: {found:?}");
    assert_eq!(found[0].setting, setting, "{pairs:?}: {found:?}");
    assert!(
        found[0].message.contains(needle),
        "{pairs:?}: {:?} lacks {needle:?}",
        found[0].message
    );
}

#[test]
fn a_minimal_configuration_loads_with_the_documented_defaults() {
    let c = Config::load(&valid()).unwrap();
    assert_eq!(c.gcs.bucket, "secops-sentry");
    assert_eq!(c.gcs.prefix, "sentry/");
    assert_eq!(c.gcs.endpoint.as_str(), "https://storage.googleapis.com/");
    assert!(!c.gcs.gzip);
    assert_eq!(
        c.gcs.auth,
        GcsAuth::AccessToken(Secret::new("ya29.a0AfH6SM"))
    );
    assert_eq!(c.sentry.api_base.as_str(), "https://sentry.io/");
    assert_eq!(c.sentry.max_projects, None);
    assert!(!c.sentry.full_events);
    assert_eq!(c.streams, vec!["events"]);
    assert_eq!(c.timing.time_budget, Duration::from_secs(25));
    assert_eq!(c.timing.lookback, Duration::from_secs(86400));
    assert_eq!(c.timing.overlap, Duration::from_secs(3600));
    assert_eq!(c.timing.lag, Duration::from_secs(60));
    assert_eq!(c.timing.max_window, Duration::from_secs(86400));
    assert_eq!(c.push.oidc, None);
    assert_eq!(c.push.shared_secret, None);
    assert!(!c.push.allow_unauthenticated);
}

#[test]
fn every_missing_required_setting_is_reported_at_once() {
    let found = problems(&without(&["gcs_bucket", "sentry_org", "sentry_auth_token"]));
    let names: Vec<_> = found.iter().map(|p| p.setting).collect();
    assert_eq!(names, vec!["gcs_bucket", "sentry_org", "sentry_auth_token"]);
    assert!(found.iter().all(|p| p.message.contains("required")));
}

#[test]
fn a_provider_error_is_reported_against_its_setting() {
    struct Broken;
    impl VariableSource for Broken {
        fn get(&self, name: &str) -> Result<Option<String>, String> {
            if name == "gcs_prefix" {
                Err("provider unreachable".into())
            } else {
                valid().get(name)
            }
        }
    }
    let found = Config::load(&Broken).unwrap_err().problems;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].setting, "gcs_prefix");
    assert!(found[0].message.contains("provider unreachable"));
    assert!(Vars(HashMap::new()).get("provider_broken").is_err());
}

#[test]
fn organization_tokens_are_refused_with_the_token_to_use_instead() {
    rejects(
        &[("sentry_auth_token", "sntrys_eyJpYXQiOjE3")],
        "sentry_auth_token",
        "org:ci",
    );
    let msg = &problems(&with(&[("sentry_auth_token", "sntrys_x")]))[0].message;
    assert!(msg.contains("cannot read events"), "{msg}");
    assert!(msg.contains("internal integration"), "{msg}");
    assert!(
        msg.contains("Project Read, Issue & Event Read and Organization Read"),
        "{msg}"
    );
}

#[test]
fn sentry_token_must_be_a_bare_token() {
    rejects(
        &[("sentry_auth_token", "")],
        "sentry_auth_token",
        "internal integration",
    );
    rejects(
        &[("sentry_auth_token", "abc def")],
        "sentry_auth_token",
        "spaces",
    );
    rejects(
        &[("sentry_auth_token", "abc\r\nx-injected: 1")],
        "sentry_auth_token",
        "spaces",
    );
    let c = Config::load(&with(&[("sentry_auth_token", "Bearer sntryu_abc")])).unwrap();
    assert_eq!(c.sentry.token.expose(), "sntryu_abc");
    let c = Config::load(&with(&[("sentry_auth_token", "  0123abcd\n")])).unwrap();
    assert_eq!(c.sentry.token.expose(), "0123abcd");
}

#[test]
fn bucket_must_be_a_bare_valid_bucket_name() {
    rejects(&[("gcs_bucket", "")], "gcs_bucket", "required");
    rejects(
        &[("gcs_bucket", "gs://secops/x")],
        "gcs_bucket",
        "without gs://",
    );
    rejects(
        &[("gcs_bucket", "Secops")],
        "gcs_bucket",
        "not a valid bucket name",
    );
    rejects(
        &[("gcs_bucket", "ab")],
        "gcs_bucket",
        "not a valid bucket name",
    );
    rejects(
        &[("gcs_bucket", "-secops")],
        "gcs_bucket",
        "not a valid bucket name",
    );
    assert!(Config::load(&with(&[("gcs_bucket", "my_bucket.example-1")])).is_ok());
}

#[test]
fn prefix_is_empty_or_a_folder() {
    rejects(
        &[("gcs_prefix", "/sentry/")],
        "gcs_prefix",
        "must not start with '/'",
    );
    rejects(&[("gcs_prefix", "sentry")], "gcs_prefix", "end with '/'");
    rejects(&[("gcs_prefix", "a/../b/")], "gcs_prefix", "'..'");
    rejects(
        &[("gcs_prefix", &format!("{}/", "p".repeat(600)))],
        "gcs_prefix",
        "too long",
    );
    assert_eq!(
        Config::load(&with(&[("gcs_prefix", "")]))
            .unwrap()
            .gcs
            .prefix,
        ""
    );
    assert_eq!(
        Config::load(&with(&[("gcs_prefix", "feeds/sentry/")]))
            .unwrap()
            .gcs
            .prefix,
        "feeds/sentry/"
    );
}

#[test]
fn endpoints_are_https_origins_or_loopback_http() {
    for setting in [
        "gcs_endpoint",
        "sentry_api_base",
        "gcp_token_origin",
        "push_jwks_origin",
    ] {
        rejects(
            &[(setting, "http://storage.example.com")],
            setting,
            "must use https",
        );
        rejects(&[(setting, "ftp://example.com")], setting, "https");
        rejects(&[(setting, "not a url")], setting, "not a URL");
        rejects(
            &[(setting, "https://example.com/api")],
            setting,
            "without a path",
        );
        rejects(
            &[(setting, "https://example.com/?x=1")],
            setting,
            "without a path",
        );
        rejects(
            &[(setting, "https://user:pw@example.com")],
            setting,
            "user name or password",
        );
    }
    for ok in [
        "http://127.0.0.1:4443",
        "http://localhost:9000/",
        "http://[::1]:8080",
        "https://sentry.example.com:8443",
    ] {
        let c = Config::load(&with(&[("gcs_endpoint", ok), ("sentry_api_base", ok)])).unwrap();
        assert_eq!(c.gcs.endpoint.path(), "/");
    }
}

#[test]
fn region_host_pattern_follows_allowed_host_syntax() {
    let c = Config::load(&valid()).unwrap();
    let p = &c.sentry.region_hosts;
    for (url, expected) in [
        ("https://us.sentry.io", true),
        ("https://de.sentry.io/", true),
        ("https://sentry.io", false),
        ("https://evilsentry.io", false),
        ("https://us.sentry.io.evil.com", false),
        ("http://us.sentry.io", false),
        ("https://us.sentry.io:8443", false),
    ] {
        assert_eq!(p.matches(&url::Url::parse(url).unwrap()), expected, "{url}");
    }
    let c = Config::load(&with(&[("sentry_region_hosts", "http://127.0.0.1:9000")])).unwrap();
    assert!(c
        .sentry
        .region_hosts
        .matches(&url::Url::parse("http://127.0.0.1:9000/").unwrap()));
    assert!(!c
        .sentry
        .region_hosts
        .matches(&url::Url::parse("http://127.0.0.1:9001/").unwrap()));
    for bad in [
        "sentry.io",
        "https://*.sentry.io/api",
        "https://*",
        "https://a.*.io",
        "http://*.sentry.io",
    ] {
        let found = problems(&with(&[("sentry_region_hosts", bad)]));
        assert_eq!(found[0].setting, "sentry_region_hosts", "{bad}: {found:?}");
    }
}

#[test]
fn booleans_are_true_or_false() {
    for setting in ["gcs_gzip", "sentry_full_events", "allow_unauthenticated"] {
        rejects(&[(setting, "yes")], setting, "true or false");
    }
    let c = Config::load(&with(&[
        ("gcs_gzip", "TRUE"),
        ("sentry_full_events", "true"),
    ]))
    .unwrap();
    assert!(c.gcs.gzip && c.sentry.full_events);
}

#[test]
fn org_must_be_a_slug() {
    rejects(&[("sentry_org", "")], "sentry_org", "required");
    rejects(&[("sentry_org", "Acme Corp")], "sentry_org", "slug");
    rejects(&[("sentry_org", "acme/../other")], "sentry_org", "slug");
    rejects(
        &[("sentry_org", "https://acme.sentry.io")],
        "sentry_org",
        "slug",
    );
    assert!(Config::load(&with(&[("sentry_org", "acme-corp_2")])).is_ok());
}

#[test]
fn max_projects_is_a_bounded_whole_number() {
    rejects(&[("max_projects", "-1")], "max_projects", "whole number");
    rejects(&[("max_projects", "lots")], "max_projects", "whole number");
    rejects(
        &[("max_projects", "100001")],
        "max_projects",
        "whole number",
    );
    assert_eq!(
        Config::load(&with(&[("max_projects", "0")]))
            .unwrap()
            .sentry
            .max_projects,
        None
    );
    assert_eq!(
        Config::load(&with(&[("max_projects", "250")]))
            .unwrap()
            .sentry
            .max_projects,
        Some(250)
    );
}

#[test]
fn streams_are_known_and_deduplicated() {
    rejects(&[("streams", "events,bogus")], "streams", "unknown stream");
    rejects(&[("streams", "event")], "streams", "audit_logs");
    rejects(&[("streams", " , ")], "streams", "names no stream");
    let c = Config::load(&with(&[("streams", " events , events ")])).unwrap();
    assert_eq!(c.streams, vec!["events"]);
    let all = "events,issues,audit_logs,transactions,spans,logs";
    let c = Config::load(&with(&[("streams", all)])).unwrap();
    assert_eq!(c.streams.join(","), all);
}

#[test]
fn durations_take_a_unit_and_stay_in_range() {
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    for bad in [
        "",
        "5",
        "m",
        "1.5h",
        "-1m",
        "10x",
        "1h30m",
        "99999999999999999999d",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    rejects(
        &[("time_budget", "10x")],
        "time_budget",
        "like 30s, 10m or 24h",
    );
    rejects(&[("time_budget", "0")], "time_budget", "between 1s and 1d");
    rejects(&[("time_budget", "2d")], "time_budget", "between 1s and 1d");
    rejects(&[("lookback", "30s")], "lookback", "between 1m and 90d");
    rejects(&[("overlap", "8d")], "overlap", "between 0s and 7d");
    rejects(&[("lag", "2d")], "lag", "between 0s and 1d");
    rejects(&[("max_window", "10s")], "max_window", "between 1m and 7d");
    assert_eq!(
        Config::load(&with(&[("overlap", "0")]))
            .unwrap()
            .timing
            .overlap,
        Duration::ZERO
    );
}

#[test]
fn lag_must_be_shorter_than_lookback() {
    rejects(
        &[("lookback", "1h"), ("lag", "1h")],
        "lag",
        "shorter than lookback",
    );
}

#[test]
fn exactly_one_storage_credential_is_required() {
    let found = problems(&without(&["gcs_access_token"]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].setting, "gcp_service_account_key");
    assert!(found[0].message.contains("set one of them"));
    rejects(
        &[("gcp_service_account_key", &key_json(""))],
        "gcs_access_token",
        "only one",
    );
    rejects(
        &[("gcs_access_token", "ya29 with space")],
        "gcs_access_token",
        "spaces",
    );
}

#[test]
fn a_service_account_key_is_parsed_and_kept_secret() {
    let v = with(&[("gcp_service_account_key", &key_json(""))]);
    let mut v = v;
    v.0.remove("gcs_access_token");
    let c = Config::load(&v).unwrap();
    let GcsAuth::ServiceAccount { key, exchange } = &c.gcs.auth else {
        panic!("expected a key");
    };
    assert!(!exchange);
    assert_eq!(key.client_email, "writer@p.iam.gserviceaccount.com");
    assert_eq!(key.private_key_id, "abc123");
    assert!(key
        .private_key
        .expose()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(
        key.token_uri.as_str(),
        "https://oauth2.googleapis.com/token"
    );
    assert!(
        !format!("{c:?}").contains("MIIEvQ"),
        "Debug printed the private key"
    );
}

fn key_problem(key: &str, extra: &[(&'static str, &str)]) -> Problem {
    let mut v = with(extra);
    v.0.remove("gcs_access_token");
    v.0.insert("gcp_service_account_key", key.to_string());
    let found = problems(&v);
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn malformed_keys_name_the_setting_without_quoting_the_key() {
    let cases = [
        (format!("{}garbage", key_json("")), "invalid JSON at line 1"),
        (
            key_json("").replace("service_account", "authorized_user"),
            "\"service_account\"",
        ),
        (
            key_json("").replace("writer@p.iam.gserviceaccount.com", "writer"),
            "client_email",
        ),
        (key_json("").replace("\"abc123\"", "\"\""), "private_key_id"),
        (
            key_json("").replace("BEGIN PRIVATE KEY", "BEGIN RSA KEY"),
            "PKCS#8",
        ),
        (
            key_json("").replace(
                "https://oauth2.googleapis.com/token",
                "http://evil.example/token",
            ),
            "token_uri",
        ),
        ("[1,2,3]".to_string(), "not a service-account key file"),
    ];
    for (key, needle) in cases {
        let p = key_problem(&key, &[]);
        assert_eq!(p.setting, "gcp_service_account_key");
        assert!(p.message.contains(needle), "{needle}: {}", p.message);
        assert!(
            !p.message.contains("MIIEvQ"),
            "key material in: {}",
            p.message
        );
    }
}

#[test]
fn token_exchange_requires_the_token_uri_on_the_allowed_origin() {
    let p = key_problem(
        &key_json("").replace(
            "https://oauth2.googleapis.com/token",
            "https://tokens.example.com/token",
        ),
        &[("gcs_auth_mode", "token_exchange")],
    );
    assert!(p.message.contains("gcp_token_origin"), "{}", p.message);
    let mut v = with(&[
        ("gcs_auth_mode", "token_exchange"),
        ("gcp_token_origin", "http://127.0.0.1:8999"),
        (
            "gcp_service_account_key",
            &key_json("").replace(
                "https://oauth2.googleapis.com/token",
                "http://127.0.0.1:8999/token",
            ),
        ),
    ]);
    v.0.remove("gcs_access_token");
    let c = Config::load(&v).unwrap();
    assert!(matches!(
        c.gcs.auth,
        GcsAuth::ServiceAccount { exchange: true, .. }
    ));
    rejects(
        &[("gcs_auth_mode", "oauth")],
        "gcs_auth_mode",
        "self_signed_jwt or token_exchange",
    );
}

#[test]
fn oidc_needs_both_audience_and_emails() {
    rejects(
        &[("push_oidc_audience", "https://collector.example/pubsub")],
        "push_oidc_emails",
        "is empty",
    );
    rejects(
        &[("push_oidc_emails", "push@p.iam.gserviceaccount.com")],
        "push_oidc_audience",
        "is empty",
    );
    rejects(
        &[
            ("push_oidc_audience", "aud"),
            (
                "push_oidc_emails",
                "push@p.iam.gserviceaccount.com, not-an-email",
            ),
        ],
        "push_oidc_emails",
        "email addresses",
    );
    let c = Config::load(&with(&[
        ("push_oidc_audience", "https://collector.example/pubsub"),
        (
            "push_oidc_emails",
            "Push@P.iam.gserviceaccount.com, sched@p.iam.gserviceaccount.com",
        ),
    ]))
    .unwrap();
    let oidc = c.push.oidc.unwrap();
    assert_eq!(
        oidc.emails,
        vec![
            "push@p.iam.gserviceaccount.com",
            "sched@p.iam.gserviceaccount.com"
        ]
    );
    assert_eq!(
        oidc.jwks_url.as_str(),
        "https://www.googleapis.com/oauth2/v3/certs"
    );
}

#[test]
fn jwks_url_must_live_on_the_allowed_origin() {
    rejects(
        &[("push_jwks_url", "https://keys.example.com/certs")],
        "push_jwks_origin",
        "differs",
    );
    rejects(
        &[("push_jwks_url", "http://keys.example.com/certs")],
        "push_jwks_url",
        "https",
    );
    assert!(Config::load(&with(&[
        ("push_jwks_url", "http://127.0.0.1:7000/certs"),
        ("push_jwks_origin", "http://127.0.0.1:7000"),
    ]))
    .is_ok());
}

#[test]
fn shared_secret_must_be_long_and_its_parameter_well_formed() {
    rejects(
        &[("push_shared_secret", "short")],
        "push_shared_secret",
        "at least 32",
    );
    rejects(
        &[("push_shared_secret_param", "token")],
        "push_shared_secret_param",
        "push_shared_secret is empty",
    );
    let long = "f".repeat(40);
    rejects(
        &[
            ("push_shared_secret", &long),
            ("push_shared_secret_param", "to ken"),
        ],
        "push_shared_secret_param",
        "query parameter name",
    );
    let c = Config::load(&with(&[
        ("push_shared_secret", &long),
        ("push_shared_secret_param", "token"),
    ]))
    .unwrap();
    assert_eq!(c.push.shared_secret_param.as_deref(), Some("token"));
    assert_eq!(c.push.shared_secret.unwrap().expose(), long);
}

#[test]
fn no_message_ever_contains_a_configured_value() {
    // Every setting gets a wrong value carrying a marker; none of the markers may come back.
    let marker = "ZZMARKERZZ";
    let mut v = Vars(HashMap::new());
    for s in SETTINGS {
        v.0.insert(s.name, format!("{marker}-{} bad value", s.name));
    }
    v.0.insert("sentry_auth_token", format!("sntrys_{marker}"));
    v.0.insert("gcs_access_token", String::new());
    v.0.insert(
        "gcp_service_account_key",
        format!("{{\"private_key\": \"{marker}\""),
    );
    let err = Config::load(&v).unwrap_err();
    assert!(err.problems.len() >= 20, "{err}");
    let text = err.to_string();
    assert!(!text.contains(marker), "a value leaked into: {text}");
    let debug = format!("{err:?}");
    assert!(
        !debug.contains(marker),
        "a value leaked into Debug: {debug}"
    );
}

#[test]
fn the_error_lists_each_problem_on_its_own_line() {
    let err = Config::load(&without(&["gcs_bucket", "sentry_org"])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("invalid configuration (2 problems)"),
        "{text}"
    );
    assert!(text.contains("\n  - gcs_bucket: is required"), "{text}");
    assert!(text.contains("\n  - sentry_org: is required"), "{text}");
    assert_eq!(err.settings(), vec!["gcs_bucket", "sentry_org"]);
}

#[test]
fn secrets_are_exactly_the_credentials() {
    let secret: Vec<_> = SETTINGS
        .iter()
        .filter(|s| s.secret)
        .map(|s| s.name)
        .collect();
    assert_eq!(
        secret,
        vec![
            "gcp_service_account_key",
            "gcs_access_token",
            "sentry_auth_token",
            "push_shared_secret",
            "sentry_webhook_secret"
        ]
    );
}

#[test]
fn allow_unauthenticated_cannot_be_combined_with_configured_auth() {
    let long = "f".repeat(40);
    rejects(
        &[
            ("push_shared_secret", &long),
            ("allow_unauthenticated", "true"),
        ],
        "allow_unauthenticated",
        "set it to false",
    );
    assert!(
        Config::load(&with(&[("allow_unauthenticated", "true")]))
            .unwrap()
            .push
            .allow_unauthenticated
    );
}
