//! What a Google call (Cloud Storage, the token endpoint) fails with, whether retrying later
//! may help, and how it is retried.

use std::fmt;

use crate::ports::Clock;
use crate::retry::{Attempt, Deadline, Retry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcsError {
    /// Retrying will not help: credentials, permissions, a conflicting object.
    Fatal(String),
    /// Failed after retries inside the budget; the next run tries again.
    Transient(String),
}

impl fmt::Display for GcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcsError::Fatal(m) | GcsError::Transient(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GcsError {}

/// Runs `attempt` in the crate's retry loop as every Google call is: backoff jittered by the
/// clock's fraction of a second, retries allowed until the deadline itself, nothing counted
/// per retry. A failure left after the last attempt (or with no time to retry) is transient.
pub fn with_retries<T>(
    clock: &dyn Clock,
    deadline: Deadline,
    attempt: impl FnMut() -> Attempt<T, GcsError>,
) -> Result<T, GcsError> {
    let jitter = || clock.now().fract();
    let policy = Retry {
        clock,
        deadline,
        min_request_secs: 0.0,
        jitter: &jitter,
        on_retry: &|_| {},
    };
    policy.run(attempt, |failure, attempts, _| {
        GcsError::Transient(format!("{} ({attempts} attempts)", failure.message))
    })
}
