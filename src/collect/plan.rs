//! Planning a window: where it starts and ends, which projects it reads, and which parts of
//! its overlap are read again (where Sentry's counts differ from what was delivered).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::collector::*;
use crate::checkpoint::WindowProgress;
use crate::config::Config;
use crate::delivered::SeenSet;
use crate::sentry::client::{SentryClient, ORG_WIDE};
use crate::sentry::SentryError;
use crate::streams::Kind;
use crate::window::Window;

/// Plans the next window, or `None` when no time has passed the watermark yet. No window
/// starts before `origin`, where the live track began (before it is a backfill's).
pub fn plan_window(
    config: &Config,
    watermark: Option<i64>,
    origin: Option<i64>,
    now: i64,
) -> Option<Window> {
    let t = &config.timing;
    let end_limit = now - t.lag.as_secs() as i64;
    let (start, base) = match watermark {
        Some(w) => (
            (w - t.overlap.as_secs() as i64).max(origin.unwrap_or(i64::MIN)),
            w,
        ),
        None => {
            let s = now - t.lookback.as_secs() as i64;
            (s, s)
        }
    };
    let end = end_limit.min(base + t.max_window.as_secs() as i64);
    (end > base).then_some(Window { start, end })
}

/// Shortens a window whose new part would, at the rate the overlap shows (with half again for
/// bursts), hold more ids than the set may keep beside the overlap's: after an outage at a
/// high rate the backlog is read in windows that fit, instead of one that stops the stream.
/// The first window (no rate known) and windows that fit stay as planned.
pub fn fit_to_memory(
    window: Window,
    watermark: Option<i64>,
    seen: &SeenSet,
    overlap: i64,
) -> Window {
    let Some(wm) = watermark else {
        return window;
    };
    if overlap <= 0 || window.end <= wm {
        return window;
    }
    let recent: u64 = seen.counts_in(wm - overlap, wm).values().sum();
    let room = (crate::delivered::MAX_IDS / 10 * 9).saturating_sub(seen.len()) as f64;
    let per_sec = recent as f64 / overlap as f64 * 1.5;
    if per_sec * ((window.end - wm) as f64) <= room {
        return window;
    }
    let fits = (room / per_sec) as i64;
    Window {
        start: window.start,
        end: (wm + fits.max(60)).min(window.end),
    }
}

/// Ids delivered from an org-wide stream with a time in `range`.
/// A count for the search of an overlap: `None` when the search should stop, and `cut` set
/// when it stops for time (the stream's share nearly spent, or a rate limit that would
/// outlast it). The search saves reading; it must not take the time the reading needs.
pub(super) fn counted<T>(
    sentry: &SentryClient,
    cut: &std::cell::Cell<bool>,
    count: impl FnOnce() -> Result<Option<T>, SentryError>,
) -> Option<T> {
    if sentry.secs_left() < MIN_SECS_TO_SEARCH {
        cut.set(true);
        return None;
    }
    match count() {
        Err(SentryError::OutOfTime) => {
            cut.set(true);
            None
        }
        other => other.ok().flatten(),
    }
}

pub(super) fn delivered_org_wide(seen: &SeenSet, range: Window) -> u64 {
    delivered_except(seen, range, &BTreeSet::new())
}

/// Rows delivered from an org-wide stream with a time in `range`, but those of the projects
/// in `gone` (deleted: Sentry no longer counts them) and items set apart.
pub(super) fn delivered_except(seen: &SeenSet, range: Window, gone: &BTreeSet<u64>) -> u64 {
    seen.counts_in(range.start, range.end)
        .iter()
        .filter(|(p, _)| **p != QUARANTINED && !gone.contains(*p))
        .fold(0u64, |a, (_, n)| a.saturating_add(*n))
}

/// The projects whose delivered rows in an overlap Sentry no longer counts at all (deleted),
/// from its per-project counts there: they leave both sides of the comparison, so their
/// vanished rows cannot cancel late rows of other projects out. `None`: the comparison
/// cannot be trusted (some project lost only part of its rows, rows delivered before rows
/// carried their project, or no per-project count).
pub(super) fn deleted_projects(
    delivered: &HashMap<u64, u64>,
    counted: Option<&BTreeMap<u64, u64>>,
) -> Option<BTreeSet<u64>> {
    let counted = counted?;
    let mut gone = BTreeSet::new();
    for (&p, &n) in delivered {
        if n == 0 || p == QUARANTINED {
            continue;
        }
        if p == ORG_WIDE {
            return None;
        }
        match counted.get(&p).copied().unwrap_or(0) {
            0 => {
                gone.insert(p);
            }
            c if c < n => return None,
            _ => {}
        }
    }
    Some(gone)
}

