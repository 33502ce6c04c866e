//! `deploy/gcp/setup.sh --dry-run`: every command it would run, with the flags that make the
//! deployment safe, and nothing run at all (a `gcloud` on the PATH that records any call stays
//! silent). The Spin variables it prints pass the component's own configuration checks and
//! agree with the push subscription it creates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sentry_logs_collector::config::Config;
use sentry_logs_collector::ports::VariableSource;

const PROJECT: &str = "acme-secops";
const BUCKET: &str = "acme-sentry-events";
const ENDPOINT: &str = "https://collector.acme.example";
const SECOPS_SA: &str = "feeds-abc123@chronicle-acme.iam.gserviceaccount.com";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory with a `gcloud` that records its arguments and fails.
fn trap_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deploy-gcp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gcloud = dir.join("gcloud");
    std::fs::write(
        &gcloud,
        "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/called\"\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gcloud, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn setup(trap: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        trap.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg(repo().join("deploy/gcp/setup.sh"))
        .args(args)
        .env("PATH", path)
        .current_dir(trap)
        .output()
        .expect("bash runs setup.sh")
}

/// Splits a printed command line the way a POSIX shell would: words, single quotes, and
/// backslash escapes outside quotes (how the script quotes a `'`).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                assert!(
                    !"\"$`;&|<>()*?".contains(c),
                    "unquoted shell character {c:?} in {line}"
                );
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A parsed command: its words before the first flag, and its `--flag[=value]`s.
#[derive(Debug)]
struct Cmd {
    words: Vec<String>,
    flags: BTreeMap<String, String>,
}

impl Cmd {
    fn starts(&self, prefix: &[&str]) -> bool {
        self.words.len() >= prefix.len() && self.words.iter().zip(prefix).all(|(a, b)| a == b)
    }
    fn flag(&self, name: &str) -> &str {
        self.flags
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from {self:?}"))
    }
}

fn commands(stdout: &str) -> Vec<Cmd> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .map(|l| {
            let mut words = Vec::new();
            let mut flags = BTreeMap::new();
            for w in shell_words(l) {
                if let Some(f) = w.strip_prefix("--") {
                    let (k, v) = f.split_once('=').unwrap_or((f, ""));
                    assert!(
                        flags.insert(k.to_string(), v.to_string()).is_none(),
                        "--{k} twice in {l}"
                    );
                } else {
                    assert!(flags.is_empty(), "a word after the flags in {l}");
                    words.push(w);
                }
            }
            Cmd { words, flags }
        })
        .collect()
}

fn only<'a>(cmds: &'a [Cmd], prefix: &[&str]) -> &'a Cmd {
    let found: Vec<&Cmd> = cmds.iter().filter(|c| c.starts(prefix)).collect();
    assert_eq!(found.len(), 1, "{prefix:?}: {found:?}");
    found[0]
}

/// `name=value` lines of the "Spin variables" block.
fn spin_variables(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .split("== Deploy the component with these Spin variables")
        .nth(1)
        .expect("the variables block")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  ") && l.contains('='))
        .map(|l| {
            let (k, v) = l.trim().split_once('=').unwrap();
            let v = v.split_whitespace().next().unwrap_or("");
            (k.to_string(), v.to_string())
        })
        .collect()
}

struct Vars(BTreeMap<String, String>);
impl VariableSource for Vars {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.0.get(name).cloned())
    }
}

