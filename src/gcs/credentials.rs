//! Access tokens for Cloud Storage, in the three modes the configuration allows:
//!
//! - a self-signed JWT (`scope` = cloud-platform, no token endpoint; what Google's own Rust
//!   storage client does with a service-account key);
//! - the OAuth 2.0 JWT-bearer exchange (RFC 7523) at the key's `token_uri`, the access token
//!   cached in KV until five minutes before it expires (Spin keeps nothing between requests);
//! - a pre-minted access token.
//!
//! <https://developers.google.com/identity/protocols/oauth2/service-account>

use serde::{Deserialize, Serialize};

use super::error::{with_retries, GcsError};
use crate::config::GcsAuth;
use crate::jwt::RsaSigner;
use crate::ports::{Env, Method, OutboundRequest};
use crate::retry::{self, Attempt, Deadline, Failure};
use crate::secret::Secret;
use crate::state::{self, keys};

/// Self-signed JWTs for Cloud Storage need exactly this scope.
const SELF_SIGNED_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const EXCHANGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Tokens are back-dated against clock skew, and renewed this long before they expire.
const BACKDATE_SECS: i64 = 30;
const RENEW_BEFORE_SECS: f64 = 300.0;
const LIFETIME_SECS: i64 = 3600;

#[derive(Serialize)]
struct SelfSignedClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: &'static str,
    iat: i64,
    exp: i64,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// The KV copy of an exchanged token.
#[derive(Serialize, Deserialize)]
struct CachedToken {
    access_token: String,
    expires_at: f64,
    /// The key it was minted with: a new key invalidates it.
    key_id: String,
}

enum Mode {
    Static(Secret),
    SelfSigned {
        signer: RsaSigner,
        email: String,
    },
    Exchange {
        signer: RsaSigner,
        email: String,
        key_id: String,
        token_uri: url::Url,
    },
}

pub struct Credentials {
    mode: Mode,
    current: Option<(Secret, f64)>,
    /// Tokens minted at the token endpoint during this run (for the summary and tests).
    pub minted: u32,
}

impl Credentials {
    /// Parses the key once. Errors name the setting and never contain key material.
    pub fn new(auth: &GcsAuth) -> Result<Credentials, GcsError> {
        let mode = match auth {
            GcsAuth::AccessToken(t) => Mode::Static(t.clone()),
            GcsAuth::ServiceAccount { key, exchange } => {
                let signer =
                    RsaSigner::from_pkcs8_pem(key.private_key.expose(), &key.private_key_id)
                        .map_err(|e| {
                            GcsError::Fatal(format!(
                                "gcp_service_account_key: {e}; download the key file again"
                            ))
                        })?;
                if *exchange {
                    Mode::Exchange {
                        signer,
                        email: key.client_email.clone(),
                        key_id: key.private_key_id.clone(),
                        token_uri: key.token_uri.clone(),
                    }
                } else {
                    Mode::SelfSigned {
                        signer,
                        email: key.client_email.clone(),
                    }
                }
            }
        };
        Ok(Credentials {
            mode,
            current: None,
            minted: 0,
        })
    }

    /// Forgets the current token, after a 401. An exchanged token is dropped from the KV
    /// cache too (if it is still the cached one; another run may have cached a newer token
    /// since), or the next attempt would reload the token that was just refused.
    pub fn invalidate(&mut self, env: &Env) {
        if let (Mode::Exchange { .. }, Some((refused, _))) = (&self.mode, self.current.take()) {
            let cached: Option<CachedToken> = state::load(env.kv, keys::GCS_TOKEN).ok().flatten();
            if cached.is_some_and(|c| c.access_token == refused.expose()) {
                if let Err(e) = env.kv.delete(keys::GCS_TOKEN) {
                    eprintln!("warning: could not drop the refused access token from KV: {e}");
                }
            }
        }
        self.current = None;
    }

    /// Whether [`Credentials::token`] would answer without a request (a static token, a signed
    /// JWT, or an exchanged token still valid here or in KV).
    pub fn ready(&self, env: &Env) -> bool {
        let now = env.clock.now();
        if self
            .current
            .as_ref()
            .is_some_and(|(_, expires)| *expires - RENEW_BEFORE_SECS > now)
        {
            return true;
        }
        match &self.mode {
            Mode::Exchange { key_id, .. } => cached_token(env, key_id, now).is_some(),
            _ => true,
        }
    }

