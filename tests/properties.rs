//! Property tests for every parser that reads untrusted input: never a panic, a clear error
//! for every rejection, and what is accepted is what was meant.

use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use proptest::prelude::*;
use sentry_logs_collector::config::{Config, SETTINGS};
use sentry_logs_collector::http_api::{pubsub_options, query_options};
use sentry_logs_collector::identity::seen_key;
use sentry_logs_collector::jwt;
use sentry_logs_collector::ports::VariableSource;
use sentry_logs_collector::push_auth::parse_jwks;
use sentry_logs_collector::sentry::link;
use sentry_logs_collector::sentry::pages::{parse_page, Envelope};
use sentry_logs_collector::shard::Shard;
use sentry_logs_collector::streams::STREAMS;
use sentry_logs_collector::time::{parse_rfc3339, rfc3339};

/// Cases per property: `PROPTEST_CASES` when set (longer local runs), else a CI-sized default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cursor() -> impl Strategy<Value = String> {
    "[0-9]{1,13}:[0-9]{1,7}:[01]"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), .. ProptestConfig::default() })]

    #[test]
    fn link_headers_never_panic_and_only_yield_plain_cursors(header in ".{0,400}") {
        if let Ok(Some(c)) = link::next_cursor(Some(&header)) {
            prop_assert!(!c.is_empty() && c.len() <= 256);
            prop_assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b":.-_".contains(&b)));
        }
    }

    #[test]
    fn sentry_style_link_headers_yield_their_next_cursor(
        prev in cursor(), next in cursor(), more in any::<bool>(),
        host in "[a-z]{1,12}\\.[a-z]{2,5}", query in "[a-z=&,;]{0,40}",
    ) {
        let header = format!(
            "<https://{host}/api/0/x/?{query}&cursor={prev}>; rel=\"previous\"; results=\"false\"; cursor=\"{prev}\", <https://{host}/api/0/x/?{query}&cursor={next}>; rel=\"next\"; results=\"{more}\"; cursor=\"{next}\""
        );
        let got = link::next_cursor(Some(&header)).unwrap();
        prop_assert_eq!(got, more.then_some(next));
    }

    #[test]
    fn jwt_decoding_never_panics(token in ".{0,300}", parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 3)) {
        let _ = jwt::decode(&token);
        let encoded: Vec<String> = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect();
        let _ = jwt::decode(&encoded.join("."));
    }

    #[test]
    fn pages_never_panic_and_accepted_items_are_single_lines(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        for def in STREAMS {
            let strict = serde_json::from_slice::<serde_json::Value>(&body);
            match parse_page(body.clone(), &def.shape) {
                Ok(page) => {
                    // Whatever the scanner accepts, serde_json accepts too.
                    prop_assert!(strict.is_ok());
                    for item in &page.items {
                        let text = page.json(item);
                        prop_assert!(!text.contains(&b'\n'));
                        let v: serde_json::Value = serde_json::from_slice(text).unwrap();
                        let id = match &v[def.shape.id_field] {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let time = v[def.shape.time_field].as_str().unwrap();
                        let key = if def.shape.key_includes_time {
                            seen_key(&format!("{id}@{time}"))
                        } else {
                            seen_key(&id)
                        };
                        prop_assert_eq!(item.key, key);
                    }
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }

    #[test]
    fn a_damaged_page_is_accepted_only_if_it_is_still_json(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        mode in 0u8..3,
    ) {
        let page = br#"[{"eventID":"0123456789abcdef0123456789abcdef","dateCreated":"2026-11-26T10:00:00Z","tags":[{"key":"k","value":"v\u00e9"}],"n":-1.5e3,"ok":true,"no":null}]"#;
        let mut body = page.to_vec();
        let i = at.index(body.len());
        match mode {
            0 => body[i] = byte,
            1 => body.insert(i, byte),
            _ => {
                body.remove(i);
            }
        }
        let strict = serde_json::from_slice::<serde_json::Value>(&body);
        if parse_page(body.clone(), &STREAMS[0].shape).is_ok() {
            prop_assert!(strict.is_ok(), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn generated_pages_round_trip_exactly(
        stream in 0..STREAMS.len(),
        events in proptest::collection::vec(("[0-9a-f]{32}", 0i64..4_000_000_000, "(.|[\\x00-\\x1f\"\\\\]){0,40}", any::<bool>()), 0..20)
    ) {
        let shape = STREAMS[stream].shape;
        let items: Vec<serde_json::Value> = events
            .iter()
            .map(|(id, t, title, _)| serde_json::json!({shape.id_field: id, shape.time_field: rfc3339(*t), "title": title, "tags": [{"key": "k", "value": title}]}))
            .collect();
        let wrapped = match shape.envelope {
            Envelope::Array => serde_json::json!(items),
            Envelope::Rows => serde_json::json!({"rows": items, "options": []}),
            Envelope::Data => serde_json::json!({"data": items, "meta": {"dataScanned": "full"}}),
        };
        // Some servers pretty-print; each item must still come out as one line.
        let body = if events.first().is_some_and(|e| e.3) {
            serde_json::to_vec_pretty(&wrapped).unwrap()
        } else {
            serde_json::to_vec(&wrapped).unwrap()
        };
        let page = parse_page(body, &shape).unwrap();
        prop_assert_eq!(page.items.len(), items.len());
        for (p, (item, (id, t, _, _))) in page.items.iter().zip(items.iter().zip(events.iter())) {
            prop_assert_eq!(p.time, *t);
            let key = if shape.key_includes_time {
                seen_key(&format!("{id}@{}", rfc3339(*t)))
            } else {
                seen_key(id)
            };
            prop_assert_eq!(p.key, key);
            prop_assert!(!page.json(p).contains(&b'\n'));
            prop_assert_eq!(&serde_json::from_slice::<serde_json::Value>(page.json(p)).unwrap(), item);
        }
    }

    #[test]
    fn jwks_documents_never_panic_and_yield_only_rsa_signing_keys(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        keys in proptest::collection::vec((
            proptest::option::of(prop_oneof![Just("RSA"), Just("EC"), Just("oct")]),
            proptest::option::of(prop_oneof![Just("RS256"), Just("ES256"), Just("HS256")]),
            proptest::option::of(prop_oneof![Just("sig"), Just("enc")]),
            proptest::option::of("[a-z0-9]{1,8}"),
        ), 0..6),
    ) {
        let _ = parse_jwks(&body);
        let doc = serde_json::json!({"keys": keys.iter().map(|(kty, alg, usage, kid)| serde_json::json!({
            "kty": kty, "alg": alg, "use": usage, "kid": kid, "n": "AQAB", "e": "AQAB",
        })).collect::<Vec<_>>()});
        let parsed = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let expected = keys.iter().filter(|(kty, alg, usage, kid)| {
            *kty == Some("RSA") && alg.is_none_or(|a| a == "RS256") && usage.is_none_or(|u| u == "sig") && kid.is_some()
        }).count();
        prop_assert_eq!(parsed.len(), expected);
    }

    #[test]
    fn push_envelopes_never_panic_and_errors_say_something(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Err(e) = pubsub_options(&body) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn envelopes_with_any_attributes_are_either_options_or_a_clear_400(
        attrs in proptest::collection::btree_map("[a-z_]{1,12}", ".{0,12}", 0..4),
        data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
    ) {
        let envelope = serde_json::json!({"message": {"data": data.map(|d| STANDARD.encode(d)), "attributes": attrs}});
        match pubsub_options(envelope.to_string().as_bytes()) {
            Ok(o) => {
                prop_assert!(attrs.keys().all(|k| k == "streams" || k == "shard" || k.starts_with("goog")));
                prop_assert!(o.shard.index < o.shard.count);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn run_queries_never_panic(query in ".{0,120}") {
        let _ = query_options(&query, Some("token"));
    }

    #[test]
    fn shards_parse_only_to_valid_partitions(s in ".{0,8}") {
        if let Ok(shard) = Shard::parse(&s) {
            prop_assert!(shard.index < shard.count && shard.count <= 64);
        }
    }

    #[test]
    fn timestamps_never_panic_and_round_trip(s in ".{0,40}", t in -62_000_000_000i64..250_000_000_000) {
        let _ = parse_rfc3339(&s);
        prop_assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}

struct Vars(HashMap<&'static str, String>);

impl VariableSource for Vars {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.0.get(name).cloned())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), .. ProptestConfig::default() })]

    /// Any values at all: the configuration loads or lists problems, each naming a real
    /// setting, and no message repeats a value.
    #[test]
    fn configuration_never_panics_and_never_echoes_values(values in proptest::collection::vec("[ -~]{0,30}", SETTINGS.len())) {
        let marker = "QQ7mark";
        let vars = Vars(SETTINGS.iter().zip(values.iter()).map(|(s, v)| (s.name, format!("{marker}{v}"))).collect());
        if let Err(e) = Config::load(&vars) {
            let text = e.to_string();
            prop_assert!(!text.contains(marker), "{}", text);
            for p in &e.problems {
                prop_assert!(SETTINGS.iter().any(|s| s.name == p.setting));
                prop_assert!(!p.message.is_empty());
            }
        }
    }

    #[test]
    fn service_account_keys_of_any_shape_are_an_error_not_a_panic(key in ".{0,200}", json_key in proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{0,20}", 0..6)) {
        for k in [key, serde_json::to_string(&json_key).unwrap()] {
            let vars = Vars(HashMap::from([
                ("gcs_bucket", "bucket".to_string()),
                ("sentry_org", "acme".to_string()),
                ("sentry_auth_token", "sntryu_x".to_string()),
                ("gcp_service_account_key", k.clone()),
            ]));
            match Config::load(&vars) {
                Ok(_) => {}
                Err(e) => {
                    if k.len() >= 6 {
                        prop_assert!(!e.to_string().contains(&k), "the key was echoed");
                    }
                }
            }
        }
    }
}
