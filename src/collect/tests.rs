//! Unit tests of planning and reading positions.

use std::collections::{BTreeMap, HashMap};

use super::plan::*;
use super::read::*;
use super::*;
use crate::checkpoint::Keyset;
use crate::delivered::SeenSet;
use crate::identity::seen_key;
use crate::report::ObjectSummary;
use crate::sentry::pages::Parsed;
use crate::window::Window;

#[test]
fn a_full_oldest_first_window_ends_where_it_was_read_to_if_that_moves_the_watermark() {
    let window = Window {
        start: 1_000,
        end: 5_000,
    };
    assert_eq!(cut_at(window, Some(2_000), Some(3_000)), Some(3_000));
    assert_eq!(cut_at(window, None, Some(1_500)), Some(1_500));
    // Nothing read past the watermark, or nothing read: no cut (the stream stops).
    assert_eq!(cut_at(window, Some(2_000), Some(2_000)), None);
    assert_eq!(cut_at(window, Some(2_000), None), None);
    // Read to the end: the window is done anyway.
    assert_eq!(cut_at(window, Some(2_000), Some(5_000)), None);
}

#[test]
fn an_events_window_is_shortened_to_what_its_count_leaves_room_for() {
    let cap = crate::delivered::MAX_IDS;
    // Fits: as planned.
    assert_eq!(fit_to_count(0, 3_600, 100_000, 500_000), 3_600);
    // A backlog of 3M counted in 2 h beside 1M held: room for 350,000 (of 1.35M), so
    // about a ninth of the window, in whole minutes.
    let end = fit_to_count(0, 7_200, 3_000_000, 1_000_000);
    assert_eq!(end % 60, 0);
    let room = (cap / 10 * 9 - 1_000_000) as f64;
    let share = room / (3_000_000.0 * 1.1);
    assert!(end as f64 <= 7_200.0 * share && end as f64 > 7_200.0 * share - 60.0);
    // Counted within 10% of the room: shortened too (late arrivals need the margin).
    assert!(fit_to_count(100, 3_700, (cap / 10 * 9) as u64, 0) < 3_700);
    // No room at all: one minute past the base, never before it.
    assert_eq!(fit_to_count(600, 4_200, 1, cap), 660);
    // Less than a minute left to read: as planned.
    assert_eq!(fit_to_count(600, 630, 5_000_000, 0), 630);
}

#[test]
fn an_overlap_is_read_again_only_in_the_parts_whose_counts_differ() {
    let (start, end) = (999_960, 1_003_560);
    let all = Window { start, end };
    // Sentry holds 300 rows a second; rows at +2100 s and +3000 s were not delivered
    // (late).
    let per_sec = |w: Window| (w.end - w.start) as u64 * 300;
    let late = [start + 2100, start + 3000];
    let within = |w: Window, t: i64| u64::from(t >= w.start && t < w.end);
    let sentry = |w: Window| Some(per_sec(w));
    let delivered = |w: Window| per_sec(w) - late.iter().map(|&t| within(w, t)).sum::<u64>();
    let mut counts = 0;
    let parts = differing_parts(
        all,
        MAX_RANGE_COUNTS,
        |w| {
            counts += 1;
            sentry(w)
        },
        delivered,
    );
    assert_eq!(parts, [(late[0], late[0] + 1), (late[1], late[1] + 1)]);
    assert!(counts <= 2 * 2 * 12, "{counts} counts");
    // A row deleted at +1200 s: a deleted row and a late one in the same counted part
    // cancel out (no count can tell), so once any count is below what was delivered no
    // agreeing count is trusted and the whole range is read.
    let deleted = start + 1200;
    let parts = differing_parts(
        all,
        MAX_RANGE_COUNTS,
        |w| Some(per_sec(w) - within(w, deleted)),
        delivered,
    );
    assert_eq!(parts, [(start, end)]);
    // Fewer rows a second: parts stop where they hold fewer than a page.
    let sparse = differing_parts(
        all,
        MAX_RANGE_COUNTS,
        |w| Some((w.end - w.start) as u64),
        |w| (w.end - w.start) as u64 - within(w, late[1]),
    );
    assert_eq!(sparse.len(), 1);
    let (a, b) = sparse[0];
    assert!(
        a <= late[1] && late[1] < b && b - a < 2 * JOIN_BELOW_ROWS as i64,
        "{sparse:?}"
    );
    // Whatever the budget, and whether counts fail, every second with late rows is read
    // (without deletions, nothing cancels them out).
    let mut seed = 7u64;
    for budget in [0, 1, 2, 3, 5, 8, 20, 60] {
        for fail_at in [1, 2, 4, 9, usize::MAX] {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let extra = start + (seed >> 33) as i64 % (end - start);
            let mut n = 0;
            let parts = differing_parts(
                all,
                budget,
                |w| {
                    n += 1;
                    (n < fail_at).then(|| per_sec(w) + within(w, extra))
                },
                delivered,
            );
            for t in [late[0], late[1], extra] {
                assert!(
                    parts.iter().any(|&(a, b)| a <= t && t < b),
                    "{t} not read with budget {budget}, failing at {fail_at}: {parts:?}"
                );
            }
            assert!(parts.windows(2).all(|p| p[0].1 < p[1].0), "{parts:?}");
        }
    }
}

