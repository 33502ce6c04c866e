//! What `GET /status` shows: one view of the KV state, answered as JSON to programs and as a
//! small HTML page to browsers (by the request's `Accept` header).
//!
//! The page is static HTML with inline CSS only: no script, no external resource, and a
//! Content-Security-Policy that forbids both, so nothing on it can run or phone home. Every
//! value shown is escaped: an error message is whatever Sentry or Cloud Storage answered, and
//! is treated as hostile text.

use serde_json::json;

use crate::time::rfc3339;

/// One stream (and shard) as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRow {
    pub stream: String,
    pub shard: String,
    pub watermark: Option<i64>,
    pub in_progress: bool,
    pub last_run: Option<LastRunRow>,
    pub last_error: Option<String>,
    pub last_warnings: Vec<String>,
}

/// The counts of a stream's last run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastRunRow {
    pub finished_at: i64,
    pub window_finished: bool,
    pub pages: u64,
    pub events: u64,
    pub objects: usize,
    pub bytes: u64,
}

/// Everything `/status` answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusView {
    pub now: i64,
    pub org: String,
    pub runs: u64,
    pub last_run_error: Option<String>,
    pub streams: Vec<StreamRow>,
    /// Backfill tracks that have run.
    pub backfill: Vec<crate::backfill::Status>,
    /// Sentry webhooks waiting in the inbox, the last delivery, refusals.
    pub inbox: crate::webhook::InboxView,
}

impl StatusView {
    pub fn to_json(&self) -> serde_json::Value {
        let streams: Vec<serde_json::Value> = self
            .streams
            .iter()
            .map(|r| {
                json!({
                    "stream": r.stream,
                    "shard": r.shard,
                    "watermark": r.watermark.map(rfc3339),
                    "lag_secs": r.watermark.map(|w| self.now - w),
                    "in_progress": r.in_progress,
                    "last_run": r.last_run.as_ref().map(|l| json!({
                        "finished_at": rfc3339(l.finished_at),
                        "window_finished": l.window_finished,
                        "pages": l.pages,
                        "events": l.events,
                        "objects": l.objects,
                        "bytes": l.bytes,
                    })),
                    "last_error": r.last_error,
                    "last_warnings": r.last_warnings,
                })
            })
            .collect();
        json!({
            "now": rfc3339(self.now),
            "org": self.org,
            "runs": self.runs,
            "last_run_error": self.last_run_error,
            "streams": streams,
            "backfill": self.backfill,
            "webhook_inbox": self.inbox,
        })
    }

    /// The page a person reads: a verdict per stream first (OK, error, never run), then lag,
    /// the last run and its counts, and the last error in full.
    pub fn to_html(&self) -> String {
        let mut rows = String::new();
        for r in &self.streams {
            let (class, verdict) = verdict(r);
            let lag = match r.watermark {
                Some(w) => format!(
                    "<span title=\"watermark {}\">{}</span>",
                    rfc3339(w),
                    duration(self.now - w)
                ),
                None => "no data yet".to_string(),
            };
            let (last_run, window, pages, events, objects, bytes) = match &r.last_run {
                Some(l) => (
                    format!(
                        "<span title=\"{}\">{} ago</span>",
                        rfc3339(l.finished_at),
                        duration(self.now - l.finished_at)
                    ),
                    if l.window_finished {
                        "finished"
                    } else {
                        "backlog left"
                    }
                    .to_string(),
                    thousands(l.pages),
                    thousands(l.events),
                    thousands(l.objects as u64),
                    size(l.bytes),
                ),
                None => (
                    "never".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                ),
            };
            let running = if r.in_progress {
                " <span class=\"running\">running now</span>"
            } else {
                ""
            };
            let error = r
                .last_error
                .as_deref()
                .map_or_else(|| "none".to_string(), escape);
            rows.push_str(&format!(
                "<tr class=\"{class}\"><th scope=\"row\">{stream}</th><td>{shard}</td>\
                 <td class=\"verdict\">{verdict}{running}</td><td>{lag}</td><td>{last_run}</td>\
                 <td>{window}</td><td class=\"n\">{pages}</td><td class=\"n\">{events}</td>\
                 <td class=\"n\">{objects}</td><td class=\"n\">{bytes}</td>\
                 <td class=\"error\">{error}</td></tr>\n",
                stream = escape(&r.stream),
                shard = escape(&r.shard),
            ));
        }
        let backfill = self.backfill_html() + self.inbox_html().as_str();
        let last_error = match &self.last_run_error {
            Some(e) => format!(
                "<p class=\"run-error\">Last run failed: {}</p>\n",
                escape(e)
            ),
            None => String::new(),
        };
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta http-equiv=\"refresh\" content=\"60\">\n\
             <title>Sentry collector status: {org}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>Sentry collector status</h1>\n\
             <p class=\"meta\">Organization <b>{org}</b> &middot; {runs} so far &middot; \
             as of {now} (refreshes every minute)</p>\n{last_error}\
             <table>\n<thead><tr><th scope=\"col\">Stream</th><th scope=\"col\">Shard</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Lag</th><th scope=\"col\">Last run</th>\
             <th scope=\"col\">Window</th><th scope=\"col\">Pages</th><th scope=\"col\">Events</th>\
             <th scope=\"col\">Objects</th><th scope=\"col\">Bytes</th>\
             <th scope=\"col\">Last error</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n{backfill}\
             <p class=\"meta\">Lag: how far behind now the delivered data reaches (the stream's \
             watermark). The same data as JSON: request this page with \
             <code>Accept: application/json</code>.</p>\n</body>\n</html>\n",
            org = escape(&self.org),
            runs = match self.runs {
                1 => "1 run".to_string(),
                n => format!("{} runs", thousands(n)),
            },
            now = rfc3339(self.now),
        )
    }
}

