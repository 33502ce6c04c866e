//! `allowed_outbound_hosts` with Spin's meaning: each entry is `scheme://host[:port]`, where the
//! scheme may be `*`, the host `*` or `*.domain` (any subdomain, not the domain itself), and the
//! port `*`, a number, or a range `a..b` (end excluded); without a port the scheme's default
//! applies. Entries may not carry a path. Anything not matched is refused.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    /// Stored with its leading dot: `*.sentry.io` matches hosts ending in `.sentry.io`.
    Subdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Any,
    Range(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `None` for `*`.
    scheme: Option<String>,
    host: Host,
    port: Port,
    original: String,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<AllowedHost> {
        let original = entry.trim();
        let Some((scheme, rest)) = original.split_once("://") else {
            bail!("allowed outbound host {original:?} has no scheme: write it like https://example.com or *://host:*");
        };
        if scheme.is_empty() || !(scheme == "*" || scheme.chars().all(|c| c.is_ascii_alphabetic()))
        {
            bail!("allowed outbound host {original:?} has an invalid scheme");
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            bail!("allowed outbound host {original:?} has a path, which is not allowed");
        }
        // IPv6 literals keep their brackets: [::1]:8080
        let (host, port) = if let Some(end) = rest.strip_prefix('[').and_then(|r| r.find(']')) {
            let host = &rest[..end + 2];
            let after = &rest[end + 2..];
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            Host::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                bail!("allowed outbound host {original:?}: wildcards are allowed only as a prefix like *.example.com");
            }
            Host::Subdomain(format!(".{domain}"))
        } else if host.is_empty() || host.contains('*') {
            bail!("allowed outbound host {original:?} has an invalid host");
        } else {
            Host::Exact(host)
        };
        let port = match port {
            None | Some("") => {
                let p = default_port(scheme).with_context(|| {
                    format!("allowed outbound host {original:?} needs a port: the scheme has no default")
                })?;
                Port::Range(p, p)
            }
            Some("*") => Port::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => {
                    let a: u16 = a
                        .parse()
                        .with_context(|| format!("port range in {original:?}"))?;
                    let b: u16 = b
                        .parse()
                        .with_context(|| format!("port range in {original:?}"))?;
                    if b <= a {
                        bail!("allowed outbound host {original:?} has an empty port range");
                    }
                    Port::Range(a, b - 1)
                }
                None => {
                    let p: u16 = p.parse().with_context(|| format!("port in {original:?}"))?;
                    Port::Range(p, p)
                }
            },
        };
        Ok(AllowedHost {
            scheme: (scheme != "*").then(|| scheme.to_string()),
            host,
            port,
            original: original.to_string(),
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Subdomain(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Host::Exact(h) => h == host,
        };
        let port_ok = match self.port {
            Port::Any => true,
            Port::Range(a, b) => port
                .or_else(|| default_port(scheme))
                .is_some_and(|p| (a..=b).contains(&p)),
        };
        scheme_ok && host_ok && port_ok
    }
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

/// The resolved allow-list of one component.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

impl AllowedHosts {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts> {
        let entries = entries
            .iter()
            .map(|e| AllowedHost::parse(e.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(AllowedHosts { entries })
    }

    /// Whether a request to `uri` may be sent.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.entries
            .iter()
            .any(|e| e.allows(scheme, &host, uri.port_u16()))
    }

    pub fn entries(&self) -> &[AllowedHost] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entries: &[&str], url: &str) -> bool {
        AllowedHosts::parse(entries)
            .unwrap()
            .allows(&url.parse().unwrap())
    }

    #[test]
    fn exact_host_uses_the_scheme_default_port() {
        assert!(allows(&["https://sentry.io"], "https://sentry.io/api/0/"));
        assert!(allows(&["https://sentry.io/"], "https://sentry.io:443/x"));
        assert!(!allows(&["https://sentry.io"], "https://sentry.io:8443/x"));
        assert!(!allows(&["https://sentry.io"], "http://sentry.io/x"));
        assert!(!allows(&["https://sentry.io"], "https://evil.io/x"));
        assert!(!allows(
            &["https://sentry.io"],
            "https://sentry.io.evil.io/x"
        ));
    }

    #[test]
    fn subdomain_wildcard_excludes_the_bare_domain_and_lookalikes() {
        let e = &["https://*.sentry.io"];
        assert!(allows(e, "https://us.sentry.io/api/0/"));
        assert!(allows(e, "https://a.b.sentry.io/"));
        assert!(!allows(e, "https://sentry.io/"));
        assert!(!allows(e, "https://evilsentry.io/"));
        assert!(!allows(e, "https://us.sentry.io.evil.com/"));
    }

    #[test]
    fn explicit_ports_ranges_and_wildcards() {
        assert!(allows(
            &["http://127.0.0.1:4443"],
            "http://127.0.0.1:4443/storage/v1/b"
        ));
        assert!(!allows(
            &["http://127.0.0.1:4443"],
            "http://127.0.0.1:4444/"
        ));
        assert!(allows(&["http://127.0.0.1:*"], "http://127.0.0.1:1/"));
        assert!(allows(
            &["http://localhost:8000..8002"],
            "http://localhost:8001/"
        ));
        assert!(!allows(
            &["http://localhost:8000..8002"],
            "http://localhost:8002/"
        ));
        assert!(allows(&["*://*:*"], "https://anything.example:9/"));
        assert!(allows(&["*://example.com:443"], "https://example.com/"));
        assert!(!allows(&[], "https://example.com/"));
        assert!(allows(&["http://[::1]:8080"], "http://[::1]:8080/"));
    }

    #[test]
    fn malformed_entries_are_refused_with_a_reason() {
        for bad in [
            "example.com",
            "https://example.com/path",
            "https://exa*mple.com",
            "https://*.",
            "ftp://example.com",
            "https://example.com:notaport",
            "https://example.com:9..3",
        ] {
            let err = AllowedHost::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad.trim()) || err.contains("port"),
                "{bad}: {err}"
            );
        }
    }
}
