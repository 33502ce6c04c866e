//! Everything the component keeps between runs, in Spin KV, under versioned keys.
//!
//! Limits that hold on every Spin platform (Fermyon Cloud enforces them): keys of at most
//! 255 bytes, values of at most 1 MB, at most 1,024 keys. State never lives in the bucket:
//! the SecOps feed would ingest it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ports::KeyValue;

pub const MAX_KEY_BYTES: usize = 255;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The KV key scheme, in one place.
pub mod keys {
    /// The org's region URL, cached with its fetch time.
    pub const REGION: &str = "v1/region";
    /// Counters and outcome of the most recent run.
    pub const LAST_RUN: &str = "v1/last-run";
    /// An access token from the JWT-bearer exchange, until five minutes before it expires.
    pub const GCS_TOKEN: &str = "v1/gcs-token";
}

/// Reads a JSON record. A record that no longer parses is reported, not silently replaced.
pub fn load<T: DeserializeOwned>(kv: &dyn KeyValue, key: &str) -> Result<Option<T>, String> {
    match kv.get(key).map_err(|e| format!("KV get {key}: {e}"))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("KV record {key} is unreadable: {e}")),
    }
}

/// Writes a JSON record, refusing anything over the platform limits; returns its size.
pub fn save<T: Serialize>(kv: &dyn KeyValue, key: &str, value: &T) -> Result<usize, String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("KV key {key} is longer than {MAX_KEY_BYTES} bytes"));
    }
    let bytes = serde_json::to_vec(value).map_err(|e| format!("KV record {key}: {e}"))?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "KV record {key} is {} bytes, over the {MAX_VALUE_BYTES}-byte limit",
            bytes.len()
        ));
    }
    kv.set(key, &bytes)
        .map_err(|e| format!("KV set {key}: {e}"))?;
    Ok(bytes.len())
}

/// The cached result of region discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// The `sentry_api_base` and `sentry_org` it was discovered for: a change invalidates it.
    pub api_base: String,
    pub org: String,
    pub region_url: String,
    pub fetched_at: i64,
}

/// What `/status` and the next run know about the last run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub runs: u64,
    pub trigger: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Warnings kept in a stream's status record (the summary has them all).
const MAX_STATUS_WARNINGS: usize = 20;

/// What `/status` shows for one stream (and shard), written at the end of each run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub stream: String,
    pub shard: String,
    pub finished_at: i64,
    pub watermark: Option<i64>,
    pub window_finished: bool,
    pub pages: u64,
    pub events: u64,
    pub objects: usize,
    pub bytes: u64,
    pub error: Option<String>,
    /// The last run's warnings (a quarantined item, a deleted project, sampled data...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl StreamStatus {
    pub const PREFIX: &'static str = "v1/status/";

    /// `state_name` is the stream with its shard suffix.
    pub fn key(state_name: &str) -> String {
        format!("{}{state_name}", Self::PREFIX)
    }

    pub fn from_summary(
        s: &crate::report::StreamSummary,
        watermark: Option<i64>,
        now: i64,
    ) -> StreamStatus {
        StreamStatus {
            stream: s.stream.to_string(),
            shard: s.shard.clone(),
            finished_at: now,
            watermark,
            window_finished: s.window_finished,
            pages: s.pages,
            events: s.events,
            objects: s.objects.len(),
            bytes: s.bytes,
            error: s.error.clone(),
            // Bounded, so the record stays far under a KV value's 1 MB.
            warnings: s
                .warnings
                .iter()
                .take(MAX_STATUS_WARNINGS)
                .map(|w| w.chars().take(1000).collect())
                .collect(),
        }
    }
}
