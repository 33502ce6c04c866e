//! Sorted indexes over the simulator's events and dataset rows, so that a page costs a binary
//! search, a walk over the offset a block at a time and the page itself, not a filter and a
//! sort of everything stored (a benchmark pages through a million rows).
//!
//! The `Vec`s stay the truth: a [`Table`] hands out its rows read-only and drops its index on
//! every change, and the index is rebuilt on the next query that needs it.

use std::cell::OnceCell;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, Range};

use crate::{Event, ExploreRow};

/// Rows per block whose ingestion times are kept sorted.
const BLOCK: usize = 512;

/// What a [`Table`] keeps sorted for its queries.
pub(crate) trait Indexed: Sized {
    type Index;
    fn build_index(items: &[Self]) -> Self::Index;
}

/// Rows, and an index over them built when first needed after a change.
pub(crate) struct Table<T: Indexed> {
    items: Vec<T>,
    index: OnceCell<T::Index>,
}

impl<T: Indexed> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            index: OnceCell::new(),
        }
    }
}

impl<T: Indexed + fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.items.len())
            .field("indexed", &self.index.get().is_some())
            .finish()
    }
}

impl<T: Indexed> Deref for Table<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T: Indexed> Table<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.index.take();
        self.items.push(item);
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        let before = self.items.len();
        self.items.retain(keep);
        if self.items.len() != before {
            self.index.take();
        }
    }

    pub(crate) fn index(&self) -> &T::Index {
        self.index.get_or_init(|| T::build_index(&self.items))
    }
}

/// Rows of a table in one order (their positions in it), with the ingestion times of each
/// block of that order sorted, so the rows visible at a time are counted without visiting
/// each.
#[derive(Debug, Default)]
pub(crate) struct Order {
    pos: Vec<u32>,
    /// `received_at` of the rows of each `BLOCK` of `pos`, sorted within the block.
    received: Vec<i64>,
}

impl Order {
    /// From rows in order: each one's position and ingestion time.
    fn new(rows: impl Iterator<Item = (u32, i64)>) -> Order {
        let (pos, mut received): (Vec<u32>, Vec<i64>) = rows.unzip();
        for block in received.chunks_mut(BLOCK) {
            block.sort_unstable();
        }
        Order { pos, received }
    }

    /// Positions in the table, in this order.
    pub(crate) fn positions(&self) -> &[u32] {
        &self.pos
    }

    /// How many rows of `range` (indexes into the order) are visible at `now`.
    pub(crate) fn count_visible(
        &self,
        range: Range<usize>,
        now: i64,
        received_at: impl Fn(u32) -> i64,
    ) -> usize {
        let mut n = 0;
        let mut i = range.start;
        while i < range.end {
            let block_end = (i / BLOCK + 1) * BLOCK;
            if i.is_multiple_of(BLOCK) && block_end <= range.end {
                n += self.received[i..block_end].partition_point(|&r| r <= now);
                i = block_end;
            } else {
                let end = block_end.min(range.end);
                n += self.pos[i..end]
                    .iter()
                    .filter(|&&p| received_at(p) <= now)
                    .count();
                i = end;
            }
        }
        n
    }

    /// The index (into the order) of the `k`-th (from 0) row of `range` visible at `now`.
    pub(crate) fn nth_visible(
        &self,
        range: Range<usize>,
        mut k: usize,
        now: i64,
        received_at: impl Fn(u32) -> i64,
    ) -> Option<usize> {
        let mut i = range.start;
        while i < range.end {
            let block_end = (i / BLOCK + 1) * BLOCK;
            if i.is_multiple_of(BLOCK) && block_end <= range.end {
                let visible = self.received[i..block_end].partition_point(|&r| r <= now);
                if k >= visible {
                    k -= visible;
                    i = block_end;
                    continue;
                }
            }
            let end = block_end.min(range.end);
            for j in i..end {
                if received_at(self.pos[j]) <= now {
                    if k == 0 {
                        return Some(j);
                    }
                    k -= 1;
                }
            }
            i = end;
        }
        None
    }
}

/// Each project's events newest first, as the project events endpoint pages them:
/// `-date_created, -event_id`, and in the order they were added when both are equal (what a
/// stable sort of the list gives).
#[derive(Debug, Default)]
pub(crate) struct EventIndex {
    pub(crate) by_project: BTreeMap<u64, Order>,
}

impl Indexed for Event {
    type Index = EventIndex;
    fn build_index(events: &[Event]) -> EventIndex {
        // Sort keys read in one pass: the event time, the event id's first 8 bytes (ordered
        // as the id is), the position, the ingestion time.
        type Key = (Reverse<i64>, Reverse<u64>, u32, i64);
        let mut keys: BTreeMap<u64, Vec<Key>> = BTreeMap::new();
        for (p, e) in events.iter().enumerate() {
            let mut prefix = [0u8; 8];
            let id = e.event_id.as_bytes();
            let n = id.len().min(8);
            prefix[..n].copy_from_slice(&id[..n]);
            keys.entry(e.project_id).or_default().push((
                Reverse(e.date_created),
                Reverse(u64::from_be_bytes(prefix)),
                position(p),
                e.received_at,
            ));
        }
        let by_project = keys
            .into_iter()
            .map(|(project, mut keys)| {
                keys.sort_unstable();
                // Ids alike in their first 8 bytes: by the whole id, descending, then in the
                // order added.
                for run in keys.chunk_by_mut(|a, b| (a.0, a.1) == (b.0, b.1)) {
                    if run.len() > 1 {
                        run.sort_by(|a, b| {
                            let id = |k: &Key| &events[k.2 as usize].event_id;
                            id(b).cmp(id(a)).then(a.2.cmp(&b.2))
                        });
                    }
                }
                let order = Order::new(keys.into_iter().map(|(_, _, p, r)| (p, r)));
                (project, order)
            })
            .collect();
        EventIndex { by_project }
    }
}

