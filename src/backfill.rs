//! Backfill: an operator's request for a stream's history before the live track began, and
//! where the backfill track reads next (windows from the seam backwards, each read forward).
//!
//! The live track never reads before its origin (its first window's start); the backfill
//! track reads `[start, origin)` and nothing else, so no item is delivered by both. The
//! request (what the operator wants) and the track's position (what was read, in the backfill
//! checkpoint, saved with its objects' ids) are separate records: a request may change or be
//! cancelled at any time without touching what was delivered.

use serde::{Deserialize, Serialize};

use crate::checkpoint::BackfillPos;
use crate::ports::KeyValue;
use crate::state;
use crate::streams::{Kind, StreamDef};
pub use crate::time::parse_start;
use crate::time::rfc3339;
use crate::window::Window;

/// How long Sentry keeps a stream's data by default (its plans' retention): a backfill that
/// starts earlier is refused. `None`: kept as long as the org exists (audit logs).
pub fn retention_days(def: &StreamDef) -> Option<i64> {
    match def.kind {
        Kind::Events | Kind::Issues => Some(90),
        Kind::AuditLogs => None,
        Kind::Explore(d) => Some(if d.name == "transactions" { 90 } else { 30 }),
    }
}

/// 2010-01-01: no Sentry org holds anything older.
const EARLIEST: i64 = 1_262_304_000;

/// What an operator asked for one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The earliest time to read (Unix seconds).
    pub start: i64,
    pub requested_at: i64,
    /// Who asked: `POST /backfill` or `backfill_start=...`.
    pub by: String,
    /// The `backfill_start` value last applied: the variable acts again only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<i64>,
    /// Why it was not honoured, if it was not (then it is cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What Sentry counted in the range when it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
}

/// What a backfill needs, counted before it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Rows Sentry counts in the range; `None` where it offers no count.
    pub rows: Option<u64>,
    /// Requests the rows take (plus a project's first page in each window for `events`).
    pub requests: Option<u64>,
    /// The least time those requests take at sentry.io's rate limits.
    pub secs_at_rate_limit: Option<f64>,
    pub note: String,
}

/// Requests a second that sentry.io allows a stream's reads: the project events endpoint 60 a
/// minute, Discover / Explore 50 a second; issues and audit logs are read like events.
pub fn requests_per_sec(def: &StreamDef) -> f64 {
    match def.kind {
        Kind::Explore(_) => 50.0,
        _ => 1.0,
    }
}

impl Estimate {
    /// From Sentry's counts: `rows` in all at `per_page` a page, plus `extra` requests (a
    /// project's first page in each window for `events`).
    pub fn from_counts(def: &StreamDef, rows: u64, per_page: u64, extra: u64) -> Estimate {
        let requests = rows.div_ceil(per_page.max(1)) + extra;
        let secs = requests as f64 / requests_per_sec(def);
        Estimate {
            rows: Some(rows),
            requests: Some(requests),
            secs_at_rate_limit: Some(secs),
            note: format!(
                "{rows} rows, about {requests} requests: {} at sentry.io's rate limits if the backfill had every run to itself; it gets only what live collection leaves",
                human_secs(secs)
            ),
        }
    }

    pub fn unknown(why: &str) -> Estimate {
        Estimate {
            rows: None,
            requests: None,
            secs_at_rate_limit: None,
            note: why.to_string(),
        }
    }
}

