//! Cloud Storage: create-only multipart uploads of NDJSON objects, their names and content
//! ids, and the listings and reads that leases and pending-object checks need.
//!
//! - Uploads: <https://cloud.google.com/storage/docs/uploading-objects#uploading-an-object>
//!   (`uploadType=multipart`, metadata then bytes).
//! - `ifGenerationMatch=0` makes the write create-only: a second write of the same name gets
//!   412. Names are deterministic and carry the content id (a 64-bit hash and the CRC-32C of
//!   the bytes), so a 412 on a retry (the first attempt landed, its reply was lost) is checked
//!   against the stored object's `content` metadata and then counted as done. Nothing is ever
//!   overwritten, so the SecOps feed never re-ingests.
//! - Retries: <https://cloud.google.com/storage/docs/retry-strategy> (408, 429, 5xx, timeouts),
//!   through the crate's one retry loop, with a token Cloud Storage refuses renewed once.

pub mod credentials;
pub mod error;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::sha2::{Digest, Sha256};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::GcsConfig;
use crate::ports::{Env, Method, OutboundRequest, TransportError};
use crate::retry::{self, Attempt, Deadline, Failure};
use crate::time::{compact, Utc};
use credentials::Credentials;
pub use error::GcsError;

/// Written into every object's custom metadata, to tell our objects from anyone else's.
pub const WRITER: &str = concat!("sentry-logs-collector/", env!("CARGO_PKG_VERSION"));

/// `PREFIX{stream}/YYYY/MM/DD/HH/{org}-{stream}{shard}-{windowStart}-{windowEnd}-{seq}-{content}.ndjson[.gz]`,
/// dated by the window's end (`shard` is empty, or `.s{i}of{n}`; `content` the first 16 digits
/// of the content id). Deterministic for the same
/// window, shard, sequence number and content, and unique otherwise.
#[allow(clippy::too_many_arguments)]
pub fn object_name(
    cfg: &GcsConfig,
    stream: &str,
    shard: &str,
    org: &str,
    window: (i64, i64),
    seq: u32,
    content_id: &str,
    gzip: bool,
) -> String {
    let t = Utc::from_unix(window.1);
    format!(
        "{}{stream}/{:04}/{:02}/{:02}/{:02}/{org}-{stream}{shard}-{}-{}-{seq:05}-{}.ndjson{}",
        cfg.prefix,
        t.year,
        t.month,
        t.day,
        t.hour,
        compact(window.0),
        compact(window.1),
        &content_id[..16],
        if gzip { ".gz" } else { "" }
    )
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uploaded {
    pub name: String,
    pub generation: String,
    pub bytes: usize,
    /// The object was already there with this content (an earlier attempt landed).
    pub already_present: bool,
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    items: Vec<ListedItem>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ListedItem {
    name: String,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ObjectResource {
    generation: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(data))
}

/// What names an object's content: its CRC-32C (which Cloud Storage checks on upload) and a
/// 64-bit hash of it, both a few times cheaper than a SHA-256 in wasm (which cost 2-4 ms per
/// 1,000 events). Not cryptographic: it tells one attempt's content from another's, where a
/// writer's own retry meets an object of the same name (anyone who can write into the prefix
/// can do worse than forge it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// 24 hex digits: the 64-bit hash, then the CRC-32C. Stored as the object's `content`
    /// metadata; its first 16 digits are in the object's name.
    pub id: String,
    pub crc32c: u32,
}

impl Content {
    pub fn of(data: &[u8]) -> Content {
        let crc32c = crc32c::crc32c(data);
        Content {
            id: format!("{:016x}{crc32c:08x}", hash64(data)),
            crc32c,
        }
    }
}

/// A 64-bit hash of `data` and its length, four independent lanes of eight bytes (so the
/// multiplies overlap), folded at the end.
fn hash64(data: &[u8]) -> u64 {
    const K: [u64; 4] = [
        0x9E37_79B9_7F4A_7C15,
        0xC2B2_AE3D_27D4_EB4F,
        0x1656_67B1_9E37_79F9,
        0xD6E8_FEB8_6659_FD93,
    ];
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let mut lanes = K;
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = word(&block[i * 8..i * 8 + 8]);
            *lane = (*lane ^ w).wrapping_mul(K[i]).rotate_left(31);
        }
    }
    let mut h = data.len() as u64;
    for (i, lane) in lanes.iter().enumerate() {
        h = (h ^ lane.wrapping_mul(K[3 - i]))
            .rotate_left(27)
            .wrapping_mul(K[0]);
    }
    for chunk in blocks.remainder().chunks(8) {
        h = (h ^ word(chunk)).wrapping_mul(K[1]).rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(K[2]);
    h ^ (h >> 29)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// A boundary for a multipart body, and whether it is random (otherwise anyone can know it).
fn random_boundary() -> (String, bool) {
    let mut bytes = [0u8; 18];
    let random = getrandom::fill(&mut bytes).is_ok();
    if !random {
        // Without randomness the boundary is still checked against the whole body below.
        bytes.copy_from_slice(&Sha256::digest(b"sentry-logs-collector boundary")[..18]);
    }
    (format!("slc{}", crate::hex::encode(&bytes)), random)
}

/// A multipart/related body: the metadata part, then `data`. Built in `data`'s own
/// allocation (the parts before it are spliced in front), so an 8 MiB object is not copied.
fn multipart(metadata: &serde_json::Value, content_type: &str, data: Vec<u8>) -> (String, Vec<u8>) {
    let (boundary, random) = random_boundary();
    multipart_with(metadata, content_type, data, boundary, random)
}

fn multipart_with(
    metadata: &serde_json::Value,
    content_type: &str,
    mut data: Vec<u8>,
    mut boundary: String,
    random: bool,
) -> (String, Vec<u8>) {
    // A part ends at CR LF "--" boundary (RFC 2046, 5.1.1). NDJSON lines hold no CR (the page
    // parser turns raw line breaks between tokens into spaces; in strings they are escaped),
    // so a random boundary needs no search through them: an 8 MiB search cost a tenth of the
    // component's compute. Bodies with a CR (gzip), and a boundary anyone can know, are
    // searched for the boundary itself.
    if !random || crate::bytes::contains_byte(&data, b'\r') {
        while contains(&data, boundary.as_bytes()) {
            boundary.push('x');
        }
    }
    let head = format!(
        "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\ncontent-type: {content_type}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    data.reserve_exact(head.len() + tail.len());
    data.splice(0..0, head.bytes());
    data.extend_from_slice(tail.as_bytes());
    (boundary, data)
}

/// Whether `needle` (not empty) occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let (first, rest) = (needle[0], &needle[1..]);
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i + 1;
        if haystack[at..].starts_with(rest) {
            return true;
        }
        from = at;
    }
    false
}

