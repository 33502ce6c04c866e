//! The state one stream's collection carries through a run (checkpoint, delivered ids,
//! object buffer, summary), how it stops, and the limits every part of it shares.

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::Config;
use crate::delivered::SeenSet;
use crate::gcs::{self, GcsClient};
use crate::lease::Lease;
use crate::ports::Env;
use crate::report::StreamSummary;
use crate::sentry::client::SentryClient;
use crate::sentry::SentryError;
use crate::shard::Shard;
use crate::streams::StreamDef;

/// Rows one Discover / Explore query can page through by offset: reaching it means the
/// window may hold more, so the query starts again at the last timestamp read.
pub const OFFSET_CAP: u64 = 10_000;

/// An object is written once this much NDJSON has been read. SecOps ingests a few large
/// objects better than many small ones; this keeps the component's memory far under the
/// platforms' 128 MiB (the buffer, plus the multipart copy, plus a page).
pub const OBJECT_TARGET_BYTES: usize = 8 * 1024 * 1024;

/// Room left in an object's buffer for the multipart framing the upload adds in place.
pub(super) const MULTIPART_SLACK: usize = 4096;

/// A page holding an item without a readable id or time is read this many times (a glitch
/// passes); then the item is quarantined and the stream moves on.
pub const BAD_ITEM_TRIES: u32 = 3;

/// The "project" a quarantined item is recorded under in the delivered-id set: it keeps the
/// item from being set apart twice, and stays out of every project's overlap count (the item's
/// own time may be unreadable, so it cannot be counted where Sentry counts it).
pub(crate) const QUARANTINED: u64 = crate::delivered::SET_APART;

/// Which track a collection runs: live (windows forward from the watermark, never before the
/// origin) or a backfill (windows back from `seam`, the live track's origin, down to `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Live,
    Backfill { start: i64, seam: i64 },
}

/// Events read but not yet written.
#[derive(Default)]
pub(super) struct Buffer {
    pub(super) ndjson: Vec<u8>,
    pub(super) events: usize,
}

pub(super) struct Collector<'a, 'e> {
    pub(super) def: &'static StreamDef,
    pub(super) env: Env<'e>,
    pub(super) config: &'a Config,
    pub(super) sentry: &'a SentryClient<'e>,
    pub(super) gcs: &'a GcsClient<'e>,
    pub(super) lease: &'a Lease,
    pub(super) shard: Shard,
    pub(super) store: CheckpointStore<'a>,
    pub(super) checkpoint: Checkpoint,
    pub(super) seen: SeenSet,
    pub(super) buffer: Buffer,
    pub(super) summary: StreamSummary,
    /// A sampled-results warning was given in this run.
    pub(super) warned_partial: bool,
    /// The org's project ids, once a project answered as if deleted.
    pub(super) projects_now: Option<Vec<u64>>,
    /// Reads of the current page that held items without a readable id or time.
    pub(super) bad_reads: u32,
    /// Oldest-first streams: the latest time read in the current window by this run (every
    /// row before it was read: they come in time order).
    pub(super) read_up_to: Option<i64>,
    /// The window being planned is not the run's first: if the search of its overlap's
    /// counts runs out of time, it is left to the next run rather than read whole.
    pub(super) may_defer: bool,
    /// This run already gave the stream its share once: a window it plans now is planned
    /// with what another stream left, and is deferred like a later window.
    pub(super) second_pass: bool,
    pub(super) track: Track,
}

impl Collector<'_, '_> {
    /// What object names carry after the stream: the shard, and `.backfill` on that track.
    pub(super) fn name_tag(&self) -> String {
        match self.track {
            Track::Live => self.shard.suffix(),
            Track::Backfill { .. } => format!("{}.backfill", self.shard.suffix()),
        }
    }
}

/// A failure, and whether a later attempt may succeed without anyone changing anything.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) transient: bool,
}

impl Failure {
    /// The checkpoint could not be read (a KV fault: the next run may succeed).
    pub(super) fn unreadable(e: String) -> Failure {
        Failure {
            message: format!("the checkpoint could not be read: {e}"),
            transient: true,
        }
    }
}

impl From<gcs::GcsError> for Failure {
    fn from(e: gcs::GcsError) -> Failure {
        Failure {
            transient: matches!(e, gcs::GcsError::Transient(_)),
            message: format!("Cloud Storage: {e}"),
        }
    }
}

pub(crate) enum Stop {
    OutOfTime,
    /// Reading failed; what was read before can still be written.
    Failed(Failure),
    /// Writing an object or the checkpoint failed: nothing more may be checkpointed in this
    /// run, or the checkpoint could move past events that never landed.
    WriteFailed(Failure),
    /// The run lost the shard's lease (why): it must write nothing more.
    Lost(String),
}

impl From<SentryError> for Stop {
    fn from(e: SentryError) -> Self {
        let transient = e.is_transient();
        match e {
            SentryError::OutOfTime => Stop::OutOfTime,
            other => Stop::Failed(Failure {
                message: format!("Sentry: {other}"),
                transient,
            }),
        }
    }
}

pub(super) fn ms_since(env: Env, start: f64) -> f64 {
    ((env.clock.now() - start) * 1000.0 * 10.0).round() / 10.0
}
