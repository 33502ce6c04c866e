//! The intake's verification and refusals, the inbox's keys and records, and the lines.

use std::collections::HashMap;

use serde_json::json;

use super::intake::{sign, signature_ok};
use super::*;
use crate::config::Config;
use crate::http_api::ApiRequest;
use crate::ports::memory::MemKv;
use crate::ports::{Clock, Env, HttpClient, InboundResponse, OutboundRequest, TransportError};

const SECRET: &str = "5ecre7c1ient5ecre7c1ient5ecre7c1";
const NOW: f64 = 1_795_000_000.0;

use crate::ports::memory::MemVars as Vars;
struct NoHttp;
impl HttpClient for NoHttp {
    fn send(&self, r: &OutboundRequest) -> Result<InboundResponse, TransportError> {
        panic!("the intake made a request: {}", r.url)
    }
}
struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> f64 {
        NOW
    }
    fn sleep(&self, _: f64) {}
}

fn vars(extra: &[(&'static str, &str)]) -> Vars {
    let mut m = HashMap::from([
        ("gcs_bucket", "secops-sentry".to_string()),
        ("gcs_access_token", "ya29.token".to_string()),
        ("sentry_org", "acme".to_string()),
        ("sentry_auth_token", "sntryu_0123456789abcdef".to_string()),
        ("sentry_webhook_secret", SECRET.to_string()),
    ]);
    for (k, v) in extra {
        m.insert(*k, v.to_string());
    }
    Vars(m)
}

fn issue_body(action: &str, actor: &str) -> Vec<u8> {
    json!({
        "action": action,
        "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"},
        "data": {"issue": {"id": "1170820242", "shortId": "FRONT-END-9", "title": "ReferenceError",
            "status": "resolved", "project": {"id": "1", "slug": "front-end"}}},
        "actor": {"type": "user", "id": 7, "name": actor},
    })
    .to_string()
    .into_bytes()
}

fn error_body(id: &str) -> Vec<u8> {
    json!({
        "action": "created",
        "installation": {"uuid": "u"},
        "data": {"error": {"event_id": id, "datetime": "2026-11-18T20:58:37.391000Z",
            "project": 1, "title": "ReferenceError"}},
        "actor": {"type": "application", "id": "sentry", "name": "Sentry"},
    })
    .to_string()
    .into_bytes()
}

fn delivery(resource: &str, body: &[u8], sig: &str, ts: f64) -> ApiRequest {
    ApiRequest {
        method: "POST".into(),
        path: ROUTE.into(),
        query: String::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "request-id".into(),
                "9f0c6c0de1c1441c8b1d7b4c5a8e1d2f".into(),
            ),
            ("sentry-hook-resource".into(), resource.into()),
            ("sentry-hook-timestamp".into(), format!("{}", ts as i64)),
            ("sentry-hook-signature".into(), sig.into()),
        ],
        body: body.to_vec(),
    }
}

fn signed(resource: &str, body: &[u8]) -> ApiRequest {
    delivery(resource, body, &sign(SECRET, body), NOW - 2.0)
}

fn post(kv: &MemKv, v: &Vars, req: &ApiRequest) -> (u16, serde_json::Value) {
    let env = Env {
        vars: v,
        kv,
        http: &NoHttp,
        clock: &Fixed,
    };
    let resp = crate::http_api::handle(&env, req);
    (
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or_default(),
    )
}

fn inbox(kv: &MemKv) -> Vec<String> {
    kv.0.borrow()
        .keys()
        .filter(|k| k.starts_with(INBOX_PREFIX))
        .cloned()
        .collect()
}

