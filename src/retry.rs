//! The one retry loop and its policy: which failures are worth another attempt, how long to
//! wait, and the run's deadline no wait may pass. Google's documented strategy for Cloud
//! Storage (truncated exponential backoff with jitter, ~1 s initial, doubling, capped) serves
//! Sentry too; each service brings its own classifier (what an attempt's answer means).

use crate::ports::Clock;

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

/// The run's deadline (Unix seconds): no request starts, and no wait ends, after it.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Deadline(pub f64);

impl Deadline {
    /// Unix seconds.
    pub fn at(self) -> f64 {
        self.0
    }
}

/// What one attempt came to, as the service's classifier reads its answer.
pub enum Attempt<T, E> {
    /// Finished: the answer, or a failure another attempt cannot help.
    Done(Result<T, E>),
    /// Failed in a way another attempt may help: why, for the report.
    Failed(Failure),
    /// Try again at once without counting an attempt (a credential was just renewed). Once
    /// per run of the loop: a second renewal counts as a failed attempt.
    Renewed,
}

/// Why an attempt failed, and the earliest the next one may start.
pub struct Failure {
    pub message: String,
    /// Unix seconds: the service said when it will take requests again (a rate limit's
    /// reset); the wait is the later of this and the backoff.
    pub not_before: f64,
}

impl Failure {
    pub fn new(message: String) -> Failure {
        Failure {
            message,
            not_before: 0.0,
        }
    }
}

/// Why the loop stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// [`MAX_ATTEMPTS`] attempts failed.
    Attempts,
    /// The next attempt could not start before the deadline.
    Time,
}

/// How one service retries: its deadline, what a retry needs left to start, and where its
/// waits are counted.
pub struct Retry<'a> {
    pub clock: &'a dyn Clock,
    pub deadline: Deadline,
    /// A retry starts only if this much time is left after its wait.
    pub min_request_secs: f64,
    /// In [0, 1): spreads waits so that many clients do not retry in step.
    pub jitter: &'a dyn Fn() -> f64,
    /// Told of each wait before a retry (seconds), for the service's counters.
    pub on_retry: &'a dyn Fn(f64),
}

impl Retry<'_> {
    /// Runs `attempt` until it is done, retrying failures after [`backoff`] (or later, when a
    /// failure says so) while attempts and the deadline allow; `give_up` turns the last
    /// failure into the service's error.
    pub fn run<T, E>(
        &self,
        mut attempt: impl FnMut() -> Attempt<T, E>,
        give_up: impl FnOnce(Failure, u32, GaveUp) -> E,
    ) -> Result<T, E> {
        let mut attempts = 0;
        let mut renewed = false;
        loop {
            let failure = match attempt() {
                Attempt::Done(result) => return result,
                Attempt::Renewed if !renewed => {
                    renewed = true;
                    continue;
                }
                Attempt::Renewed => Failure::new("the credential was refused again".into()),
                Attempt::Failed(failure) => failure,
            };
            attempts += 1;
            if attempts >= MAX_ATTEMPTS {
                return Err(give_up(failure, attempts, GaveUp::Attempts));
            }
            let now = self.clock.now();
            let until = (now + backoff(attempts - 1, (self.jitter)())).max(failure.not_before);
            if until + self.min_request_secs >= self.deadline.at() {
                return Err(give_up(failure, attempts, GaveUp::Time));
            }
            (self.on_retry)(until - now);
            self.clock.sleep(until - now);
        }
    }
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

    /// A clock that only moves when slept on.
    struct Stopped(std::cell::Cell<f64>);

    impl Clock for Stopped {
        fn now(&self) -> f64 {
            self.0.get()
        }
        fn sleep(&self, secs: f64) {
            self.0.set(self.0.get() + secs);
        }
    }

    fn retry<'a>(clock: &'a Stopped, deadline: f64, waits: &'a dyn Fn(f64)) -> Retry<'a> {
        Retry {
            clock,
            deadline: Deadline(deadline),
            min_request_secs: 1.0,
            jitter: &|| 0.999_999,
            on_retry: waits,
        }
    }

    #[test]
    fn the_loop_retries_failures_with_backoff_until_one_succeeds() {
        let clock = Stopped(std::cell::Cell::new(0.0));
        let waited = std::cell::RefCell::new(Vec::new());
        let on_retry = |w: f64| waited.borrow_mut().push(w.round());
        let mut calls = 0;
        let out: Result<u32, String> = retry(&clock, 100.0, &on_retry).run(
            || {
                calls += 1;
                if calls < 3 {
                    Attempt::Failed(Failure::new(format!("attempt {calls}")))
                } else {
                    Attempt::Done(Ok(calls))
                }
            },
            |f, n, why| format!("{} {n} {why:?}", f.message),
        );
        assert_eq!(out, Ok(3));
        assert_eq!(*waited.borrow(), [1.0, 2.0]);
    }

    #[test]
    fn the_loop_gives_up_after_max_attempts_or_when_the_wait_would_pass_the_deadline() {
        let clock = Stopped(std::cell::Cell::new(0.0));
        let none = |_: f64| {};
        let fail = || Attempt::<(), String>::Failed(Failure::new("503".into()));
        let out = retry(&clock, 10_000.0, &none)
            .run(fail, |f, n, why| format!("{} {n} {why:?}", f.message));
        assert_eq!(out, Err(format!("503 {MAX_ATTEMPTS} Attempts")));
        // 1 + 2 + 4 s of backoff, then 8 s would leave less than a second before 15 s.
        let clock = Stopped(std::cell::Cell::new(0.0));
        let out =
            retry(&clock, 15.0, &none).run(fail, |f, n, why| format!("{} {n} {why:?}", f.message));
        assert_eq!(out, Err("503 4 Time".to_string()));
        assert!(clock.now() < 15.0);
    }

    #[test]
    fn a_failure_that_names_its_reset_waits_for_it_and_a_renewal_is_not_an_attempt() {
        let clock = Stopped(std::cell::Cell::new(0.0));
        let none = |_: f64| {};
        let mut calls = 0;
        let out: Result<u32, String> = retry(&clock, 1_000.0, &none).run(
            || {
                calls += 1;
                match calls {
                    1 => Attempt::Renewed,
                    2 => Attempt::Failed(Failure {
                        message: "429".into(),
                        not_before: 60.0,
                    }),
                    _ => Attempt::Done(Ok(calls)),
                }
            },
            |f, _, _| f.message,
        );
        assert_eq!(out, Ok(3));
        assert_eq!(clock.now(), 60.0);
    }
}
