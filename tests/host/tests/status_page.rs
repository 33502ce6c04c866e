//! `/status` in a real browser: Debian's headless Chromium, driven over the DevTools protocol,
//! loads the page from `collector-host serve` (with the shared secret as a request header, as
//! an operator's browser would send it through a proxy or extension) and the test reads what a
//! person sees: the rendered text of each table row, compared with the JSON answer of the same
//! route. A hostile error text must be shown as text, never as markup.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector_host::testing::{repo_root, temp_dir};
use collector_host::{App, Outcome, Trigger};
use common::*;
use sentry_sim::{Rng, SimOptions};
use serde_json::{json, Value};

const SECRET: &str = "status-page-secret-0123456789abcdef0123";
const HOSTILE: &str =
    "<img src=x onerror=\"document.title='pwned'\"> & <script>document.title='pwned'</script>";

/// Headless Chromium with a DevTools port, killed (and its profile removed) when dropped.
struct Browser {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Browser {
    fn launch() -> Browser {
        let exe = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&exe).exists(),
            "{exe} is missing: scripts/setup.sh installs Debian's chromium package (or set CHROMIUM)"
        );
        let profile = temp_dir("chromium-profile");
        let mut child = Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1400,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium announces its DevTools endpoint on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium announces its DevTools endpoint");
        let port = endpoint
            .split('/')
            .next()
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("a DevTools port");
        Browser {
            child,
            port,
            profile,
        }
    }

    /// The DevTools WebSocket of the first page target.
    fn page(&self) -> Page {
        let list: Value = serde_json::from_str(&http_get(self.port, "/json/list")).unwrap();
        let url = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (socket, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
        Page { socket, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // DevTools keeps the connection open: read the headers, then Content-Length bytes.
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// One page's DevTools session.
struct Page {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(tungstenite::Message::text(message))
            .expect("sending to DevTools");
        loop {
            let message = self.socket.read().expect("reading from DevTools");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(reply) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(result["exceptionDetails"].is_null(), "{result}");
        result["result"]["value"].clone()
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.eval("document.readyState + ' ' + location.href");
            if ready.as_str() == Some(&format!("complete {url}")) {
                return;
            }
            assert!(Instant::now() < deadline, "the page did not load: {ready}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the browser shows: the title, the whole visible text, and each body row's cells as
/// rendered text.
fn what_a_person_sees(page: &mut Page) -> (String, String, Vec<Vec<String>>) {
    let title = page.eval("document.title");
    let text = page.eval("document.body.innerText");
    let rows = page.eval(
        "[...document.querySelectorAll('tbody tr')].map(tr => [...tr.cells].map(c => c.innerText.trim()))",
    );
    (
        title.as_str().unwrap().to_string(),
        text.as_str().unwrap().to_string(),
        serde_json::from_value(rows).unwrap(),
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_each_stream_with_lag_last_run_counts_and_error() {
    let mut rig = Rig::with_history(SimOptions::default(), 5, 3, 40, 0.0, 71).await;
    rig.set("streams", "events,audit_logs,issues");
    rig.set("push_shared_secret", SECRET);
    rig.sim.forbid("audit-logs");
    let mut rng = Rng::new(72);
    let now = rig.clock.now();
    rig.sim.generate_audit(&mut rng, 5, now - 3600, now - 60);
    let inv = rig.run().await;
    assert!(
        matches!(&inv.outcome, Outcome::GuestError(m) if m.contains("audit_logs")),
        "{:?}",
        inv.outcome
    );
    rig.clock.advance(600);

    // A status record whose error is hostile markup (as a compromised upstream might answer).
    let app = App::load(&rig.options(), Trigger::Cron).unwrap();
    let store = app.store("default").unwrap();
    let mut issues: Value =
        serde_json::from_slice(&store.get("v1/status/issues").unwrap().unwrap()).unwrap();
    issues["error"] = json!(HOSTILE);
    store
        .set("v1/status/issues", &serde_json::to_vec(&issues).unwrap())
        .unwrap();

    let served = rig.serve().await;
    let auth = format!("Bearer {SECRET}");
    let as_json = served
        .request(
            "GET",
            "/status",
            &[("authorization", &auth), ("accept", "application/json")],
            b"",
        )
        .await;
    assert_eq!(as_json.status, 200);
    let status: Value = serde_json::from_slice(&as_json.body).unwrap();
    let url = format!("http://{}/status", served.addr);

    let (title, text, rows, screenshot) = tokio::task::spawn_blocking(move || {
        let browser = Browser::launch();
        let mut page = browser.page();
        page.call("Network.enable", json!({}));
        // Without credentials the browser gets the 401, and no data.
        page.open(&url);
        let refused = page.eval("document.body.innerText");
        assert!(
            refused.as_str().unwrap().contains("unauthorized"),
            "{refused}"
        );
        assert!(!refused.as_str().unwrap().contains("events"), "{refused}");
        page.call(
            "Network.setExtraHTTPHeaders",
            json!({ "headers": { "Authorization": auth } }),
        );
        page.open(&url);
        let (title, text, rows) = what_a_person_sees(&mut page);
        let markup = page.eval("document.querySelectorAll('img, script, iframe, object').length");
        assert_eq!(markup, 0, "hostile text became markup");
        let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
        (
            title,
            text,
            rows,
            shot["data"].as_str().unwrap().to_string(),
        )
    })
    .await
    .unwrap();
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, screenshot)
        .expect("a PNG screenshot");
    let shot_path = repo_root().join("target").join("status-page.png");
    std::fs::write(&shot_path, &png).unwrap();
    println!("screenshot: {}", shot_path.display());

    // The page, not the JSON, and nothing hostile ran.
    assert_eq!(
        title,
        format!("Sentry collector status: {}", rig.sim.options.org)
    );
    assert!(text.contains("Sentry collector status"), "{text}");
    assert!(
        text.contains(&format!("Organization {}", rig.sim.options.org)),
        "{text}"
    );
    assert!(text.contains("1 run so far"), "{text}");
    assert!(text.contains("Last run failed"), "{text}");

    // One row per stream, in the JSON's order, each telling the JSON's story.
    let streams = status["streams"].as_array().unwrap();
    assert_eq!(rows.len(), streams.len(), "{rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, s) in rows.iter().zip(streams) {
        let stream = s["stream"].as_str().unwrap();
        assert_eq!(row[0], stream, "{row:?}");
        assert_eq!(row[1], s["shard"].as_str().unwrap(), "{row:?}");
        let run = &s["last_run"];
        assert_eq!(
            row[4], "10 min ago",
            "{stream}: the run finished ten minutes ago"
        );
        assert_eq!(
            row[7],
            thousands(run["events"].as_u64().unwrap()),
            "{row:?}"
        );
        assert_eq!(row[6], thousands(run["pages"].as_u64().unwrap()), "{row:?}");
        match stream {
            "events" => {
                assert_eq!(row[2], "OK", "{row:?}");
                let lag = s["lag_secs"].as_i64().unwrap();
                assert!(lag > 600, "{s}");
                assert!(row[3].ends_with("min") || row[3].contains(" h"), "{row:?}");
                assert_eq!(row[5], "finished", "{row:?}");
                assert!(run["events"].as_u64().unwrap() >= 120, "{s}");
                assert!(
                    row[9].ends_with("KiB") || row[9].ends_with("MiB"),
                    "{row:?}"
                );
                assert_eq!(row[10], "none", "{row:?}");
            }
            "audit_logs" => {
                assert_eq!(row[2], "Error", "{row:?}");
                assert!(
                    row[10].contains("403") && row[10].contains("org:write"),
                    "{row:?}"
                );
                assert_eq!(row[7], "0", "{row:?}");
            }
            "issues" => {
                // The hostile error is shown as the text it is.
                assert_eq!(row[2], "Error", "{row:?}");
                assert_eq!(row[10], HOSTILE, "{row:?}");
            }
            other => panic!("unexpected stream {other}"),
        }
    }
    assert_ne!(title, "pwned");
}
