//! Timestamps, done with chrono: an implementation independent of the component's own.

use chrono::{DateTime, NaiveDateTime, SecondsFormat};

pub fn rfc3339(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .expect("timestamp in range")
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// ISO 8601 as Sentry accepts it: with an offset, or naive meaning UTC.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp())
}
