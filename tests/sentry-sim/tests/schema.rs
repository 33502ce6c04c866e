//! The simulator answers in Sentry's published shape: its responses are checked field by field
//! against `tests/data/sentry-responses.txt` (the facts of Sentry's own OpenAPI document, in
//! our notation: types, required and nullable fields, allowed values) and carry every field of
//! Sentry's published examples.

use std::collections::BTreeMap;

use sentry_sim::{Rng, Sim, SimClock, SimOptions};
use serde_json::Value;

/// What a JSON value must be.
#[derive(Debug, Clone)]
struct Shape {
    kind: Kind,
    nullable: bool,
    one_of: Option<Vec<Value>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Any,
    String,
    DateTime,
    Integer,
    Number,
    Boolean,
    /// Named fields (name, required, shape); other keys may appear.
    Object(Vec<(String, bool, Shape)>),
    /// Any keys; every value has the shape, when one is given.
    Map(Option<Box<Shape>>),
    Array(Option<Box<Shape>>),
}

/// One documented response: the body's shape and the keys of Sentry's example.
#[derive(Debug)]
struct Response {
    body: Shape,
    example_fields: Vec<String>,
}

/// One line of the notation below `response`: indent level, name, shape, required.
struct Line<'a> {
    depth: usize,
    name: &'a str,
    kind: &'a str,
    flags: Vec<&'a str>,
    number: usize,
}

fn documented() -> BTreeMap<String, Response> {
    parse_notation(include_str!("data/sentry-responses.txt"))
}

fn parse_notation(text: &str) -> BTreeMap<String, Response> {
    let mut out = BTreeMap::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .peekable();
    while let Some((n, line)) = lines.next() {
        let name = line
            .strip_prefix("response ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("line {}: expected `response NAME`: {line}", n + 1));
        let mut fields = Vec::new();
        let mut example_fields = Vec::new();
        while let Some((n, l)) = lines.next_if(|(_, l)| l.starts_with(' ')) {
            let indent = l.len() - l.trim_start().len();
            assert!(indent % 2 == 0, "line {}: odd indent: {l}", n + 1);
            let depth = indent / 2;
            let mut words = l.split_whitespace();
            let first = words.next().unwrap_or_default();
            if first == "example-fields" {
                example_fields.extend(words.map(str::to_string));
                continue;
            }
            fields.push(Line {
                depth,
                name: first,
                kind: words
                    .next()
                    .unwrap_or_else(|| panic!("line {}: no type: {l}", n + 1)),
                flags: words.collect(),
                number: n + 1,
            });
        }
        assert_eq!(
            fields.first().map(|f| f.name),
            Some("body"),
            "response {name}: the first field must be `body`"
        );
        let mut at = 0;
        let body = parse_shape(&fields, &mut at, 1);
        assert_eq!(at, fields.len(), "response {name}: a field outside `body`");
        assert!(
            !example_fields.is_empty(),
            "response {name}: no example-fields"
        );
        out.insert(
            name.to_string(),
            Response {
                body,
                example_fields,
            },
        );
    }
    out
}

fn parse_shape(fields: &[Line], at: &mut usize, depth: usize) -> Shape {
    let line = &fields[*at];
    assert_eq!(line.depth, depth, "line {}: unexpected indent", line.number);
    *at += 1;
    let mut nullable = false;
    let mut one_of = None;
    for flag in &line.flags {
        match *flag {
            "required" => {}
            "nullable" => nullable = true,
            f => {
                let values = f
                    .strip_prefix("one-of(")
                    .and_then(|v| v.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("line {}: unknown flag {f}", line.number));
                one_of = Some(
                    values
                        .split(',')
                        .map(|v| match v {
                            "null" => Value::Null,
                            v => Value::from(v),
                        })
                        .collect(),
                );
            }
        }
    }
    let children = |at: &mut usize| -> Vec<(String, bool, Shape)> {
        let mut out: Vec<(String, bool, Shape)> = Vec::new();
        while *at < fields.len() && fields[*at].depth > depth {
            let name = fields[*at].name.to_string();
            let number = fields[*at].number;
            assert!(
                !out.iter().any(|(n, _, _)| *n == name),
                "line {number}: {name} twice"
            );
            let required = fields[*at].flags.contains(&"required");
            out.push((name, required, parse_shape(fields, at, depth + 1)));
        }
        out
    };
    let only = |what: &str, at: &mut usize| -> Option<Box<Shape>> {
        let mut c = children(at);
        assert!(
            c.len() <= 1,
            "line {}: one `{what}` line at most",
            line.number
        );
        c.pop().map(|(name, _, shape)| {
            assert_eq!(name, what, "line {}: expected `{what}`", line.number);
            Box::new(shape)
        })
    };
    let kind = match line.kind {
        "any" => Kind::Any,
        "string" => Kind::String,
        "date-time" => Kind::DateTime,
        "integer" => Kind::Integer,
        "number" => Kind::Number,
        "boolean" => Kind::Boolean,
        "object" => {
            let fields = children(at);
            if let Some((name, _, _)) = fields.iter().find(|(n, _, _)| n == "*" || n == "[]") {
                panic!(
                    "line {}: `{name}` belongs under a map or an array",
                    line.number
                );
            }
            Kind::Object(fields)
        }
        "map" => Kind::Map(only("*", at)),
        "array" => Kind::Array(only("[]", at)),
        other => panic!("line {}: unknown type {other}", line.number),
    };
    if !matches!(kind, Kind::Object(_) | Kind::Map(_) | Kind::Array(_)) {
        assert!(
            *at >= fields.len() || fields[*at].depth <= depth,
            "line {}: a {} has no fields",
            line.number,
            line.kind
        );
    }
    Shape {
        kind,
        nullable,
        one_of,
    }
}

fn response<'a>(doc: &'a BTreeMap<String, Response>, name: &str) -> &'a Response {
    doc.get(name)
        .unwrap_or_else(|| panic!("no response {name} in sentry-responses.txt"))
}

