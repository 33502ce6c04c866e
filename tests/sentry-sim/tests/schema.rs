//! The simulator answers in Sentry's published shape: its responses validate against the
//! response schemas in `shared/fixtures/sentry-openapi/endpoints-subset.json` (Sentry's own
//! OpenAPI document) and carry every field of the published examples.

use std::path::PathBuf;

use sentry_sim::{Rng, Sim, SimClock, SimOptions};
use serde_json::Value;

fn fixtures() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/sentry-openapi/endpoints-subset.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (shared/ must sit beside the repository)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("the fixture is JSON")
}

fn response(doc: &Value, path: &str) -> (Value, Value) {
    let r = &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"];
    let example = r["examples"]
        .as_object()
        .and_then(|e| e.values().next())
        .map(|e| e["value"].clone())
        .unwrap_or(Value::Null);
    (r["schema"].clone(), example)
}

/// The subset of OpenAPI 3.0 schema rules the document uses: type, nullable, required,
/// properties, additionalProperties, items, enum, anyOf.
fn validate(value: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(any) = schema["anyOf"].as_array() {
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            validate(value, s, at, &mut e);
            e.is_empty()
        });
        if !ok {
            errors.push(format!("{at}: matches no anyOf branch"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => {
            errors.push(format!("{at}: the validator does not know type {other}"));
            return;
        }
    };
    if !ok {
        errors.push(format!("{at}: expected {}, got {value}", schema["type"]));
        return;
    }
    if let Some(obj) = value.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            let key = req.as_str().unwrap_or_default();
            if !obj.contains_key(key) {
                errors.push(format!("{at}: missing required {key}"));
            }
        }
        for (k, v) in obj {
            match schema["properties"].get(k) {
                Some(s) => validate(v, s, &format!("{at}.{k}"), errors),
                None if schema["additionalProperties"].is_object() => validate(
                    v,
                    &schema["additionalProperties"],
                    &format!("{at}.{k}"),
                    errors,
                ),
                None => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            validate(item, &schema["items"], &format!("{at}[{i}]"), errors);
        }
    }
}

fn assert_valid(value: &Value, schema: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(value, schema, what, &mut errors);
    assert!(
        errors.is_empty(),
        "{what} does not match Sentry's schema:\n{}",
        errors.join("\n")
    );
}

/// Every key of the example object is in the simulated object.
fn assert_has_example_fields(value: &Value, example: &Value, what: &str) {
    let (Some(v), Some(e)) = (value.as_object(), example.as_object()) else {
        panic!("{what}: not objects");
    };
    let missing: Vec<&String> = e.keys().filter(|k| !v.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{what} lacks fields of Sentry's example: {missing:?}"
    );
}

fn sim() -> Sim {
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    sim.generate(&mut Rng::new(1), 1, 5, now - 3600, now - 600, 0.0, 60);
    sim
}