/// The overlap's counts are searched only while this much of the stream's share is left.
pub(super) const MIN_SECS_TO_SEARCH: f64 = 5.0;

/// How many count queries the search for where an overlap's counts stop agreeing may make.
pub(super) const MAX_OVERLAP_COUNTS: usize = 10;

/// Per unit (a project, or the org): the latest minute `agree` after `start` (and before
/// `end`) such that Sentry counts in `[start, agree)` exactly what was delivered from it,
/// found by halving (`start` when none is found). A unit is absent when a count is below
/// what was delivered (rows deleted: a deletion can hide a late row in an equal count, so
/// nothing short of the whole range is trusted). Units whose search stands at the same place
/// share one count (Sentry counts every unit in one query; late rows are mostly recent, so a
/// busy org's projects move together). At most `max_counts` counts; a count that fails
/// (`None`) ends the search where it stands.
pub(super) fn agreeing_prefixes(
    start: i64,
    end: i64,
    units: &[u64],
    max_counts: usize,
    mut sentry_counts: impl FnMut(Window) -> Option<HashMap<u64, u64>>,
    mut delivered: impl FnMut(Window) -> HashMap<u64, u64>,
) -> BTreeMap<u64, i64> {
    // Per unit: [start, agree) holds what was delivered; [start, differ) does not.
    let mut open: BTreeMap<u64, (i64, i64)> = units.iter().map(|&u| (u, (start, end))).collect();
    for _ in 0..max_counts {
        // The place most units stand at that a whole minute still splits.
        let mut at: BTreeMap<(i64, i64), usize> = BTreeMap::new();
        for &place in open.values() {
            if minute_between(place.0, place.1).is_some() {
                *at.entry(place).or_default() += 1;
            }
        }
        let Some((&(agree, differ), _)) = at.iter().max_by_key(|&(&(a, d), &n)| (n, d - a)) else {
            break;
        };
        let Some(mid) = minute_between(agree, differ) else {
            break;
        };
        let probe = Window { start, end: mid };
        let Some(counts) = sentry_counts(probe) else {
            break;
        };
        let had = delivered(probe);
        let mut deleted = Vec::new();
        for (unit, at) in open.iter_mut().filter(|(_, at)| **at == (agree, differ)) {
            let count = counts.get(unit).copied().unwrap_or(0);
            let had = had.get(unit).copied().unwrap_or(0);
            if count < had {
                deleted.push(*unit);
            } else if count == had {
                at.0 = mid;
            } else {
                at.1 = mid;
            }
        }
        for unit in deleted {
            open.remove(&unit);
        }
    }
    open.into_iter()
        .map(|(unit, (agree, _))| (unit, agree))
        .collect()
}

/// A whole minute about halfway between `agree` and `differ` (strictly between them), if any.
pub(super) fn minute_between(agree: i64, differ: i64) -> Option<i64> {
    let half = agree + (differ - agree) / 2;
    let mid = half - half.rem_euclid(60);
    let mid = if mid > agree {
        mid
    } else {
        agree - agree.rem_euclid(60) + 60
    };
    (mid < differ).then_some(mid)
}

/// Per project of an `events` window's overlap: the ranges `[from, to)` read again, and how
/// many ids that would add (what Sentry counts above what was delivered).
pub(super) type Again = BTreeMap<u64, (Vec<(i64, i64)>, u64)>;

/// The counts of `project` in the seconds of `[from, to)` (none when `to <= from`), from
/// counts keyed by (project, second).
pub(super) fn seconds_of(
    counts: &BTreeMap<(u64, i64), u64>,
    project: u64,
    from: i64,
    to: i64,
) -> BTreeMap<i64, u64> {
    if to <= from {
        return BTreeMap::new();
    }
    counts
        .range((project, from)..(project, to))
        .map(|(&(_, t), &n)| (t, n))
        .collect()
}

