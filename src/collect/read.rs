//! Reading a planned window page by page: the request for each page (by position or by
//! Sentry's cursors), what a page must show again, items set apart, room in memory and in
//! the object buffer, and where the next page starts.

use super::collector::*;
use super::commit::*;
use super::plan::*;
use crate::checkpoint::{Keyset, WindowProgress};
use crate::config::Config;
use crate::delivered::SeenSet;
use crate::gcs::{self};
use crate::identity::seen_key;
use crate::sentry::client::{is_no_global_views, Answer, Page, ORG_WIDE};
use crate::sentry::pages::{Item, Parsed};
use crate::sentry::SentryError;
use crate::streams::{Kind, Order};
use crate::time::rfc3339;
use crate::window::Window;

/// A page to ask for, and what it must show.
pub(super) struct Ask {
    window: Window,
    /// A project, or [`ORG_WIDE`].
    unit: u64,
    /// `events` paging by position: the position the page is asked from.
    keyset: Option<Keyset>,
    /// Oldest first: the last row read (hex key, time, unreadable rows after it), which the
    /// page must hold again.
    checked: Option<(String, i64, u64)>,
    cursor: Option<String>,
    range: Window,
}

/// How [`Collector::read`] ended.
pub(super) enum Read {
    /// The window is read.
    Done,
    /// The window was planned again (shorter); the new plan is the window in progress.
    PlannedAgain,
}

/// Where an oldest-first window that cannot hold more ids ends instead: the latest time it
/// was read to, if that is past the watermark (something new is delivered) and before its end.
pub(super) fn cut_at(window: Window, watermark: Option<i64>, reached: Option<i64>) -> Option<i64> {
    let past = watermark.unwrap_or(window.start).max(window.start);
    reached.filter(|&t| t > past && t < window.end)
}

/// Why a window cannot be read within the memory a run may use, and what to change.
pub(super) fn too_many_ids(stream: &str, config: &Config) -> String {
    let t = &config.timing;
    format!(
        "{stream}: the window holds more than {} ids to remember (the overlap's and the window's), the most a run keeps in memory: lower `max_window` (now {}s; it applies from the next window: the one in progress keeps its end) or `overlap` (now {}s), or split the org with `shard`",
        crate::delivered::MAX_IDS,
        t.max_window.as_secs(),
        t.overlap.as_secs()
    )
}

/// What [`absorb`] did with a page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Absorbed {
    pub written: usize,
    pub duplicates: u64,
    pub outside: u64,
}

/// The hot path after parsing: drops items outside the window and items already delivered,
/// and appends the others to `out` as NDJSON lines.
pub fn absorb(
    page: &Parsed,
    window: Window,
    project: u64,
    seen: &mut SeenSet,
    out: &mut Vec<u8>,
) -> Absorbed {
    let mut took = Absorbed::default();
    for item in &page.items {
        if !window.contains(item.time) {
            took.outside += 1;
        } else if seen.insert_key(item.key, item.time, owner(project, item)) {
            out.extend_from_slice(page.json(item));
            out.push(b'\n');
            took.written += 1;
        } else {
            took.duplicates += 1;
        }
    }
    took
}

/// Whose an item is in the delivered set: the project read, or for an org-wide read the
/// row's own project when it names one (so a deleted project's rows can be told apart).
fn owner(unit: u64, item: &crate::sentry::pages::Item) -> u64 {
    match (unit, item.project) {
        (ORG_WIDE, Some(p)) if p != ORG_WIDE && p != super::collector::QUARANTINED => p,
        _ => unit,
    }
}

/// The delivered-id key of an item set apart: of its whole JSON text (it has no usable id).
pub(super) fn rejected_key(json: &[u8]) -> [u8; 16] {
    seen_key(&String::from_utf8_lossy(json))
}

/// Moves to the next project (or unit), forgetting the position inside the last one.
pub(super) fn next_unit(progress: &mut WindowProgress) {
    progress.next_project += 1;
    progress.keyset = None;
    new_query(progress, None);
}

/// Starts the unit's query again at `start` (its range's start when `None`), forgetting the
/// position inside the last one.
pub(super) fn new_query(progress: &mut WindowProgress, start: Option<i64>) {
    progress.cursor = None;
    progress.query_start = start;
    progress.query_rows = 0;
    progress.last_row = None;
    progress.restarted_at = None;
}