fn get(sim: &Sim, path: &str, query: &str) -> Value {
    let auth = format!("Bearer {}", sim.options.token);
    let resp = sim.respond("GET", path, query, &auth);
    assert_eq!(
        resp.status,
        200,
        "{path}?{query}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    serde_json::from_slice(&resp.body).expect("JSON body")
}

#[test]
fn organization_details_match_the_schema() {
    let doc = fixtures();
    let (schema, example) = response(&doc, "/api/0/organizations/{organization_id_or_slug}/");
    let v = get(&sim(), "/api/0/organizations/acme/", "");
    assert_valid(&v, &schema, "organization details");
    for key in ["id", "slug", "name", "links", "dateCreated", "status"] {
        assert!(example.get(key).is_some() && v.get(key).is_some(), "{key}");
    }
    assert!(v["links"]["regionUrl"].is_string());
}

#[test]
fn the_project_list_matches_the_schema() {
    let doc = fixtures();
    let (schema, example) = response(
        &doc,
        "/api/0/organizations/{organization_id_or_slug}/projects/",
    );
    let v = get(
        &sim(),
        "/api/0/organizations/acme/projects/",
        "per_page=100",
    );
    assert_valid(&v, &schema, "project list");
    assert_has_example_fields(&v[0], &example[0], "a project");
}

#[test]
fn project_events_simple_and_full_match_the_schema() {
    let doc = fixtures();
    let sim = sim();
    let (schema, example) = response(
        &doc,
        "/api/0/projects/{organization_id_or_slug}/{project_id_or_slug}/events/",
    );
    let v = get(&sim, "/api/0/projects/acme/web/events/", "per_page=100");
    assert_eq!(v.as_array().map(Vec::len), Some(5));
    assert_valid(&v, &schema, "project events");
    assert_has_example_fields(&v[0], &example[0], "a simple event");

    // full=true items have the single-event shape.
    let (single, single_example) = response(
        &doc,
        "/api/0/projects/{organization_id_or_slug}/{project_id_or_slug}/events/{event_id}/",
    );
    let full = get(&sim, "/api/0/projects/acme/1/events/", "full=true");
    for (i, item) in full.as_array().unwrap().iter().enumerate() {
        assert_valid(item, &single, &format!("full event {i}"));
        assert_has_example_fields(item, &single_example, "a full event");
    }
}

#[test]
fn discover_counts_match_the_schema() {
    let doc = fixtures();
    let (schema, _) = response(
        &doc,
        "/api/0/organizations/{organization_id_or_slug}/events/",
    );
    let v = get(
        &sim(),
        "/api/0/organizations/acme/events/",
        "field=project.id&field=count()&project=-1&dataset=errors",
    );
    assert_valid(&v, &schema, "Discover");
    assert_eq!(v["data"][0]["project.id"], 1);
    assert_eq!(v["data"][0]["count()"], 5);
    assert_eq!(v["meta"]["dataScanned"], "full");
}

#[test]
fn the_validator_rejects_what_sentry_would_not_send() {
    let doc = fixtures();
    let (schema, _) = response(
        &doc,
        "/api/0/projects/{organization_id_or_slug}/{project_id_or_slug}/events/",
    );
    let mut v = get(&sim(), "/api/0/projects/acme/web/events/", "");
    v[0].as_object_mut().unwrap().remove("eventID");
    v[1]["projectID"] = Value::from(1);
    let mut errors = Vec::new();
    validate(&v, &schema, "events", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn paging_and_errors_follow_sentry() {
    let sim = sim();
    let auth = format!("Bearer {}", sim.options.token);
    let r = sim.respond(
        "GET",
        "/api/0/projects/acme/web/events/",
        "per_page=2",
        &auth,
    );
    let link = r
        .headers
        .iter()
        .find(|(n, _)| n == "link")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        link.starts_with("<https://acme.sentry.example/api/0/projects/acme/web/events/?"),
        "{link}"
    );
    assert!(
        link.contains(r#"rel="previous"; results="false"; cursor="0:0:1""#),
        "{link}"
    );
    assert!(
        link.contains(r#"rel="next"; results="true"; cursor="0:2:0""#),
        "{link}"
    );
    let r = sim.respond(
        "GET",
        "/api/0/projects/acme/web/events/",
        "per_page=2&cursor=0:4:0",
        &auth,
    );
    let link = r
        .headers
        .iter()
        .find(|(n, _)| n == "link")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(link.contains(r#"rel="next"; results="false""#), "{link}");

    let r = sim.respond(
        "GET",
        "/api/0/projects/acme/web/events/",
        "per_page=101",
        &auth,
    );
    assert_eq!(
        (
            r.status,
            String::from_utf8_lossy(&r.body).contains("Cannot exceed 100")
        ),
        (400, true)
    );
    let r = sim.respond(
        "GET",
        "/api/0/projects/acme/web/events/",
        "start=2026-01-01T00:00:00",
        &auth,
    );
    assert_eq!(
        (
            r.status,
            String::from_utf8_lossy(&r.body).contains("Invalid date range")
        ),
        (400, true)
    );
    let r = sim.respond(
        "GET",
        "/api/0/projects/acme/web/events/",
        "",
        "Bearer wrong",
    );
    assert_eq!(r.status, 401);

    let no_views = Sim::new(
        SimOptions {
            global_views: false,
            ..SimOptions::default()
        },
        SimClock::default(),
    );
    let r = no_views.respond(
        "GET",
        "/api/0/organizations/acme/events/",
        "field=project.id&field=count()&project=-1",
        &auth,
    );
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("You cannot view events from multiple projects.")
    );
}

#[test]
fn sixty_project_event_requests_a_minute_then_a_429_without_retry_after() {
    let sim = sim();
    let auth = format!("Bearer {}", sim.options.token);
    // Start at the beginning of a minute so all requests share one window.
    let into = sim.clock.now().rem_euclid(60);
    sim.clock.advance(60 - into);
    for i in 0..60 {
        let r = sim.respond("GET", "/api/0/projects/acme/web/events/", "", &auth);
        assert_eq!(r.status, 200, "request {i}");
        let remaining = r
            .headers
            .iter()
            .find(|(n, _)| n == "x-sentry-rate-limit-remaining")
            .unwrap()
            .1
            .clone();
        assert_eq!(remaining, (59 - i).to_string());
    }
    let r = sim.respond("GET", "/api/0/projects/acme/web/events/", "", &auth);
    assert_eq!(r.status, 429);
    assert!(r.headers.iter().all(|(n, _)| n != "retry-after"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body
        .as_str()
        .unwrap()
        .starts_with("You are attempting to use this endpoint too frequently"));
    assert_eq!(sim.counters().avoidable_429s, 1);
}

fn link_next(resp: &sentry_sim::SimResponse) -> Option<String> {
    let link = resp
        .headers
        .iter()
        .find(|(n, _)| n == "link")
        .map(|(_, v)| v.clone())?;
    let next = link.split(", <").nth(1)?;
    if !next.contains("results=\"true\"") {
        return None;
    }
    let c = next.split("cursor=\"").nth(1)?;
    Some(c.trim_end_matches('"').to_string())
}

#[test]
fn issues_match_the_schema_and_the_default_query_hides_resolved_ones() {
    let doc = fixtures();
    let (schema, example) = response(
        &doc,
        "/api/0/organizations/{organization_id_or_slug}/issues/",
    );
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    sim.generate(&mut Rng::new(3), 1, 400, now - 7200, now - 600, 0.0, 60);
    let all = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        "query=&sort=date&project=-1",
    );
    assert_valid(&all, &schema, "issues");
    assert_has_example_fields(&all[0], &example[0], "an issue");
    let default = get(&sim, "/api/0/organizations/acme/issues/", "sort=date");
    let statuses = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(statuses(&all).iter().any(|s| s == "resolved"));
    assert!(statuses(&default).iter().all(|s| s == "unresolved"));
    assert!(default.as_array().unwrap().len() < all.as_array().unwrap().len());
    // Newest lastSeen first; collapse=stats drops the histogram.
    let seen: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["lastSeen"].as_str().unwrap())
        .collect();
    assert!(seen.windows(2).all(|w| w[0] >= w[1]), "{seen:?}");
    let collapsed = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        "query=&collapse=stats",
    );
    assert!(collapsed[0].get("stats").is_none() && collapsed[0].get("lifetime").is_some());
}

#[test]
fn issue_score_cursors_do_not_shift_when_an_issue_moves() {
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    sim.generate(&mut Rng::new(4), 1, 2000, now - 7200, now - 3600, 0.0, 60);
    let auth = format!("Bearer {}", sim.options.token);
    let q = "query=&sort=date&limit=10";
    let first = sim.respond("GET", "/api/0/organizations/acme/issues/", q, &auth);
    let page1: Value = serde_json::from_slice(&first.body).unwrap();
    let cursor = link_next(&first).expect("a next page");
    // The newest issue is seen again: it moves to the top, out of the pages still to read.
    let moved = &page1[0];
    let group: u64 = moved["id"].as_str().unwrap().parse::<u64>().unwrap() % 1_000_000;
    sim.add_event(sentry_sim::Event {
        event_id: format!("{:032x}", 7),
        project_id: 1,
        group_id: group,
        date_created: now - 60,
        received_at: now - 60,
        title: "again".into(),
        padding: 0,
    });
    let second = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        &format!("{q}&cursor={cursor}"),
    );
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (ids(&page1), ids(&second));
    assert_eq!(b.len(), 10);
    assert!(b.iter().all(|id| !a.contains(id)), "{a:?} {b:?}");
    // The page continues exactly where the first stopped, as if nothing had moved.
    let all = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        "query=&sort=date&limit=100",
    );
    let expected: Vec<String> = ids(&all)[1..].iter().skip(9).take(10).cloned().collect();
    assert_eq!(b, expected);
}

#[test]
fn audit_logs_are_rows_newest_first_with_date_cursors_and_need_org_write() {
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    let now = sim.clock.now();
    sim.generate_audit(&mut Rng::new(5), 250, now - 3600, now - 60);
    let auth = format!("Bearer {}", sim.options.token);
    let mut cursor: Option<String> = None;
    let mut ids = Vec::new();
    let mut times = Vec::new();
    loop {
        let q = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("cursor={c}"));
        let r = sim.respond("GET", "/api/0/organizations/acme/audit-logs/", &q, &auth);
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["options"].is_array());
        for row in v["rows"].as_array().unwrap() {
            for key in [
                "id",
                "actor",
                "event",
                "ipAddress",
                "note",
                "targetObject",
                "targetUser",
                "data",
                "dateCreated",
            ] {
                assert!(row.get(key).is_some(), "{key}");
            }
            ids.push(row["id"].as_str().unwrap().to_string());
            times.push(row["dateCreated"].as_str().unwrap().to_string());
        }
        match link_next(&r) {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(ids.len(), 250);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 250);
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    sim.forbid("audit-logs");
    let r = sim.respond("GET", "/api/0/organizations/acme/audit-logs/", "", &auth);
    assert_eq!(r.status, 403);
}

