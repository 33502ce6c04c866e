//! The deployment guides, as a new user would follow them. Every command in a `sh` block of
//! the README and every page under `docs/` is classified:
//! - run verbatim here: `curl` against `collector-host serve` (as `spin up` would serve it),
//!   with `APP_URL` and `COLLECTOR_SECRET` in the environment; `deploy/gcp/setup.sh` with a
//!   recording `gcloud`; the Kubernetes CronJobs' shell command, through an HTTP proxy that is
//!   the served component;
//! - checked against the manifests: `spin plugins install` (the pinned version), `spin up`,
//!   `spin aka deploy`, `spin cloud deploy` (every variable declared, the required ones given),
//!   `spin aka cron create` (five fields, a route the component serves), `kubectl` (the files
//!   exist and parse, the Secrets hold what the manifests reference);
//! - remote only (a registry, a cloud): listed, so that a new command must be classified here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use collector_host::testing::repo_root;
use common::*;
use sentry_sim::SimOptions;
use serde_json::Value;

const SECRET: &str = "guide-secret-0123456789abcdef0123456789";
const PINNED_CRON_PLUGIN: &str = "0.4.2";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every command line of every `sh` block, continuation lines joined.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let content = trimmed.split(" # ").next().unwrap().trim_end();
        if let Some(head) = content.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
        } else {
            pending.push_str(content);
            out.push(std::mem::take(&mut pending));
        }
    }
    out
}

/// Shell words: plain, '...' and "..." (variables left as written).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ' ' => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The values of a repeated option: `--variable a=b --variable c=d` gives `[a=b, c=d]`.
fn option_values(words: &[String], name: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == name {
            values.extend(it.next().cloned());
        } else if let Some(v) = w.strip_prefix(&format!("{name}=")) {
            values.push(v.to_string());
        }
    }
    values
}

fn manifest_variables(manifest: &str) -> toml::Table {
    let value: toml::Value = toml::from_str(&read(manifest)).unwrap();
    value["variables"].as_table().unwrap().clone()
}

