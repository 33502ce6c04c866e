//! The delivered-id set in memory: the ids a later read of an overlap may return again, each
//! with its time and project, kept by minute of their time in 24 bytes an id, and capped.
//!
//! How it is kept in KV (segments by slab of a quarter of an hour) is `checkpoint`'s business; this module
//! only says which ids were added since the last save and which slab each belongs to.

use std::collections::{BTreeMap, HashMap};

use crate::identity::seen_key;

/// The most ids a set holds: 24 bytes each (36 MB at the cap, within the 64 MiB an instance
/// needs in all). A window that would pass it stops the stream with a message naming
/// `overlap` and `max_window`, instead of growing until the host's 128 MiB traps it.
pub const MAX_IDS: usize = 1_500_000;
/// The project under which items set apart (no readable id or time) are recorded.
pub const SET_APART: u64 = u64::MAX;
/// Times are kept as seconds since 2000-01-01 in four bytes (until 2136).
const EPOCH_2000: i64 = 946_684_800;
/// Ids are looked up in the minute of their time (an item's time never changes: it is part of
/// what Sentry returns for the same id, and part of the key where it could move).
const BUCKET_SECS: u32 = 60;
/// Ids are written to KV by slab of this many seconds: a slab's segments are rewritten as one
/// when there are too many, and dropped whole once the overlap has passed them. An object of
/// a backlog (a project's whole window) touches every slab of the window: a quarter of an
/// hour keeps that to five segments for the default hour.
pub const SLAB_SECS: u32 = 900;
/// New ids of a bucket are kept in a small hash table apart from its sorted bulk, and
/// merged into it (sorted, from the back) past this many, or past a sixteenth of the bulk for
/// a big minute: a merge moves the bulk once for that many inserts, and the table (at most
/// half full) takes at most a quarter of the bulk's memory while it fills.
const RECENT_MAX: usize = 64;

fn recent_max(bulk: usize) -> usize {
    RECENT_MAX.max(bulk / 16)
}
/// A bulk this big gets an index of where each first byte of the id starts, so a lookup
/// searches about 1/256 of it (ids are random; a crafted skew only makes it slower).
const INDEX_MIN: usize = 2048;
/// A table slot without an id (project slots are indices into the set's project table,
/// far below this).
const EMPTY: u32 = u32::MAX;

/// One record in KV: 16-byte id, 4-byte time, 8-byte project.
pub const RECORD_BYTES: usize = 28;

/// Seconds since [`EPOCH_2000`], clamped to four bytes.
pub fn pack_time(t: i64) -> u32 {
    t.saturating_sub(EPOCH_2000).clamp(0, i64::from(u32::MAX)) as u32
}

/// Unix seconds of a packed time.
pub fn unpack_time(t: u32) -> i64 {
    i64::from(t) + EPOCH_2000
}

/// One delivered id as KV keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub key: [u8; 16],
    /// Packed (see [`pack_time`]).
    pub time: u32,
    pub project: u64,
}

impl Record {
    pub fn slab(&self) -> u32 {
        self.time / SLAB_SECS
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.time.to_be_bytes());
        out.extend_from_slice(&self.project.to_be_bytes());
    }

    pub fn decode(r: &[u8]) -> Record {
        let mut key = [0u8; 16];
        key.copy_from_slice(&r[..16]);
        Record {
            key,
            time: u32::from_be_bytes(r[16..20].try_into().expect("4 bytes")),
            project: u64::from_be_bytes(r[20..28].try_into().expect("8 bytes")),
        }
    }
}

/// An id's 16 bytes as two big-endian words: they sort as the bytes do, compared as two
/// integers rather than byte by byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Words([u64; 2]);

impl Words {
    fn of(key: &[u8; 16]) -> Words {
        let half = |h: &[u8]| u64::from_be_bytes(h.try_into().expect("8 bytes"));
        Words([half(&key[..8]), half(&key[8..])])
    }

    fn bytes(&self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.0[0].to_be_bytes());
        key[8..].copy_from_slice(&self.0[1].to_be_bytes());
        key
    }
}

/// An id in memory: the project is an index into the set's project table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: Words,
    time: u32,
    project: u32,
}

