//! The domain's time range: a half-open window of whole Unix seconds, what a run reads, a
//! checkpoint resumes in, and a Sentry query asks for.

use serde::{Deserialize, Serialize};

/// A half-open window `[start, end)` in whole Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}
