//! Configuration: every setting is a Spin variable, parsed and validated in one place.
//!
//! [`SETTINGS`] is the single table of names, defaults and secrecy; `spin.toml` declares the same
//! variables and a test keeps the two identical. [`Config::load`] checks every setting and
//! returns one [`ConfigError`] that lists every problem, each naming the variable and the fix.
//! No message ever contains a configured value: a secret pasted into the wrong variable must not
//! end up in a log line or an HTTP response.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::ports::VariableSource;
use crate::secret::Secret;

/// One configuration setting, as declared in `spin.toml`'s `[variables]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// `None` means `required = true`.
    pub default: Option<&'static str>,
    pub secret: bool,
    pub help: &'static str,
}

const fn required(name: &'static str, secret: bool, help: &'static str) -> Setting {
    Setting {
        name,
        default: None,
        secret,
        help,
    }
}

const fn optional(
    name: &'static str,
    default: &'static str,
    secret: bool,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        default: Some(default),
        secret,
        help,
    }
}

/// Every setting the component reads. `spin.toml` must declare exactly these (a test checks).
pub const SETTINGS: &[Setting] = &[
    required("gcs_bucket", false, "Cloud Storage bucket the SecOps feed reads"),
    optional("gcs_prefix", "sentry/", false, "object name prefix inside the bucket; empty or ending in '/'"),
    optional("gcs_endpoint", "https://storage.googleapis.com", false, "Cloud Storage JSON API origin (an emulator's http://127.0.0.1:PORT in tests)"),
    optional("gcs_gzip", "false", false, "gzip the NDJSON objects (true/false)"),
    optional("gcp_service_account_key", "", true, "the service-account key file's JSON text (alternative: gcs_access_token)"),
    optional("gcs_auth_mode", "self_signed_jwt", false, "with a key: self_signed_jwt (no token endpoint) or token_exchange (OAuth JWT bearer)"),
    optional("gcp_token_origin", "https://oauth2.googleapis.com", false, "origin of the key file's token_uri (token_exchange mode)"),
    optional("gcs_access_token", "", true, "a pre-minted OAuth access token (alternative: gcp_service_account_key)"),
    required("sentry_org", false, "Sentry organization slug"),
    required("sentry_auth_token", true, "Sentry internal-integration token (Project Read, Issue & Event Read, Organization Read)"),
    optional("sentry_api_base", "https://sentry.io", false, "Sentry origin (self-hosted: your URL)"),
    optional("sentry_region_hosts", "https://*.sentry.io", false, "allowed-host pattern the org's links.regionUrl must match (self-hosted: same as sentry_api_base)"),
    optional("sentry_full_events", "false", false, "request full events (full=true, 10 per page)"),
    optional("streams", "events", false, "comma-separated streams to collect"),
    optional("max_projects", "0", false, "collect at most this many projects (0 = all); a cut is reported"),
    optional("time_budget", "25s", false, "how long one run may take before it stops starting pages"),
    optional("lookback", "24h", false, "how far back the first run starts"),
    optional("overlap", "1h", false, "how far each window reaches back before the watermark, for late events"),
    optional("lag", "1m", false, "how far behind now each window ends, for ingestion delay"),
    optional("max_window", "24h", false, "the longest window one run covers"),
    optional("backfill_start", "", false, "read every stream's history from this date or duration back (90d) up to where live collection began; empty: no backfill"),
    optional("push_oidc_audience", "", false, "audience of Google-signed OIDC tokens on /pubsub, /run, /status"),
    optional("push_oidc_emails", "", false, "comma-separated service-account emails allowed to call"),
    optional("push_jwks_url", "https://www.googleapis.com/oauth2/v3/certs", false, "JWKS for OIDC token signatures"),
    optional("push_jwks_origin", "https://www.googleapis.com", false, "origin of push_jwks_url (listed in allowed_outbound_hosts)"),
    optional("push_shared_secret", "", true, "shared secret for /pubsub, /run, /status (Authorization: Bearer)"),
    optional("push_shared_secret_param", "", false, "query parameter that may carry the shared secret (empty: header only)"),
    optional("allow_unauthenticated", "false", false, "serve /pubsub, /run, /status without authentication (local use only)"),
    optional("sentry_webhook_secret", "", true, "the Sentry internal integration's client secret: enables POST /sentry/webhook (empty: off)"),
    optional("webhook_inline", "false", false, "write issue and alert webhooks to Cloud Storage as they arrive, not only at the next run (true/false)"),
    optional("webhook_inbox_max", "500", false, "the most webhook deliveries the KV inbox holds between runs (1-700)"),
];