    /// A bearer token valid for at least the next few minutes.
    pub fn token(&mut self, env: &Env, deadline: Deadline) -> Result<Secret, GcsError> {
        let now = env.clock.now();
        if let Some((token, expires)) = &self.current {
            if *expires - RENEW_BEFORE_SECS > now {
                return Ok(token.clone());
            }
        }
        let (token, expires) = match &self.mode {
            Mode::Static(t) => (t.clone(), f64::INFINITY),
            Mode::SelfSigned { signer, email } => {
                let iat = now as i64 - BACKDATE_SECS;
                let jwt = signer
                    .sign(&SelfSignedClaims {
                        iss: email,
                        sub: email,
                        scope: SELF_SIGNED_SCOPE,
                        iat,
                        exp: iat + LIFETIME_SECS,
                    })
                    .map_err(|e| GcsError::Fatal(format!("gcp_service_account_key: {e}")))?;
                (Secret::new(jwt), (iat + LIFETIME_SECS) as f64)
            }
            Mode::Exchange {
                signer,
                email,
                key_id,
                token_uri,
            } => {
                let cached = self
                    .current
                    .is_none()
                    .then(|| cached_token(env, key_id, now))
                    .flatten();
                match cached {
                    Some(hit) => hit,
                    None => {
                        let minted = exchange(env, signer, email, token_uri, deadline)?;
                        self.minted += 1;
                        let record = CachedToken {
                            access_token: minted.0.expose().to_string(),
                            expires_at: minted.1,
                            key_id: key_id.clone(),
                        };
                        if let Err(e) = state::save(env.kv, keys::GCS_TOKEN, &record) {
                            eprintln!("warning: could not cache the access token: {e}");
                        }
                        minted
                    }
                }
            }
        };
        self.current = Some((token.clone(), expires));
        Ok(token)
    }
}

fn cached_token(env: &Env, key_id: &str, now: f64) -> Option<(Secret, f64)> {
    let cached: CachedToken = state::load(env.kv, keys::GCS_TOKEN).ok().flatten()?;
    (cached.key_id == key_id && cached.expires_at - RENEW_BEFORE_SECS > now)
        .then(|| (Secret::new(cached.access_token), cached.expires_at))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<f64>,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The JWT-bearer exchange, retried on 408/429/5xx inside the deadline.
fn exchange(
    env: &Env,
    signer: &RsaSigner,
    email: &str,
    token_uri: &url::Url,
    deadline: Deadline,
) -> Result<(Secret, f64), GcsError> {
    with_retries(env.clock, deadline, || {
        exchange_once(env, signer, email, token_uri, deadline)
    })
}

/// One attempt of [`exchange`], its answer classified.
fn exchange_once(
    env: &Env,
    signer: &RsaSigner,
    email: &str,
    token_uri: &url::Url,
    deadline: Deadline,
) -> Attempt<(Secret, f64), GcsError> {
    let now = env.clock.now();
    let iat = now as i64 - BACKDATE_SECS;
    let assertion = match signer.sign(&AssertionClaims {
        iss: email,
        scope: EXCHANGE_SCOPE,
        aud: token_uri.as_str(),
        iat,
        exp: iat + LIFETIME_SECS,
    }) {
        Ok(a) => a,
        Err(e) => {
            return Attempt::Done(Err(GcsError::Fatal(format!(
                "gcp_service_account_key: {e}"
            ))))
        }
    };
    let mut request = OutboundRequest::get(token_uri.clone())
        .header("content-type", "application/x-www-form-urlencoded");
    request.method = Method::Post;
    request.body =
        form_encode(&[("grant_type", JWT_BEARER), ("assertion", &assertion)]).into_bytes();
    request.max_response_bytes = 64 * 1024;
    request.bound_by(deadline.at(), env.clock.now());
    match env.http.send(&request) {
        Ok(resp) => match retry::verdict(resp.status) {
            retry::Verdict::Success => Attempt::Done(minted(env, &resp.body)),
            retry::Verdict::Retry => Attempt::Failed(Failure::new(format!(
                "the token endpoint answered {}",
                resp.status
            ))),
            retry::Verdict::Fail => Attempt::Done(Err(refused(resp.status, &resp.body))),
        },
        Err(crate::ports::TransportError::Denied(_)) => Attempt::Done(Err(GcsError::Fatal(
            "the token endpoint is not in allowed_outbound_hosts: set gcp_token_origin to the key's token_uri origin".into(),
        ))),
        Err(e) => Attempt::Failed(Failure::new(format!("the token endpoint: {e}"))),
    }
}

/// The token and its expiry from the endpoint's 200.
fn minted(env: &Env, body: &[u8]) -> Result<(Secret, f64), GcsError> {
    let body: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        GcsError::Transient("the token endpoint answered 200 without an access_token".into())
    })?;
    if body.access_token.is_empty() || !body.access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GcsError::Transient(
            "the token endpoint returned an unusable access_token".into(),
        ));
    }
    let lifetime = body
        .expires_in
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(3600.0)
        .min(86400.0);
    Ok((Secret::new(body.access_token), env.clock.now() + lifetime))
}

/// The error for a refusal of the key (Google's `error` and `error_description`, bounded).
fn refused(status: u16, body: &[u8]) -> GcsError {
    let err: Option<TokenError> = serde_json::from_slice(body).ok();
    let (code, description) = err
        .map(|e| {
            (
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let description: String = description
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    GcsError::Fatal(format!(
        "gcp_service_account_key was refused by the token endpoint ({status} {code}: {description}); check that the key is current, not deleted, and that the machine's clock is right"
    ))
}
