//! The benchmark: the built component through `collector-host`, against the Sentry simulator
//! with sentry.io's real rate limits and 50 ms per request, and fake-gcs-server. Prints one
//! table row per scenario.
//!
//! ```text
//! cargo run -p collector-host --example bench -- [steady] [backlog] [wide] [full] [scale] [backfill] [webhooks]
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

/// (e) Scale: `events` and `spans` each at `BENCH_SCALE_ROWS` rows an hour (1,000,000 by
/// default) in ten projects, the default 1 h overlap and 25 s budget. A first run collects the
/// hour before it, then runs `BENCH_SCALE_RUNS` (2) ten minutes apart each collect the ten
/// minutes since, carrying the whole hour's ids. A run is as many 25-second invocations
/// ("slices") as it takes; each is one row. The Explore limits are sentry.io's; the project
/// events limit (60 requests a minute, so at most 360,000 events an hour for one token) is
/// lifted, since no client could keep up with this rate under it.
async fn scale() {
    let rate: u64 = env_or("BENCH_SCALE_ROWS", 1_000_000);
    let runs: u64 = env_or("BENCH_SCALE_RUNS", 2);
    let mut rig = Rig::start(SimOptions {
        latency: Duration::ZERO,
        unlimited: vec!["project-events"],
        ..SimOptions::default()
    })
    .await;
    if rig.max_memory.is_none() {
        rig.max_memory = Some(128 * 1024 * 1024);
    }
    add_projects(&rig.sim, 10);
    // `BENCH_SCALE_STREAMS=spans` (or `events`) measures one of the two alone.
    let streams = std::env::var("BENCH_SCALE_STREAMS").unwrap_or_else(|_| "events,spans".into());
    rig.set("streams", &streams);
    // The first window reaches back as far as the next one's overlap will (an hour before
    // `now - lag`), so the second window finds nothing it never read in its overlap.
    rig.set("lookback", "61m");
    rig.set("lag", "1m");
    rig.set("time_budget", "25s");
    let mut rng = Rng::new(15);
    let per_project = rate / 10;
    let t0 = rig.clock.now();
    let generate = |rig: &Rig, rng: &mut Rng, from: i64, to: i64| {
        let share = (to - from) as f64 / HOUR as f64;
        let n = (per_project as f64 * share) as u64;
        for p in 1..=10u64 {
            // Two projects are mobile apps whose events arrive up to 20 minutes late.
            let late = if p <= 2 { 0.02 } else { 0.0 };
            rig.sim.generate(rng, p, n, from, to, late, 1200);
            rig.sim
                .generate_rows(rng, "spans", p, n, from, to, late, 1200);
        }
    };
    generate(&rig, &mut rng, t0 - HOUR, t0);
    println!(
        "\n(e) scale: events and spans at {rate} rows an hour each, 10 projects, overlap 1h, time_budget 25s, --max-memory {} MiB",
        rig.max_memory.unwrap() / 1024 / 1024
    );
    println!("| run | slice | wall s | within 25 s | peak wasm MiB | compute ms | events rows | spans rows | objects | KV bytes written | of which new ids | KV writes | largest save | keys in use (events, spans) | ids held (events, spans) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut totals: Vec<ScaleRun> = Vec::new();
    let mut watermarks: BTreeMap<&str, i64> = BTreeMap::new();
    let mut last_slice_at = 0;
    // The measured runs, then one more (not measured, "settle") after the late rows have all
    // arrived, so the check below covers rows that arrived after a run had read past them.
    for run in 0..=runs + 1 {
        let settle = run == runs + 1;
        if settle {
            rig.clock.advance(1200 + 120);
        } else if run > 0 {
            let from = rig.clock.now();
            generate(&rig, &mut rng, from, from + 600);
            rig.clock.advance(600);
        }
        let mut total = ScaleRun::default();
        for slice in 1..=200 {
            let app = collector_host::App::load(&rig.options(), collector_host::Trigger::Cron)
                .expect("the app loads");
            let t = Instant::now();
            last_slice_at = rig.clock.now();
            let inv = app
                .run_cron(rig.clock.now() as u64)
                .await
                .expect("the host runs the component");
            let wall = t.elapsed().as_secs_f64();
            assert_eq!(
                inv.outcome,
                collector_host::Outcome::Ok,
                "run {run} slice {slice}: {}",
                inv.stderr
            );
            let s = summary(&inv);
            let none = serde_json::json!({"window_finished": true});
            let find = |name: &str| {
                s["streams"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["stream"] == name))
                    .unwrap_or(&none)
            };
            let (ev, sp) = (find("events"), find("spans"));
            let state = |v: &Value, k: &str| v["state"][k].as_u64().unwrap_or(0);
            let both = |k: &str| state(ev, k) + state(sp, k);
            let rows = |v: &Value| v["events"].as_u64().unwrap_or(0);
            let objects = ev["objects"].as_array().map_or(0, Vec::len)
                + sp["objects"].as_array().map_or(0, Vec::len);
            let busy = s["busy_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {slice} | {wall:.1} | {} | {} | {busy:.0} | {} | {} | {objects} | {} | {} | {} | {} | {}, {} | {}, {} |",
                if settle {
                    "settle".to_string()
                } else {
                    run.to_string()
                },
                if wall <= 25.0 { "yes" } else { "no" },
                mib(inv.peak_memory_bytes as f64),
                rows(ev),
                rows(sp),
                both("bytes"),
                both("new_id_bytes"),
                both("writes"),
                state(ev, "max_save_bytes").max(state(sp, "max_save_bytes")),
                state(ev, "keys"),
                state(sp, "keys"),
                state(ev, "ids"),
                state(sp, "ids"),
            );
            total.slices += 1;
            total.rows += rows(ev) + rows(sp);
            let read = |v: &Value| {
                rows(v)
                    + v["duplicates_dropped"].as_u64().unwrap_or(0)
                    + v["outside_window_dropped"].as_u64().unwrap_or(0)
            };
            total.read += read(ev) + read(sp);
            total.objects += objects as u64;
            total.busy_ms += busy;
            total.kv_ms += s["kv_ms"].as_f64().unwrap_or(0.0);
            total.kv_bytes += both("bytes");
            total.new_id_bytes += both("new_id_bytes");
            total.kv_writes += both("writes");
            total.peak = total.peak.max(inv.peak_memory_bytes);
            total.over_budget += u64::from(wall > 25.0);
            total.keys = total.keys.max(state(ev, "keys")).max(state(sp, "keys"));
            for (stream, v) in [("events", ev), ("spans", sp)] {
                if let Some(w) = v["watermark"].as_str().and_then(parse_rfc3339) {
                    watermarks.insert(stream, w);
                }
                for part in ["parse_ms", "absorb_ms", "hash_ms", "load_ms", "save_ms"] {
                    *total.timing.entry(part).or_default() +=
                        v["timing"][part].as_f64().unwrap_or(0.0);
                }
            }
            if std::env::var("BENCH_VERBOSE").is_ok() {
                for (name, v) in [("events", ev), ("spans", sp)] {
                    let mut brief = v.clone();
                    brief["objects"] = Value::Null;
                    eprintln!("run {run} slice {slice} {name}: {brief}");
                }
            }
            let done = |v: &Value| v["window_finished"] == true || v["up_to_date"] == true;
            assert!(
                ev["error"].is_null() && sp["error"].is_null(),
                "run {run} slice {slice}: {ev}\n{sp}"
            );
            if done(ev) && done(sp) {
                break;
            }
        }
        if !settle {
            totals.push(total);
        }
    }
    let kv_keys = rig.kv_entries();
    let key_count = |stream: &str| {
        kv_keys
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("v1/{stream}/")))
            .count()
    };
    println!("\n| run | slices | over 25 s | rows | objects | peak wasm MiB | compute ms per 1,000 rows (per 1,000 read) | KV ms per 1,000 rows | KV bytes per object | KV bytes / new id bytes | KV writes per object | most keys of a stream |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, t) in totals.iter().enumerate() {
        println!(
            "| {run} | {} | {} | {} | {} | {} | {:.2} ({:.2} of {} read) | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
            t.slices,
            t.over_budget,
            t.rows,
            t.objects,
            mib(t.peak as f64),
            t.busy_ms / (t.rows.max(1) as f64 / 1000.0),
            t.busy_ms / (t.read.max(1) as f64 / 1000.0),
            t.read,
            t.kv_ms / (t.rows.max(1) as f64 / 1000.0),
            t.kv_bytes as f64 / t.objects.max(1) as f64,
            t.kv_bytes as f64 / t.new_id_bytes.max(1) as f64,
            t.kv_writes as f64 / t.objects.max(1) as f64,
            t.keys,
        );
    }
    for (run, t) in totals.iter().enumerate() {
        let per_1000 = |v: f64| v / (t.rows.max(1) as f64 / 1000.0);
        let mut parts: Vec<String> = t
            .timing
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", per_1000(*v)))
            .collect();
        // Load and save include their KV waits, which the compute figure leaves out.
        let rest = t.busy_ms + t.kv_ms - t.timing.values().sum::<f64>();
        parts.push(format!("the rest {:.2}", per_1000(rest)));
        println!(
            "run {run}: of the compute, ms per 1,000 rows: {}",
            parts.join(", ")
        );
    }
    println!(
        "KV keys at the end: events {}, spans {}, all {}",
        key_count("events"),
        key_count("spans"),
        kv_keys.len()
    );
    // Exactly once: every row Sentry held up to each stream's watermark when the last slice
    // started, once (later ones are the next run's).
    let now = last_slice_at;
    let want_events: Vec<(String, i64, i64)> = rig
        .sim
        .truth(
            t0 - HOUR,
            watermarks.get("events").copied().unwrap_or(0),
            now,
        )
        .into_iter()
        .map(|e| (e.event_id, e.date_created - t0, e.received_at - t0))
        .collect();
    let want_spans: Vec<(String, i64, i64)> = rig
        .sim
        .rows_truth(
            "spans",
            t0 - HOUR,
            watermarks.get("spans").copied().unwrap_or(0),
            now,
        )
        .into_iter()
        .map(|r| (r.id, r.timestamp - t0, r.received_at - t0))
        .collect();
    for (stream, field, want) in [
        ("events", "eventID", want_events),
        ("spans", "id", want_spans),
    ] {
        if !streams.contains(stream) {
            continue;
        }
        let got = rig.stream_ids(stream, field).await;
        let (lost, duplicated) = compare(&want, &got);
        println!(
            "{stream}: {} rows in Sentry's range, {} lines in the bucket: {lost} lost, {duplicated} duplicated",
            want.len(),
            got.len()
        );
    }
}