/// Uploads for one run, sharing credentials and the deadline.
pub struct GcsClient<'e> {
    env: Env<'e>,
    cfg: &'e GcsConfig,
    credentials: RefCell<Credentials>,
    /// A cell so giving leases up may have the lease's grace period (see
    /// [`GcsClient::with_deadline_at_least`]).
    deadline: std::cell::Cell<Deadline>,
    pub requests: std::cell::Cell<u64>,
    /// Every attempt's timeouts end at the deadline (the inline webhook flush, which must
    /// answer Sentry within a second; `Timeouts::within` never goes under a second).
    strict: std::cell::Cell<bool>,
}

impl<'e> GcsClient<'e> {
    pub fn new(env: Env<'e>, cfg: &'e GcsConfig, deadline: Deadline) -> Result<Self, GcsError> {
        Ok(GcsClient {
            env,
            cfg,
            credentials: RefCell::new(Credentials::new(&cfg.auth)?),
            deadline: std::cell::Cell::new(deadline),
            requests: std::cell::Cell::new(0),
            strict: std::cell::Cell::new(false),
        })
    }

    /// A client each of whose attempts gives up at the deadline, however little time is left
    /// (connect, first byte, between bytes).
    pub fn strict_deadline(self) -> Self {
        self.strict.set(true);
        self
    }

