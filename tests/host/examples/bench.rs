//! The benchmark: the built component through `collector-host`, against the Sentry simulator
//! with sentry.io's real rate limits and 50 ms per request, and fake-gcs-server. Prints one
//! table row per scenario.
//!
//! ```text
//! cargo run -p collector-host --example bench -- [steady] [backlog] [wide] [full]
//! ```
//!
//! Figures: Sentry requests against the lower bound (1 pre-scan + the sum over active projects
//! of ceil(events / per_page)); wall time against the minimum the rate limits impose on those
//! requests (the simulator's 60-requests-a-minute windows, one request in flight, 50 ms each);
//! 429s; events per second; the component's compute time per 1,000 events (its wall time less
//! every wait on HTTP and rate limits, measured inside the guest); the instance's peak linear
//! memory; the objects written.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use sentry_sim::{time::parse_rfc3339, Rng, SimOptions, PROJECT_EVENTS_LIMIT};
use serde_json::Value;

/// 50 ms per request; `BENCH_LATENCY_MS` changes it (0 shows the component's own overhead).
fn latency() -> Duration {
    Duration::from_millis(
        std::env::var("BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    )
}
const HOUR: i64 = 3600;

struct Row {
    name: &'static str,
    events: u64,
    requests: u64,
    project_event_requests: u64,
    bound: u64,
    wall: f64,
    min_wall: f64,
    avoidable_429s: u64,
    busy_ms: f64,
    peak_memory: usize,
    objects: Vec<u64>,
}

/// The least time `other` requests and then `pages` project-events requests can take from
/// `start`: 50 ms each, one at a time, at most 60 project-events requests per minute-aligned
/// window (the simulator's windows, like sentry.io's).
fn rate_limit_minimum(start: f64, other: u64, pages: u64) -> f64 {
    let latency = latency().as_secs_f64();
    let window = PROJECT_EVENTS_LIMIT.window_secs as f64;
    let mut t = start + other as f64 * latency;
    let mut window_start = (t / window).floor() * window;
    let mut used = 0;
    for _ in 0..pages {
        if t >= window_start + window {
            window_start = (t / window).floor() * window;
            used = 0;
        }
        if used >= PROJECT_EVENTS_LIMIT.requests {
            window_start += window;
            t = t.max(window_start);
            used = 0;
        }
        used += 1;
        t += latency;
    }
    t - start
}

/// Events per project with an event time in `[start, end)`, and the lower bound on requests
/// to read them.
fn bound(rig: &Rig, start: i64, end: i64, per_page: u64) -> (u64, u64) {
    let mut per_project: BTreeMap<u64, u64> = BTreeMap::new();
    for e in rig.sim.truth(start, end, rig.clock.now()) {
        *per_project.entry(e.project_id).or_default() += 1;
    }
    let events = per_project.values().sum();
    let pages: u64 = per_project.values().map(|n| n.div_ceil(per_page)).sum();
    (events, 1 + pages)
}

async fn rig(projects: u64) -> Rig {
    let mut rig = Rig::start(SimOptions {
        latency: latency(),
        ..SimOptions::default()
    })
    .await;
    add_projects(&rig.sim, projects);
    rig.set("lag", "1m");
    rig.set("time_budget", "20m");
    rig
}

/// One measured run: its figures, with `range` the part of the window holding new events.
async fn measure(
    rig: &mut Rig,
    name: &'static str,
    range: Option<(i64, i64)>,
    per_page: u64,
) -> Row {
    // Loading the app (reading the manifest, the compiled component from wasmtime's cache)
    // is the host's start-up, not the run's.
    let app = collector_host::App::load(&rig.options(), collector_host::Trigger::Cron)
        .expect("the app loads");
    rig.sim.reset_counters();
    let started = rig.clock.now_f64();
    let t = Instant::now();
    let inv = app
        .run_cron(rig.clock.now() as u64)
        .await
        .expect("the host runs the component");
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(
        inv.outcome,
        collector_host::Outcome::Ok,
        "{name}: {}\n{}",
        inv.stderr,
        inv.stdout
    );
    let s = summary(&inv);
    if std::env::var("BENCH_VERBOSE").is_ok() {
        eprintln!(
            "{name}: host wall {wall:.3} s, component wall {} ms, compute {} ms",
            s["elapsed_ms"], s["busy_ms"]
        );
        eprintln!("{}", inv.stderr);
    }
    let ev = events_summary(&s);
    assert_eq!(ev["window_finished"], true, "{name}: {ev}");
    let (start, end) = range.unwrap_or_else(|| {
        let t = |k: &str| parse_rfc3339(ev[k].as_str().unwrap()).unwrap();
        (t("window_start"), t("window_end"))
    });
    let (events, bound) = bound(rig, start, end, per_page);
    assert_eq!(ev["events"].as_u64(), Some(events), "{name}: {ev}");
    let c = rig.sim.counters();
    let pages = c.requests.get("project-events").copied().unwrap_or(0);
    let requests: u64 = c.requests.values().sum();
    let objects = ev["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["bytes"].as_u64().unwrap())
        .collect();
    Row {
        name,
        events,
        requests,
        project_event_requests: pages,
        bound,
        wall,
        min_wall: rate_limit_minimum(started, requests - pages, pages),
        avoidable_429s: c.avoidable_429s,
        busy_ms: s["busy_ms"].as_f64().unwrap_or(f64::NAN),
        peak_memory: inv.peak_memory_bytes,
        objects,
    }
}

/// (a) 100 projects, 5 busy at 2,000 events an hour; an hourly run in steady state.
async fn steady() -> Row {
    let mut rig = rig(100).await;
    let busy = [7u64, 23, 42, 64, 88];
    let mut rng = Rng::new(1);
    let now = rig.clock.now();
    // An hour of history, collected by a first run that is not measured.
    for p in busy {
        rig.sim
            .generate(&mut rng, p, 2000, now - HOUR, now, 0.0, 60);
    }
    rig.set("lookback", "2h");
    let warm = rig.run_ok().await;
    let watermark = parse_rfc3339(events_summary(&warm)["watermark"].as_str().unwrap()).unwrap();
    let from = rig.clock.now();
    for p in busy {
        rig.sim
            .generate(&mut rng, p, 2000, from, from + HOUR, 0.0, 60);
    }
    rig.clock.advance(HOUR);
    let end = rig.clock.now() - 60;
    measure(
        &mut rig,
        "(a) steady state, hourly run",
        Some((watermark, end)),
        100,
    )
    .await
}

/// (b) a backlog of 24 hours and 50,000 events across 20 projects.
async fn backlog() -> Row {
    let mut rig = rig(20).await;
    let mut rng = Rng::new(2);
    let now = rig.clock.now();
    for p in 1..=20 {
        rig.sim
            .generate(&mut rng, p, 2500, now - 24 * HOUR + 60, now - 120, 0.0, 60);
    }
    rig.set("lookback", "24h");
    measure(&mut rig, "(b) backlog: 24 h, 50,000 events", None, 100).await
}

/// (c) 1,000 projects, 10 of them active.
async fn wide() -> Row {
    let mut rig = rig(1000).await;
    let mut rng = Rng::new(3);
    let now = rig.clock.now();
    let per_project = std::env::var("BENCH_WIDE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    for p in (1..=1000).step_by(100) {
        rig.sim
            .generate(&mut rng, p, per_project, now - HOUR, now - 120, 0.0, 60);
    }
    rig.set("lookback", "2h");
    measure(&mut rig, "(c) 1,000 projects, 10 active", None, 100).await
}

/// (d) one project read with `full=true` (10 events a page), events of about 20 KB.
async fn full() -> Row {
    let mut rig = rig(1).await;
    let mut rng = Rng::new(4);
    let now = rig.clock.now();
    for i in 0..1000u64 {
        rig.sim.add_event(sentry_sim::Event {
            event_id: format!("{:016x}{:016x}", rng.next_u64(), i),
            project_id: 1,
            group_id: 1000 + i % 40,
            date_created: now - HOUR + (i as i64 * 3),
            received_at: now - HOUR + (i as i64 * 3),
            title: format!("ValueError: checkout failed #{i}"),
            padding: 20_000,
        });
    }
    rig.set("lookback", "2h");
    rig.set("sentry_full_events", "true");
    measure(&mut rig, "(d) full=true, 20 KB events", None, 10).await
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0 / 1024.0)
}

fn print(rows: &[Row]) {
    println!(
        "| scenario | events | Sentry requests (project events) | lower bound | ratio | wall s | rate-limit minimum s | ratio | avoidable 429s | events/s | compute ms per 1,000 events | peak wasm memory MiB | objects: count, MiB each |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let sizes: Vec<String> = r.objects.iter().map(|b| mib(*b as f64)).collect();
        println!(
            "| {} | {} | {} ({}) | {} | {:.2} | {:.1} | {:.1} | {:.2} | {} | {:.0} | {:.2} | {} | {}: {} |",
            r.name,
            r.events,
            r.requests,
            r.project_event_requests,
            r.bound,
            r.requests as f64 / r.bound as f64,
            r.wall,
            r.min_wall,
            r.wall / r.min_wall,
            r.avoidable_429s,
            r.events as f64 / r.wall,
            r.busy_ms / (r.events as f64 / 1000.0),
            mib(r.peak_memory as f64),
            r.objects.len(),
            sizes.join(", "),
        );
    }
}

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let all = wanted.is_empty();
    let want = |n: &str| all || wanted.iter().any(|w| w == n);
    let mut rows = Vec::new();
    if want("steady") {
        rows.push(steady().await);
    }
    if want("wide") {
        rows.push(wide().await);
    }
    if want("full") {
        rows.push(full().await);
    }
    if want("backlog") {
        rows.push(backlog().await);
    }
    let mut hot_path = None;
    if want("hot-path") {
        // Built by scripts/bench.sh with
        // `cargo build --target wasm32-wasip2 --release --example hot_path --no-default-features`.
        let wasm = collector_host::testing::repo_root()
            .join("target/wasm32-wasip2/release/examples/hot_path.wasm");
        let (ok, out) = collector_host::app::run_command(&wasm, &[])
            .await
            .expect("the wasm hot-path benchmark runs");
        assert!(ok, "the wasm hot-path benchmark failed: {out}");
        hot_path = Some(out);
    }
    if rows.is_empty() && hot_path.is_none() {
        eprintln!("usage: bench [steady] [backlog] [wide] [full] [hot-path]");
        std::process::exit(2);
    }
    if let Some(out) = hot_path {
        print!("{out}");
    }
    if rows.is_empty() {
        return;
    }
    print(&rows);
    let v: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::json!({"scenario": r.name, "requests": r.requests, "bound": r.bound, "wall": r.wall, "min_wall": r.min_wall}))
        .collect();
    eprintln!("{}", serde_json::to_string(&v).unwrap());
}