/// After this many failed checks at one position, a project follows Sentry's own cursors.
pub(super) const MAX_KEYSET_RESETS: u32 = 3;

/// The offset of a `0:<offset>:<is_prev>` cursor.
pub(super) fn cursor_offset(cursor: &str) -> Option<u64> {
    let mut parts = cursor.split(':');
    let (_, offset) = (parts.next()?, parts.next()?);
    offset.parse().ok()
}

/// Whether the page's oldest second begins inside it (a newer row comes first): then the rows
/// of that second read so far are exactly the page's last ones, and positions can resume.
pub(super) fn reaches_older_second(rows: &[Option<&Item>]) -> bool {
    let mut times = rows.iter().flatten().map(|i| i.time);
    matches!((times.next(), times.next_back()), (Some(first), Some(last)) if first > last)
}

/// The page's rows in order: each an item, or `None` for a row without a readable id or time
/// (it still takes its place in Sentry's offsets).
pub(super) fn rows(page: &Parsed) -> Vec<Option<&Item>> {
    let mut rows: Vec<(usize, Option<&Item>)> = page
        .items
        .iter()
        .map(|i| (i.span.start, Some(i)))
        .chain(page.rejected.iter().map(|r| (r.span.start, None)))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows.into_iter().map(|r| r.1).collect()
}

/// Whether the row read again at the top of the page is not the one read last: rows above
/// it moved.
pub(super) fn boundary_moved(keyset: Option<&Keyset>, rows: &[Option<&Item>]) -> bool {
    let Some(Keyset {
        read: 1..,
        last: Some(last),
        ..
    }) = keyset
    else {
        return false;
    };
    !matches!(rows.first(), Some(Some(item)) if &crate::hex::encode(&item.key) == last)
}

/// Where the page after the one of `rows` starts, that page having been asked for at
/// `keyset` (`None`: the top of the list before `end`), with its top row checked.
pub(super) fn next_keyset(keyset: Option<&Keyset>, end: i64, rows: &[Option<&Item>]) -> Keyset {
    let offset = keyset.map_or(0, |k| k.read.saturating_sub(1));
    // Rows after the last one with a time are of an unknown second: they are read again.
    let resets = keyset.map_or(0, |k| k.resets);
    let Some(last) = rows.iter().rposition(|r| r.is_some()) else {
        return Keyset {
            end,
            read: offset + rows.len() as u64 + 1,
            last: None,
            resets,
        };
    };
    let item = rows[last].expect("a row with a time");
    let oldest = item.time;
    let first_of_second = rows
        .iter()
        .position(|r| r.is_some_and(|i| i.time == oldest))
        .unwrap_or(last);
    // When the whole page is that second, the second began at the top of the list: the rows
    // above the page were of it too.
    let read = if first_of_second == 0 {
        offset + last as u64 + 1
    } else {
        (last - first_of_second) as u64 + 1
    };
    Keyset {
        end: oldest + 1,
        read,
        last: Some(crate::hex::encode(&item.key)),
        // Failed checks count only while the position stays in the same second.
        resets: if oldest + 1 == end { resets } else { 0 },
    }
}

impl Collector<'_, '_> {
    /// Reads pages until the window is done. On a stop, returns the position reached so far.
    pub(super) fn read(&mut self, progress: &mut WindowProgress) -> Result<Read, Stop> {
        self.read_up_to = None;
        while progress.next_project < progress.projects.len() {
            let ask = self.next_request(progress);
            let Some(page) = self.fetch(progress, &ask)? else {
                continue;
            };
            self.summary.pages += 1;
            let Some(held) = self.check_position(progress, &ask, &page) else {
                continue;
            };
            if !self.vet(progress, &page.parsed, ask.window)? {
                continue;
            }
            if let Some(done) = self.make_room(progress, &page.parsed, ask.window)? {
                return Ok(done);
            }
            self.take(&ask, &page.parsed, held);
            match self.def.order {
                Order::NewestFirst => self.advance_newest_first(progress, &ask, page),
                Order::OldestFirst => self.advance_oldest_first(progress, &ask, page),
            }
            if self.buffer.ndjson.len() >= OBJECT_TARGET_BYTES {
                self.flush(progress)?;
            }
        }
        Ok(Read::Done)
    }

    /// Whether `events` pages by position, not by Sentry's offset cursors (see [`Keyset`]):
    /// unless the window or the project fell back to those.
    pub(super) fn keyed(&self, p: &WindowProgress) -> bool {
        self.def.kind == Kind::Events && !p.dates_ignored && p.cursor.is_none()
    }

