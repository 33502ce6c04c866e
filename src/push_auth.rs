//! Who may start runs or read status over HTTP: Google-signed OIDC tokens (what Pub/Sub push
//! and Cloud Scheduler send) or a shared secret, compared in constant time.
//!
//! OIDC rules (<https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions>):
//! RS256 only, key chosen by `kid` from Google's JWKS (cached in KV by its
//! `Cache-Control: max-age`, refetched on an unknown `kid` at most every few seconds),
//! `iss` is `https://accounts.google.com` or `accounts.google.com`, `aud` is the configured
//! audience, `email` is allowed and `email_verified` is true, `exp`/`iat` within 60 s of skew.

use serde::{Deserialize, Serialize};

use crate::config::{OidcRule, PushAuth};
use crate::jwt::{self, RsaVerifier, UnverifiedJwt};
use crate::ports::{Env, OutboundRequest};
use crate::state;

const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
const SKEW_SECS: f64 = 60.0;
const JWKS_KEY: &str = "v1/jwks";
/// An unknown `kid` refetches the JWKS, but not more often than this: callers without a valid
/// token must not be able to make the component hammer Google.
const MIN_REFETCH_SECS: f64 = 5.0;
const DEFAULT_MAX_AGE: f64 = 300.0;
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no or bad credentials. The reason is logged, never sent back in detail.
    Unauthorized(&'static str),
    /// 503: the JWKS could not be fetched; the caller should retry.
    Unavailable(String),
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Oidc { email: String },
    SharedSecret,
    Unauthenticated,
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ
/// (`subtle`; only whether the lengths differ shows).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Decides whether a request may proceed.
pub fn authorize(
    env: &Env,
    push: &PushAuth,
    authorization: Option<&str>,
    query: &str,
) -> Result<Caller, Refusal> {
    if push.oidc.is_none() && push.shared_secret.is_none() {
        return if push.allow_unauthenticated {
            Ok(Caller::Unauthenticated)
        } else {
            Err(Refusal::Unauthorized("no authentication is configured"))
        };
    }
    let token = bearer(authorization);
    if let Some(secret) = &push.shared_secret {
        let from_query = push.shared_secret_param.as_deref().and_then(|param| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == param)
                .map(|(_, v)| v.into_owned())
        });
        let candidates = [token.map(str::to_string), from_query];
        if candidates
            .iter()
            .flatten()
            .any(|c| constant_time_eq(c.as_bytes(), secret.expose().as_bytes()))
        {
            return Ok(Caller::SharedSecret);
        }
    }
    match (&push.oidc, token) {
        (Some(rule), Some(token)) => verify_oidc(env, rule, token),
        (_, None) => Err(Refusal::Unauthorized("no credentials")),
        (None, Some(_)) => Err(Refusal::Unauthorized("wrong shared secret")),
    }
}

fn verify_oidc(env: &Env, rule: &OidcRule, token: &str) -> Result<Caller, Refusal> {
    let jwt = jwt::decode(token).map_err(Refusal::Unauthorized)?;
    if jwt.header["alg"] != "RS256" {
        return Err(Refusal::Unauthorized("alg is not RS256"));
    }
    let kid = jwt.header["kid"]
        .as_str()
        .ok_or(Refusal::Unauthorized("no kid"))?;
    let verifier = key_for(env, rule, kid)?;
    if !verifier.verify(&jwt) {
        return Err(Refusal::Unauthorized("bad signature"));
    }
    check_claims(&jwt, rule, env.clock.now())
}