/// The ids of one minute: a sorted bulk and a small open-addressing table of the newest,
/// merged into the bulk when it passes [`recent_max`].
#[derive(Debug, Clone, Default)]
struct Bucket {
    bulk: Vec<Entry>,
    /// For a bulk of at least [`INDEX_MIN`]: `index[b]` is where ids whose first byte is `b`
    /// start in the bulk (257 entries); empty otherwise.
    index: Vec<u32>,
    /// A power-of-two table (or empty); a slot whose project is [`EMPTY`] holds nothing.
    recent: Vec<Entry>,
    recent_len: usize,
    /// How many ids each project (by slot) has in the bucket: a count over whole minutes
    /// reads these rather than every id.
    counts: Vec<(u32, u32)>,
    /// Where in `counts` the last insert counted (inserts come a page of one project at a
    /// time): looked at first.
    last_count: usize,
}

/// The table slot an id starts probing at: a folded 128-bit product of the id's two halves,
/// each first mixed with its own secret drawn once per instance, so ids chosen to collide
/// (an event's id is the client's to pick) cannot be prepared without knowing both.
fn slot_of(key: &Words, mask: usize) -> usize {
    static SEEDS: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    let seeds = SEEDS.get_or_init(|| {
        let mut b = [0u8; 16];
        // Without randomness the lookups stay correct, only predictable.
        let _ = getrandom::fill(&mut b);
        let half = |h: &[u8]| u64::from_le_bytes(h.try_into().expect("8 bytes"));
        [half(&b[..8]), half(&b[8..])]
    });
    let product = u128::from(key.0[0] ^ seeds[0]).wrapping_mul(u128::from(key.0[1] ^ seeds[1]) | 1);
    let folded = (product as u64) ^ ((product >> 64) as u64);
    (folded >> 32) as usize & mask
}

impl Bucket {
    fn find(&self, key: &Words) -> bool {
        self.find_recent(key) || self.find_bulk(key)
    }

    fn find_bulk(&self, key: &Words) -> bool {
        let range = if self.index.is_empty() {
            &self.bulk[..]
        } else {
            let first = (key.0[0] >> 56) as usize;
            &self.bulk[self.index[first] as usize..self.index[first + 1] as usize]
        };
        range.binary_search_by(|e| e.key.cmp(key)).is_ok()
    }

    fn find_recent(&self, key: &Words) -> bool {
        if self.recent_len == 0 {
            return false;
        }
        let mask = self.recent.len() - 1;
        let mut at = slot_of(key, mask);
        loop {
            let e = &self.recent[at];
            if e.project == EMPTY {
                return false;
            }
            if e.key == *key {
                return true;
            }
            at = (at + 1) & mask;
        }
    }

    fn count(&mut self, project: u32) {
        if let Some((p, n)) = self.counts.get_mut(self.last_count) {
            if *p == project {
                *n += 1;
                return;
            }
        }
        self.last_count = match self.counts.iter().position(|(p, _)| *p == project) {
            Some(at) => {
                self.counts[at].1 += 1;
                at
            }
            None => {
                self.counts.push((project, 1));
                self.counts.len() - 1
            }
        };
    }