#[test]
fn explore_datasets_match_the_schema_and_stop_at_the_offset_cap() {
    let doc = fixtures();
    let (schema, _) = response(
        &doc,
        "/api/0/organizations/{organization_id_or_slug}/events/",
    );
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    let mut rng = Rng::new(6);
    for d in sentry_sim::DATASETS {
        sim.generate_rows(&mut rng, d, 1, 50, now - 3600, now - 600, 0.0, 60);
    }
    for (d, fields) in [
        (
            "transactions",
            "field=id&field=timestamp&field=transaction&field=transaction.duration",
        ),
        (
            "spans",
            "field=id&field=timestamp&field=span.op&field=span.duration",
        ),
        (
            "logs",
            "field=id&field=timestamp&field=message&field=severity",
        ),
    ] {
        let v = get(
            &sim,
            "/api/0/organizations/acme/events/",
            &format!("{fields}&dataset={d}&project=-1&sort=timestamp&per_page=100"),
        );
        assert_valid(&v, &schema, d);
        let rows = v["data"].as_array().unwrap();
        assert_eq!(rows.len(), 50, "{d}");
        assert_eq!(
            rows[0].as_object().unwrap().len(),
            4,
            "{d}: only the fields asked for"
        );
        let ts: Vec<&str> = rows
            .iter()
            .map(|r| r["timestamp"].as_str().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{d}: ascending");
        assert!(ts[0].ends_with("+00:00"));
    }
    let auth = format!("Bearer {}", sim.options.token);
    let bad = sim.respond(
        "GET",
        "/api/0/organizations/acme/events/",
        "field=id&field=nonsense&dataset=spans",
        &auth,
    );
    assert_eq!(bad.status, 400);
    // 10,050 rows: offset paging ends at 10,000 and says there is no more.
    sim.generate_rows(&mut rng, "logs", 1, 10_000, now - 3600, now - 600, 0.0, 60);
    let r = sim.respond(
        "GET",
        "/api/0/organizations/acme/events/",
        "field=id&field=timestamp&dataset=logs&sort=timestamp&per_page=100&cursor=0:9900:0",
        &auth,
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 100);
    assert_eq!(link_next(&r), None);
    sim.set_sampled(true);
    let v = get(
        &sim,
        "/api/0/organizations/acme/events/",
        "field=id&field=timestamp&dataset=logs",
    );
    assert_eq!(v["meta"]["dataScanned"], "partial");
}