    /// Runs `f` with a deadline of at least `until` and every attempt's timeouts cut to it
    /// (as [`GcsClient::strict_deadline`]), then puts the client back as it was. Only for what
    /// a run does after its budget while it still holds its lease: giving the lease up.
    pub fn with_deadline_at_least<R>(&self, until: Deadline, f: impl FnOnce() -> R) -> R {
        let (deadline, strict) = (self.deadline.get(), self.strict.get());
        if until.at() > deadline.at() {
            self.deadline.set(until);
        }
        self.strict.set(true);
        let result = f();
        self.deadline.set(deadline);
        self.strict.set(strict);
        result
    }

    /// The deadline requests are bound by now.
    pub fn deadline(&self) -> Deadline {
        self.deadline.get()
    }

    /// Whether a token is at hand without a request to the token endpoint.
    pub fn token_ready(&self) -> bool {
        self.credentials.borrow().ready(&self.env)
    }

    /// Obtains a token now, so a credential that does not work fails the run before anything
    /// is read from Sentry.
    pub fn check_credentials(&self) -> Result<(), GcsError> {
        self.credentials
            .borrow_mut()
            .token(&self.env, self.deadline.get())
            .map(|_| ())
    }

    pub fn tokens_minted(&self) -> u32 {
        self.credentials.borrow().minted
    }

    fn url(&self, path_segments: &[&str]) -> url::Url {
        let mut url = self.cfg.endpoint.clone();
        url.path_segments_mut()
            .expect("an http(s) origin has a path")
            .clear()
            .extend(path_segments);
        url
    }

    /// Sends `request` with the current token, retrying like every Cloud Storage call. The
    /// request (an upload's body included) is reused across attempts, never copied.
    fn send(
        &self,
        what: &str,
        mut request: OutboundRequest,
    ) -> Result<crate::ports::InboundResponse, GcsError> {
        let mut renewed = false;
        let auth_at = request.headers.len();
        request
            .headers
            .push(("authorization".into(), String::new()));
        error::with_retries(self.env.clock, self.deadline.get(), || {
            let token = match self
                .credentials
                .borrow_mut()
                .token(&self.env, self.deadline.get())
            {
                Ok(token) => token,
                Err(e) => return Attempt::Done(Err(e)),
            };
            request.headers[auth_at].1 = format!("Bearer {}", token.expose());
            let deadline = self.deadline.get();
            request.bound_by(deadline.at(), self.env.clock.now());
            if self.strict.get() {
                let left = (deadline.at() - self.env.clock.now()).max(0.01);
                let cap = std::time::Duration::from_secs_f64(left);
                let t = &mut request.timeouts;
                (t.connect, t.first_byte, t.between_bytes) = (
                    t.connect.min(cap),
                    t.first_byte.min(cap),
                    t.between_bytes.min(cap),
                );
            }
            self.requests.set(self.requests.get() + 1);
            match self.env.http.send(&request) {
                // A token Cloud Storage refuses is renewed, once.
                Ok(resp) if resp.status == 401 && !renewed => {
                    renewed = true;
                    self.credentials.borrow_mut().invalidate(&self.env);
                    Attempt::Renewed
                }
                Ok(resp) => match retry::verdict(resp.status) {
                    retry::Verdict::Retry => Attempt::Failed(Failure::new(format!(
                        "{what}: Cloud Storage answered {}",
                        resp.status
                    ))),
                    _ => Attempt::Done(Ok(resp)),
                },
                Err(TransportError::Denied(_)) => Attempt::Done(Err(GcsError::Fatal(format!(
                    "{what}: gcs_endpoint is not in allowed_outbound_hosts"
                )))),
                Err(e) => Attempt::Failed(Failure::new(format!("{what}: {e}"))),
            }
        })
    }

