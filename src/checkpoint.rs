//! A stream's checkpoint: the watermark, the window in progress with the position inside it,
//! and where the ids already delivered (that a later read may return again) are kept.
//!
//! It lives in KV and what a save writes grows with what changed, not with the org: the ids
//! an object added go to new append-only segments (one KV value each, by quarter-hour slab
//! of the ids' times), named by the checkpoint record. A slab whose segments pass the stream's
//! key budget is rewritten as one; a slab the overlap has passed is dropped whole. The record
//! is written last, so a crash between writes leaves the previous state whole, and a segment
//! is deleted only once no checkpoint that may still be written names it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::delivered::SeenSet;
use crate::delivered::{pack_time, sort_for_segment, Record, RECORD_BYTES, SLAB_SECS};
use crate::ports::KeyValue;
use crate::report::SaveStats;
use crate::state;
use crate::window::Window;

/// Ids a segment holds at most: 28 bytes each, under the 1 MB a hosted KV value may be.
pub const SEGMENT_IDS: usize = 35_000;
/// Past this many segments a save rewrites the slabs with the most into one each: with the
/// checkpoint, the rollback's and the dropped ones awaiting deletion, a stream stays within
/// about 200 keys (Fermyon Cloud allows 1,024 in the whole store).
pub const MAX_SEGMENTS: usize = 150;
/// A segment's value starts with this.
const SEGMENT_MAGIC: &[u8; 4] = b"ids1";
/// Chunks written before segments (whole-set rewrites): 28-byte records in base64.
const CHUNK_PREFIX: &str = "r28:";
/// Chunks written before records carried the project: 16-byte id + 8-byte time, no prefix.
const LEGACY_RECORD: usize = 24;

/// One KV value of delivered ids: `v1/{stream}/ids/{e}.{n}`, written once by the holder of
/// lease epoch `e` (its `n`th), holding `ids` ids of one slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    pub e: u64,
    pub n: u64,
    pub slab: u32,
    pub ids: u32,
}

/// A segment no checkpoint names any more, kept until every holder that may still write a
/// checkpoint naming it is gone: deleted once a holder after `by` saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub e: u64,
    pub n: u64,
    pub by: u64,
}

/// Where a delivered-id set is in KV: segments, or (sets saved before segments) `chunks`
/// whole-set chunks of lease `chunk_epoch` in `slot`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdsAt {
    pub segments: Vec<Segment>,
    /// Ids older than this (unix seconds) are no longer needed.
    pub floor: i64,
    pub chunks: u32,
    pub slot: u8,
    pub chunk_epoch: u64,
}

/// Where a run stopped inside a window; the next run resumes exactly there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowProgress {
    pub window: Window,
    /// The projects to read, fixed when the window was planned (the pre-scan's answer), or
    /// `[0]` for a stream read for the whole org at once.
    pub projects: Vec<u64>,
    /// Projects dropped by `max_projects` when the window was planned.
    pub projects_cut: usize,
    /// Index into `projects` of the next project to read.
    pub next_project: usize,
    /// The Sentry cursor inside that project (offsets within a closed window; never kept
    /// once the window is done).
    pub cursor: Option<String>,
    /// Number of objects written for this window so far (the next object's sequence number).
    pub objects: u32,
    /// Oldest-first streams: where the current query starts, once the offset cap moved it
    /// past the window's start.
    #[serde(default)]
    pub query_start: Option<i64>,
    /// Oldest-first streams: rows the current query has returned (its offset).
    #[serde(default)]
    pub query_rows: u64,
    /// `events`: where each project's read starts, aligned with `projects` (the window's
    /// start, or the watermark when its overlap holds nothing new). Empty: the window's start.
    #[serde(default)]
    pub read_from: Vec<i64>,
    /// `events`: where each read ends (exclusive), aligned with `projects`; a project may be
    /// listed more than once, one range each (the seconds of its overlap where late events
    /// arrived, then its new part). Empty or missing: the window's end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_to: Vec<i64>,
    /// `events`: where the current project's next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset: Option<Keyset>,
    /// `events`: the server ignores `start`/`end` (self-hosted Sentry before 2025), so pages
    /// follow its own offset cursors for the rest of the window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dates_ignored: bool,
    /// Oldest-first streams: the last readable row of the last page (its key in hex, its
    /// time, and how many unreadable rows followed it). The next page is asked for from that
    /// row's offset and must hold it; if it does not, rows before the cursor were deleted,
    /// which moves unread rows behind the cursor, and the query starts again at its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_row: Option<(String, i64, u64)>,
    /// Oldest-first streams: the time the current query last started again at because rows
    /// before the cursor moved (once per place: a place that keeps moving is read as served,
    /// with a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<i64>,
}