    /// The next page to ask for: the unit, the range, the cursor, and what the page must show
    /// again to prove that nothing moved.
    pub(super) fn next_request(&self, progress: &WindowProgress) -> Ask {
        let window = progress.window;
        let unit = progress.projects[progress.next_project];
        let keyset = progress.keyset.clone().filter(|_| self.keyed(progress));
        let keyset_cursor = keyset
            .as_ref()
            .filter(|k| k.read > 0)
            .map(|k| format!("0:{}:0", k.read - 1));
        // Oldest first: from the last readable row's offset, to check that it is still there.
        let checked = progress
            .last_row
            .clone()
            .filter(|_| self.def.order == Order::OldestFirst);
        let check_cursor = checked.as_ref().and_then(|&(_, _, after)| {
            let o = progress.cursor.as_deref().and_then(cursor_offset)?;
            (o > after).then(|| format!("0:{}:0", o - 1 - after))
        });
        let checked = checked.filter(|_| check_cursor.is_some());
        let cursor = if self.keyed(progress) {
            keyset_cursor
        } else if check_cursor.is_some() {
            check_cursor
        } else {
            progress.cursor.clone()
        };
        let range = Window {
            start: progress.query_start.unwrap_or_else(|| {
                progress
                    .read_from
                    .get(progress.next_project)
                    .copied()
                    .unwrap_or(window.start)
            }),
            end: progress.keyset.as_ref().map_or_else(
                || {
                    let to = progress.read_to.get(progress.next_project).copied();
                    to.unwrap_or(window.end).min(window.end)
                },
                |k| k.end,
            ),
        };
        Ask {
            window,
            unit,
            keyset,
            checked,
            cursor,
            range,
        }
    }

    /// Asks Sentry for the page. `None`: the plan changed instead (a project gone, an org
    /// without multi-project queries), and the loop asks again.
    pub(super) fn fetch(
        &mut self,
        progress: &mut WindowProgress,
        ask: &Ask,
    ) -> Result<Option<Page>, Stop> {
        let unit = ask.unit;
        let answer = match self
            .sentry
            .stream_page(self.def, unit, ask.range, ask.cursor.as_deref())
        {
            // A project deleted since the window was planned answers 404 (its event list)
            // or 403 (named in a Discover query): skip it, if the project list agrees that
            // it is gone.
            Err(SentryError::Refused { status, message })
                if unit != ORG_WIDE && self.vanished(unit)? =>
            {
                let w = format!(
                    "project {unit} no longer exists (deleted since the window was planned; Sentry answered {status}): {} skipped it; its events are no longer in Sentry",
                    self.def.name
                );
                eprintln!("warning: {w} ({message})");
                self.summary.warnings.push(w);
                next_unit(progress);
                self.bad_reads = 0;
                return Ok(None);
            }
            other => other?,
        };
        match answer {
            Answer::Data(page) => Ok(Some(page)),
            Answer::Refused(detail)
                if unit == ORG_WIDE
                    && matches!(self.def.kind, Kind::Explore(_) | Kind::Issues)
                    && is_no_global_views(&detail) =>
            {
                self.read_each_project(progress)?;
                Ok(None)
            }
            Answer::Refused(detail) => {
                let whom = if unit == ORG_WIDE {
                    String::new()
                } else {
                    format!(" of project {unit}")
                };
                Err(Stop::Failed(Failure {
                    message: format!(
                        "Sentry: {}{whom}: Sentry refused the request (400): {detail}",
                        self.def.name
                    ),
                    transient: false,
                }))
            }
        }
    }

    /// An org without multi-project queries: the window is read one project at a time, each
    /// over the whole window (the org-wide plan's ranges were counted for the org).
    pub(super) fn read_each_project(&mut self, progress: &mut WindowProgress) -> Result<(), Stop> {
        self.summary.warnings.push(format!(
            "this org cannot query several projects at once (no global views): {} is read one project at a time",
            self.def.name
        ));
        progress.projects = self
            .sentry
            .all_projects()?
            .into_iter()
            .map(|p| p.id)
            .collect();
        progress.read_from.clear();
        progress.read_to.clear();
        next_unit(progress);
        progress.next_project = 0;
        self.summary.projects_active = self.summary.projects_active.max(progress.projects.len());
        self.bad_reads = 0;
        Ok(())
    }

