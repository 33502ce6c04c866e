//! Micro-benchmark of the hot path: one page of JSON in, parse, de-duplicate, NDJSON out.
//! Runs natively (`cargo run --release --example hot_path`) and in wasm as a WASI command
//! (`scripts/bench.sh` builds it for wasm32-wasip2 and runs it under `collector-host run`).
//!
//! A page is 100 events in the simple serializer's shape (about 750 bytes each, like the
//! simulator's); each round parses it, drops events outside the window, inserts the ids into
//! the delivered set and appends the lines. Prints the median time per 1,000 events.

use std::time::Instant;

use sentry_logs_collector::collect::read::absorb;
use sentry_logs_collector::delivered::SeenSet;
use sentry_logs_collector::sentry::pages::parse_page;
use sentry_logs_collector::streams;
use sentry_logs_collector::time::rfc3339;
use sentry_logs_collector::window::Window;

const PER_PAGE: usize = 100;
const ROUNDS: usize = 400;

fn page(round: usize, t0: i64) -> Vec<u8> {
    let mut items = Vec::with_capacity(PER_PAGE);
    for i in 0..PER_PAGE {
        let n = round * PER_PAGE + i;
        let id = format!(
            "{:016x}{:016x}",
            (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            n
        );
        items.push(format!(
            r#"{{"id":"{id}","eventID":"{id}","groupID":"4001","projectID":"4","event.type":"error","title":"ValueError: checkout failed #{n}","message":"ValueError: checkout failed #{n} in project-4","culprit":"/api/checkout/","location":"app/checkout.py:42","platform":"python","dateCreated":"{}","tags":[{{"key":"environment","value":"production"}},{{"key":"level","value":"error"}},{{"key":"server_name","value":"web-1"}}],"user":{{"id":"42","email":"user@example.com","ip_address":"203.0.113.7","username":null,"name":null,"data":null}},"crashFile":null,"metadata":{{"type":"ValueError","value":"checkout failed","filename":"app/checkout.py","function":"checkout"}}}}"#,
            rfc3339(t0 + (n % 3600) as i64)
        ));
    }
    format!("[{}]", items.join(",")).into_bytes()
}

fn main() {
    let shape = streams::by_name("events").expect("events").shape;
    let t0 = 1_790_000_000;
    let window = Window {
        start: t0,
        end: t0 + 3600,
    };
    let pages: Vec<Vec<u8>> = (0..ROUNDS).map(|r| page(r, t0)).collect();
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let mut seen = SeenSet::default();
    let mut out = Vec::with_capacity(bytes + ROUNDS * PER_PAGE);
    let mut times = Vec::with_capacity(ROUNDS);
    let mut parse_times = Vec::with_capacity(ROUNDS);
    for body in pages {
        let start = Instant::now();
        let parsed = parse_page(body, &shape).expect("a valid page");
        let parsed_at = Instant::now();
        let took = absorb(&parsed, window, 4, &mut seen, &mut out);
        times.push(start.elapsed().as_secs_f64());
        parse_times.push((parsed_at - start).as_secs_f64());
        assert_eq!(took.written, PER_PAGE);
    }
    let per_1000 = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2] * 1000.0 * 1000.0 / PER_PAGE as f64
    };
    let total: f64 = times.iter().sum();
    println!(
        "hot path ({}): {} pages of {PER_PAGE} events ({:.0} bytes each): median {:.3} ms per 1,000 events (parse {:.3} ms, dedup and encode the rest), {:.0} MB/s overall",
        if cfg!(target_arch = "wasm32") { "wasm32-wasip2" } else { "native" },
        ROUNDS,
        bytes as f64 / (ROUNDS * PER_PAGE) as f64,
        per_1000(times),
        per_1000(parse_times),
        bytes as f64 / total / 1e6,
    );
    assert_eq!(
        out.iter().filter(|b| **b == b'\n').count(),
        ROUNDS * PER_PAGE
    );
    // What writing an object costs on top: its content id (name and metadata: a 64-bit hash
    // and the CRC-32C the upload is checked with), against the SHA-256 earlier versions used.
    let events = (ROUNDS * PER_PAGE) as f64 / 1000.0;
    let t = Instant::now();
    let content = sentry_logs_collector::gcs::Content::of(&out);
    let content_ms = t.elapsed().as_secs_f64() * 1000.0 / events;
    let t = Instant::now();
    let digest = sentry_logs_collector::gcs::sha256_hex(&out);
    let sha = t.elapsed().as_secs_f64() * 1000.0 / events;
    println!(
        "object hashing: content id (hash64 + CRC-32C) {content_ms:.3} ms per 1,000 events (SHA-256 alone {sha:.3}) ({} {})",
        content.id,
        &digest[..8]
    );
    delivered_set_at_scale();
}

/// The delivered set at the scale scenario's size: a million ids of ten projects over an
/// hour, added in time order as pages bring them (random ids, as Sentry's are), then each
/// looked up again (what reading an overlap again does), then saved and read back.
fn delivered_set_at_scale() {
    const IDS: u64 = 1_000_000;
    let t0 = 1_790_000_000;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut key = || {
        let mut k = [0u8; 16];
        for half in k.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            half.copy_from_slice(&x.to_le_bytes());
        }
        k
    };
    let ids: Vec<([u8; 16], i64, u64)> = (0..IDS)
        .map(|n| (key(), t0 + (n * 3600 / IDS) as i64, n / 100 % 10))
        .collect();
    let mut seen = SeenSet::default();
    let t = Instant::now();
    for &(k, at, project) in &ids {
        assert!(seen.insert_key(k, at, project));
    }
    let insert = t.elapsed().as_secs_f64() * 1e9 / IDS as f64;
    let t = Instant::now();
    let found = ids
        .iter()
        .filter(|(k, at, _)| seen.contains_at(k, *at))
        .count();
    let lookup = t.elapsed().as_secs_f64() * 1e9 / IDS as f64;
    assert_eq!(found as u64, IDS);
    let t = Instant::now();
    let counts = seen.counts_in(t0 + 30, t0 + 3500);
    let count = t.elapsed().as_secs_f64() * 1e3;
    assert!(counts.values().sum::<u64>() < IDS);
    let mut records = seen.records();
    // Segments hold ids in this order (one segment a slab is what a load reads most).
    sentry_logs_collector::delivered::sort_for_segment(&mut records);
    let t = Instant::now();
    let again = SeenSet::from_records(records.iter().copied(), t0);
    let load = t.elapsed().as_secs_f64() * 1e9 / IDS as f64;
    assert_eq!(again.len() as u64, IDS);
    println!(
        "delivered set, 1,000,000 ids in an hour: insert {insert:.0} ns, look up {lookup:.0} ns, load {load:.0} ns an id; a count over the hour {count:.2} ms"
    );
}