/// How many rows Sentry counts in the seconds `[from, to)` (saturating).
pub(super) fn rows_between(sentry: &BTreeMap<i64, u64>, from: i64, to: i64) -> u64 {
    if from >= to {
        return 0;
    }
    sentry
        .range(from..to)
        .fold(0u64, |a, (_, &n)| a.saturating_add(n))
}

/// The ranges to read of a project's `[from, wm)`, given Sentry's and the delivered counts
/// per second of `[from, listed)`: each second whose counts differ, joined with the next
/// when fewer rows than a page lie between them, and `[listed, wm)` whole.
pub(super) fn differing_ranges(
    sentry: &BTreeMap<i64, u64>,
    delivered: &BTreeMap<i64, u64>,
    from: i64,
    listed: i64,
    wm: i64,
) -> Vec<(i64, i64)> {
    let mut seconds: Vec<i64> = sentry
        .iter()
        .filter(|&(t, n)| delivered.get(t) != Some(n))
        .map(|(&t, _)| t)
        .chain(
            delivered
                .keys()
                .filter(|t| !sentry.contains_key(t))
                .copied(),
        )
        .filter(|&t| t >= from && t < listed)
        .collect();
    seconds.sort_unstable();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for t in seconds {
        match ranges.last_mut() {
            Some(last) if rows_between(sentry, last.1, t) < JOIN_BELOW_ROWS => {
                last.1 = t + 1;
            }
            _ => ranges.push((t, t + 1)),
        }
    }
    if listed < wm {
        let tail_from = listed.max(from);
        match ranges.last_mut() {
            Some(last) if rows_between(sentry, last.1, tail_from) < JOIN_BELOW_ROWS => {
                last.1 = wm;
            }
            _ => ranges.push((tail_from, wm)),
        }
    }
    ranges
}

/// Ranges read again are joined when fewer rows than this (a page) lie between them: one
/// request more costs more than reading them.
pub(super) const JOIN_BELOW_ROWS: u64 = 100;

/// Pages of per-second counts a window's plan may ask for; what they leave unlisted is read.
pub(super) const MAX_SECOND_PAGES: usize = 40;

/// The parts of `range` (whose count as a whole differs from what was delivered) where
/// Sentry counts other than what was delivered, in time order: halved, and each half that
/// differs halved again, widest first, until a part is one second or holds fewer delivered
/// rows than a page (reading it costs no more than counting it), or `max_counts` counts
/// were made; what is not split further is read whole. When the first half agrees, the
/// second is taken to differ without a count (the safe side); a count that fails (`None`)
/// ends the search.
pub(super) fn differing_parts(
    range: Window,
    max_counts: usize,
    mut sentry_count: impl FnMut(Window) -> Option<u64>,
    delivered: impl Fn(Window) -> u64,
) -> Vec<(i64, i64)> {
    let mut open = std::collections::VecDeque::from([range]);
    let mut parts: Vec<(i64, i64)> = Vec::new();
    let mut counts = 0;
    let mut deleted = false;
    let mut differs = |w: Window, counts: &mut usize| -> Option<bool> {
        if *counts >= max_counts {
            return None;
        }
        *counts += 1;
        let n = sentry_count(w)?;
        let had = delivered(w);
        deleted |= n < had;
        Some(n != had)
    };
    while let Some(w) = open.pop_front() {
        if w.end - w.start <= 1 || counts >= max_counts || delivered(w) < JOIN_BELOW_ROWS {
            parts.push((w.start, w.end));
            continue;
        }
        let mid = w.start + (w.end - w.start) / 2;
        let (left, right) = (
            Window {
                start: w.start,
                end: mid,
            },
            Window {
                start: mid,
                end: w.end,
            },
        );
        match differs(left, &mut counts) {
            None => {
                counts = max_counts;
                parts.push((w.start, w.end));
            }
            Some(false) => open.push_back(right),
            Some(true) => {
                open.push_back(left);
                match differs(right, &mut counts) {
                    Some(false) => {}
                    Some(true) => open.push_back(right),
                    None => {
                        counts = max_counts;
                        parts.push((right.start, right.end));
                    }
                }
            }
        }
    }
    // Rows were deleted: a deleted row and a late one in the same half would cancel out, so
    // no count that agreed is trusted.
    if deleted {
        return vec![(range.start, range.end)];
    }
    parts.sort_unstable();
    let mut joined = Vec::with_capacity(parts.len());
    for p in parts {
        push_range(&mut joined, p);
    }
    joined
}

