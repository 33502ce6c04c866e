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

use crate::checkpoint::{CheckpointStore, WindowProgress};
use crate::config::Config;
use crate::gcs::GcsClient;
use crate::lease::Lease;
use crate::ports::Env;
use crate::report::StreamSummary;
use crate::sentry::client::{SentryClient, ORG_WIDE};
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
        Err(stop) => {
            record_stop(&mut summary, stop);
            return summary;
        }
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
    if let Err(stop) = c.run() {
        if let Stop::Lost(why) = &stop {
            eprintln!("warning: {why}");
        }
        record_stop(&mut c.summary, stop);
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
        let Some(window) = plan_window(self.config, self.checkpoint.watermark, now) else {
            self.summary.up_to_date = true;
            return Ok(None);
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
        // The plan is saved before anything is read: a run that dies before its first
        // checkpoint is retried on the same window, so it rebuilds the same object names and
        // finds what already landed.
        self.flush(&mut plan)?;
        Ok(Some(plan))
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