#[test]
fn dry_run_prints_every_command_and_runs_none() {
    let trap = trap_dir("full");
    let out = setup(
        &trap,
        &[
            "--dry-run",
            "--project",
            PROJECT,
            "--bucket",
            BUCKET,
            "--endpoint",
            ENDPOINT,
            "--region",
            "europe-west1",
            "--shards",
            "3",
            "--project-number",
            "123456789012",
            "--secops-service-account",
            SECOPS_SA,
            "--key-file",
            "writer-key.json",
        ],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(!trap.join("called").exists(), "a dry run called gcloud");
    assert!(
        !trap.join("writer-key.json").exists(),
        "a dry run created a key"
    );

    let cmds = commands(&stdout);
    assert!(cmds.iter().all(|c| c.words[0] == "gcloud"), "{cmds:?}");
    assert!(
        cmds.iter()
            .all(|c| c.flags.get("project").map(String::as_str) == Some(PROJECT)),
        "every command names the project: {cmds:?}"
    );

    let apis = only(&cmds, &["gcloud", "services", "enable"]);
    for api in [
        "storage.googleapis.com",
        "pubsub.googleapis.com",
        "cloudscheduler.googleapis.com",
        "iam.googleapis.com",
    ] {
        assert!(apis.words.iter().any(|w| w == api), "{api}");
    }

    // The bucket: private, uniform access, in the chosen region.
    let bucket = only(&cmds, &["gcloud", "storage", "buckets", "create"]);
    assert_eq!(bucket.words[4], format!("gs://{BUCKET}"));
    assert_eq!(bucket.flag("location"), "europe-west1");
    assert_eq!(bucket.flag("uniform-bucket-level-access"), "");
    assert_eq!(bucket.flag("public-access-prevention"), "");

    // Roles on the bucket: the writer creates and reads, SecOps reads; nobody gets more.
    let writer = format!("sentry-collector-writer@{PROJECT}.iam.gserviceaccount.com");
    let mut bindings: Vec<(String, String)> = cmds
        .iter()
        .filter(|c| c.starts(&["gcloud", "storage", "buckets", "add-iam-policy-binding"]))
        .map(|c| {
            assert_eq!(c.words[4], format!("gs://{BUCKET}"));
            (c.flag("member").to_string(), c.flag("role").to_string())
        })
        .collect();
    bindings.sort();
    assert_eq!(
        bindings,
        vec![
            (
                format!("serviceAccount:{SECOPS_SA}"),
                "roles/storage.objectViewer".to_string()
            ),
            (
                format!("serviceAccount:{writer}"),
                "roles/storage.objectCreator".to_string()
            ),
            (
                format!("serviceAccount:{writer}"),
                "roles/storage.objectViewer".to_string()
            ),
        ]
    );
    for c in &cmds {
        if let Some(role) = c.flags.get("role") {
            let lower = role.to_ascii_lowercase();
            assert!(
                !["admin", "owner", "editor"]
                    .iter()
                    .any(|r| lower.contains(r)),
                "broad role {role}"
            );
        }
    }

    // Service accounts: the writer and the push identity.
    let created: Vec<&str> = cmds
        .iter()
        .filter(|c| c.starts(&["gcloud", "iam", "service-accounts", "create"]))
        .map(|c| c.words[4].as_str())
        .collect();
    assert_eq!(
        created,
        ["sentry-collector-writer", "sentry-collector-push"]
    );
    let pusher = format!("sentry-collector-push@{PROJECT}.iam.gserviceaccount.com");
    let agent = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com";
    let token_creator = only(
        &cmds,
        &[
            "gcloud",
            "iam",
            "service-accounts",
            "add-iam-policy-binding",
        ],
    );
    assert_eq!(token_creator.words[4], pusher);
    assert_eq!(token_creator.flag("member"), agent);
    assert_eq!(
        token_creator.flag("role"),
        "roles/iam.serviceAccountTokenCreator"
    );

    // Topics and the push subscription with OIDC auth and audience.
    let topics: Vec<&str> = cmds
        .iter()
        .filter(|c| c.starts(&["gcloud", "pubsub", "topics", "create"]))
        .map(|c| c.words[4].as_str())
        .collect();
    assert_eq!(
        topics,
        ["sentry-collector-runs", "sentry-collector-runs-dead-letter"]
    );
    let sub = only(&cmds, &["gcloud", "pubsub", "subscriptions", "create"]);
    let audience = format!("{ENDPOINT}/pubsub");
    assert_eq!(sub.flag("topic"), "sentry-collector-runs");
    assert_eq!(sub.flag("push-endpoint"), audience);
    assert_eq!(sub.flag("push-auth-service-account"), pusher);
    assert_eq!(sub.flag("push-auth-token-audience"), audience);
    assert_eq!(
        sub.flag("dead-letter-topic"),
        "sentry-collector-runs-dead-letter"
    );
    let attempts: u32 = sub.flag("max-delivery-attempts").parse().unwrap();
    assert!((5..=100).contains(&attempts));
    let ack: u32 = sub.flag("ack-deadline").parse().unwrap();
    assert!(
        ack >= 30,
        "the ack deadline must outlive a 25 s run and the 30 s request limit: {ack}"
    );
    let dead_letter_grant = only(
        &cmds,
        &["gcloud", "pubsub", "topics", "add-iam-policy-binding"],
    );
    assert_eq!(dead_letter_grant.flag("member"), agent);
    assert_eq!(dead_letter_grant.flag("role"), "roles/pubsub.publisher");
    let sub_grant = only(
        &cmds,
        &[
            "gcloud",
            "pubsub",
            "subscriptions",
            "add-iam-policy-binding",
        ],
    );
    assert_eq!(sub_grant.flag("role"), "roles/pubsub.subscriber");

    // One scheduler job per shard, each naming its shard, all publishing to the topic.
    let jobs: Vec<&Cmd> = cmds
        .iter()
        .filter(|c| c.starts(&["gcloud", "scheduler", "jobs", "create", "pubsub"]))
        .collect();
    assert_eq!(jobs.len(), 3);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.words[5], format!("sentry-collector-run-s{i}of3"));
        assert_eq!(job.flag("attributes"), format!("shard={i}/3"));
        assert_eq!(
            job.flag("topic"),
            format!("projects/{PROJECT}/topics/sentry-collector-runs")
        );
        assert_eq!(job.flag("location"), "europe-west1");
        assert_eq!(job.flag("schedule").split(' ').count(), 5);
        assert_eq!(job.flag("time-zone"), "Etc/UTC");
        assert_eq!(job.flag("message-body"), "{}");
    }

    // The key, created only when asked, for the writer.
    let key = only(
        &cmds,
        &["gcloud", "iam", "service-accounts", "keys", "create"],
    );
    assert_eq!(key.words[5], "writer-key.json");
    assert_eq!(key.flag("iam-account"), writer);

    // The variables it prints are the component's, and a valid configuration with them.
    let vars = spin_variables(&stdout);
    assert_eq!(vars["gcs_bucket"], BUCKET);
    assert_eq!(vars["gcs_prefix"], "sentry/");
    assert_eq!(vars["push_oidc_audience"], audience);
    assert_eq!(vars["push_oidc_emails"], pusher);
    assert_eq!(vars["gcp_service_account_key"], "@writer-key.json");
    let mut config: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(_, v)| !v.starts_with('<') && !v.starts_with('@'))
        .collect();
    config.insert("sentry_org".into(), "acme".into());
    config.insert("sentry_auth_token".into(), "0".repeat(64));
    config.insert("gcs_access_token".into(), "ya29.stand-in".into());
    if let Err(e) = Config::load(&Vars(config)) {
        panic!("the printed variables are not a valid configuration: {e}");
    }

    // The SecOps feed settings.
    assert!(stdout.contains(&format!(
        "Storage bucket URI:        gs://{BUCKET}/sentry/events/"
    )));
    assert!(stdout.contains("Log type:                  Sentry (SENTRY)"));
    assert!(stdout.contains("Google Cloud Storage V2"));
    assert!(
        stdout.contains("state.json"),
        "why the state is not in the bucket"
    );
    // The webhook URL to paste into Sentry's internal integration: the component's route.
    let webhook_url = format!("{ENDPOINT}{}", sentry_logs_collector::webhook::ROUTE);
    assert!(
        stdout.lines().any(|l| l.trim() == webhook_url),
        "the webhook URL {webhook_url} is printed on a line of its own"
    );
    assert!(stdout.contains("sentry_webhook_secret=<"));
    let _ = std::fs::remove_dir_all(&trap);
}