/// `90s`, `12 min`, `3.5 h`, `2.1 days`.
pub fn human_secs(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 2.0 * 86400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// The KV key of a stream's request (one for all shards).
pub fn request_key(stream: &str) -> String {
    format!("v1/backfill-request/{stream}")
}

/// The state name of a stream's backfill track (`state_name` is the live one's: the stream
/// and its shard suffix).
pub fn state_name(live_state_name: &str) -> String {
    format!("backfill/{live_state_name}")
}

pub fn load_request(kv: &dyn KeyValue, stream: &str) -> Result<Option<Request>, String> {
    state::load(kv, &request_key(stream))
}

pub fn save_request(kv: &dyn KeyValue, stream: &str, request: &Request) -> Result<(), String> {
    state::save(kv, &request_key(stream), request).map(|_| ())
}

/// Why a request for `[start, ...)` of `def` cannot be honoured now, if it cannot. `covered`
/// is how far back the backfill track has read (`None`: nothing yet), `origin` where the live
/// track began (`None`: it has not begun).
pub fn refusal(
    def: &StreamDef,
    start: i64,
    now: i64,
    origin: Option<i64>,
    covered: Option<&BackfillPos>,
) -> Option<String> {
    if start < EARLIEST {
        return Some(format!(
            "{} starts {}, before Sentry existed; ask for a start from 2010 on",
            def.name,
            rfc3339(start.max(0))
        ));
    }
    if let Some(days) = retention_days(def) {
        let oldest = now - days * 86_400;
        if start < oldest {
            return Some(format!(
                "{} starts {}, before what Sentry keeps ({days} days by default: {}); ask for a start from {} on",
                def.name,
                rfc3339(start),
                rfc3339(oldest),
                rfc3339(oldest + 3600)
            ));
        }
    }
    let Some(origin) = origin else {
        return Some(format!(
            "{}'s live track has not started yet: a backfill reads up to where it starts; run the collector once, then ask again",
            def.name
        ));
    };
    if start >= origin {
        return Some(format!(
            "{} from {} is already covered: live collection has read from {} on",
            def.name,
            rfc3339(start),
            rfc3339(origin)
        ));
    }
    if let Some(pos) = covered {
        if start >= pos.low && pos.gap.is_none() {
            return Some(format!(
                "{} from {} is already covered: the backfill has read from {} to {}",
                def.name,
                rfc3339(start),
                rfc3339(pos.low),
                rfc3339(pos.seam)
            ));
        }
    }
    None
}

/// The longest backfill window of `def`. Audit logs take no time range (every window pages
/// from the newest entry down past its start) and an issue's `lastSeen` is cut to the range
/// asked for (each window would show the issue again): both are read as one window.
pub fn window_secs(def: &StreamDef, max_window: i64) -> i64 {
    match def.kind {
        Kind::AuditLogs | Kind::Issues => i64::MAX / 4,
        Kind::Events | Kind::Explore(_) => max_window,
    }
}

/// Where a backfill down to `start` can read from at `now`: not before what Sentry still keeps
/// (less an hour, so a window is not refused for a range that expired while it was read).
pub fn readable_from(def: &StreamDef, start: i64, now: i64) -> i64 {
    match retention_days(def) {
        Some(days) => start.max(now - days * 86_400 + 3_600),
        None => start,
    }
}

/// What the backfill track reads next, or why it reads nothing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Read(Window),
    /// The range is read (down to the request's start).
    Done,
    /// The seam is too recent: late items may still arrive before it (until this time).
    WaitUntil(i64),
}

/// The next window of a backfill down to `start`: the part of a window cut short, else up to
/// `max_window` below `low`. The first waits until the seam is `settle` seconds in the past
/// (the live track's lag and overlap: items arrive that late, and the live track would not
/// read them before its origin).
pub fn next_window(pos: &BackfillPos, start: i64, max_window: i64, now: i64, settle: i64) -> Next {
    if let Some((a, b)) = pos.gap {
        return Next::Read(Window { start: a, end: b });
    }
    if pos.low <= start {
        return Next::Done;
    }
    if pos.low > now - settle {
        return Next::WaitUntil(pos.low + settle);
    }
    Next::Read(Window {
        start: start.max(pos.low - max_window.max(60)),
        end: pos.low,
    })
}

/// The position after `read`, a window [`next_window`] gave (perhaps ended early: cut to fit
/// in memory), was read.
pub fn after_read(pos: &BackfillPos, read: Window) -> BackfillPos {
    let mut next = *pos;
    match pos.gap {
        Some((_, b)) => next.gap = (read.end < b).then_some((read.end, b)),
        None => {
            next.gap = (read.end < pos.low).then_some((read.end, pos.low));
            next.low = read.start.min(pos.low);
        }
    }
    next
}

