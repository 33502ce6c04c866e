//! `--max-memory`: the hosted platforms' limit on an instance's linear memory (Akamai Functions
//! and Fermyon Cloud allow 128 MiB). The built component, run with a limit above its initial
//! memory but below what a run with events needs, traps with a message naming the limit and
//! delivers nothing; under 128 MiB the same run succeeds. Cron and HTTP instances, in process
//! and through the `collector-host` binary.

mod common;

use collector_host::Outcome;
use common::*;
use sentry_sim::SimOptions;

const MIB: usize = 1024 * 1024;
/// Above the component's initial memory (20 pages, 1.25 MiB, when this was written) and far
/// below what reading and writing a few hundred events takes.
const TOO_SMALL: usize = 2 * MIB;
const PLATFORM: usize = 128 * MIB;
const SECRET: &str = "0123456789abcdef0123456789abcdef-shared";
const EVENTS: u64 = 400;
/// Longer than the lease a run takes with the rig's 60 s time budget.
const LEASE_WAIT: i64 = 600;

/// Two busy projects, `EVENTS` events between them; no limit from the environment.
async fn rig_with_events(seed: u64) -> Rig {
    let mut rig = Rig::with_history(SimOptions::default(), 3, 2, EVENTS / 2, 0.0, seed).await;
    rig.max_memory = None;
    rig
}

fn assert_names_the_limit(message: &str, limit: &str) {
    assert!(
        message.contains("linear memory would grow to")
            && message.contains(&format!("past the host's --max-memory limit of {limit}"))
            && message.contains("Akamai Functions and Fermyon Cloud allow 128 MiB"),
        "the trap does not name the limit: {message}"
    );
}

/// What a trapped run may have left: asserts it delivered nothing (no object outside the
/// collector's own state, no watermark, no object counted in the window in progress).
async fn assert_nothing_delivered(rig: &mut Rig) {
    let objects = rig.objects().await;
    assert!(
        objects.is_empty(),
        "a trapped run wrote {:?}",
        objects.iter().map(|o| &o.name).collect::<Vec<_>>()
    );
    for (key, value) in rig.kv_snapshot() {
        if !key.ends_with("/checkpoint") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&value).expect("a JSON checkpoint");
        assert!(v["watermark"].is_null(), "{key} advanced: {v}");
        assert!(
            v.pointer("/in_progress/objects")
                .is_none_or(|n| n.as_u64() == Some(0)),
            "{key} counts objects: {v}"
        );
    }
}