/// The claim rules, after the signature checked out.
fn check_claims(jwt: &UnverifiedJwt, rule: &OidcRule, now: f64) -> Result<Caller, Refusal> {
    let c = &jwt.claims;
    if !c["iss"].as_str().is_some_and(|i| ISSUERS.contains(&i)) {
        return Err(Refusal::Unauthorized("wrong issuer"));
    }
    let aud_ok = match &c["aud"] {
        serde_json::Value::String(a) => a == &rule.audience,
        serde_json::Value::Array(list) => list
            .iter()
            .any(|a| a.as_str() == Some(rule.audience.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::Unauthorized("wrong audience"));
    }
    let exp = c["exp"].as_f64().ok_or(Refusal::Unauthorized("no exp"))?;
    let iat = c["iat"].as_f64().ok_or(Refusal::Unauthorized("no iat"))?;
    if exp + SKEW_SECS < now {
        return Err(Refusal::Unauthorized("expired"));
    }
    if iat - SKEW_SECS > now || c["nbf"].as_f64().is_some_and(|nbf| nbf - SKEW_SECS > now) {
        return Err(Refusal::Unauthorized("issued in the future"));
    }
    if c["email_verified"] != true {
        return Err(Refusal::Unauthorized("email not verified"));
    }
    let email = c["email"]
        .as_str()
        .ok_or(Refusal::Unauthorized("no email"))?
        .to_ascii_lowercase();
    if !rule.emails.contains(&email) {
        return Err(Refusal::Unauthorized("email not allowed"));
    }
    Ok(Caller::Oidc { email })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedJwks {
    url: String,
    fetched_at: f64,
    max_age: f64,
    keys: Vec<Jwk>,
}

/// An RSA signing key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// The RS256 signing keys of a JWKS document (`{"keys": [...]}`); other keys are ignored.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, &'static str> {
    let raw: RawJwks = serde_json::from_slice(body).map_err(|_| "not a JWKS document")?;
    Ok(raw
        .keys
        .into_iter()
        .filter(|k| k.kty.as_deref() == Some("RSA"))
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == "RS256"))
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            Some(Jwk {
                kid: k.kid?,
                n: k.n?,
                e: k.e?,
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// `max-age` from a `Cache-Control` header, clamped to a minute .. a day.
fn max_age(cache_control: Option<&str>) -> f64 {
    cache_control
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(DEFAULT_MAX_AGE)
        .clamp(60.0, 86_400.0)
}

fn key_for(env: &Env, rule: &OidcRule, kid: &str) -> Result<RsaVerifier, Refusal> {
    let now = env.clock.now();
    let cached: Option<CachedJwks> = state::load(env.kv, JWKS_KEY)
        .ok()
        .flatten()
        .filter(|c: &CachedJwks| c.url == rule.jwks_url.as_str() && c.fetched_at <= now);
    let (jwks, fresh) = match cached {
        Some(c) if now < c.fetched_at + c.max_age => {
            let known = c.keys.iter().any(|k| k.kid == kid);
            if known || now < c.fetched_at + MIN_REFETCH_SECS {
                (c, false)
            } else {
                (fetch_jwks(env, rule)?, true)
            }
        }
        _ => (fetch_jwks(env, rule)?, true),
    };
    if fresh {
        if let Err(e) = state::save(env.kv, JWKS_KEY, &jwks) {
            eprintln!("warning: could not cache the JWKS: {e}");
        }
    }
    let key = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or(Refusal::Unauthorized("unknown kid"))?;
    RsaVerifier::from_jwk(&key.n, &key.e).map_err(Refusal::Unauthorized)
}

fn fetch_jwks(env: &Env, rule: &OidcRule) -> Result<CachedJwks, Refusal> {
    let mut request =
        OutboundRequest::get(rule.jwks_url.clone()).header("accept", "application/json");
    request.max_response_bytes = MAX_JWKS_BYTES;
    let unavailable = |m: String| Refusal::Unavailable(format!("the JWKS at push_jwks_url: {m}"));
    let resp = env
        .http
        .send(&request)
        .map_err(|e| unavailable(e.to_string()))?;
    if resp.status != 200 {
        return Err(unavailable(format!("answered {}", resp.status)));
    }
    let keys = parse_jwks(&resp.body).map_err(|e| unavailable(e.into()))?;
    Ok(CachedJwks {
        url: rule.jwks_url.to_string(),
        fetched_at: env.clock.now(),
        max_age: max_age(resp.header("cache-control")),
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison_is_still_a_comparison() {
        assert!(constant_time_eq(b"secret-value", b"secret-value"));
        assert!(!constant_time_eq(b"secret-value", b"secret-valuf"));
        assert!(!constant_time_eq(b"secret-value", b"secret-valu"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a\xff", b"a"));
    }

    #[test]
    fn bearer_tokens_are_taken_from_the_authorization_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn max_age_is_read_and_clamped() {
        assert_eq!(
            max_age(Some("public, max-age=22123, must-revalidate, no-transform")),
            22123.0
        );
        assert_eq!(max_age(Some("max-age=5")), 60.0);
        assert_eq!(max_age(Some("no-store")), DEFAULT_MAX_AGE);
        assert_eq!(max_age(None), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("max-age=99999999")), 86_400.0);
    }

    fn rule() -> OidcRule {
        OidcRule {
            audience: "https://collector.example/pubsub".into(),
            emails: vec!["push@p.iam.gserviceaccount.com".into()],
            jwks_url: url::Url::parse("https://www.googleapis.com/oauth2/v3/certs").unwrap(),
        }
    }

    fn claims(edit: impl FnOnce(&mut serde_json::Value)) -> UnverifiedJwt {
        let mut c = serde_json::json!({
            "iss": "https://accounts.google.com", "aud": "https://collector.example/pubsub",
            "email": "Push@p.iam.gserviceaccount.com", "email_verified": true,
            "iat": 1000, "exp": 4600, "sub": "1234",
        });
        edit(&mut c);
        use base64::Engine;
        let b = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        jwt::decode(&format!(
            "{}.{}.c2ln",
            b(&serde_json::json!({"alg": "RS256", "kid": "k"})),
            b(&c)
        ))
        .unwrap()
    }

    #[test]
    fn claim_rules_accept_googles_tokens_and_refuse_each_deviation() {
        assert!(check_claims(&claims(|_| {}), &rule(), 2000.0).is_ok());
        assert!(check_claims(
            &claims(|c| c["iss"] = "accounts.google.com".into()),
            &rule(),
            2000.0
        )
        .is_ok());
        assert!(
            check_claims(&claims(|_| {}), &rule(), 4650.0).is_ok(),
            "60 s of skew"
        );
        let refused = [
            (
                claims(|c| c["iss"] = "https://evil.example".into()),
                2000.0,
                "wrong issuer",
            ),
            (
                claims(|c| c["aud"] = "https://other.example".into()),
                2000.0,
                "wrong audience",
            ),
            (
                claims(|c| c["aud"] = serde_json::Value::Null),
                2000.0,
                "wrong audience",
            ),
            (claims(|_| {}), 4700.0, "expired"),
            (claims(|_| {}), 900.0, "issued in the future"),
            (
                claims(|c| c["email_verified"] = "true".into()),
                2000.0,
                "email not verified",
            ),
            (
                claims(|c| c["email_verified"] = false.into()),
                2000.0,
                "email not verified",
            ),
            (
                claims(|c| c["email"] = "other@p.iam.gserviceaccount.com".into()),
                2000.0,
                "email not allowed",
            ),
            (
                claims(|c| {
                    c.as_object_mut()
                        .unwrap()
                        .remove("exp")
                        .map(|_| ())
                        .unwrap()
                }),
                2000.0,
                "no exp",
            ),
        ];
        for (jwt, now, reason) in refused {
            assert_eq!(
                check_claims(&jwt, &rule(), now),
                Err(Refusal::Unauthorized(reason)),
                "{reason}"
            );
        }
    }
}
