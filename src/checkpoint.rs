//! A stream's checkpoint: the watermark, the window in progress with the position inside it,
//! and the ids already delivered that a later read may return again.
//!
//! It lives in KV and stays compact whatever the org's size: one checkpoint record plus the
//! delivered-id set split into chunks of at most [`RECORDS_PER_CHUNK`] (under 1 MB each). The
//! id set is written to the slot the checkpoint does not point at, then the checkpoint is
//! switched to it, so a crash between two writes leaves the previous state whole.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::sha2::{Digest, Sha256};
use serde::{Deserialize, Serialize};

use crate::ports::KeyValue;
use crate::sentry::client::Window;
use crate::state;

/// 16-byte id + 4-byte time + 8-byte project = 28 bytes, about 37 characters of base64:
/// 25,000 records is 933,336 characters, under the 1 MB value limit with room for the JSON
/// around it.
pub const RECORDS_PER_CHUNK: usize = 25_000;
/// Two slots of this many chunks stay far under the 1,024-key limit (10 million ids).
pub const MAX_CHUNKS: usize = 400;
const RECORD: usize = 28;
/// Chunks written before records carried the project: 16-byte id + 8-byte time, no prefix.
const LEGACY_RECORD: usize = 24;
/// Marks a chunk of [`RECORD`]-byte records.
const CHUNK_PREFIX: &str = "r28:";
/// Times are kept as seconds since 2000-01-01 in four bytes (until 2136).
const EPOCH_2000: i64 = 946_684_800;

/// The ids delivered recently, with each item's time (so old ones can be dropped) and the
/// project it was read from (0 for org-wide streams), so the next window can tell, project
/// by project, whether its overlap holds anything new.
/// Sentry event ids are 32 hex digits and are kept exactly; any other id is kept as the first
/// 16 bytes of its SHA-256.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenSet {
    ids: HashMap<[u8; 16], Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// Seconds since [`EPOCH_2000`].
    time: u32,
    project: u64,
}

fn pack_time(t: i64) -> u32 {
    (t - EPOCH_2000).clamp(0, i64::from(u32::MAX)) as u32
}

/// The 16 bytes an id is kept as: a 32-hex-digit Sentry event id exactly, anything else as
/// the first 16 bytes of its SHA-256.
pub fn seen_key(id: &str) -> [u8; 16] {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut key = [0u8; 16];
    let hex = id.as_bytes();
    let parsed = hex.len() == 32
        && hex.chunks_exact(2).enumerate().all(|(i, pair)| {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => {
                    key[i] = h << 4 | l;
                    true
                }
                _ => false,
            }
        });
    if !parsed {
        key.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    }
    key
}

impl SeenSet {
    /// Records an id; `false` when it was already there.
    pub fn insert(&mut self, event_id: &str, date_created: i64) -> bool {
        self.insert_key(seen_key(event_id), date_created, 0)
    }

    /// Records a key made by [`seen_key`], read from `project`; `false` when it was already
    /// there.
    pub fn insert_key(&mut self, key: [u8; 16], time: i64, project: u64) -> bool {
        self.ids
            .insert(
                key,
                Seen {
                    time: pack_time(time),
                    project,
                },
            )
            .is_none()
    }

    /// How many ids each project has with a time in `[start, end)`.
    pub fn counts_in(&self, start: i64, end: i64) -> HashMap<u64, u64> {
        let (start, end) = (pack_time(start), pack_time(end));
        let mut counts = HashMap::new();
        for seen in self.ids.values() {
            if seen.time >= start && seen.time < end {
                *counts.entry(seen.project).or_default() += 1;
            }
        }
        counts
    }

    pub fn contains(&self, event_id: &str) -> bool {
        self.ids.contains_key(&seen_key(event_id))
    }

