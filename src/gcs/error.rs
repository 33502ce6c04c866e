//! What a Cloud Storage call fails with: whether retrying later may help.

use std::fmt;

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