/// How many counts the search for the parts of an Explore overlap that differ may make.
pub(super) const MAX_RANGE_COUNTS: usize = 120;

/// Appends `r` to ranges in time order, joined with the last one when they touch.
pub(super) fn push_range(ranges: &mut Vec<(i64, i64)>, r: (i64, i64)) {
    match ranges.last_mut() {
        Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
        _ => ranges.push(r),
    }
}

/// Per project, the ranges `[from, to)` it reads, in order.
pub(super) type ProjectReads = BTreeMap<u64, Vec<(i64, i64)>>;

/// The reads of a window in order: a unit (a project, or [`ORG_WIDE`]) and its range each.
pub(super) type Units = Vec<(u64, (i64, i64))>;

/// A window's plan, nothing read yet: `units` read in order, `cut` projects left out by
/// `max_projects`.
pub(super) fn new_progress(window: Window, units: Units, cut: usize) -> WindowProgress {
    WindowProgress {
        window,
        projects: units.iter().map(|u| u.0).collect(),
        projects_cut: cut,
        next_project: 0,
        cursor: None,
        objects: 0,
        query_start: None,
        query_rows: 0,
        read_from: units.iter().map(|u| u.1 .0).collect(),
        read_to: units.iter().map(|u| u.1 .1).collect(),
        keyset: None,
        dates_ignored: false,
        last_row: None,
        restarted_at: None,
    }
}

/// How many times an `events` window is shortened and counted again before it is read as is.
pub(super) const MAX_FITS: u32 = 6;

/// Where an `events` window that reads from `base` to `end` ends so that the `adds` ids Sentry
/// counts in it (with a tenth more for late arrivals) fit beside the `held` ones in nine
/// tenths of the cap: `end` when they fit, else the part of it they would fill at an even
/// rate, in whole minutes (at least one). The caller counts the shorter window again.
pub(super) fn fit_to_count(base: i64, end: i64, adds: u64, held: usize) -> i64 {
    let room = (crate::delivered::MAX_IDS / 10 * 9).saturating_sub(held) as f64;
    let need = adds as f64 * 1.1;
    if need <= room || end <= base {
        return end;
    }
    let secs = ((end - base) as f64 * room / need) as i64;
    (base + (secs / 60 * 60).max(60)).min(end)
}

impl Collector<'_, '_> {
    /// Fixes what the window reads: for `events`, the projects with events (one Discover
    /// query, or every project without it); for the other streams, the whole org at once.
    pub(super) fn plan(&mut self, window: Window) -> Result<WindowProgress, Stop> {
        // Planning counts what was delivered in the overlap: its ids are read first.
        self.ensure_ids(window.start, window.end, false)?;
        if self.def.kind != Kind::Events {
            let ranges = match self.def.kind {
                Kind::Explore(dataset) => self.explore_overlap(window, dataset.name)?,
                _ => vec![(window.start, window.end)],
            };
            let units = ranges.into_iter().map(|r| (ORG_WIDE, r)).collect();
            return Ok(new_progress(window, units, 0));
        }
        let (window, ranges) = self.project_reads(window)?;
        let (units, cut) = self.units_to_read(window, ranges);
        Ok(new_progress(window, units, cut))
    }