    /// Counts the ids of each project again (after ids were dropped or set in bulk), in one
    /// pass whatever the number of projects (`slots`: how many the set knows).
    fn recount(&mut self, slots: usize) {
        let mut per_slot = vec![0u32; slots];
        for e in self.iter() {
            per_slot[e.project as usize] += 1;
        }
        self.counts.clear();
        self.counts.extend(
            per_slot
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(slot, &n)| (slot as u32, n)),
        );
        self.last_count = 0;
    }

    /// Adds an id not in the bucket (the caller checked with [`Bucket::find`]).
    fn insert(&mut self, entry: Entry) {
        self.count(entry.project);
        if (self.recent_len + 1) * 2 > self.recent.len() {
            self.grow_recent();
        }
        let at = free_slot(&self.recent, &entry.key);
        self.recent[at] = entry;
        self.recent_len += 1;
        if self.recent_len > recent_max(self.bulk.len()) {
            self.merge_recent();
        }
    }

    /// Doubles the table (at most half full), placing its ids again.
    fn grow_recent(&mut self) {
        let size = (self.recent.len() * 2).max(8);
        let old = std::mem::replace(&mut self.recent, vec![empty_entry(); size]);
        for e in old.into_iter().filter(|e| e.project != EMPTY) {
            let at = free_slot(&self.recent, &e.key);
            self.recent[at] = e;
        }
    }

    /// Merges the table's ids into the bulk in place, from the back, and frees the table.
    /// The bulk grows by a quarter at a time, so a growing minute wastes at most a fifth of
    /// its allocation.
    fn merge_recent(&mut self) {
        if self.recent_len == 0 {
            return;
        }
        // The table's ids, sorted, at its front.
        let mut add = 0;
        for i in 0..self.recent.len() {
            if self.recent[i].project != EMPTY {
                self.recent.swap(add, i);
                add += 1;
            }
        }
        self.recent[..add].sort_unstable_by_key(|e| e.key);
        let have = self.bulk.len();
        if self.bulk.capacity() < have + add {
            self.bulk.reserve_exact(add.max(have / 4));
        }
        let filler = self.recent[0];
        self.bulk.resize(have + add, filler);
        let (mut i, mut j, mut k) = (have, add, have + add);
        while j > 0 {
            if i > 0 && self.bulk[i - 1].key > self.recent[j - 1].key {
                self.bulk[k - 1] = self.bulk[i - 1];
                i -= 1;
            } else {
                self.bulk[k - 1] = self.recent[j - 1];
                j -= 1;
            }
            k -= 1;
        }
        self.recent = Vec::new();
        self.recent_len = 0;
        self.reindex();
    }

    /// Sets a bulk of ids sorted by key (the bucket holds nothing yet); `slots` as in
    /// [`Bucket::recount`].
    fn set_bulk(&mut self, bulk: Vec<Entry>, slots: usize) {
        self.bulk = bulk;
        self.reindex();
        self.recount(slots);
    }

    /// Keeps only the ids `keep` accepts.
    fn retain(&mut self, keep: impl Fn(&Entry) -> bool, slots: usize) {
        self.merge_recent();
        self.bulk.retain(keep);
        self.reindex();
        self.recount(slots);
    }

    fn reindex(&mut self) {
        self.index.clear();
        if self.bulk.len() < INDEX_MIN {
            return;
        }
        self.index.reserve_exact(257);
        let mut at = 0;
        for first in 0..=256u64 {
            while at < self.bulk.len() && (self.bulk[at].key.0[0] >> 56) < first {
                at += 1;
            }
            self.index.push(at as u32);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        let recent = self.recent.iter().filter(|e| e.project != EMPTY);
        self.bulk.iter().chain(recent)
    }

    fn len(&self) -> usize {
        self.bulk.len() + self.recent_len
    }

    /// Bytes allocated for ids.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        (self.bulk.capacity() + self.recent.capacity()) * std::mem::size_of::<Entry>()
            + self.index.capacity() * 4
    }
}

/// The first free slot of `table` (power-of-two sized, never full) on `key`'s probe path.
fn free_slot(table: &[Entry], key: &Words) -> usize {
    let mask = table.len() - 1;
    let mut at = slot_of(key, mask);
    while table[at].project != EMPTY {
        at = (at + 1) & mask;
    }
    at
}

fn empty_entry() -> Entry {
    Entry {
        key: Words([0, 0]),
        time: 0,
        project: EMPTY,
    }
}

/// The ids delivered recently, with each item's time (so old ones can be dropped) and the
/// project it was read from (0 for org-wide streams), so the next window can tell, project
/// by project, whether its overlap holds anything new.
#[derive(Debug, Clone, Default)]
pub struct SeenSet {
    buckets: BTreeMap<u32, Bucket>,
    /// Items set apart (recorded under [`SET_APART`]): looked up by key alone, since their
    /// time is the window's, not theirs.
    set_apart: HashMap<[u8; 16], u32>,
    projects: Vec<u64>,
    project_index: HashMap<u64, u32>,
    /// The last project looked up and its slot (pages come one project at a time).
    last_slot: Option<(u64, u32)>,
    len: usize,
    /// Ids added since the last save, in the order added: what the next save writes.
    unsaved: Vec<Record>,
    /// Nothing older than this (packed) is kept.
    floor: u32,
    /// Slabs whose ids are kept in KV and not read yet, with how many ids their segments hold
    /// (see [`SeenSet::unloaded_in`]): a run reads only the slabs its pages reach.
    unloaded: BTreeMap<u32, usize>,
    /// The first unloaded slab something was looked up or recorded in (a defect in the
    /// caller: an answer from a slab not read may be wrong). A save refuses such a set.
    blind: std::cell::Cell<Option<u32>>,
}

