//! Sentry webhooks through `collector-host serve` and cron runs: the simulator changes issues
//! (with the users who did it) and announces events it also serves by API, and sends each
//! delivery as Sentry does, with retries, duplicates, forged signatures and stale timestamps.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use sentry_sim::webhooks::{deliveries, post, Hook, Mischief};
use sentry_sim::Event;
use serde_json::Value;

const SECRET: &str = "0f4c2a9be1d8477f9a3c5e6b7d8e9f00112233445566778899aabbccddeeff00";
const ROUTE: &str = "/sentry/webhook";
const ACTIONS: [&str; 4] = ["resolved", "assigned", "archived", "unresolved"];

/// Posts every delivery at once; asserts Sentry's own get 200 and the hostile ones 401.
async fn deliver(served: &Served, hooks: &[Hook]) {
    let tasks: Vec<_> = hooks
        .iter()
        .cloned()
        .map(|h| {
            let addr = served.addr;
            tokio::spawn(async move { (post(addr, ROUTE, &h).await.expect("posted"), h) })
        })
        .collect();
    for task in tasks {
        let ((status, body), hook) = task.await.expect("the task");
        let want = if hook.genuine { 200 } else { 401 };
        assert_eq!(status, want, "{} delivery: {body}", hook.resource);
    }
}

/// An event's `error` webhook, as Sentry sends it (retries and the rest drawn).
fn announce(sim: &sentry_sim::Sim, e: &Event, t: i64, rng: &mut sentry_sim::Rng) -> Vec<Hook> {
    let body = sim.error_webhook(e);
    deliveries("error", &body, SECRET, t, rng, Mischief::default())
}

