//! `spin.toml` and `spin-cron.toml` declare exactly the settings the config module reads, with
//! the same defaults and secrecy, and differ only by the cron trigger.

use std::collections::BTreeMap;

use sentry_logs_collector::config::SETTINGS;
use toml::Value;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap()
}

#[test]
fn manifest_variables_match_the_settings_table() {
    let manifest = load("spin.toml");
    let vars = manifest["variables"].as_table().unwrap();
    let declared: Vec<&str> = vars.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    expected.sort();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(declared_sorted, expected);
    for s in SETTINGS {
        let decl = vars[s.name].as_table().unwrap();
        let default = decl.get("default").and_then(Value::as_str);
        let required = decl
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let secret = decl.get("secret").and_then(Value::as_bool).unwrap_or(false);
        assert_eq!(default, s.default, "{}: default", s.name);
        assert_eq!(required, s.default.is_none(), "{}: required", s.name);
        assert_eq!(secret, s.secret, "{}: secret", s.name);
    }
}

#[test]
fn every_setting_reaches_the_component_unchanged() {
    let manifest = load("spin.toml");
    let comp = manifest["component"]["collector"]["variables"]
        .as_table()
        .unwrap();
    let expected: BTreeMap<String, Value> = SETTINGS
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                Value::String(format!("{{{{ {} }}}}", s.name)),
            )
        })
        .collect();
    let actual: BTreeMap<String, Value> = comp.clone().into_iter().collect();
    assert_eq!(actual, expected);
}

#[test]
fn outbound_hosts_are_templated_from_origin_settings_only() {
    let manifest = load("spin.toml");
    let hosts: Vec<&str> = manifest["component"]["collector"]["allowed_outbound_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        vec![
            "{{ sentry_api_base }}",
            "{{ sentry_region_hosts }}",
            "{{ gcs_endpoint }}",
            "{{ gcp_token_origin }}",
            "{{ push_jwks_origin }}"
        ]
    );
    assert_eq!(
        manifest["component"]["collector"]["key_value_stores"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn the_cron_manifest_differs_only_by_its_cron_trigger() {
    let plain = load("spin.toml");
    let mut cron = load("spin-cron.toml");
    let triggers = cron["trigger"]["cron"].as_array().unwrap().clone();
    assert_eq!(triggers.len(), 1);
    let t = triggers[0].as_table().unwrap();
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec!["component", "cron_expression"],
        "trigger-cron 0.4.2 rejects other keys"
    );
    let expr = t["cron_expression"].as_str().unwrap();
    assert_eq!(
        expr.split_whitespace().count(),
        6,
        "six fields: sec min hour dom month dow"
    );
    cron["trigger"].as_table_mut().unwrap().remove("cron");
    assert_eq!(plain, cron);
}

/// One row of the configuration reference in `docs/configuration.md`.
#[derive(Debug, PartialEq)]
struct Documented {
    required: bool,
    default: Option<String>,
    secret: bool,
    meaning: String,
}

fn documented_settings() -> BTreeMap<String, Documented> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line
            .trim()
            .strip_prefix('|')
            .and_then(|l| l.strip_suffix('|'))
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 5, "five columns: {line}");
        let name = cells[0].trim_matches('`').to_string();
        let flag = |cell: &str| match cell {
            "yes" => true,
            "" => false,
            other => panic!("{name}: expected yes or nothing, got {other:?}"),
        };
        let default = match cells[2] {
            "" => None,
            "(empty)" => Some(String::new()),
            d => Some(
                d.strip_prefix('`')
                    .and_then(|d| d.strip_suffix('`'))
                    .unwrap_or_else(|| panic!("{name}: default {d:?} not in backticks"))
                    .to_string(),
            ),
        };
        let row = Documented {
            required: flag(cells[1]),
            default,
            secret: flag(cells[3]),
            meaning: cells[4].to_string(),
        };
        assert!(rows.insert(name.clone(), row).is_none(), "{name} twice");
    }
    rows
}

#[test]
fn the_configuration_reference_matches_both_manifests() {
    let documented = documented_settings();
    for manifest in ["spin.toml", "spin-cron.toml"] {
        let manifest_vars = load(manifest)["variables"].as_table().unwrap().clone();
        let declared: Vec<&String> = manifest_vars.keys().collect();
        let listed: Vec<&String> = documented.keys().collect();
        assert_eq!(listed, declared, "{manifest}: the same variables");
        for (name, decl) in &manifest_vars {
            let doc = &documented[name];
            let required = decl
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let default = decl.get("default").and_then(Value::as_str);
            let secret = decl.get("secret").and_then(Value::as_bool).unwrap_or(false);
            assert_eq!(doc.required, required, "{manifest} {name}: required");
            assert_eq!(
                doc.default.as_deref(),
                default,
                "{manifest} {name}: default"
            );
            assert_eq!(doc.secret, secret, "{manifest} {name}: secret");
            assert!(
                doc.required != doc.default.is_some(),
                "{name}: either required or with a default"
            );
            assert!(
                doc.meaning.len() > 20,
                "{name}: the meaning says what it is for"
            );
        }
    }
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(
        readme.contains("(docs/configuration.md)"),
        "the README links the reference"
    );
}
