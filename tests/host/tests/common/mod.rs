//! A collection rig for tests: the Sentry simulator, fake-gcs-server, and the built component
//! in the host, sharing one simulated clock.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use collector_host::google::{Accept, AuthProxy, FakeGcs, StoredObject, TestKey};
use collector_host::manifest::ProvidedVariables;
use collector_host::testing::{build_component, repo_root, temp_dir};
use collector_host::{App, HostOptions, Invocation, Outcome, Trigger};
use sentry_sim::{Event, Rng, Sim, SimClock, SimOptions, SimServer};
use serde_json::Value;

pub const BUCKET: &str = "secops-sentry";
pub const PREFIX: &str = "sentry/";

pub struct Rig {
    pub clock: SimClock,
    pub sim: Sim,
    pub sim_server: SimServer,
    pub gcs: FakeGcs,
    pub state: PathBuf,
    pub vars: Vec<(String, String)>,
    /// Every object seen so far with the generation it had when first seen.
    pub generations: BTreeMap<String, String>,
    /// What the guest printed while served over HTTP.
    pub output: std::sync::Arc<std::sync::Mutex<String>>,
    /// `--runtime-config-file`, if any.
    pub runtime_config: Option<PathBuf>,
    /// `--max-memory` in bytes, if any: the most linear memory an instance may have. Starts
    /// from `COLLECTOR_MAX_MEMORY` (such as `128MiB`, to run every test or the benchmark
    /// under the hosted platforms' limit); a test may set or clear it.
    pub max_memory: Option<usize>,
}