/// Every stream name the product defines.
pub const KNOWN_STREAMS: &[&str] = &[
    "events",
    "issues",
    "audit_logs",
    "transactions",
    "spans",
    "logs",
];

/// One thing wrong with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The names of the settings that are wrong, in order, without repeats.
    pub fn settings(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for p in &self.problems {
            if !names.contains(&p.setting) {
                names.push(p.setting);
            }
        }
        names
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}); set these Spin variables:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.setting, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How the component authenticates to Cloud Storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcsAuth {
    /// A service-account key; `exchange` selects the OAuth JWT-bearer exchange instead of a
    /// self-signed JWT.
    ServiceAccount {
        key: ServiceAccountKey,
        exchange: bool,
    },
    /// A pre-minted access token.
    AccessToken(Secret),
}

/// The fields of a service-account key file that signing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: String,
    /// PKCS#8 PEM.
    pub private_key: Secret,
    pub token_uri: Url,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    pub bucket: String,
    pub prefix: String,
    /// Origin without a trailing slash.
    pub endpoint: Url,
    pub gzip: bool,
    pub auth: GcsAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentryConfig {
    pub org: String,
    pub token: Secret,
    pub api_base: Url,
    pub region_hosts: HostPattern,
    pub full_events: bool,
    /// `None`: every project.
    pub max_projects: Option<usize>,
}

/// The window and budget settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub time_budget: Duration,
    pub lookback: Duration,
    pub overlap: Duration,
    pub lag: Duration,
    pub max_window: Duration,
}

/// Who may call the routes that start runs or show state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAuth {
    pub oidc: Option<OidcRule>,
    pub shared_secret: Option<Secret>,
    /// Query parameter that may carry the shared secret.
    pub shared_secret_param: Option<String>,
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcRule {
    pub audience: String,
    pub emails: Vec<String>,
    pub jwks_url: Url,
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub gcs: GcsConfig,
    pub sentry: SentryConfig,
    pub streams: Vec<String>,
    pub timing: Timing,
    pub push: PushAuth,
    /// `backfill_start` as written (a date or a duration back from now), if set.
    pub backfill_start: Option<String>,
    pub webhook: WebhookConfig,
}

/// The most deliveries `webhook_inbox_max` may allow: the intake also stops at three quarters
/// of Fermyon Cloud's 1,024 keys, whatever this says (`webhook::STORE_KEYS_FOR_INBOX`).
pub const MAX_INBOX: usize = 700;

/// Sentry webhooks (`POST /sentry/webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookConfig {
    /// The integration's client secret; `None`: the route answers 404.
    pub secret: Option<Secret>,
    /// Write `issue`, `comment` and alert deliveries at once (the inbox keeps them if that
    /// fails).
    pub inline: bool,
    /// The most deliveries the inbox holds.
    pub inbox_max: usize,
}

/// An allowed-host pattern with Spin's `allowed_outbound_hosts` meaning: a scheme, a host that
/// may start with `*.` (any subdomain), and a port (the scheme's default when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub scheme: String,
    /// The exact host, or with `any_subdomain` the suffix after `*.`.
    pub host: String,
    pub any_subdomain: bool,
    pub port: u16,
}

impl HostPattern {
    pub fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host_ok = if self.any_subdomain {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(&self.host)
        };
        url.scheme() == self.scheme && host_ok && url.port_or_known_default() == Some(self.port)
    }
}