impl StatusView {
    /// The backfill table: range, how far back it has read, rows, time left.
    fn backfill_html(&self) -> String {
        if self.backfill.is_empty() {
            return String::new();
        }
        let mut rows = String::new();
        for b in &self.backfill {
            let state = match (&b.error, &b.waiting, b.done) {
                (Some(e), _, _) => format!("Error: {}", escape(e)),
                (None, Some(w), _) => format!("Waiting: {}", escape(w)),
                (None, None, true) => "Done".to_string(),
                (None, None, false) => "In progress".to_string(),
            };
            let left = b
                .secs_left_at_rate_limit
                .map_or_else(|| "unknown".to_string(), |s| duration(s as i64));
            rows.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{} to {}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td>{}</td><td class=\"error\">{}</td></tr>\n",
                escape(&b.stream),
                escape(&b.shard),
                escape(&b.start),
                escape(&b.seam),
                escape(&b.read_back_to),
                thousands(b.rows),
                left,
                state
            ));
        }
        format!(
            "<h2>Backfill</h2>\n<table>\n<thead><tr><th scope=\"col\">Stream</th>\
             <th scope=\"col\">Shard</th><th scope=\"col\">Range</th>\
             <th scope=\"col\">Read back to</th><th scope=\"col\">Rows</th>\
             <th scope=\"col\">Left at rate limits</th><th scope=\"col\">State</th></tr></thead>\n\
             <tbody>\n{rows}</tbody>\n</table>\n"
        )
    }
}

