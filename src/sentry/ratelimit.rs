//! Pacing from Sentry's rate-limit headers (`getsentry/sentry:src/sentry/middleware/ratelimit.py`):
//! `X-Sentry-Rate-Limit-Limit`, `-Remaining`, `-Reset` (UTC epoch seconds when the window
//! restarts). Limits are per caller and per endpoint, so each endpoint class has its own bucket.
//! When a bucket has no requests left we wait for its reset instead of spending a request on a
//! 429. A 429 carries no `Retry-After` from Sentry (a proxy may add one, which wins).
//! Requests are sent one at a time, which keeps within every concurrency limit (1 for project
//! events).

use std::collections::BTreeMap;

use crate::ports::InboundResponse;
use crate::retry;

/// Sentry's reset is whole seconds on the server's clock; waiting a little past it keeps a
/// small clock difference from turning into a 429.
const RESET_MARGIN_SECS: f64 = 1.0;

/// Sentry's windows are 60 s; a reset further away than two windows is not believed.
const MAX_RESET_WAIT_SECS: f64 = 120.0;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Bucket {
    /// No request to this endpoint before this time.
    not_before: f64,
}

/// Rate-limit state of one run, keyed by endpoint class.
#[derive(Debug, Default)]
pub struct Pacer {
    buckets: BTreeMap<&'static str, Bucket>,
    /// The share of each window's requests left alone (for the next run's live collection):
    /// a bucket down to it counts as exhausted. 0 for live collection.
    reserve: f64,
}

fn header_number(resp: &InboundResponse, name: &str) -> Option<f64> {
    resp.header(name)?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

impl Pacer {
    /// Leaves `share` of every window's requests to whoever comes next (a backfill leaves a
    /// third to the next run's live collection).
    pub fn set_reserve(&mut self, share: f64) {
        self.reserve = share.clamp(0.0, 0.9);
    }

    /// When the next request to `endpoint` may be sent.
    pub fn ready_at(&self, endpoint: &str) -> f64 {
        self.buckets.get(endpoint).map_or(0.0, |b| b.not_before)
    }

    /// Learns from a response: an exhausted bucket or a 429 delays the endpoint's next request.
    pub fn observe(
        &mut self,
        endpoint: &'static str,
        resp: &InboundResponse,
        now: f64,
        jitter: f64,
    ) {
        let remaining = header_number(resp, "x-sentry-rate-limit-remaining");
        let reset = header_number(resp, "x-sentry-rate-limit-reset");
        let kept = header_number(resp, "x-sentry-rate-limit-limit")
            .map_or(0.0, |limit| (limit * self.reserve).floor());
        let bucket = self.buckets.entry(endpoint).or_default();
        if resp.status == 429 {
            let until = match (retry::retry_after(resp.header("retry-after")), reset) {
                (Some(secs), _) => now + secs,
                (None, Some(reset)) if reset > now => {
                    (reset + RESET_MARGIN_SECS).min(now + MAX_RESET_WAIT_SECS)
                }
                _ => now + retry::backoff(0, jitter),
            };
            bucket.not_before = bucket.not_before.max(until);
        } else if remaining.is_some_and(|r| r <= kept) {
            if let Some(reset) = reset {
                // Cap at a window's worth, so a bogus header cannot stall a run for hours.
                bucket.not_before = bucket
                    .not_before
                    .max((reset + RESET_MARGIN_SECS).min(now + MAX_RESET_WAIT_SECS));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_leaves_part_of_each_window_to_the_next_run() {
        let headers = |remaining: &'static str| {
            resp(
                200,
                &[
                    ("x-sentry-rate-limit-limit", "60"),
                    ("x-sentry-rate-limit-remaining", remaining),
                    ("x-sentry-rate-limit-reset", "1060"),
                ],
            )
        };
        let mut live = Pacer::default();
        live.observe("events", &headers("20"), 1000.0, 0.5);
        assert_eq!(live.ready_at("events"), 0.0);
        let mut backfill = Pacer::default();
        backfill.set_reserve(1.0 / 3.0);
        backfill.observe("events", &headers("21"), 1000.0, 0.5);
        assert_eq!(backfill.ready_at("events"), 0.0);
        backfill.observe("events", &headers("20"), 1000.0, 0.5);
        assert_eq!(backfill.ready_at("events"), 1061.0);
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> InboundResponse {
        InboundResponse {
            status,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn an_exhausted_bucket_waits_for_its_reset_and_only_that_endpoint() {
        let mut p = Pacer::default();
        p.observe(
            "events",
            &resp(
                200,
                &[
                    ("x-sentry-rate-limit-remaining", "3"),
                    ("x-sentry-rate-limit-reset", "1060"),
                ],
            ),
            1000.0,
            0.5,
        );
        assert_eq!(p.ready_at("events"), 0.0);
        p.observe(
            "events",
            &resp(
                200,
                &[
                    ("x-sentry-rate-limit-remaining", "0"),
                    ("x-sentry-rate-limit-reset", "1060"),
                ],
            ),
            1001.0,
            0.5,
        );
        assert_eq!(p.ready_at("events"), 1061.0);
        assert_eq!(p.ready_at("discover"), 0.0);
    }

    #[test]
    fn a_429_without_retry_after_waits_until_reset() {
        let mut p = Pacer::default();
        p.observe(
            "events",
            &resp(
                429,
                &[
                    ("x-sentry-rate-limit-remaining", "0"),
                    ("x-sentry-rate-limit-reset", "1030"),
                ],
            ),
            1000.0,
            0.5,
        );
        assert_eq!(p.ready_at("events"), 1031.0);
    }

    #[test]
    fn retry_after_wins_when_a_proxy_sends_one() {
        let mut p = Pacer::default();
        p.observe(
            "events",
            &resp(
                429,
                &[("retry-after", "5"), ("x-sentry-rate-limit-reset", "1030")],
            ),
            1000.0,
            0.5,
        );
        assert_eq!(p.ready_at("events"), 1005.0);
    }

    #[test]
    fn a_bare_429_backs_off_and_self_hosted_without_headers_never_waits() {
        let mut p = Pacer::default();
        p.observe("events", &resp(429, &[]), 1000.0, 0.0);
        assert_eq!(p.ready_at("events"), 1000.5);
        let mut p = Pacer::default();
        p.observe("events", &resp(200, &[]), 1000.0, 0.0);
        assert_eq!(p.ready_at("events"), 0.0);
    }

    #[test]
    fn absurd_resets_are_capped() {
        let mut p = Pacer::default();
        p.observe(
            "events",
            &resp(
                200,
                &[
                    ("x-sentry-rate-limit-remaining", "0"),
                    ("x-sentry-rate-limit-reset", "99999999999"),
                ],
            ),
            1000.0,
            0.5,
        );
        assert_eq!(p.ready_at("events"), 1120.0);
    }
}