    /// Oldest first: whether the page holds the last row read (late rows that arrived before
    /// it move it down the page: they are new, the rows before it duplicates), with its time.
    /// `None`: it does not, rows before the cursor were deleted, and the query starts again at
    /// the last row's time (once per place; rows of that second read again are dropped as
    /// duplicates).
    pub(super) fn check_position(
        &mut self,
        progress: &mut WindowProgress,
        ask: &Ask,
        page: &Page,
    ) -> Option<Option<(bool, i64)>> {
        let held = ask.checked.as_ref().map(|(last, at, _)| {
            // (A key's hex reads back as the key itself.)
            let key = seen_key(last);
            (page.parsed.items.iter().any(|i| i.key == key), *at)
        });
        if let Some((false, at)) = held {
            if progress.restarted_at != Some(at) && at < ask.range.end {
                self.summary.queries_split += 1;
                new_query(progress, Some(at));
                progress.restarted_at = Some(at);
                self.bad_reads = 0;
                return None;
            }
            let w = format!(
                "{}: rows before the read position kept moving at {}; the page was taken as Sentry served it, and rows there may not be collected (the next window's overlap count checks)",
                self.def.name,
                rfc3339(at)
            );
            eprintln!("warning: {w}");
            if !self.summary.warnings.contains(&w) {
                self.summary.warnings.push(w);
            }
        }
        Some(held)
    }

    /// Reads from KV the delivered ids the page is checked against, and deals with items
    /// without a readable id or time: the same position is read again a few times, then they
    /// are set apart. `false`: read the position again.
    pub(super) fn vet(
        &mut self,
        progress: &WindowProgress,
        page: &Parsed,
        window: Window,
    ) -> Result<bool, Stop> {
        let times = page.items.iter().map(|i| i.time);
        let times = times.filter(|&t| window.contains(t));
        let (first, last) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
        self.ensure_ids(first, last, !page.rejected.is_empty())?;
        // Items set apart by an earlier read (of an overlap) are not retried.
        let set_apart = |r: &crate::sentry::pages::Rejected| {
            self.seen
                .set_apart_contains(&rejected_key(page.rejected_json(r)))
        };
        if !page.rejected.iter().all(set_apart) {
            self.bad_reads += 1;
            if self.bad_reads < BAD_ITEM_TRIES {
                // The same position again, after a pause the deadline allows.
                let wait = crate::retry::backoff(self.bad_reads - 1, 0.5);
                if self.env.clock.now() + wait + 1.0 < self.sentry.deadline() {
                    self.env.clock.sleep(wait);
                }
                return Ok(false);
            }
            self.quarantine(progress, page)?;
        }
        self.bad_reads = 0;
        if page.partial && !self.warned_partial {
            self.warned_partial = true;
            let w = format!(
                "Sentry answered {} from sampled data (meta.dataScanned = partial): rows outside the sample are not collected",
                self.def.name
            );
            eprintln!("warning: {w}");
            self.summary.warnings.push(w);
        }
        Ok(true)
    }

    /// Room for the page: in the object buffer (an object is written before the page would
    /// pass the target) and in the delivered-id set (past its cap the window ends early or is
    /// planned again shorter, which `Some` says; or the stream stops).
    pub(super) fn make_room(
        &mut self,
        progress: &mut WindowProgress,
        page: &Parsed,
        window: Window,
    ) -> Result<Option<Read>, Stop> {
        // An object is written before it would pass the target, so the buffer's allocation
        // stays within it (and the upload's multipart body is built in place).
        if !self.buffer.ndjson.is_empty()
            && self.buffer.ndjson.len() + page.body_len() > OBJECT_TARGET_BYTES
        {
            self.flush(progress)?;
        }
        if self.buffer.ndjson.capacity() == 0 {
            // One allocation per object: a buffer grown by doubling would leave its earlier
            // blocks behind in linear memory, which never shrinks.
            self.buffer
                .ndjson
                .reserve_exact(OBJECT_TARGET_BYTES.max(page.body_len()) + MULTIPART_SLACK);
        }
        let over_cap = |c: &Self| {
            c.seen.len() + page.items.len() > crate::delivered::MAX_IDS
                && c.seen.len() + c.new_items(page, window) > crate::delivered::MAX_IDS
        };
        // The size of slabs not read yet is what their segments hold, ids below the floor
        // included: read them to know exactly before a window is cut or refused.
        if over_cap(self) && !self.seen.unloaded().is_empty() {
            self.ensure_ids(i64::MIN, i64::MAX, true)?;
        }
        if !over_cap(self) {
            return Ok(None);
        }
        self.over_memory(progress, window).map(Some)
    }

