//! One stream's collection: plan a window, find what to read in it (for `events`, the
//! projects with events), page through it, drop what was already delivered, write NDJSON
//! objects, and advance the checkpoint only after the object holding those lines has landed.
//!
//! Windows are `[watermark - overlap, now - lag)`, at most `max_window` past the watermark;
//! the first starts at `now - lookback`. Cursors are used only inside a closed window and
//! never polled: Sentry's events endpoint pages newest first by offset, so a late event that
//! arrives during the read shifts later pages by one (a re-read, dropped by id) but never
//! hides one. Oldest-first streams (Discover / Explore) meet the 10,000-row offset cap by
//! starting the query again at the last timestamp read.

use std::collections::{BTreeMap, HashMap};

use crate::checkpoint::{
    Checkpoint, CheckpointStore, Keyset, PendingObject, SaveError, WindowProgress, Writer,
};
use crate::config::Config;
use crate::delivered::SeenSet;
use crate::gcs::{self, GcsClient};
use crate::identity::seen_key;
use crate::lease::{Fenced, Lease};
use crate::ports::Env;
use crate::report::{ObjectSummary, StreamSummary};
use crate::sentry::client::{is_no_global_views, Answer, SentryClient, ORG_WIDE};
use crate::sentry::pages::{Item, Parsed};
use crate::sentry::SentryError;
use crate::shard::Shard;
use crate::state::{self, StreamStatus};
use crate::streams::{Kind, Order, StreamDef};
use crate::time::{parse_rfc3339, rfc3339};
use crate::window::Window;

/// Rows one Discover / Explore query can page through by offset: reaching it means the
/// window may hold more, so the query starts again at the last timestamp read.
pub const OFFSET_CAP: u64 = 10_000;
/// An object is written once this much NDJSON has been read. SecOps ingests a few large
/// objects better than many small ones; this keeps the component's memory far under the
/// platforms' 128 MiB (the buffer, plus the multipart copy, plus a page).
pub const OBJECT_TARGET_BYTES: usize = 8 * 1024 * 1024;
/// Room left in an object's buffer for the multipart framing the upload adds in place.
const MULTIPART_SLACK: usize = 4096;
/// A run that finished a window starts another only if at least this much time is left to
/// read, so catching up does not end in a string of seconds-long windows.
const MIN_FOLLOW_UP_SECS: i64 = 300;
/// A page holding an item without a readable id or time is read this many times (a glitch
/// passes); then the item is quarantined and the stream moves on.
pub const BAD_ITEM_TRIES: u32 = 3;
/// The "project" a quarantined item is recorded under in the delivered-id set: it keeps the
/// item from being set apart twice, and stays out of every project's overlap count (the item's
/// own time may be unreadable, so it cannot be counted where Sentry counts it).
pub(crate) const QUARANTINED: u64 = crate::delivered::SET_APART;

/// Events read but not yet written.
#[derive(Default)]
struct Buffer {
    ndjson: Vec<u8>,
    events: usize,
}

struct Collector<'a, 'e> {
    def: &'static StreamDef,
    env: Env<'e>,
    config: &'a Config,
    sentry: &'a SentryClient<'e>,
    gcs: &'a GcsClient<'e>,
    lease: &'a Lease,
    shard: Shard,
    store: CheckpointStore<'a>,
    checkpoint: Checkpoint,
    seen: SeenSet,
    buffer: Buffer,
    summary: StreamSummary,
    /// A sampled-results warning was given in this run.
    warned_partial: bool,
    /// The org's project ids, once a project answered as if deleted.
    projects_now: Option<Vec<u64>>,
    /// Reads of the current page that held items without a readable id or time.
    bad_reads: u32,
    /// Oldest-first streams: the latest time read in the current window by this run (every
    /// row before it was read: they come in time order).
    read_up_to: Option<i64>,
    /// The window being planned is not the run's first: if the search of its overlap's
    /// counts runs out of time, it is left to the next run rather than read whole.
    may_defer: bool,
    /// This run already gave the stream its share once: a window it plans now is planned
    /// with what another stream left, and is deferred like a later window.
    second_pass: bool,
}