    /// `events`: what each project reads, the window perhaps shortened to fit. The parts of a
    /// project's overlap where Sentry counts something other than what was delivered (late or
    /// deleted events), then its new part, if Sentry counts events there (or the whole
    /// window, without multi-project queries). A window whose count does not fit in memory
    /// beside the ids held is shortened and its new part counted again (counts are known
    /// before anything is read; the overlap's part does not depend on where the window ends).
    pub(super) fn project_reads(&mut self, window: Window) -> Result<(Window, ProjectReads), Stop> {
        let mut window = window;
        let wm = self.overlap_end(window);
        let again = match wm {
            Some(wm) => self.overlap_plan(window.start, wm)?,
            None => None,
        };
        let mut fits = 0;
        loop {
            let new_part = Window {
                start: wm.unwrap_or(window.start),
                end: window.end,
            };
            let counted = match (wm, &again) {
                (Some(_), None) => None,
                _ => self.sentry.active_projects(new_part, &[])?,
            };
            let Some(counted) = counted else {
                return self.every_project(window);
            };
            let mut adds: BTreeMap<u64, u64> = counted.iter().map(|p| (p.id, p.count)).collect();
            for (&p, (_, n)) in again.iter().flatten() {
                let add = adds.entry(p).or_default();
                *add = add.saturating_add(*n);
            }
            adds.retain(|&p, _| self.shard.includes(p));
            // (Counts are Sentry's to state: added without wrapping.)
            let total = adds.values().fold(0u64, |a, &n| a.saturating_add(n));
            let end = fit_to_count(new_part.start, window.end, total, self.seen.len());
            if end < window.end && fits < MAX_FITS {
                fits += 1;
                window.end = end;
                continue;
            }
            let mut ranges = BTreeMap::new();
            for &p in adds.keys() {
                let mut reads = again
                    .as_ref()
                    .and_then(|a| a.get(&p))
                    .map(|(r, _)| r.clone())
                    .unwrap_or_default();
                if counted.iter().any(|c| c.id == p) {
                    push_range(&mut reads, (new_part.start, window.end));
                }
                ranges.insert(p, reads);
            }
            return Ok((window, ranges));
        }
    }

    /// An org without multi-project queries: every project of the shard reads the whole
    /// window, fitted to the rate the overlap shows.
    pub(super) fn every_project(&mut self, window: Window) -> Result<(Window, ProjectReads), Stop> {
        self.summary.warnings.push(
            "this org cannot query several projects at once (no global views): every project is read, one request each at least".into(),
        );
        let window = self.fit_to_rate(window);
        let all = self.sentry.all_projects()?;
        let mine = all.into_iter().filter(|p| self.shard.includes(p.id));
        let ranges = mine
            .map(|p| (p.id, vec![(window.start, window.end)]))
            .collect();
        Ok((window, ranges))
    }

    /// The reads in order, one unit each, and how many projects `max_projects` cut. After a
    /// change of shard layout, a project its old shard had read further is read from there
    /// (less the overlap), or not at all in a window that ends before.
    pub(super) fn units_to_read(
        &mut self,
        window: Window,
        mut ranges: ProjectReads,
    ) -> (Units, usize) {
        let overlap = self.config.timing.overlap.as_secs() as i64;
        for (&p, reads) in ranges.iter_mut() {
            if let Some(floor) = self.checkpoint.floor_for(p) {
                for r in reads.iter_mut() {
                    r.0 = r.0.max(floor - overlap);
                }
            }
            reads.retain(|&(from, to)| from < to.min(window.end));
        }
        ranges.retain(|_, reads| !reads.is_empty());
        let mut cut = 0;
        if let Some(cap) = self.config.sentry.max_projects {
            if ranges.len() > cap {
                cut = ranges.len() - cap;
                while ranges.len() > cap {
                    ranges.pop_last();
                }
            }
        }
        self.summary.overlap_skipped += ranges
            .values()
            .filter(|reads| reads[0].0 > window.start)
            .count();
        let units = ranges
            .into_iter()
            .flat_map(|(p, reads)| reads.into_iter().map(move |r| (p, r)))
            .collect();
        (units, cut)
    }

    /// Where the window's overlap ends (the watermark), if the window has one.
    pub(super) fn overlap_end(&self, window: Window) -> Option<i64> {
        self.checkpoint
            .watermark
            .filter(|&w| w > window.start && w < window.end)
    }