impl Config {
    /// Reads and validates every setting; on failure the error lists every problem.
    pub fn load(source: &dyn VariableSource) -> Result<Config, ConfigError> {
        let mut c = Checker {
            source,
            problems: Vec::new(),
        };

        let bucket = c.value("gcs_bucket").and_then(|v| c.check(v, bucket_name));
        let prefix = c
            .value("gcs_prefix")
            .and_then(|v| c.check(v, object_prefix));
        let endpoint = c.value("gcs_endpoint").and_then(|v| c.check(v, origin));
        let gzip = c.value("gcs_gzip").and_then(|v| c.check(v, boolean));
        let auth = gcs_auth(&mut c);

        let org = c.value("sentry_org").and_then(|v| c.check(v, org_slug));
        let token = c
            .secret("sentry_auth_token")
            .and_then(|v| c.check(v, sentry_token));
        let api_base = c.value("sentry_api_base").and_then(|v| c.check(v, origin));
        let region_hosts = c
            .value("sentry_region_hosts")
            .and_then(|v| c.check(v, host_pattern));
        let full_events = c
            .value("sentry_full_events")
            .and_then(|v| c.check(v, boolean));
        let max_projects = c
            .value("max_projects")
            .and_then(|v| c.check(v, project_cap));

        let streams = c.value("streams").and_then(|v| c.check(v, stream_list));

        let time_budget = c
            .value("time_budget")
            .and_then(|v| c.check(v, |s| duration_between(s, 1, 24 * 3600)));
        let lookback = c
            .value("lookback")
            .and_then(|v| c.check(v, |s| duration_between(s, 60, 90 * 86400)));
        let overlap = c
            .value("overlap")
            .and_then(|v| c.check(v, |s| duration_between(s, 0, 7 * 86400)));
        let lag = c
            .value("lag")
            .and_then(|v| c.check(v, |s| duration_between(s, 0, 86400)));
        let max_window = c
            .value("max_window")
            .and_then(|v| c.check(v, |s| duration_between(s, 60, 7 * 86400)));

        let push = push_auth(&mut c);
        let backfill_start = c.value("backfill_start").and_then(|v| {
            c.check(v, |s: String| {
                if s.is_empty() {
                    return Ok(None);
                }
                crate::time::parse_start(&s, 0).map(|_| Some(s))
            })
        });

        let webhook_secret = c.secret("sentry_webhook_secret").and_then(|v| {
            c.check(v, |s: Secret| {
                if s.is_empty() {
                    Ok(None)
                } else if s.expose().len() < 16 {
                    Err("must be the integration's client secret as Sentry shows it (at least 16 characters)".to_string())
                } else {
                    Ok(Some(s))
                }
            })
        });
        let webhook_inline = c.value("webhook_inline").and_then(|v| c.check(v, boolean));
        let inbox_max = c.value("webhook_inbox_max").and_then(|v| {
            c.check(v, |s: String| match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_INBOX).contains(&n) => Ok(n),
                _ => Err(format!(
                    "must be a number from 1 to {MAX_INBOX} (the store holds 1,024 keys in all on Fermyon Cloud, and the state needs the rest)"
                )),
            })
        });

        if let (Some(lookback), Some(lag)) = (lookback, lag) {
            if lag >= lookback {
                c.problem(
                    "lag",
                    "must be shorter than lookback, or the first window is empty",
                );
            }
        }

        match (
            bucket,
            prefix,
            endpoint,
            gzip,
            auth,
            org,
            token,
            api_base,
            region_hosts,
            full_events,
            max_projects,
            streams,
            time_budget,
            lookback,
            overlap,
            lag,
            max_window,
            push,
            backfill_start,
            webhook_secret,
            webhook_inline,
            inbox_max,
        ) {
            (
                Some(bucket),
                Some(prefix),
                Some(endpoint),
                Some(gzip),
                Some(auth),
                Some(org),
                Some(token),
                Some(api_base),
                Some(region_hosts),
                Some(full_events),
                Some(max_projects),
                Some(streams),
                Some(time_budget),
                Some(lookback),
                Some(overlap),
                Some(lag),
                Some(max_window),
                Some(push),
                Some(backfill_start),
                Some(webhook_secret),
                Some(webhook_inline),
                Some(inbox_max),
            ) if c.problems.is_empty() => Ok(Config {
                gcs: GcsConfig {
                    bucket,
                    prefix,
                    endpoint,
                    gzip,
                    auth,
                },
                sentry: SentryConfig {
                    org,
                    token,
                    api_base,
                    region_hosts,
                    full_events,
                    max_projects,
                },
                streams,
                timing: Timing {
                    time_budget,
                    lookback,
                    overlap,
                    lag,
                    max_window,
                },
                push,
                backfill_start,
                webhook: WebhookConfig {
                    secret: webhook_secret,
                    inline: webhook_inline,
                    inbox_max,
                },
            }),
            _ => Err(ConfigError {
                problems: c.problems,
            }),
        }
    }
}