/// A backfill track's standing, for `/status`: kept in KV per stream and shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub stream: String,
    pub shard: String,
    pub requested_by: String,
    pub start: String,
    pub seam: String,
    /// Read from here to the seam.
    pub read_back_to: String,
    pub done: bool,
    /// Seconds of the range left to read.
    pub secs_left: i64,
    /// Lines the track has written over all its runs, and in how many runs.
    pub rows: u64,
    pub runs: u64,
    pub estimate: Option<Estimate>,
    /// What is left, at sentry.io's rate limits (the estimate's share of the range left).
    pub secs_left_at_rate_limit: Option<f64>,
    pub waiting: Option<String>,
    pub error: Option<String>,
    pub finished_at: i64,
}

impl Status {
    pub const PREFIX: &'static str = "v1/backfill-status/";

    pub fn key(state_name: &str) -> String {
        format!("{}{state_name}", Self::PREFIX)
    }
}

/// The estimate's part for what is left: rows are taken as spread evenly over the range.
pub fn left_at_rate_limit(
    estimate: Option<&Estimate>,
    range_secs: i64,
    secs_left: i64,
) -> Option<f64> {
    let total = estimate?.secs_at_rate_limit?;
    (range_secs > 0).then(|| total * secs_left.clamp(0, range_secs) as f64 / range_secs as f64)
}