    /// For an Explore dataset: the ranges of the window to read, in time order. Its new part
    /// (from the watermark), after the parts of its overlap where Sentry counts other than
    /// what was delivered (late rows, or deleted ones): when the whole overlap's count
    /// differs, it is halved, and each half that differs halved again, down to a second or
    /// to fewer rows than a page, within a count budget (late rows are few and scattered: a
    /// busy org does not read its whole overlap again for a few). Without multi-project
    /// queries, the whole window. Rows carry their project, and Sentry's per-project count of
    /// the overlap names the projects deleted since: their rows leave the comparison, so a
    /// deleted project cannot cancel out late rows; a project that lost only some rows (or
    /// rows from before rows carried their project) has the whole overlap read again.
    pub(super) fn explore_overlap(
        &mut self,
        window: Window,
        dataset: &str,
    ) -> Result<Vec<(i64, i64)>, Stop> {
        let whole = vec![(window.start, window.end)];
        let Some(wm) = self.overlap_end(window) else {
            return Ok(whole);
        };
        let overlap = Window {
            start: window.start,
            end: wm,
        };
        // One per-project count of the overlap: its sum is the overlap's count, and it names
        // the projects deleted since (their rows would cancel out late rows of others).
        let Some(per_project) = self.sentry.dataset_project_counts(dataset, overlap)? else {
            return Ok(whole);
        };
        let count = per_project.values().fold(0u64, |a, &n| a.saturating_add(n));
        if count < delivered_org_wide(&self.seen, overlap) {
            // Rows were deleted: a smaller count cannot say where late rows are.
            return Ok(whole);
        }
        let delivered = self.seen.counts_in(overlap.start, overlap.end);
        let Some(gone) = deleted_projects(&delivered, Some(&per_project)) else {
            return Ok(whole);
        };
        // (At least what was delivered of the projects still there: never smaller.)
        let had = delivered_except(&self.seen, overlap, &gone);
        if count == had {
            self.summary.overlap_skipped += 1;
            return Ok(vec![(wm, window.end)]);
        }
        let sentry = self.sentry;
        let seen = &self.seen;
        let cut = std::cell::Cell::new(false);
        let mut ranges = differing_parts(
            overlap,
            MAX_RANGE_COUNTS,
            |probe| counted(sentry, &cut, || sentry.dataset_count(dataset, probe)),
            |probe| delivered_except(seen, probe, &gone),
        );
        if cut.get() && self.may_defer {
            return Err(Stop::OutOfTime);
        }
        if ranges.first().is_some_and(|r| r.0 > window.start) {
            self.summary.overlap_skipped += 1;
        }
        push_range(&mut ranges, (wm, window.end));
        Ok(ranges)
    }

    /// The projects whose overlap `[start, watermark)` is read again: those of which Sentry
    /// counts there a different number of events than were delivered from them (late events
    /// arrived, or events were deleted). Per project: the ranges read again, and how many ids
    /// they would add (what Sentry counts above what was delivered). A project with late
    /// events only is read where its counts differ: from the minute where they stop
    /// agreeing (found by halving), Sentry's per-second counts are compared with what was
    /// delivered, and only the seconds that differ are read (see [`Collector::late_seconds`]).
    /// One with fewer events than delivered (deleted) is read from the overlap's start.
    /// `None`: no multi-project queries.
    pub(super) fn overlap_plan(&mut self, start: i64, wm: i64) -> Result<Option<Again>, Stop> {
        let overlap = Window { start, end: wm };
        let Some(in_overlap) = self.sentry.active_projects(overlap, &[])? else {
            return Ok(None);
        };
        let delivered = self.seen.counts_in(start, wm);
        let mut again = Again::new();
        let mut late = Vec::new();
        for p in &in_overlap {
            let had = delivered.get(&p.id).copied().unwrap_or(0);
            if had != p.count {
                again.insert(p.id, (vec![(start, wm)], p.count.saturating_sub(had)));
                if p.count > had && self.shard.includes(p.id) {
                    late.push(p.id);
                }
            }
        }
        for (&p, &n) in &delivered {
            // Delivered events Sentry no longer counts: deleted. Read the overlap again
            // rather than trust a count that may also hide a late arrival.
            let project = p != ORG_WIDE && p != QUARANTINED;
            if project && n > 0 && !in_overlap.iter().any(|q| q.id == p) {
                again.insert(p, (vec![(start, wm)], 0));
            }
        }
        let sentry = self.sentry;
        let seen = &self.seen;
        let cut = std::cell::Cell::new(false);
        let agreed = agreeing_prefixes(
            start,
            wm,
            &late,
            MAX_OVERLAP_COUNTS,
            |probe| {
                let found = counted(sentry, &cut, || sentry.active_projects(probe, &late))?;
                Some(found.into_iter().map(|p| (p.id, p.count)).collect())
            },
            |probe| seen.counts_in(probe.start, probe.end),
        );
        if cut.get() && self.may_defer {
            return Err(Stop::OutOfTime);
        }
        // (Projects the halving found deleted events in are absent: read from the start.)
        for (p, reads) in self.late_seconds(&agreed, start, wm)? {
            if let Some(entry) = again.get_mut(&p) {
                entry.0 = reads;
            }
        }
        Ok(Some(again))
    }