impl PartialEq for SeenSet {
    /// The same ids with the same times and projects (what is unsaved does not matter).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.records() == other.records()
    }
}

impl Eq for SeenSet {}

impl SeenSet {
    /// Records an id; `false` when it was already there.
    pub fn insert(&mut self, event_id: &str, date_created: i64) -> bool {
        self.insert_key(seen_key(event_id), date_created, 0)
    }

    /// Records a key made by [`seen_key`], read from `project`; `false` when it was already
    /// there.
    pub fn insert_key(&mut self, key: [u8; 16], time: i64, project: u64) -> bool {
        let record = Record {
            key,
            time: pack_time(time),
            project,
        };
        if !self.add(record) {
            return false;
        }
        self.unsaved.push(record);
        true
    }

    fn add(&mut self, r: Record) -> bool {
        self.look(r.slab(), r.slab() + 1, project_is_set_apart(r.project));
        if project_is_set_apart(r.project) {
            if self.set_apart.contains_key(&r.key) {
                return false;
            }
            self.set_apart.insert(r.key, r.time);
            self.len += 1;
            return true;
        }
        let project = self.project_slot(r.project);
        let bucket = self.buckets.entry(r.time / BUCKET_SECS).or_default();
        let key = Words::of(&r.key);
        if bucket.find(&key) {
            return false;
        }
        bucket.insert(Entry {
            key,
            time: r.time,
            project,
        });
        self.len += 1;
        true
    }

    fn project_slot(&mut self, project: u64) -> u32 {
        if let Some((p, slot)) = self.last_slot {
            if p == project {
                return slot;
            }
        }
        if let Some(&i) = self.project_index.get(&project) {
            self.last_slot = Some((project, i));
            return i;
        }
        let i = self.projects.len() as u32;
        self.projects.push(project);
        self.project_index.insert(project, i);
        self.last_slot = Some((project, i));
        i
    }

    /// Whether `key` was recorded with a time of `time`.
    pub fn contains_at(&self, key: &[u8; 16], time: i64) -> bool {
        let slab = pack_time(time) / SLAB_SECS;
        self.look(slab, slab + 1, false);
        self.buckets
            .get(&(pack_time(time) / BUCKET_SECS))
            .is_some_and(|b| b.find(&Words::of(key)))
    }

    /// Whether an event id with its time is recorded.
    pub fn contains(&self, event_id: &str, time: i64) -> bool {
        self.contains_at(&seen_key(event_id), time)
    }

    /// Whether an item set apart (by the key of its text) is recorded.
    pub fn set_apart_contains(&self, key: &[u8; 16]) -> bool {
        self.look(0, 0, true);
        self.set_apart.contains_key(key)
    }

    /// How many ids each project has with a time in `[start, end)`.
    pub fn counts_in(&self, start: i64, end: i64) -> HashMap<u64, u64> {
        let (start, end) = (pack_time(start), pack_time(end));
        self.look(
            start / SLAB_SECS,
            end.saturating_sub(1) / SLAB_SECS + 1,
            false,
        );
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut per_slot = vec![0u64; self.projects.len()];
        for (&minute, bucket) in self.buckets.range(start / BUCKET_SECS..=end / BUCKET_SECS) {
            let first = minute * BUCKET_SECS;
            if first >= start && u64::from(first) + u64::from(BUCKET_SECS) <= u64::from(end) {
                for &(slot, n) in &bucket.counts {
                    per_slot[slot as usize] += u64::from(n);
                }
                continue;
            }
            for e in bucket.iter() {
                if e.time >= start && e.time < end {
                    per_slot[e.project as usize] += 1;
                }
            }
        }
        for (slot, n) in per_slot.into_iter().enumerate() {
            if n > 0 {
                counts.insert(self.projects[slot], n);
            }
        }
        let apart = self
            .set_apart
            .values()
            .filter(|&&t| t >= start && t < end)
            .count() as u64;
        if apart > 0 {
            counts.insert(SET_APART, apart);
        }
        counts
    }