    /// Whether a key made by [`seen_key`] is recorded.
    pub fn contains_key(&self, key: &[u8; 16]) -> bool {
        self.ids.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Adds the ids of `other` read from a project `keep` accepts.
    pub fn extend_where(&mut self, other: &SeenSet, keep: impl Fn(u64) -> bool) {
        self.ids.extend(
            other
                .ids
                .iter()
                .filter(|(_, s)| keep(s.project))
                .map(|(k, s)| (*k, *s)),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets ids of events older than `before`: no later window reaches them.
    pub fn prune(&mut self, before: i64) {
        let before = pack_time(before);
        self.ids.retain(|_, s| s.time >= before);
    }

    fn encode(&self) -> Vec<String> {
        let mut records: Vec<(&[u8; 16], &Seen)> = self.ids.iter().collect();
        records.sort_by_key(|(k, _)| *k);
        records
            .chunks(RECORDS_PER_CHUNK)
            .map(|chunk| {
                let mut bytes = Vec::with_capacity(chunk.len() * RECORD);
                for (id, seen) in chunk {
                    bytes.extend_from_slice(&id[..]);
                    bytes.extend_from_slice(&seen.time.to_be_bytes());
                    bytes.extend_from_slice(&seen.project.to_be_bytes());
                }
                format!("{CHUNK_PREFIX}{}", STANDARD.encode(bytes))
            })
            .collect()
    }

    fn decode_into(&mut self, chunk: &str) -> Result<(), String> {
        let (data, record) = match chunk.strip_prefix(CHUNK_PREFIX) {
            Some(data) => (data, RECORD),
            None => (chunk, LEGACY_RECORD),
        };
        let bytes = STANDARD
            .decode(data)
            .map_err(|_| "not base64".to_string())?;
        if bytes.len() % record != 0 {
            return Err("truncated record".into());
        }
        for r in bytes.chunks(record) {
            let mut id = [0u8; 16];
            id.copy_from_slice(&r[..16]);
            let seen = if record == RECORD {
                Seen {
                    time: u32::from_be_bytes(r[16..20].try_into().expect("4 bytes")),
                    project: u64::from_be_bytes(r[20..28].try_into().expect("8 bytes")),
                }
            } else {
                // No project: its overlap counts never match, so it is read again in full.
                Seen {
                    time: pack_time(i64::from_be_bytes(r[16..24].try_into().expect("8 bytes"))),
                    project: 0,
                }
            };
            self.ids.insert(id, seen);
        }
        Ok(())
    }
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
    /// `events`: where the current project's next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset: Option<Keyset>,
    /// `events`: the server ignores `start`/`end` (self-hosted Sentry before 2025), so pages
    /// follow its own offset cursors for the rest of the window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dates_ignored: bool,
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
    /// The slot (0 or 1) and number of chunks holding the delivered-id set, and the lease
    /// epoch that wrote them (0: keys from before epochs).
    pub seen_slot: u8,
    pub seen_chunks: u32,
    #[serde(default)]
    pub seen_epoch: u64,
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
}

/// Everything the projects of `shard` (of an earlier layout, `i/n`) had before `at` was
/// delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFloor {
    pub shard: String,
    pub at: i64,
}

impl Checkpoint {
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
    pub sha256: String,
    /// The state to return to if the object is not in the bucket.
    pub rollback_progress: Option<WindowProgress>,
    pub rollback_slot: u8,
    pub rollback_chunks: u32,
    #[serde(default)]
    pub rollback_epoch: u64,
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

    /// Loads the id set stored by lease `epoch` in `slot`.
    pub fn load_seen(&self, epoch: u64, slot: u8, chunks: u32) -> Result<SeenSet, String> {
        let mut seen = SeenSet::default();
        for n in 0..chunks {
            let chunk_key = self.chunk_key(epoch, slot, n);
            let chunk: String = state::load(self.kv, &chunk_key)?
                .ok_or_else(|| format!("KV record {chunk_key} is missing"))?;
            seen.decode_into(&chunk)
                .map_err(|e| format!("KV record {chunk_key} is unreadable: {e}"))?;
        }
        Ok(seen)
    }

    /// Loads the checkpoint and id set. An unreadable record is an error, never a fresh
    /// start: starting over would deliver everything in the lookback again. A chunk missing
    /// because the checkpoint moved on while it was read (a run finishing as this one starts)
    /// is read again from the new checkpoint.
    pub fn load(&self) -> Result<(Checkpoint, SeenSet), String> {
        let mut attempt = 0;
        loop {
            let cp = self.load_record()?;
            match self.load_seen(cp.seen_epoch, cp.seen_slot, cp.seen_chunks) {
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
                "{e}; delete the key {key} (and {}/seen/*) to start again from lookback",
                key.trim_end_matches("/checkpoint")
            )),
        }
    }

    /// Saves a new checkpoint as `writer`. `seen_changed` false reuses the stored id set.
    /// Refused, before anything is written, when the stored checkpoint was saved under a
    /// later epoch (another run took the shard over), unless the writer confirmed its lease
    /// is the newest; and between writes as soon as the writer's fence fails.
    pub fn save(
        &self,
        cp: &mut Checkpoint,
        seen: &SeenSet,
        seen_changed: bool,
        writer: &Writer,
    ) -> Result<(), SaveError> {
        let epoch = writer.epoch;
        let stored = self.load_record().map_err(SaveError::Failed)?;
        if stored.epoch > epoch && !writer.over_later {
            return Err(SaveError::Superseded(format!(
                "another run took the shard over (its checkpoint of {} is from lease epoch {}, after this run's {epoch}): this run stopped without writing",
                self.stream, stored.epoch
            )));
        }
        let fence = || (writer.fence)().map_err(SaveError::Superseded);
        let old = (cp.seen_epoch, cp.seen_slot, cp.seen_chunks);
        // A pending object's rollback state must survive until the object is confirmed.
        let keep = cp
            .pending
            .as_ref()
            .map(|p| (p.rollback_epoch, p.rollback_slot));
        cp.epoch = epoch;
        if seen_changed {
            let chunks = seen.encode();
            if chunks.len() > MAX_CHUNKS {
                return Err(SaveError::Failed(format!(
                    "{} ids delivered in the overlap and current window exceed what KV can hold ({}); lower overlap or max_window",
                    seen.len(),
                    MAX_CHUNKS * RECORDS_PER_CHUNK
                )));
            }
            // This writer's own keys: the slot its last save did not use.
            let slot = if old.0 == epoch { 1 - old.1.min(1) } else { 0 };
            for (n, chunk) in chunks.iter().enumerate() {
                fence()?;
                state::save(self.kv, &self.chunk_key(epoch, slot, n as u32), chunk)
                    .map_err(SaveError::Failed)?;
            }
            // The slot may hold more chunks from an older, larger set: drop them.
            let mut n = chunks.len() as u32;
            while self
                .kv
                .get(&self.chunk_key(epoch, slot, n))
                .ok()
                .flatten()
                .is_some()
            {
                let _ = self.kv.delete(&self.chunk_key(epoch, slot, n));
                n += 1;
            }
            cp.seen_epoch = epoch;
            cp.seen_slot = slot;
            cp.seen_chunks = chunks.len() as u32;
        }
        fence()?;
        state::save(self.kv, &self.checkpoint_key(), cp).map_err(SaveError::Failed)?;
        // This writer's previous chunks are garbage now (a failed delete only wastes a key
        // until the next save overwrites it). Another epoch's are left to a later holder: a
        // run that stalled past its lease may still write a checkpoint pointing at them.
        if seen_changed && old.0 == epoch && keep != Some((old.0, old.1)) {
            for n in 0..old.2 {
                let _ = self.kv.delete(&self.chunk_key(old.0, old.1, n));
            }
        }
        if seen_changed && old.0 != epoch {
            self.drop_orphans(epoch.min(stored.epoch), cp, keep);
        }
        Ok(())
    }

    /// On a new holder's first save: drops the chunks of epochs before `below` (the previous
    /// holder's, or this writer's, whichever is earlier), never the checkpoint's or the
    /// rollback's. The previous holder's chunks stay until the holder after this one: that
    /// holder may have stalled past its lease and still write a checkpoint pointing at them.
    fn drop_orphans(&self, below: u64, cp: &Checkpoint, keep: Option<(u64, u8)>) {
        let prefix = format!("v1/{}/seen/", self.stream);
        let Ok(keys) = self.kv.keys() else {
            return;
        };
        for key in keys {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
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
            let ours = (e, slot) == (cp.seen_epoch, cp.seen_slot) || Some((e, slot)) == keep;
            if e < below && !ours {
                let _ = self.kv.delete(&key);
            }
        }
    }
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
    use crate::ports::memory::MemKv;
    use std::cell::RefCell;

    fn hex_id(n: u64) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn ids_round_trip_through_kv_in_chunks_under_the_limits() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        for n in 0..(RECORDS_PER_CHUNK as u64 * 2 + 17) {
            assert!(seen.insert(&hex_id(n), 1_000 + n as i64));
        }
        assert!(seen.insert("not-a-uuid", 5));
        assert!(!seen.insert(&hex_id(3), 1_003));
        let mut cp = Checkpoint {
            watermark: Some(99),
            ..Checkpoint::default()
        };
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        assert_eq!(cp.seen_chunks, 3);
        let (loaded_cp, loaded) = store.load().unwrap();
        assert_eq!(loaded_cp, cp);
        assert_eq!(loaded, seen);
        assert!(loaded.contains("not-a-uuid") && loaded.contains(&hex_id(0)));
        assert!(kv.0.borrow().len() <= 4);
    }

