//! One collection run: configuration, region, the streams, and the record `/status` reads.

use std::fmt;

use serde::Serialize;

use crate::collect::{self, StreamSummary};
use crate::config::{Config, ConfigError};
use crate::gcs::{GcsClient, GcsError};
use crate::ports::Env;
use crate::sentry::client::SentryClient;
use crate::sentry::{region, SentryError};
use crate::state::{self, keys, LastRun};
use crate::time::rfc3339;

/// Time kept back from the budget for writing the last object and the checkpoint: Sentry
/// pages stop this long before the budget ends.
fn write_reserve(budget_secs: f64) -> f64 {
    (budget_secs * 0.2).clamp(1.0, 10.0)
}

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

/// Why a run could not collect at all.
#[derive(Debug)]
pub enum RunError {
    Config(ConfigError),
    Sentry(SentryError),
    Storage(GcsError),
    /// The run went ahead but a stream failed; the summary says which and why.
    Streams(Box<RunSummary>),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => e.fmt(f),
            RunError::Sentry(e) => write!(f, "Sentry: {e}"),
            RunError::Storage(e) => write!(f, "Cloud Storage: {e}"),
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
}

/// Runs once. Whatever the outcome, the last-run record in KV says what happened.
pub fn run_once(env: &Env, trigger: Trigger) -> Result<RunSummary, RunError> {
    let started = env.clock.now();
    let previous: LastRun = state::load(env.kv, keys::LAST_RUN)
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; starting the run counter again");
            None
        })
        .unwrap_or_default();
    let runs = previous.runs + 1;
    let result = collect(env, trigger, started, runs);
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
    result
}

fn collect(env: &Env, trigger: Trigger, started: f64, runs: u64) -> Result<RunSummary, RunError> {
    let config = Config::load(env.vars).map_err(RunError::Config)?;
    let budget = config.timing.time_budget.as_secs_f64();
    let deadline = started + budget;
    let region = region::region_url(env, &config.sentry).map_err(RunError::Sentry)?;
    let gcs = GcsClient::new(*env, &config.gcs, deadline).map_err(RunError::Storage)?;
    gcs.check_credentials().map_err(RunError::Storage)?;
    let sentry = SentryClient::new(
        *env,
        &config.sentry,
        region.clone(),
        deadline - write_reserve(budget),
    );
    let mut streams = Vec::new();
    for stream in &config.streams {
        let summary = match stream.as_str() {
            collect::STREAM => collect::collect_events(*env, &config, &sentry, &gcs),
            // Config::load admits only supported streams.
            other => StreamSummary {
                error: Some(format!("stream {other} is not implemented")),
                ..StreamSummary::default()
            },
        };
        streams.push(summary);
    }
    let summary = RunSummary {
        trigger: trigger.as_str(),
        started_at: rfc3339(started as i64),
        finished_at: rfc3339(env.clock.now() as i64),
        org: config.sentry.org.clone(),
        region_url: region.origin().ascii_serialization(),
        time_budget_secs: config.timing.time_budget.as_secs(),
        tokens_minted: gcs.tokens_minted(),
        streams,
        runs,
    };
    if summary.streams.iter().any(|s| s.error.is_some()) {
        return Err(RunError::Streams(Box::new(summary)));
    }
    Ok(summary)
}