    /// How many ids each of `projects` has in each second of `[start, end)`, keyed by
    /// (project, second); seconds without any are left out.
    pub fn second_counts(
        &self,
        projects: &[u64],
        start: i64,
        end: i64,
    ) -> BTreeMap<(u64, i64), u64> {
        let (from, to) = (pack_time(start), pack_time(end));
        self.look(
            from / SLAB_SECS,
            to.saturating_sub(1) / SLAB_SECS + 1,
            false,
        );
        let slots: HashMap<u32, u64> = projects
            .iter()
            .filter_map(|p| Some((*self.project_index.get(p)?, *p)))
            .collect();
        let mut counts = BTreeMap::new();
        for (_, bucket) in self.buckets.range(from / BUCKET_SECS..=to / BUCKET_SECS) {
            for e in bucket.iter() {
                if e.time >= from && e.time < to {
                    if let Some(&p) = slots.get(&e.project) {
                        *counts.entry((p, unpack_time(e.time))).or_default() += 1;
                    }
                }
            }
        }
        counts
    }

    /// The ids held, with those of slabs not read yet (as many as their segments hold, an
    /// upper bound): what memory holds once every slab is read.
    pub fn len(&self) -> usize {
        self.len + self.unloaded.values().sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes a lookup in slabs `[from, to)` (and in the items set apart, which may be in any
    /// slab): blind if any of them is not read yet.
    fn look(&self, from: u32, to: u32, set_apart: bool) {
        if self.unloaded.is_empty() || self.blind.get().is_some() {
            return;
        }
        let hit = if set_apart {
            self.unloaded.keys().next()
        } else {
            self.unloaded
                .range(from..to.max(from))
                .next()
                .map(|(k, _)| k)
        };
        if let Some(&slab) = hit {
            self.blind.set(Some(slab));
        }
    }

    /// The slabs not read yet that hold ids with a time in `[start, end]`; all of them when
    /// `set_apart` (items set apart are looked up by key alone).
    pub fn unloaded_in(&self, start: i64, end: i64, set_apart: bool) -> Vec<u32> {
        if set_apart {
            return self.unloaded.keys().copied().collect();
        }
        if start > end {
            return Vec::new();
        }
        let (from, to) = (pack_time(start) / SLAB_SECS, pack_time(end) / SLAB_SECS);
        if from > to {
            return Vec::new();
        }
        self.unloaded.range(from..=to).map(|(&k, _)| k).collect()
    }

    /// Every slab not read yet.
    pub fn unloaded(&self) -> Vec<u32> {
        self.unloaded.keys().copied().collect()
    }

    /// Records that `slab`'s ids are kept in KV, `ids` of them, not read yet.
    pub fn set_unloaded(&mut self, slab: u32, ids: usize) {
        if u64::from(slab + 1) * u64::from(SLAB_SECS) > u64::from(self.floor) {
            *self.unloaded.entry(slab).or_default() += ids;
        }
    }

    /// The slab's ids were read (with [`SeenSet::load_records`]).
    pub fn mark_loaded(&mut self, slab: u32) {
        self.unloaded.remove(&slab);
    }

    /// The first slab something was looked up in before it was read, if any.
    pub fn blind(&self) -> Option<u32> {
        self.blind.get()
    }

    /// Adds the ids of `other` read from a project `keep` accepts (as unsaved ids).
    pub fn extend_where(&mut self, other: &SeenSet, keep: impl Fn(u64) -> bool) {
        for r in other.iter_records() {
            if keep(r.project) && self.add(r) {
                self.unsaved.push(r);
            }
        }
    }

    /// Forgets ids of events older than `before`: no later window reaches them.
    pub fn prune(&mut self, before: i64) {
        let before = pack_time(before);
        if before <= self.floor {
            return;
        }
        self.floor = before;
        // Slabs wholly before the floor are not needed: never read them.
        self.unloaded = self.unloaded.split_off(&(before / SLAB_SECS));
        let keep = self.buckets.split_off(&(before / BUCKET_SECS));
        let dropped: usize = self.buckets.values().map(Bucket::len).sum();
        self.buckets = keep;
        self.len -= dropped;
        if let Some(first) = self.buckets.values_mut().next() {
            let n = first.len();
            first.retain(|e| e.time >= before, self.projects.len());
            self.len -= n - first.len();
        }
        let n = self.set_apart.len();
        self.set_apart.retain(|_, t| *t >= before);
        self.len -= n - self.set_apart.len();
        self.unsaved.retain(|r| r.time >= before);
    }

    /// Nothing older than this (unix seconds) is kept.
    pub fn floor(&self) -> i64 {
        unpack_time(self.floor)
    }

    /// Every id, in no particular order, without copying the set.
    pub fn iter_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.records_between(0, u64::from(u32::MAX) + 1)
    }

    /// The ids with a (packed) time in `[start, end)`, in no particular order.
    fn records_between(&self, start: u32, end: u64) -> impl Iterator<Item = Record> + '_ {
        let last_bucket = end.min(u64::from(u32::MAX)) as u32 / BUCKET_SECS;
        // Items set apart are in the slab of their time, like the others.
        let last = end.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
        self.look(start / SLAB_SECS, last / SLAB_SECS + 1, false);
        let within = move |t: u32| t >= start && u64::from(t) < end;
        self.buckets
            .range(start / BUCKET_SECS..=last_bucket)
            .flat_map(|(_, b)| b.iter())
            .filter(move |e| within(e.time))
            .map(|e| self.record(e))
            .chain(
                self.set_apart
                    .iter()
                    .filter(move |(_, &t)| within(t))
                    .map(|(k, &t)| Record {
                        key: *k,
                        time: t,
                        project: SET_APART,
                    }),
            )
    }