    /// The window holds more ids than the set may keep: an oldest-first window ends early
    /// where it was read to (the watermark moves there, the set is pruned, and the next window
    /// is fitted to the rate seen); a newest-first one of which nothing was delivered yet is
    /// planned again shorter; otherwise the stream stops, naming the settings to change.
    pub(super) fn over_memory(
        &mut self,
        progress: &mut WindowProgress,
        window: Window,
    ) -> Result<Read, Stop> {
        let reached = self.read_up_to.max(progress.query_start);
        // (Read one project at a time, an earlier project's time says nothing about the next
        // one's rows.)
        let org_wide = progress.projects.iter().all(|&p| p == ORG_WIDE);
        if self.def.order == Order::OldestFirst && org_wide {
            if let Some(end) = cut_at(window, self.checkpoint.watermark, reached) {
                let w = format!(
                    "{}: the window ending {} was cut at {} to stay within the {} ids a run keeps in memory; the rest is read by the next window",
                    self.def.name,
                    rfc3339(window.end),
                    rfc3339(end),
                    crate::delivered::MAX_IDS
                );
                eprintln!("warning: {w}");
                self.summary.warnings.push(w);
                progress.window.end = end;
                return Ok(Read::Done);
            }
        }
        // (Planned by an earlier version, or before late events arrived.)
        let base = self.overlap_end(window).unwrap_or(window.start);
        let shorter = minute_between(base, window.end).filter(|_| {
            self.def.kind == Kind::Events && progress.objects == 0 && self.buffer.events == 0
        });
        let Some(shorter) = shorter else {
            return Err(Stop::Failed(Failure {
                message: too_many_ids(self.def.name, self.config),
                transient: false,
            }));
        };
        let w = format!(
            "{}: the window ending {} holds more ids than a run keeps in memory ({}); nothing of it was delivered yet, so it is planned again ending at {} at the latest",
            self.def.name,
            rfc3339(window.end),
            crate::delivered::MAX_IDS,
            rfc3339(shorter)
        );
        eprintln!("warning: {w}");
        self.summary.warnings.push(w);
        // The new plan replaces the window in progress; `run` reads it.
        *progress = self.plan(Window {
            start: window.start,
            end: shorter,
        })?;
        self.flush(progress)?;
        Ok(Read::PlannedAgain)
    }

    /// Takes the page's new rows into the object buffer and the delivered set, and counts
    /// what was dropped (`held`: the row read again to check the position, which is not one
    /// Sentry served twice).
    pub(super) fn take(&mut self, ask: &Ask, page: &Parsed, held: Option<(bool, i64)>) {
        let window = ask.window;
        let started = self.env.clock.now();
        let took = absorb(
            page,
            window,
            ask.unit,
            &mut self.seen,
            &mut self.buffer.ndjson,
        );
        self.summary.timing.absorb_ms += ms_since(self.env, started);
        if self.def.order == Order::OldestFirst {
            let latest = page.items.iter().map(|i| i.time);
            let latest = latest.filter(|&t| window.contains(t)).max();
            self.read_up_to = self.read_up_to.max(latest);
        }
        self.buffer.events += took.written;
        self.summary.events += took.written as u64;
        let (mut duplicates, mut outside) = (took.duplicates, took.outside);
        if let Some((true, at)) = held {
            if window.contains(at) {
                duplicates = duplicates.saturating_sub(1);
            } else {
                outside = outside.saturating_sub(1);
            }
        }
        self.summary.duplicates_dropped += duplicates;
        self.summary.outside_window_dropped += outside;
    }

