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
//!
//! The parts, each building on the ones before: [`collector`] (the state), [`commit`],
//! [`plan`], [`read`]; this module runs them in turn.

pub mod collector;
pub mod commit;
pub mod plan;
pub mod read;
pub mod webhook;

use crate::backfill::{self, Next};
use crate::checkpoint::{BackfillPos, Checkpoint, CheckpointStore, WindowProgress};
use crate::config::Config;
use crate::delivered::SeenSet;
use crate::gcs::GcsClient;
use crate::lease::Lease;
use crate::ports::Env;
use crate::report::{BackfillProgress, StreamSummary};
use crate::sentry::client::{RequestStats, SentryClient, ORG_WIDE};
use crate::shard::Shard;
use crate::state::{self, StreamStatus};
use crate::streams::{Kind, StreamDef};
use crate::time::{parse_rfc3339, rfc3339};
use collector::*;
use commit::*;
use plan::*;
use read::*;

/// A run that finished a window starts another only if at least this much time is left to
/// read, so catching up does not end in a string of seconds-long windows.
const MIN_FOLLOW_UP_SECS: i64 = 300;

/// Listing pages (1,000 names each) a run reads to find where an old deployment began.
const ORIGIN_PAGES: u32 = 3;

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
    track: Track,
) -> StreamSummary {
    let mut summary = StreamSummary {
        stream: def.name,
        shard: shard.to_string(),
        ..StreamSummary::default()
    };
    let mut state_name = format!("{}{}", def.name, shard.suffix());
    if let Track::Backfill { .. } = track {
        summary.track = "backfill";
        state_name = backfill::state_name(&state_name);
    }
    let store = CheckpointStore::new(env.kv, &state_name);
    let Some((checkpoint, seen)) = load_settled(&store, gcs, lease, env, &mut summary) else {
        return summary;
    };
    warn_if_near_memory(&mut summary, def, seen.len());
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
        track,
    };
    if let Track::Backfill { seam, .. } = track {
        // A backfill's first run: it reads down from the live track's origin.
        c.checkpoint.backfill.get_or_insert(BackfillPos {
            seam,
            low: seam,
            gap: None,
        });
    }
    let sentry_before = sentry.stats();
    let gcs_before = gcs.requests.get();
    // `error` webhooks first: what they wrote is then dropped by this run's own reads.
    let drained = if def.name == "events" && track == Track::Live {
        c.drain_webhook_events()
    } else {
        Ok(())
    };
    if let Err(stop) = drained.and_then(|()| c.run()) {
        if let Stop::Lost(why) = &stop {
            eprintln!("warning: {why}");
        }
        record_stop(&mut c.summary, stop);
    }
    let mut summary = c.summary;
    count_requests(&mut summary, sentry.stats(), sentry_before);
    summary.gcs_requests = gcs.requests.get() - gcs_before;
    summary.watermark = c.checkpoint.watermark.map(rfc3339);
    if let (Track::Backfill { start, .. }, Some(pos)) = (track, c.checkpoint.backfill) {
        summary.watermark = Some(rfc3339(pos.low));
        let waiting = summary.backfill.take().and_then(|b| b.waiting);
        summary.backfill = Some(backfill_progress(&pos, start, waiting));
    }
    summary
}

/// The stream's checkpoint and delivered ids, a pending object settled; `None` (the stop
/// recorded in the summary) when they cannot be read or settled.
fn load_settled(
    store: &CheckpointStore,
    gcs: &GcsClient,
    lease: &Lease,
    env: Env,
    summary: &mut StreamSummary,
) -> Option<(Checkpoint, SeenSet)> {
    let started = env.clock.now();
    let settled = store
        .load_lazy()
        .map_err(|e| Stop::Failed(Failure::unreadable(e)))
        .and_then(|state| settle_pending(store, gcs, lease, env, state, summary));
    summary.timing.load_ms = ms_since(env, started);
    settled.map_err(|stop| record_stop(summary, stop)).ok()
}

/// The Sentry requests, rate limits, retries and waits of the stream: the client's counts
/// now less `before`.
fn count_requests(summary: &mut StreamSummary, now: RequestStats, before: RequestStats) {
    summary.sentry_requests = now.requests - before.requests;
    summary.rate_limited = now.rate_limited - before.rate_limited;
    summary.retries = now.retries - before.retries;
    summary.waited_secs = ((now.waited_secs - before.waited_secs) * 1000.0).round() / 1000.0;
    summary.timing.parse_ms += (now.parse_secs - before.parse_secs) * 1000.0;
}