/// Collects problems while reading settings, so one pass reports all of them.
struct Checker<'a> {
    source: &'a dyn VariableSource,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, setting: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            setting,
            message: message.into(),
        });
    }

    /// The raw value, or the default from [`SETTINGS`]; a missing required value is a problem.
    fn raw(&mut self, name: &'static str) -> Option<(&'static str, String)> {
        let setting = SETTINGS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("setting {name} is missing from SETTINGS"));
        match self.source.get(name) {
            Ok(Some(v)) => Some((setting.name, v)),
            Ok(None) => match setting.default {
                Some(d) => Some((setting.name, d.to_string())),
                None => {
                    self.problem(name, "is required but not set");
                    None
                }
            },
            Err(e) => {
                self.problem(name, format!("could not be read: {e}"));
                None
            }
        }
    }

    fn value(&mut self, name: &'static str) -> Option<(&'static str, String)> {
        self.raw(name).map(|(n, v)| (n, v.trim().to_string()))
    }

    fn secret(&mut self, name: &'static str) -> Option<(&'static str, Secret)> {
        self.raw(name).map(|(n, v)| (n, Secret::new(v.trim())))
    }

    fn check<V, T>(
        &mut self,
        (name, value): (&'static str, V),
        rule: impl FnOnce(V) -> Result<T, String>,
    ) -> Option<T> {
        match rule(value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(name, message);
                None
            }
        }
    }
}

fn bucket_name(v: String) -> Result<String, String> {
    // https://cloud.google.com/storage/docs/buckets#naming
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = v
        .bytes()
        .next()
        .zip(v.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if v.is_empty() {
        Err("is required: the name of the bucket the SecOps feed reads".into())
    } else if v.starts_with("gs://") {
        Err("must be the bare bucket name, without gs:// or a path".into())
    } else if !ok_chars || !ends_ok || v.len() < 3 || v.len() > 222 {
        Err("is not a valid bucket name: 3-63 characters of a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit".into())
    } else {
        Ok(v)
    }
}

fn object_prefix(v: String) -> Result<String, String> {
    if v.starts_with('/') {
        Err("must not start with '/': write it like sentry/".into())
    } else if !v.is_empty() && !v.ends_with('/') {
        Err("must be empty or end with '/': write it like sentry/".into())
    } else if v.len() > 512 {
        Err("is too long: keep it under 512 bytes, object names are at most 1,024".into())
    } else if v.chars().any(|c| c.is_control()) || v.split('/').any(|s| s == "." || s == "..") {
        Err("must not contain control characters or '.'/'..' segments".into())
    } else {
        Ok(v)
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL that may carry credentials: https, or http to a loopback address (emulators).
fn credential_url(v: &str) -> Result<Url, String> {
    let url = Url::parse(v).map_err(|_| {
        "is not a URL: write it like https://host or http://127.0.0.1:PORT".to_string()
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a #fragment".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err(
                "must use https: plain http is allowed only to a loopback address (127.0.0.1, ::1, localhost)"
                    .into(),
            )
        }
        _ => return Err("must be an https:// URL".into()),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(url)
}

/// An origin (`scheme://host[:port]`), because Spin's `allowed_outbound_hosts` accepts no path.
fn origin(v: String) -> Result<Url, String> {
    let url = credential_url(&v)?;
    if url.path() != "/" || url.query().is_some() {
        return Err(
            "must be an origin without a path or query, like https://host[:port] (allowed_outbound_hosts is templated from it)"
                .into(),
        );
    }
    Ok(url)
}

fn host_pattern(v: String) -> Result<HostPattern, String> {
    const FORM: &str = "must be one allowed-host pattern like https://*.sentry.io or https://sentry.example.com[:port]";
    let (scheme, rest) = v.split_once("://").ok_or_else(|| FORM.to_string())?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err(FORM.into());
    }
    let (any_subdomain, rest) = match rest.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // Validate the host and port by parsing them as a URL of the same scheme.
    let url = credential_url(&format!("{scheme}://{rest}/"))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host.contains('*') || (any_subdomain && !host.contains('.')) {
        return Err(FORM.into());
    }
    Ok(HostPattern {
        scheme: url.scheme().to_string(),
        host,
        any_subdomain,
        port: url
            .port_or_known_default()
            .ok_or_else(|| FORM.to_string())?,
    })
}

fn boolean(v: String) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

fn org_slug(v: String) -> Result<String, String> {
    // Sentry slugs are lower-case letters, digits, '-' and '_'; the slug goes into URL paths,
    // so nothing else may pass.
    if v.is_empty() {
        return Err(
            "is required: your organization's slug, as in https://sentry.io/organizations/SLUG/"
                .into(),
        );
    }
    if v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("must be the organization slug (a-z, 0-9, '-', '_'), not a name or URL".into());
    }
    Ok(v)
}

fn visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn sentry_token(token: Secret) -> Result<Secret, String> {
    let t = token.expose();
    if t.is_empty() {
        return Err("is required: create an internal integration (Settings > Developer Settings > Custom Integrations > Internal) with Project Read, Issue & Event Read and Organization Read, and use its token".into());
    }
    if t.starts_with("sntrys_") {
        return Err("is an organization auth token (sntrys_): those carry only the org:ci scope and cannot read events, issues or audit logs. Use an internal integration token instead (Settings > Developer Settings > Custom Integrations > Internal) with Project Read, Issue & Event Read and Organization Read (Organization Read & Write for audit logs)".into());
    }
    let t = t.strip_prefix("Bearer ").unwrap_or(t);
    if !visible_ascii(t) {
        return Err(
            "contains spaces or characters a token cannot have: paste only the token".into(),
        );
    }
    Ok(Secret::new(t))
}

fn project_cap(v: String) -> Result<Option<usize>, String> {
    match v.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= 100_000 => Ok(Some(n)),
        _ => Err("must be a whole number from 0 (all projects) to 100000".into()),
    }
}

