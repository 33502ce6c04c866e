//! One collection run: configuration, the shard's lease, region, the streams, and the record
//! `/status` reads.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::backfill;
use crate::checkpoint::{CheckpointStore, SaveError, Writer};
use crate::collect::{self, collector::Track};
use crate::config::{Config, ConfigError};
use crate::gcs::{GcsClient, GcsError};
use crate::layout::{self, LayoutError};
use crate::lease::{self, Claim, Lease};
use crate::ports::{Env, WaitMeter};
use crate::report::{RunSummary, StreamSummary};
use crate::retry::Deadline;
use crate::sentry::client::{SentryClient, ORG_WIDE};
use crate::sentry::{region, SentryError};
use crate::shard::{Shard, MAX_SHARDS};
use crate::state::{self, keys, LastRun, StreamStatus};
use crate::streams::{self, Kind, StreamDef};
use crate::time::rfc3339;
use crate::window::Window;

/// Time kept back from the budget for writing the last object and the checkpoint: Sentry
/// pages stop this long before the budget ends.
fn write_reserve(budget_secs: f64) -> f64 {
    (budget_secs * 0.2).clamp(1.0, 10.0)
}

/// A second pass over streams that ran out of their share starts only with this much time left.
const MIN_SECOND_PASS_SECS: f64 = 2.0;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Cron,
    Http,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Http => "http",
        }
    }
}

/// What a caller may choose for one run (Pub/Sub attributes, `/run` query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// A subset of the configured streams; `None`: all of them.
    pub streams: Option<Vec<String>>,
    pub shard: Shard,
}

/// Why a run could not collect at all.
#[derive(Debug)]
pub enum RunError {
    Config(ConfigError),
    /// The options ask for something the configuration does not have.
    Options(String),
    Sentry(SentryError),
    Storage(GcsError),
    /// The state in KV could not be read or written.
    State(String),
    /// The run's shard layout is not the deployment's: someone must migrate.
    Layout(String),
    /// Another run holds a lease the operation needs.
    Busy(String),
    /// The run went ahead but a stream failed; the summary says which and why.
    Streams(Box<RunSummary>),
}

impl RunError {
    /// Whether trying again later, unchanged, may succeed (Pub/Sub should redeliver).
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Config(_) | RunError::Options(_) | RunError::Layout(_) => false,
            RunError::Busy(_) => true,
            RunError::Sentry(e) => e.is_transient(),
            RunError::Storage(e) => matches!(e, GcsError::Transient(_)),
            RunError::State(_) => true,
            RunError::Streams(s) => s
                .streams
                .iter()
                .any(|st| st.error.is_some() && st.error_is_transient),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => e.fmt(f),
            RunError::Options(m) => f.write_str(m),
            RunError::Sentry(e) => write!(f, "Sentry: {e}"),
            RunError::Storage(e) => write!(f, "Cloud Storage: {e}"),
            RunError::State(e) => write!(f, "key-value store: {e}"),
            RunError::Layout(m) | RunError::Busy(m) => f.write_str(m),
            RunError::Streams(s) => {
                let failed: Vec<String> = s
                    .streams
                    .iter()
                    .filter_map(|st| st.error.as_ref().map(|e| format!("{}: {e}", st.stream)))
                    .collect();
                write!(f, "{}", failed.join("; "))
            }
        }
    }
}

impl std::error::Error for RunError {}

/// A run that another run's lease kept from starting.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub skipped: bool,
    pub shard: String,
    pub reason: String,
    pub lease_expires_at: String,
}

#[derive(Debug, Clone)]
pub enum RunOutcome {
    Ran(RunSummary),
    Skipped(Skipped),
}

/// Runs once. Whatever the outcome, the last-run record in KV says what happened.
pub fn run_once(env: &Env, trigger: Trigger, options: &RunOptions) -> Result<RunOutcome, RunError> {
    let config = Config::load(env.vars).map_err(RunError::Config)?;
    run_with(env, &config, trigger, options)
}