#[derive(Default)]
struct ScaleRun {
    slices: u64,
    rows: u64,
    /// Rows read, duplicates and rows outside the window included.
    read: u64,
    objects: u64,
    busy_ms: f64,
    kv_ms: f64,
    kv_bytes: u64,
    new_id_bytes: u64,
    kv_writes: u64,
    peak: usize,
    over_budget: u64,
    keys: u64,
    timing: BTreeMap<&'static str, f64>,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (lost, duplicated) of `got` against `want` (id, time and ingestion time from the start).
fn compare(want: &[(String, i64, i64)], got: &[String]) -> (usize, usize) {
    let mut counts: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for id in got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let lost: Vec<_> = want
        .iter()
        .filter(|(id, _, _)| !counts.contains_key(id.as_str()))
        .collect();
    if std::env::var("BENCH_VERBOSE").is_ok() {
        for (id, t, r) in lost.iter().take(20) {
            eprintln!("lost {id}: time {t}, ingested {r}");
        }
    }
    let lost = lost.len();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    (lost, duplicated)
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

/// (f) Backfill: seven days of history (5 busy projects of 20, 1,000 events a day each) read
/// by a backfill while a cron every five minutes (25-second budget) keeps live collection
/// current. Prints the runs it took, its requests against the lower bound (a page per 100
/// events of each project, one count per window), and its throughput against what sentry.io's
/// project-events limit (60 a minute, one at a time) allows.
async fn backfill() {
    const DAY: i64 = 86_400;
    const INTERVAL: i64 = 300;
    let mut rig = rig(20).await;
    let busy = [3u64, 7, 11, 15, 19];
    let mut rng = Rng::new(6);
    let now = rig.clock.now();
    for p in busy {
        rig.sim
            .generate(&mut rng, p, 7 * 1000, now - 7 * DAY - HOUR, now, 0.0, 60);
    }
    rig.set("lookback", "1h");
    rig.set("time_budget", "25s");
    let first = rig.run_ok().await;
    let origin = parse_rfc3339(events_summary(&first)["window_start"].as_str().unwrap()).unwrap();
    let start = origin - 7 * DAY;
    rig.set("backfill_start", &sentry_sim::time::rfc3339(start));
    let (rows, bound_pages) = {
        let mut per_project: BTreeMap<u64, u64> = BTreeMap::new();
        for e in rig.sim.truth(start, origin, rig.clock.now()) {
            *per_project.entry(e.project_id).or_default() += 1;
        }
        let pages: u64 = per_project.values().map(|n| n.div_ceil(100)).sum();
        (per_project.values().sum::<u64>(), pages)
    };
    let mut runs = 0;
    let mut requests = 0;
    let mut delivered = 0;
    let mut wall = 0.0;
    let mut max_lag = 0;
    let t = Instant::now();
    loop {
        let from = rig.clock.now();
        for p in busy {
            rig.sim.generate(
                &mut rng,
                p,
                1000 * INTERVAL as u64 / DAY as u64 + 1,
                from,
                from + INTERVAL,
                0.0,
                60,
            );
        }
        rig.clock.advance(INTERVAL);
        let s = rig.run_ok().await;
        runs += 1;
        wall += s["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let live = events_summary(&s);
        assert_eq!(live["up_to_date"], true, "live fell behind: {live}");
        let wm = parse_rfc3339(live["watermark"].as_str().unwrap()).unwrap();
        max_lag = max_lag.max(rig.clock.now() - wm);
        let Some(b) = s["backfill"].as_array().and_then(|a| a.first()) else {
            continue;
        };
        requests += b["sentry_requests"].as_u64().unwrap_or(0);
        delivered += b["events"].as_u64().unwrap_or(0);
        if b["backfill"]["done"] == true {
            break;
        }
        assert!(runs < 2000, "the backfill did not finish");
    }
    assert_eq!(
        delivered, rows,
        "the backfill delivered every event of the range once"
    );
    let windows = (7 * DAY as u64).div_ceil(24 * 3600);
    let bound = bound_pages + windows;
    let min_secs = rate_limit_minimum(0.0, windows, bound_pages);
    // The token's project-events window is 60 requests a minute; a backfill leaves a third of
    // it to the next run, and a run is one window long at most here (25 s).
    let per_run_cap = PROJECT_EVENTS_LIMIT.requests as u64 * 2 / 3;
    println!(
        "| scenario | events | runs (5 min apart, 25 s budget) | Sentry requests | lower bound | ratio | requests a run (cap {per_run_cap}) | calendar time s (runs x 5 min) | rate-limit minimum s (the token to itself) | component wall s (all runs) | events/s of run time | live lag max s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| (f) backfill of 7 days | {rows} | {runs} | {requests} | {bound} | {:.2} | {:.0} | {} | {min_secs:.1} | {wall:.1} | {:.0} | {max_lag} |",
        requests as f64 / bound as f64,
        requests as f64 / runs as f64,
        runs * INTERVAL as u64,
        rows as f64 / wall,
    );
    eprintln!("host wall {:.0} s", t.elapsed().as_secs_f64());
}

/// Webhook intake latency through `collector-host serve`: `BENCH_DELIVERIES` (600) signed
/// deliveries (issue changes and error events as the simulator makes them), 50 in flight at
/// once, each timed from connect to the last byte of the answer; then the same with inline
/// flush (each `issue` delivery also written to fake-gcs-server while Sentry waits); then
/// inbox only on a slow shared store (`BENCH_KV_DELAY_MS`, 50 ms, before every KV operation).
async fn webhooks() {
    use sentry_sim::webhooks::{deliveries, post, Mischief};
    const SECRET: &str = "b3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nch0000";
    let n = env_or("BENCH_DELIVERIES", 600) as usize;
    let kv_delay = Duration::from_millis(env_or("BENCH_KV_DELAY_MS", 50));
    for (inline, delay) in [
        (false, Duration::ZERO),
        (true, Duration::ZERO),
        (false, kv_delay),
    ] {
        let mut rig = Rig::without_rate_limits(5).await;
        rig.set("sentry_webhook_secret", SECRET);
        rig.set("webhook_inbox_max", "700");
        rig.set("webhook_inline", if inline { "true" } else { "false" });
        let mut rng = Rng::new(5);
        let now = rig.clock.now();
        for p in 1..=5 {
            rig.sim
                .generate(&mut rng, p, 100, now - 3000, now - 60, 0.0, 0);
        }
        let events = rig.sim.all_events();
        let issues = rig.sim.issue_versions(now);
        let none = Mischief::NONE;
        let mut hooks = Vec::new();
        for i in 0..n {
            let (resource, body) = if i % 3 == 2 {
                ("error", rig.sim.error_webhook(&events[i % events.len()]))
            } else {
                let issue = &issues[i % issues.len()];
                let name = format!("user-{i}");
                let body = rig
                    .sim
                    .change_issue(issue.id.parse().unwrap(), "assigned", (i as u64, &name))
                    .unwrap();
                ("issue", body)
            };
            hooks.extend(deliveries(resource, &body, SECRET, now, &mut rng, none));
        }
        let served = rig
            .serve_with(|app| {
                app.store("default")
                    .unwrap()
                    .set_faults(collector_host::kv::KvFaults {
                        delay,
                        ..Default::default()
                    })
            })
            .await;
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
        let wall = Instant::now();
        let tasks: Vec<_> = hooks
            .into_iter()
            .map(|h| {
                let (addr, gate) = (served.addr, gate.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let t = Instant::now();
                    let (status, _) = post(addr, "/sentry/webhook", &h).await.unwrap();
                    (status, t.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        let mut ms = Vec::new();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for t in tasks {
            let (status, took) = t.await.unwrap();
            *statuses.entry(status).or_default() += 1;
            ms.push(took);
        }
        let wall = wall.elapsed().as_secs_f64();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        println!(
            "webhooks{}: {} deliveries, 50 at once, in {wall:.1} s: median {:.1} ms, p99 {:.1} ms, max {:.1} ms; answers {statuses:?}",
            if inline {
                " (inline flush)".to_string()
            } else if !delay.is_zero() {
                format!(" (KV {} ms per operation)", delay.as_millis())
            } else {
                String::new()
            },
            ms.len(),
            at(0.5),
            at(0.99),
            at(1.0),
        );
        drop(served);
        // Then one run drains what the inbox kept.
        rig.clock.advance(120);
        let t = Instant::now();
        let s = rig.run_ok().await;
        println!(
            "  drained by one run in {:.1} s: {} issue lines, {} events by webhook",
            t.elapsed().as_secs_f64(),
            s["webhooks"]["lines"]["issue_activity"],
            s["streams"][0]["from_webhooks"]
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
    if want("scale") {
        scale().await;
    }
    if want("backfill") {
        backfill().await;
    }
    if want("webhooks") {
        webhooks().await;
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
        if want("scale") || want("backfill") || want("webhooks") {
            return;
        }
        eprintln!(
            "usage: bench [steady] [backlog] [wide] [full] [scale] [backfill] [webhooks] [hot-path]"
        );
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