#[test]
fn each_projects_overlap_is_read_again_from_where_its_own_counts_stop_agreeing() {
    let (start, end) = (999_960, 1_003_560);
    // Projects 1-3 hold one event a second each. Late (not delivered): project 1 at
    // +3000 s, project 2 at +600 s; project 3 had an event deleted at +100 s (Sentry counts
    // one fewer than was delivered); project 4 has nothing late.
    let late = |p: u64| match p {
        1 => Some(start + 3000),
        2 => Some(start + 600),
        _ => None,
    };
    let mut queries = Vec::new();
    let sentry = |w: Window| {
        queries.push(w);
        let all = (w.end - w.start) as u64;
        let deleted = u64::from(w.end > start + 100);
        Some(HashMap::from([
            (1, all),
            (2, all),
            (3, all - deleted),
            (4, all),
        ]))
    };
    let delivered = |w: Window| {
        let all = (w.end - w.start) as u64;
        (1..=4)
            .map(|p| {
                let missing = late(p).is_some_and(|t| t >= w.start && t < w.end);
                (p, all - u64::from(missing))
            })
            .collect::<HashMap<_, _>>()
    };
    // (Project 4 is not searched: its whole overlap agrees; it is counted all the same.)
    let found = agreeing_prefixes(
        start,
        end,
        &[1, 2, 3],
        MAX_OVERLAP_COUNTS,
        sentry,
        delivered,
    );
    let one = found[&1];
    assert!(one <= start + 3000 && one > start + 3000 - 180, "{one}");
    let two = found[&2];
    assert!(two <= start + 600 && two > start + 600 - 180, "{two}");
    assert!(!found.contains_key(&3), "a deletion: the whole overlap");
    assert!(!found.contains_key(&4));
    // Within the budget, every probe a whole minute inside the range.
    assert!(
        queries.len() <= MAX_OVERLAP_COUNTS,
        "{} counts",
        queries.len()
    );
    assert!(queries
        .iter()
        .all(|q| q.start == start && q.end < end && q.end % 60 == 0));
    // A range that does not start on a minute is still probed at whole minutes.
    let mut probes = Vec::new();
    let odd = agreeing_prefixes(
        start + 17,
        end + 17,
        &[1],
        MAX_OVERLAP_COUNTS,
        |w| {
            probes.push(w.end);
            Some(HashMap::from([(1, (w.end - w.start) as u64)]))
        },
        |w| HashMap::from([(1, (w.end - w.start) as u64)]),
    );
    assert!(odd[&1] >= end - 60 && odd[&1] < end + 17, "{odd:?}");
    assert!(probes.iter().all(|t| t % 60 == 0), "{probes:?}");
    // The search stops at its query budget, where it stands.
    let mut n = 0;
    let few = agreeing_prefixes(
        start,
        end,
        &[1, 2],
        1,
        |w| {
            n += 1;
            Some(HashMap::from([(1, (w.end - w.start) as u64), (2, 0)]))
        },
        |w| HashMap::from([(1, (w.end - w.start) as u64), (2, 0)]),
    );
    assert_eq!(n, 1);
    assert_eq!(few.get(&1), Some(&(start + 1800)));
    assert_eq!(few.get(&2), Some(&(start + 1800)));
}

