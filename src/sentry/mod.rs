//! Talking to Sentry's web API: requests, response classification, and the endpoints we use.

pub mod client;
pub mod link;
pub mod pages;
pub mod ratelimit;
pub mod region;

use std::fmt;

use crate::config::SentryConfig;
use crate::ports::{InboundResponse, OutboundRequest, TransportError};

/// Why a Sentry request did not yield data. A non-2xx body is never data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentryError {
    /// 401 and other refusals: retrying will not help; the message says which setting or
    /// scope to fix.
    Fatal(String),
    /// 403 or 404: as fatal as [`SentryError::Fatal`], but the caller may know better (a
    /// project deleted since the window was planned answers 404, or 403 when named in a
    /// Discover query).
    Refused { status: u16, message: String },
    /// 429, 5xx, timeouts: worth retrying later.
    Transient(String),
    /// A 2xx whose body is not what the API documents.
    Malformed(String),
    /// The run's time budget does not allow another request; the next run resumes.
    OutOfTime,
}

impl fmt::Display for SentryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SentryError::Fatal(m)
            | SentryError::Refused { message: m, .. }
            | SentryError::Transient(m)
            | SentryError::Malformed(m) => f.write_str(m),
            SentryError::OutOfTime => f.write_str("the run's time budget ran out"),
        }
    }
}

impl std::error::Error for SentryError {}

impl SentryError {
    /// Whether the same request may succeed later with nothing changed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, SentryError::Fatal(_) | SentryError::Refused { .. })
    }
}

/// A GET to `url` carrying the Sentry token. Only ever called with URLs the component built
/// from `sentry_api_base` or a region URL that matched `sentry_region_hosts`.
pub(crate) fn authorized_get(cfg: &SentryConfig, url: url::Url) -> OutboundRequest {
    OutboundRequest::get(url)
        .header("authorization", format!("Bearer {}", cfg.token.expose()))
        .header("accept", "application/json")
}

/// Maps a transport failure to a Sentry error. Timeouts and resets are transient; a refusal by
/// the host is a configuration problem.
pub(crate) fn from_transport(what: &str, e: TransportError) -> SentryError {
    match e {
        TransportError::Denied(_) => SentryError::Fatal(format!("{what}: {e}")),
        _ => SentryError::Transient(format!("{what}: {e}")),
    }
}

/// Classifies a non-2xx answer. `what` names the request for the operator.
/// `permission` names what the request needs, for a 403.
pub(crate) fn classify_status(what: &str, permission: &str, resp: &InboundResponse) -> SentryError {
    match resp.status {
        401 => SentryError::Fatal(format!(
            "{what}: Sentry rejected sentry_auth_token (401); check that the token is current and pasted whole"
        )),
        403 => SentryError::Refused {
            status: 403,
            message: format!(
                "{what}: the token lacks a permission (403); give the internal integration {permission}"
            ),
        },
        404 => SentryError::Refused {
            status: 404,
            message: format!(
                "{what}: not found (404); check sentry_org (the organization slug) and sentry_api_base"
            ),
        },
        429 => SentryError::Transient(format!("{what}: rate limited (429)")),
        s if s >= 500 => SentryError::Transient(format!("{what}: Sentry answered {s}")),
        s => SentryError::Fatal(format!("{what}: Sentry answered {s}")),
    }
}