fn validate(value: &Value, shape: &Shape, at: &str, errors: &mut Vec<String>) {
    if value.is_null() && shape.nullable {
        return;
    }
    if let Some(allowed) = &shape.one_of {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let ok = match &shape.kind {
        Kind::Any => true,
        Kind::String => value.is_string(),
        Kind::DateTime => value
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        Kind::Integer => value.is_i64() || value.is_u64(),
        Kind::Number => value.is_number(),
        Kind::Boolean => value.is_boolean(),
        Kind::Object(_) | Kind::Map(_) => value.is_object(),
        Kind::Array(_) => value.is_array(),
    };
    if !ok {
        errors.push(format!(
            "{at}: expected {:?}, got {value}",
            shape.kind_name()
        ));
        return;
    }
    match &shape.kind {
        Kind::Object(fields) => {
            let obj = value.as_object().expect("checked above");
            for (name, required, field) in fields {
                match obj.get(name) {
                    Some(v) => validate(v, field, &format!("{at}.{name}"), errors),
                    None if *required => errors.push(format!("{at}: missing required {name}")),
                    None => {}
                }
            }
        }
        Kind::Map(Some(values)) => {
            for (k, v) in value.as_object().expect("checked above") {
                validate(v, values, &format!("{at}.{k}"), errors);
            }
        }
        Kind::Array(Some(items)) => {
            for (i, item) in value.as_array().expect("checked above").iter().enumerate() {
                validate(item, items, &format!("{at}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

impl Shape {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Any => "any",
            Kind::String => "string",
            Kind::DateTime => "date-time",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Object(_) => "object",
            Kind::Map(_) => "map",
            Kind::Array(_) => "array",
        }
    }
}

fn assert_valid(value: &Value, shape: &Shape, what: &str) {
    let mut errors = Vec::new();
    validate(value, shape, what, &mut errors);
    assert!(
        errors.is_empty(),
        "{what} does not match Sentry's schema:\n{}",
        errors.join("\n")
    );
}

/// The keys of Sentry's example that the simulated object lacks.
fn missing_example_fields<'a>(value: &Value, documented: &'a Response) -> Vec<&'a str> {
    documented
        .example_fields
        .iter()
        .map(String::as_str)
        .filter(|k| value.get(k).is_none())
        .collect()
}

fn assert_has_example_fields(value: &Value, documented: &Response, what: &str) {
    assert!(value.is_object(), "{what}: not an object");
    let missing = missing_example_fields(value, documented);
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
    let doc = documented();
    let org = response(&doc, "organization");
    let v = get(&sim(), "/api/0/organizations/acme/", "");
    assert_valid(&v, &org.body, "organization details");
    assert_has_example_fields(&v, org, "organization details");
    assert!(v["links"]["regionUrl"].is_string());
}

#[test]
fn the_project_list_matches_the_schema() {
    let doc = documented();
    let projects = response(&doc, "project-list");
    let v = get(
        &sim(),
        "/api/0/organizations/acme/projects/",
        "per_page=100",
    );
    assert_valid(&v, &projects.body, "project list");
    assert_has_example_fields(&v[0], projects, "a project");
}

#[test]
fn project_events_simple_and_full_match_the_schema() {
    let doc = documented();
    let sim = sim();
    let events = response(&doc, "project-events");
    let v = get(&sim, "/api/0/projects/acme/web/events/", "per_page=100");
    assert_eq!(v.as_array().map(Vec::len), Some(5));
    assert_valid(&v, &events.body, "project events");
    assert_has_example_fields(&v[0], events, "a simple event");

    // full=true items have the single-event shape.
    let single = response(&doc, "event");
    let full = get(&sim, "/api/0/projects/acme/1/events/", "full=true");
    assert_eq!(full.as_array().map(Vec::len), Some(5));
    for (i, item) in full.as_array().unwrap().iter().enumerate() {
        assert_valid(item, &single.body, &format!("full event {i}"));
        assert_has_example_fields(item, single, "a full event");
    }
}

#[test]
fn discover_counts_match_the_schema() {
    let doc = documented();
    let discover = response(&doc, "discover");
    let v = get(
        &sim(),
        "/api/0/organizations/acme/events/",
        "field=project.id&field=count()&project=-1&dataset=errors",
    );
    assert_valid(&v, &discover.body, "Discover");
    assert_has_example_fields(&v, discover, "Discover");
    assert_eq!(v["data"][0]["project.id"], 1);
    assert_eq!(v["data"][0]["count()"], 5);
    assert_eq!(v["meta"]["dataScanned"], "full");
}

#[test]
fn the_validator_rejects_what_sentry_would_not_send() {
    let doc = documented();
    let events = &response(&doc, "project-events").body;
    let mut v = get(&sim(), "/api/0/projects/acme/web/events/", "");
    v[0].as_object_mut().unwrap().remove("eventID");
    v[1]["projectID"] = Value::from(1);
    v[2]["dateCreated"] = Value::from("yesterday");
    v[3]["user"] = Value::Null; // nullable: allowed
    let mut errors = Vec::new();
    validate(&v, events, "events", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("missing required eventID"), "{errors:?}");
    assert!(errors[1].contains("projectID"), "{errors:?}");
    assert!(errors[2].contains("dateCreated"), "{errors:?}");

    let issues = &response(&doc, "issue-list").body;
    let mut errors = Vec::new();
    let issue = serde_json::json!([{"status": "solved", "substatus": null}]);
    validate(&issue, issues, "issues", &mut errors);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"solved\" is not one of")),
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| !e.contains("substatus")),
        "{errors:?}"
    );
}