    /// A create-only multipart upload of `data` with the object resource `metadata`; the
    /// answer as Cloud Storage gave it (after retries).
    fn upload(
        &self,
        what: &str,
        metadata: &serde_json::Value,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<crate::ports::InboundResponse, GcsError> {
        let (boundary, body) = multipart(metadata, content_type, data);
        let mut upload_url = self.url(&["upload", "storage", "v1", "b", &self.cfg.bucket, "o"]);
        upload_url
            .query_pairs_mut()
            .append_pair("uploadType", "multipart")
            .append_pair("ifGenerationMatch", "0");
        let mut request = OutboundRequest::get(upload_url).header(
            "content-type",
            format!("multipart/related; boundary={boundary}"),
        );
        request.method = Method::Post;
        request.body = body;
        request.max_response_bytes = 1024 * 1024;
        self.send(what, request)
    }

    /// What an answer that is neither success nor 412 means for a write.
    fn write_refused(&self, what: &str, status: u16) -> GcsError {
        match status {
            403 => GcsError::Fatal(format!(
                "{what}: permission denied (403); grant the writer service account roles/storage.objectCreator on bucket {}",
                self.cfg.bucket
            )),
            404 => GcsError::Fatal(format!("{what}: bucket {} not found (404); check gcs_bucket", self.cfg.bucket)),
            401 => GcsError::Fatal(format!("{what}: the credentials were refused (401); check gcp_service_account_key or gcs_access_token")),
            s => GcsError::Fatal(format!("{what}: Cloud Storage answered {s}")),
        }
    }

    /// Creates `name` with `data` unless it exists. A 412 is accepted only when the stored
    /// object carries the same content id.
    /// `data` is taken: the multipart body is built in its allocation. `content` is
    /// [`Content::of`] it (the caller named the object after it).
    pub fn create(
        &self,
        name: &str,
        data: Vec<u8>,
        content: &Content,
        events: usize,
    ) -> Result<Uploaded, GcsError> {
        let size = data.len();
        let mut metadata = json!({
            "name": name,
            "contentType": "application/x-ndjson",
            "crc32c": STANDARD.encode(content.crc32c.to_be_bytes()),
            "metadata": { "content": content.id, "events": events.to_string(), "writer": WRITER },
        });
        if name.ends_with(".gz") {
            metadata["contentEncoding"] = json!("gzip");
        }
        let what = format!("uploading {name}");
        let resp = self.upload(&what, &metadata, "application/x-ndjson", data)?;
        match resp.status {
            200..=299 => {
                let object: ObjectResource = serde_json::from_slice(&resp.body).map_err(|_| {
                    GcsError::Transient(format!("{what}: the reply is not an object resource"))
                })?;
                Ok(Uploaded {
                    name: name.to_string(),
                    generation: object.generation.unwrap_or_default(),
                    bytes: size,
                    already_present: false,
                })
            }
            412 => self.confirm_existing(name, &content.id, size),
            s => Err(self.write_refused(&what, s)),
        }
    }

    /// Creates the small JSON object `name` carrying `metadata` (as custom metadata and as
    /// its content) unless it exists: `true` if this call created it, `false` if it was
    /// there already (a compare-and-swap: of two writers, exactly one gets `true`).
    pub fn create_marker(
        &self,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<bool, GcsError> {
        let mut custom = metadata.clone();
        custom.insert("writer".into(), WRITER.into());
        let resource = json!({
            "name": name,
            "contentType": "application/json",
            "metadata": custom,
        });
        let body = serde_json::to_vec(&custom).unwrap_or_default();
        let what = format!("creating {name}");
        let resp = self.upload(&what, &resource, "application/json", body)?;
        match resp.status {
            200..=299 => Ok(true),
            412 => Ok(false),
            s => Err(self.write_refused(&what, s)),
        }
    }

    /// The first object (in name order) whose name is `prefix` followed by a digit, with its
    /// custom metadata (a console's folder placeholder, named `prefix` itself, is not one).
    pub fn first_under(&self, prefix: &str) -> Result<Option<Listed>, GcsError> {
        Ok(self.list_under(prefix, 1, None)?.0.into_iter().next())
    }

    /// One listing page (in name order, at most `max` up to 1,000) of the objects whose
    /// names are `prefix` followed by a digit, with their custom metadata, from `page` (a
    /// token an earlier page gave); and the next page's token, if there is more.
    pub fn list_under(
        &self,
        prefix: &str,
        max: u32,
        page: Option<&str>,
    ) -> Result<(Vec<Listed>, Option<String>), GcsError> {
        let mut url = self.url(&["storage", "v1", "b", &self.cfg.bucket, "o"]);
        url.query_pairs_mut()
            .append_pair("prefix", prefix)
            .append_pair("startOffset", &format!("{prefix}0"))
            .append_pair("endOffset", &format!("{prefix}:"))
            .append_pair("maxResults", &max.clamp(1, 1000).to_string());
        if let Some(token) = page {
            url.query_pairs_mut().append_pair("pageToken", token);
        }
        let what = format!("listing {prefix}");
        let mut request = OutboundRequest::get(url);
        request.max_response_bytes = 4 * 1024 * 1024;
        let resp = self.send(&what, request)?;
        match resp.status {
            200 => {
                let page: ListPage = serde_json::from_slice(&resp.body).map_err(|_| {
                    GcsError::Transient(format!("{what}: the reply is not an object listing"))
                })?;
                let items = page
                    .items
                    .into_iter()
                    .filter(|o| o.name.starts_with(prefix))
                    .map(|o| Listed {
                        name: o.name,
                        metadata: o.metadata.unwrap_or_default(),
                    })
                    .collect();
                Ok((items, page.next_page_token.filter(|t| !t.is_empty())))
            }
            403 => Err(GcsError::Fatal(format!(
                "{what}: permission denied (403); grant the writer service account roles/storage.objectViewer on bucket {}",
                self.cfg.bucket
            ))),
            404 => Err(GcsError::Fatal(format!("{what}: bucket {} not found (404); check gcs_bucket", self.cfg.bucket))),
            s => Err(GcsError::Transient(format!("{what}: Cloud Storage answered {s}"))),
        }
    }

    /// The stored object's metadata, or `None` when there is no such object.
    fn stat(&self, name: &str) -> Result<Option<ObjectResource>, GcsError> {
        let url = self.url(&["storage", "v1", "b", &self.cfg.bucket, "o", name]);
        let what = format!("checking the object {name}");
        let mut request = OutboundRequest::get(url);
        request.max_response_bytes = 1024 * 1024;
        let resp = self.send(&what, request)?;
        match resp.status {
            200 => serde_json::from_slice(&resp.body)
                .map(Some)
                .map_err(|_| GcsError::Transient(format!("{what}: the reply is not an object resource"))),
            404 => Ok(None),
            403 => Err(GcsError::Fatal(format!(
                "{what}: permission denied (403); grant the writer service account roles/storage.objectViewer on bucket {}",
                self.cfg.bucket
            ))),
            s => Err(GcsError::Transient(format!("{what}: Cloud Storage answered {s}"))),
        }
    }

    /// Whether `name` exists with exactly the content whose id is `content` ([`Content::id`],
    /// or the SHA-256 in hex that earlier versions recorded).
    pub fn holds(&self, name: &str, content: &str) -> Result<bool, GcsError> {
        Ok(self
            .stat(name)?
            .is_some_and(|o| stored_content(&o) == Some(content)))
    }

    /// After a 412: the object exists. It is ours only if its content id matches.
    fn confirm_existing(
        &self,
        name: &str,
        content: &str,
        bytes: usize,
    ) -> Result<Uploaded, GcsError> {
        match self.stat(name)? {
            Some(object) if stored_content(&object) == Some(content) => Ok(Uploaded {
                name: name.to_string(),
                generation: object.generation.unwrap_or_default(),
                bytes,
                already_present: true,
            }),
            Some(_) => Err(GcsError::Fatal(format!(
                "{name} already exists with different content; another writer uses this prefix, give each deployment its own gcs_prefix"
            ))),
            None => Err(GcsError::Transient(format!("{name}: a 412 for an object that is not there"))),
        }
    }
}

/// The content id an object was written with: `content`, or `sha256` (earlier versions).
fn stored_content(object: &ObjectResource) -> Option<&str> {
    let m = object.metadata.as_ref()?;
    m.get("content")
        .or_else(|| m.get("sha256"))
        .and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate computes the checksum Cloud Storage verifies (Castagnoli, reflected), on
    /// RFC 3720's vectors and against a bit-at-a-time reference at every length.
    #[test]
    fn crc32c_is_castagnolis_checksum() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c::crc32c(b""), 0);
        fn bitwise(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0x82F6_3B78
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            assert_eq!(
                crc32c::crc32c(&data[..len]),
                bitwise(&data[..len]),
                "length {len}"
            );
        }
    }