impl Rig {
    /// A simulator (with `options`), an emulator, and variables pointing the component at
    /// both, with a pre-minted access token (the emulator ignores auth).
    pub async fn start(options: SimOptions) -> Rig {
        build_component().expect("the component builds");
        let clock = SimClock::default();
        let sim = Sim::new(options, clock.clone());
        let sim_server = sim.serve(0).await.expect("simulator starts");
        let gcs = FakeGcs::start(BUCKET)
            .await
            .expect("fake-gcs-server starts");
        let vars = vec![
            ("gcs_bucket", BUCKET.to_string()),
            ("gcs_prefix", PREFIX.to_string()),
            ("gcs_endpoint", gcs.url.clone()),
            ("gcs_access_token", "ya29.test-static-token".to_string()),
            ("sentry_org", sim.options.org.clone()),
            ("sentry_auth_token", sim.options.token.clone()),
            ("sentry_api_base", sim_server.url()),
            ("sentry_region_hosts", sim_server.url()),
            ("time_budget", "60s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Rig {
            clock,
            sim,
            sim_server,
            gcs,
            state: temp_dir("rig"),
            vars,
            generations: BTreeMap::new(),
            output: Default::default(),
            runtime_config: None,
            max_memory: max_memory_from_env(),
        }
    }

    /// A rig whose simulator enforces no rate limits (the test is about something else),
    /// with `projects` projects.
    pub async fn without_rate_limits(projects: u64) -> Rig {
        let rig = Rig::start(SimOptions {
            rate_limits: false,
            ..SimOptions::default()
        })
        .await;
        add_projects(&rig.sim, projects);
        rig
    }

    /// A rig whose org has `projects` projects, the first `busy` of them with `per_project`
    /// events from three hours to one hour ago (`late_share` of them ingested up to 30 minutes
    /// late); the first window reaches back six hours.
    pub async fn with_history(
        options: SimOptions,
        projects: u64,
        busy: u64,
        per_project: u64,
        late_share: f64,
        seed: u64,
    ) -> Rig {
        let mut rig = Rig::start(options).await;
        add_projects(&rig.sim, projects);
        let now = rig.clock.now();
        let mut rng = Rng::new(seed);
        for p in 1..=busy {
            rig.sim.generate(
                &mut rng,
                p,
                per_project,
                now - 3 * 3600,
                now - 3600,
                late_share,
                1800,
            );
        }
        rig.set("lookback", "6h");
        rig
    }

    /// The simulated clock as a function (for the token endpoint and the checking proxy).
    pub fn now_fn(&self) -> std::sync::Arc<dyn Fn() -> f64 + Send + Sync> {
        let clock = self.clock.clone();
        std::sync::Arc::new(move || clock.now_f64())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.retain(|(k, _)| k != name);
    }

    pub fn options(&self) -> HostOptions {
        HostOptions {
            manifest: Some(repo_root().join("spin.toml")),
            state_dir: Some(self.state.clone()),
            runtime_config: self.runtime_config.clone(),
            variables: ProvidedVariables {
                cli: self.vars.clone(),
                env: Vec::new(),
            },
            clock_offset: Some(self.clock.offset()),
            output_sink: Some(self.output.clone()),
            max_memory: self.max_memory,
        }
    }

    /// One cron run through the host.
    pub async fn run(&self) -> Invocation {
        self.run_with(|_| {}).await
    }

    /// One cron run, after `prepare` has seen the loaded app (to inject KV faults).
    pub async fn run_with(&self, prepare: impl FnOnce(&App)) -> Invocation {
        let app = App::load(&self.options(), Trigger::Cron).expect("the app loads");
        prepare(&app);
        app.run_cron(self.clock.now() as u64)
            .await
            .expect("the host runs the component")
    }

    /// Puts a proxy that checks bearer tokens (and can inject faults) in front of the
    /// emulator, and points the component at it.
    pub async fn behind_proxy(&mut self, accept: Accept) -> AuthProxy {
        let proxy = AuthProxy::start(self.gcs.addr(), accept)
            .await
            .expect("the proxy starts");
        self.set("gcs_endpoint", &proxy.url());
        proxy
    }

    /// Switches the component to the OAuth token exchange with `key` at `tokens` (a token
    /// endpoint serving `/token`).
    pub fn use_token_exchange(
        &mut self,
        key: &TestKey,
        tokens: &collector_host::testing::RecordingServer,
    ) {
        self.unset("gcs_access_token");
        self.set("gcs_auth_mode", "token_exchange");
        self.set("gcp_token_origin", &tokens.url());
        self.set(
            "gcp_service_account_key",
            &key.key_file(&format!("{}/token", tokens.url())),
        );
    }

    /// Serves the HTTP export until the returned server is dropped.
    pub async fn serve(&self) -> Served {
        self.serve_with(|_| {}).await
    }

    /// [`Rig::serve`], after `prepare` has seen the loaded app (to make its KV store slow).
    pub async fn serve_with(&self, prepare: impl FnOnce(&App)) -> Served {
        let app = App::load(&self.options(), Trigger::Http).expect("the app loads");
        prepare(&app);
        let app = std::sync::Arc::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(collector_host::serve::serve(app, listener, async {
            let _ = stopped.await;
        }));
        Served { addr, _stop: stop }
    }

    /// Every key and value in the component's KV store.
    pub fn kv_snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let app = App::load(&self.options(), Trigger::Cron).expect("the app loads");
        let store = app.store("default").expect("the default store");
        store
            .keys()
            .expect("listing keys")
            .into_iter()
            .map(|k| {
                let v = store.get(&k).expect("reading").unwrap_or_default();
                (k, v)
            })
            .collect()
    }

    /// The keys in the component's KV store and the size of each value.
    pub fn kv_entries(&self) -> Vec<(String, usize)> {
        self.kv_snapshot()
            .into_iter()
            .map(|(k, v)| (k, v.len()))
            .collect()
    }

    /// One cron run that must succeed; returns its summary.
    pub async fn run_ok(&self) -> Value {
        let inv = self.run().await;
        assert_eq!(
            inv.outcome,
            Outcome::Ok,
            "stderr: {}\nstdout: {}",
            inv.stderr,
            inv.stdout
        );
        summary(&inv)
    }