/// JSON pointers to every required field present in `value` (the first item of each array).
fn required_fields(value: &Value, shape: &Shape, pointer: &str, out: &mut Vec<String>) {
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match (&shape.kind, value) {
        (Kind::Object(fields), Value::Object(obj)) => {
            for (name, required, field) in fields {
                if let Some(v) = obj.get(name) {
                    let p = format!("{pointer}/{}", escape(name));
                    if *required {
                        out.push(p.clone());
                    }
                    required_fields(v, field, &p, out);
                }
            }
        }
        (Kind::Map(Some(values)), Value::Object(obj)) => {
            for (k, v) in obj {
                required_fields(v, values, &format!("{pointer}/{}", escape(k)), out);
            }
        }
        (Kind::Array(Some(items)), Value::Array(a)) if !a.is_empty() => {
            required_fields(&a[0], items, &format!("{pointer}/0"), out);
        }
        _ => {}
    }
}

/// The simulator's answer for each documented response, as the tests above ask for it.
fn simulated_responses() -> Vec<(&'static str, Value)> {
    let sim = sim();
    let now = sim.clock.now();
    sim.generate_rows(
        &mut Rng::new(7),
        "spans",
        1,
        5,
        now - 3600,
        now - 600,
        0.0,
        60,
    );
    let full = get(&sim, "/api/0/projects/acme/1/events/", "full=true");
    vec![
        ("organization", get(&sim, "/api/0/organizations/acme/", "")),
        (
            "project-list",
            get(&sim, "/api/0/organizations/acme/projects/", ""),
        ),
        (
            "project-events",
            get(&sim, "/api/0/projects/acme/web/events/", ""),
        ),
        ("event", full[0].clone()),
        (
            "discover",
            get(
                &sim,
                "/api/0/organizations/acme/events/",
                "field=id&field=timestamp&dataset=spans&project=-1&sort=timestamp",
            ),
        ),
        (
            "issue-list",
            get(&sim, "/api/0/organizations/acme/issues/", "query="),
        ),
    ]
}