/// Runs once with a configuration the caller already loaded (the HTTP routes load it to
/// authenticate the caller).
pub fn run_with(
    env: &Env,
    config: &Config,
    trigger: Trigger,
    options: &RunOptions,
) -> Result<RunOutcome, RunError> {
    let meter = WaitMeter::new(env.http, env.kv, env.clock);
    let env = &Env {
        http: &meter,
        kv: &meter,
        clock: &meter,
        ..*env
    };
    let started = env.clock.now();
    let streams = chosen_streams(config, options)?;
    let budget = config.timing.time_budget.as_secs();
    check_layout(env, &streams, &options.shard)?;
    let gcs = GcsClient::new(*env, &config.gcs, Deadline(started + budget as f64))
        .map_err(RunError::Storage)?;
    gcs.check_credentials().map_err(RunError::Storage)?;
    // The shard's lease, and the whole org's when this shard reads the org-wide streams
    // (they have one checkpoint, shared with any unsharded run).
    let mut lease_shards = vec![options.shard];
    let reads_org_wide = streams
        .iter()
        .any(|s| streams::by_name(s).is_some_and(|d| d.org_wide));
    // The webhook inbox's `issue`, `comment` and alert deliveries are drained under it too.
    let drains_inbox = config.webhook.secret.is_some();
    if options.shard != Shard::WHOLE && options.shard.index == 0 && (reads_org_wide || drains_inbox)
    {
        lease_shards.push(Shard::WHOLE);
    }
    let mut leases: Vec<Lease> = Vec::new();
    for shard in lease_shards {
        match lease::acquire(env, &gcs, &config.gcs.prefix, &shard, budget)
            .map_err(RunError::Storage)?
        {
            Claim::Acquired(lease) => leases.push(lease),
            Claim::Held { until } => {
                lease::release_all(env, &gcs, &leases);
                return Ok(RunOutcome::Skipped(Skipped {
                    skipped: true,
                    shard: options.shard.to_string(),
                    reason: if shard == options.shard {
                        "another run of this shard holds the lease".to_string()
                    } else {
                        "another run holds the lease of the org-wide streams (shard 0/1)"
                            .to_string()
                    },
                    lease_expires_at: rfc3339(until),
                }));
            }
        }
    }
    let previous: LastRun = state::load(env.kv, keys::LAST_RUN)
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; starting the run counter again");
            None
        })
        .unwrap_or_default();
    let runs = previous.runs + 1;
    // Again under the leases: a migration may have changed the layout since the check above.
    if let Err(e) = check_layout(env, &streams, &options.shard) {
        lease::release_all(env, &gcs, &leases);
        return Err(e);
    }
    let mut result = collect(
        env,
        config,
        &gcs,
        &leases,
        &streams,
        options.shard,
        trigger,
        started,
        runs,
    );
    // What the run spent computing (parsing, de-duplicating, encoding, hashing): its wall
    // time less the time it waited on the network, on rate limits and on KV.
    let elapsed = env.clock.now() - started;
    let kv_ms = (meter.kv_secs() * 1000.0).round();
    let busy_ms = ((elapsed - meter.waited_secs()).max(0.0) * 1000.0 - kv_ms)
        .max(0.0)
        .round();
    let elapsed_ms = (elapsed * 1000.0).round();
    match &mut result {
        Ok(s) => (s.busy_ms, s.kv_ms, s.elapsed_ms) = (busy_ms, kv_ms, elapsed_ms),
        Err(RunError::Streams(s)) => {
            (s.busy_ms, s.kv_ms, s.elapsed_ms) = (busy_ms, kv_ms, elapsed_ms)
        }
        Err(_) => {}
    }
    let record = LastRun {
        runs,
        trigger: trigger.as_str().to_string(),
        started_at: started as i64,
        finished_at: env.clock.now() as i64,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
    };
    if let Err(e) = state::save(env.kv, keys::LAST_RUN, &record) {
        eprintln!("warning: could not record the run: {e}");
    }
    lease::release_all(env, &gcs, &leases);
    result.map(RunOutcome::Ran)
}

/// What a change of shard layout did.
#[derive(Debug, Clone, Serialize)]
pub struct Migrated {
    /// The layouts (numbers of shards) whose `events` state was carried over.
    pub from: Vec<u32>,
    pub to: u32,
    pub shards: Vec<MigratedShard>,
    pub note: String,
}

/// One new shard after a migration.
#[derive(Debug, Clone, Serialize)]
pub struct MigratedShard {
    pub shard: String,
    /// Where its first window starts, less the overlap.
    pub watermark: Option<String>,
    /// Old shards whose projects it reads from later than the watermark.
    pub floors: usize,
    /// Delivered ids it carries (so the overlap is not delivered again).
    pub ids: usize,
}

