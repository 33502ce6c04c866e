//! One collection run: configuration, the shard's lease, region, the streams, and the record
//! `/status` reads.

use std::fmt;

use serde::Serialize;

use crate::collect::{self, StreamSummary};
use crate::config::{Config, ConfigError};
use crate::gcs::{GcsClient, GcsError};
use crate::lease::{self, Lease};
use crate::ports::{Env, WaitMeter};
use crate::sentry::client::SentryClient;
use crate::sentry::{region, SentryError};
use crate::shard::Shard;
use crate::state::{self, keys, LastRun};
use crate::streams::{self, StreamDef};
use crate::time::rfc3339;

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
    /// The lease could not be read or written.
    State(String),
    /// The run went ahead but a stream failed; the summary says which and why.
    Streams(Box<RunSummary>),
}

impl RunError {
    /// Whether trying again later, unchanged, may succeed (Pub/Sub should redeliver).
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Config(_) | RunError::Options(_) => false,
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

/// The run's report, printed to the log and returned to HTTP callers.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub trigger: &'static str,
    pub shard: String,
    pub started_at: String,
    pub finished_at: String,
    pub org: String,
    pub region_url: String,
    pub time_budget_secs: u64,
    /// Access tokens minted at the token endpoint during the run (exchange mode).
    pub tokens_minted: u32,
    pub streams: Vec<StreamSummary>,
    /// Runs recorded in this state store so far, this one included.
    pub runs: u64,
    /// Milliseconds the run spent computing rather than waiting on HTTP or rate limits.
    pub busy_ms: f64,
    /// The run's wall time in milliseconds, as the component measured it.
    pub elapsed_ms: f64,
}

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
    let meter = WaitMeter::new(env.http, env.clock);
    let env = &Env {
        http: &meter,
        clock: &meter,
        ..*env
    };
    let started = env.clock.now();
    let streams = chosen_streams(config, options)?;
    let budget = config.timing.time_budget.as_secs();
    let lease = lease::acquire(env, &options.shard, budget).map_err(RunError::State)?;
    if let Lease::Held { until } = lease {
        return Ok(RunOutcome::Skipped(Skipped {
            skipped: true,
            shard: options.shard.to_string(),
            reason: "another run of this shard holds the lease".into(),
            lease_expires_at: rfc3339(until),
        }));
    }
    let previous: LastRun = state::load(env.kv, keys::LAST_RUN)
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; starting the run counter again");
            None
        })
        .unwrap_or_default();
    let runs = previous.runs + 1;
    let mut result = collect(env, config, &streams, options.shard, trigger, started, runs);
    // What the run spent computing (parsing, de-duplicating, encoding, hashing, KV calls):
    // its wall time less the time it waited on the network and on rate limits.
    let elapsed = env.clock.now() - started;
    let busy_ms = ((elapsed - meter.waited_secs()).max(0.0) * 1000.0).round();
    let elapsed_ms = (elapsed * 1000.0).round();
    match &mut result {
        Ok(s) => (s.busy_ms, s.elapsed_ms) = (busy_ms, elapsed_ms),
        Err(RunError::Streams(s)) => (s.busy_ms, s.elapsed_ms) = (busy_ms, elapsed_ms),
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
    lease::release(env, &lease);
    result.map(RunOutcome::Ran)
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

fn collect(
    env: &Env,
    config: &Config,
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
    let gcs = GcsClient::new(*env, &config.gcs, deadline).map_err(RunError::Storage)?;
    gcs.check_credentials().map_err(RunError::Storage)?;
    let sentry = SentryClient::new(
        *env,
        &config.sentry,
        region.clone(),
        deadline - write_reserve(budget),
    );
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
            let now = env.clock.now();
            let share = (sentry_deadline - now) / (todo.len() - k) as f64;
            sentry.set_deadline(now + share.max(0.0));
            let mut s = collect::collect_stream(*env, config, &sentry, &gcs, read_as, def);
            s.shard = shard.to_string();
            if pass == 0 {
                summaries[i] = s;
            } else {
                summaries[i].absorb(s);
            }
        }
    }
    for &(i, def, read_as) in &work {
        collect::save_status(*env, def, read_as, &summaries[i]);
    }
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
        runs,
        busy_ms: 0.0,
        elapsed_ms: 0.0,
    };
    if summary.streams.iter().any(|s| s.error.is_some()) {
        return Err(RunError::Streams(Box::new(summary)));
    }
    Ok(summary)
}