    /// Every id, sorted by time, then key.
    pub fn records(&self) -> Vec<Record> {
        let mut all: Vec<Record> = self.iter_records().collect();
        all.sort_unstable_by_key(|r| (r.time, r.key));
        all
    }

    fn record(&self, e: &Entry) -> Record {
        Record {
            key: e.key.bytes(),
            time: e.time,
            project: self.projects[e.project as usize],
        }
    }

    /// The ids of a slab (see [`Record::slab`]).
    pub fn slab_records(&self, slab: u32) -> Vec<Record> {
        self.records_between(slab * SLAB_SECS, u64::from((slab + 1) * SLAB_SECS))
            .collect()
    }

    /// The ids added since the last save.
    pub fn unsaved(&self) -> &[Record] {
        &self.unsaved
    }

    /// Puts the unsaved ids in segment order (see [`sort_for_segment`]), which groups them by
    /// slab.
    pub fn sort_unsaved(&mut self) {
        sort_for_segment(&mut self.unsaved);
    }

    /// The last save wrote every unsaved id.
    pub fn mark_saved(&mut self) {
        self.unsaved = Vec::new();
    }

    /// Every id is to be written again (a set read from another layout's keys).
    pub fn mark_all_unsaved(&mut self) {
        let mut all = Vec::with_capacity(self.len);
        all.extend(self.iter_records());
        self.unsaved = all;
    }

    /// An empty set that keeps nothing older than `floor` (unix seconds).
    pub fn with_floor(floor: i64) -> SeenSet {
        SeenSet {
            floor: pack_time(floor),
            ..SeenSet::default()
        }
    }

    /// Builds a set from records (not unsaved), dropping those older than `floor`.
    pub fn from_records(records: impl IntoIterator<Item = Record>, floor: i64) -> SeenSet {
        let mut set = SeenSet::with_floor(floor);
        set.load_records(records, 0);
        set
    }