/// Moves `events` to `to` shards, carrying every old shard's position and delivered ids
/// into the new ones (see [`layout::merge`]), under the leases of every shard involved, so
/// no run of either layout collects meanwhile. The layout record is the commit point: a
/// migration that dies before it leaves the old layout as it was; one that dies after leaves
/// unused old keys, which the next migration drops.
pub fn migrate(env: &Env, config: &Config, to: u32) -> Result<Migrated, RunError> {
    if to == 0 || to > MAX_SHARDS {
        return Err(RunError::Options(format!(
            "shards must be a number from 1 to {MAX_SHARDS}"
        )));
    }
    // A backfill of `events` reads per shard, down from each shard's own origin: a new
    // layout's shards would not know what the old ones' backfills read.
    if let Some(def) = streams::by_name(layout::SHARDED_STREAM) {
        let request = backfill::load_request(env.kv, def.name).map_err(RunError::State)?;
        if let Some(r) = request.filter(|r| r.cancelled_at.is_none()) {
            let (_, covered) = backfill_positions(env, def)?;
            if covered.is_none_or(|c| c.low > r.start || c.gap.is_some()) {
                return Err(RunError::Busy(format!(
                    "a backfill of {} is in progress (from {}): change the shard layout once it is done, or POST /backfill?stream={}&cancel=true first",
                    def.name,
                    rfc3339(r.start),
                    def.name
                )));
            }
        }
    }
    let seen_before = layout_state(env)?;
    let (old, leftovers, from) = split_layout(&seen_before);
    let already = || Migrated {
        from: from.iter().copied().collect(),
        to,
        shards: Vec::new(),
        note: format!(
            "{} is already collected as {to} shard(s)",
            layout::SHARDED_STREAM
        ),
    };
    if from.iter().all(|&n| n == to) && leftovers.is_empty() {
        layout::record(env.kv, to).map_err(RunError::State)?;
        return Ok(already());
    }
    let started = env.clock.now();
    let budget = config.timing.time_budget.as_secs();
    let gcs = GcsClient::new(*env, &config.gcs, Deadline(started + budget as f64))
        .map_err(RunError::Storage)?;
    gcs.check_credentials().map_err(RunError::Storage)?;
    let new: Vec<Shard> = (0..to).map(|index| Shard { index, count: to }).collect();
    let mut involved: Vec<Shard> = new.clone();
    let mut counts = from.clone();
    counts.extend(leftovers.iter().map(|s| s.count));
    for &n in &counts {
        involved.extend((0..n).map(|index| Shard { index, count: n }));
    }
    involved.sort_by_key(|s| (s.count, s.index));
    involved.dedup();
    let mut leases: Vec<Lease> = Vec::new();
    let mut busy = None;
    for shard in &involved {
        match lease::acquire(env, &gcs, &config.gcs.prefix, shard, budget) {
            Ok(Claim::Acquired(lease)) => leases.push(lease),
            Ok(Claim::Held { until }) => {
                busy = Some(RunError::Busy(format!(
                    "a run of shard {shard} holds its lease until {}; stop the runs of the old layout, then try again",
                    rfc3339(until)
                )));
                break;
            }
            Err(e) => {
                busy = Some(RunError::Storage(e));
                break;
            }
        }
    }
    // Under the leases, what was read before must still hold: a shard's first run or another
    // migration may have changed it in between.
    if busy.is_none() {
        match layout_state(env) {
            Ok(now) if now == seen_before => {}
            Ok(_) => {
                busy = Some(RunError::Busy(
                    "the shard layout changed while this migration took its leases (another migration, or a shard's first run); try again".into(),
                ))
            }
            Err(e) => busy = Some(e),
        }
    }
    let result = match busy {
        Some(e) => Err(e),
        None if from.iter().all(|&n| n == to) => {
            drop_state(env, &leftovers, &new);
            Ok(already())
        }
        None => migrate_held(env, config, &gcs, &leases, &old, &new, seen_before.1).map(|shards| {
            drop_state(env, &leftovers, &new);
            Migrated {
                from: from.iter().copied().collect(),
                to,
                shards,
                note: "carried over; schedule the new shards now".into(),
            }
        }),
    };
    lease::release_all(env, &gcs, &leases);
    result
}

/// The shards with `events` state in KV, and the recorded layout.
fn layout_state(env: &Env) -> Result<(Vec<Shard>, Option<u32>), RunError> {
    Ok((
        layout::shards_in_kv(env.kv).map_err(RunError::State)?,
        layout::recorded(env.kv).map_err(RunError::State)?,
    ))
}

/// The shards holding live state, the leftovers of an interrupted migration, and the layouts
/// to migrate from. With a recorded layout, only its shards hold live state; any other
/// layout's keys are what an interrupted migration left behind (already carried over): they
/// are dropped, not merged. Without one (state from before layouts were recorded), every
/// layout found is merged.
fn split_layout(state: &(Vec<Shard>, Option<u32>)) -> (Vec<Shard>, Vec<Shard>, BTreeSet<u32>) {
    let (found, recorded) = state;
    let (old, leftovers): (Vec<Shard>, Vec<Shard>) = match recorded {
        Some(n) => found.iter().partition(|s| s.count == *n),
        None => (found.clone(), Vec::new()),
    };
    let mut from: BTreeSet<u32> = old.iter().map(|s| s.count).collect();
    from.extend(*recorded);
    (old, leftovers, from)
}