    /// Newest first: where the next page starts. A page that reaches past the range's start
    /// means the rest is older (servers that ignore start/end return the whole retention;
    /// audit logs take no dates at all).
    pub(super) fn advance_newest_first(
        &mut self,
        progress: &mut WindowProgress,
        ask: &Ask,
        page: Page,
    ) {
        let past_start = page
            .parsed
            .items
            .last()
            .is_some_and(|i| i.time < ask.range.start);
        // The page's rows in Sentry's order, once (for `events` only).
        let ordered = if self.def.kind == Kind::Events {
            rows(&page.parsed)
        } else {
            Vec::new()
        };
        if !self.keyed(progress) {
            self.advance_by_cursor(progress, ask, page.next, past_start, &ordered);
        } else if page.parsed.items.iter().any(|i| i.time >= ask.range.end) {
            // The server ignored `end` (self-hosted Sentry before 2025): its own cursors from
            // the top of the list for the rest of the window; rows read twice are dropped as
            // duplicates.
            progress.dates_ignored = true;
            progress.keyset = None;
            progress.cursor = None;
        } else if boundary_moved(ask.keyset.as_ref(), &ordered) {
            // Rows above the offset were deleted (or arrived): read the second again from
            // its top; rows read twice are dropped as duplicates. Past a few times, something
            // keeps moving rows of this second: it is read from its top by Sentry's offsets
            // (rows read twice are dropped), and back to positions past it.
            let resets = ask.keyset.as_ref().map_or(0, |k| k.resets) + 1;
            progress.keyset = Some(Keyset {
                end: ask.range.end,
                read: 0,
                last: None,
                resets,
            });
            if resets >= MAX_KEYSET_RESETS {
                progress.cursor = Some("0:0:0".into());
            }
        } else {
            let empty = page.parsed.items.is_empty() && page.parsed.rejected.is_empty();
            match page.next {
                // (An empty page that claims more would only repeat itself.)
                Some(cursor) if !past_start && !empty => {
                    let next = next_keyset(ask.keyset.as_ref(), ask.range.end, &ordered);
                    // A position that does not move on (rows without a time at the page's
                    // end): Sentry's cursor, in the same list, from here.
                    let stuck = ask
                        .keyset
                        .as_ref()
                        .is_some_and(|k| next.end == k.end && next.read <= k.read);
                    if stuck {
                        progress.cursor = Some(cursor);
                    } else {
                        progress.keyset = Some(next);
                    }
                }
                _ => next_unit(progress),
            }
        }
    }

    /// Newest first by Sentry's cursors: the next cursor, or the next unit. Fallen back to
    /// them inside one second, back to positions as soon as a page reaches an older second.
    pub(super) fn advance_by_cursor(
        &mut self,
        progress: &mut WindowProgress,
        ask: &Ask,
        next: Option<String>,
        past_start: bool,
        ordered: &[Option<&Item>],
    ) {
        let fell_back =
            self.def.kind == Kind::Events && !progress.dates_ignored && progress.keyset.is_some();
        let asked_at = progress.cursor.as_deref().and_then(cursor_offset);
        match next {
            Some(_)
                if fell_back
                    && !past_start
                    && asked_at.is_some()
                    && reaches_older_second(ordered) =>
            {
                let at = Keyset {
                    end: ask.range.end,
                    read: asked_at.unwrap_or(0) + 1,
                    ..Keyset::default()
                };
                progress.keyset = Some(next_keyset(Some(&at), ask.range.end, ordered));
                progress.cursor = None;
            }
            Some(cursor) if !past_start => progress.cursor = Some(cursor),
            _ => {
                next_unit(progress);
                // A server that ignores `start`/`end` served this range from the top of the
                // project's list: that covered the project's later ranges too.
                while progress.dates_ignored
                    && progress.projects.get(progress.next_project) == Some(&ask.unit)
                {
                    next_unit(progress);
                }
            }
        }
    }

    /// Oldest first: the next offset, a new query at the offset cap, or the next unit.
    /// Sentry's offset counts every row, set apart or not (the rows read again to check the
    /// position were counted by the page before).
    pub(super) fn advance_oldest_first(
        &mut self,
        progress: &mut WindowProgress,
        ask: &Ask,
        page: Page,
    ) {
        let served = (page.parsed.items.len() + page.parsed.rejected.len()) as u64;
        let again = ask.checked.as_ref().map_or(0, |&(_, _, after)| after + 1);
        progress.query_rows += served.saturating_sub(again);
        if progress.query_rows >= OFFSET_CAP {
            self.split_query(progress, ask.range, &page.parsed.items);
        } else if let Some(cursor) = page.next {
            progress.cursor = Some(cursor);
            let ordered = rows(&page.parsed);
            progress.last_row = ordered.iter().rposition(Option::is_some).map(|k| {
                let item = ordered[k].expect("a readable row");
                let after = (ordered.len() - 1 - k) as u64;
                (crate::hex::encode(&item.key), item.time, after)
            });
        } else {
            next_unit(progress);
        }
    }

