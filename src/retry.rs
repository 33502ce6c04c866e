//! The one retry policy: which failures are worth another attempt, and how long to wait.
//! Google's documented strategy for Cloud Storage (truncated exponential backoff with jitter,
//! ~1 s initial, doubling, capped) serves Sentry too; every wait stays inside the run's budget.

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 6;
const INITIAL_SECS: f64 = 1.0;
const CAP_SECS: f64 = 32.0;

/// What to do with a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// 408, 429, 5xx: try again after a wait.
    Retry,
    /// Any other status: retrying cannot help.
    Fail,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

/// The wait before attempt `attempt + 1` (attempt counts from 0). `jitter` in [0, 1) spreads
/// waits between half and the full backoff, so many clients do not retry in step.
pub fn backoff(attempt: u32, jitter: f64) -> f64 {
    let full = (INITIAL_SECS * 2f64.powi(attempt.min(16) as i32)).min(CAP_SECS);
    full * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Seconds from a `Retry-After` header: delta-seconds only (HTTP dates are not worth trusting
/// across clock skew); capped at an hour.
pub fn retry_after(value: Option<&str>) -> Option<f64> {
    let secs: f64 = value?.trim().parse::<u32>().ok()?.into();
    Some(secs.min(3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_google_documents() {
        for s in [200, 201, 204] {
            assert_eq!(verdict(s), Verdict::Success);
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(verdict(s), Verdict::Retry, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412] {
            assert_eq!(verdict(s), Verdict::Fail, "{s}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(0, 0.999_999).round(), 1.0);
        assert_eq!(backoff(0, 0.0), 0.5);
        assert_eq!(backoff(3, 0.999_999).round(), 8.0);
        assert_eq!(backoff(10, 0.999_999).round(), 32.0);
        assert_eq!(backoff(u32::MAX, 2.0), 32.0);
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(retry_after(Some("7")), Some(7.0));
        assert_eq!(retry_after(Some(" 120 ")), Some(120.0));
        assert_eq!(retry_after(Some("999999")), Some(3600.0));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(Some("-1")), None);
        assert_eq!(retry_after(None), None);
    }
}