fn inbox_keys(rig: &Rig) -> Vec<String> {
    rig.kv_entries()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("v1/inbox/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_changes_and_error_events_land_exactly_once_whichever_path_carried_them() {
    let mut rig = Rig::without_rate_limits(3).await;
    rig.set("sentry_webhook_secret", SECRET);
    rig.set("lookback", "2h");
    let start = rig.clock.now() - 2 * 3600;
    let mut rng = rng(18);
    let now = rig.clock.now();
    for p in 1..=3 {
        rig.sim
            .generate(&mut rng, p, 40, now - 3600, now - 120, 0.0, 0);
    }
    rig.run_ok().await;
    let served = rig.serve().await;
    // (issue, action, actor) of every change a user made.
    let mut changes: BTreeSet<(String, String, String)> = BTreeSet::new();
    // (issue, text, author) of every comment; (rule, event) of every alert.
    let mut comments: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut alerts: BTreeSet<(String, String)> = BTreeSet::new();
    let mut announced = 0usize;
    let mut pulled_first = 0usize;
    let mut actor = 100u64;
    let mut late_retries: Vec<(u64, &str, (u64, String))> = Vec::new();
    let mut retried_with_new_body = 0;
    for round in 0..4 {
        let t = rig.clock.now();
        let new = generate_new(&rig.sim, &mut rng, 3, 12, (t - 50, t - 2));
        let mut hooks = Vec::new();
        let old: Vec<Event> = rig
            .sim
            .all_events()
            .into_iter()
            .filter(|e| !new.contains(e) && e.date_created > t - 1800)
            .collect();
        // Half of the new events are announced now, before any pull reads them; some events
        // the pull already delivered (of the last half hour, inside the overlap) only now
        // (Sentry's queue was slow): the pull came first.
        for (events, share, count) in [(&new, 0.5, &mut announced), (&old, 0.05, &mut pulled_first)]
        {
            for e in events
                .iter()
                .filter(|_| rng.chance(share))
                .collect::<Vec<_>>()
            {
                *count += 1;
                hooks.extend(announce(&rig.sim, e, t, &mut rng));
            }
        }
        for (issue, action, (id, name)) in std::mem::take(&mut late_retries) {
            let body = rig.sim.issue_webhook(issue, action, (id, &name)).unwrap();
            let hook = deliveries("issue", &body, SECRET, t, &mut rng, Mischief::NONE).remove(0);
            retried_with_new_body += 1;
            hooks.push(hook);
        }
        let issues = rig.sim.issue_versions(t);
        for _ in 0..5 {
            let issue = &issues[rng.below(issues.len() as u64) as usize];
            let action = ACTIONS[rng.below(4) as usize];
            actor += 1;
            let name = format!("user-{actor}");
            let body = rig
                .sim
                .change_issue(issue.id.parse().unwrap(), action, (actor, &name))
                .expect("the issue exists");
            changes.insert((issue.id.clone(), action.to_string(), name.clone()));
            hooks.extend(deliveries(
                "issue",
                &body,
                SECRET,
                t,
                &mut rng,
                Mischief::default(),
            ));
            // Sentry's task retries a change minutes later with the issue serialized again
            // (new events since moved its count and lastSeen): a different body, one change.
            if rng.chance(0.3) {
                late_retries.push((issue.id.parse().unwrap(), action, (actor, name)));
            }
        }
        // A comment on an issue, and an alert rule an event triggered.
        let issue = &issues[rng.below(issues.len() as u64) as usize];
        actor += 1;
        let name = format!("user-{actor}");
        let text = format!("looked at it in round {round}\nnext: \"rotate keys\" \u{1F512}");
        let body = rig
            .sim
            .comment(issue.id.parse().unwrap(), actor, &text, (actor, &name))
            .unwrap();
        comments.insert((issue.id.clone(), text, name));
        hooks.extend(deliveries(
            "comment",
            &body,
            SECRET,
            t,
            &mut rng,
            Mischief::default(),
        ));
        let rule = format!("Credential stuffing, round {round}");
        let body = rig.sim.event_alert(&new[0], &rule);
        alerts.insert((rule, new[0].event_id.clone()));
        hooks.extend(deliveries(
            "event_alert",
            &body,
            SECRET,
            t,
            &mut rng,
            Mischief::default(),
        ));
        deliver(&served, &hooks).await;
        assert!(
            !inbox_keys(&rig).is_empty(),
            "round {round}: the deliveries wait in the inbox"
        );
        rig.clock.advance(90);
        let s = rig.run_ok().await;
        assert!(
            s["webhooks"]["error"].is_null(),
            "round {round}: {}",
            s["webhooks"]
        );
    }
    // Settle: past the lag, the pull reads the last minutes.
    rig.clock.advance(300);
    rig.run_ok().await;
    assert!(inbox_keys(&rig).is_empty(), "the inbox is drained");

    // Every change once, with its actor; nothing forged or stale.
    let lines = rig.stream_lines("issue_activity").await;
    let mut got: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut got_comments = Vec::new();
    for (v, name) in &lines {
        assert!(
            v["payload"]["actor"].get("forged").is_none(),
            "{name}: a forged delivery was kept"
        );
        if v["resource"] == "comment" {
            got_comments.push((
                v["issue"]["id"].as_u64().unwrap_or_default().to_string(),
                v["comment"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["actor"]["name"].as_str().unwrap_or_default().to_string(),
            ));
            continue;
        }
        assert_eq!(v["resource"], "issue");
        assert!(v["request_id"].as_str().is_some_and(|r| r.len() == 32));
        assert_eq!(v["actor"], v["payload"]["actor"]);
        let key = (
            v["issue"]["id"].as_str().unwrap_or_default().to_string(),
            v["action"].as_str().unwrap_or_default().to_string(),
            v["actor"]["name"].as_str().unwrap_or_default().to_string(),
        );
        *got.entry(key).or_default() += 1;
    }
    let repeated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "changes written twice: {repeated:?}");
    let got: BTreeSet<_> = got.into_keys().collect();
    assert_eq!(got, changes, "every change, once, with who made it");
    got_comments.sort();
    let want: Vec<_> = comments.into_iter().collect();
    assert_eq!(got_comments, want, "every comment once, its text intact");
    let mut got_alerts: Vec<(String, String)> = rig
        .stream_lines("alerts")
        .await
        .into_iter()
        .map(|(v, _)| {
            assert_eq!(
                (&v["resource"], &v["action"]),
                (&"event_alert".into(), &"triggered".into())
            );
            (
                v["alert"]["rule"].as_str().unwrap_or_default().to_string(),
                v["alert"]["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    got_alerts.sort();
    assert_eq!(
        got_alerts,
        alerts.into_iter().collect::<Vec<_>>(),
        "every alert once"
    );

    // Every event once in events/, whichever path carried it.
    let end = rig.clock.now();
    let truth = rig.sim.truth(start, end, end);
    let delivered = rig.delivered().await;
    assert_exact(&delivered, &truth);
    let by_webhook = delivered
        .iter()
        .filter(|(_, _, name)| name.contains("events.webhook-"))
        .count();
    assert!(
        by_webhook > 0 && by_webhook <= announced,
        "{by_webhook} events written from {announced} announced"
    );
    assert!(pulled_first > 0, "the test announced events the pull had");
    assert!(
        retried_with_new_body > 0,
        "the test retried changes with rebuilt bodies"
    );
    println!(
        "{} changes, {} events ({by_webhook} by webhook of {announced} announced, {pulled_first} announced after the pull)",
        changes.len(),
        truth.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deliveries_keep_nothing_and_the_status_page_counts_them() {
    let mut rig = Rig::without_rate_limits(1).await;
    rig.set("sentry_webhook_secret", SECRET);
    let mut rng = rng(7);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 5, now - 600, now - 120, 0.0, 0);
    let served = rig.serve().await;
    let issue: u64 = rig.sim.issue_versions(now)[0].id.parse().unwrap();
    let body = rig.sim.change_issue(issue, "resolved", (5, "eve")).unwrap();
    let all = Mischief {
        retry: 0.0,
        duplicate: 0.0,
        forged: 1.0,
        stale: 1.0,
    };
    let hooks: Vec<Hook> = deliveries("issue", &body, SECRET, now, &mut rng, all)
        .into_iter()
        .filter(|h| !h.genuine)
        .collect();
    assert_eq!(hooks.len(), 2);
    // One at a time: the counters are read, added to and written back (concurrent refusals
    // may each miss the other's increment; they are a display, and each is logged).
    for hook in &hooks {
        deliver(&served, std::slice::from_ref(hook)).await;
        // Counted at most once a second (a flood must not become KV writes).
        rig.clock.advance(1);
    }
    // Oversized (the route's cap is 1,000,000 bytes), and malformed but signed.
    let mut big = hooks[0].clone();
    big.body = vec![b' '; 1_000_001];
    let (status, _) = post(served.addr, ROUTE, &big).await.unwrap();
    assert_eq!(status, 413);
    rig.clock.advance(1);
    let mut odd = hooks[0].clone();
    odd.body = br#"{"action": "resolved"}"#.to_vec();
    odd.signature = sentry_sim::webhooks::sign(SECRET, &odd.body);
    odd.timestamp = now;
    assert_eq!(post(served.addr, ROUTE, &odd).await.unwrap().0, 400);
    assert!(inbox_keys(&rig).is_empty(), "nothing kept");
    let status = served
        .request("GET", "/status", &[("accept", "application/json")], b"")
        .await;
    // /status needs the push credentials; open them locally for the check.
    assert_eq!(status.status, 401);
    drop(served);
    rig.set("allow_unauthenticated", "true");
    let served = rig.serve().await;
    let status = served
        .request("GET", "/status", &[("accept", "application/json")], b"")
        .await;
    let v: Value = serde_json::from_slice(&status.body).unwrap();
    let refused = &v["webhook_inbox"]["refused"];
    assert_eq!(
        (
            &refused["bad_signature"],
            &refused["stale_timestamp"],
            &refused["too_large"],
            &refused["malformed"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{v}"
    );
    assert!(!String::from_utf8_lossy(&status.body).contains(SECRET));
    // A run writes nothing from them.
    rig.run_ok().await;
    assert!(rig.stream_lines("issue_activity").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_flush_writes_at_once_and_a_failed_write_waits_in_the_inbox() {
    let mut rig = Rig::without_rate_limits(1).await;
    rig.set("sentry_webhook_secret", SECRET);
    rig.set("webhook_inline", "true");
    let mut rng = rng(9);
    let now = rig.clock.now();
    rig.sim
        .generate(&mut rng, 1, 5, now - 600, now - 120, 0.0, 0);
    let issue: u64 = rig.sim.issue_versions(now)[0].id.parse().unwrap();
    let none = Mischief::NONE;
    let served = rig.serve().await;
    let body = rig.sim.change_issue(issue, "assigned", (1, "ann")).unwrap();
    let hook = deliveries("issue", &body, SECRET, now, &mut rng, none).remove(0);
    let (status, answer) = post(served.addr, ROUTE, &hook).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"inline\": \"written\""), "{answer}");
    assert!(inbox_keys(&rig).is_empty(), "written, so not kept");
    assert_eq!(rig.stream_lines("issue_activity").await.len(), 1);
    // Sentry's retry of it after the object was written: kept, then dropped by the drain.
    let mut retry = hook.clone();
    retry.request_id = "0123456789abcdef0123456789abcdef".into();
    retry.timestamp += 5;
    drop(served);

    // Cloud Storage unreachable: the delivery is kept and written by the next good run.
    let gcs_url = rig.gcs.url.clone();
    rig.set("gcs_endpoint", "http://127.0.0.1:9");
    let served = rig.serve().await;
    let body = rig.sim.change_issue(issue, "resolved", (2, "bob")).unwrap();
    let hook = deliveries("issue", &body, SECRET, now, &mut rng, none).remove(0);
    let started = std::time::Instant::now();
    let (status, answer) = post(served.addr, ROUTE, &hook).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("left in the inbox"), "{answer}");
    assert!(took.as_secs_f64() < 1.0, "answered in {took:?}");
    assert_eq!(post(served.addr, ROUTE, &retry).await.unwrap().0, 200);
    assert_eq!(inbox_keys(&rig).len(), 2);
    drop(served);
    rig.set("gcs_endpoint", &gcs_url);
    rig.clock.advance(60);
    let s = rig.run_ok().await;
    assert_eq!(s["webhooks"]["duplicates"], 1, "{}", s["webhooks"]);
    assert!(inbox_keys(&rig).is_empty());
    let lines = rig.stream_lines("issue_activity").await;
    let mut who: Vec<&str> = lines
        .iter()
        .map(|(v, _)| v["actor"]["name"].as_str().unwrap())
        .collect();
    who.sort();
    assert_eq!(who, ["ann", "bob"], "each change once");
}