    /// Sets a page's unreadable items apart: one NDJSON object under
    /// `{gcs_prefix}{stream}-quarantine/` (outside the feed's prefix), each item as returned.
    /// They count as delivered for the window, so a later read of the overlap does not set them
    /// apart again. The object lands before the checkpoint moves past the page.
    pub(super) fn quarantine(
        &mut self,
        progress: &WindowProgress,
        page: &Parsed,
    ) -> Result<(), Stop> {
        let mut body = Vec::new();
        let mut n = 0;
        for r in &page.rejected {
            let json = page.rejected_json(r);
            let key = rejected_key(json);
            if self
                .seen
                .insert_key(key, progress.window.end - 1, QUARANTINED)
            {
                body.extend_from_slice(json);
                body.push(b'\n');
                n += 1;
            }
        }
        if n == 0 {
            return Ok(());
        }
        let content = gcs::Content::of(&body);
        let name = gcs::object_name(
            &self.config.gcs,
            &format!("{}-quarantine", self.def.name),
            &self.name_tag(),
            &self.config.sentry.org,
            (progress.window.start, progress.window.end),
            0,
            &content.id,
            false,
        );
        self.lease.check(&self.env, self.gcs).map_err(fenced)?;
        let uploaded = self
            .gcs
            .create(&name, body, &content, n)
            .map_err(|e| Stop::WriteFailed(e.into()))?;
        self.summary.quarantined += n as u64;
        self.summary.bytes += uploaded.bytes as u64;
        eprintln!(
            "warning: {n} item(s) of {} set apart in {} ({})",
            self.def.name, uploaded.name, page.rejected[0].reason
        );
        // One warning a run, however many objects: the total, and the latest object named.
        let marker = format!("item(s) of {} had no readable", self.def.name);
        let w = format!(
            "{} {marker} {} or {} in {BAD_ITEM_TRIES} reads (e.g. {}); they were set apart, as returned, under {}{}-quarantine/ (latest: {}), outside the feed",
            self.summary.quarantined,
            self.def.shape.id_field,
            self.def.shape.time_field,
            page.rejected[0].reason,
            self.config.gcs.prefix,
            self.def.name,
            uploaded.name
        );
        match self
            .summary
            .warnings
            .iter_mut()
            .find(|x| x.contains(&marker))
        {
            Some(earlier) => *earlier = w,
            None => self.summary.warnings.push(w),
        }
        Ok(())
    }

    /// Whether `project` is missing from the org's project list (read once a run, when a
    /// project first answers as if it were gone).
    pub(super) fn vanished(&mut self, project: u64) -> Result<bool, Stop> {
        if self.projects_now.is_none() {
            let ids = self
                .sentry
                .all_projects()?
                .into_iter()
                .map(|p| p.id)
                .collect();
            self.projects_now = Some(ids);
        }
        Ok(!self
            .projects_now
            .as_ref()
            .is_some_and(|ids| ids.contains(&project)))
    }

    /// An oldest-first query reached the offset cap: whatever comes after it is read by a new
    /// query starting at the last timestamp read (rows of that second already delivered are
    /// dropped by id). Only a single second holding more rows than the cap cannot be split
    /// this way; that is reported, never passed over silently.
    pub(super) fn split_query(
        &mut self,
        progress: &mut WindowProgress,
        range: Window,
        items: &[Item],
    ) {
        self.summary.queries_split += 1;
        let last = items.iter().map(|i| i.time).max().unwrap_or(range.start);
        let next_start = if last > range.start {
            last
        } else {
            let w = format!(
                "{}: more than {OFFSET_CAP} rows share the second {}; Sentry's offset cap hides the rest of that second, which is not collected",
                self.def.name,
                rfc3339(range.start)
            );
            eprintln!("warning: {w}");
            self.summary.warnings.push(w);
            range.start + 1
        };
        if next_start >= range.end {
            next_unit(progress);
        } else {
            new_query(progress, Some(next_start));
        }
    }

    /// How many of a page's items [`absorb`] would add to the delivered set.
    pub(super) fn new_items(&self, page: &Parsed, window: Window) -> usize {
        page.items
            .iter()
            .filter(|i| window.contains(i.time) && !self.seen.contains_at(&i.key, i.time))
            .count()
    }
}