fn migrate_held(
    env: &Env,
    config: &Config,
    gcs: &GcsClient,
    leases: &[Lease],
    old: &[Shard],
    new: &[Shard],
    recorded: Option<u32>,
) -> Result<Vec<MigratedShard>, RunError> {
    let lease_of = |shard: &Shard| {
        leases
            .iter()
            .find(|l| l.shard == *shard)
            .ok_or_else(|| RunError::State(format!("no lease held for shard {shard}")))
    };
    let mut lows: Vec<Option<i64>> = Vec::new();
    let mut loaded = Vec::new();
    for shard in old {
        let name = layout::state_name(shard);
        let store = CheckpointStore::new(env.kv, &name);
        let state = store.load().map_err(RunError::State)?;
        let mut summary = StreamSummary::default();
        let (cp, seen) = collect::commit::settle_pending(
            &store,
            gcs,
            lease_of(shard)?,
            *env,
            state,
            &mut summary,
        )
        .map_err(|stop| RunError::State(collect::commit::stop_message(stop)))?;
        let (cp, low) = with_backfill_as_history(env, shard, &name, cp)?;
        lows.push(low);
        loaded.push((*shard, cp, seen));
    }
    // Backfills that reached different times cannot be merged into one origin: the projects
    // of a shard that reached less far back would keep a stretch nobody reads.
    if lows.iter().any(Option::is_some) && lows.windows(2).any(|w| w[0] != w[1]) {
        return Err(RunError::Busy(
            "the shards' backfills of events have reached different times: let the backfill finish on every shard (or cancel it where all stopped at the same time) before changing the layout".into(),
        ));
    }
    // Before every KV write: every lease involved still has time left.
    let fence = || {
        let now = env.clock.now();
        leases
            .iter()
            .try_for_each(|l| l.check_time(now))
            .map_err(|f| f.to_string())
    };
    let overlap = config.timing.overlap.as_secs() as i64;
    // Ids kept under no project (quarantined items) go to every new shard.
    let unowned = |p: u64| p == collect::collector::QUARANTINED || p == ORG_WIDE;
    let mut report = Vec::new();
    for to in new {
        let name = layout::state_name(to);
        let store = CheckpointStore::new(env.kv, &name);
        let (mut cp, mut seen) = layout::merge(&loaded, *to, overlap, unowned).unwrap_or_default();
        let writer = Writer {
            epoch: lease_of(to)?.epoch,
            // Every lease involved is held: an epoch from before a lease folder was emptied
            // may be overwritten.
            over_later: true,
            fence: &fence,
        };
        store
            .save(&mut cp, &mut seen, &writer)
            .map_err(|e| match e {
                SaveError::Superseded(why) => RunError::Busy(why),
                SaveError::Failed(why) => RunError::State(why),
            })?;
        report.push(MigratedShard {
            shard: to.to_string(),
            watermark: cp.watermark.map(rfc3339),
            floors: cp.floors.len(),
            ids: seen.len(),
        });
    }
    // The commit point, only while every lease is still this migration's and the layout is
    // still the one it started from.
    for lease in leases {
        lease
            .check(env, gcs)
            .map_err(|f| RunError::Busy(f.to_string()))?;
    }
    if layout::recorded(env.kv).map_err(RunError::State)? != recorded {
        return Err(RunError::Busy(
            "the shard layout changed during this migration; nothing was switched, try again"
                .into(),
        ));
    }
    layout::record(env.kv, new.len() as u32).map_err(RunError::State)?;
    drop_state(env, old, new);
    Ok(report)
}

/// An old shard's live checkpoint for a migration, its backfill counted as its own history:
/// the new shards' live track began where that backfill reached, so a later backfill reads
/// only before it. Refused while the backfill is inside a window (its ids would be lost).
fn with_backfill_as_history(
    env: &Env,
    shard: &Shard,
    live_name: &str,
    mut cp: crate::checkpoint::Checkpoint,
) -> Result<(crate::checkpoint::Checkpoint, Option<i64>), RunError> {
    let (back, _) = CheckpointStore::new(env.kv, &backfill::state_name(live_name))
        .load_lazy()
        .map_err(RunError::State)?;
    let midway = back.in_progress.is_some()
        || back.pending.is_some()
        || back.backfill.is_some_and(|p| p.gap.is_some());
    if midway {
        return Err(RunError::Busy(format!(
            "the backfill of shard {shard} is inside a window: let the runs of the current layout finish it (a cancelled backfill still finishes its window) before changing the layout"
        )));
    }
    if let Some(pos) = back.backfill {
        cp.origin = Some(cp.origin.map_or(pos.low, |o| o.min(pos.low)));
    }
    Ok((cp, back.backfill.map(|p| p.low)))
}

/// Deletes the `events` state of `shards` (but not of `keep`), their backfills' included; a
/// failed delete leaves an unused key behind, which the next migration drops.
fn drop_state(env: &Env, shards: &[Shard], keep: &[Shard]) {
    if shards.is_empty() {
        return;
    }
    let keep: BTreeSet<String> = keep.iter().map(layout::state_name).collect();
    let keys = env.kv.keys().unwrap_or_default();
    for shard in shards {
        let name = layout::state_name(shard);
        if keep.contains(&name) {
            continue;
        }
        let prefix = format!("v1/{name}/");
        let backfill_prefix = format!("v1/{}/", backfill::state_name(&name));
        for key in keys
            .iter()
            .filter(|k| k.starts_with(&prefix) || k.starts_with(&backfill_prefix))
        {
            let _ = env.kv.delete(key);
        }
        let _ = env.kv.delete(&StreamStatus::key(&name));
        let _ = env.kv.delete(&backfill::Status::key(&name));
    }
}

/// `events` is read in the deployment's shard layout only.
fn check_layout(env: &Env, streams: &[String], shard: &Shard) -> Result<(), RunError> {
    if !streams.iter().any(|s| s == layout::SHARDED_STREAM) {
        return Ok(());
    }
    layout::check(env.kv, shard).map_err(|e| match e {
        LayoutError::Refused(m) => RunError::Layout(m),
        LayoutError::Failed(m) => RunError::State(m),
    })
}