    /// Every object the streams wrote (the collector's own state under
    /// `{PREFIX}collector-state/` left out); also checks that no object seen before changed
    /// generation.
    pub async fn objects(&mut self) -> Vec<StoredObject> {
        let state = format!("{PREFIX}collector-state/");
        let mut objects = self.all_objects().await;
        objects.retain(|o| !o.name.starts_with(&state));
        objects
    }

    /// The shards' lease epochs (`{PREFIX}collector-state/leases/...`), oldest first.
    pub async fn lease_objects(&mut self) -> Vec<StoredObject> {
        let leases = format!("{PREFIX}collector-state/leases/");
        let mut objects = self.all_objects().await;
        objects.retain(|o| o.name.starts_with(&leases));
        objects.reverse();
        objects
    }

    /// Every object in the bucket, the collector's state included; also checks that no
    /// object seen before changed generation.
    pub async fn all_objects(&mut self) -> Vec<StoredObject> {
        let objects = self.gcs.list("").await.expect("listing the bucket");
        for o in &objects {
            match self.generations.get(&o.name) {
                Some(g) => assert_eq!(g, &o.generation, "{} was overwritten", o.name),
                None => {
                    self.generations
                        .insert(o.name.clone(), o.generation.clone());
                }
            }
        }
        objects
    }

    /// Every line of every object of `stream` (under `{PREFIX}{stream}/`): the parsed line and
    /// the object's name. Asserts each object is NDJSON ending in a newline.
    pub async fn stream_lines(&mut self, stream: &str) -> Vec<(Value, String)> {
        let mut lines = Vec::new();
        let prefix = format!("{PREFIX}{stream}/");
        for o in self.objects().await {
            if !o.name.starts_with(&prefix) {
                continue;
            }
            let bytes = self.gcs.download(&o.name).await.expect("download");
            let text = if o.name.ends_with(".gz") {
                let mut out = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut out,
                )
                .expect("gzip");
                out
            } else {
                String::from_utf8(bytes).expect("UTF-8 object")
            };
            assert!(
                text.ends_with('\n'),
                "{} does not end with a newline",
                o.name
            );
            for line in text.lines() {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: a line is not JSON ({e}): {line}", o.name));
                assert!(v.is_object(), "{}: a line is not an object", o.name);
                lines.push((v, o.name.clone()));
            }
        }
        lines
    }

    /// The `field` of every line of the stream's objects, each line parsed and dropped in turn
    /// (millions of lines never held as JSON values at once). Panics on a line without it.
    pub async fn stream_ids(&mut self, stream: &str, field: &str) -> Vec<String> {
        let prefix = format!("{PREFIX}{stream}/");
        let mut ids = Vec::new();
        for o in self.objects().await {
            if !o.name.starts_with(&prefix) {
                continue;
            }
            let bytes = self.gcs.download(&o.name).await.expect("download");
            assert!(!o.name.ends_with(".gz"), "stream_ids reads plain NDJSON");
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Map<String, Value> = serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("{}: a line is not a JSON object: {e}", o.name));
                let id = v
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{}: a line without {field}", o.name));
                ids.push(id.to_string());
            }
        }
        ids
    }

    /// Every events line: (eventID, the parsed line, object name). Asserts each line has an
    /// eventID (or, from a webhook, an event_id), and that the bucket holds no object outside the streams' prefixes (and their
    /// quarantine prefixes).
    pub async fn delivered(&mut self) -> Vec<(String, Value, String)> {
        for o in self.objects().await {
            assert!(
                STREAMS.iter().any(|s| {
                    o.name.starts_with(&format!("{PREFIX}{s}/"))
                        || o.name.starts_with(&format!("{PREFIX}{s}-quarantine/"))
                }),
                "unexpected object {}",
                o.name
            );
        }
        self.stream_lines("events")
            .await
            .into_iter()
            .map(|(v, name)| {
                // The pull's lines carry `eventID`; an `error` webhook's event, `event_id`.
                let id = v["eventID"]
                    .as_str()
                    .or_else(|| v["event_id"].as_str())
                    .unwrap_or_else(|| panic!("{name}: a line has no eventID: {v}"))
                    .to_string();
                (id, v, name)
            })
            .collect()
    }
}