#[test]
fn only_the_seconds_whose_counts_differ_are_read_again() {
    // Fifty events a second were delivered over [1000, 2000). Sentry now counts one more
    // at 1020 and 1500 (late), one fewer at 1600 (deleted), none at 1700 (all deleted);
    // 1010 differs too but lies before where the search found the counts agreeing.
    let delivered: BTreeMap<i64, u64> = (1000..2000).map(|t| (t, 50)).collect();
    let mut sentry = delivered.clone();
    *sentry.get_mut(&1010).unwrap() += 1;
    *sentry.get_mut(&1020).unwrap() += 1;
    *sentry.get_mut(&1500).unwrap() += 1;
    *sentry.get_mut(&1600).unwrap() -= 1;
    sentry.remove(&1700);
    let read = differing_ranges(&sentry, &delivered, 1015, 2000, 2000);
    assert_eq!(
        read,
        [(1020, 1021), (1500, 1501), (1600, 1601), (1700, 1701)]
    );
    // Listed only up to 1800: the rest of the overlap is read whole.
    let read = differing_ranges(&sentry, &delivered, 1015, 1800, 2000);
    assert_eq!(read.last(), Some(&(1800, 2000)));
    assert_eq!(read.len(), 5);
    // Seconds with fewer rows than a page between them are read as one range, and so is
    // an unlisted rest that close.
    let quiet: BTreeMap<i64, u64> = (1000..2000).step_by(10).map(|t| (t, 1)).collect();
    let mut late = quiet.clone();
    late.insert(1205, 1);
    late.insert(1405, 1);
    late.insert(1905, 1);
    assert_eq!(
        differing_ranges(&late, &quiet, 1000, 2000, 2000),
        [(1205, 1906)]
    );
    assert_eq!(
        differing_ranges(&late, &quiet, 1000, 1900, 2400),
        [(1205, 2400)]
    );
    // Counts that agree: nothing to read.
    assert!(differing_ranges(&quiet, &quiet, 1000, 2000, 2000).is_empty());
    // A listing cut short before a project's place (several late projects, one page
    // budget): that project's part is read whole.
    let keyed: BTreeMap<(u64, i64), u64> = [((1, 1500), 2), ((2, 1200), 1)].into();
    assert!(seconds_of(&keyed, 1, 1600, 1300).is_empty());
    assert_eq!(
        seconds_of(&keyed, 1, 1000, 2000),
        BTreeMap::from([(1500, 2)])
    );
    let none = BTreeMap::new();
    assert_eq!(
        differing_ranges(&none, &none, 1600, 1300, 2000),
        [(1600, 2000)]
    );
}

#[test]
fn ranges_that_touch_are_read_as_one() {
    let mut r = vec![(10, 20)];
    push_range(&mut r, (20, 30));
    push_range(&mut r, (40, 50));
    assert_eq!(r, [(10, 30), (40, 50)]);
}

#[test]
fn a_backlog_at_a_high_rate_is_read_in_windows_that_fit_in_memory() {
    let wm = 1_790_000_000;
    let mut seen = SeenSet::default();
    // The last hour held 800,000 ids: 222 a second.
    for n in 0..800_000u64 {
        seen.insert_key(
            crate::identity::seen_key(&format!("{n:032x}")),
            wm - 3600 + (n % 3600) as i64,
            1,
        );
    }
    // Two hours behind (an outage): 1.6M more ids would not fit beside them.
    let behind = Window {
        start: wm - 3600,
        end: wm + 7200,
    };
    let fitted = fit_to_memory(behind, Some(wm), &seen, 3600);
    assert_eq!(fitted.start, behind.start);
    let new = (fitted.end - wm) as f64 * 800_000.0 / 3600.0;
    assert!(fitted.end < behind.end, "{fitted:?}");
    assert!(
        seen.len() as f64 + new * 1.5 <= crate::delivered::MAX_IDS as f64,
        "{fitted:?}"
    );
    // A run a few minutes behind is left alone, and so is a first window.
    let normal = Window {
        start: wm - 3600,
        end: wm + 300,
    };
    assert_eq!(fit_to_memory(normal, Some(wm), &seen, 3600), normal);
    assert_eq!(fit_to_memory(behind, None, &seen, 3600), behind);
}