    #[test]
    fn saving_switches_slots_and_drops_the_old_one() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        let first_slot = cp.seen_slot;
        seen.insert(&hex_id(2), 20);
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        assert_ne!(cp.seen_slot, first_slot);
        let keys: Vec<String> = kv.0.borrow().keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                "v1/events/checkpoint".to_string(),
                format!("v1/events/seen/1.{}/0", cp.seen_slot)
            ]
        );
        assert_eq!(store.load().unwrap().1.len(), 2);
    }

    #[test]
    fn a_crash_before_the_checkpoint_switch_keeps_the_previous_state() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        // A later save wrote its chunk into the other slot, then died before the checkpoint.
        let other = 1 - cp.seen_slot;
        kv.set(&format!("v1/events/seen/{other}/0"), b"\"garbage\"")
            .unwrap();
        let (_, loaded) = store.load().unwrap();
        assert!(loaded.contains(&hex_id(1)) && loaded.len() == 1);
    }

    #[test]
    fn a_run_that_lost_its_lease_cannot_overwrite_the_new_holders_checkpoint() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut old_holder = Checkpoint::default();
        store
            .save(&mut old_holder, &seen, true, &Writer::unfenced(4))
            .unwrap();
        let mut new_holder = store.load().unwrap().0;
        new_holder.watermark = Some(500);
        store
            .save(&mut new_holder, &seen, false, &Writer::unfenced(5))
            .unwrap();
        let before = kv.0.borrow().clone();
        old_holder.watermark = Some(100);
        seen.insert(&hex_id(2), 20);
        let refused = store.save(&mut old_holder, &seen, true, &Writer::unfenced(4));
        assert!(
            matches!(&refused, Err(SaveError::Superseded(m)) if m.contains("another run")),
            "{refused:?}"
        );
        assert_eq!(*kv.0.borrow(), before, "nothing was written");
        assert_eq!(store.load().unwrap().0.watermark, Some(500));
    }

    #[test]
    fn a_writer_that_lost_its_lease_mid_save_never_touches_the_new_holders_chunks() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        for n in 0..10 {
            seen.insert(&hex_id(n), 10 + n as i64);
        }
        let mut a = Checkpoint::default();
        store
            .save(&mut a, &seen, true, &Writer::unfenced(4))
            .unwrap();
        // A goes on; before its next write, B takes over: loads, adds an id, saves.
        let took_over = std::cell::Cell::new(false);
        let b_state = RefCell::new(None);
        let fence = || {
            if !took_over.replace(true) {
                let (mut b, mut b_seen) = store.load().unwrap();
                b_seen.insert(&hex_id(99), 99);
                store
                    .save(&mut b, &b_seen, true, &Writer::unfenced(5))
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
        let refused = store.save(&mut a, &seen, true, &writer);
        assert!(
            matches!(refused, Err(SaveError::Superseded(_))),
            "{refused:?}"
        );
        let (b, b_seen) = b_state.borrow_mut().take().unwrap();
        let (loaded, loaded_seen) = store.load().unwrap();
        assert_eq!(loaded, b, "B's checkpoint stands");
        assert_eq!(loaded_seen, b_seen, "B's ids are whole");
        // A left a chunk of its own behind; the next holder's first save drops it.
        let leftovers = |kv: &MemKv| {
            kv.0.borrow()
                .keys()
                .filter(|k| k.starts_with("v1/events/seen/4."))
                .count()
        };
        assert!(leftovers(&kv) > 0);
        let (mut c, mut c_seen) = store.load().unwrap();
        c_seen.insert(&hex_id(77), 77);
        store
            .save(&mut c, &c_seen, true, &Writer::unfenced(6))
            .unwrap();
        assert_eq!(leftovers(&kv), 0);
        // B's chunks stay one holder longer (B could have stalled); the next one drops them.
        let of = |kv: &MemKv, e: &str| kv.0.borrow().keys().filter(|k| k.contains(e)).count();
        assert!(of(&kv, "/seen/5.") > 0);
        let (mut d, d_seen) = store.load().unwrap();
        store
            .save(&mut d, &d_seen, true, &Writer::unfenced(7))
            .unwrap();
        assert_eq!(of(&kv, "/seen/5."), 0);
        assert_eq!(store.load().unwrap().1.len(), 12);
    }

    #[test]
    fn a_writer_frozen_past_its_lease_still_leaves_a_checkpoint_that_loads() {
        let kv = MemKv::default();
        let store = CheckpointStore::new(&kv, "events");
        let mut seen = SeenSet::default();
        seen.insert(&hex_id(1), 10);
        let mut a = Checkpoint::default();
        store
            .save(&mut a, &seen, true, &Writer::unfenced(4))
            .unwrap();
        // A passes its checks, then freezes; meanwhile B takes over and saves twice.
        let took_over = std::cell::Cell::new(false);
        let fence = || {
            if !took_over.replace(true) {
                let (mut b, mut b_seen) = store.load().unwrap();
                for n in 2..4 {
                    b_seen.insert(&hex_id(n), 10 + n as i64);
                    store
                        .save(&mut b, &b_seen, true, &Writer::unfenced(5))
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
        store.save(&mut a, &seen, true, &frozen).unwrap();
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
        seen.insert(&hex_id(1), 10);
        let mut cp = Checkpoint::default();
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        let old_record = kv.kv.get("v1/events/checkpoint").unwrap();
        seen.insert(&hex_id(2), 20);
        store
            .save(&mut cp, &seen, true, &Writer::unfenced(1))
            .unwrap();
        // The old slot's chunks are gone; the stale record still points at them.
        *kv.stale.borrow_mut() = old_record;
        let (loaded_cp, loaded) = store.load().unwrap();
        assert_eq!(loaded_cp, cp);
        assert_eq!(loaded.len(), 2);
    }

    #[test]
    fn pruning_forgets_only_events_before_the_bound() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        seen.insert(&hex_id(1), t + 100);
        seen.insert(&hex_id(2), t + 200);
        seen.prune(t + 150);
        assert!(!seen.contains(&hex_id(1)) && seen.contains(&hex_id(2)));
    }

    #[test]
    fn counts_per_project_cover_exactly_the_range() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        for i in 0..10u64 {
            seen.insert_key(seen_key(&hex_id(i)), t + i as i64 * 10, 1 + i % 2);
        }
        let counts = seen.counts_in(t + 10, t + 60);
        assert_eq!(counts.get(&1), Some(&2), "{counts:?}");
        assert_eq!(counts.get(&2), Some(&3), "{counts:?}");
        // Projects and times survive the KV encoding.
        let mut back = SeenSet::default();
        for chunk in seen.encode() {
            assert!(chunk.starts_with(CHUNK_PREFIX));
            back.decode_into(&chunk).unwrap();
        }
        assert_eq!(back, seen);
    }

    #[test]
    fn chunks_written_before_projects_were_kept_still_load() {
        let t: i64 = 1_790_000_000;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&seen_key(&hex_id(7)));
        bytes.extend_from_slice(&t.to_be_bytes());
        let mut seen = SeenSet::default();
        seen.decode_into(&STANDARD.encode(&bytes)).unwrap();
        assert!(seen.contains(&hex_id(7)));
        // No project is known, so no project's overlap count can match it.
        assert_eq!(seen.counts_in(t, t + 1).get(&0), Some(&1));
    }

    #[test]
    fn an_unreadable_checkpoint_is_an_error_not_a_fresh_start() {
        let kv = MemKv::default();
        kv.set("v1/events/checkpoint", b"{not json").unwrap();
        let err = CheckpointStore::new(&kv, "events").load().unwrap_err();
        assert!(err.contains("delete the key v1/events/checkpoint"), "{err}");
    }
}
