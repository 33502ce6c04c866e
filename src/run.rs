//! One collection run: configuration, region, and the record `/status` reads.

use std::fmt;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::ports::Env;
use crate::sentry::{region, SentryError};
use crate::state::{self, keys, LastRun};
use crate::time::rfc3339;

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

#[derive(Debug)]
pub enum RunError {
    Config(ConfigError),
    Sentry(SentryError),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => e.fmt(f),
            RunError::Sentry(e) => write!(f, "Sentry: {e}"),
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
    pub streams: Vec<String>,
    /// Runs recorded in this state store so far, this one included.
    pub runs: u64,
}

/// Runs once. Whatever the outcome, the last-run record in KV says what happened.
pub fn run_once(env: &Env, trigger: Trigger) -> Result<RunSummary, RunError> {
    let started = env.clock.now() as i64;
    let previous: LastRun = state::load(env.kv, keys::LAST_RUN)
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; starting the run counter again");
            None
        })
        .unwrap_or_default();
    let result = collect(env);
    let record = LastRun {
        runs: previous.runs + 1,
        trigger: trigger.as_str().to_string(),
        started_at: started,
        finished_at: env.clock.now() as i64,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
    };
    if let Err(e) = state::save(env.kv, keys::LAST_RUN, &record) {
        eprintln!("warning: could not record the run: {e}");
    }
    let (config, region_url) = result?;
    Ok(RunSummary {
        trigger: trigger.as_str(),
        started_at: rfc3339(started),
        finished_at: rfc3339(record.finished_at),
        org: config.sentry.org.clone(),
        region_url: region_url.origin().ascii_serialization(),
        streams: config.streams.clone(),
        runs: record.runs,
    })
}

fn collect(env: &Env) -> Result<(Config, url::Url), RunError> {
    let config = Config::load(env.vars).map_err(RunError::Config)?;
    let region = region::region_url(env, &config.sentry).map_err(RunError::Sentry)?;
    Ok((config, region))
}