/// Each dataset's rows oldest first (by `timestamp`, then in the order they were added): all
/// of them (`None`) and each project's.
#[derive(Debug, Default)]
pub(crate) struct RowIndex {
    pub(crate) by_dataset: BTreeMap<(&'static str, Option<u64>), Order>,
}

impl Indexed for ExploreRow {
    type Index = RowIndex;
    fn build_index(rows: &[ExploreRow]) -> RowIndex {
        // Sort keys read in one pass: the time, the position, the ingestion time, the project.
        let mut keys: BTreeMap<&'static str, Vec<(i64, u32, i64, u64)>> = BTreeMap::new();
        for (p, r) in rows.iter().enumerate() {
            keys.entry(r.dataset).or_default().push((
                r.timestamp,
                position(p),
                r.received_at,
                r.project_id,
            ));
        }
        let mut by_dataset = BTreeMap::new();
        for (dataset, mut keys) in keys {
            keys.sort_unstable();
            let mut per_project: BTreeMap<u64, Vec<(u32, i64)>> = BTreeMap::new();
            for &(_, p, r, project) in &keys {
                per_project.entry(project).or_default().push((p, r));
            }
            for (project, rows) in per_project {
                by_dataset.insert((dataset, Some(project)), Order::new(rows.into_iter()));
            }
            let all = Order::new(keys.into_iter().map(|(_, p, r, _)| (p, r)));
            by_dataset.insert((dataset, None), all);
        }
        RowIndex { by_dataset }
    }
}

fn position(p: usize) -> u32 {
    u32::try_from(p).expect("at most 2^32 rows in a simulator table")
}

/// The order of no rows.
pub(crate) static EMPTY_ORDER: Order = Order {
    pos: Vec::new(),
    received: Vec::new(),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn event(rng: &mut Rng, project_id: u64) -> Event {
        // Few dates, ids that often share their first 8 bytes or are equal, some short.
        const IDS: &[&str] = &[
            "",
            "a",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgh1",
            "abcdefg",
            "b",
        ];
        let id = IDS[rng.below(IDS.len() as u64) as usize];
        Event {
            event_id: format!("{id}{}", "z".repeat(rng.below(2) as usize)),
            project_id,
            group_id: 1,
            date_created: rng.below(4) as i64,
            received_at: rng.below(10) as i64,
            title: String::new(),
            padding: 0,
        }
    }

    #[test]
    fn events_are_in_the_endpoints_order_and_counted_by_ingestion_time() {
        let mut rng = Rng::new(11);
        let events: Vec<Event> = (0..3000).map(|i| event(&mut rng, i % 2)).collect();
        let index = Event::build_index(&events);
        for project in 0..2 {
            let mut want: Vec<u32> = (0..events.len() as u32)
                .filter(|&p| events[p as usize].project_id == project)
                .collect();
            // What the endpoint did: a stable sort of the list.
            want.sort_by(|&a, &b| {
                let (a, b) = (&events[a as usize], &events[b as usize]);
                b.date_created
                    .cmp(&a.date_created)
                    .then_with(|| b.event_id.cmp(&a.event_id))
            });
            let order = &index.by_project[&project];
            assert_eq!(order.positions(), want.as_slice());
            let received = |p: u32| events[p as usize].received_at;
            for _ in 0..200 {
                let lo = rng.below(want.len() as u64 + 1) as usize;
                let hi = lo + rng.below((want.len() - lo) as u64 + 1) as usize;
                let now = rng.below(11) as i64 - 1;
                let visible: Vec<usize> = (lo..hi).filter(|&i| received(want[i]) <= now).collect();
                assert_eq!(order.count_visible(lo..hi, now, received), visible.len());
                for k in [0, 1, visible.len() / 2, visible.len(), visible.len() + 1] {
                    assert_eq!(
                        order.nth_visible(lo..hi, k, now, received),
                        visible.get(k).copied(),
                        "{lo}..{hi} k={k} now={now}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_are_oldest_first_in_the_order_added_per_dataset_and_project() {
        let mut rng = Rng::new(12);
        let rows: Vec<ExploreRow> = (0..2000)
            .map(|i| ExploreRow {
                dataset: ["spans", "logs"][i % 2],
                id: i.to_string(),
                project_id: rng.below(3),
                timestamp: rng.below(50) as i64,
                received_at: rng.below(60) as i64,
                n: 0,
            })
            .collect();
        let index = ExploreRow::build_index(&rows);
        for dataset in ["spans", "logs"] {
            for project in [None, Some(0), Some(1), Some(2)] {
                let mut want: Vec<u32> = (0..rows.len() as u32)
                    .filter(|&p| {
                        let r = &rows[p as usize];
                        r.dataset == dataset && project.is_none_or(|x| r.project_id == x)
                    })
                    .collect();
                want.sort_by_key(|&p| rows[p as usize].timestamp);
                let order = &index.by_dataset[&(dataset, project)];
                assert_eq!(order.positions(), want.as_slice());
                let received = |p: u32| rows[p as usize].received_at;
                let n = order.count_visible(0..want.len(), 30, received);
                assert_eq!(n, want.iter().filter(|&&p| received(p) <= 30).count());
            }
        }
    }
}
