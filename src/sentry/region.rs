//! Region discovery: `GET /api/0/organizations/{org}/` gives `links.regionUrl`, the host that
//! serves the org's region endpoints directly (sentry.io otherwise proxies them at the cost of
//! a hop and the proxy's timeouts). The answer is cached in KV for a day.
//!
//! The region URL comes from a response, so it must match `sentry_region_hosts` (or equal
//! `sentry_api_base`) before the token is ever sent to it.

use serde::Deserialize;
use url::Url;

use super::{authorized_get, classify_status, from_transport, SentryError};
use crate::config::SentryConfig;
use crate::ports::Env;
use crate::state::{self, keys, RegionRecord};

pub const REGION_TTL_SECS: i64 = 24 * 3600;
/// Organization details are a few KB; anything far larger is not what we asked for.
const MAX_ORG_BODY: usize = 1024 * 1024;

#[derive(Deserialize)]
struct OrgDetails {
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(rename = "regionUrl")]
    region_url: Option<String>,
}

/// Checks a region URL from a response before any credential goes to it.
pub fn accept_region_url(cfg: &SentryConfig, candidate: &str) -> Result<Url, SentryError> {
    let url = Url::parse(candidate).map_err(|_| {
        SentryError::Malformed(
            "organization details carry a links.regionUrl that is not a URL".into(),
        )
    })?;
    let same_as_base = url.origin() == cfg.api_base.origin();
    let clean = url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/";
    if clean && (same_as_base || cfg.region_hosts.matches(&url)) {
        Ok(url)
    } else {
        Err(SentryError::Fatal(format!(
            "Sentry named region {} for this org, which sentry_region_hosts does not allow; the token is not sent there. For self-hosted Sentry set sentry_region_hosts to sentry_api_base",
            url.origin().ascii_serialization()
        )))
    }
}

/// The origin to use for region endpoints, from the KV cache or a fresh request that must
/// answer before `deadline`.
pub fn region_url(env: &Env, cfg: &SentryConfig, deadline: f64) -> Result<Url, SentryError> {
    let now = env.clock.now() as i64;
    let api_base = cfg.api_base.origin().ascii_serialization();
    let cached: Option<RegionRecord> = state::load(env.kv, keys::REGION).unwrap_or(None);
    if let Some(rec) = cached {
        let fresh = now - rec.fetched_at < REGION_TTL_SECS && rec.fetched_at <= now;
        if fresh && rec.api_base == api_base && rec.org == cfg.org {
            if let Ok(url) = accept_region_url(cfg, &rec.region_url) {
                return Ok(url);
            }
        }
    }

    let what = "organization details";
    let mut url = cfg.api_base.clone();
    url.set_path(&format!("/api/0/organizations/{}/", cfg.org));
    let mut request = authorized_get(cfg, url);
    request.max_response_bytes = MAX_ORG_BODY;
    request.bound_by(deadline, env.clock.now());
    let resp = env
        .http
        .send(&request)
        .map_err(|e| from_transport(what, e))?;
    if !(200..300).contains(&resp.status) {
        return Err(classify_status(what, "Organization Read (org:read)", &resp));
    }
    let details: OrgDetails = serde_json::from_slice(&resp.body).map_err(|_| {
        SentryError::Malformed(format!(
            "{what}: the body is not the documented JSON object"
        ))
    })?;
    // Self-hosted Sentry may omit regionUrl: then everything lives at sentry_api_base.
    let region = match details.links.and_then(|l| l.region_url) {
        Some(u) if !u.is_empty() => accept_region_url(cfg, &u)?,
        _ => cfg.api_base.clone(),
    };
    let record = RegionRecord {
        api_base,
        org: cfg.org.clone(),
        region_url: region.origin().ascii_serialization(),
        fetched_at: now,
    };
    // A failed cache write costs one request next run; it is not worth failing the run.
    if let Err(e) = state::save(env.kv, keys::REGION, &record) {
        eprintln!("warning: could not cache the region URL: {e}");
    }
    Ok(region)
}
