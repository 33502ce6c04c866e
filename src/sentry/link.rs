//! Sentry's `Link` header: `<url>; rel="previous"; results="false"; cursor="...", <url>; rel="next"; ...`
//! (`getsentry/sentry:src/sentry/api/base.py`). Parsed as an RFC 8288 link list with quoted
//! parameters; URLs may contain commas and semicolons. Only the `cursor` of the `next` link is
//! ever used: the URL is built on whatever host the server believes it has, which is not
//! necessarily the host we called, and the token must never follow it.

use std::fmt;

/// One link of the header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub rel: Option<String>,
    pub results: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError(pub &'static str);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed Link header: {}", self.0)
    }
}

/// Headers longer than this are refused: Sentry's are a few hundred bytes.
const MAX_HEADER: usize = 16 * 1024;
const MAX_CURSOR: usize = 256;

pub fn parse(header: &str) -> Result<Vec<Link>, LinkError> {
    if header.len() > MAX_HEADER {
        return Err(LinkError("longer than 16 KiB"));
    }
    let mut links = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        let after_lt = rest.strip_prefix('<').ok_or(LinkError("expected '<'"))?;
        let end = after_lt.find('>').ok_or(LinkError("unterminated '<'"))?;
        rest = after_lt[end + 1..].trim_start();
        let mut link = Link::default();
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start();
            let name_end = r
                .find(|c: char| c == '=' || c == ';' || c == ',' || c.is_whitespace())
                .unwrap_or(r.len());
            let name = r[..name_end].to_ascii_lowercase();
            if name.is_empty() {
                return Err(LinkError("empty parameter name"));
            }
            let mut r = r[name_end..].trim_start();
            let mut value = String::new();
            if let Some(v) = r.strip_prefix('=') {
                let v = v.trim_start();
                if let Some(q) = v.strip_prefix('"') {
                    let mut chars = q.char_indices();
                    let mut closed = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, e)) => value.push(e),
                                None => return Err(LinkError("dangling escape")),
                            },
                            '"' => {
                                closed = Some(i + 1);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let closed = closed.ok_or(LinkError("unterminated quoted value"))?;
                    r = &q[closed..];
                } else {
                    let end = v.find([';', ',']).unwrap_or(v.len());
                    value = v[..end].trim_end().to_string();
                    r = &v[end..];
                }
            }
            match name.as_str() {
                "rel" => link.rel = Some(value),
                "results" => link.results = Some(value),
                "cursor" => link.cursor = Some(value),
                _ => {}
            }
            rest = r.trim_start();
        }
        links.push(link);
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err(LinkError("expected ',' between links")),
        };
    }
    Ok(links)
}

/// The cursor to request next, or `None` when the server says there are no more results.
/// A `next` link without `results="true"` ends paging, whatever the page held.
pub fn next_cursor(header: Option<&str>) -> Result<Option<String>, LinkError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let links = parse(header)?;
    let Some(next) = links.iter().find(|l| {
        l.rel
            .as_deref()
            .is_some_and(|r| r.split_whitespace().any(|r| r.eq_ignore_ascii_case("next")))
    }) else {
        return Ok(None);
    };
    if next.results.as_deref() != Some("true") {
        return Ok(None);
    }
    let cursor = next
        .cursor
        .as_deref()
        .ok_or(LinkError("next link without a cursor"))?;
    if cursor.is_empty()
        || cursor.len() > MAX_CURSOR
        || !cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'-' | b'_'))
    {
        return Err(LinkError(
            "cursor has characters a Sentry cursor cannot have",
        ));
    }
    Ok(Some(cursor.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTRY: &str = r#"<https://us.sentry.io/api/0/projects/acme/web/events/?&cursor=0:0:1>; rel="previous"; results="false"; cursor="0:0:1", <https://us.sentry.io/api/0/projects/acme/web/events/?&cursor=0:100:0>; rel="next"; results="true"; cursor="0:100:0""#;

    #[test]
    fn sentry_header_yields_the_next_cursor() {
        assert_eq!(
            next_cursor(Some(SENTRY)).unwrap().as_deref(),
            Some("0:100:0")
        );
        let links = parse(SENTRY).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].rel.as_deref(), Some("previous"));
        assert_eq!(links[0].results.as_deref(), Some("false"));
    }

    #[test]
    fn no_more_results_ends_paging() {
        let last = SENTRY.replace(r#"results="true""#, r#"results="false""#);
        assert_eq!(next_cursor(Some(&last)).unwrap(), None);
        assert_eq!(next_cursor(None).unwrap(), None);
        let only_previous =
            r#"<https://x/?&cursor=0:0:1>; rel="previous"; results="true"; cursor="0:0:1""#;
        assert_eq!(next_cursor(Some(only_previous)).unwrap(), None);
    }

    #[test]
    fn commas_and_semicolons_inside_urls_and_quotes_do_not_split() {
        let h = r#"<https://h/?field=a,b;c&cursor=9:9:9>; rel="previous"; results="false"; cursor="0:0:1", <https://h/?query=x,y>; rel="next"; title="a, b; c"; results="true"; cursor="1700000000000:0:0""#;
        assert_eq!(
            next_cursor(Some(h)).unwrap().as_deref(),
            Some("1700000000000:0:0")
        );
    }

    #[test]
    fn the_url_is_never_used_even_when_it_points_elsewhere() {
        let h = r#"<https://attacker.example/steal?cursor=0:100:0>; rel="next"; results="true"; cursor="0:100:0""#;
        assert_eq!(next_cursor(Some(h)).unwrap().as_deref(), Some("0:100:0"));
    }

    #[test]
    fn hostile_cursors_and_malformed_headers_are_errors() {
        for bad in [
            r#"<x>; rel="next"; results="true"; cursor="0:100:0&host=evil""#,
            r#"<x>; rel="next"; results="true"; cursor="../../admin""#,
            r#"<x>; rel="next"; results="true""#,
            r#"<x; rel="next""#,
            r#"x; rel="next""#,
            r#"<x>; rel="next"; results="true"; cursor="unterminated"#,
            r#"<x> junk"#,
        ] {
            assert!(next_cursor(Some(bad)).is_err(), "{bad}");
        }
        let long = format!(
            r#"<x>; rel="next"; results="true"; cursor="{}""#,
            "1".repeat(300)
        );
        assert!(next_cursor(Some(&long)).is_err());
    }

    #[test]
    fn unquoted_parameters_and_case_are_tolerated() {
        let h = "<x>; REL=next; Results=true; cursor=0:10:0";
        assert_eq!(next_cursor(Some(h)).unwrap().as_deref(), Some("0:10:0"));
    }
}