impl StatusView {
    /// The webhook inbox: what waits (and since when), the last delivery, refusals by reason.
    fn inbox_html(&self) -> String {
        let i = &self.inbox;
        if !i.configured && i.pending.is_empty() && i.refused.is_empty() {
            return String::new();
        }
        let pending: u64 = i.pending.values().sum();
        let counts = |m: &std::collections::BTreeMap<String, u64>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter()
                .map(|(k, n)| format!("{} {}", escape(k), thousands(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "<h2>Sentry webhooks</h2>\n<table>\n<tbody>\n\
             <tr><th scope=\"row\">Waiting in the inbox</th><td class=\"n\">{pending}</td></tr>\n\
             <tr><th scope=\"row\">Oldest waiting</th><td>{oldest}</td></tr>\n\
             <tr><th scope=\"row\">Last delivery to the bucket</th><td>{last}</td></tr>\n\
             <tr><th scope=\"row\">Delivered / duplicates dropped</th><td>{delivered} / {dups}</td></tr>\n\
             <tr><th scope=\"row\">Refused, by reason</th><td>{refused}</td></tr>\n\
             <tr><th scope=\"row\">Acknowledged, not kept</th><td>{ignored}</td></tr>\n\
             <tr><th scope=\"row\">Last drain error</th><td class=\"error\">{error}</td></tr>\n\
             </tbody>\n</table>\n",
            pending = thousands(pending),
            oldest = i
                .oldest_age_secs
                .map_or_else(|| "-".to_string(), |a| format!("{} ago", duration(a))),
            last = escape(i.last_delivery.as_deref().unwrap_or("never")),
            delivered = thousands(i.delivered),
            dups = thousands(i.duplicates),
            refused = counts(&i.refused),
            ignored = counts(&i.ignored),
            error = escape(i.last_error.as_deref().unwrap_or("")),
        )
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fff}\
h1{font-size:1.4rem;margin:0 0 .3rem}.meta{color:#555;font-size:.9rem}\
table{border-collapse:collapse;margin-top:1rem}th,td{border:1px solid #ccc;padding:.35rem .6rem;\
text-align:left;vertical-align:top}thead th{background:#f0f0f0}td.n{text-align:right;\
font-variant-numeric:tabular-nums}tr.ok td.verdict{color:#11632b;font-weight:600}\
tr.failed td.verdict{color:#a40e26;font-weight:600}tr.never td.verdict{color:#6b5300;\
font-weight:600}td{white-space:nowrap}td.error{white-space:normal;max-width:32rem;overflow-wrap:anywhere}tr.failed td.error{color:#a40e26}\
.running{color:#0b4f9c;font-weight:400}.run-error{color:#a40e26;font-weight:600}";

/// The headers of the HTML page: no script, no external resource, never cached, never framed.
pub const HTML_HEADERS: [(&str, &str); 6] = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("vary", "Accept"),
];

fn verdict(r: &StreamRow) -> (&'static str, &'static str) {
    if r.last_error.is_some() {
        ("failed", "Error")
    } else if r.last_run.is_none() {
        ("never", "Never run")
    } else {
        ("ok", "OK")
    }
}

/// Whether the `Accept` header prefers HTML to JSON (a browser's does; curl's `*/*` does not).
/// Each media range's quality is its `q` parameter (1 when absent); a type takes the quality
/// of the most specific range that matches it.
pub fn prefers_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let quality = |ty: &str, sub: &str| -> f32 {
        let mut best: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let Some((t, s)) = media.split_once('/') else {
                continue;
            };
            let specificity = match (t, s) {
                (t, s) if t == ty && s == sub => 2,
                (t, "*") if t == ty => 1,
                ("*", "*") => 0,
                _ => continue,
            };
            // A range whose q is not a number is ignored.
            let q = match parts.find_map(|p| p.trim().strip_prefix("q=")) {
                None => 1.0,
                Some(v) => match v.trim().parse::<f32>() {
                    Ok(q) if q.is_finite() => q.clamp(0.0, 1.0),
                    _ => continue,
                },
            };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    };
    let html = quality("text", "html");
    html > 0.0 && html > quality("application", "json")
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A span of seconds as a person says it: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn duration(secs: i64) -> String {
    if secs < 0 {
        return format!("{} in the future", duration(-secs));
    }
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `6.7 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_programs_json() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(Some(chromium)));
        assert!(prefers_html(Some(firefox)));
        assert!(prefers_html(Some("text/*")));
        for programs in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/json, text/html"),
            Some("text/html;q=0.5, application/json"),
            Some("text/html;q=0"),
            Some("text/html;q=0, */*"),
            Some(""),
            Some("garbage"),
            Some("text/html;q=high, application/json"),
            Some("text/html;q=NaN"),
        ] {
            assert!(!prefers_html(programs), "{programs:?}");
        }
    }

    #[test]
    fn hostile_text_is_escaped() {
        let view = StatusView {
            now: 1_800_000_000,
            org: "<b>org</b>".into(),
            runs: 1,
            last_run_error: Some("\"><script>alert(1)</script>".into()),
            streams: vec![StreamRow {
                stream: "events".into(),
                shard: "0/1".into(),
                last_error: Some("<img src=x onerror=alert(1)> & 'q'\u{1b}[31m".into()),
                ..StreamRow::default()
            }],
            backfill: vec![crate::backfill::Status {
                stream: "<i>events".into(),
                waiting: Some("<script>late()</script>".into()),
                ..Default::default()
            }],
            inbox: crate::webhook::InboxView {
                configured: true,
                refused: [("<script>x</script>".to_string(), 2)].into(),
                last_error: Some("<img src=y>".into()),
                ..Default::default()
            },
        };
        let html = view.to_html();
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<i>events"));
        assert!(html.contains("Waiting: &lt;script&gt;late()"));
        assert!(!html.contains("<b>org"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &#39;q&#39;\u{fffd}[31m"));
        assert!(html.contains("&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn numbers_read_like_a_person_writes_them() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(60), "1 min");
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(3 * 3600 + 5 * 60 + 9), "3 h 5 min");
        assert_eq!(duration(2 * 86_400 + 4 * 3600 + 60), "2 d 4 h");
        assert_eq!(duration(86_400 + 59), "1 d");
        assert_eq!(duration(-90), "1 min in the future");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(7 * 1024 * 1024 + 300 * 1024), "7.3 MiB");
    }

    #[test]
    fn json_and_html_tell_the_same_story() {
        let view = StatusView {
            now: 1_800_003_600,
            org: "acme".into(),
            runs: 12_345,
            last_run_error: None,
            streams: vec![
                StreamRow {
                    stream: "events".into(),
                    shard: "0/1".into(),
                    watermark: Some(1_800_000_000),
                    in_progress: true,
                    last_run: Some(LastRunRow {
                        finished_at: 1_800_003_000,
                        window_finished: true,
                        pages: 3,
                        events: 250_000,
                        objects: 2,
                        bytes: 3 * 1024 * 1024,
                    }),
                    last_error: None,
                    last_warnings: Vec::new(),
                },
                StreamRow {
                    stream: "issues".into(),
                    shard: "0/1".into(),
                    ..StreamRow::default()
                },
            ],
            backfill: vec![crate::backfill::Status {
                stream: "events".into(),
                shard: "0/1".into(),
                start: "2026-09-01T00:00:00Z".into(),
                seam: "2026-11-30T00:00:00Z".into(),
                read_back_to: "2026-11-01T00:00:00Z".into(),
                rows: 54_321,
                runs: 40,
                secs_left_at_rate_limit: Some(7260.0),
                ..Default::default()
            }],
            inbox: crate::webhook::InboxView {
                configured: true,
                pending: [("issue_activity", 3), ("events", 2)].into(),
                oldest_age_secs: Some(125),
                last_delivery: Some("2026-12-03T10:00:00Z".into()),
                delivered: 1_234,
                refused: [("bad_signature".to_string(), 4)].into(),
                ..Default::default()
            },
        };
        let json = view.to_json();
        assert_eq!(json["webhook_inbox"]["pending"]["issue_activity"], 3);
        assert_eq!(json["webhook_inbox"]["refused"]["bad_signature"], 4);
        assert_eq!(json["streams"][0]["lag_secs"], 3600);
        assert_eq!(json["streams"][0]["last_run"]["events"], 250_000);
        assert_eq!(json["streams"][1]["last_run"], serde_json::Value::Null);
        assert_eq!(json["backfill"][0]["rows"], 54_321);
        assert_eq!(json["backfill"][0]["read_back_to"], "2026-11-01T00:00:00Z");
        let html = view.to_html();
        for shown in [
            "12,345 runs",
            ">1 h<",
            ">10 min ago<",
            "250,000",
            "3.0 MiB",
            "running now",
            "Never run",
            "no data yet",
            "<h2>Backfill</h2>",
            "2026-09-01T00:00:00Z to 2026-11-30T00:00:00Z",
            "54,321",
            ">2 h 1 min<",
            "In progress",
            "<h2>Sentry webhooks</h2>",
            "Waiting in the inbox</th><td class=\"n\">5<",
            "2 min ago",
            "bad_signature 4",
            "1,234 / 0",
        ] {
            assert!(html.contains(shown), "{shown} missing from the page");
        }
    }
}