/// Plans the next window, or `None` when no time has passed the watermark yet.
pub fn plan_window(config: &Config, watermark: Option<i64>, now: i64) -> Option<Window> {
    let t = &config.timing;
    let end_limit = now - t.lag.as_secs() as i64;
    let (start, base) = match watermark {
        Some(w) => (w - t.overlap.as_secs() as i64, w),
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

/// Runs the stream until its window is done, the budget runs out, or something fails.
#[allow(clippy::too_many_arguments)]
pub fn collect_stream(
    env: Env,
    config: &Config,
    sentry: &SentryClient,
    gcs: &GcsClient,
    lease: &Lease,
    shard: Shard,
    def: &'static StreamDef,
    second_pass: bool,
) -> StreamSummary {
    let mut summary = StreamSummary {
        stream: def.name,
        shard: shard.to_string(),
        ..StreamSummary::default()
    };
    let state_name = format!("{}{}", def.name, shard.suffix());
    let store = CheckpointStore::new(env.kv, &state_name);
    let started = env.clock.now();
    let loaded = store
        .load_lazy()
        .map_err(|e| Stop::Failed(Failure::unreadable(e)));
    let settled =
        loaded.and_then(|state| settle_pending(&store, gcs, lease, env, state, &mut summary));
    summary.timing.load_ms = ms_since(env, started);
    let (checkpoint, seen) = match settled {
        Ok(state) => state,
        Err(Stop::Lost(why)) => {
            summary.lease_lost = Some(why.clone());
            summary.warnings.push(why);
            return summary;
        }
        Err(Stop::Failed(f) | Stop::WriteFailed(f)) => {
            summary.error = Some(f.message);
            summary.error_is_transient = f.transient;
            return summary;
        }
        Err(Stop::OutOfTime) => return summary,
    };
    if seen.len() > crate::delivered::MAX_IDS / 5 * 4 {
        summary.warnings.push(format!(
            "{} holds {} delivered ids, near the {} a run keeps in memory: {}",
            def.name,
            seen.len(),
            crate::delivered::MAX_IDS,
            "lower `overlap` or split the org with `shard` before the stream stops"
        ));
    }
    let mut c = Collector {
        def,
        env,
        config,
        sentry,
        gcs,
        lease,
        shard,
        store,
        checkpoint,
        seen,
        buffer: Buffer::default(),
        summary,
        warned_partial: false,
        projects_now: None,
        bad_reads: 0,
        read_up_to: None,
        may_defer: false,
        second_pass,
    };
    let sentry_before = sentry.stats();
    let gcs_before = gcs.requests.get();
    match c.run() {
        Err(Stop::Failed(f) | Stop::WriteFailed(f)) => {
            c.summary.error = Some(f.message);
            c.summary.error_is_transient = f.transient;
        }
        Err(Stop::Lost(why)) => {
            eprintln!("warning: {why}");
            c.summary.lease_lost = Some(why.clone());
            c.summary.warnings.push(why);
        }
        Ok(()) | Err(Stop::OutOfTime) => {}
    }
    let stats = sentry.stats();
    let mut summary = c.summary;
    summary.sentry_requests = stats.requests - sentry_before.requests;
    summary.rate_limited = stats.rate_limited - sentry_before.rate_limited;
    summary.retries = stats.retries - sentry_before.retries;
    summary.waited_secs =
        ((stats.waited_secs - sentry_before.waited_secs) * 1000.0).round() / 1000.0;
    summary.timing.parse_ms += (stats.parse_secs - sentry_before.parse_secs) * 1000.0;
    summary.gcs_requests = gcs.requests.get() - gcs_before;
    summary.watermark = c.checkpoint.watermark.map(rfc3339);
    summary
}

/// Records what the run did for the stream, for `/status`.
pub fn save_status(env: Env, def: &StreamDef, shard: Shard, summary: &StreamSummary) {
    let state_name = format!("{}{}", def.name, shard.suffix());
    let watermark = summary.watermark.as_deref().and_then(parse_rfc3339);
    let status = StreamStatus::from_summary(summary, watermark, env.clock.now() as i64);
    if let Err(e) = state::save(env.kv, &StreamStatus::key(&state_name), &status) {
        eprintln!("warning: could not record the stream's status: {e}");
    }
}

impl StreamSummary {
    /// The stream stopped because its share of the budget ran out, not because it was done
    /// or failed: more time in the same run would let it go on.
    pub fn wants_more_time(&self) -> bool {
        self.error.is_none() && !self.up_to_date
    }

    /// Adds what a later pass over the same stream in the same run did.
    pub fn absorb(&mut self, later: StreamSummary) {
        if self.window_start.is_none() {
            self.window_start = later.window_start;
        }
        if later.window_end.is_some() {
            self.window_end = later.window_end;
        }
        self.window_finished = later.window_finished;
        self.up_to_date = later.up_to_date;
        if later.watermark.is_some() {
            self.watermark = later.watermark;
        }
        self.projects_active = self.projects_active.max(later.projects_active);
        self.projects_cut += later.projects_cut;
        self.pages += later.pages;
        self.events += later.events;
        self.duplicates_dropped += later.duplicates_dropped;
        self.outside_window_dropped += later.outside_window_dropped;
        self.objects.extend(later.objects);
        self.bytes += later.bytes;
        self.sentry_requests += later.sentry_requests;
        self.rate_limited += later.rate_limited;
        self.retries += later.retries;
        self.waited_secs = ((self.waited_secs + later.waited_secs) * 1000.0).round() / 1000.0;
        self.gcs_requests += later.gcs_requests;
        self.queries_split += later.queries_split;
        self.overlap_skipped += later.overlap_skipped;
        self.quarantined += later.quarantined;
        for w in later.warnings {
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        self.error = later.error;
        self.error_is_transient = later.error_is_transient;
    }
}

/// A failure, and whether a later attempt may succeed without anyone changing anything.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) transient: bool,
}

impl Failure {
    /// The checkpoint could not be read (a KV fault: the next run may succeed).
    fn unreadable(e: String) -> Failure {
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

/// Resolves an object a previous run left pending: kept if the bucket holds it, rolled back
/// (its events to be read again) if not.
pub(crate) fn settle_pending(
    store: &CheckpointStore,
    gcs: &GcsClient,
    lease: &Lease,
    env: Env,
    (mut cp, mut seen): (Checkpoint, SeenSet),
    summary: &mut StreamSummary,
) -> Result<(Checkpoint, SeenSet), Stop> {
    let Some(pending) = cp.pending.take() else {
        return Ok((cp, seen));
    };
    // A refusal (403: the writer lacks objectViewer) is a permission to fix, not a blip.
    let landed = gcs.holds(&pending.name, &pending.content).map_err(|e| {
        Stop::Failed(Failure {
            transient: matches!(e, gcs::GcsError::Transient(_)),
            message: format!("checking the object an interrupted run was writing: {e}"),
        })
    })?;
    let seen = if landed {
        summary.warnings.push(format!(
            "an interrupted run had written {}; it is kept and its events are not read again",
            pending.name
        ));
        summary
            .state
            .add(save_fenced(store, lease, env, gcs, &mut cp, &mut seen)?);
        seen
    } else {
        // The set the object would have left is not needed: never hold two at once.
        drop(seen);
        cp.in_progress = pending.rollback_progress.clone();
        cp.set_ids_at(pending.rollback_ids_at());
        let mut rolled_back = store
            .load_ids(&cp.ids_at())
            .map_err(|e| Stop::Failed(Failure::unreadable(e)))?;
        summary.state.add(save_fenced(
            store,
            lease,
            env,
            gcs,
            &mut cp,
            &mut rolled_back,
        )?);
        rolled_back
    };
    Ok((cp, seen))
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

/// Saves the checkpoint as the lease's holder: refused when the lease has run out, or when a
/// later holder saved it (unless the bucket shows that this run's lease is still the newest:
/// then the later number is from before the lease folder was emptied).
fn save_fenced(
    store: &CheckpointStore,
    lease: &Lease,
    env: Env,
    gcs: &GcsClient,
    cp: &mut Checkpoint,
    seen: &mut SeenSet,
) -> Result<crate::report::SaveStats, Stop> {
    lease.check_time(env.clock.now()).map_err(fenced)?;
    let failed = |e: String| {
        Stop::WriteFailed(Failure {
            message: format!("saving the checkpoint: {e}"),
            transient: true,
        })
    };
    // Before every KV write of the save, not only the first: a save is many writes.
    let fence = || lease.check_time(env.clock.now()).map_err(|f| f.to_string());
    let mut writer = Writer {
        epoch: lease.epoch,
        over_later: false,
        fence: &fence,
    };
    match store.save(cp, seen, &writer) {
        Ok(stats) => Ok(stats),
        Err(SaveError::Failed(e)) => Err(failed(e)),
        Err(SaveError::Superseded(_)) => {
            lease.check(&env, gcs).map_err(fenced)?;
            writer.over_later = true;
            store.save(cp, seen, &writer).map_err(|e| match e {
                SaveError::Superseded(why) => Stop::Lost(why),
                SaveError::Failed(e) => failed(e),
            })
        }
    }
}

/// What a stop says, for a caller outside the pipeline.
pub(crate) fn stop_message(stop: Stop) -> String {
    match stop {
        Stop::OutOfTime => "the time budget ran out".into(),
        Stop::Failed(f) | Stop::WriteFailed(f) => f.message,
        Stop::Lost(why) => why,
    }
}

/// A fence that did not hold: lost (stop quietly) or not checkable (a write failure).
fn fenced(f: Fenced) -> Stop {
    match f {
        Fenced::Lost(why) => Stop::Lost(why),
        Fenced::Unchecked(e) => Stop::WriteFailed(e.into()),
    }
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

impl Collector<'_, '_> {
    /// Reads windows until the stream is caught up, the budget runs out, or a failure.
    fn run(&mut self) -> Result<(), Stop> {
        let mut windows = 0;
        loop {
            let progress = match self.checkpoint.in_progress.clone() {
                Some(p) => p,
                None => {
                    let now = self.env.clock.now() as i64;
                    // After a window this run finished, go on only to drain a backlog: a
                    // window that ended at `now - lag` leaves only seconds to read.
                    let caught_up = self.checkpoint.watermark.is_some_and(|w| {
                        w + MIN_FOLLOW_UP_SECS > now - self.config.timing.lag.as_secs() as i64
                    });
                    if windows > 0 && caught_up {
                        self.summary.up_to_date = true;
                        return Ok(());
                    }
                    // Planning searches the overlap's counts for what to read again; without
                    // the time for that search it would read the whole overlap again. The
                    // next run plans the window with its whole share.
                    if windows > 0 && self.sentry.secs_left() < 2.0 * MIN_SECS_TO_SEARCH {
                        return Ok(());
                    }
                    let Some(window) = plan_window(self.config, self.checkpoint.watermark, now)
                    else {
                        self.summary.up_to_date = true;
                        return Ok(());
                    };
                    // `events` fits its window to the pre-scan's counts instead (in `plan`).
                    self.ensure_ids(window.start, window.end, false)?;
                    let window = if self.def.kind == Kind::Events {
                        window
                    } else {
                        self.fit_to_rate(window)
                    };
                    self.may_defer = windows > 0 || self.second_pass;
                    let mut plan = self.plan(window)?;
                    self.may_defer = false;
                    // The plan is saved before anything is read: a run that dies before its
                    // first checkpoint is retried on the same window, so it rebuilds the same
                    // object names and finds what already landed.
                    self.flush(&mut plan)?;
                    plan
                }
            };
            self.summary.window_finished = false;
            if self.summary.window_start.is_none() {
                self.summary.window_start = Some(rfc3339(progress.window.start));
            }
            self.summary.window_end = Some(rfc3339(progress.window.end));
            // (A project read in several ranges is listed once per range.)
            let projects: std::collections::BTreeSet<_> = progress.projects.iter().collect();
            let projects = projects.into_iter().filter(|&&p| p != ORG_WIDE).count();
            self.summary.projects_active = self.summary.projects_active.max(projects);
            if progress.projects_cut > 0 {
                self.summary.projects_cut += progress.projects_cut;
                let w = format!(
                    "max_projects cut {} project(s) with events in the window ending {}; their events in it are not collected",
                    progress.projects_cut,
                    rfc3339(progress.window.end)
                );
                eprintln!("warning: {w}");
                self.summary.warnings.push(w);
            }
            let mut progress = progress;
            match self.read(&mut progress) {
                Ok(Read::PlannedAgain) => {}
                // The window is read: its last object and the new watermark go in one save.
                Ok(Read::Done) => {
                    self.write_buffer(&mut progress)?;
                    self.finish_window(progress.window)?;
                    windows += 1;
                }
                // When reading stopped, what was read so far is written and checkpointed.
                // When writing failed, nothing more is checkpointed in this run.
                Err(stop) => {
                    if !matches!(stop, Stop::WriteFailed(_) | Stop::Lost(_)) {
                        self.flush(&mut progress)?;
                    }
                    return Err(stop);
                }
            }
        }
    }

    /// Fixes what the window reads: for `events`, the projects with events (one Discover
    /// query, or every project without it); for the other streams, the whole org at once.
    fn plan(&mut self, window: Window) -> Result<WindowProgress, Stop> {
        // Planning counts what was delivered in the overlap: its ids are read first.
        self.ensure_ids(window.start, window.end, false)?;
        if self.def.kind != Kind::Events {
            let ranges = match self.def.kind {
                Kind::Explore(dataset) => self.explore_overlap(window, dataset.name)?,
                _ => vec![(window.start, window.end)],
            };
            return Ok(WindowProgress {
                window,
                projects: vec![ORG_WIDE; ranges.len()],
                projects_cut: 0,
                next_project: 0,
                cursor: None,
                objects: 0,
                query_start: None,
                query_rows: 0,
                read_from: ranges.iter().map(|r| r.0).collect(),
                read_to: ranges.iter().map(|r| r.1).collect(),
                keyset: None,
                dates_ignored: false,
                last_row: None,
                restarted_at: None,
            });
        }
        // What each project reads: the parts of its overlap where Sentry counts something
        // other than what was delivered (late or deleted events), then its new part, if Sentry
        // counts events there (or the whole window, without multi-project queries). A window
        // whose count does not fit in memory beside the ids held is shortened and its new part
        // counted again (counts are known before anything is read; the overlap's part does not
        // depend on where the window ends).
        let mut window = window;
        let wm = self.overlap_end(window);
        let again = match wm {
            Some(wm) => self.overlap_plan(window.start, wm)?,
            None => None,
        };
        let mut fits = 0;
        let mut ranges: BTreeMap<u64, Vec<(i64, i64)>> = loop {
            let new_part = Window {
                start: wm.unwrap_or(window.start),
                end: window.end,
            };
            let counted = match (wm, &again) {
                (Some(_), None) => None,
                _ => self.sentry.active_projects(new_part, &[])?,
            };
            let Some(counted) = counted else {
                self.summary.warnings.push(
                    "this org cannot query several projects at once (no global views): every project is read, one request each at least".into(),
                );
                window = self.fit_to_rate(window);
                let all = self.sentry.all_projects()?;
                let mine = all.into_iter().filter(|p| self.shard.includes(p.id));
                break mine
                    .map(|p| (p.id, vec![(window.start, window.end)]))
                    .collect();
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
            break ranges;
        };
        // After a change of shard layout: a project its old shard had read further is read
        // from there (less the overlap), or not at all in a window that ends before.
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
            .flat_map(|(p, reads)| reads.into_iter().map(move |r| (p, r)));
        let (mut projects, mut read_from, mut read_to) = (Vec::new(), Vec::new(), Vec::new());
        for (p, (from, to)) in units {
            projects.push(p);
            read_from.push(from);
            read_to.push(to);
        }
        Ok(WindowProgress {
            window,
            projects,
            projects_cut: cut,
            next_project: 0,
            cursor: None,
            objects: 0,
            query_start: None,
            query_rows: 0,
            read_from,
            read_to,
            keyset: None,
            dates_ignored: false,
            last_row: None,
            restarted_at: None,
        })
    }

    /// Where the window's overlap ends (the watermark), if the window has one.
    fn overlap_end(&self, window: Window) -> Option<i64> {
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
    /// queries, the whole window. Like the whole-overlap check, it trusts an equal count: a
    /// deletion and a late row in the same counted range cancel out.
    fn explore_overlap(&mut self, window: Window, dataset: &str) -> Result<Vec<(i64, i64)>, Stop> {
        let whole = vec![(window.start, window.end)];
        let Some(wm) = self.overlap_end(window) else {
            return Ok(whole);
        };
        let overlap = Window {
            start: window.start,
            end: wm,
        };
        let Some(count) = self.sentry.dataset_count(dataset, overlap)? else {
            return Ok(whole);
        };
        let had = delivered_org_wide(&self.seen, overlap);
        if count == had {
            self.summary.overlap_skipped += 1;
            return Ok(vec![(wm, window.end)]);
        }
        if count < had {
            // Rows were deleted: a smaller count cannot say where late rows are.
            return Ok(whole);
        }
        let sentry = self.sentry;
        let seen = &self.seen;
        let cut = std::cell::Cell::new(false);
        let mut ranges = differing_parts(
            overlap,
            MAX_RANGE_COUNTS,
            |probe| counted(sentry, &cut, || sentry.dataset_count(dataset, probe)),
            |probe| delivered_org_wide(seen, probe),
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
    fn overlap_plan(&mut self, start: i64, wm: i64) -> Result<Option<Again>, Stop> {
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
    fn late_seconds(
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

    /// Reads pages until the window is done. On a stop, returns the position reached so far.
    fn read(&mut self, progress: &mut WindowProgress) -> Result<Read, Stop> {
        let window = progress.window;
        self.read_up_to = None;
        // `events` pages by position, not by Sentry's offset cursors (see `Keyset`), unless
        // the window or the project fell back to those.
        let keyed = |p: &WindowProgress| {
            self.def.kind == Kind::Events && !p.dates_ignored && p.cursor.is_none()
        };
        while progress.next_project < progress.projects.len() {
            let unit = progress.projects[progress.next_project];
            let keyset = progress.keyset.clone().filter(|_| keyed(progress));
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
            let cursor = if keyed(progress) {
                keyset_cursor.as_deref()
            } else if check_cursor.is_some() {
                check_cursor.as_deref()
            } else {
                progress.cursor.as_deref()
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
            let answer = match self.sentry.stream_page(self.def, unit, range, cursor) {
                // A project deleted since the window was planned answers 404 (its event
                // list) or 403 (named in a Discover query): skip it, if the project list
                // agrees that it is gone.
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
                    continue;
                }
                other => other?,
            };
            let page = match answer {
                Answer::Data(page) => page,
                Answer::Refused(detail)
                    if unit == ORG_WIDE
                        && matches!(self.def.kind, Kind::Explore(_) | Kind::Issues)
                        && is_no_global_views(&detail) =>
                {
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
                    // Each project reads the whole window (the org-wide plan's ranges were
                    // counted for the org).
                    progress.read_from.clear();
                    progress.read_to.clear();
                    next_unit(progress);
                    progress.next_project = 0;
                    self.summary.projects_active =
                        self.summary.projects_active.max(progress.projects.len());
                    self.bad_reads = 0;
                    continue;
                }
                Answer::Refused(detail) => {
                    let whom = if unit == ORG_WIDE {
                        String::new()
                    } else {
                        format!(" of project {unit}")
                    };
                    return Err(Stop::Failed(Failure {
                        message: format!(
                            "Sentry: {}{whom}: Sentry refused the request (400): {detail}",
                            self.def.name
                        ),
                        transient: false,
                    }));
                }
            };
            self.summary.pages += 1;
            // Whether the page holds the last row read (late rows that arrived before it
            // move it down the page: they are new, the rows before it duplicates).
            let held = checked.as_ref().map(|(last, at, _)| {
                // (A key's hex reads back as the key itself.)
                let key = seen_key(last);
                (page.parsed.items.iter().any(|i| i.key == key), *at)
            });
            if let Some((false, at)) = held {
                // Rows before the cursor were deleted: unread rows moved behind it. Start
                // again at the last row's time (rows of that second read again are dropped
                // as duplicates), once per place.
                if progress.restarted_at != Some(at) && at < range.end {
                    self.summary.queries_split += 1;
                    new_query(progress, Some(at));
                    progress.restarted_at = Some(at);
                    self.bad_reads = 0;
                    continue;
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
            // The delivered ids this page is checked against are read from KV first.
            let times = page.parsed.items.iter().map(|i| i.time);
            let times = times.filter(|&t| window.contains(t));
            let (first, last) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
            self.ensure_ids(first, last, !page.parsed.rejected.is_empty())?;
            // Items set apart by an earlier read (of an overlap) are not retried.
            let set_apart = |r: &crate::sentry::pages::Rejected| {
                self.seen
                    .set_apart_contains(&rejected_key(page.parsed.rejected_json(r)))
            };
            if !page.parsed.rejected.iter().all(set_apart) {
                self.bad_reads += 1;
                if self.bad_reads < BAD_ITEM_TRIES {
                    // The same position again, after a pause the deadline allows.
                    let wait = crate::retry::backoff(self.bad_reads - 1, 0.5);
                    if self.env.clock.now() + wait + 1.0 < self.sentry.deadline() {
                        self.env.clock.sleep(wait);
                    }
                    continue;
                }
                self.quarantine(progress, &page.parsed)?;
            }
            self.bad_reads = 0;
            if page.parsed.partial && !self.warned_partial {
                self.warned_partial = true;
                let w = format!(
                    "Sentry answered {} from sampled data (meta.dataScanned = partial): rows outside the sample are not collected",
                    self.def.name
                );
                eprintln!("warning: {w}");
                self.summary.warnings.push(w);
            }
            // An object is written before it would pass the target, so the buffer's allocation
            // stays within it (and the upload's multipart body is built in place).
            if !self.buffer.ndjson.is_empty()
                && self.buffer.ndjson.len() + page.parsed.body_len() > OBJECT_TARGET_BYTES
            {
                self.flush(progress)?;
            }
            if self.buffer.ndjson.capacity() == 0 {
                // One allocation per object: a buffer grown by doubling would leave its
                // earlier blocks behind in linear memory, which never shrinks.
                self.buffer.ndjson.reserve_exact(
                    OBJECT_TARGET_BYTES.max(page.parsed.body_len()) + MULTIPART_SLACK,
                );
            }
            let over_cap = |c: &Self| {
                c.seen.len() + page.parsed.items.len() > crate::delivered::MAX_IDS
                    && c.seen.len() + c.new_items(&page.parsed, window) > crate::delivered::MAX_IDS
            };
            // The size of slabs not read yet is what their segments hold, ids below the floor
            // included: read them to know exactly before a window is cut or refused.
            if over_cap(self) && !self.seen.unloaded().is_empty() {
                self.ensure_ids(i64::MIN, i64::MAX, true)?;
            }
            if over_cap(self) {
                // An oldest-first window ends early where it was read to: the watermark moves
                // there, the set is pruned, and the next window is fitted to the rate seen.
                let reached = self.read_up_to.max(progress.query_start);
                // (Read one project at a time, an earlier project's time says nothing about
                // the next one's rows.)
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
                // A newest-first window of which nothing was delivered yet (planned by an
                // earlier version, or before late events arrived) is planned again shorter.
                let base = self.overlap_end(window).unwrap_or(window.start);
                let shorter = minute_between(base, window.end).filter(|_| {
                    self.def.kind == Kind::Events
                        && progress.objects == 0
                        && self.buffer.events == 0
                });
                if let Some(shorter) = shorter {
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
                    return Ok(Read::PlannedAgain);
                }
                return Err(Stop::Failed(Failure {
                    message: too_many_ids(self.def.name, self.config),
                    transient: false,
                }));
            }
            let started = self.env.clock.now();
            let took = absorb(
                &page.parsed,
                window,
                unit,
                &mut self.seen,
                &mut self.buffer.ndjson,
            );
            self.summary.timing.absorb_ms += ms_since(self.env, started);
            if self.def.order == Order::OldestFirst {
                let latest = page.parsed.items.iter().map(|i| i.time);
                let latest = latest.filter(|&t| window.contains(t)).max();
                self.read_up_to = self.read_up_to.max(latest);
            }
            self.buffer.events += took.written;
            self.summary.events += took.written as u64;
            // (The row read again to check the position is not one Sentry served twice.)
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
            match self.def.order {
                Order::NewestFirst => {
                    // A page that reaches past the window's start means the rest is older
                    // (servers that ignore start/end return the whole retention; audit logs
                    // take no dates at all).
                    let past_start = page
                        .parsed
                        .items
                        .last()
                        .is_some_and(|i| i.time < range.start);
                    // The page's rows in Sentry's order, once (for `events` only).
                    let ordered = if self.def.kind == Kind::Events {
                        rows(&page.parsed)
                    } else {
                        Vec::new()
                    };
                    if !keyed(progress) {
                        // Fallen back to Sentry's cursors inside one second: back to positions
                        // as soon as a page reaches an older second.
                        let fell_back = self.def.kind == Kind::Events
                            && !progress.dates_ignored
                            && progress.keyset.is_some();
                        let asked_at = progress.cursor.as_deref().and_then(cursor_offset);
                        match page.next {
                            Some(_)
                                if fell_back
                                    && !past_start
                                    && asked_at.is_some()
                                    && reaches_older_second(&ordered) =>
                            {
                                let at = Keyset {
                                    end: range.end,
                                    read: asked_at.unwrap_or(0) + 1,
                                    ..Keyset::default()
                                };
                                progress.keyset = Some(next_keyset(Some(&at), range.end, &ordered));
                                progress.cursor = None;
                            }
                            Some(cursor) if !past_start => progress.cursor = Some(cursor),
                            _ => {
                                next_unit(progress);
                                // A server that ignores `start`/`end` served this range from
                                // the top of the project's list: that covered the project's
                                // later ranges too.
                                while progress.dates_ignored
                                    && progress.projects.get(progress.next_project) == Some(&unit)
                                {
                                    next_unit(progress);
                                }
                            }
                        }
                    } else if page.parsed.items.iter().any(|i| i.time >= range.end) {
                        // The server ignored `end` (self-hosted Sentry before 2025): its own
                        // cursors from the top of the list for the rest of the window; rows
                        // read twice are dropped as duplicates.
                        progress.dates_ignored = true;
                        progress.keyset = None;
                        progress.cursor = None;
                    } else if boundary_moved(keyset.as_ref(), &ordered) {
                        // Rows above the offset were deleted (or arrived): read the second
                        // again from its top; rows read twice are dropped as duplicates.
                        let resets = keyset.as_ref().map_or(0, |k| k.resets) + 1;
                        if resets < MAX_KEYSET_RESETS {
                            progress.keyset = Some(Keyset {
                                end: range.end,
                                read: 0,
                                last: None,
                                resets,
                            });
                        } else {
                            // Something keeps moving rows of this second: read it from its
                            // top by Sentry's offsets (rows read twice are dropped), and back
                            // to positions past it.
                            progress.keyset = Some(Keyset {
                                end: range.end,
                                read: 0,
                                last: None,
                                resets,
                            });
                            progress.cursor = Some("0:0:0".into());
                        }
                    } else {
                        let empty = page.parsed.items.is_empty() && page.parsed.rejected.is_empty();
                        match page.next {
                            // (An empty page that claims more would only repeat itself.)
                            Some(cursor) if !past_start && !empty => {
                                let next = next_keyset(keyset.as_ref(), range.end, &ordered);
                                // A position that does not move on (rows without a time at the
                                // page's end): Sentry's cursor, in the same list, from here.
                                let stuck = keyset
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
                Order::OldestFirst => {
                    // Sentry's offset counts every row, set apart or not (the rows read
                    // again to check the position were counted by the page before).
                    let served = (page.parsed.items.len() + page.parsed.rejected.len()) as u64;
                    let again = checked.as_ref().map_or(0, |&(_, _, after)| after + 1);
                    progress.query_rows += served.saturating_sub(again);
                    if progress.query_rows >= OFFSET_CAP {
                        self.split_query(progress, range, &page.parsed.items);
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
            }
            if self.buffer.ndjson.len() >= OBJECT_TARGET_BYTES {
                self.flush(progress)?;
            }
        }
        Ok(Read::Done)
    }

    /// Sets a page's unreadable items apart: one NDJSON object under
    /// `{gcs_prefix}{stream}-quarantine/` (outside the feed's prefix), each item as returned.
    /// They count as delivered for the window, so a later read of the overlap does not set them
    /// apart again. The object lands before the checkpoint moves past the page.
    fn quarantine(&mut self, progress: &WindowProgress, page: &Parsed) -> Result<(), Stop> {
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
            &self.shard.suffix(),
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
    fn vanished(&mut self, project: u64) -> Result<bool, Stop> {
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
    fn split_query(&mut self, progress: &mut WindowProgress, range: Window, items: &[Item]) {
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

    /// Writes the buffered events as one object, then records the position. The checkpoint
    /// moves only after the object has landed.
    fn flush(&mut self, progress: &mut WindowProgress) -> Result<(), Stop> {
        self.write_buffer(progress)?;
        if self.checkpoint.in_progress.as_ref() != Some(progress)
            || self.checkpoint.pending.is_some()
        {
            self.checkpoint.in_progress = Some(progress.clone());
            self.checkpoint.pending = None;
            self.save()?;
        }
        Ok(())
    }

    /// Uploads the buffered events, if any, as the window's next object, in two phases: first
    /// the checkpoint records the position after this object, its events as delivered, and
    /// the object as pending (with the state to roll back to); then the upload. The caller's
    /// next save clears the pending mark. A run that dies in between leaves the mark, and the
    /// next run asks the bucket whether the object landed: if so it keeps the new state, if
    /// not it rolls back and reads those events again. Either way nothing is lost and
    /// nothing is written twice.
    fn write_buffer(&mut self, progress: &mut WindowProgress) -> Result<(), Stop> {
        if self.buffer.events == 0 {
            return Ok(());
        }
        // After a failure from here on nothing more is checkpointed in this run (WriteFailed),
        // so the buffer may go.
        let data = std::mem::take(&mut self.buffer);
        let started = self.env.clock.now();
        let body = if self.config.gcs.gzip {
            gcs::gzip(&data.ndjson)
        } else {
            data.ndjson
        };
        let content = gcs::Content::of(&body);
        self.summary.timing.hash_ms += ms_since(self.env, started);
        let name = gcs::object_name(
            &self.config.gcs,
            self.def.name,
            &self.shard.suffix(),
            &self.config.sentry.org,
            (progress.window.start, progress.window.end),
            progress.objects,
            &content.id,
            self.config.gcs.gzip,
        );
        let events = data.events;
        let mut after = progress.clone();
        after.objects += 1;
        self.checkpoint.pending = Some(PendingObject::new(
            name.clone(),
            content.id.clone(),
            &self.checkpoint,
        ));
        self.checkpoint.in_progress = Some(after);
        // The pending mark must reach KV before the object may exist.
        self.save()?;
        self.lease.check(&self.env, self.gcs).map_err(fenced)?;
        let uploaded = self
            .gcs
            .create(&name, body, &content, events)
            .map_err(|e| Stop::WriteFailed(e.into()))?;
        self.summary.bytes += uploaded.bytes as u64;
        self.summary.objects.push(ObjectSummary {
            name: uploaded.name,
            events,
            bytes: uploaded.bytes,
            already_present: uploaded.already_present,
        });
        progress.objects += 1;
        Ok(())
    }

    /// Reads from KV the delivered ids of `[start, end]` not read yet (of every slab when
    /// `set_apart`: items set apart are looked up by key alone).
    fn ensure_ids(&mut self, start: i64, end: i64, set_apart: bool) -> Result<(), Stop> {
        let slabs = self.seen.unloaded_in(start, end, set_apart);
        if slabs.is_empty() {
            return Ok(());
        }
        let started = self.env.clock.now();
        let read = self
            .store
            .load_slabs(&self.checkpoint.ids_at(), &mut self.seen, &slabs);
        self.summary.timing.load_ms += ms_since(self.env, started);
        // Nothing more is saved in this run: a segment the checkpoint names and KV does not
        // hold may mean this run read a checkpoint that had already moved on, and saving on
        // top of it would name segments that are gone.
        read.map_err(|e| Stop::WriteFailed(Failure::unreadable(e)))
    }

    fn save(&mut self) -> Result<(), Stop> {
        let started = self.env.clock.now();
        let stats = save_fenced(
            &self.store,
            self.lease,
            self.env,
            self.gcs,
            &mut self.checkpoint,
            &mut self.seen,
        )?;
        self.summary.state.add(stats);
        self.summary.state.ids = self.seen.len() as u64;
        self.summary.timing.save_ms += ms_since(self.env, started);
        Ok(())
    }

    /// [`fit_to_memory`] for this stream's watermark, set and overlap.
    fn fit_to_rate(&self, window: Window) -> Window {
        fit_to_memory(
            window,
            self.checkpoint.watermark,
            &self.seen,
            self.config.timing.overlap.as_secs() as i64,
        )
    }

    /// The window is read: move the watermark to its end and forget ids no later window reaches.
    fn finish_window(&mut self, window: Window) -> Result<(), Stop> {
        self.checkpoint.watermark = Some(window.end);
        self.checkpoint.floors.retain(|f| f.at > window.end);
        self.checkpoint.in_progress = None;
        self.checkpoint.pending = None;
        self.seen
            .prune(window.end - self.config.timing.overlap.as_secs() as i64);
        self.save()?;
        self.summary.window_finished = true;
        Ok(())
    }
}

fn ms_since(env: Env, start: f64) -> f64 {
    ((env.clock.now() - start) * 1000.0 * 10.0).round() / 10.0
}

/// Ids delivered from an org-wide stream with a time in `range`.
/// A count for the search of an overlap: `None` when the search should stop, and `cut` set
/// when it stops for time (the stream's share nearly spent, or a rate limit that would
/// outlast it). The search saves reading; it must not take the time the reading needs.
fn counted<T>(
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

fn delivered_org_wide(seen: &SeenSet, range: Window) -> u64 {
    seen.counts_in(range.start, range.end)
        .get(&ORG_WIDE)
        .copied()
        .unwrap_or(0)
}

/// The overlap's counts are searched only while this much of the stream's share is left.
const MIN_SECS_TO_SEARCH: f64 = 5.0;

/// How many count queries the search for where an overlap's counts stop agreeing may make.
const MAX_OVERLAP_COUNTS: usize = 10;

/// Per unit (a project, or the org): the latest minute `agree` after `start` (and before
/// `end`) such that Sentry counts in `[start, agree)` exactly what was delivered from it,
/// found by halving (`start` when none is found). A unit is absent when a count is below
/// what was delivered (rows deleted: a deletion can hide a late row in an equal count, so
/// nothing short of the whole range is trusted). Units whose search stands at the same place
/// share one count (Sentry counts every unit in one query; late rows are mostly recent, so a
/// busy org's projects move together). At most `max_counts` counts; a count that fails
/// (`None`) ends the search where it stands.
fn agreeing_prefixes(
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
fn minute_between(agree: i64, differ: i64) -> Option<i64> {
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
type Again = BTreeMap<u64, (Vec<(i64, i64)>, u64)>;

/// The counts of `project` in the seconds of `[from, to)` (none when `to <= from`), from
/// counts keyed by (project, second).
fn seconds_of(
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
fn rows_between(sentry: &BTreeMap<i64, u64>, from: i64, to: i64) -> u64 {
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
fn differing_ranges(
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
const JOIN_BELOW_ROWS: u64 = 100;

/// Pages of per-second counts a window's plan may ask for; what they leave unlisted is read.
const MAX_SECOND_PAGES: usize = 40;

/// The parts of `range` (whose count as a whole differs from what was delivered) where
/// Sentry counts other than what was delivered, in time order: halved, and each half that
/// differs halved again, widest first, until a part is one second or holds fewer delivered
/// rows than a page (reading it costs no more than counting it), or `max_counts` counts
/// were made; what is not split further is read whole. When the first half agrees, the
/// second is taken to differ without a count (the safe side); a count that fails (`None`)
/// ends the search.
fn differing_parts(
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
const MAX_RANGE_COUNTS: usize = 120;

/// Appends `r` to ranges in time order, joined with the last one when they touch.
fn push_range(ranges: &mut Vec<(i64, i64)>, r: (i64, i64)) {
    match ranges.last_mut() {
        Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
        _ => ranges.push(r),
    }
}

/// How [`Collector::read`] ended.
enum Read {
    /// The window is read.
    Done,
    /// The window was planned again (shorter); the new plan is the window in progress.
    PlannedAgain,
}

/// How many times an `events` window is shortened and counted again before it is read as is.
const MAX_FITS: u32 = 6;

/// Where an `events` window that reads from `base` to `end` ends so that the `adds` ids Sentry
/// counts in it (with a tenth more for late arrivals) fit beside the `held` ones in nine
/// tenths of the cap: `end` when they fit, else the part of it they would fill at an even
/// rate, in whole minutes (at least one). The caller counts the shorter window again.
fn fit_to_count(base: i64, end: i64, adds: u64, held: usize) -> i64 {
    let room = (crate::delivered::MAX_IDS / 10 * 9).saturating_sub(held) as f64;
    let need = adds as f64 * 1.1;
    if need <= room || end <= base {
        return end;
    }
    let secs = ((end - base) as f64 * room / need) as i64;
    (base + (secs / 60 * 60).max(60)).min(end)
}

/// Where an oldest-first window that cannot hold more ids ends instead: the latest time it
/// was read to, if that is past the watermark (something new is delivered) and before its end.
fn cut_at(window: Window, watermark: Option<i64>, reached: Option<i64>) -> Option<i64> {
    let past = watermark.unwrap_or(window.start).max(window.start);
    reached.filter(|&t| t > past && t < window.end)
}

/// Why a window cannot be read within the memory a run may use, and what to change.
fn too_many_ids(stream: &str, config: &Config) -> String {
    let t = &config.timing;
    format!(
        "{stream}: the window holds more than {} ids to remember (the overlap's and the window's), the most a run keeps in memory: lower `max_window` (now {}s; it applies from the next window: the one in progress keeps its end) or `overlap` (now {}s), or split the org with `shard`",
        crate::delivered::MAX_IDS,
        t.max_window.as_secs(),
        t.overlap.as_secs()
    )
}

impl Collector<'_, '_> {
    /// How many of a page's items [`absorb`] would add to the delivered set.
    fn new_items(&self, page: &Parsed, window: Window) -> usize {
        page.items
            .iter()
            .filter(|i| window.contains(i.time) && !self.seen.contains_at(&i.key, i.time))
            .count()
    }
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
        } else if seen.insert_key(item.key, item.time, project) {
            out.extend_from_slice(page.json(item));
            out.push(b'\n');
            took.written += 1;
        } else {
            took.duplicates += 1;
        }
    }
    took
}

/// The delivered-id key of an item set apart: of its whole JSON text (it has no usable id).
fn rejected_key(json: &[u8]) -> [u8; 16] {
    seen_key(&String::from_utf8_lossy(json))
}

/// Moves to the next project (or unit), forgetting the position inside the last one.
fn next_unit(progress: &mut WindowProgress) {
    progress.next_project += 1;
    progress.keyset = None;
    new_query(progress, None);
}

/// Starts the unit's query again at `start` (its range's start when `None`), forgetting the
/// position inside the last one.
fn new_query(progress: &mut WindowProgress, start: Option<i64>) {
    progress.cursor = None;
    progress.query_start = start;
    progress.query_rows = 0;
    progress.last_row = None;
    progress.restarted_at = None;
}

/// After this many failed checks at one position, a project follows Sentry's own cursors.
const MAX_KEYSET_RESETS: u32 = 3;

/// The offset of a `0:<offset>:<is_prev>` cursor.
fn cursor_offset(cursor: &str) -> Option<u64> {
    let mut parts = cursor.split(':');
    let (_, offset) = (parts.next()?, parts.next()?);
    offset.parse().ok()
}

/// Whether the page's oldest second begins inside it (a newer row comes first): then the rows
/// of that second read so far are exactly the page's last ones, and positions can resume.
fn reaches_older_second(rows: &[Option<&Item>]) -> bool {
    let mut times = rows.iter().flatten().map(|i| i.time);
    matches!((times.next(), times.next_back()), (Some(first), Some(last)) if first > last)
}

/// The page's rows in order: each an item, or `None` for a row without a readable id or time
/// (it still takes its place in Sentry's offsets).
fn rows(page: &Parsed) -> Vec<Option<&Item>> {
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
fn boundary_moved(keyset: Option<&Keyset>, rows: &[Option<&Item>]) -> bool {
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
fn next_keyset(keyset: Option<&Keyset>, end: i64, rows: &[Option<&Item>]) -> Keyset {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_oldest_first_window_ends_where_it_was_read_to_if_that_moves_the_watermark() {
        let window = Window {
            start: 1_000,
            end: 5_000,
        };
        assert_eq!(cut_at(window, Some(2_000), Some(3_000)), Some(3_000));
        assert_eq!(cut_at(window, None, Some(1_500)), Some(1_500));
        // Nothing read past the watermark, or nothing read: no cut (the stream stops).
        assert_eq!(cut_at(window, Some(2_000), Some(2_000)), None);
        assert_eq!(cut_at(window, Some(2_000), None), None);
        // Read to the end: the window is done anyway.
        assert_eq!(cut_at(window, Some(2_000), Some(5_000)), None);
    }

    #[test]
    fn an_events_window_is_shortened_to_what_its_count_leaves_room_for() {
        let cap = crate::delivered::MAX_IDS;
        // Fits: as planned.
        assert_eq!(fit_to_count(0, 3_600, 100_000, 500_000), 3_600);
        // A backlog of 3M counted in 2 h beside 1M held: room for 350,000 (of 1.35M), so
        // about a ninth of the window, in whole minutes.
        let end = fit_to_count(0, 7_200, 3_000_000, 1_000_000);
        assert_eq!(end % 60, 0);
        let room = (cap / 10 * 9 - 1_000_000) as f64;
        let share = room / (3_000_000.0 * 1.1);
        assert!(end as f64 <= 7_200.0 * share && end as f64 > 7_200.0 * share - 60.0);
        // Counted within 10% of the room: shortened too (late arrivals need the margin).
        assert!(fit_to_count(100, 3_700, (cap / 10 * 9) as u64, 0) < 3_700);
        // No room at all: one minute past the base, never before it.
        assert_eq!(fit_to_count(600, 4_200, 1, cap), 660);
        // Less than a minute left to read: as planned.
        assert_eq!(fit_to_count(600, 630, 5_000_000, 0), 630);
    }

    #[test]
    fn an_overlap_is_read_again_only_in_the_parts_whose_counts_differ() {
        let (start, end) = (999_960, 1_003_560);
        let all = Window { start, end };
        // Sentry holds 300 rows a second; rows at +2100 s and +3000 s were not delivered
        // (late).
        let per_sec = |w: Window| (w.end - w.start) as u64 * 300;
        let late = [start + 2100, start + 3000];
        let within = |w: Window, t: i64| u64::from(t >= w.start && t < w.end);
        let sentry = |w: Window| Some(per_sec(w));
        let delivered = |w: Window| per_sec(w) - late.iter().map(|&t| within(w, t)).sum::<u64>();
        let mut counts = 0;
        let parts = differing_parts(
            all,
            MAX_RANGE_COUNTS,
            |w| {
                counts += 1;
                sentry(w)
            },
            delivered,
        );
        assert_eq!(parts, [(late[0], late[0] + 1), (late[1], late[1] + 1)]);
        assert!(counts <= 2 * 2 * 12, "{counts} counts");
        // A row deleted at +1200 s: a deleted row and a late one in the same counted part
        // cancel out (no count can tell), so once any count is below what was delivered no
        // agreeing count is trusted and the whole range is read.
        let deleted = start + 1200;
        let parts = differing_parts(
            all,
            MAX_RANGE_COUNTS,
            |w| Some(per_sec(w) - within(w, deleted)),
            delivered,
        );
        assert_eq!(parts, [(start, end)]);
        // Fewer rows a second: parts stop where they hold fewer than a page.
        let sparse = differing_parts(
            all,
            MAX_RANGE_COUNTS,
            |w| Some((w.end - w.start) as u64),
            |w| (w.end - w.start) as u64 - within(w, late[1]),
        );
        assert_eq!(sparse.len(), 1);
        let (a, b) = sparse[0];
        assert!(
            a <= late[1] && late[1] < b && b - a < 2 * JOIN_BELOW_ROWS as i64,
            "{sparse:?}"
        );
        // Whatever the budget, and whether counts fail, every second with late rows is read
        // (without deletions, nothing cancels them out).
        let mut seed = 7u64;
        for budget in [0, 1, 2, 3, 5, 8, 20, 60] {
            for fail_at in [1, 2, 4, 9, usize::MAX] {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let extra = start + (seed >> 33) as i64 % (end - start);
                let mut n = 0;
                let parts = differing_parts(
                    all,
                    budget,
                    |w| {
                        n += 1;
                        (n < fail_at).then(|| per_sec(w) + within(w, extra))
                    },
                    delivered,
                );
                for t in [late[0], late[1], extra] {
                    assert!(
                        parts.iter().any(|&(a, b)| a <= t && t < b),
                        "{t} not read with budget {budget}, failing at {fail_at}: {parts:?}"
                    );
                }
                assert!(parts.windows(2).all(|p| p[0].1 < p[1].0), "{parts:?}");
            }
        }
    }

    #[test]
    fn each_projects_overlap_is_read_again_from_where_its_own_counts_stop_agreeing() {
        let (start, end) = (999_960, 1_003_560);
        // Projects 1-3 hold one event a second each. Late (not delivered): project 1 at
        // +3000 s, project 2 at +600 s; project 3 had an event deleted at +100 s (Sentry counts
        // one fewer than was delivered); project 4 has nothing late.
        let late = |p: u64| match p {
            1 => Some(start + 3000),
            2 => Some(start + 600),
            _ => None,
        };
        let mut queries = Vec::new();
        let sentry = |w: Window| {
            queries.push(w);
            let all = (w.end - w.start) as u64;
            let deleted = u64::from(w.end > start + 100);
            Some(HashMap::from([
                (1, all),
                (2, all),
                (3, all - deleted),
                (4, all),
            ]))
        };
        let delivered = |w: Window| {
            let all = (w.end - w.start) as u64;
            (1..=4)
                .map(|p| {
                    let missing = late(p).is_some_and(|t| t >= w.start && t < w.end);
                    (p, all - u64::from(missing))
                })
                .collect::<HashMap<_, _>>()
        };
        // (Project 4 is not searched: its whole overlap agrees; it is counted all the same.)
        let found = agreeing_prefixes(
            start,
            end,
            &[1, 2, 3],
            MAX_OVERLAP_COUNTS,
            sentry,
            delivered,
        );
        let one = found[&1];
        assert!(one <= start + 3000 && one > start + 3000 - 180, "{one}");
        let two = found[&2];
        assert!(two <= start + 600 && two > start + 600 - 180, "{two}");
        assert!(!found.contains_key(&3), "a deletion: the whole overlap");
        assert!(!found.contains_key(&4));
        // Within the budget, every probe a whole minute inside the range.
        assert!(
            queries.len() <= MAX_OVERLAP_COUNTS,
            "{} counts",
            queries.len()
        );
        assert!(queries
            .iter()
            .all(|q| q.start == start && q.end < end && q.end % 60 == 0));
        // A range that does not start on a minute is still probed at whole minutes.
        let mut probes = Vec::new();
        let odd = agreeing_prefixes(
            start + 17,
            end + 17,
            &[1],
            MAX_OVERLAP_COUNTS,
            |w| {
                probes.push(w.end);
                Some(HashMap::from([(1, (w.end - w.start) as u64)]))
            },
            |w| HashMap::from([(1, (w.end - w.start) as u64)]),
        );
        assert!(odd[&1] >= end - 60 && odd[&1] < end + 17, "{odd:?}");
        assert!(probes.iter().all(|t| t % 60 == 0), "{probes:?}");
        // The search stops at its query budget, where it stands.
        let mut n = 0;
        let few = agreeing_prefixes(
            start,
            end,
            &[1, 2],
            1,
            |w| {
                n += 1;
                Some(HashMap::from([(1, (w.end - w.start) as u64), (2, 0)]))
            },
            |w| HashMap::from([(1, (w.end - w.start) as u64), (2, 0)]),
        );
        assert_eq!(n, 1);
        assert_eq!(few.get(&1), Some(&(start + 1800)));
        assert_eq!(few.get(&2), Some(&(start + 1800)));
    }

    #[test]
    fn only_the_seconds_whose_counts_differ_are_read_again() {
        // Fifty events a second were delivered over [1000, 2000). Sentry now counts one more
        // at 1020 and 1500 (late), one fewer at 1600 (deleted), none at 1700 (all deleted);
        // 1010 differs too but lies before where the search found the counts agreeing.
        let delivered: BTreeMap<i64, u64> = (1000..2000).map(|t| (t, 50)).collect();
        let mut sentry = delivered.clone();
        *sentry.get_mut(&1010).unwrap() += 1;
        *sentry.get_mut(&1020).unwrap() += 1;
        *sentry.get_mut(&1500).unwrap() += 1;
        *sentry.get_mut(&1600).unwrap() -= 1;
        sentry.remove(&1700);
        let read = differing_ranges(&sentry, &delivered, 1015, 2000, 2000);
        assert_eq!(
            read,
            [(1020, 1021), (1500, 1501), (1600, 1601), (1700, 1701)]
        );
        // Listed only up to 1800: the rest of the overlap is read whole.
        let read = differing_ranges(&sentry, &delivered, 1015, 1800, 2000);
        assert_eq!(read.last(), Some(&(1800, 2000)));
        assert_eq!(read.len(), 5);
        // Seconds with fewer rows than a page between them are read as one range, and so is
        // an unlisted rest that close.
        let quiet: BTreeMap<i64, u64> = (1000..2000).step_by(10).map(|t| (t, 1)).collect();
        let mut late = quiet.clone();
        late.insert(1205, 1);
        late.insert(1405, 1);
        late.insert(1905, 1);
        assert_eq!(
            differing_ranges(&late, &quiet, 1000, 2000, 2000),
            [(1205, 1906)]
        );
        assert_eq!(
            differing_ranges(&late, &quiet, 1000, 1900, 2400),
            [(1205, 2400)]
        );
        // Counts that agree: nothing to read.
        assert!(differing_ranges(&quiet, &quiet, 1000, 2000, 2000).is_empty());
        // A listing cut short before a project's place (several late projects, one page
        // budget): that project's part is read whole.
        let keyed: BTreeMap<(u64, i64), u64> = [((1, 1500), 2), ((2, 1200), 1)].into();
        assert!(seconds_of(&keyed, 1, 1600, 1300).is_empty());
        assert_eq!(
            seconds_of(&keyed, 1, 1000, 2000),
            BTreeMap::from([(1500, 2)])
        );
        let none = BTreeMap::new();
        assert_eq!(
            differing_ranges(&none, &none, 1600, 1300, 2000),
            [(1600, 2000)]
        );
    }

    #[test]
    fn ranges_that_touch_are_read_as_one() {
        let mut r = vec![(10, 20)];
        push_range(&mut r, (20, 30));
        push_range(&mut r, (40, 50));
        assert_eq!(r, [(10, 30), (40, 50)]);
    }

    #[test]
    fn a_backlog_at_a_high_rate_is_read_in_windows_that_fit_in_memory() {
        let wm = 1_790_000_000;
        let mut seen = SeenSet::default();
        // The last hour held 800,000 ids: 222 a second.
        for n in 0..800_000u64 {
            seen.insert_key(
                crate::identity::seen_key(&format!("{n:032x}")),
                wm - 3600 + (n % 3600) as i64,
                1,
            );
        }
        // Two hours behind (an outage): 1.6M more ids would not fit beside them.
        let behind = Window {
            start: wm - 3600,
            end: wm + 7200,
        };
        let fitted = fit_to_memory(behind, Some(wm), &seen, 3600);
        assert_eq!(fitted.start, behind.start);
        let new = (fitted.end - wm) as f64 * 800_000.0 / 3600.0;
        assert!(fitted.end < behind.end, "{fitted:?}");
        assert!(
            seen.len() as f64 + new * 1.5 <= crate::delivered::MAX_IDS as f64,
            "{fitted:?}"
        );
        // A run a few minutes behind is left alone, and so is a first window.
        let normal = Window {
            start: wm - 3600,
            end: wm + 300,
        };
        assert_eq!(fit_to_memory(normal, Some(wm), &seen, 3600), normal);
        assert_eq!(fit_to_memory(behind, None, &seen, 3600), behind);
    }

    /// A project-events page of (eventID, seconds after 2026-01-01T00:00:00Z) rows; `None`
    /// for the id makes a row without one.
    fn events_page(rows: &[(Option<&str>, i64)]) -> Parsed {
        let items: Vec<String> = rows
            .iter()
            .map(|(id, t)| {
                let time = crate::time::rfc3339(1_767_225_600 + t);
                match id {
                    Some(id) => format!(r#"{{"eventID":"{id}","dateCreated":"{time}"}}"#),
                    None => format!(r#"{{"dateCreated":"{time}"}}"#),
                }
            })
            .collect();
        let shape = &crate::streams::by_name("events").unwrap().shape;
        crate::sentry::pages::parse_page(format!("[{}]", items.join(",")).into_bytes(), shape)
            .unwrap()
    }

    fn key_of(id: &str) -> Option<String> {
        Some(crate::hex::encode(&seen_key(id)))
    }

    const T: i64 = 1_767_225_600;

    #[test]
    fn the_next_page_starts_in_the_oldest_second_read_with_one_row_again() {
        // The top of the list: two rows in second 10, three in second 8.
        let page = events_page(&[
            (Some("e"), 10),
            (Some("d"), 10),
            (Some("c"), 8),
            (Some("b"), 8),
            (Some("a"), 8),
        ]);
        let next = next_keyset(None, T + 60, &rows(&page));
        assert_eq!(
            next,
            Keyset {
                end: T + 9,
                read: 3,
                last: key_of("a"),
                ..Keyset::default()
            }
        );
        // The next page (offset 2 in "before second 9") starts with "a" again; all of it is
        // second 8: the second's rows read so far are counted from its top.
        let page = events_page(&[(Some("a"), 8), (Some("z"), 8), (Some("y"), 8)]);
        assert!(!boundary_moved(Some(&next), &rows(&page)));
        let after = next_keyset(Some(&next), next.end, &rows(&page));
        assert_eq!(
            after,
            Keyset {
                end: T + 9,
                read: 5,
                last: key_of("y"),
                ..Keyset::default()
            }
        );
        // It reaches an older second: only that second's rows count.
        let page = events_page(&[(Some("y"), 8), (Some("x"), 7)]);
        assert_eq!(
            next_keyset(Some(&after), after.end, &rows(&page)),
            Keyset {
                end: T + 8,
                read: 1,
                last: key_of("x"),
                ..Keyset::default()
            }
        );
    }

    #[test]
    fn a_row_above_the_offset_that_went_away_shows_as_a_moved_boundary() {
        let at = Keyset {
            end: T + 9,
            read: 3,
            last: key_of("a"),
            ..Keyset::default()
        };
        // "c" was deleted: the row at offset 2 is now the one after "a".
        let page = events_page(&[(Some("z"), 8), (Some("y"), 8)]);
        assert!(boundary_moved(Some(&at), &rows(&page)));
        // A row without an id at the top is not the row read last either.
        assert!(boundary_moved(Some(&at), &rows(&events_page(&[(None, 8)]))));
        // The top of a second is not checked.
        let top = Keyset {
            end: T + 9,
            read: 0,
            last: None,
            ..Keyset::default()
        };
        assert!(!boundary_moved(Some(&top), &rows(&page)));
        assert!(!boundary_moved(None, &rows(&page)));
    }

    #[test]
    fn failed_checks_are_counted_only_inside_one_second() {
        let at = Keyset {
            end: T + 9,
            read: 0,
            last: None,
            resets: 2,
        };
        // Still in second 8: the count stays, so repeated failures end in Sentry's cursors.
        let page = events_page(&[(Some("c"), 8), (Some("b"), 8)]);
        assert_eq!(next_keyset(Some(&at), at.end, &rows(&page)).resets, 2);
        // On to an older second: a fresh start.
        let page = events_page(&[(Some("c"), 8), (Some("b"), 7)]);
        assert_eq!(next_keyset(Some(&at), at.end, &rows(&page)).resets, 0);
        // A page whose only row with a time is the one read again does not move on.
        let at = Keyset {
            end: T + 9,
            read: 3,
            last: key_of("c"),
            resets: 0,
        };
        let page = events_page(&[(Some("c"), 8), (None, 8), (None, 8)]);
        let next = next_keyset(Some(&at), at.end, &rows(&page));
        assert!(next.end == at.end && next.read <= at.read, "{next:?}");
    }

    #[test]
    fn positions_resume_once_a_page_read_by_offset_reaches_an_older_second() {
        assert_eq!(cursor_offset("0:250:0"), Some(250));
        assert_eq!(cursor_offset("0:0:0"), Some(0));
        assert_eq!(cursor_offset("garbage"), None);
        assert!(!reaches_older_second(&rows(&events_page(&[
            (Some("c"), 8),
            (Some("b"), 8)
        ]))));
        let page = events_page(&[(Some("c"), 8), (None, 8), (Some("b"), 7), (Some("a"), 7)]);
        assert!(reaches_older_second(&rows(&page)));
        // Asked at offset 40 of "before second 9": second 7 starts inside the page, so only
        // its rows count, wherever the page began.
        let at = Keyset {
            end: T + 9,
            read: 41,
            ..Keyset::default()
        };
        assert_eq!(
            next_keyset(Some(&at), at.end, &rows(&page)),
            Keyset {
                end: T + 8,
                read: 2,
                last: key_of("a"),
                ..Keyset::default()
            }
        );
    }

    #[test]
    fn rows_without_an_id_keep_their_place_in_the_offsets() {
        // A bad row inside second 8 counts; one after the last row with a time is read again.
        let page = events_page(&[
            (Some("c"), 9),
            (Some("b"), 8),
            (None, 8),
            (Some("a"), 8),
            (None, 8),
        ]);
        let next = next_keyset(None, T + 60, &rows(&page));
        assert_eq!(
            next,
            Keyset {
                end: T + 9,
                read: 3,
                last: key_of("a"),
                ..Keyset::default()
            }
        );
    }

    #[test]
    fn a_second_pass_adds_to_the_first() {
        let first = StreamSummary {
            stream: "events",
            window_start: Some("a".into()),
            window_end: Some("b".into()),
            pages: 3,
            events: 250,
            objects: vec![ObjectSummary {
                name: "o1".into(),
                events: 250,
                bytes: 10,
                already_present: false,
            }],
            bytes: 10,
            waited_secs: 0.5,
            warnings: vec!["w".into()],
            ..StreamSummary::default()
        };
        assert!(first.wants_more_time());
        let mut merged = first.clone();
        merged.absorb(StreamSummary {
            stream: "events",
            window_start: Some("b".into()),
            window_end: Some("c".into()),
            window_finished: true,
            up_to_date: true,
            watermark: Some("c".into()),
            pages: 2,
            events: 100,
            objects: vec![ObjectSummary {
                name: "o2".into(),
                events: 100,
                bytes: 4,
                already_present: false,
            }],
            bytes: 4,
            waited_secs: 0.25,
            warnings: vec!["w".into(), "v".into()],
            ..StreamSummary::default()
        });
        assert_eq!(merged.window_start.as_deref(), Some("a"));
        assert_eq!(merged.window_end.as_deref(), Some("c"));
        assert_eq!((merged.pages, merged.events, merged.bytes), (5, 350, 14));
        assert_eq!(merged.objects.len(), 2);
        assert_eq!(merged.waited_secs, 0.75);
        assert_eq!(merged.warnings, vec!["w", "v"]);
        assert!(merged.window_finished && !merged.wants_more_time());
        let failed = StreamSummary {
            error: Some("Sentry: 403".into()),
            ..StreamSummary::default()
        };
        assert!(!failed.wants_more_time());
    }
}