#[test]
fn one_shard_gets_one_job_without_attributes_and_the_secops_grant_is_printed() {
    let trap = trap_dir("one");
    let out = setup(
        &trap,
        &[
            "--dry-run",
            "--project",
            PROJECT,
            "--bucket",
            BUCKET,
            "--endpoint",
            ENDPOINT,
            "--prefix",
            "",
        ],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!trap.join("called").exists());
    let cmds = commands(&stdout);
    let job = only(&cmds, &["gcloud", "scheduler", "jobs", "create", "pubsub"]);
    assert_eq!(job.words[5], "sentry-collector-run");
    assert!(!job.flags.contains_key("attributes"));
    assert_eq!(job.flag("schedule"), "*/5 * * * *");
    // Without the project number, the script looks it up (printed, not run).
    only(&cmds, &["gcloud", "projects", "describe", PROJECT]);
    // Not granted without the SecOps account, but the command to do so is printed.
    assert_eq!(
        cmds.iter()
            .filter(|c| c.starts(&["gcloud", "storage", "buckets", "add-iam-policy-binding"]))
            .count(),
        2
    );
    assert!(stdout.contains(
        "--member=serviceAccount:SECOPS_SERVICE_ACCOUNT --role=roles/storage.objectViewer"
    ));
    assert!(stdout.contains(&format!("gs://{BUCKET}/events/")));
    assert!(!cmds
        .iter()
        .any(|c| c.starts(&["gcloud", "iam", "service-accounts", "keys"])));
    let _ = std::fs::remove_dir_all(&trap);
}

#[test]
fn bad_input_names_each_option_and_runs_nothing() {
    let trap = trap_dir("bad");
    for (args, needles) in [
        (
            vec!["--dry-run"],
            vec![
                "--project is required",
                "--bucket is required",
                "--endpoint is required",
            ],
        ),
        (
            vec![
                "--project",
                PROJECT,
                "--bucket",
                "Bad_Bucket!",
                "--endpoint",
                "http://collector.acme.example/pubsub",
            ],
            vec!["--bucket must be", "--endpoint must be an https origin"],
        ),
        (
            vec![
                "--dry-run",
                "--project",
                PROJECT,
                "--bucket",
                BUCKET,
                "--endpoint",
                ENDPOINT,
                "--shards",
                "65",
                "--schedule",
                "0 */5 * * * *",
                "--prefix",
                "sentry",
            ],
            vec![
                "--shards must be",
                "--schedule must have 5 fields",
                "--prefix must be",
            ],
        ),
        (vec!["--bogus"], vec!["unknown argument: --bogus"]),
        (vec!["--project"], vec!["--project needs a value"]),
    ] {
        let out = setup(&trap, &args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} missing from {stderr}"
            );
        }
        assert!(
            !String::from_utf8(out.stdout).unwrap().contains("+ gcloud"),
            "{args:?}"
        );
    }
    assert!(!trap.join("called").exists());
    let _ = std::fs::remove_dir_all(&trap);
}