/// A warning when the delivered ids held come near what a run keeps in memory.
fn warn_if_near_memory(summary: &mut StreamSummary, def: &StreamDef, held: usize) {
    if held > crate::delivered::MAX_IDS / 5 * 4 {
        summary.warnings.push(format!(
            "{} holds {held} delivered ids, near the {} a run keeps in memory: {}",
            def.name,
            crate::delivered::MAX_IDS,
            "lower `overlap` or split the org with `shard` before the stream stops"
        ));
    }
}

/// Where a backfill down to `start` stands at `pos`.
fn backfill_progress(pos: &BackfillPos, start: i64, waiting: Option<String>) -> BackfillProgress {
    let left = pos.gap.map_or(0, |(a, b)| b - a) + (pos.low - start).max(0);
    BackfillProgress {
        start: rfc3339(start),
        seam: rfc3339(pos.seam),
        read_back_to: rfc3339(pos.low),
        done: left == 0,
        secs_left: left,
        waiting,
    }
}

/// What a stop means for the stream's summary: an error (transient or not), a lost lease
/// (a warning, and the run ends), or nothing (out of time: the next run goes on).
fn record_stop(summary: &mut StreamSummary, stop: Stop) {
    match stop {
        Stop::Failed(f) | Stop::WriteFailed(f) => {
            summary.error = Some(f.message);
            summary.error_is_transient = f.transient;
        }
        Stop::Lost(why) => {
            summary.lease_lost = Some(why.clone());
            summary.warnings.push(why);
        }
        Stop::OutOfTime => {}
    }
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

/// The window start an object's name carries (`...-{start}-{end}-{seq}-{content}.ndjson`).
pub fn window_start_of(name: &str) -> Option<i64> {
    let file = name.rsplit('/').next()?;
    let mut parts = file.rsplitn(5, '-');
    let (_content, _seq, _end, start) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    crate::time::parse_compact(start)
}

/// Records where the stream's backfill track stands, for `/status`.
pub fn save_backfill_status(
    env: Env,
    def: &StreamDef,
    shard: Shard,
    summary: &StreamSummary,
    request: &backfill::Request,
) {
    let live_name = format!("{}{}", def.name, shard.suffix());
    let key = backfill::Status::key(&live_name);
    let before: backfill::Status = state::load(env.kv, &key).ok().flatten().unwrap_or_default();
    let Some(progress) = &summary.backfill else {
        return;
    };
    let range = parse_rfc3339(&progress.seam).unwrap_or_default() - request.start;
    let status = backfill::Status {
        stream: def.name.to_string(),
        shard: shard.to_string(),
        requested_by: request.by.clone(),
        start: progress.start.clone(),
        seam: progress.seam.clone(),
        read_back_to: progress.read_back_to.clone(),
        done: progress.done,
        secs_left: progress.secs_left,
        rows: before.rows + summary.events,
        runs: before.runs + 1,
        estimate: request.estimate.clone(),
        secs_left_at_rate_limit: backfill::left_at_rate_limit(
            request.estimate.as_ref(),
            range,
            progress.secs_left,
        ),
        waiting: progress.waiting.clone(),
        error: summary.error.clone(),
        finished_at: env.clock.now() as i64,
    };
    if let Err(e) = state::save(env.kv, &key, &status) {
        eprintln!("warning: could not record the backfill's status: {e}");
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
        self.from_webhooks += later.from_webhooks;
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

impl Collector<'_, '_> {
    /// Reads windows until the stream is caught up, the budget runs out, or a failure.
    pub(super) fn run(&mut self) -> Result<(), Stop> {
        let mut windows = 0;
        loop {
            let progress = match self.checkpoint.in_progress.clone() {
                Some(p) => p,
                None => match self.next_window(windows)? {
                    Some(plan) => plan,
                    None => return Ok(()),
                },
            };
            self.report_window(&progress);
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

    /// Plans and saves the next window, after `windows` this run finished; `None` when the
    /// run stops here (caught up, or too little time left to plan well).
    pub(super) fn next_window(&mut self, windows: u32) -> Result<Option<WindowProgress>, Stop> {
        if let Track::Backfill { start, .. } = self.track {
            return self.next_backfill_window(windows, start);
        }
        let now = self.env.clock.now() as i64;
        // After a window this run finished, go on only to drain a backlog: a window that
        // ended at `now - lag` leaves only seconds to read.
        let caught_up = self.checkpoint.watermark.is_some_and(|w| {
            w + MIN_FOLLOW_UP_SECS > now - self.config.timing.lag.as_secs() as i64
        });
        if windows > 0 && caught_up {
            self.summary.up_to_date = true;
            return Ok(None);
        }
        // Planning searches the overlap's counts for what to read again; without the time
        // for that search it would read the whole overlap again. The next run plans the
        // window with its whole share.
        if windows > 0 && self.sentry.secs_left() < 2.0 * MIN_SECS_TO_SEARCH {
            return Ok(None);
        }
        let first = self.checkpoint.watermark.is_none();
        if !first && self.checkpoint.origin.is_none() {
            self.checkpoint.origin = self.earliest_delivered()?;
        }
        let Some(window) = plan_window(
            self.config,
            self.checkpoint.watermark,
            self.checkpoint.origin,
            now,
        ) else {
            self.summary.up_to_date = true;
            return Ok(None);
        };
        // The live track's first window: where it starts is the seam a backfill reads to.
        if first {
            self.checkpoint.origin.get_or_insert(window.start);
        }
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
        // The plan is saved before anything is read: a run that dies before its first
        // checkpoint is retried on the same window, so it rebuilds the same object names and
        // finds what already landed.
        self.flush(&mut plan)?;
        Ok(Some(plan))
    }

    /// The backfill track's next window (see [`backfill::next_window`]), planned and saved;
    /// `None` when the range is read, the seam is not settled yet, or time is short.
    fn next_backfill_window(
        &mut self,
        windows: u32,
        start: i64,
    ) -> Result<Option<WindowProgress>, Stop> {
        if windows > 0 && self.sentry.secs_left() < 2.0 * MIN_SECS_TO_SEARCH {
            return Ok(None);
        }
        let Some(pos) = self.checkpoint.backfill else {
            return Ok(None);
        };
        let t = &self.config.timing;
        let settle = (t.lag.as_secs() + t.overlap.as_secs()) as i64;
        let now = self.env.clock.now() as i64;
        let max_window = backfill::window_secs(self.def, t.max_window.as_secs() as i64);
        let window = match backfill::next_window(&pos, start, max_window, now, settle) {
            Next::Read(w) => w,
            Next::Done => {
                self.summary.up_to_date = true;
                return Ok(None);
            }
            Next::WaitUntil(at) => {
                self.summary.up_to_date = true;
                self.summary.backfill = Some(BackfillProgress {
                    waiting: Some(format!(
                        "late items may still arrive before the seam {}: the backfill starts at {}",
                        rfc3339(pos.seam),
                        rfc3339(at)
                    )),
                    ..BackfillProgress::default()
                });
                return Ok(None);
            }
        };
        self.may_defer = windows > 0 || self.second_pass;
        let mut plan = self.plan(window)?;
        self.may_defer = false;
        self.flush(&mut plan)?;
        Ok(Some(plan))
    }

    /// Where the live track of a deployment older than origins began: the earliest window
    /// start among this org's live objects of the stream (any shard layout; not a
    /// backfill's, not another org's), in the first pages of the listing (names go by the
    /// hour of a window's end, so the first ones are the first windows'). With none in a
    /// complete listing, where its next window starts (nothing before was delivered); `None`
    /// when the pages read hold none but there are more (asked again next run).
    fn earliest_delivered(&mut self) -> Result<Option<i64>, Stop> {
        let next = self.checkpoint.watermark.unwrap_or_default()
            - self.config.timing.overlap.as_secs() as i64;
        let dir = format!("{}{}/", self.config.gcs.prefix, self.def.name);
        let mine = format!("{}-{}", self.config.sentry.org, self.def.name);
        let live = |name: &str| {
            let file = name.rsplit('/').next().unwrap_or("");
            file.strip_prefix(&mine).is_some_and(|rest| {
                let tag = rest.split('-').next().unwrap_or("");
                (tag.is_empty() || tag.starts_with(".s")) && !tag.contains("backfill")
            })
        };
        let mut page: Option<String> = None;
        for _ in 0..ORIGIN_PAGES {
            let (listed, more) = self
                .gcs
                .list_under(&dir, 1000, page.as_deref())
                .map_err(|e| Stop::Failed(e.into()))?;
            let earliest = listed
                .iter()
                .filter(|o| live(&o.name))
                .filter_map(|o| window_start_of(&o.name))
                .min();
            if let Some(start) = earliest {
                return Ok(Some(start.min(next)));
            }
            match more {
                Some(token) => page = Some(token),
                None => return Ok(Some(next)),
            }
        }
        self.summary.warnings.push(format!(
            "{}: where this deployment's collection began was not found among the first {} objects under {dir}; a backfill waits until it is",
            self.def.name,
            ORIGIN_PAGES * 1000
        ));
        Ok(None)
    }

    /// The window in the summary: where it starts and ends, its projects, and a warning for
    /// projects `max_projects` cut.
    pub(super) fn report_window(&mut self, progress: &WindowProgress) {
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
    }
}

#[cfg(test)]
mod tests;