/// The delivered ids a backfill keeps after a window: from the start of the rest of a window
/// cut short (its first second's rows may already be delivered); `None`: none.
pub fn ids_to_keep(pos: &BackfillPos) -> Option<i64> {
    pos.gap.map(|(from, _)| from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::by_name;
    use crate::time::parse_rfc3339;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_790_000_000;

    #[test]
    fn starts_are_dates_times_or_durations_back() {
        assert_eq!(parse_start("90d", NOW), Ok(NOW - 90 * DAY));
        assert_eq!(parse_start("36h", NOW), Ok(NOW - 36 * 3600));
        assert_eq!(
            parse_start("2026-09-01", NOW),
            Ok(parse_rfc3339("2026-09-01T00:00:00Z").unwrap())
        );
        assert_eq!(
            parse_start("2026-09-01T12:00:00Z", NOW),
            Ok(parse_rfc3339("2026-09-01T12:00:00Z").unwrap())
        );
        // Hostile text never traps the component: a multi-byte last character (smart quotes,
        // another script) is refused like any other.
        for bad in [
            "",
            "0d",
            "-3d",
            "90",
            "90w",
            "yesterday",
            "2026-13-01",
            "\u{201c}90d\u{201d}",
            "90\u{434}",
            "\u{e9}",
        ] {
            let e = parse_start(bad, NOW).unwrap_err();
            assert!(e.contains("a date (2026-09-01)"), "{bad}: {e}");
        }
    }

    #[test]
    fn requests_beyond_retention_before_the_live_start_or_already_read_are_refused() {
        let events = by_name("events").unwrap();
        let logs = by_name("logs").unwrap();
        let audit = by_name("audit_logs").unwrap();
        let origin = Some(NOW - DAY);
        let old = refusal(events, NOW - 91 * DAY, NOW, origin, None).unwrap();
        assert!(old.contains("90 days"), "{old}");
        assert!(refusal(events, NOW - 89 * DAY, NOW, origin, None).is_none());
        let logs_old = refusal(logs, NOW - 31 * DAY, NOW, origin, None).unwrap();
        assert!(logs_old.contains("30 days"), "{logs_old}");
        assert!(refusal(audit, NOW - 3000 * DAY, NOW, origin, None).is_none());
        let ancient = refusal(audit, -5_000_000_000, NOW, origin, None).unwrap();
        assert!(ancient.contains("before Sentry existed"), "{ancient}");
        // Asked for within retention, read later: what expired meanwhile is not asked of Sentry.
        let start = NOW - 89 * DAY;
        assert_eq!(readable_from(events, start, NOW), start);
        assert_eq!(
            readable_from(events, start, NOW + 2 * DAY),
            NOW - 88 * DAY + 3600
        );
        assert_eq!(readable_from(audit, start, NOW + 2 * DAY), start);
        assert_eq!(window_secs(audit, DAY), i64::MAX / 4);
        assert_eq!(window_secs(by_name("issues").unwrap(), DAY), i64::MAX / 4);
        assert_eq!(window_secs(logs, DAY), DAY);
        let not_started = refusal(events, NOW - 2 * DAY, NOW, None, None).unwrap();
        assert!(not_started.contains("has not started"), "{not_started}");
        let live = refusal(events, NOW - DAY / 2, NOW, origin, None).unwrap();
        assert!(live.contains("live collection has read"), "{live}");
        let pos = BackfillPos {
            seam: NOW - DAY,
            low: NOW - 10 * DAY,
            gap: None,
        };
        let done = refusal(events, NOW - 5 * DAY, NOW, origin, Some(&pos)).unwrap();
        assert!(done.contains("the backfill has read"), "{done}");
        assert!(refusal(events, NOW - 20 * DAY, NOW, origin, Some(&pos)).is_none());
    }

    #[test]
    fn windows_go_back_from_the_seam_and_a_cut_window_is_finished_first() {
        let seam = NOW - DAY;
        let start = NOW - 3 * DAY;
        let pos = BackfillPos {
            seam,
            low: seam,
            gap: None,
        };
        // The seam must be settled first.
        assert_eq!(
            next_window(&pos, start, DAY, seam + 600, 3600),
            Next::WaitUntil(seam + 3600)
        );
        let Next::Read(w) = next_window(&pos, start, DAY, NOW, 3600) else {
            panic!("a window");
        };
        assert_eq!(
            w,
            Window {
                start: seam - DAY,
                end: seam
            }
        );
        // Read only to the middle (cut to fit in memory): the rest is next.
        let mid = seam - DAY / 2;
        let pos = after_read(
            &pos,
            Window {
                start: w.start,
                end: mid,
            },
        );
        assert_eq!(pos.low, seam - DAY);
        assert_eq!(pos.gap, Some((mid, seam)));
        // The rows of the second it was cut at are delivered: their ids stay for the rest.
        assert_eq!(ids_to_keep(&pos), Some(mid));
        let Next::Read(g) = next_window(&pos, start, DAY, NOW, 3600) else {
            panic!("the gap");
        };
        assert_eq!(
            g,
            Window {
                start: mid,
                end: seam
            }
        );
        let pos = after_read(&pos, g);
        assert_eq!(pos.gap, None);
        assert_eq!(ids_to_keep(&pos), None);
        let Next::Read(w) = next_window(&pos, start, DAY, NOW, 3600) else {
            panic!("a window");
        };
        assert_eq!(
            w,
            Window {
                start,
                end: seam - DAY
            }
        );
        let pos = after_read(&pos, w);
        assert_eq!(next_window(&pos, start, DAY, NOW, 3600), Next::Done);
        // A later request for earlier history goes on from where it stopped.
        assert_eq!(
            next_window(&pos, start - DAY, DAY, NOW, 3600),
            Next::Read(Window {
                start: start - DAY,
                end: start
            })
        );
    }

    #[test]
    fn estimates_state_requests_and_time_at_the_rate_limits() {
        let events = by_name("events").unwrap();
        let e = Estimate::from_counts(events, 360_000, 100, 12);
        assert_eq!(e.requests, Some(3612));
        assert_eq!(e.secs_at_rate_limit, Some(3612.0));
        assert!(e.note.contains("60 min"), "{}", e.note);
        let spans = by_name("spans").unwrap();
        let s = Estimate::from_counts(spans, 5_000_000, 100, 0);
        assert_eq!(
            Estimate::from_counts(events, 1_000, 10, 0).requests,
            Some(100)
        );
        assert_eq!(s.requests, Some(50_000));
        assert_eq!(s.secs_at_rate_limit, Some(1000.0));
    }
}