fn stream_list(v: String) -> Result<Vec<String>, String> {
    let mut streams: Vec<String> = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !KNOWN_STREAMS.contains(&name) {
            return Err(format!(
                "names an unknown stream; choose from {}",
                KNOWN_STREAMS.join(", ")
            ));
        }
        if !streams.iter().any(|s| s == name) {
            streams.push(name.to_string());
        }
    }
    if streams.is_empty() {
        return Err(format!(
            "names no stream; choose from {}",
            KNOWN_STREAMS.join(", ")
        ));
    }
    Ok(streams)
}

/// Parses a duration written like `30s`, `10m`, `24h`, `7d` (also `0`).
pub fn parse_duration(v: &str) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn human(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn duration_between(v: String, min_secs: u64, max_secs: u64) -> Result<Duration, String> {
    let range = format!("between {} and {}", human(min_secs), human(max_secs));
    match parse_duration(&v) {
        Some(d) if (min_secs..=max_secs).contains(&d.as_secs()) => Ok(d),
        Some(_) => Err(format!("must be {range}")),
        None => Err(format!(
            "is not a duration: write a whole number and a unit (s, m, h, d), like 30s, 10m or 24h, {range}"
        )),
    }
}

/// The part of a key file that we read. Unknown fields are ignored, as Google adds some.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

/// Validates a service-account key file. Messages never quote the file: it holds the key.
fn service_account_key(
    json: &Secret,
    exchange: bool,
    token_origin: Option<&Url>,
) -> Result<ServiceAccountKey, String> {
    let file: KeyFile = serde_json::from_str(json.expose()).map_err(|e| {
        format!(
            "is not a service-account key file: invalid JSON at line {} column {}; paste the whole key file's JSON text",
            e.line(),
            e.column()
        )
    })?;
    if file.kind.as_deref() != Some("service_account") {
        return Err("is not a service-account key file (\"type\" must be \"service_account\"); create a JSON key for the writer service account".into());
    }
    let client_email = file
        .client_email
        .filter(|e| e.contains('@') && visible_ascii(e))
        .ok_or("has no valid client_email; download the key file again")?;
    let private_key_id = file
        .private_key_id
        .filter(|k| visible_ascii(k))
        .ok_or("has no private_key_id; download the key file again")?;
    let private_key = file
        .private_key
        .filter(|k| {
            k.contains("-----BEGIN PRIVATE KEY-----") && k.contains("-----END PRIVATE KEY-----")
        })
        .ok_or(
            "has no PKCS#8 private_key (-----BEGIN PRIVATE KEY-----); download the key file again",
        )?;
    let token_uri = file
        .token_uri
        .as_deref()
        .unwrap_or("https://oauth2.googleapis.com/token");
    let token_uri = credential_url(token_uri).map_err(|m| format!("has a token_uri that {m}"))?;
    if exchange {
        if let Some(allowed) = token_origin {
            if token_uri.origin() != allowed.origin() {
                return Err("has a token_uri whose origin differs from gcp_token_origin; set gcp_token_origin to the token_uri's scheme://host[:port]".into());
            }
        }
    }
    Ok(ServiceAccountKey {
        client_email,
        private_key_id,
        private_key: Secret::new(private_key),
        token_uri,
    })
}

fn gcs_auth(c: &mut Checker) -> Option<GcsAuth> {
    let key = c.secret("gcp_service_account_key");
    let token = c.secret("gcs_access_token");
    let mode = c.value("gcs_auth_mode").and_then(|v| {
        c.check(v, |m| match m.as_str() {
            "self_signed_jwt" => Ok(false),
            "token_exchange" => Ok(true),
            _ => Err("must be self_signed_jwt or token_exchange".into()),
        })
    });
    let token_origin = c.value("gcp_token_origin").and_then(|v| c.check(v, origin));
    let (key, token, exchange) = (key?, token?, mode?);
    match (key.1.is_empty(), token.1.is_empty()) {
        (true, true) => {
            c.problem(
                "gcp_service_account_key",
                "is empty and so is gcs_access_token: set one of them (the writer service account's JSON key, or a pre-minted access token)",
            );
            None
        }
        (false, false) => {
            c.problem(
                "gcs_access_token",
                "is set together with gcp_service_account_key: set only one of them",
            );
            None
        }
        (false, true) => {
            let parsed = service_account_key(&key.1, exchange, token_origin.as_ref());
            c.check((key.0, parsed), |r| r)
                .map(|key| GcsAuth::ServiceAccount { key, exchange })
        }
        (true, false) => {
            let checked = if visible_ascii(token.1.expose()) {
                Ok(token.1)
            } else {
                Err("contains spaces or characters an access token cannot have".to_string())
            };
            c.check((token.0, checked), |r| r).map(GcsAuth::AccessToken)
        }
    }
}

fn push_auth(c: &mut Checker) -> Option<PushAuth> {
    let audience = c.value("push_oidc_audience");
    let emails = c.value("push_oidc_emails");
    let jwks_url = c
        .value("push_jwks_url")
        .and_then(|v| c.check(v, |u| credential_url(&u)));
    let jwks_origin = c.value("push_jwks_origin").and_then(|v| c.check(v, origin));
    let secret = c.secret("push_shared_secret");
    let param = c.value("push_shared_secret_param");
    let allow = c
        .value("allow_unauthenticated")
        .and_then(|v| c.check(v, boolean));

    if let (Some(url), Some(allowed)) = (&jwks_url, &jwks_origin) {
        if url.origin() != allowed.origin() {
            c.problem(
                "push_jwks_origin",
                "differs from push_jwks_url's origin; set it to push_jwks_url's scheme://host[:port]",
            );
        }
    }

    let oidc = match (audience?.1, emails?.1) {
        (a, e) if a.is_empty() && e.is_empty() => None,
        (a, _) if a.is_empty() => {
            c.problem(
                "push_oidc_audience",
                "is empty while push_oidc_emails is set: set the audience configured on the push subscription or scheduler job",
            );
            None
        }
        (_, e) if e.is_empty() => {
            c.problem(
                "push_oidc_emails",
                "is empty while push_oidc_audience is set: list the service-account emails allowed to call",
            );
            None
        }
        (audience, emails) => {
            let emails: Vec<String> = emails
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect();
            if emails.iter().any(|e| !e.contains('@') || !visible_ascii(e)) {
                c.problem(
                    "push_oidc_emails",
                    "must be comma-separated email addresses",
                );
            }
            jwks_url.clone().map(|jwks_url| OidcRule {
                audience,
                emails,
                jwks_url,
            })
        }
    };

    let secret = secret?.1;
    let shared_secret = if secret.is_empty() {
        None
    } else if secret.expose().len() < 32 || !visible_ascii(secret.expose()) {
        c.problem(
            "push_shared_secret",
            "must be at least 32 visible characters: generate one with `openssl rand -hex 32`",
        );
        None
    } else {
        Some(secret)
    };

    let param = param?.1;
    let shared_secret_param = if param.is_empty() {
        None
    } else if !param
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.problem(
            "push_shared_secret_param",
            "must be a query parameter name (letters, digits, '_', '-')",
        );
        None
    } else {
        Some(param)
    };
    if shared_secret_param.is_some() && shared_secret.is_none() {
        c.problem(
            "push_shared_secret_param",
            "is set but push_shared_secret is empty: set the secret too, or clear this",
        );
    }

    let allow_unauthenticated = allow?;
    if allow_unauthenticated && (oidc.is_some() || shared_secret.is_some()) {
        c.problem(
            "allow_unauthenticated",
            "is true while push authentication is configured: set it to false (authentication is enforced whenever it is configured)",
        );
    }
    Some(PushAuth {
        oidc,
        shared_secret,
        shared_secret_param,
        allow_unauthenticated,
    })
}

#[cfg(test)]
mod tests;