    /// For projects with late events, each read from its place (where its counts stop
    /// agreeing) to `wm`: the ranges to read, from Sentry's per-second counts compared
    /// with what was delivered per second. Seconds whose counts differ are read, joined when
    /// what lies between them would fit in a page; what the page budget or the deadline
    /// leaves unlisted is read whole. Like the count checks before it, an equal count is
    /// trusted (a deletion and a late event in the same second cancel out).
    pub(super) fn late_seconds(
        &mut self,
        late: &BTreeMap<u64, i64>,
        start: i64,
        wm: i64,
    ) -> Result<BTreeMap<u64, Vec<(i64, i64)>>, Stop> {
        let mut out = BTreeMap::new();
        let all: Vec<(u64, i64)> = late.iter().map(|(&p, &a)| (p, a)).collect();
        let mut pages = 0;
        for chunk in all.chunks(crate::sentry::client::MAX_SECOND_PROJECTS) {
            let projects: Vec<u64> = chunk.iter().map(|&(p, _)| p).collect();
            let from = chunk.iter().map(|&(_, a)| a).min().unwrap_or(wm);
            // Sentry's counts of [from, listed); the rest is not listed (read whole).
            let mut counted: BTreeMap<(u64, i64), u64> = BTreeMap::new();
            let mut listed = from;
            while listed < wm {
                if pages >= MAX_SECOND_PAGES {
                    break;
                }
                if self.sentry.secs_left() < MIN_SECS_TO_SEARCH {
                    if self.may_defer {
                        return Err(Stop::OutOfTime);
                    }
                    break;
                }
                pages += 1;
                let (rows, more) = match self.sentry.second_counts_page(&projects, listed, wm) {
                    Ok(page) => page,
                    Err(SentryError::OutOfTime) if self.may_defer => return Err(Stop::OutOfTime),
                    Err(e) => {
                        // The rest is read whole: correct, only slower.
                        let w = format!(
                            "{}: the per-second counts of late projects failed ({e}); their overlap is read from where the counts stop agreeing",
                            self.def.name
                        );
                        if !self.summary.warnings.contains(&w) {
                            eprintln!("warning: {w}");
                            self.summary.warnings.push(w);
                        }
                        break;
                    }
                };
                // The page starts at the last second listed before, listed again whole.
                counted.retain(|&(_, t), _| t < listed);
                let last = rows.iter().map(|&(_, t, _)| t).max();
                for (p, t, n) in rows {
                    let c = counted.entry((p, t)).or_default();
                    *c = c.saturating_add(n);
                }
                match last {
                    _ if !more => listed = wm,
                    Some(last) if last > listed => listed = last,
                    // A full page of one second: something is wrong with the listing.
                    _ => break,
                }
            }
            let delivered = self.seen.second_counts(&projects, from, listed);
            for &(p, agree) in chunk {
                let sentry = seconds_of(&counted, p, agree, listed);
                let had = seconds_of(&delivered, p, agree, listed);
                // A second with fewer events than delivered: events were deleted. A deleted
                // one and a late one cancel out in a count, so the halving's agreement
                // before `agree` is not trusted either: the whole overlap is read.
                let deleted = had
                    .iter()
                    .any(|(t, &n)| sentry.get(t).copied().unwrap_or(0) < n);
                let reads = if deleted {
                    vec![(start, wm)]
                } else {
                    differing_ranges(&sentry, &had, agree, listed, wm)
                };
                out.insert(p, reads);
            }
        }
        Ok(out)
    }

    /// [`fit_to_memory`] for this stream's watermark, set and overlap.
    pub(super) fn fit_to_rate(&self, window: Window) -> Window {
        fit_to_memory(
            window,
            self.checkpoint.watermark,
            &self.seen,
            self.config.timing.overlap.as_secs() as i64,
        )
    }
}
