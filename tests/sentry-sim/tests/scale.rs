//! At benchmark scale (200,000 events and 200,000 spans rows in one project, and some in a
//! second one), every page the simulator serves is what a plain filter and sort of its data
//! gives: project events in `-dateCreated, -eventID` order with `x-hits` and the `Link`
//! cursors, Discover / Explore rows in timestamp order (the same rows for a total order, the
//! same seconds and the same set within each second when ties are shuffled), the counts.
//! Prints the time a page takes (not an assertion: debug builds are slow).
//!
//! Every row is either ingested long ago or ingested far in the future, so the moving real
//! clock cannot change what is visible during the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sentry_sim::{time::rfc3339, Event, ExploreRow, Rng, Sim, SimClock, SimOptions, SimResponse};
use serde_json::Value;

/// Events (and spans rows) in the busy project; `SIM_SCALE_N` changes it (1000000 for the
/// benchmark's size, in a release build).
fn n() -> u64 {
    std::env::var("SIM_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// `secs` at 200,000 events, as many rows at `n()`.
fn span(secs: i64) -> i64 {
    (secs as f64 * 200_000.0 / n() as f64).ceil() as i64
}
const DAY: i64 = 86_400;
/// "Late" rows are ingested up to this far in the future: never during the test.
const FAR: i64 = 1_000_000_000_000;

fn options(legacy: bool) -> SimOptions {
    SimOptions {
        rate_limits: false,
        legacy_no_date_filter: legacy,
        ..SimOptions::default()
    }
}

/// Two days of events and spans, ending an hour ago: most visible, 5% ingested in the far
/// future, a tenth as many in a second project.
fn fill(sim: &Sim, now: i64) {
    sim.add_project(1, "web");
    sim.add_project(2, "api");
    let (from, to) = (now - 2 * DAY - 3600, now - 3600);
    let mut rng = Rng::new(42);
    let n = n();
    let t = Instant::now();
    sim.generate(&mut rng, 1, n, from, to, 0.05, FAR);
    sim.generate(&mut rng, 2, n / 10, from, to, 0.05, FAR);
    let events_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    sim.generate_rows(&mut rng, "spans", 1, n, from, to, 0.05, FAR);
    sim.generate_rows(&mut rng, "spans", 2, n / 10, from, to, 0.05, FAR);
    let rows_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "generate: {} events in {events_ms:.0} ms, {} spans rows in {rows_ms:.0} ms",
        n + n / 10,
        n + n / 10
    );
}

fn call(sim: &Sim, path: &str, query: &str) -> SimResponse {
    let auth = format!("Bearer {}", sim.options.token);
    let r = sim.respond("GET", path, query, &auth);
    assert_eq!(
        r.status,
        200,
        "{path}?{query}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r
}

fn header<'a>(r: &'a SimResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether the `Link` header says there is a next page.
fn more(r: &SimResponse) -> bool {
    let link = header(r, "link").expect("a Link header");
    let next = link.split(", <").nth(1).expect("a next link");
    next.contains(r#"results="true""#)
}

fn body(r: &SimResponse) -> Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

/// Visible events of a project in `[start, end)` (all of them with `None`), newest first.
fn naive_events(all: &[Event], project: u64, range: Option<(i64, i64)>, now: i64) -> Vec<Event> {
    let mut v: Vec<Event> = all
        .iter()
        .filter(|e| {
            e.project_id == project
                && e.received_at <= now
                && range.is_none_or(|(s, x)| e.date_created >= s && e.date_created < x)
        })
        .cloned()
        .collect();
    v.sort_by(|a, b| {
        b.date_created
            .cmp(&a.date_created)
            .then_with(|| b.event_id.cmp(&a.event_id))
    });
    v
}

/// Pages through a project's events by `Link` cursors and checks every page against
/// `expected`; returns the pages' times in ms.
fn page_events(
    sim: &Sim,
    query: &str,
    per_page: usize,
    first_offset: usize,
    pages: Option<usize>,
    expected: &[Event],
    poisoned: &str,
) -> Vec<f64> {
    let mut times = Vec::new();
    let mut offset = first_offset;
    loop {
        let q = format!("{query}&per_page={per_page}&cursor=0:{offset}:0");
        let t = Instant::now();
        let r = call(sim, "/api/0/projects/acme/web/events/", &q);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let v = body(&r);
        let got: Vec<(Option<String>, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["eventID"].as_str().map(str::to_string),
                    e["dateCreated"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(Option<String>, String)> = expected
            .iter()
            .skip(offset)
            .take(per_page)
            .map(|e| {
                (
                    (e.event_id != poisoned).then(|| e.event_id.clone()),
                    rfc3339(e.date_created),
                )
            })
            .collect();
        assert_eq!(got, want, "{q}");
        assert_eq!(
            header(&r, "x-hits"),
            Some(expected.len().to_string().as_str())
        );
        let has_more = expected.len() > offset + per_page;
        assert_eq!(more(&r), has_more, "{q}");
        offset += per_page;
        if !has_more || pages.is_some_and(|p| times.len() >= p) {
            return times;
        }
    }
}

fn report(what: &str, times: &[f64]) {
    let total: f64 = times.iter().sum();
    let max = times.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{what}: {} pages, {:.3} ms a page on average, {max:.3} ms at most",
        times.len(),
        total / times.len() as f64
    );
}

#[test]
fn project_event_pages_at_scale_equal_a_plain_filter_and_sort() {
    let sim = Sim::new(options(false), SimClock::default());
    let now = sim.clock.now();
    fill(&sim, now);
    let all = sim.all_events();
    // An event in the paged range is served without its id.
    let (start, end) = (now - DAY - 3600 - span(9000), now - DAY - 3600);
    let expected = naive_events(&all, 1, Some((start, end)), now);
    assert!(expected.len() > 8000, "{}", expected.len());
    let poisoned = expected[1234].event_id.clone();
    sim.poison(&poisoned);
    let range = format!("start={}&end={}", rfc3339(start), rfc3339(end));

    let t = Instant::now();
    call(&sim, "/api/0/projects/acme/web/events/", &range);
    eprintln!(
        "first project-events page (builds any index): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let times = page_events(&sim, &range, 100, 0, None, &expected, &poisoned);
    report("project events, ~9,000 in the range, 100 a page", &times);
    let full = format!("{range}&full=true");
    let times = page_events(&sim, &full, 10, 0, Some(20), &expected, &poisoned);
    report("project events, full=true (10 a page)", &times);

    // The whole history: deep offsets.
    let (s, e) = (now - 3 * DAY, now);
    let whole = naive_events(&all, 1, Some((s, e)), now);
    let q = format!("start={}&end={}", rfc3339(s), rfc3339(e));
    let deep = n() as usize * 3 / 4;
    let times = page_events(&sim, &q, 100, deep, Some(20), &whole, &poisoned);
    report(
        &format!("project events, the whole history at offset {deep}"),
        &times,
    );
    let last = whole.len() - whole.len() % 100;
    let times = page_events(&sim, &q, 100, last, None, &whole, &poisoned);
    assert_eq!(times.len(), 1);

    // The other project's events are its own.
    let r = call(&sim, "/api/0/projects/acme/api/events/", &range);
    let want = naive_events(&all, 2, Some((start, end)), now);
    assert_eq!(header(&r, "x-hits"), Some(want.len().to_string().as_str()));
    let page = body(&r);
    let ids: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventID"].as_str().unwrap())
        .collect();
    let want_ids: Vec<&str> = want.iter().take(100).map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, want_ids);

    // Events added and deleted between pages are seen on the next page.
    let mut extra = expected[10].clone();
    extra.event_id = "f".repeat(32);
    sim.add_event(extra.clone());
    let deleted = expected[20].event_id.clone();
    sim.delete_events_between_pages("project-events", vec![vec![deleted.clone()]]);
    call(&sim, "/api/0/projects/acme/web/events/", &range);
    let all = sim.all_events();
    assert!(all.iter().all(|e| e.event_id != deleted));
    let changed = naive_events(&all, 1, Some((start, end)), now);
    assert_eq!(changed.len(), expected.len());
    let times = page_events(&sim, &range, 100, 0, Some(3), &changed, &poisoned);
    report("project events after a change", &times);

    // The counts of the errors dataset, per project.
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &format!("field=project.id&field=count()&project=-1&{range}"),
    );
    let counts: Vec<(u64, u64)> = body(&r)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["project.id"].as_u64().unwrap(),
                c["count()"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: BTreeMap<u64, u64> = BTreeMap::new();
    for e in sim.truth(start, end, now) {
        *want.entry(e.project_id).or_default() += 1;
    }
    assert_eq!(sim.truth_count_by_project(start, end, now), want);
    assert_eq!(counts, want.into_iter().collect::<Vec<_>>());
    assert_eq!(
        sim.truth_count(start, end, now),
        sim.truth(start, end, now).len() as u64
    );
    let mut ids = sim.truth_ids(start, end, now);
    let mut want: Vec<String> = sim
        .truth(start, end, now)
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);

    // A deleted project's events are gone from the counts.
    sim.remove_project(2);
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &format!("field=project.id&field=count()&project=-1&{range}"),
    );
    let projects: Vec<u64> = body(&r)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["project.id"].as_u64().unwrap())
        .collect();
    assert_eq!(projects, vec![1]);
}

#[test]
fn legacy_project_event_pages_at_scale_ignore_the_range() {
    let sim = Sim::new(options(true), SimClock::default());
    let now = sim.clock.now();
    fill(&sim, now);
    let expected = naive_events(&sim.all_events(), 1, None, now);
    let q = format!(
        "start={}&end={}",
        rfc3339(now - DAY - 4000),
        rfc3339(now - DAY)
    );
    let times = page_events(&sim, &q, 100, 0, Some(10), &expected, "");
    report("legacy project events, first pages", &times);
    let deep = n() as usize * 9 / 10;
    let times = page_events(&sim, &q, 100, deep, Some(10), &expected, "");
    report(&format!("legacy project events at offset {deep}"), &times);
}

/// (timestamp, id) of each row of a page.
fn rows_of(r: &SimResponse) -> Vec<(i64, String)> {
    body(r)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let ts = row["timestamp"].as_str().unwrap().replace("+00:00", "Z");
            (
                sentry_sim::time::parse_rfc3339(&ts).unwrap(),
                row["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Visible spans of `projects` (all with `None`) in `[start, end)`, by timestamp then id.
fn naive_rows(
    sim: &Sim,
    projects: Option<u64>,
    (start, end): (i64, i64),
    now: i64,
) -> Vec<ExploreRow> {
    let mut v: Vec<ExploreRow> = sim
        .rows_truth("spans", start, end, now)
        .into_iter()
        .filter(|r| projects.is_none_or(|p| r.project_id == p))
        .collect();
    v.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
    v
}

/// Pages through a Discover spans query; checks each page against `expected` (ascending by
/// timestamp then id): exactly, or with `ties` the same seconds in order and, within each
/// second, ids of that second (all of them for a second wholly inside the page).
#[allow(clippy::too_many_arguments)]
fn page_rows(
    sim: &Sim,
    query: &str,
    descending: bool,
    ties: bool,
    first_offset: usize,
    pages: Option<usize>,
    expected: &[ExploreRow],
) -> Vec<f64> {
    let mut expected: Vec<(i64, String)> = expected
        .iter()
        .map(|r| (r.timestamp, r.id.clone()))
        .collect();
    if descending {
        expected.reverse();
    }
    let reachable = expected.len().min(sentry_sim::OFFSET_CAP);
    let mut by_second: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for (t, id) in &expected {
        by_second.entry(*t).or_default().insert(id.clone());
    }
    let mut times = Vec::new();
    let mut offset = first_offset;
    loop {
        let q = format!("{query}&per_page=100&cursor=0:{offset}:0");
        let t = Instant::now();
        let r = call(sim, "/api/0/organizations/acme/events/", &q);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let got = rows_of(&r);
        let want: Vec<(i64, String)> = expected
            .iter()
            .take(reachable)
            .skip(offset)
            .take(100)
            .cloned()
            .collect();
        if !ties {
            assert_eq!(got, want, "{q}");
        } else {
            let secs = |v: &[(i64, String)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
            assert_eq!(secs(&got), secs(&want), "{q}");
            let (first, last) = (got.first().map(|r| r.0), got.last().map(|r| r.0));
            let mut per_second: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
            for (t, id) in &got {
                assert!(by_second[t].contains(id), "{q}: {id} is not of {t}");
                per_second.entry(*t).or_default().insert(id.clone());
            }
            let count = per_second.values().map(BTreeSet::len).sum::<usize>();
            assert_eq!(count, got.len(), "{q}: a row twice in one page");
            for (t, ids) in per_second {
                if Some(t) != first && Some(t) != last {
                    assert_eq!(ids, by_second[&t], "{q}: second {t}");
                }
            }
        }
        let has_more = reachable > offset + 100;
        assert_eq!(more(&r), has_more, "{q}");
        offset += 100;
        if !has_more || pages.is_some_and(|p| times.len() >= p) {
            return times;
        }
    }
}

#[test]
fn explore_pages_at_scale_equal_a_plain_filter_and_sort() {
    let sim = Sim::new(options(false), SimClock::default());
    let now = sim.clock.now();
    fill(&sim, now);
    let range = (now - DAY - 3600 - span(7000), now - DAY - 3600);
    let dates = format!("start={}&end={}", rfc3339(range.0), rfc3339(range.1));
    let one = naive_rows(&sim, Some(1), range, now);
    let both = naive_rows(&sim, None, range, now);
    assert!(one.len() > 6000 && both.len() < sentry_sim::OFFSET_CAP);
    let q = |projects: &str, sort: &str| {
        format!("field=id&field=timestamp&dataset=spans&project={projects}&{dates}&{sort}")
    };

    let t = Instant::now();
    call(
        &sim,
        "/api/0/organizations/acme/events/",
        &q("1", "sort=timestamp"),
    );
    eprintln!(
        "first spans page (builds any index): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let total = "sort=timestamp&sort=id";
    let times = page_rows(&sim, &q("1", total), false, false, 0, None, &one);
    report("spans of a project, sort=timestamp&sort=id", &times);
    let times = page_rows(&sim, &q("-1", total), false, false, 0, None, &both);
    report("spans of all projects, sort=timestamp&sort=id", &times);
    let desc = "sort=-timestamp&sort=-id";
    let times = page_rows(&sim, &q("1", desc), true, false, 0, Some(20), &one);
    report("spans, sort=-timestamp&sort=-id", &times);
    let times = page_rows(&sim, &q("1", "sort=timestamp"), false, true, 0, None, &one);
    report("spans, sort=timestamp (ties shuffled)", &times);
    let times = page_rows(
        &sim,
        &q("-1", "sort=-timestamp"),
        true,
        true,
        0,
        Some(20),
        &both,
    );
    report("spans, sort=-timestamp (ties shuffled)", &times);

    // Sorted by something else than time first, or not at all (the filter and sort of
    // everything, still).
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &q("1", "sort=-id&per_page=100"),
    );
    let mut by_id = one.clone();
    by_id.sort_by(|a, b| b.id.cmp(&a.id));
    let want: Vec<(i64, String)> = by_id
        .iter()
        .take(100)
        .map(|r| (r.timestamp, r.id.clone()))
        .collect();
    assert_eq!(rows_of(&r), want);
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &q("1", "per_page=100"),
    );
    let got = rows_of(&r);
    let ids: BTreeSet<&String> = one.iter().map(|r| &r.id).collect();
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|(_, id)| ids.contains(id)));

    // Rows of one second come back in a new order on every query.
    let a = rows_of(&call(
        &sim,
        "/api/0/organizations/acme/events/",
        &q("1", "sort=timestamp"),
    ));
    let b = rows_of(&call(
        &sim,
        "/api/0/organizations/acme/events/",
        &q("1", "sort=timestamp"),
    ));
    assert_ne!(a, b, "ties in the same order twice");

    // The whole history: the offset cap.
    let all = (now - 3 * DAY, now);
    let whole = naive_rows(&sim, None, all, now);
    let dates_all = format!("start={}&end={}", rfc3339(all.0), rfc3339(all.1));
    let qa = format!("field=id&field=timestamp&dataset=spans&project=-1&{dates_all}&{total}");
    let times = page_rows(&sim, &qa, false, false, 9_800, None, &whole);
    assert_eq!(times.len(), 2);
    report(
        "spans of the whole history at offsets 9,800 and 9,900",
        &times,
    );
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &format!("{qa}&cursor=0:10000:0"),
    );
    assert!(rows_of(&r).is_empty() && !more(&r));
    let qd =
        format!("field=id&field=timestamp&dataset=spans&project=-1&{dates_all}&sort=-timestamp");
    let times = page_rows(&sim, &qd, true, true, 9_900, None, &whole);
    report("spans, -timestamp at offset 9,900", &times);

    // count() over a range, per dataset and project.
    for (projects, want) in [
        ("1", one.len()),
        ("-1", both.len()),
        ("2", both.len() - one.len()),
    ] {
        let r = call(
            &sim,
            "/api/0/organizations/acme/events/",
            &format!("field=count()&dataset=spans&project={projects}&{dates}"),
        );
        assert_eq!(body(&r)["data"][0]["count()"], want, "project={projects}");
    }
    assert_eq!(
        sim.rows_truth_count("spans", range.0, range.1, now),
        both.len() as u64
    );
    let mut ids = sim.rows_truth_ids("spans", range.0, range.1, now);
    ids.sort();
    let mut want: Vec<String> = both.iter().map(|r| r.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);

    // More rows later: seen by the next query.
    let mut rng = Rng::new(7);
    sim.generate_rows(&mut rng, "spans", 1, n() / 4, range.0, range.1, 0.0, 60);
    let one = naive_rows(&sim, Some(1), range, now);
    let times = page_rows(&sim, &q("1", total), false, false, 0, Some(5), &one);
    report("spans after more rows", &times);
    // A deleted project's rows are gone.
    sim.remove_project(2);
    let r = call(
        &sim,
        "/api/0/organizations/acme/events/",
        &format!("field=count()&dataset=spans&project=-1&{dates}"),
    );
    assert_eq!(body(&r)["data"][0]["count()"], one.len());
}