fn chosen_streams(config: &Config, options: &RunOptions) -> Result<Vec<String>, RunError> {
    match &options.streams {
        None => Ok(config.streams.clone()),
        Some(wanted) => {
            if let Some(other) = wanted.iter().find(|s| !config.streams.contains(s)) {
                return Err(RunError::Options(format!(
                    "stream {other} is not among the configured streams ({})",
                    config.streams.join(", ")
                )));
            }
            Ok(wanted.clone())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn collect(
    env: &Env,
    config: &Config,
    gcs: &GcsClient,
    leases: &[Lease],
    streams: &[String],
    shard: Shard,
    trigger: Trigger,
    started: f64,
    runs: u64,
) -> Result<RunSummary, RunError> {
    let budget = config.timing.time_budget.as_secs_f64();
    let deadline = started + budget;
    let region = region::region_url(env, &config.sentry, deadline - write_reserve(budget))
        .map_err(RunError::Sentry)?;
    let sentry = SentryClient::new(
        *env,
        &config.sentry,
        region.clone(),
        deadline - write_reserve(budget),
    );
    // The webhook inbox first: it needs no Sentry request, and frees KV keys for the intake.
    let webhooks = leases
        .iter()
        .find(|l| l.shard == Shard::WHOLE)
        .map(|lease| {
            let until = started + config.timing.time_budget.as_secs_f64() / 3.0;
            Box::new(crate::webhook::drain::drain(env, config, gcs, lease, until))
        })
        .filter(|d| config.webhook.secret.is_some() || d.left > 0 || !d.objects.is_empty());
    // Which streams this run reads, and as which shard (org-wide streams are read whole by
    // shard 0 only).
    let mut summaries: Vec<StreamSummary> = Vec::new();
    let mut work: Vec<(usize, &'static StreamDef, Shard)> = Vec::new();
    for name in streams {
        // Config::load admits only defined streams.
        let Some(def) = streams::by_name(name) else {
            continue;
        };
        let read_as = if def.org_wide { Shard::WHOLE } else { shard };
        if def.org_wide && shard.index != 0 {
            summaries.push(StreamSummary {
                stream: def.name,
                shard: shard.to_string(),
                up_to_date: true,
                warnings: vec![format!(
                    "{} is read for the whole org by shard 0/{}; this shard skips it",
                    def.name, shard.count
                )],
                ..StreamSummary::default()
            });
            continue;
        }
        work.push((summaries.len(), def, read_as));
        summaries.push(StreamSummary::default());
    }
    // Each stream gets an equal share of what is left, so a backlog in one never starves the
    // others; time a stream does not use goes to the ones after it. A second pass gives what
    // is still left to the streams that ran out of their share.
    let sentry_deadline = sentry.deadline();
    let mut lost: Option<String> = None;
    for pass in 0..2 {
        let todo: Vec<_> = work
            .iter()
            .filter(|(i, _, _)| pass == 0 || summaries[*i].wants_more_time())
            .copied()
            .collect();
        if pass == 1
            && (todo.is_empty() || sentry_deadline - env.clock.now() < MIN_SECOND_PASS_SECS)
        {
            break;
        }
        for (k, &(i, def, read_as)) in todo.iter().enumerate() {
            if lost.is_some() {
                break;
            }
            let now = env.clock.now();
            let share = (sentry_deadline - now) / (todo.len() - k) as f64;
            sentry.set_deadline(now + share.max(0.0));
            // Acquired above for every shard a stream is read as.
            let Some(lease) = leases.iter().find(|l| l.shard == read_as) else {
                continue;
            };
            let mut s = collect::collect_stream(
                *env,
                config,
                &sentry,
                gcs,
                lease,
                read_as,
                def,
                pass == 1,
                Track::Live,
            );
            s.shard = shard.to_string();
            if let Some(why) = &s.lease_lost {
                lost = Some(why.clone());
            }
            if pass == 0 {
                summaries[i] = s;
            } else {
                summaries[i].absorb(s);
            }
        }
    }
    // A run that lost its lease stops every stream, and leaves their status to the run that
    // took over.
    if let Some(why) = &lost {
        for &(i, def, _) in &work {
            let s = &mut summaries[i];
            if s.stream.is_empty() {
                s.stream = def.name;
                s.shard = shard.to_string();
            }
            if !s.warnings.contains(why) {
                s.warnings.push(why.clone());
            }
        }
    }
    if lost.is_none() {
        for &(i, def, read_as) in &work {
            collect::save_status(*env, def, read_as, &summaries[i]);
        }
    }
    // Live first: a backfill gets only what is left, and only once every live stream is
    // caught up (so live collection is never more than this run behind because of it).
    let live_done = work
        .iter()
        .all(|&(i, _, _)| summaries[i].up_to_date && summaries[i].error.is_none());
    let backfills = if lost.is_none() && live_done {
        let jobs: Vec<_> = work
            .iter()
            .map(|&(_, def, read_as)| (def, read_as))
            .collect();
        run_backfills(
            env,
            config,
            &sentry,
            gcs,
            leases,
            &jobs,
            shard,
            sentry_deadline,
        )
    } else {
        Vec::new()
    };
    let summary = RunSummary {
        trigger: trigger.as_str(),
        shard: shard.to_string(),
        started_at: rfc3339(started as i64),
        finished_at: rfc3339(env.clock.now() as i64),
        org: config.sentry.org.clone(),
        region_url: region.origin().ascii_serialization(),
        time_budget_secs: config.timing.time_budget.as_secs(),
        tokens_minted: gcs.tokens_minted(),
        streams: summaries,
        backfill: backfills,
        webhooks,
        runs,
        busy_ms: 0.0,
        kv_ms: 0.0,
        elapsed_ms: 0.0,
    };
    // A backfill's failure is in its summary and `/status`; it does not fail the run, whose
    // live collection (what Pub/Sub would redeliver it for) went well.
    if summary.streams.iter().any(|s| s.error.is_some()) {
        return Err(RunError::Streams(Box::new(summary)));
    }
    Ok(summary)
}

/// The backfill tracks of `jobs` that have a request (the `backfill_start` variable's, or a
/// `POST /backfill`'s), each with an equal share of the time left before `deadline`.
#[allow(clippy::too_many_arguments)]
fn run_backfills(
    env: &Env,
    config: &Config,
    sentry: &SentryClient,
    gcs: &GcsClient,
    leases: &[Lease],
    jobs: &[(&'static StreamDef, Shard)],
    shard: Shard,
    deadline: f64,
) -> Vec<StreamSummary> {
    let mut todo = Vec::new();
    let mut out = Vec::new();
    for &(def, read_as) in jobs {
        let live_name = format!("{}{}", def.name, read_as.suffix());
        let origin = match CheckpointStore::new(env.kv, &live_name).load_lazy() {
            Ok((cp, _)) => cp.origin,
            Err(_) => continue,
        };
        let now = env.clock.now() as i64;
        let request = match apply_variable(env, config, def, origin, now) {
            Ok(r) => r,
            Err(e) => {
                out.push(StreamSummary {
                    stream: def.name,
                    track: "backfill",
                    shard: shard.to_string(),
                    error: Some(e),
                    error_is_transient: true,
                    ..StreamSummary::default()
                });
                continue;
            }
        };
        let (Some(request), Some(seam)) = (request, origin) else {
            continue;
        };
        if request.cancelled_at.is_some() {
            // A variable that cannot be honoured says so in every run it is set.
            if let (Some(why), Some(_)) = (&request.refused, &config.backfill_start) {
                out.push(StreamSummary {
                    stream: def.name,
                    track: "backfill",
                    shard: shard.to_string(),
                    up_to_date: true,
                    warnings: vec![format!("{}: {why}", request.by)],
                    ..StreamSummary::default()
                });
            }
            // A window it was inside is finished (its ids would otherwise stay, and a
            // migration waits for it); nothing further back is read.
            if let Some(low) = unfinished_window(env, &live_name) {
                let mut finishing = request.clone();
                finishing.start = low;
                finishing.estimate.get_or_insert_with(|| {
                    backfill::Estimate::unknown("cancelled: finishing the window it was inside")
                });
                todo.push((def, read_as, finishing, seam));
            }
            continue;
        }
        todo.push((def, read_as, request, seam));
    }
    // A backfill leaves a third of every rate-limit window to the next run's live collection
    // (a cron a minute apart, a Pub/Sub redelivery, another shard on the same token).
    sentry.set_rate_limit_reserve(1.0 / 3.0);
    for (k, (def, read_as, mut request, seam)) in todo.iter().cloned().enumerate() {
        let now = env.clock.now();
        let share = (deadline - now) / (todo.len() - k) as f64;
        if share < MIN_SECOND_PASS_SECS {
            break;
        }
        sentry.set_deadline(now + share);
        if request.estimate.is_none() {
            // Counted once, best effort: a count that fails is not asked again every run.
            let range = Window {
                start: request.start,
                end: seam,
            };
            // (A count that ran out of time or failed for now is asked again next run.)
            request.estimate = match estimate(sentry, config, def, range) {
                Ok(e) => Some(e),
                Err(e) if e.is_transient() || matches!(e, SentryError::OutOfTime) => None,
                Err(e) => Some(backfill::Estimate::unknown(&format!(
                    "Sentry's count failed ({e}): no estimate"
                ))),
            };
            // Unless the operator changed or cancelled it meanwhile.
            let stored = backfill::load_request(env.kv, def.name).ok().flatten();
            let unchanged = stored.is_some_and(|r| {
                r.requested_at == request.requested_at && r.cancelled_at.is_none()
            });
            if unchanged && request.estimate.is_some() {
                let _ = backfill::save_request(env.kv, def.name, &request);
            }
        }
        let Some(lease) = leases.iter().find(|l| l.shard == read_as) else {
            continue;
        };
        let start = backfill::readable_from(def, request.start, env.clock.now() as i64);
        let track = Track::Backfill { start, seam };
        let mut s =
            collect::collect_stream(*env, config, sentry, gcs, lease, read_as, def, false, track);
        if let (Some(why), Some(_)) = (&request.refused, &config.backfill_start) {
            s.warnings.push(why.clone());
        }
        if start > request.start {
            s.warnings.push(format!(
                "{}: what lies before {} expired in Sentry before the backfill reached it",
                def.name,
                rfc3339(start)
            ));
        }
        s.shard = shard.to_string();
        let lost = s.lease_lost.is_some();
        collect::save_backfill_status(*env, def, read_as, &s, &request);
        out.push(s);
        if lost {
            break;
        }
    }
    out
}

/// How far back a backfill track has read, if it is inside a window (a window in progress,
/// a pending object, or the rest of a window cut short).
fn unfinished_window(env: &Env, live_name: &str) -> Option<i64> {
    let (back, _) = CheckpointStore::new(env.kv, &backfill::state_name(live_name))
        .load_lazy()
        .ok()?;
    let pos = back.backfill?;
    let inside = back.in_progress.is_some() || back.pending.is_some() || pos.gap.is_some();
    inside.then_some(pos.low)
}

/// The stream's backfill request, after applying `backfill_start` if its value changed since
/// it was last applied (a request it cannot honour is recorded, cancelled, with the reason).
fn apply_variable(
    env: &Env,
    config: &Config,
    def: &'static StreamDef,
    origin: Option<i64>,
    now: i64,
) -> Result<Option<backfill::Request>, String> {
    let current = backfill::load_request(env.kv, def.name)?;
    let Some(value) = &config.backfill_start else {
        return Ok(current);
    };
    if current.as_ref().and_then(|r| r.variable.as_ref()) == Some(value) {
        return Ok(current);
    }
    // Not before the live track began: the variable then waits for the first window.
    if origin.is_none() {
        return Ok(current);
    }
    let start = backfill::parse_start(value, now).map_err(|e| format!("backfill_start {e}"))?;
    // Judged for every shard at once (the request is the stream's): the latest origin, the
    // shard that has read least far back.
    let (origin, covered) = backfill_positions(env, def).map_err(|e| e.to_string())?;
    if origin.is_none() {
        // A shard has not begun: judged once every shard has.
        return Ok(current);
    }
    let refused = backfill::refusal(def, start, now, origin, covered.as_ref());
    if let Some(why) = &refused {
        eprintln!("warning: backfill_start={value}: {why}");
        // A refused value never replaces a backfill under way (one asked for over HTTP).
        if let Some(mut active) = current.filter(|r| r.cancelled_at.is_none()) {
            active.variable = Some(value.clone());
            active.refused = Some(format!("backfill_start={value}: {why}"));
            backfill::save_request(env.kv, def.name, &active)?;
            return Ok(Some(active));
        }
    }
    let request = backfill::Request {
        start,
        requested_at: now,
        by: format!("backfill_start={value}"),
        variable: Some(value.clone()),
        cancelled_at: refused.as_ref().map(|_| now),
        refused: refused.clone(),
        estimate: None,
    };
    backfill::save_request(env.kv, def.name, &request)?;
    Ok(Some(request))
}

/// How many rows and requests `range` of `def` needs, from Sentry's counts (Discover for
/// `events`, the dataset's `count()` for Explore streams); issues and audit logs have none.
pub fn estimate(
    sentry: &SentryClient,
    config: &Config,
    def: &'static StreamDef,
    range: Window,
) -> Result<backfill::Estimate, SentryError> {
    Ok(match def.kind {
        Kind::Events => match sentry.active_projects(range, &[])? {
            Some(projects) => {
                let rows = projects.iter().fold(0u64, |a, p| a.saturating_add(p.count));
                // `full=true` pages hold 10 events; a project is asked once a window at least.
                let per_page = if config.sentry.full_events { 10 } else { 100 };
                let windows = ((range.end - range.start).max(1) as u64)
                    .div_ceil(config.timing.max_window.as_secs().max(60));
                backfill::Estimate::from_counts(
                    def,
                    rows,
                    per_page,
                    projects.len() as u64 * windows,
                )
            }
            None => backfill::Estimate::unknown(
                "this org cannot count several projects at once: no estimate",
            ),
        },
        Kind::Explore(d) => match sentry.dataset_count(d.name, range)? {
            Some(rows) => backfill::Estimate::from_counts(def, rows, 100, 0),
            None => backfill::Estimate::unknown("Sentry's count came back partial: no estimate"),
        },
        Kind::Issues | Kind::AuditLogs => backfill::Estimate::unknown(&format!(
            "Sentry offers no count for {}: pages of 100 at about one request a second",
            def.name
        )),
    })
}

/// What an operator asks of a stream's backfill (`POST /backfill`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillAsk {
    /// Read the stream's history from `start` (a date, a time, or a duration back from now).
    Start {
        stream: String,
        start: String,
    },
    Cancel {
        stream: String,
    },
}

/// Starts, changes or cancels a stream's backfill. A start is checked against Sentry's
/// retention, the live track's origin and what the backfill already read (refused as
/// [`RunError::Busy`] with the reason), then counted in Sentry for the estimate the answer
/// states. Only the request record is written: the next runs read.
pub fn request_backfill(
    env: &Env,
    config: &Config,
    ask: &BackfillAsk,
) -> Result<serde_json::Value, RunError> {
    let (BackfillAsk::Start { stream, .. } | BackfillAsk::Cancel { stream }) = ask;
    let def = streams::by_name(stream)
        .filter(|_| config.streams.contains(stream))
        .ok_or_else(|| {
            RunError::Options(format!(
                "{stream} is not collected here (streams = {}): add it to streams first",
                config.streams.join(",")
            ))
        })?;
    let now = env.clock.now() as i64;
    let current = backfill::load_request(env.kv, def.name).map_err(RunError::State)?;
    let text = match ask {
        BackfillAsk::Cancel { .. } => {
            let Some(mut request) = current.filter(|r| r.cancelled_at.is_none()) else {
                return Err(RunError::Busy(format!(
                    "{stream} has no backfill to cancel"
                )));
            };
            request.cancelled_at = Some(now);
            backfill::save_request(env.kv, def.name, &request).map_err(RunError::State)?;
            return Ok(serde_json::json!({
                "stream": def.name,
                "cancelled": true,
                "request": request,
                "note": "what the backfill read stays delivered; a later request goes on from where it stopped",
            }));
        }
        BackfillAsk::Start { start, .. } => start,
    };
    let start =
        backfill::parse_start(text, now).map_err(|e| RunError::Options(format!("start {e}")))?;
    let (origin, covered) = backfill_positions(env, def)?;
    if let Some(why) = backfill::refusal(def, start, now, origin, covered.as_ref()) {
        return Err(RunError::Busy(why));
    }
    let seam = origin.unwrap_or(now);
    let from = covered.map_or(seam, |c| c.low).max(start);
    let budget = config.timing.time_budget.as_secs_f64();
    let deadline = env.clock.now() + budget;
    let region = region::region_url(env, &config.sentry, deadline).map_err(RunError::Sentry)?;
    let sentry = SentryClient::new(*env, &config.sentry, region, deadline);
    // Best effort: a count Sentry cannot answer (a query timeout over a long range) does not
    // refuse the backfill; the answer says so.
    let estimate =
        estimate(&sentry, config, def, Window { start, end: from }).unwrap_or_else(|e| {
            backfill::Estimate::unknown(&format!("Sentry's count failed ({e}): no estimate"))
        });
    let request = backfill::Request {
        start,
        requested_at: now,
        by: "POST /backfill".to_string(),
        // The variable acts again only when its value changes: this request stands till then.
        variable: current
            .and_then(|c| c.variable)
            .or_else(|| config.backfill_start.clone()),
        cancelled_at: None,
        refused: None,
        estimate: Some(estimate.clone()),
    };
    backfill::save_request(env.kv, def.name, &request).map_err(RunError::State)?;
    Ok(serde_json::json!({
        "stream": def.name,
        "start": rfc3339(start),
        "seam": rfc3339(seam),
        "to_read": { "start": rfc3339(start), "end": rfc3339(from) },
        "estimate": estimate,
        "note": "the next runs read it with what live collection leaves of each run; GET /status shows how far it is",
    }))
}

/// Where the stream's live track began (the latest of its shards' origins) and how far back
/// its backfill has read (the shard that has read least); `None` where any shard has not.
fn backfill_positions(
    env: &Env,
    def: &StreamDef,
) -> Result<(Option<i64>, Option<crate::checkpoint::BackfillPos>), RunError> {
    let shards = if def.org_wide {
        vec![Shard::WHOLE]
    } else {
        let found = layout::shards_in_kv(env.kv).map_err(RunError::State)?;
        if found.is_empty() {
            vec![Shard::WHOLE]
        } else {
            found
        }
    };
    let mut origins = Vec::new();
    let mut covered = Vec::new();
    for shard in &shards {
        let live_name = format!("{}{}", def.name, shard.suffix());
        let (live, _) = CheckpointStore::new(env.kv, &live_name)
            .load_lazy()
            .map_err(RunError::State)?;
        let (back, _) = CheckpointStore::new(env.kv, &backfill::state_name(&live_name))
            .load_lazy()
            .map_err(RunError::State)?;
        origins.push(live.origin);
        covered.push(back.backfill);
    }
    // The latest shard's: a start before it is not yet read for that shard's projects.
    let origin = origins
        .iter()
        .copied()
        .collect::<Option<Vec<i64>>>()
        .and_then(|o| o.into_iter().max());
    let covered = covered
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .and_then(|c| c.into_iter().max_by_key(|p| (p.gap.is_some(), p.low)));
    Ok((origin, covered))
}