/// A trapped instance never released its shard's lease (as on a platform): moves the clock
/// past it so the next run may take the shard over.
fn wait_out_the_lease(rig: &Rig) {
    rig.clock.advance(LEASE_WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_instance_past_max_memory_traps_naming_the_limit_and_delivers_nothing() {
    let mut rig = rig_with_events(61).await;
    let truth = rig.sim.truth(0, rig.clock.now(), rig.clock.now());
    assert_eq!(truth.len() as u64, EVENTS);

    rig.max_memory = Some(TOO_SMALL);
    let inv = rig.run().await;
    let Outcome::Trap(message) = &inv.outcome else {
        panic!(
            "expected a trap under {TOO_SMALL} bytes, got {:?} (peak {} bytes)\nstderr: {}",
            inv.outcome, inv.peak_memory_bytes, inv.stderr
        );
    };
    assert_names_the_limit(message, "2 MiB");
    assert!(
        message.starts_with("linear memory would grow to"),
        "the limit does not lead the message: {message}"
    );
    // The peak is the refused growth's size; what was granted stayed within the limit.
    assert!(
        message.contains(&format!("would grow to {} bytes", inv.peak_memory_bytes)),
        "{message}"
    );
    assert!(
        inv.peak_memory_bytes > TOO_SMALL,
        "{}",
        inv.peak_memory_bytes
    );
    assert!(
        inv.granted_memory_bytes <= TOO_SMALL && inv.granted_memory_bytes > MIB,
        "{}",
        inv.granted_memory_bytes
    );
    // Nothing delivered, no summary printed, no checkpoint advanced.
    assert!(
        !inv.stdout.lines().any(|l| l.starts_with('{')),
        "a trapped run printed a summary: {}",
        inv.stdout
    );
    assert_nothing_delivered(&mut rig).await;

    // The platforms' limit is plenty: the next run takes the shard over and delivers exactly
    // the truth.
    wait_out_the_lease(&rig);
    rig.max_memory = Some(PLATFORM);
    let inv = rig.run().await;
    assert_eq!(
        inv.outcome,
        Outcome::Ok,
        "stderr: {}\nstdout: {}",
        inv.stderr,
        inv.stdout
    );
    assert!(inv.peak_memory_bytes > TOO_SMALL && inv.peak_memory_bytes <= PLATFORM);
    assert_eq!(inv.peak_memory_bytes, inv.granted_memory_bytes);
    let s = summary(&inv);
    assert_eq!(events_summary(&s)["events"], EVENTS, "{s}");
    assert_exact(&rig.delivered().await, &truth);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_below_the_initial_memory_traps_at_instantiation() {
    let mut rig = rig_with_events(65).await;
    rig.max_memory = Some(64 * 1024);
    let inv = rig.run().await;
    let Outcome::Trap(message) = &inv.outcome else {
        panic!("expected a trap, got {:?}", inv.outcome);
    };
    assert_names_the_limit(message, "64 KiB");
    // The initial memory was asked for and refused; nothing ran.
    assert!(
        inv.peak_memory_bytes > 64 * 1024,
        "{}",
        inv.peak_memory_bytes
    );
    assert_eq!(inv.granted_memory_bytes, 0);
    assert!(inv.stdout.is_empty() && inv.stderr.is_empty(), "{inv:?}");
    assert!(rig.all_objects().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_limit_the_peak_is_what_was_granted() {
    let rig = rig_with_events(62).await;
    let inv = rig.run().await;
    assert_eq!(inv.outcome, Outcome::Ok, "stderr: {}", inv.stderr);
    assert_eq!(inv.peak_memory_bytes, inv.granted_memory_bytes);
    assert!(
        inv.peak_memory_bytes > TOO_SMALL,
        "{}",
        inv.peak_memory_bytes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_instances_get_the_limit_too() {
    let mut rig = rig_with_events(63).await;
    rig.set("push_shared_secret", SECRET);
    let auth = format!("Bearer {SECRET}");
    let headers = [("authorization", auth.as_str())];

    // Below even the initial memory: no instance starts, so every request fails.
    rig.max_memory = Some(64 * 1024);
    let served = rig.serve().await;
    let resp = served.request("GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 500, "{}", String::from_utf8_lossy(&resp.body));
    drop(served);

    // Enough to start and answer a health check, too little for a run.
    rig.max_memory = Some(TOO_SMALL);
    let served = rig.serve().await;
    let resp = served.request("GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let resp = served.request("POST", "/run", &headers, b"").await;
    assert_eq!(resp.status, 500, "{}", String::from_utf8_lossy(&resp.body));
    drop(served);
    assert_nothing_delivered(&mut rig).await;

    wait_out_the_lease(&rig);
    rig.max_memory = Some(PLATFORM);
    let served = rig.serve().await;
    let resp = served.request("POST", "/run", &headers, b"").await;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert_eq!(resp.status, 200, "{body}");
    assert_eq!(
        events_summary(&resp.json().unwrap())["events"],
        EVENTS,
        "{body}"
    );
}

/// `collector-host [options] --max-memory SIZE cron` with the rig's manifest, state and
/// variables.
async fn cli_cron(rig: &Rig, max_memory: &str) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector-host"));
    cmd.arg("--from")
        .arg(collector_host::testing::repo_root().join("spin.toml"))
        .arg("--state-dir")
        .arg(&rig.state);
    for (n, v) in &rig.vars {
        cmd.arg("--variable").arg(format!("{n}={v}"));
    }
    cmd.args(["--max-memory", max_memory, "cron"])
        .output()
        .await
        .expect("collector-host runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_takes_max_memory_and_exits_2_when_the_instance_traps() {
    let mut rig = rig_with_events(64).await;
    let out = cli_cron(&rig, "2MiB").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("collector-host: the component trapped"),
        "{stderr}"
    );
    assert_names_the_limit(&stderr, "2 MiB");
    assert_nothing_delivered(&mut rig).await;

    // A size in decimal units is refused before anything runs, naming the flag.
    let out = cli_cron(&rig, "128MB").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid --max-memory \"128MB\"") && stderr.contains("MiB"),
        "{stderr}"
    );

    // The binary runs on the real clock, so the trapped run's lease cannot be waited out
    // here: the same org and events, in a fresh bucket and state.
    let mut rig = rig_with_events(64).await;
    let truth = rig.sim.truth(0, rig.clock.now(), rig.clock.now());
    let out = cli_cron(&rig, "128MiB").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a summary");
    let s: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(events_summary(&s)["events"], EVENTS, "{s}");
    assert_exact(&rig.delivered().await, &truth);
}