/// A project-events page of (eventID, seconds after 2026-01-01T00:00:00Z) rows; `None`
/// for the id makes a row without one.
fn events_page(rows: &[(Option<&str>, i64)]) -> Parsed {
    let items: Vec<String> = rows
        .iter()
        .map(|(id, t)| {
            let time = crate::time::rfc3339(1_767_225_600 + t);
            match id {
                Some(id) => format!(r#"{{"eventID":"{id}","dateCreated":"{time}"}}"#),
                None => format!(r#"{{"dateCreated":"{time}"}}"#),
            }
        })
        .collect();
    let shape = &crate::streams::by_name("events").unwrap().shape;
    crate::sentry::pages::parse_page(format!("[{}]", items.join(",")).into_bytes(), shape).unwrap()
}

fn key_of(id: &str) -> Option<String> {
    Some(crate::hex::encode(&seen_key(id)))
}

const T: i64 = 1_767_225_600;

#[test]
fn the_next_page_starts_in_the_oldest_second_read_with_one_row_again() {
    // The top of the list: two rows in second 10, three in second 8.
    let page = events_page(&[
        (Some("e"), 10),
        (Some("d"), 10),
        (Some("c"), 8),
        (Some("b"), 8),
        (Some("a"), 8),
    ]);
    let next = next_keyset(None, T + 60, &rows(&page));
    assert_eq!(
        next,
        Keyset {
            end: T + 9,
            read: 3,
            last: key_of("a"),
            ..Keyset::default()
        }
    );
    // The next page (offset 2 in "before second 9") starts with "a" again; all of it is
    // second 8: the second's rows read so far are counted from its top.
    let page = events_page(&[(Some("a"), 8), (Some("z"), 8), (Some("y"), 8)]);
    assert!(!boundary_moved(Some(&next), &rows(&page)));
    let after = next_keyset(Some(&next), next.end, &rows(&page));
    assert_eq!(
        after,
        Keyset {
            end: T + 9,
            read: 5,
            last: key_of("y"),
            ..Keyset::default()
        }
    );
    // It reaches an older second: only that second's rows count.
    let page = events_page(&[(Some("y"), 8), (Some("x"), 7)]);
    assert_eq!(
        next_keyset(Some(&after), after.end, &rows(&page)),
        Keyset {
            end: T + 8,
            read: 1,
            last: key_of("x"),
            ..Keyset::default()
        }
    );
}

#[test]
fn a_row_above_the_offset_that_went_away_shows_as_a_moved_boundary() {
    let at = Keyset {
        end: T + 9,
        read: 3,
        last: key_of("a"),
        ..Keyset::default()
    };
    // "c" was deleted: the row at offset 2 is now the one after "a".
    let page = events_page(&[(Some("z"), 8), (Some("y"), 8)]);
    assert!(boundary_moved(Some(&at), &rows(&page)));
    // A row without an id at the top is not the row read last either.
    assert!(boundary_moved(Some(&at), &rows(&events_page(&[(None, 8)]))));
    // The top of a second is not checked.
    let top = Keyset {
        end: T + 9,
        read: 0,
        last: None,
        ..Keyset::default()
    };
    assert!(!boundary_moved(Some(&top), &rows(&page)));
    assert!(!boundary_moved(None, &rows(&page)));
}

#[test]
fn failed_checks_are_counted_only_inside_one_second() {
    let at = Keyset {
        end: T + 9,
        read: 0,
        last: None,
        resets: 2,
    };
    // Still in second 8: the count stays, so repeated failures end in Sentry's cursors.
    let page = events_page(&[(Some("c"), 8), (Some("b"), 8)]);
    assert_eq!(next_keyset(Some(&at), at.end, &rows(&page)).resets, 2);
    // On to an older second: a fresh start.
    let page = events_page(&[(Some("c"), 8), (Some("b"), 7)]);
    assert_eq!(next_keyset(Some(&at), at.end, &rows(&page)).resets, 0);
    // A page whose only row with a time is the one read again does not move on.
    let at = Keyset {
        end: T + 9,
        read: 3,
        last: key_of("c"),
        resets: 0,
    };
    let page = events_page(&[(Some("c"), 8), (None, 8), (None, 8)]);
    let next = next_keyset(Some(&at), at.end, &rows(&page));
    assert!(next.end == at.end && next.read <= at.read, "{next:?}");
}

#[test]
fn positions_resume_once_a_page_read_by_offset_reaches_an_older_second() {
    assert_eq!(cursor_offset("0:250:0"), Some(250));
    assert_eq!(cursor_offset("0:0:0"), Some(0));
    assert_eq!(cursor_offset("garbage"), None);
    assert!(!reaches_older_second(&rows(&events_page(&[
        (Some("c"), 8),
        (Some("b"), 8)
    ]))));
    let page = events_page(&[(Some("c"), 8), (None, 8), (Some("b"), 7), (Some("a"), 7)]);
    assert!(reaches_older_second(&rows(&page)));
    // Asked at offset 40 of "before second 9": second 7 starts inside the page, so only
    // its rows count, wherever the page began.
    let at = Keyset {
        end: T + 9,
        read: 41,
        ..Keyset::default()
    };
    assert_eq!(
        next_keyset(Some(&at), at.end, &rows(&page)),
        Keyset {
            end: T + 8,
            read: 2,
            last: key_of("a"),
            ..Keyset::default()
        }
    );
}

#[test]
fn rows_without_an_id_keep_their_place_in_the_offsets() {
    // A bad row inside second 8 counts; one after the last row with a time is read again.
    let page = events_page(&[
        (Some("c"), 9),
        (Some("b"), 8),
        (None, 8),
        (Some("a"), 8),
        (None, 8),
    ]);
    let next = next_keyset(None, T + 60, &rows(&page));
    assert_eq!(
        next,
        Keyset {
            end: T + 9,
            read: 3,
            last: key_of("a"),
            ..Keyset::default()
        }
    );
}

#[test]
fn a_second_pass_adds_to_the_first() {
    let first = StreamSummary {
        stream: "events",
        window_start: Some("a".into()),
        window_end: Some("b".into()),
        pages: 3,
        events: 250,
        objects: vec![ObjectSummary {
            name: "o1".into(),
            events: 250,
            bytes: 10,
            already_present: false,
        }],
        bytes: 10,
        waited_secs: 0.5,
        warnings: vec!["w".into()],
        ..StreamSummary::default()
    };
    assert!(first.wants_more_time());
    let mut merged = first.clone();
    merged.absorb(StreamSummary {
        stream: "events",
        window_start: Some("b".into()),
        window_end: Some("c".into()),
        window_finished: true,
        up_to_date: true,
        watermark: Some("c".into()),
        pages: 2,
        events: 100,
        objects: vec![ObjectSummary {
            name: "o2".into(),
            events: 100,
            bytes: 4,
            already_present: false,
        }],
        bytes: 4,
        waited_secs: 0.25,
        warnings: vec!["w".into(), "v".into()],
        ..StreamSummary::default()
    });
    assert_eq!(merged.window_start.as_deref(), Some("a"));
    assert_eq!(merged.window_end.as_deref(), Some("c"));
    assert_eq!((merged.pages, merged.events, merged.bytes), (5, 350, 14));
    assert_eq!(merged.objects.len(), 2);
    assert_eq!(merged.waited_secs, 0.75);
    assert_eq!(merged.warnings, vec!["w", "v"]);
    assert!(merged.window_finished && !merged.wants_more_time());
    let failed = StreamSummary {
        error: Some("Sentry: 403".into()),
        ..StreamSummary::default()
    };
    assert!(!failed.wants_more_time());
}

#[test]
fn an_objects_name_tells_its_windows_start() {
    let t = crate::time::parse_rfc3339("2026-12-03T13:47:35Z").unwrap();
    for name in [
        "sentry/events/2026/12/03/16/acme-events-20261203T134735Z-20261203T164635Z-00000-221f1f1a840c247d.ndjson",
        "p/events/2026/12/03/16/my-org-2-events.s1of4-20261203T134735Z-20261203T164635Z-00003-221f1f1a840c247d.ndjson.gz",
    ] {
        assert_eq!(window_start_of(name), Some(t), "{name}");
    }
    for name in [
        "sentry/events/2026/12/03/16/notes.txt",
        "sentry/events/2026/12/03/16/acme-events-2026-12-03-x-y.ndjson",
        "",
    ] {
        assert_eq!(window_start_of(name), None, "{name}");
    }
}

#[test]
fn deleted_projects_leave_the_comparison_and_partial_deletions_distrust_it() {
    use std::collections::BTreeSet;
    let delivered: HashMap<u64, u64> = [(1, 50), (2, 20), (QUARANTINED, 3)].into();
    // Project 2 is gone from Sentry's counts: it leaves both sides.
    let counted: BTreeMap<u64, u64> = [(1, 70)].into();
    assert_eq!(
        deleted_projects(&delivered, Some(&counted)),
        Some(BTreeSet::from([2]))
    );
    // Project 2 lost only some rows: no per-project answer can say where late rows are.
    let counted: BTreeMap<u64, u64> = [(1, 50), (2, 5)].into();
    assert_eq!(deleted_projects(&delivered, Some(&counted)), None);
    // Rows delivered before rows carried their project, or no per-project count: no trust.
    let legacy: HashMap<u64, u64> = [(ORG_WIDE, 10)].into();
    assert_eq!(deleted_projects(&legacy, Some(&counted)), None);
    assert_eq!(deleted_projects(&delivered, None), None);
    // What is compared then: the rows of the projects still there (items set apart never).
    let mut seen = SeenSet::default();
    for (n, p) in [(0, 1), (1, 1), (2, 2), (3, QUARANTINED)] {
        seen.insert_key(seen_key(&format!("r{n}")), 1_790_000_000 + n, p);
    }
    let all = Window {
        start: 1_790_000_000,
        end: 1_790_000_010,
    };
    assert_eq!(delivered_except(&seen, all, &BTreeSet::new()), 3);
    assert_eq!(delivered_except(&seen, all, &BTreeSet::from([2])), 2);
}