    /// Adds ids read back from KV (not unsaved), sorted once rather than inserted one by
    /// one; `capacity` is how many there are at most (one allocation). Ids older than the
    /// floor and repeats are dropped.
    pub fn load_records(&mut self, records: impl IntoIterator<Item = Record>, capacity: usize) {
        let mut entries: Vec<Entry> = Vec::with_capacity(capacity);
        for r in records {
            if r.time < self.floor {
                continue;
            }
            if project_is_set_apart(r.project) {
                if self.set_apart.insert(r.key, r.time).is_none() {
                    self.len += 1;
                }
                continue;
            }
            // (Ids come in runs of one project: `project_slot` answers those from its cache.)
            let project = self.project_slot(r.project);
            entries.push(Entry {
                key: Words::of(&r.key),
                time: r.time,
                project,
            });
        }
        // Segments are written in this order (see [`sort_for_segment`]): one segment is
        // sorted already, several are sorted runs, which a merge sort takes in one pass each.
        let minute_key = |e: &Entry| (e.time / BUCKET_SECS, e.key);
        if !entries.is_sorted_by_key(minute_key) {
            entries.sort_by_key(minute_key);
        }
        entries.dedup_by(|a, b| minute_key(a) == minute_key(b));
        for run in entries.chunk_by(|a, b| a.time / BUCKET_SECS == b.time / BUCKET_SECS) {
            let bucket = self.buckets.entry(run[0].time / BUCKET_SECS).or_default();
            if bucket.len() == 0 {
                bucket.set_bulk(run.to_vec(), self.projects.len());
                self.len += run.len();
                continue;
            }
            for e in run {
                if !bucket.find(&e.key) {
                    bucket.insert(*e);
                    self.len += 1;
                }
            }
        }
    }
}

/// Puts records in the order a set reads them back fastest: by minute, then id.
pub fn sort_for_segment(records: &mut [Record]) {
    records.sort_unstable_by_key(|r| (r.time / BUCKET_SECS, r.key));
}