#[test]
fn every_documented_response_is_checked() {
    let doc = documented();
    let names: Vec<&str> = simulated_responses().iter().map(|(n, _)| *n).collect();
    assert_eq!(doc.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut n = names.clone();
        n.sort_unstable();
        n
    });
    // The facts the collector itself depends on are in the notation.
    let org = &response(&doc, "organization").body;
    let mut req = Vec::new();
    required_fields(
        &serde_json::json!({"links": {"regionUrl": "", "organizationUrl": ""}}),
        org,
        "",
        &mut req,
    );
    assert_eq!(
        req,
        ["/links", "/links/organizationUrl", "/links/regionUrl"]
    );
}

/// Dropping any field Sentry documents as always present, at any depth, from any simulated
/// response is caught; so is dropping a field of Sentry's example.
#[test]
fn a_simulator_that_drops_a_documented_field_fails_the_checks() {
    let doc = documented();
    let mut checked = 0;
    for (name, value) in simulated_responses() {
        let documented = response(&doc, name);
        assert_valid(&value, &documented.body, name);
        let mut pointers = Vec::new();
        required_fields(&value, &documented.body, "", &mut pointers);
        assert!(pointers.len() >= 2, "{name}: {pointers:?}");
        for p in &pointers {
            let (parent, key) = p.rsplit_once('/').expect("a pointer");
            let mut broken = value.clone();
            broken
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|o| o.remove(&key.replace("~1", "/").replace("~0", "~")))
                .unwrap_or_else(|| panic!("{name}: {p} is present"));
            let mut errors = Vec::new();
            validate(&broken, &documented.body, name, &mut errors);
            assert!(
                errors.iter().any(|e| e.contains("missing required")),
                "{name}: dropping {p} went unnoticed"
            );
            checked += 1;
        }
        let item = match &value {
            Value::Array(a) => a[0].clone(),
            v => v.clone(),
        };
        for field in &documented.example_fields {
            let mut broken = item.clone();
            broken.as_object_mut().unwrap().remove(field);
            assert_eq!(
                missing_example_fields(&broken, documented),
                [field.as_str()],
                "{name}: dropping {field} went unnoticed"
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn the_notation_refuses_what_it_does_not_know() {
    for (text, says) in [
        (
            "response a  GET /x\n  body strin\n  example-fields x\n",
            "unknown type",
        ),
        (
            "response a  GET /x\n  body string requird\n  example-fields x\n",
            "unknown flag",
        ),
        (
            "response a  GET /x\n  body object\n      x string\n  example-fields x\n",
            "indent",
        ),
        (
            "response a  GET /x\n  body array\n    x string\n  example-fields x\n",
            "`[]`",
        ),
        ("response a  GET /x\n  body string\n", "no example-fields"),
        (
            "response a  GET /x\n   body string\n  example-fields x\n",
            "odd indent",
        ),
        (
            "response a  GET /x\n  body object\n    x string\n    x integer\n  example-fields x\n",
            "x twice",
        ),
        (
            "response a  GET /x\n  body object\n    * string\n  example-fields x\n",
            "under a map",
        ),
    ] {
        let err = std::panic::catch_unwind(|| parse_notation(text)).expect_err(text);
        let msg = err
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains(says), "{text}: {msg}");
    }
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
    let doc = documented();
    let issues = response(&doc, "issue-list");
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    sim.generate(&mut Rng::new(3), 1, 400, now - 7200, now - 600, 0.0, 60);
    let all = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        "query=&sort=date&project=-1",
    );
    assert_valid(&all, &issues.body, "issues");
    assert_has_example_fields(&all[0], issues, "an issue");
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
    // Like Sentry's serializer: collapse=stats drops lifetime and filtered with stats.
    assert!(collapsed[0].get("stats").is_none() && collapsed[0].get("lifetime").is_none());
    let no_histogram = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        "query=&groupStatsPeriod=",
    );
    assert!(no_histogram[0].get("stats").is_none());
    assert!(no_histogram[0]["lifetime"]["count"].is_string());
    assert!(all[0]["stats"]["24h"].is_array(), "{}", all[0]["stats"]);

    // A date range scopes count, firstSeen and lastSeen; lifetime keeps the all-time values.
    let (from, to) = (
        sentry_sim::time::rfc3339(now - 5400),
        sentry_sim::time::rfc3339(now - 3600),
    );
    let ranged = get(
        &sim,
        "/api/0/organizations/acme/issues/",
        &format!("query=&groupStatsPeriod=&start={from}&end={to}"),
    );
    let ranged = ranged.as_array().unwrap();
    assert!(!ranged.is_empty());
    let mut narrower = 0;
    for issue in ranged {
        let count: u64 = issue["count"].as_str().unwrap().parse().unwrap();
        let lifetime: u64 = issue["lifetime"]["count"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(count >= 1 && count <= lifetime, "{issue}");
        let last = issue["lastSeen"].as_str().unwrap();
        assert!(last >= from.as_str() && last < to.as_str(), "{last}");
        assert!(issue["firstSeen"].as_str().unwrap() >= from.as_str());
        assert!(issue["lifetime"]["lastSeen"].as_str().unwrap() >= last);
        narrower += usize::from(count < lifetime);
    }
    assert!(narrower > 0, "some issues have events outside the range");

    // Without global views, only one project at a time.
    let single = Sim::new(
        SimOptions {
            global_views: false,
            ..SimOptions::default()
        },
        SimClock::default(),
    );
    single.add_project(1, "web");
    single.generate(&mut Rng::new(9), 1, 20, now - 7200, now - 600, 0.0, 60);
    let auth = format!("Bearer {}", single.options.token);
    let r = single.respond(
        "GET",
        "/api/0/organizations/acme/issues/",
        "query=&project=-1",
        &auth,
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("multi project stream feature"));
    let one = get(
        &single,
        "/api/0/organizations/acme/issues/",
        "query=&project=1",
    );
    assert!(!one.as_array().unwrap().is_empty());
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
    let doc = documented();
    let discover = response(&doc, "discover");
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
        assert_valid(&v, &discover.body, d);
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

#[test]
fn rows_that_tie_on_the_sort_come_back_in_a_new_order_on_every_query() {
    let sim = Sim::new(SimOptions::default(), SimClock::default());
    sim.add_project(1, "web");
    let now = sim.clock.now();
    // 300 spans in three seconds: every row ties with about a hundred others.
    sim.generate_rows(
        &mut Rng::new(8),
        "spans",
        1,
        300,
        now - 603,
        now - 600,
        0.0,
        1,
    );
    // (timestamp, id) of each row of the first page.
    let rows = |query: &str| -> Vec<(String, String)> {
        let v = get(&sim, "/api/0/organizations/acme/events/", query);
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |f: &str| r[f].as_str().unwrap().to_string();
                (s("timestamp"), s("id"))
            })
            .collect()
    };
    let q = "field=id&field=timestamp&dataset=spans&project=-1&per_page=100";
    let a = rows(&format!("{q}&sort=timestamp"));
    let b = rows(&format!("{q}&sort=timestamp"));
    assert_eq!(a.len(), 100);
    assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "ascending time");
    assert_ne!(a, b, "ties in the same order twice");
    let total = format!("{q}&sort=timestamp&sort=id");
    let c = rows(&total);
    assert_eq!(c, rows(&total), "a total order is stable");
    assert!(
        c.windows(2).all(|w| w[0] < w[1]),
        "(timestamp, id) ascending"
    );
    let desc = rows(&format!("{q}&sort=-timestamp&sort=-id"));
    assert!(
        desc.windows(2).all(|w| w[0] > w[1]),
        "(timestamp, id) descending"
    );
    let auth = format!("Bearer {}", sim.options.token);
    let r = sim.respond(
        "GET",
        "/api/0/organizations/acme/events/",
        "field=id&field=timestamp&dataset=spans&sort=span.op",
        &auth,
    );
    assert_eq!(r.status, 400);
}