/// A deploy command's `--variable`s name declared variables and give every required one and
/// one Cloud Storage credential.
fn check_variables(line: &str, manifest: &str, words: &[String]) {
    let declared = manifest_variables(manifest);
    let given: BTreeMap<String, String> = option_values(words, "--variable")
        .into_iter()
        .map(|v| {
            let (k, v) = v.split_once('=').unwrap_or_else(|| panic!("{line}: {v}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    for name in given.keys() {
        assert!(
            declared.contains_key(name),
            "{line}: {name} is not a variable of {manifest}"
        );
    }
    for (name, decl) in &declared {
        if decl.get("required").and_then(toml::Value::as_bool) == Some(true) {
            assert!(given.contains_key(name), "{line}: required {name} missing");
        }
    }
    assert!(
        given.contains_key("gcp_service_account_key") || given.contains_key("gcs_access_token"),
        "{line}: no Cloud Storage credential"
    );
    for (name, value) in &given {
        if let Some(file) = value.strip_prefix('@') {
            assert!(
                !file.contains('/'),
                "{line}: {name} reads a file the user makes"
            );
        }
    }
}

/// What the docs' Kubernetes Secrets hold: secret name -> keys (and repository files read).
#[derive(Default, Debug)]
struct Secrets(BTreeMap<String, BTreeSet<String>>);

/// A route of the component, with the query parameters `/run` accepts.
fn is_run_path(path: &str, secret_param: Option<&str>) -> bool {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    route == "/run"
        && query.split('&').filter(|p| !p.is_empty()).all(|p| {
            let name = p.split('=').next().unwrap();
            name == "streams" || name == "shard" || Some(name) == secret_param
        })
}

#[derive(Default)]
struct Plan {
    curls: Vec<String>,
    setup_runs: Vec<String>,
    cron_paths: Vec<String>,
    secrets: Secrets,
    applied: Vec<String>,
    remote: Vec<String>,
}

fn classify(docs: &[(String, String)]) -> Plan {
    let mut plan = Plan::default();
    for (doc, text) in docs {
        for line in commands(text) {
            let w = words(&line);
            let head: Vec<&str> = w.iter().take(4).map(String::as_str).collect();
            match head.as_slice() {
                ["curl", ..] => plan.curls.push(line.clone()),
                ["deploy/gcp/setup.sh", ..] => plan.setup_runs.push(line.clone()),
                ["spin", "plugins", "install", "trigger-cron"] => {
                    assert_eq!(
                        option_values(&w, "--version"),
                        [PINNED_CRON_PLUGIN],
                        "{doc}: {line}"
                    );
                }
                ["spin", "up", ..] => {
                    let manifest = option_values(&w, "-f")
                        .pop()
                        .unwrap_or_else(|| "spin.toml".into());
                    check_variables(&line, &manifest, &w);
                    for rc in option_values(&w, "--runtime-config-file") {
                        toml::from_str::<toml::Table>(&read(&rc)).unwrap();
                    }
                }
                ["spin", "aka" | "cloud", "deploy", ..] => {
                    check_variables(&line, "spin.toml", &w);
                    let given = option_values(&w, "--variable");
                    if let Some(param) = given
                        .iter()
                        .find_map(|v| v.strip_prefix("push_shared_secret_param="))
                    {
                        plan.secrets
                            .0
                            .entry("query-parameter".into())
                            .or_default()
                            .insert(param.to_string());
                    }
                }
                ["spin", "aka", "cron", "create"] => {
                    let schedule = option_values(&w, "--schedule");
                    assert_eq!(schedule.len(), 1, "{line}");
                    assert_eq!(
                        schedule[0].split_whitespace().count(),
                        5,
                        "{doc}: Akamai cron schedules have five fields: {line}"
                    );
                    let path = option_values(&w, "-p");
                    assert_eq!(path.len(), 1, "{line}");
                    plan.cron_paths.push(path[0].clone());
                }
                ["kubectl", "-n", _, "create"] => {
                    assert_eq!(&w[4..6], ["secret", "generic"], "{line}");
                    let name = w[6].clone();
                    let mut keys = BTreeSet::new();
                    for source in option_values(&w, "--from-file")
                        .into_iter()
                        .chain(option_values(&w, "--from-literal"))
                    {
                        let (key, value) = source.split_once('=').unwrap();
                        if value.starts_with("deploy/") {
                            assert!(repo_root().join(value).exists(), "{line}: {value}");
                            keys.insert(format!("{key}={value}"));
                        }
                        keys.insert(key.to_string());
                    }
                    plan.secrets.0.insert(name, keys);
                }
                ["kubectl", "-n", _, "apply"] => {
                    let files = option_values(&w, "-f");
                    assert_eq!(files.len(), 1, "{line}");
                    plan.applied.push(files[0].clone());
                }
                ["spin", "aka", "login", ..]
                | ["spin", "registry", "push", ..]
                | ["kubectl", "create", "namespace", ..]
                | ["gcloud", "scheduler", "jobs", "create" | "run"]
                | ["gcloud", "storage", "ls" | "rm", ..]
                | ["rustup", "target", "add", ..]
                | ["cargo", "build", ..]
                | ["scripts/demo.sh", ..]
                | ["scripts/test.sh", ..]
                | ["scripts/bench.sh", ..] => plan.remote.push(line.clone()),
                _ => panic!("{doc}: a command this test does not know how to check: {line}"),
            }
            if head.starts_with(&["gcloud", "scheduler", "jobs", "create"]) {
                // Cloud Scheduler's OIDC token must be for the URL it calls.
                let uri = option_values(&w, "--uri");
                assert_eq!(uri, option_values(&w, "--oidc-token-audience"), "{line}");
                assert!(uri[0].ends_with("/run"), "{line}");
                assert_eq!(
                    option_values(&w, "--schedule")[0]
                        .split_whitespace()
                        .count(),
                    5
                );
            }
        }
    }
    plan
}

/// The README and every page under `docs/`.
fn docs() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    names.sort();
    names.push("README.md".into());
    names
        .into_iter()
        .map(|d| {
            let text = read(&d);
            (d, text)
        })
        .collect()
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn ystr<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

#[test]
fn every_guide_command_is_known_and_consistent_with_the_manifests() {
    let plan = classify(&docs());
    assert!(plan.curls.len() >= 2, "the spin up guide's curl commands");
    assert_eq!(plan.cron_paths.len(), 1);
    assert!(!plan.remote.is_empty());
    // The cron plugin version is the one spin-cron.toml and the README name.
    assert!(read("spin-cron.toml").contains(&format!("trigger-cron plugin {PINNED_CRON_PLUGIN}")));
    let cron: toml::Value = toml::from_str(&read("spin-cron.toml")).unwrap();
    let expr = cron["trigger"]["cron"][0]["cron_expression"]
        .as_str()
        .unwrap();
    assert_eq!(expr.split_whitespace().count(), 6);
    assert!(
        read("docs/deploy.md").contains(&format!("`{expr}` is every five minutes")),
        "the guide quotes the manifest's expression"
    );
    // The Akamai cron path is a /run the component accepts with the documented parameter.
    let param = plan.secrets.0["query-parameter"].iter().next().cloned();
    assert!(
        is_run_path(&plan.cron_paths[0], param.as_deref()),
        "{}",
        plan.cron_paths[0]
    );

    // Runtime config examples: Redis for the default store; outbound HTTP keeps pooling on.
    let redis: toml::Table = toml::from_str(&read("deploy/runtime-config/redis.toml")).unwrap();
    let store = redis["key_value_store"]["default"].as_table().unwrap();
    assert_eq!(store["type"].as_str(), Some("redis"));
    let url = store["url"].as_str().unwrap();
    assert!(url.starts_with("redis://") || url.starts_with("rediss://"));
    let outbound: toml::Table =
        toml::from_str(&read("deploy/runtime-config/outbound-http.toml")).unwrap();
    let table = outbound["outbound_http"].as_table().unwrap();
    assert_eq!(
        table
            .get("connection_pooling")
            .and_then(toml::Value::as_bool),
        Some(true),
        "an [outbound_http] table without connection_pooling = true turns pooling off"
    );
    for key in table.keys() {
        assert!(
            [
                "connection_pooling",
                "max_concurrent_requests",
                "max_connections"
            ]
            .contains(&key.as_str()),
            "Spin rejects unknown [outbound_http] keys: {key}"
        );
    }
    assert!(
        !(table.contains_key("max_concurrent_requests") && table.contains_key("max_connections"))
    );

    // Kubernetes: every applied file exists and parses; the SpinApp's variables are the
    // component's, its Secrets are the ones the guide creates, Redis is where the runtime
    // config points.
    let namespace = "sentry-collector";
    assert_eq!(
        plan.applied,
        [
            "deploy/kubernetes/redis.yaml",
            "deploy/kubernetes/spinapp.yaml",
            "deploy/kubernetes/cronjobs.yaml"
        ]
    );
    let redis_docs = yaml_documents("deploy/kubernetes/redis.yaml");
    let service = redis_docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Redis Service");
    let host = format!(
        "redis://{}.{namespace}.svc.cluster.local:{}",
        ystr(service, &["metadata", "name"]),
        service["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    assert_eq!(url, host, "the runtime config points at the Redis Service");
    let app = &yaml_documents("deploy/kubernetes/spinapp.yaml")[0];
    assert_eq!(app["kind"], "SpinApp");
    let rc_secret = ystr(app, &["spec", "runtimeConfig", "loadFromSecret"]);
    assert!(
        plan.secrets.0[rc_secret].contains("runtime-config.toml=deploy/runtime-config/redis.toml"),
        "{:?}",
        plan.secrets
    );
    let declared = manifest_variables("spin.toml");
    let mut named = BTreeSet::new();
    for var in app["spec"]["variables"].as_sequence().unwrap() {
        let name = ystr(var, &["name"]);
        assert!(declared.contains_key(name), "SpinApp variable {name}");
        named.insert(name.to_string());
        if let Some(secret) = var.get("valueFrom") {
            let secret_name = ystr(secret, &["secretKeyRef", "name"]);
            let key = ystr(secret, &["secretKeyRef", "key"]);
            assert!(
                plan.secrets
                    .0
                    .get(secret_name)
                    .is_some_and(|k| k.contains(key)),
                "{secret_name}/{key} is not created by the guide"
            );
            assert_eq!(
                declared[name].get("secret").and_then(toml::Value::as_bool),
                Some(true),
                "{name} comes from a Secret but is not secret in spin.toml"
            );
        } else {
            assert!(var.get("value").is_some(), "{name}");
            assert_ne!(
                declared[name].get("secret").and_then(toml::Value::as_bool),
                Some(true),
                "secret {name} written inline"
            );
        }
    }
    for required in ["gcs_bucket", "sentry_org", "sentry_auth_token"] {
        assert!(named.contains(required), "SpinApp lacks {required}");
    }
    let jobs = yaml_documents("deploy/kubernetes/cronjobs.yaml");
    assert!(jobs.len() >= 2);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job["kind"], "CronJob");
        let spec = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let env = &container["env"][0];
        let secret_name = ystr(env, &["valueFrom", "secretKeyRef", "name"]);
        let key = ystr(env, &["valueFrom", "secretKeyRef", "key"]);
        assert!(plan.secrets.0[secret_name].contains(key));
        assert_eq!(
            ystr(job, &["spec", "schedule"]).split_whitespace().count(),
            5
        );
        let script = container["args"][0].as_str().expect("the job's script");
        assert!(
            script.contains(&format!("/run?shard={i}/{}\"", jobs.len())),
            "job {i}: {script}"
        );
        assert!(
            !script.contains("-H") && !script.contains("Bearer $COLLECTOR_SECRET\" http"),
            "the secret must not be a curl argument"
        );
    }
}

/// Runs `line` with bash in `dir`, with `env`.
fn bash(line: &str, dir: &std::path::Path, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(line).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_local_commands_run_verbatim() {
    let plan = classify(&docs());
    let mut rig = Rig::with_history(SimOptions::default(), 4, 2, 30, 0.0, 81).await;
    rig.set("push_shared_secret", SECRET);
    rig.set("push_shared_secret_param", "key");
    let served = rig.serve().await;
    let app_url = format!("http://{}", served.addr);
    let env = [
        ("APP_URL", app_url.clone()),
        ("COLLECTOR_SECRET", SECRET.to_string()),
    ];
    let here = repo_root();

    // The spin up guide's curl commands, exactly as written.
    for line in &plan.curls {
        let out = tokio::task::block_in_place(|| bash(line, &here, &env));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{line}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(body.get("error").is_none(), "{line}: {body}");
        assert!(!stdout.contains(SECRET));
    }

    // The Akamai cron's path runs collection, whichever method the cron sends; HEAD never
    // does.
    let path = plan.cron_paths[0].replace("$COLLECTOR_SECRET", SECRET);
    for method in ["GET", "POST"] {
        let resp = served.request(method, &path, &[], b"").await;
        assert_eq!(
            resp.status,
            200,
            "{method}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        let summary: Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(
            summary.get("runs").is_some() || summary.get("skipped").is_some(),
            "{summary}"
        );
    }
    assert_eq!(served.request("HEAD", &path, &[], b"").await.status, 405);

    // The cluster runs two shards; this state was collected unsharded above, so it moves
    // to two shards first, as an operator would (a run of another layout is refused).
    let auth = format!("Bearer {SECRET}");
    let migrated = served
        .request(
            "POST",
            "/migrate?shards=2",
            &[("authorization", auth.as_str())],
            b"",
        )
        .await;
    assert_eq!(
        migrated.status,
        200,
        "{}",
        String::from_utf8_lossy(&migrated.body)
    );

    // Each Kubernetes CronJob's command, verbatim, reaching the component through a proxy
    // (the cluster's Service name does not resolve here).
    for job in yaml_documents("deploy/kubernetes/cronjobs.yaml") {
        let container = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
        let script = container["args"][0]
            .as_str()
            .expect("the job's script")
            .to_string();
        let proxied = [
            ("COLLECTOR_SECRET", SECRET.to_string()),
            ("http_proxy", app_url.clone()),
            ("no_proxy", String::new()),
        ];
        let out = tokio::task::block_in_place(|| bash(&script, &here, &proxied));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_str(&stdout).unwrap();
        let shard = script.split("shard=").nth(1).unwrap().trim_end_matches('"');
        assert!(
            summary
                .to_string()
                .contains(&format!("\"shard\":\"{shard}\"")),
            "{summary}"
        );
    }
    // The events arrived once each through the unsharded runs; the two shards, migrated to,
    // go on from there and deliver none of them again.
    let truth = rig.sim.truth(0, rig.clock.now(), rig.clock.now());
    assert!(!truth.is_empty());
    assert_exact(&rig.delivered().await, &truth);
}

#[test]
fn the_gcp_setup_commands_of_the_guide_run_verbatim_against_a_recording_gcloud() {
    let plan = classify(&docs());
    assert!(plan.setup_runs.len() >= 2, "{:?}", plan.setup_runs);
    for line in &plan.setup_runs {
        let dir = collector_host::testing::temp_dir("gcloud");
        // Records every call; answers describe with "not found" (nothing exists yet) and the
        // project number lookup with a number.
        std::fs::write(
            dir.join("gcloud"),
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$(dirname \"$0\")/calls\"\ncase \"$*\" in\n  *'projects describe'*) echo 123456789012 ;;\n  *' describe '*) exit 1 ;;\nesac\nexit 0\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("gcloud"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let here = repo_root();
        let out = bash(line, &here, &[("PATH", path.clone())]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{line}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
        if line.contains("--dry-run") {
            assert!(calls.is_empty(), "a dry run called gcloud: {calls}");
            assert!(stdout.contains("+ gcloud pubsub subscriptions create"));
            continue;
        }
        // A real run performs exactly what its dry run prints (plus the existence checks).
        let dry = bash(
            &line.replacen("deploy/gcp/setup.sh", "deploy/gcp/setup.sh --dry-run", 1),
            &here,
            &[("PATH", path)],
        );
        let printed: Vec<String> = String::from_utf8_lossy(&dry.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("+ gcloud "))
            .map(|l| words(l).join(" ").replace("PROJECT_NUMBER", "123456789012"))
            .filter(|l| !l.starts_with("projects describe"))
            .collect();
        let performed: Vec<String> = calls
            .lines()
            .filter(|l| !l.contains(" describe "))
            .map(str::to_string)
            .collect();
        assert_eq!(performed, printed);
        assert!(performed
            .iter()
            .any(|c| c.starts_with("iam service-accounts keys create writer-key.json")));
    }
}