    #[test]
    fn multipart_body_has_metadata_then_content_and_a_boundary_absent_from_both() {
        let meta = json!({"name": "x"});
        let (b, body) = multipart(
            &meta,
            "application/x-ndjson",
            b"{\"eventID\":\"1\"}\n".to_vec(),
        );
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{b}\r\ncontent-type: application/json")));
        assert!(text.contains("{\"name\":\"x\"}\r\n--"));
        assert!(text.ends_with(&format!("{{\"eventID\":\"1\"}}\n\r\n--{b}--\r\n")));
        assert!(b.len() >= 16);
    }

    #[test]
    fn a_boundary_found_in_the_body_is_changed_when_it_could_be_a_delimiter() {
        let meta = json!({"name": "x"});
        let fixed = "slc0123".to_string();
        let holds = |b: &str| format!("line one\r\n--{b}\r\nline two\n").into_bytes();
        // A body with a CR: searched whether the boundary is random or not.
        for random in [true, false] {
            let (b, body) =
                multipart_with(&meta, "text/plain", holds(&fixed), fixed.clone(), random);
            assert_ne!(b, fixed);
            let text = String::from_utf8(body).unwrap();
            assert_eq!(text.matches(&format!("--{b}")).count(), 3, "{text}");
        }
        // A known boundary is searched for even in a body without a CR.
        let no_cr = format!("{{\"message\":\"--{fixed}\"}}\n").into_bytes();
        let (b, _) = multipart_with(&meta, "text/plain", no_cr.clone(), fixed.clone(), false);
        assert_ne!(b, fixed);
        // A random one is not: without a CR the body holds no delimiter.
        let (b, body) = multipart_with(&meta, "text/plain", no_cr, fixed.clone(), true);
        assert_eq!(b, fixed);
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches(&format!("\r\n--{b}")).count(), 2, "{text}");
    }

    #[test]
    fn crc32c_is_encoded_like_cloud_storage_does() {
        // fake-gcs-server reported crc32c "TsJZJQ==" for this content.
        assert_eq!(
            STANDARD.encode(crc32c::crc32c(b"{\"eventID\":\"1\"}\n").to_be_bytes()),
            "TsJZJQ=="
        );
    }

    #[test]
    fn a_content_id_tells_apart_what_differs_anywhere() {
        let base: Vec<u8> = (0..1000)
            .flat_map(|i| format!("{{\"eventID\":\"{i:04}\"}}\n").into_bytes())
            .collect();
        let id = Content::of(&base);
        assert_eq!(id.id.len(), 24);
        assert!(id.id.ends_with(&format!("{:08x}", crc32c::crc32c(&base))));
        assert_eq!(Content::of(&base), id, "the same content, the same id");
        let mut ids = std::collections::HashSet::new();
        ids.insert(id.id.clone());
        // One byte changed anywhere (each lane, the tail), or a byte more or fewer.
        for at in [
            0,
            1,
            7,
            8,
            15,
            31,
            32,
            8_000,
            base.len() - 9,
            base.len() - 1,
        ] {
            let mut other = base.clone();
            other[at] ^= 1;
            assert!(ids.insert(Content::of(&other).id), "byte {at}");
        }
        assert!(ids.insert(Content::of(&base[..base.len() - 1]).id));
        let mut longer = base.clone();
        longer.push(0);
        assert!(ids.insert(Content::of(&longer).id));
        // Two lines swapped: the same bytes in another order.
        let swapped = [&base[20..40], &base[..20], &base[40..]].concat();
        assert_ne!(swapped, base);
        assert!(ids.insert(Content::of(&swapped).id));
        assert!(ids.insert(Content::of(b"").id));
    }

    #[test]
    fn the_content_id_of_an_object_of_an_earlier_version_is_its_sha256() {
        let object = |m: serde_json::Value| -> ObjectResource {
            serde_json::from_value(json!({ "generation": "1", "metadata": m })).unwrap()
        };
        let old = object(json!({ "sha256": "ab" }));
        assert_eq!(stored_content(&old), Some("ab"));
        let new = object(json!({ "content": "cd", "sha256": "ab" }));
        assert_eq!(stored_content(&new), Some("cd"));
        assert_eq!(stored_content(&object(json!({}))), None);
    }

    #[test]
    fn gzip_round_trips() {
        let data = b"{\"eventID\":\"1\"}\n".repeat(100);
        let z = gzip(&data);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&z[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }
}