/// A place in a newest-first list (`-timestamp, -event_id`) that deleted events cannot move:
/// the next page asks for the events before `end` (exclusive) from offset `read - 1`. The
/// `read` newest of them (all in the second `end - 1`) were read already; the one at that
/// offset is read again and must be `last` (the hex key of the last row read): if it is not,
/// rows above it were deleted (or arrived late), and the second is read again from its top.
/// An offset thus never spans more than one second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyset {
    pub end: i64,
    pub read: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Times the second `end - 1` was read again from its top because the check failed; past
    /// a few, the rest of the project follows Sentry's own cursors (something keeps moving
    /// rows, or rows are counted that a page does not show).
    #[serde(default)]
    pub resets: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Everything before this was read, in a window that ended here.
    pub watermark: Option<i64>,
    pub in_progress: Option<WindowProgress>,
    /// Checkpoints from before segments: the slot (0 or 1) and number of chunks holding the
    /// whole delivered-id set, and the lease epoch that wrote them (0: from before epochs).
    /// The first save converts them to segments.
    #[serde(default)]
    pub seen_slot: u8,
    #[serde(default)]
    pub seen_chunks: u32,
    #[serde(default)]
    pub seen_epoch: u64,
    /// The segments holding the delivered-id set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// Ids older than this (unix seconds) are no longer needed: no later window reaches them.
    #[serde(default)]
    pub ids_floor: i64,
    /// The number the next segment of this stream gets.
    #[serde(default)]
    pub next_segment: u64,
    /// Segments no longer named, awaiting deletion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Dropped>,
    /// An object whose upload started but was not confirmed: the checkpoint already counts
    /// its events; if the object never landed, the run that finds this rolls back.
    #[serde(default)]
    pub pending: Option<PendingObject>,
    /// The lease epoch of the run that saved it: a run holding an earlier epoch (one that
    /// lost its lease) must not overwrite it.
    #[serde(default)]
    pub epoch: u64,
    /// After a change of shard layout: the projects of each old shard were delivered up to
    /// its floor (later than the watermark), so they are read from there, less the overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floors: Vec<ShardFloor>,
    /// The live track: where its first window started. No live window reads before it; the
    /// backfill track reads up to it (the seam).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<i64>,
    /// The backfill track: how far back from the seam it has read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillPos>,
    /// `events`: events written from `error` webhooks older than the delivered set keeps (so
    /// not in it), so a second drain of their inbox keys (a run that died before deleting
    /// them) drops them. Each is kept an hour, and longer while its key is in the inbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_late: Vec<LateEvent>,
}

/// An event written from an `error` webhook below the delivered set's floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvent {
    pub id: String,
    /// When it was written (Unix seconds).
    pub at: i64,
    /// Its inbox key's digest.
    pub digest: String,
}

/// What a backfill track has read: `[low, seam)`, less `gap` (the end of a window that was
/// cut short to fit in memory: it is read next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillPos {
    /// The live track's origin when the backfill began: nothing at or after it is read.
    pub seam: i64,
    pub low: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<(i64, i64)>,
}

/// Everything the projects of `shard` (of an earlier layout, `i/n`) had before `at` was
/// delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFloor {
    pub shard: String,
    pub at: i64,
}

impl Checkpoint {
    /// Where its delivered-id set is.
    pub fn ids_at(&self) -> IdsAt {
        IdsAt {
            segments: self.segments.clone(),
            floor: self.ids_floor,
            chunks: self.seen_chunks,
            slot: self.seen_slot,
            chunk_epoch: self.seen_epoch,
        }
    }

    /// Points it at a delivered-id set.
    pub fn set_ids_at(&mut self, at: IdsAt) {
        self.segments = at.segments;
        self.ids_floor = at.floor;
        self.seen_chunks = at.chunks;
        self.seen_slot = at.slot;
        self.seen_epoch = at.chunk_epoch;
    }

    /// How far `project` was delivered by a shard of an earlier layout, beyond the watermark.
    pub fn floor_for(&self, project: u64) -> Option<i64> {
        self.floors
            .iter()
            .filter(|f| crate::shard::Shard::parse(&f.shard).is_ok_and(|s| s.includes(project)))
            .map(|f| f.at)
            .max()
    }
}

/// Written before an upload, cleared after it (a two-phase commit with the bucket as the
/// record of whether the object landed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingObject {
    pub name: String,
    /// The object's content id, as the upload names it (the SHA-256 of the content in
    /// records of earlier versions, whose objects carry it as `sha256`).
    #[serde(alias = "sha256")]
    pub content: String,
    /// The state to return to if the object is not in the bucket.
    pub rollback_progress: Option<WindowProgress>,
    #[serde(default)]
    pub rollback_slot: u8,
    #[serde(default)]
    pub rollback_chunks: u32,
    #[serde(default)]
    pub rollback_epoch: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_segments: Vec<Segment>,
    #[serde(default)]
    pub rollback_floor: i64,
    /// Ids this object adds to the checkpoint's `webhook_late`: taken out again on rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<String>,
}

impl PendingObject {
    /// A pending object whose rollback returns to `cp`'s progress and delivered ids.
    pub fn new(name: String, content: String, cp: &Checkpoint) -> PendingObject {
        let at = cp.ids_at();
        PendingObject {
            name,
            content,
            rollback_progress: cp.in_progress.clone(),
            rollback_slot: at.slot,
            rollback_chunks: at.chunks,
            rollback_epoch: at.chunk_epoch,
            rollback_segments: at.segments,
            rollback_floor: at.floor,
            late: Vec::new(),
        }
    }

    /// Where the delivered ids to return to are.
    pub fn rollback_ids_at(&self) -> IdsAt {
        IdsAt {
            segments: self.rollback_segments.clone(),
            floor: self.rollback_floor,
            chunks: self.rollback_chunks,
            slot: self.rollback_slot,
            chunk_epoch: self.rollback_epoch,
        }
    }
}

/// Why a checkpoint was not saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveError {
    /// KV failed, or the id set does not fit.
    Failed(String),
    /// A later lease holder saved the checkpoint: this run lost the shard.
    Superseded(String),
}

impl std::fmt::Display for SaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaveError::Failed(m) | SaveError::Superseded(m) => f.write_str(m),
        }
    }
}

/// The checkpoint and id set of one stream (and shard), under `v1/{stream}/...`.
pub struct CheckpointStore<'a> {
    kv: &'a dyn KeyValue,
    stream: &'a str,
}

impl<'a> CheckpointStore<'a> {
    /// `stream` is the stream's name with the shard's suffix, like `events` or `events.s1of4`.
    pub fn new(kv: &'a dyn KeyValue, stream: &'a str) -> Self {
        CheckpointStore { kv, stream }
    }

    fn checkpoint_key(&self) -> String {
        format!("v1/{}/checkpoint", self.stream)
    }

    /// Chunks live under the epoch of the lease that wrote them, so a writer never writes
    /// over or deletes chunks a later holder's checkpoint points at.
    fn chunk_key(&self, epoch: u64, slot: u8, n: u32) -> String {
        if epoch == 0 {
            format!("v1/{}/seen/{slot}/{n}", self.stream)
        } else {
            format!("v1/{}/seen/{epoch}.{slot}/{n}", self.stream)
        }
    }