#[test]
fn the_signature_is_hmac_sha256_of_the_raw_body_in_hex() {
    // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
    assert_eq!(
        sign("Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let body = issue_body("resolved", "colleen");
    let good = sign(SECRET, &body);
    assert!(signature_ok(SECRET, &body, Some(&good)));
    assert!(signature_ok(SECRET, &body, Some(&good.to_uppercase())));
    let mut other = body.clone();
    other.push(b' ');
    assert!(!signature_ok(SECRET, &other, Some(&good)), "one byte more");
    assert!(!signature_ok("another-secret-entirely", &body, Some(&good)));
    assert!(!signature_ok(SECRET, &body, None));
    assert!(!signature_ok(SECRET, &body, Some(&good[..63])));
    assert!(!signature_ok(
        SECRET,
        &body,
        Some(&format!("sha256={good}"))
    ));
    assert!(!signature_ok(SECRET, &body, Some(&"é".repeat(32))));
}

#[test]
fn a_verified_delivery_is_kept_once_under_its_digest_however_often_it_comes() {
    let (kv, v) = (MemKv::default(), vars(&[]));
    let body = issue_body("resolved", "colleen");
    let (status, answer) = post(&kv, &v, &signed("issue", &body));
    assert_eq!((status, &answer["kept"]), (200, &json!(true)), "{answer}");
    let keys = inbox(&kv);
    assert_eq!(keys.len(), 1);
    let k = parse_key(&keys[0]).unwrap();
    assert_eq!(
        (k.kind, k.received, k.project),
        (Kind::Activity, NOW as i64, None)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(k.digest, identity("issue", &parsed, &body));
    let record = kv.0.borrow()[&keys[0]].clone();
    let (meta, kept) = decode_record(&record).unwrap();
    assert_eq!(kept, &body[..], "the body exactly as signed");
    assert_eq!(meta.request_id, "9f0c6c0de1c1441c8b1d7b4c5a8e1d2f");
    assert_eq!(meta.sent_at, NOW as i64 - 2);
    // Sentry's retry: a new Request-ID and timestamp, the same body.
    let mut retry = delivery("issue", &body, &sign(SECRET, &body), NOW - 1.0);
    retry.headers[1].1 = "0b7cf9a4f0d84c47a8a1a0f3e7e1c111".into();
    let (status, answer) = post(&kv, &v, &retry);
    assert_eq!((status, &answer["duplicate"]), (200, &json!(true)));
    assert_eq!(inbox(&kv).len(), 1);
}

#[test]
fn every_refusal_answers_4xx_and_keeps_nothing_of_the_delivery() {
    let v = vars(&[]);
    let body = issue_body("assigned", "mallory");
    let good = sign(SECRET, &body);
    let mut no_resource = signed("issue", &body);
    no_resource
        .headers
        .retain(|(n, _)| n != "sentry-hook-resource");
    let mut no_timestamp = signed("issue", &body);
    no_timestamp
        .headers
        .retain(|(n, _)| n != "sentry-hook-timestamp");
    let mut odd_id = signed("issue", &body);
    odd_id.headers[1].1 = "x".repeat(65);
    let not_json = b"{\"action\": \"resolved\", ".to_vec();
    let no_data = br#"{"action":"resolved","installation":{"uuid":"u"}}"#.to_vec();
    let bad_error = error_body("not-a-hex-id");
    let mut huge = body.clone();
    huge.resize(MAX_BODY_BYTES + 1, b' ');
    let cases: Vec<(ApiRequest, u16, &str)> = vec![
        (
            delivery("issue", &body, &"0".repeat(64), NOW),
            401,
            "bad_signature",
        ),
        (delivery("issue", &body, "", NOW), 401, "bad_signature"),
        (
            delivery("issue", &body, &sign("someone-elses-secret!!", &body), NOW),
            401,
            "bad_signature",
        ),
        (
            delivery("issue", &body, &good, NOW - 301.0),
            401,
            "stale_timestamp",
        ),
        (
            delivery("issue", &body, &good, NOW + 301.0),
            401,
            "stale_timestamp",
        ),
        (no_timestamp, 400, "malformed"),
        (no_resource, 400, "malformed"),
        (odd_id, 400, "malformed"),
        (signed("issue", &not_json), 400, "malformed"),
        (signed("issue", &no_data), 400, "malformed"),
        (signed("error", &bad_error), 400, "malformed"),
        (signed("issue", &huge), 413, "too_large"),
    ];
    for (req, want, reason) in cases {
        let kv = MemKv::default();
        let (status, answer) = post(&kv, &v, &req);
        assert_eq!(status, want, "{reason}: {answer}");
        assert!(inbox(&kv).is_empty(), "{reason}: nothing kept");
        let counts: IntakeCounts = crate::state::load(&kv, INTAKE_KEY).unwrap().unwrap();
        assert_eq!(counts.refused.get(reason), Some(&1), "{reason}: counted");
        let text = answer.to_string();
        assert!(!text.contains(SECRET), "{text}");
    }
    // A GET is not a delivery.
    let kv = MemKv::default();
    let mut get = signed("issue", &body);
    get.method = "GET".into();
    assert_eq!(post(&kv, &v, &get).0, 405);
    assert!(inbox(&kv).is_empty());
}

#[test]
fn unknown_resources_are_acknowledged_counted_and_not_kept() {
    let (kv, v) = (MemKv::default(), vars(&[]));
    let body =
        br#"{"action":"created","data":{"installation":{"uuid":"u"}},"installation":{"uuid":"u"}}"#;
    for resource in ["installation", "seer", "installation"] {
        let (status, answer) = post(&kv, &v, &signed(resource, body));
        assert_eq!((status, &answer["kept"]), (200, &json!(false)));
    }
    assert!(inbox(&kv).is_empty());
    let counts: IntakeCounts = crate::state::load(&kv, INTAKE_KEY).unwrap().unwrap();
    assert_eq!(counts.ignored.get("installation"), Some(&2));
    assert_eq!(counts.ignored.get("seer"), Some(&1));
    // An unsigned one of those is refused like any other.
    let (status, _) = post(&kv, &v, &delivery("seer", body, &"0".repeat(64), NOW));
    assert_eq!(status, 401);
}

#[test]
fn without_a_secret_the_route_is_off_and_a_full_inbox_answers_503() {
    let kv = MemKv::default();
    let off = vars(&[("sentry_webhook_secret", "")]);
    let body = issue_body("resolved", "colleen");
    let (status, answer) = post(&kv, &off, &signed("issue", &body));
    assert_eq!(status, 404);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("sentry_webhook_secret"));
    assert!(kv.0.borrow().is_empty(), "nothing written at all");

    let v = vars(&[("webhook_inbox_max", "2")]);
    for actor in ["a", "b"] {
        assert_eq!(
            post(&kv, &v, &signed("issue", &issue_body("resolved", actor))).0,
            200
        );
    }
    let (status, _) = post(&kv, &v, &signed("issue", &issue_body("resolved", "c")));
    assert_eq!(status, 503);
    assert_eq!(inbox(&kv).len(), 2);
    // The state's room: a store at three quarters of its keys takes no more deliveries.
    let kv = MemKv::default();
    for i in 0..STORE_KEYS_FOR_INBOX {
        kv.0.borrow_mut().insert(format!("v1/other/{i}"), vec![]);
    }
    assert_eq!(post(&kv, &vars(&[]), &signed("issue", &body)).0, 503);
    assert!(inbox(&kv).is_empty());
}

#[test]
fn error_deliveries_are_kept_only_when_events_are_collected() {
    let id = "bb78c1407cea4519aa397afc059c793d";
    let (kv, v) = (MemKv::default(), vars(&[]));
    assert_eq!(post(&kv, &v, &signed("error", &error_body(id))).0, 200);
    let keys = inbox(&kv);
    let k = parse_key(&keys[0]).unwrap();
    assert_eq!((k.kind, k.project), (Kind::Event, Some(1)), "{}", keys[0]);
    let (_, body) = decode_record(&kv.0.borrow()[&keys[0]].clone())
        .map(|(m, b)| (m, b.to_vec()))
        .unwrap();
    let e = webhook_event(&serde_json::from_slice(&body).unwrap()).unwrap();
    assert_eq!(
        (e.event_id.as_str(), e.time, e.project),
        (id, 1_795_035_517, 1)
    );
    // The line is the pull's: the events API's names, not the webhook payload's.
    let line: serde_json::Value = serde_json::from_slice(&e.line).unwrap();
    assert_eq!(line["eventID"], id);
    assert_eq!(line["projectID"], "1");
    assert_eq!(
        line["dateCreated"], "2026-11-18T20:58:37Z",
        "whole seconds, as the list API"
    );
    assert!(line.get("event_id").is_none() && line.get("datetime").is_none());
    let kv = MemKv::default();
    let v = vars(&[("streams", "issues")]);
    let (status, answer) = post(&kv, &v, &signed("error", &error_body(id)));
    assert_eq!((status, &answer["kept"]), (200, &json!(false)));
    assert!(inbox(&kv).is_empty());
}

#[test]
fn keys_and_records_read_back_and_odd_ones_are_not_taken_for_inbox_keys() {
    let d = "0123456789abcdef0123456789abcdef";
    let key = inbox_key(Kind::Alert, 1_795_000_000, d, None);
    assert_eq!(key, format!("v1/inbox/l/1795000000-{d}"));
    let want = InboxKey {
        kind: Kind::Alert,
        received: 1_795_000_000,
        digest: d,
        project: None,
    };
    assert_eq!(parse_key(&key), Some(want));
    let key = inbox_key(Kind::Event, 1_795_000_000, d, Some(42));
    assert_eq!(key, format!("v1/inbox/e/1795000000-{d}-42"));
    assert_eq!(parse_key(&key).unwrap().project, Some(42));
    for odd in [
        "v1/inbox/x/1795000000-0123456789abcdef0123456789abcdef",
        "v1/inbox/a/179500000-0123456789abcdef0123456789abcdef",
        "v1/inbox/a/1795000000-0123456789abcdef0123456789abcdeg",
        "v1/inbox/a/1795000000-é123456789abcdef0123456789abcde",
        "v1/inbox/a",
        "v1/inbox/e/1795000000-0123456789abcdef0123456789abcdef",
        "v1/inbox/e/1795000000-0123456789abcdef0123456789abcdef-x1",
        "v1/inbox/a/1795000000-0123456789abcdef0123456789abcdef-1",
        "v1/status/events",
    ] {
        assert_eq!(parse_key(odd), None, "{odd}");
    }
    let meta = Meta {
        resource: "issue".into(),
        request_id: "r".into(),
        sent_at: 1,
        received_at: 2,
        inline: true,
    };
    let body = b"{\"a\":\n1}";
    let rec = encode_record(&meta, body);
    assert_eq!(decode_record(&rec), Some((meta, &body[..])));
    assert_eq!(decode_record(b"no line break"), None);
}

#[test]
fn a_line_says_what_happened_who_did_it_to_what_and_when_on_one_line() {
    let meta = Meta {
        resource: "issue".into(),
        request_id: "9f0c".into(),
        sent_at: 1_795_000_000,
        received_at: 1_795_000_001,
        inline: false,
    };
    // A pretty-printed body (not what Sentry sends, but signed all the same) stays one line.
    let body = serde_json::to_vec_pretty(
        &serde_json::from_slice::<serde_json::Value>(&issue_body("resolved", "colleen")).unwrap(),
    )
    .unwrap();
    let line = activity_line(&meta, &body).unwrap();
    assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["action"], "resolved");
    assert_eq!(v["actor"]["name"], "colleen");
    assert_eq!(v["issue"]["id"], "1170820242");
    assert_eq!(v["issue"]["shortId"], "FRONT-END-9");
    assert_eq!(v["time"], "2026-11-18T11:06:40Z");
    assert_eq!(v["request_id"], "9f0c");
    assert_eq!(v["payload"]["data"]["issue"]["status"], "resolved");

    let comment = json!({"action": "created", "data": {"comment": "looking", "project_slug": "api",
        "comment_id": 1234, "issue_id": 100, "timestamp": "2026-11-18T21:51:44.118160Z"},
        "installation": {"uuid": "u"}, "actor": {"type": "user", "id": 1, "name": "colleen"}});
    let meta = Meta {
        resource: "comment".into(),
        ..meta
    };
    let v: serde_json::Value =
        serde_json::from_slice(&activity_line(&meta, comment.to_string().as_bytes()).unwrap())
            .unwrap();
    assert_eq!(
        (&v["time"], &v["issue"]["id"], &v["comment"]["text"]),
        (
            &json!("2026-11-18T21:51:44Z"),
            &json!(100),
            &json!("looking")
        )
    );
    let meta = Meta {
        resource: "installation".into(),
        ..meta
    };
    assert_eq!(activity_line(&meta, comment.to_string().as_bytes()), None);
}

#[test]
fn the_drain_remembers_a_bounded_number_of_recent_digests() {
    let mut s = DrainState::default();
    s.remember(&["a".into(), "b".into()], 1000);
    assert!(s.knows("a") && s.knows("b"));
    s.remember(&["c".into()], 1000 + RECENT_SECS);
    let in_inbox: std::collections::HashSet<&str> = ["b"].into();
    s.forget_old(1000 + RECENT_SECS, &in_inbox);
    assert!(!s.knows("a"), "an hour later it is forgotten");
    assert!(s.knows("b"), "unless a key of it is still in the inbox");
    assert!(s.knows("c"));
    let many: Vec<String> = (0..MAX_RECENT + 5).map(|i| format!("{i:032x}")).collect();
    s.remember(&many, 2000 + RECENT_SECS);
    assert_eq!(s.recent.len(), MAX_RECENT);
    assert!(s.knows(&many[MAX_RECENT + 4]) && !s.knows(&many[0]));
    let bytes = serde_json::to_vec(&s).unwrap().len();
    assert!(bytes < crate::state::MAX_VALUE_BYTES * 6 / 10, "{bytes}");
}

#[test]
fn config_names_the_webhook_settings_and_their_fixes() {
    let e = Config::load(&vars(&[("sentry_webhook_secret", "short")])).unwrap_err();
    assert_eq!(e.settings(), vec!["sentry_webhook_secret"]);
    assert!(!e.to_string().contains("short"));
    let e = Config::load(&vars(&[("webhook_inbox_max", "5000")])).unwrap_err();
    assert_eq!(e.settings(), vec!["webhook_inbox_max"]);
    let e = Config::load(&vars(&[("webhook_inline", "yes please")])).unwrap_err();
    assert_eq!(e.settings(), vec!["webhook_inline"]);
    let c = Config::load(&vars(&[])).unwrap();
    assert_eq!(c.webhook.inbox_max, 500);
    assert!(!c.webhook.inline);
    assert_eq!(format!("{:?}", c.webhook.secret), "Some(***)");
}

#[test]
fn an_unsigned_resource_header_cannot_relabel_a_body() {
    let (kv, v) = (MemKv::default(), vars(&[]));
    let body = issue_body("resolved", "colleen");
    for resource in ["event_alert", "metric_alert", "comment", "error"] {
        let (status, answer) = post(&kv, &v, &signed(resource, &body));
        assert_eq!(status, 400, "{resource}: {answer}");
    }
    assert!(inbox(&kv).is_empty());
}

#[test]
fn error_events_take_at_most_half_the_inbox_and_past_it_are_left_to_the_pull() {
    let (kv, v) = (MemKv::default(), vars(&[("webhook_inbox_max", "4")]));
    let ids = [
        "00000000000000000000000000000001",
        "00000000000000000000000000000002",
        "00000000000000000000000000000003",
    ];
    let answers: Vec<_> = ids
        .iter()
        .map(|id| post(&kv, &v, &signed("error", &error_body(id))))
        .collect();
    assert_eq!(answers[0].1["kept"], true);
    assert_eq!(answers[1].1["kept"], true);
    assert_eq!(
        (answers[2].0, &answers[2].1["kept"]),
        (200, &json!(false)),
        "acknowledged: the pull collects it"
    );
    // What only webhooks carry still gets the rest.
    for actor in ["a", "b"] {
        let (status, answer) = post(&kv, &v, &signed("issue", &issue_body("resolved", actor)));
        assert_eq!((status, &answer["kept"]), (200, &json!(true)));
    }
    assert_eq!(
        post(&kv, &v, &signed("issue", &issue_body("resolved", "c"))).0,
        503
    );
    let counts: IntakeCounts = crate::state::load(&kv, INTAKE_KEY).unwrap().unwrap();
    assert_eq!(counts.errors_left_to_the_pull, 1);
    assert_eq!(counts.refused.get("inbox_full"), Some(&1));
}

#[test]
fn with_full_events_error_deliveries_are_left_to_the_pull() {
    let (kv, v) = (MemKv::default(), vars(&[("sentry_full_events", "true")]));
    let (status, answer) = post(
        &kv,
        &v,
        &signed("error", &error_body("0123456789abcdef0123456789abcdef")),
    );
    assert_eq!((status, &answer["kept"]), (200, &json!(false)), "{answer}");
    assert!(inbox(&kv).is_empty());
}

#[test]
fn a_retry_rebuilt_with_the_issue_as_it_is_now_is_the_same_change() {
    let body = |count: &str, status: &str, actor: &str| {
        json!({"action": "resolved", "installation": {"uuid": "u"},
            "data": {"issue": {"id": "7", "count": count, "lastSeen": format!("2026-12-0{count}T00:00:00Z"),
                "status": status, "substatus": null, "statusDetails": {}, "assignedTo": null}},
            "actor": {"type": "user", "id": 1, "name": actor}})
    };
    let id = |v: serde_json::Value| identity("issue", &v, v.to_string().as_bytes());
    assert_eq!(
        id(body("1", "resolved", "ann")),
        id(body("2", "resolved", "ann")),
        "count and lastSeen moved"
    );
    assert_ne!(
        id(body("1", "resolved", "ann")),
        id(body("1", "resolved", "bob")),
        "another user"
    );
    assert_ne!(
        id(body("1", "resolved", "ann")),
        id(body("1", "unresolved", "ann")),
        "another state"
    );
    let raw = br#"{"action": "critical", "data": {"metric_alert": {"id": "1"}}}"#;
    let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(
        identity("metric_alert", &v, raw),
        identity("metric_alert", &v, raw)
    );
    assert_ne!(
        identity("metric_alert", &v, raw),
        identity("metric_alert", &v, b"{}"),
        "the whole body"
    );
}