/// `COLLECTOR_MAX_MEMORY` (a `--max-memory` size such as `128MiB`), if set.
pub fn max_memory_from_env() -> Option<usize> {
    let text = std::env::var("COLLECTOR_MAX_MEMORY").ok()?;
    match collector_host::app::parse_memory_size(&text) {
        Ok(bytes) => Some(bytes),
        Err(e) => panic!("COLLECTOR_MAX_MEMORY={text:?} is not a --max-memory size: {e:#}"),
    }
}

/// A runtime config putting the default store in Redis at `url`.
pub fn redis_runtime_config(url: &str) -> PathBuf {
    let path = temp_dir("redis-runtime-config").join("runtime-config.toml");
    std::fs::write(
        &path,
        format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    path
}

/// Every stream's object prefix (below `PREFIX`).
pub const STREAMS: &[&str] = &[
    "events",
    "issues",
    "audit_logs",
    "transactions",
    "spans",
    "logs",
    "issue_activity",
    "alerts",
];

pub fn summary(inv: &Invocation) -> Value {
    let line = inv
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary in stdout: {}", inv.stdout));
    serde_json::from_str(line).expect("the summary is JSON")
}

/// The events stream's part of a run summary.
pub fn events_summary(summary: &Value) -> &Value {
    stream_summary(summary, "events")
}

/// One stream's part of a run summary.
pub fn stream_summary<'a>(summary: &'a Value, stream: &str) -> &'a Value {
    summary["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["stream"] == stream))
        .unwrap_or_else(|| panic!("the summary has no {stream} stream: {summary}"))
}

/// Asserts delivered ids equal the truth exactly: nothing lost, nothing twice.
pub fn assert_exact(delivered: &[(String, Value, String)], truth: &[Event]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _, _) in delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} ids delivered more than once: {:?}",
        duplicated.len(),
        duplicated.iter().take(5).collect::<Vec<_>>()
    );
    let truth_ids: std::collections::BTreeSet<&str> =
        truth.iter().map(|e| e.event_id.as_str()).collect();
    let got: std::collections::BTreeSet<&str> = counts.keys().copied().collect();
    let lost: Vec<_> = truth_ids.difference(&got).collect();
    let extra: Vec<_> = got.difference(&truth_ids).collect();
    assert!(
        lost.is_empty(),
        "{} of {} events lost, e.g. {:?}",
        lost.len(),
        truth_ids.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        extra.is_empty(),
        "{} events delivered that are outside the truth, e.g. {:?}",
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
}

/// Adds `per_project` events to each of projects `1..=projects` in `[from, to)`, all visible
/// now, and returns them.
pub fn generate_new(
    sim: &Sim,
    rng: &mut Rng,
    projects: u64,
    per_project: u64,
    (from, to): (i64, i64),
) -> Vec<Event> {
    let before: std::collections::BTreeSet<String> =
        sim.all_events().into_iter().map(|e| e.event_id).collect();
    for p in 1..=projects {
        sim.generate(rng, p, per_project, from, to, 0.0, 0);
    }
    sim.all_events()
        .into_iter()
        .filter(|e| !before.contains(&e.event_id))
        .collect()
}

/// An org of `projects` projects named `project-N`.
pub fn add_projects(sim: &Sim, projects: u64) {
    for id in 1..=projects {
        sim.add_project(id, &format!("project-{id}"));
    }
}

pub fn rng(seed: u64) -> Rng {
    Rng::new(seed)
}

/// A running `collector-host serve`; stops when dropped.
pub struct Served {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    pub async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> collector_host::testing::SimpleResponse {
        collector_host::testing::http_request(self.addr, method, target, headers, body)
            .await
            .expect("the request completes")
    }
}
