//! What a run reports: per stream (window, pages, rows, objects, state writes, timing,
//! warnings, error) and for the run as a whole; printed, returned to HTTP callers, kept in KV.

use serde::Serialize;

/// The run's report, printed to the log and returned to HTTP callers.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub trigger: &'static str,
    pub shard: String,
    pub started_at: String,
    pub finished_at: String,
    pub org: String,
    pub region_url: String,
    pub time_budget_secs: u64,
    /// Access tokens minted at the token endpoint during the run (exchange mode).
    pub tokens_minted: u32,
    pub streams: Vec<StreamSummary>,
    /// The backfill tracks that ran (with what live collection left of the run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backfill: Vec<StreamSummary>,
    /// What the run wrote from the webhook inbox's `issue`, `comment` and alert deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Box<DrainSummary>>,
    /// Runs recorded in this state store so far, this one included.
    pub runs: u64,
    /// Milliseconds the run spent computing rather than waiting on HTTP, rate limits or KV.
    pub busy_ms: f64,
    /// Milliseconds the run spent in KV calls.
    pub kv_ms: f64,
    /// The run's wall time in milliseconds, as the component measured it.
    pub elapsed_ms: f64,
}

/// Where a backfill track stands after a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackfillProgress {
    pub start: String,
    pub seam: String,
    /// Read from here to the seam.
    pub read_back_to: String,
    pub done: bool,
    /// Seconds of the range left to read.
    pub secs_left: i64,
    /// Why it read nothing now, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What a save wrote to KV.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveStats {
    pub bytes: u64,
    pub writes: u64,
    /// Bytes of the ids that were new since the last save (28 each).
    pub new_id_bytes: u64,
    /// Keys the stream's state uses after the save.
    pub keys: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectSummary {
    pub name: String,
    pub events: usize,
    pub bytes: usize,
    pub already_present: bool,
}

/// What one run did for the stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream: &'static str,
    /// `backfill` for a backfill track (its `watermark` is how far back it has read, down
    /// from the seam); empty for live collection.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub track: &'static str,
    /// A backfill track: the range it reads, `[start, seam)`, and what is left to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillProgress>,
    /// `i/n`, or `0/1` for the whole org.
    pub shard: String,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// The last window of the run was read to its end (the watermark moved there).
    pub window_finished: bool,
    /// Nothing new to read yet (`now - lag` is not past the watermark).
    pub up_to_date: bool,
    pub watermark: Option<String>,
    pub projects_active: usize,
    /// Projects left out by `max_projects`; their events in those windows are not collected.
    pub projects_cut: usize,
    pub pages: u64,
    /// Lines written: events, issues, audit-log entries or rows, by stream.
    pub events: u64,
    /// `events`: of those, events written from Sentry's `error` webhooks.
    #[serde(skip_serializing_if = "is_zero")]
    pub from_webhooks: u64,
    pub duplicates_dropped: u64,
    pub outside_window_dropped: u64,
    pub objects: Vec<ObjectSummary>,
    pub bytes: u64,
    pub sentry_requests: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub waited_secs: f64,
    pub gcs_requests: u64,
    /// Oldest-first streams: queries started again because they reached the offset cap.
    pub queries_split: u64,
    /// Projects (`events`) or datasets (Explore streams) whose overlap was not read again, or
    /// only from a later minute, because Sentry counted before it exactly what was already
    /// delivered from it.
    pub overlap_skipped: usize,
    /// Items without a readable id or time, set apart in the stream's quarantine prefix after
    /// `BAD_ITEM_TRIES` reads of their page.
    pub quarantined: u64,
    /// What saving the checkpoint wrote to KV: values, bytes, and of those the bytes of ids
    /// new since the save before (28 each); and the keys the stream's state used at the end.
    pub state: StateWrites,
    /// Where the stream's time went, by the component's clock (host calls included).
    pub timing: Timing,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    /// The error may go away by itself (a 5xx, a timeout); otherwise someone must act.
    pub error_is_transient: bool,
    /// The run lost the shard's lease while collecting the stream (why): it stopped without
    /// writing, and the run ends.
    #[serde(skip)]
    pub lease_lost: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a stream's checkpoint saves wrote to KV in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateWrites {
    pub saves: u64,
    pub writes: u64,
    pub bytes: u64,
    pub new_id_bytes: u64,
    /// The most any one save wrote.
    pub max_save_bytes: u64,
    pub keys: u64,
    /// Delivered ids held at the end of the run.
    pub ids: u64,
}

impl StateWrites {
    pub fn add(&mut self, s: SaveStats) {
        self.saves += 1;
        self.writes += s.writes;
        self.bytes += s.bytes;
        self.new_id_bytes += s.new_id_bytes;
        self.max_save_bytes = self.max_save_bytes.max(s.bytes);
        self.keys = s.keys;
    }
}

/// Milliseconds spent, by part of the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// Reading the checkpoint and delivered ids, and settling a pending object.
    pub load_ms: f64,
    /// Saving checkpoints (KV writes included).
    pub save_ms: f64,
    /// Window checks, de-duplication and NDJSON lines, page by page.
    pub absorb_ms: f64,
    /// Hashing (and gzipping) objects before their upload.
    pub hash_ms: f64,
    /// Checking and splitting page bodies into items.
    pub parse_ms: f64,
}

/// What a run's drain of `issue_activity` and `alerts` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainSummary {
    /// Lines written, by folder.
    pub lines: std::collections::BTreeMap<&'static str, u64>,
    /// Deliveries dropped as already written (a retry, a duplicate, an inline write).
    pub duplicates: u64,
    pub objects: Vec<ObjectSummary>,
    /// Deliveries still in the inbox after the drain (any kind).
    pub left: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub error: Option<String>,
}