    fn segment_key(&self, e: u64, n: u64) -> String {
        format!("v1/{}/ids/{e}.{n}", self.stream)
    }

    /// Loads a delivered-id set whole.
    pub fn load_ids(&self, at: &IdsAt) -> Result<SeenSet, String> {
        let mut seen = self.lazy_ids(at)?;
        self.load_all(at, &mut seen)?;
        Ok(seen)
    }

    /// A delivered-id set whose slabs are read from KV only when asked for
    /// ([`CheckpointStore::load_slabs`]): a run that reads one quarter of an hour does not
    /// read the whole overlap's ids. Sets saved before segments are read whole.
    pub fn lazy_ids(&self, at: &IdsAt) -> Result<SeenSet, String> {
        if at.chunks > 0 {
            return self.load_chunks(at);
        }
        let mut seen = SeenSet::with_floor(at.floor);
        for seg in &at.segments {
            seen.set_unloaded(seg.slab, seg.ids as usize);
        }
        Ok(seen)
    }

    /// Reads the slabs of `seen` among `slabs` that are not read yet from the segments `at`
    /// names, slab by slab (each slab's ids sorted once; memory holds the set plus one slab).
    pub fn load_slabs(&self, at: &IdsAt, seen: &mut SeenSet, slabs: &[u32]) -> Result<(), String> {
        if slabs.is_empty() {
            return Ok(());
        }
        let wanted: BTreeSet<u32> = slabs.iter().copied().collect();
        let mut by_slab: BTreeMap<u32, Vec<&Segment>> = BTreeMap::new();
        for seg in at.segments.iter().filter(|s| wanted.contains(&s.slab)) {
            by_slab.entry(seg.slab).or_default().push(seg);
        }
        for (&slab, segments) in &by_slab {
            let capacity = segments.iter().map(|s| s.ids as usize).sum();
            // Each value is read, decoded and dropped in turn: memory holds one at a time.
            let mut failed = None;
            let records = segments.iter().map_while(|seg| {
                let key = self.segment_key(seg.e, seg.n);
                let read = match self.kv.get(&key) {
                    Err(e) => Err(format!("KV get {key}: {e}")),
                    Ok(None) => Err(format!("KV record {key} is missing")),
                    Ok(Some(bytes)) => {
                        let size = SEGMENT_MAGIC.len() + seg.ids as usize * RECORD_BYTES;
                        if bytes.starts_with(SEGMENT_MAGIC) && bytes.len() == size {
                            Ok(bytes)
                        } else {
                            Err(format!(
                                "KV record {key} is unreadable: not a segment of {} ids",
                                seg.ids
                            ))
                        }
                    }
                };
                match read {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            });
            // Decoded as the set takes them, not gathered first.
            let records = records.flat_map(|bytes| {
                let n = (bytes.len() - SEGMENT_MAGIC.len()) / RECORD_BYTES;
                (0..n).map(move |i| {
                    let at = SEGMENT_MAGIC.len() + i * RECORD_BYTES;
                    Record::decode(&bytes[at..at + RECORD_BYTES])
                })
            });
            seen.load_records(records, capacity);
            if let Some(e) = failed {
                return Err(e);
            }
            seen.mark_loaded(slab);
        }
        for slab in wanted {
            seen.mark_loaded(slab);
        }
        Ok(())
    }

    /// [`CheckpointStore::load_slabs`] for every slab not read yet.
    pub fn load_all(&self, at: &IdsAt, seen: &mut SeenSet) -> Result<(), String> {
        self.load_slabs(at, seen, &seen.unloaded())
    }

    /// Loads a set saved before segments; all of it is written as segments at the next save.
    fn load_chunks(&self, at: &IdsAt) -> Result<SeenSet, String> {
        let mut records = Vec::new();
        for n in 0..at.chunks {
            let chunk_key = self.chunk_key(at.chunk_epoch, at.slot, n);
            let chunk: String = state::load(self.kv, &chunk_key)?
                .ok_or_else(|| format!("KV record {chunk_key} is missing"))?;
            decode_chunk(&chunk, &mut records)
                .map_err(|e| format!("KV record {chunk_key} is unreadable: {e}"))?;
        }
        let mut seen = SeenSet::from_records(records, at.floor);
        seen.mark_all_unsaved();
        Ok(seen)
    }

    /// Loads the checkpoint and id set. An unreadable record is an error, never a fresh
    /// start: starting over would deliver everything in the lookback again. A segment missing
    /// because the checkpoint moved on while it was read (a run finishing as this one starts)
    /// is read again from the new checkpoint.
    pub fn load(&self) -> Result<(Checkpoint, SeenSet), String> {
        self.load_with(|at| self.load_ids(at))
    }

    /// [`CheckpointStore::load`] with the set's slabs read only when asked for
    /// ([`CheckpointStore::load_slabs`]; a segment missing then is an error of that read).
    pub fn load_lazy(&self) -> Result<(Checkpoint, SeenSet), String> {
        self.load_with(|at| self.lazy_ids(at))
    }

    fn load_with(
        &self,
        ids: impl Fn(&IdsAt) -> Result<SeenSet, String>,
    ) -> Result<(Checkpoint, SeenSet), String> {
        let mut attempt = 0;
        loop {
            let cp = self.load_record()?;
            match ids(&cp.ids_at()) {
                Ok(seen) => return Ok((cp, seen)),
                Err(e) => {
                    attempt += 1;
                    if attempt >= 3 || self.load_record()? == cp {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn load_record(&self) -> Result<Checkpoint, String> {
        let key = self.checkpoint_key();
        match state::load(self.kv, &key) {
            Ok(cp) => Ok(cp.unwrap_or_default()),
            Err(e) => Err(format!(
                "{e}; delete the key {key} (and {0}/ids/*, {0}/seen/*) to start again from lookback",
                key.trim_end_matches("/checkpoint")
            )),
        }
    }

    /// Saves a new checkpoint as `writer`, with the ids `seen` added since its last save in
    /// new segments. Refused, before anything is written, when the stored checkpoint was
    /// saved under a later epoch (another run took the shard over), unless the writer
    /// confirmed its lease is the newest; and between writes as soon as the writer's fence
    /// fails. `cp` and `seen` change only when the save succeeds.
    pub fn save(
        &self,
        cp: &mut Checkpoint,
        seen: &mut SeenSet,
        writer: &Writer,
    ) -> Result<SaveStats, SaveError> {
        let epoch = writer.epoch;
        let stored = self.load_record().map_err(SaveError::Failed)?;
        if stored.epoch > epoch && !writer.over_later {
            return Err(SaveError::Superseded(format!(
                "another run took the shard over (its checkpoint of {} is from lease epoch {}, after this run's {epoch}): this run stopped without writing",
                self.stream, stored.epoch
            )));
        }
        if let Some(slab) = seen.blind() {
            return Err(SaveError::Failed(format!(
                "the delivered ids of {}'s slab {slab} were used before they were read from KV (a defect): nothing was saved",
                self.stream
            )));
        }
        let fence = || (writer.fence)().map_err(SaveError::Superseded);
        let mut next = cp.clone();
        next.epoch = epoch;
        let mut stats = SaveStats::default();
        if next.seen_chunks > 0 {
            // Read from whole-set chunks: all of it is unsaved and goes to segments now.
            next.segments.clear();
            next.seen_chunks = 0;
            next.seen_slot = 0;
            next.seen_epoch = 0;
        }
        next.ids_floor = next.ids_floor.max(seen.floor());
        let floor_slab = pack_time(next.ids_floor) / SLAB_SECS;
        next.segments.retain(|s| s.slab >= floor_slab);

        // The new ids in segment order (which groups them by slab), sorted in place.
        seen.sort_unsaved();
        let mut unsaved: BTreeMap<u32, usize> = BTreeMap::new();
        for r in seen.unsaved() {
            *unsaved.entry(r.slab()).or_default() += 1;
        }
        stats.new_id_bytes = (seen.unsaved().len() * RECORD_BYTES) as u64;
        let rewrite = slabs_to_rewrite(&next.segments, &unsaved);
        // A slab rewritten as one is read whole first.
        let unloaded: BTreeSet<u32> = seen.unloaded().into_iter().collect();
        let unread: Vec<u32> = rewrite.intersection(&unloaded).copied().collect();
        self.load_slabs(&cp.ids_at(), seen, &unread)
            .map_err(SaveError::Failed)?;
        next.segments.retain(|s| !rewrite.contains(&s.slab));
        let mut write = |slab: u32, records: &[Record]| -> Result<(), SaveError> {
            for part in records.chunks(SEGMENT_IDS) {
                let mut bytes = Vec::with_capacity(SEGMENT_MAGIC.len() + part.len() * RECORD_BYTES);
                bytes.extend_from_slice(SEGMENT_MAGIC);
                for r in part {
                    r.encode_into(&mut bytes);
                }
                let n = next.next_segment;
                let key = self.segment_key(epoch, n);
                fence()?;
                self.kv
                    .set(&key, &bytes)
                    .map_err(|e| SaveError::Failed(format!("KV set {key}: {e}")))?;
                stats.bytes += bytes.len() as u64;
                stats.writes += 1;
                next.segments.push(Segment {
                    e: epoch,
                    n,
                    slab,
                    ids: part.len() as u32,
                });
                next.next_segment += 1;
            }
            Ok(())
        };
        for group in seen.unsaved().chunk_by(|a, b| a.slab() == b.slab()) {
            if !rewrite.contains(&group[0].slab()) {
                write(group[0].slab(), group)?;
            }
        }
        for &slab in &rewrite {
            let mut records = seen.slab_records(slab);
            sort_for_segment(&mut records);
            write(slab, &records)?;
        }

        // Segments the stored checkpoint named and this one does not: this writer's own go
        // now; others' wait until a later holder saves (their writer may have stalled past
        // its lease and still write a checkpoint naming them).
        let named_now = named(&next);
        let bound = epoch.min(stored.epoch);
        let mut delete: Vec<(u64, u64)> = Vec::new();
        next.dropped.retain(|d| {
            let gone = d.by < bound;
            if gone {
                delete.push((d.e, d.n));
            }
            !gone
        });
        for (e, n) in named(&stored) {
            if named_now.contains(&(e, n)) || next.dropped.iter().any(|d| (d.e, d.n) == (e, n)) {
                continue;
            }
            if e == epoch {
                delete.push((e, n));
            } else {
                next.dropped.push(Dropped { e, n, by: epoch });
            }
        }
        fence()?;
        stats.bytes +=
            state::save(self.kv, &self.checkpoint_key(), &next).map_err(SaveError::Failed)? as u64;
        stats.writes += 1;
        for (e, n) in delete {
            let _ = self.kv.delete(&self.segment_key(e, n));
        }
        if stored.epoch != epoch {
            self.drop_orphans(bound, &next);
        }
        stats.keys = 1 + (named_now.len() + next.dropped.len()) as u64;
        *cp = next;
        seen.mark_saved();
        Ok(stats)
    }

    /// On a new holder's first save: drops the segments and chunks of epochs before `below`
    /// (the previous holder's, or this writer's, whichever is earlier) that nothing names:
    /// left by a save that died before its checkpoint record. The previous holder's stay
    /// until the holder after this one: that holder may have stalled past its lease and still
    /// write a checkpoint naming them.
    fn drop_orphans(&self, below: u64, cp: &Checkpoint) {
        let Ok(keys) = self.kv.keys() else {
            return;
        };
        let kept = named(cp);
        let awaiting: HashSet<(u64, u64)> = cp.dropped.iter().map(|d| (d.e, d.n)).collect();
        let ids_prefix = format!("v1/{}/ids/", self.stream);
        let chunks_prefix = format!("v1/{}/seen/", self.stream);
        let chunk_sets: Vec<(u64, u8)> = [
            (cp.seen_chunks > 0).then_some((cp.seen_epoch, cp.seen_slot)),
            cp.pending
                .as_ref()
                .filter(|p| p.rollback_chunks > 0)
                .map(|p| (p.rollback_epoch, p.rollback_slot)),
        ]
        .into_iter()
        .flatten()
        .collect();
        for key in keys {
            if let Some(rest) = key.strip_prefix(&ids_prefix) {
                let Some((e, n)) = rest
                    .split_once('.')
                    .and_then(|(e, n)| Some((e.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                else {
                    continue;
                };
                if e < below && !kept.contains(&(e, n)) && !awaiting.contains(&(e, n)) {
                    let _ = self.kv.delete(&key);
                }
            } else if let Some(rest) = key.strip_prefix(&chunks_prefix) {
                let Some((place, _)) = rest.split_once('/') else {
                    continue;
                };
                let (e, slot) = match place.split_once('.') {
                    Some((e, slot)) => (e.parse::<u64>().ok(), slot.parse::<u8>().ok()),
                    None => (Some(0), place.parse::<u8>().ok()),
                };
                let (Some(e), Some(slot)) = (e, slot) else {
                    continue;
                };
                if e < below && !chunk_sets.contains(&(e, slot)) {
                    let _ = self.kv.delete(&key);
                }
            }
        }
    }
}

/// The segments a checkpoint names, its pending rollback's included.
fn named(cp: &Checkpoint) -> HashSet<(u64, u64)> {
    cp.segments
        .iter()
        .chain(cp.pending.iter().flat_map(|p| p.rollback_segments.iter()))
        .map(|s| (s.e, s.n))
        .collect()
}

/// The slabs to rewrite as one segment each so that the stream stays within
/// [`MAX_SEGMENTS`] after writing the new ids (`unsaved`: how many, by slab). Each time the
/// slab that saves the most keys, and of those the one with the fewest ids.
fn slabs_to_rewrite(segments: &[Segment], unsaved: &BTreeMap<u32, usize>) -> BTreeSet<u32> {
    let parts = |n: usize| n.div_ceil(SEGMENT_IDS);
    // Per slab: (segments after this save, ids).
    let mut per_slab: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for s in segments {
        let e = per_slab.entry(s.slab).or_default();
        e.0 += 1;
        e.1 += s.ids as usize;
    }
    for (&slab, &n) in unsaved {
        let e = per_slab.entry(slab).or_default();
        e.0 += parts(n);
        e.1 += n;
    }
    let mut total: usize = per_slab.values().map(|(count, _)| count).sum();
    let mut rewrite = BTreeSet::new();
    while total > MAX_SEGMENTS {
        // At most its ids: some may be older than the floor by now.
        let best = per_slab
            .iter()
            .filter(|(slab, _)| !rewrite.contains(*slab))
            .map(|(&slab, &(count, ids))| (count.saturating_sub(parts(ids)), ids, slab))
            .filter(|(saved, _, _)| *saved > 0)
            .max_by_key(|&(saved, ids, _)| (saved, std::cmp::Reverse(ids)));
        let Some((saved, _, slab)) = best else {
            break;
        };
        total -= saved;
        rewrite.insert(slab);
    }
    rewrite
}

/// Decodes a chunk of a whole-set save into records.
fn decode_chunk(chunk: &str, out: &mut Vec<Record>) -> Result<(), String> {
    let (data, record) = match chunk.strip_prefix(CHUNK_PREFIX) {
        Some(data) => (data, RECORD_BYTES),
        None => (chunk, LEGACY_RECORD),
    };
    let bytes = STANDARD
        .decode(data)
        .map_err(|_| "not base64".to_string())?;
    if bytes.len() % record != 0 {
        return Err("truncated record".into());
    }
    for r in bytes.chunks(record) {
        if record == RECORD_BYTES {
            out.push(Record::decode(r));
        } else {
            // No project: its overlap counts never match, so it is read again in full.
            let mut key = [0u8; 16];
            key.copy_from_slice(&r[..16]);
            let time = i64::from_be_bytes(r[16..24].try_into().expect("8 bytes"));
            out.push(Record {
                key,
                time: pack_time(time),
                project: 0,
            });
        }
    }
    Ok(())
}

/// Who saves a checkpoint, and the check before each of its KV writes.
pub struct Writer<'f> {
    /// The writer's lease epoch, recorded in the checkpoint.
    pub epoch: u64,
    /// The writer confirmed in the bucket that its lease is the newest: a later epoch in the
    /// stored checkpoint is from before the lease folder was emptied.
    pub over_later: bool,
    /// Called before every KV write; an error (why the lease no longer holds) stops the save.
    pub fence: &'f dyn Fn() -> Result<(), String>,
}

impl Writer<'_> {
    /// A writer without a lease to check (tests, and callers that hold every lease).
    pub fn unfenced(epoch: u64) -> Writer<'static> {
        Writer {
            epoch,
            over_later: false,
            fence: &|| Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::seen_key;
    use crate::ports::memory::MemKv;
    use std::cell::RefCell;

    fn hex_id(n: u64) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn a_pending_object_recorded_by_an_earlier_version_keeps_its_sha256_as_content() {
        let sha = "ab".repeat(32);
        let old = format!(r#"{{"name":"o.ndjson","sha256":"{sha}","rollback_progress":null}}"#);
        let pending: PendingObject = serde_json::from_str(&old).unwrap();
        assert_eq!(pending.content, sha);
        let again = serde_json::to_string(&pending).unwrap();
        assert!(again.contains(&format!(r#""content":"{sha}""#)), "{again}");
    }

    fn keys(kv: &MemKv, part: &str) -> Vec<String> {
        kv.0.borrow()
            .keys()
            .filter(|k| k.contains(part))
            .cloned()
            .collect()
    }

    const T: i64 = 1_790_000_000;

    #[test]
    fn ids_round_trip_through_kv_in_segments_under_the_limits() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        for n in 0..(SEGMENT_IDS as u64 * 2 + 17) {
            assert!(seen.insert(&hex_id(n), T + (n % 200) as i64));
        }
        assert!(seen.insert("not-a-uuid", T + 5));
        assert!(!seen.insert(&hex_id(3), T + 3));
        let mut cp = Checkpoint {
            watermark: Some(99),
            ..Checkpoint::default()
        };
        let before = seen.clone();
        let stats = store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        assert!(seen.unsaved().is_empty());
        assert_eq!(
            cp.segments.iter().map(|s| s.ids as usize).sum::<usize>(),
            before.len()
        );
        assert!(cp.segments.iter().all(|s| s.ids as usize <= SEGMENT_IDS));
        for key in keys(&kv, "/ids/") {
            assert!(kv.0.borrow()[&key].len() < 1_000_000, "{key}");
        }
        assert_eq!(stats.new_id_bytes, (before.len() * RECORD_BYTES) as u64);
        let (loaded_cp, loaded) = store.load().unwrap();
        assert_eq!(loaded_cp, cp);
        assert_eq!(loaded, before);
        assert!(loaded.contains("not-a-uuid", T + 5) && loaded.contains(&hex_id(0), T));
    }

    #[test]
    fn a_lazy_set_reads_only_the_slabs_asked_for_and_never_saves_a_blind_lookup() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let first_slab = pack_time(T) / SLAB_SECS;
        let slab_start =
            |k: i64| crate::delivered::unpack_time(SLAB_SECS * (first_slab + k as u32));
        let mut seen = SeenSet::default();
        let mut cp = Checkpoint::default();
        // Slab 0 saved in many small segments (the one a later save rewrites), slabs 1-3 once.
        for n in 0..MAX_SEGMENTS as u64 {
            seen.insert_key(seen_key(&hex_id(n)), slab_start(0) + n as i64 % 900, 1);
            store
                .save(&mut cp, &mut seen, &Writer::unfenced(1))
                .unwrap();
        }
        for k in 1..4 {
            for n in 0..500u64 {
                seen.insert_key(
                    seen_key(&hex_id(k as u64 * 10_000 + n)),
                    slab_start(k) + n as i64,
                    2,
                );
            }
        }
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        let whole = seen.clone();

        // Nothing is read until asked for; the size counts every slab.
        let (_, mut lazy) = store.load_lazy().unwrap();
        assert_eq!(lazy.len(), whole.len());
        assert_eq!(lazy.unloaded().len(), 4);
        let in_2 = |k: i64| slab_start(2) + k;
        assert_eq!(lazy.unloaded_in(in_2(0), in_2(899), false).len(), 1);
        let slab_2 = lazy.unloaded_in(in_2(0), in_2(899), false);
        store.load_slabs(&cp.ids_at(), &mut lazy, &slab_2).unwrap();
        assert_eq!(lazy.unloaded().len(), 3);
        assert!(lazy.contains_at(&seen_key(&hex_id(20_007)), in_2(7)));
        assert_eq!(
            lazy.counts_in(in_2(0), in_2(900)),
            whole.counts_in(in_2(0), in_2(900))
        );
        assert_eq!(lazy.blind(), None);

        // A lookup in a slab not read is a defect a save refuses (nothing written).
        let mut blind = lazy.clone();
        assert!(!blind.contains_at(&seen_key(&hex_id(10_007)), slab_start(1) + 7));
        assert!(blind.blind().is_some());
        let keys_before = kv.0.borrow().len();
        let refused = store.save(&mut cp.clone(), &mut blind, &Writer::unfenced(1));
        assert!(
            matches!(&refused, Err(SaveError::Failed(m)) if m.contains("before they were read")),
            "{refused:?}"
        );
        assert_eq!(kv.0.borrow().len(), keys_before);

        // New ids in slab 3 push the stream past its segment budget: slab 0, never read in
        // this run, is rewritten as one, read whole first.
        let slab_3 = lazy.unloaded_in(slab_start(3), slab_start(3) + 899, false);
        store.load_slabs(&cp.ids_at(), &mut lazy, &slab_3).unwrap();
        let mut expected = whole.clone();
        for n in 0..5u64 {
            let (key, t) = (
                seen_key(&hex_id(90_000 + n)),
                slab_start(3) + 100 + n as i64,
            );
            assert!(lazy.insert_key(key, t, 2));
            expected.insert_key(key, t, 2);
        }
        assert!(lazy.unloaded().contains(&first_slab));
        store
            .save(&mut cp, &mut lazy, &Writer::unfenced(1))
            .unwrap();
        assert_eq!(
            cp.segments.iter().filter(|s| s.slab == first_slab).count(),
            1
        );
        assert!(cp.segments.len() <= MAX_SEGMENTS, "{}", cp.segments.len());
        assert_eq!(store.load().unwrap().1, expected);
    }

    #[test]
    fn a_save_writes_what_changed_not_the_whole_set() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        for n in 0..100_000u64 {
            seen.insert_key(seen_key(&hex_id(n)), T + (n % 3600) as i64, 1 + n % 7);
        }
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        // An object's worth of new ids, in the newest minutes.
        for n in 0..1_000u64 {
            seen.insert_key(
                seen_key(&hex_id(1_000_000 + n)),
                T + 3600 + (n % 60) as i64,
                2,
            );
        }
        let stats = store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        let record = kv.0.borrow()["v1/events/checkpoint"].len() as u64;
        assert_eq!(stats.new_id_bytes, 28_000);
        assert!(
            stats.bytes <= 2 * stats.new_id_bytes + record,
            "{stats:?}, record {record}"
        );
        assert_eq!(stats.keys as usize, kv.0.borrow().len());
        assert_eq!(store.load().unwrap().1, seen);
    }

    #[test]
    fn many_small_saves_stay_within_the_key_budget() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        let mut cp = Checkpoint::default();
        let overlap = 3600;
        let mut most_keys = 0;
        // Two hours of runs a minute apart, each adding ids over its last ten minutes (late
        // ones included) and pruning what the overlap passed.
        for run in 0..120i64 {
            let now = T + run * 60;
            for n in 0..50u64 {
                let id = (run as u64) << 32 | n;
                seen.insert_key(seen_key(&hex_id(id)), now - (n as i64 * 13) % 600, 3);
            }
            seen.prune(now - overlap);
            store
                .save(&mut cp, &mut seen, &Writer::unfenced(1))
                .unwrap();
            most_keys = most_keys.max(kv.0.borrow().len());
        }
        assert!(cp.segments.len() <= MAX_SEGMENTS, "{}", cp.segments.len());
        assert!(most_keys <= 200, "{most_keys} keys");
        let (_, loaded) = store.load().unwrap();
        assert_eq!(loaded, seen);
        // Nothing older than the overlap is kept, in memory or in KV.
        let floor_slab = crate::delivered::pack_time(T + 119 * 60 - overlap) / SLAB_SECS;
        assert!(cp.segments.iter().all(|s| s.slab >= floor_slab));
    }

    #[test]
    fn slabs_with_too_many_segments_are_rewritten_as_one() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        let mut cp = Checkpoint::default();
        for save in 0..(MAX_SEGMENTS as u64 + 30) {
            seen.insert_key(seen_key(&hex_id(save)), T + (save % 10) as i64, 1);
            store
                .save(&mut cp, &mut seen, &Writer::unfenced(1))
                .unwrap();
            assert!(cp.segments.len() <= MAX_SEGMENTS);
        }
        assert_eq!(store.load().unwrap().1, seen);
        assert_eq!(keys(&kv, "/ids/").len(), cp.segments.len());
    }

    #[test]
    fn a_crash_before_the_checkpoint_record_keeps_the_previous_state() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), T);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        // A later save wrote its segment, then died before the checkpoint record.
        seen.insert(&hex_id(2), T);
        let died = || Err::<(), _>("the instance was stopped".to_string());
        let mut next = cp.clone();
        let writer = Writer {
            epoch: 1,
            over_later: false,
            fence: &died,
        };
        kv.set("v1/events/ids/1.1", b"ids1garbage").unwrap();
        assert!(store.save(&mut next, &mut seen, &writer).is_err());
        assert_eq!(next, cp, "a failed save changes nothing");
        assert_eq!(seen.unsaved().len(), 1, "and its ids stay unsaved");
        let (_, loaded) = store.load().unwrap();
        assert!(loaded.contains(&hex_id(1), T) && loaded.len() == 1);
        // The leftover stays one holder longer (its writer might still be running), and the
        // holder after that drops it.
        for (epoch, expected) in [(3, true), (5, false)] {
            let (mut cp2, mut seen2) = store.load().unwrap();
            seen2.insert(&hex_id(epoch), T);
            store
                .save(&mut cp2, &mut seen2, &Writer::unfenced(epoch))
                .unwrap();
            assert_eq!(kv.0.borrow().contains_key("v1/events/ids/1.1"), expected);
        }
        assert_eq!(store.load().unwrap().1.len(), 3);
    }

    #[test]
    fn a_rollback_returns_to_the_ids_before_the_pending_object() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), T);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        let before = seen.clone();
        cp.pending = Some(PendingObject::new("o".into(), "h".into(), &cp));
        seen.insert(&hex_id(2), T + 1);
        seen.prune(T + 1);
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        let pending = cp.pending.take().unwrap();
        let back = store.load_ids(&pending.rollback_ids_at()).unwrap();
        assert_eq!(back, before, "the rollback's segments were kept");
    }

    #[test]
    fn sets_saved_as_whole_chunks_load_and_move_to_segments() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut bytes = Vec::new();
        for n in 0..10u64 {
            Record {
                key: seen_key(&hex_id(n)),
                time: crate::delivered::pack_time(T + n as i64),
                project: 7,
            }
            .encode_into(&mut bytes);
        }
        let chunk = format!("{CHUNK_PREFIX}{}", STANDARD.encode(&bytes));
        state::save(&kv, "v1/events/seen/4.1/0", &chunk).unwrap();
        let old = Checkpoint {
            watermark: Some(T + 100),
            seen_slot: 1,
            seen_chunks: 1,
            seen_epoch: 4,
            epoch: 4,
            ..Checkpoint::default()
        };
        state::save(&kv, "v1/events/checkpoint", &old).unwrap();
        let (mut cp, mut seen) = store.load().unwrap();
        assert_eq!(seen.len(), 10);
        assert_eq!(seen.counts_in(T, T + 10).get(&7), Some(&10));
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(5))
            .unwrap();
        assert_eq!((cp.seen_chunks, cp.segments.len()), (0, 1));
        assert_eq!(store.load().unwrap().1.len(), 10);
        // The chunks stay one holder longer, then go.
        assert_eq!(keys(&kv, "/seen/").len(), 1);
        let (mut cp, mut seen) = store.load().unwrap();
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(6))
            .unwrap();
        assert!(keys(&kv, "/seen/").is_empty());
    }

    #[test]
    fn a_run_that_lost_its_lease_cannot_overwrite_the_new_holders_checkpoint() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut old_holder = Checkpoint::default();
        store
            .save(&mut old_holder, &mut seen, &Writer::unfenced(4))
            .unwrap();
        let mut new_holder = store.load().unwrap().0;
        new_holder.watermark = Some(500);
        store
            .save(&mut new_holder, &mut seen, &Writer::unfenced(5))
            .unwrap();
        let before = kv.0.borrow().clone();
        old_holder.watermark = Some(100);
        seen.insert(&hex_id(2), 20);
        let refused = store.save(&mut old_holder, &mut seen, &Writer::unfenced(4));
        assert!(
            matches!(&refused, Err(SaveError::Superseded(m)) if m.contains("another run")),
            "{refused:?}"
        );
        assert_eq!(*kv.0.borrow(), before, "nothing was written");
        assert_eq!(store.load().unwrap().0.watermark, Some(500));
    }

    #[test]
    fn a_writer_that_lost_its_lease_mid_save_never_touches_the_new_holders_segments() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        for n in 0..10 {
            seen.insert(&hex_id(n), 10 + n as i64);
        }
        let mut a = Checkpoint::default();
        store.save(&mut a, &mut seen, &Writer::unfenced(4)).unwrap();
        // A goes on; before its next write, B takes over: loads, adds an id, saves.
        let took_over = std::cell::Cell::new(false);
        let b_state = RefCell::new(None);
        let fence = || {
            if !took_over.replace(true) {
                let (mut b, mut b_seen) = store.load().unwrap();
                b_seen.insert(&hex_id(99), 99);
                store
                    .save(&mut b, &mut b_seen, &Writer::unfenced(5))
                    .unwrap();
                *b_state.borrow_mut() = Some((b, b_seen));
                return Ok(());
            }
            Err("the lease ran out".to_string())
        };
        seen.insert(&hex_id(50), 50);
        let writer = Writer {
            epoch: 4,
            over_later: false,
            fence: &fence,
        };
        let refused = store.save(&mut a, &mut seen, &writer);
        assert!(
            matches!(refused, Err(SaveError::Superseded(_))),
            "{refused:?}"
        );
        let (b, b_seen) = b_state.borrow_mut().take().unwrap();
        let (loaded, loaded_seen) = store.load().unwrap();
        assert_eq!(loaded, b, "B's checkpoint stands");
        assert_eq!(loaded_seen, b_seen, "B's ids are whole");
        // A left a segment of its own behind that nothing names; the next holder's first
        // save drops it.
        let named: Vec<String> = b
            .segments
            .iter()
            .map(|s| format!("v1/events/ids/{}.{}", s.e, s.n))
            .collect();
        let leftovers = |kv: &MemKv| {
            keys(kv, "/ids/4.")
                .into_iter()
                .filter(|k| !named.contains(k))
                .count()
        };
        assert!(leftovers(&kv) > 0);
        let (mut c, mut c_seen) = store.load().unwrap();
        c_seen.insert(&hex_id(77), 77);
        store
            .save(&mut c, &mut c_seen, &Writer::unfenced(6))
            .unwrap();
        assert_eq!(leftovers(&kv), 0);
        assert_eq!(store.load().unwrap().1.len(), 12);
    }

    #[test]
    fn a_writer_frozen_past_its_lease_still_leaves_a_checkpoint_that_loads() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut a = Checkpoint::default();
        store.save(&mut a, &mut seen, &Writer::unfenced(4)).unwrap();
        // A passes its checks, then freezes; meanwhile B takes over and saves twice.
        let took_over = std::cell::Cell::new(false);
        let fence = || {
            if !took_over.replace(true) {
                let (mut b, mut b_seen) = store.load().unwrap();
                for n in 2..4 {
                    b_seen.insert(&hex_id(n), 10 + n as i64);
                    store
                        .save(&mut b, &mut b_seen, &Writer::unfenced(5))
                        .unwrap();
                }
            }
            Ok(())
        };
        seen.insert(&hex_id(9), 19);
        let frozen = Writer {
            epoch: 4,
            over_later: false,
            fence: &fence,
        };
        // A's writes land late: its checkpoint is stale, but every chunk it names is there.
        store.save(&mut a, &mut seen, &frozen).unwrap();
        let (loaded, ids) = store.load().expect("the checkpoint loads");
        assert_eq!((loaded.epoch, ids.len()), (4, 2));
    }

    /// A KV whose first read of the checkpoint returns what it held before another run
    /// switched slots and dropped the old chunks: a load racing a save.
    struct RacingKv {
        kv: MemKv,
        stale: RefCell<Option<Vec<u8>>>,
    }
    impl KeyValue for RacingKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            if key.ends_with("/checkpoint") {
                if let Some(old) = self.stale.borrow_mut().take() {
                    return Ok(Some(old));
                }
            }
            self.kv.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.kv.set(key, value)
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.kv.delete(key)
        }
        fn keys(&self) -> Result<Vec<String>, String> {
            self.kv.keys()
        }
    }

    #[test]
    fn a_load_racing_a_save_reads_the_new_checkpoint_instead_of_failing() {
        let kv = RacingKv {
            kv: MemKv::default(),
            stale: RefCell::new(None),
        };
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), T);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        let old_record = kv.kv.get("v1/events/checkpoint").unwrap();
        seen.insert(&hex_id(2), T + 400);
        // The first segment's slab passed out of the overlap: it is dropped and deleted.
        seen.prune(T + 400);
        store
            .save(&mut cp, &mut seen, &Writer::unfenced(1))
            .unwrap();
        // The old segment is gone; the stale record still points at it.
        assert_eq!(cp.segments.len(), 1);
        *kv.stale.borrow_mut() = old_record;
        let (loaded_cp, loaded) = store.load().unwrap();
        assert_eq!(loaded_cp, cp);
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn chunks_written_before_projects_were_kept_still_load() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&seen_key(&hex_id(7)));
        bytes.extend_from_slice(&T.to_be_bytes());
        let mut records = Vec::new();
        decode_chunk(&STANDARD.encode(&bytes), &mut records).unwrap();
        let seen = SeenSet::from_records(records, 0);
        assert!(seen.contains(&hex_id(7), T));
        // No project is known, so no project's overlap count can match it.
        assert_eq!(seen.counts_in(T, T + 1).get(&0), Some(&1));
    }

    #[test]
    fn an_unreadable_checkpoint_is_an_error_not_a_fresh_start() {
        let kv = MemKv::default();
        kv.set("v1/events/checkpoint", b"{not json").unwrap();
        let err = CheckpointStore::new(&kv, "events").load().unwrap_err();
        assert!(err.contains("delete the key v1/events/checkpoint"), "{err}");
    }
}