fn project_is_set_apart(project: u64) -> bool {
    project == SET_APART
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_id(n: u64) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn ids_are_found_in_their_minute_whatever_the_order_they_came_in() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        // Many ids in a few minutes, inserted out of order: recent lists merge many times.
        for i in (0..5_000u64).rev() {
            assert!(seen.insert_key(seen_key(&hex_id(i * 7919)), t + (i % 180) as i64, i % 3));
        }
        for i in 0..5_000u64 {
            let key = seen_key(&hex_id(i * 7919));
            assert!(seen.contains_at(&key, t + (i % 180) as i64), "{i}");
            assert!(!seen.insert_key(key, t + (i % 180) as i64, i % 3));
        }
        assert!(!seen.contains_at(&seen_key(&hex_id(1)), t));
        assert_eq!(seen.len(), 5_000);
        assert_eq!(seen.unsaved().len(), 5_000);
        // Read back from its records, the set is the same.
        let back = SeenSet::from_records(seen.records(), 0);
        assert_eq!(back, seen);
        assert!(back.unsaved().is_empty());
    }

    #[test]
    fn big_minutes_find_every_id_whatever_the_ids_first_bytes() {
        // Enough ids in one minute for the bulk's index and many table merges: random ids,
        // and ids that all share their first bytes (all in one slice of the index).
        let t = 1_790_000_040;
        for skewed in [false, true] {
            let key = |i: u64| {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                k[8..].copy_from_slice(&i.to_be_bytes());
                if skewed {
                    k[..4].copy_from_slice(&[0xAB; 4]);
                }
                k
            };
            let mut seen = SeenSet::default();
            for i in 0..40_000u64 {
                assert!(seen.insert_key(key(i), t + (i % 20) as i64, i % 4), "{i}");
                // Every tenth id again at once: found in the table or the bulk.
                if i % 10 == 0 {
                    assert!(!seen.insert_key(key(i / 2), t + (i / 2 % 20) as i64, 0));
                }
            }
            assert_eq!(seen.len(), 40_000);
            for i in 0..40_000u64 {
                assert!(seen.contains_at(&key(i), t + (i % 20) as i64), "{i}");
            }
            assert!(!seen.contains_at(&key(40_000), t));
            // Pruned in the middle of the minute: only the later seconds' ids stay.
            seen.prune(t + 10);
            assert_eq!(seen.len(), 20_000);
            for i in 0..40_000u64 {
                let at = t + (i % 20) as i64;
                assert_eq!(seen.contains_at(&key(i), at), at >= t + 10, "{i}");
            }
            assert_eq!(seen.counts_in(t, t + 60).values().sum::<u64>(), 20_000);
        }
    }

    #[test]
    fn pruning_forgets_only_ids_before_the_bound() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        for i in 0..300u64 {
            seen.insert_key(seen_key(&hex_id(i)), t + i as i64, 1);
        }
        seen.insert_key(seen_key("apart"), t + 10, SET_APART);
        seen.prune(t + 150);
        assert_eq!(seen.len(), 150);
        assert!(!seen.contains_at(&seen_key(&hex_id(149)), t + 149));
        assert!(seen.contains_at(&seen_key(&hex_id(150)), t + 150));
        assert!(!seen.set_apart_contains(&seen_key("apart")));
        assert!(seen
            .unsaved()
            .iter()
            .all(|r| unpack_time(r.time) >= t + 150));
        // Ids older than the floor are not recorded again.
        assert_eq!(seen.floor(), t + 150);
    }

    #[test]
    fn counts_per_project_cover_exactly_the_range() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        for i in 0..10u64 {
            seen.insert_key(seen_key(&hex_id(i)), t + i as i64 * 10, 1 + i % 2);
        }
        seen.insert_key(seen_key("x"), t + 20, SET_APART);
        let counts = seen.counts_in(t + 10, t + 60);
        assert_eq!(counts.get(&1), Some(&2), "{counts:?}");
        assert_eq!(counts.get(&2), Some(&3), "{counts:?}");
        assert_eq!(counts.get(&SET_APART), Some(&1), "{counts:?}");
    }

    #[test]
    fn counts_by_whole_minutes_agree_with_counting_every_id() {
        // Ids of three projects over ten minutes, some loaded in bulk, some inserted, then
        // pruned mid-minute: every range's counts equal a count of the records themselves.
        let t = unpack_time(1_000 * SLAB_SECS);
        let record = |i: u64| Record {
            key: seen_key(&hex_id(i)),
            time: pack_time(t + (i * 7 % 600) as i64),
            project: 1 + i % 3,
        };
        let mut seen = SeenSet::from_records((0..400).map(record), t);
        for i in 400..900 {
            let r = record(i);
            seen.insert_key(r.key, unpack_time(r.time), r.project);
        }
        let check = |seen: &SeenSet| {
            for (from, to) in [
                (0, 600),
                (0, 60),
                (60, 180),
                (59, 181),
                (5, 7),
                (120, 600),
                (590, 700),
            ] {
                let (start, end) = (t + from, t + to);
                let mut want: HashMap<u64, u64> = HashMap::new();
                for r in seen.iter_records() {
                    let at = unpack_time(r.time);
                    if at >= start && at < end {
                        *want.entry(r.project).or_default() += 1;
                    }
                }
                assert_eq!(seen.counts_in(start, end), want, "[{from}, {to})");
            }
        };
        check(&seen);
        seen.prune(t + 90);
        check(&seen);
        assert!(seen.counts_in(t, t + 600).values().sum::<u64>() < 900);
    }

    #[test]
    fn a_slab_holds_exactly_the_ids_of_its_quarter_hour() {
        let mut seen = SeenSet::default();
        let t = unpack_time(1_000 * SLAB_SECS);
        for i in 0..u64::from(3 * SLAB_SECS) {
            seen.insert_key(seen_key(&hex_id(i)), t + i as i64, 4);
        }
        let slab = seen.slab_records(1_001);
        assert_eq!(slab.len(), SLAB_SECS as usize);
        assert!(slab.iter().all(|r| r.slab() == 1_001));
        let mut bytes = Vec::new();
        slab[0].encode_into(&mut bytes);
        assert_eq!(bytes.len(), RECORD_BYTES);
        assert_eq!(Record::decode(&bytes), slab[0]);
    }

    #[test]
    fn memory_per_id_stays_near_24_bytes_as_minutes_grow() {
        let mut seen = SeenSet::default();
        let t = 1_790_000_000;
        for i in 0..200_000u64 {
            seen.insert_key(seen_key(&hex_id(i * 31)), t + (i % 600) as i64, 1);
        }
        let allocated: usize = seen.buckets.values().map(Bucket::allocated).sum();
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let per_id = allocated as f64 / seen.len() as f64;
        assert!(per_id < 24.0 * 1.35, "{per_id} bytes an id");
    }
}
