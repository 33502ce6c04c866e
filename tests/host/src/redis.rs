//! A minimal Redis client (RESP2 over TCP) for the Redis-backed key-value store, as Spin's
//! runtime config `[key_value_store.<label>] type = "redis"` selects: GET, SET, DEL, EXISTS and
//! KEYS, keys stored as given. One connection, opened lazily and opened again after an I/O
//! error; every call has a timeout, so a Redis that stops answering fails the guest's KV call
//! instead of hanging the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Larger bulk replies than this are refused (a KV value is at most 1 MiB).
const MAX_BULK: usize = 16 * 1024 * 1024;
const MAX_ARRAY: usize = 1 << 20;

/// One Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

pub struct RedisClient {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: u32,
    conn: Mutex<Option<BufReader<TcpStream>>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "RedisClient({}:{}/{})", self.host, self.port, self.db)
    }
}

impl RedisClient {
    /// `redis://[[user]:password@]host[:port][/db]`. TLS (`rediss://`) is refused: this host
    /// has no TLS client for it.
    pub fn from_url(url: &str) -> Result<RedisClient> {
        let parsed = url::Url::parse(url).map_err(|e| anyhow!("invalid Redis url: {e}"))?;
        match parsed.scheme() {
            "redis" => {}
            "rediss" => bail!("rediss:// (TLS) is not supported by collector-host; use redis:// on a trusted network"),
            other => bail!("a Redis url starts with redis://, not {other}://"),
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("the Redis url has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let db = match parsed.path().trim_start_matches('/') {
            "" => 0,
            d => d
                .parse()
                .map_err(|_| anyhow!("the Redis url's path must be a database number"))?,
        };
        let decode = |s: &str| -> Result<String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| anyhow!("the Redis url's credentials are not UTF-8"))
        };
        Ok(RedisClient {
            host,
            port: parsed.port().unwrap_or(6379),
            username: Some(parsed.username())
                .filter(|u| !u.is_empty())
                .map(decode)
                .transpose()?,
            password: parsed.password().map(decode).transpose()?,
            db,
            conn: Mutex::new(None),
        })
    }

    fn connect(&self) -> std::result::Result<BufReader<TcpStream>, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .map_err(|e| format!("cannot reach Redis at {}:{}: {e}", self.host, self.port))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(TIMEOUT)))
            .and_then(|_| stream.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let mut conn = BufReader::new(stream);
        if let Some(password) = &self.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &self.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            exchange(&mut conn, &args).map_err(|e| format!("Redis AUTH failed: {e}"))?;
        }
        if self.db != 0 {
            let db = self.db.to_string();
            exchange(&mut conn, &[b"SELECT", db.as_bytes()])?;
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply; an I/O failure drops the connection and the
    /// command is tried once more on a new one.
    pub fn command(&self, args: &[&[u8]]) -> std::result::Result<Reply, String> {
        let mut guard = self.conn.lock().unwrap();
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.connect()?);
            }
            let conn = guard.as_mut().expect("connected");
            match exchange(conn, args) {
                Ok(reply) => return Ok(reply),
                Err(e) if e.starts_with("io:") && attempt == 0 => *guard = None,
                Err(e) => {
                    *guard = None;
                    return Err(format!("Redis: {e}"));
                }
            }
        }
        unreachable!("two attempts")
    }
}

fn exchange(conn: &mut BufReader<TcpStream>, args: &[&[u8]]) -> std::result::Result<Reply, String> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        request.extend_from_slice(a);
        request.extend_from_slice(b"\r\n");
    }
    conn.get_mut()
        .write_all(&request)
        .map_err(|e| format!("io: {e}"))?;
    read_reply(conn, 0)
}

fn read_line(conn: &mut BufReader<TcpStream>) -> std::result::Result<String, String> {
    let mut line = Vec::new();
    let n = conn
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("io: {e}"))?;
    if n == 0 {
        return Err("io: Redis closed the connection".into());
    }
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or("malformed reply line")?
        .to_vec();
    String::from_utf8(line).map_err(|_| "reply line is not UTF-8".into())
}

fn read_reply(conn: &mut BufReader<TcpStream>, depth: usize) -> std::result::Result<Reply, String> {
    if depth > 8 {
        return Err("reply nested too deeply".into());
    }
    let line = read_line(conn)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("malformed reply {line:?}"))
    };
    match kind {
        "+" => Ok(Reply::Status(rest.to_string())),
        "-" => Err(format!("error reply: {rest}")),
        ":" => Ok(Reply::Int(number()?)),
        "$" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let n = usize::try_from(n).map_err(|_| "bad length")?;
            if n > MAX_BULK {
                return Err(format!("a reply of {n} bytes is larger than allowed"));
            }
            let mut buf = vec![0; n + 2];
            conn.read_exact(&mut buf).map_err(|e| format!("io: {e}"))?;
            if !buf.ends_with(b"\r\n") {
                return Err("malformed bulk reply".into());
            }
            buf.truncate(n);
            Ok(Reply::Bulk(buf))
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let n = usize::try_from(n).map_err(|_| "bad length")?;
            if n > MAX_ARRAY {
                return Err(format!("an array of {n} items is larger than allowed"));
            }
            (0..n)
                .map(|_| read_reply(conn, depth + 1))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Reply::Array)
        }
        _ => Err(format!("unknown reply type in {line:?}")),
    }
}

/// A throw-away `redis-server` (Debian's, or `REDIS_SERVER`) on a loopback port, without
/// persistence; killed when dropped.
pub struct RedisServer {
    pub url: String,
    child: Child,
}

impl RedisServer {
    /// Where it listens (for a proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("redis://")
            .parse()
            .expect("a loopback address")
    }

    pub fn start() -> RedisServer {
        let exe = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = crate::testing::temp_dir("redis");
        let child = Command::new(&exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{exe} does not start ({e}): scripts/setup.sh --test-tools installs Debian's redis-server")
            });
        let url = format!("redis://127.0.0.1:{port}");
        let client = RedisClient::from_url(&url).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.command(&[b"PING"]) != Ok(Reply::Status("PONG".into())) {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisServer { child, url }
    }

    pub fn keys(&self) -> Vec<String> {
        match RedisClient::from_url(&self.url)
            .unwrap()
            .command(&[b"KEYS", b"*"])
            .unwrap()
        {
            Reply::Array(items) => items
                .into_iter()
                .map(|k| match k {
                    Reply::Bulk(b) => String::from_utf8(b).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_tls_is_refused_by_name() {
        let c = RedisClient::from_url("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("127.0.0.1", 6390, 2));
        assert!(c.password.is_none());
        let c = RedisClient::from_url("redis://:s%40c=r+e%26t@redis.example:6379").unwrap();
        assert_eq!(c.password.as_deref(), Some("s@c=r+e&t"));
        assert!(!format!("{c:?}").contains("cret"));
        let c = RedisClient::from_url("redis://svc.cluster.local").unwrap();
        assert_eq!(c.port, 6379);
        assert!(RedisClient::from_url("rediss://h:6380")
            .unwrap_err()
            .to_string()
            .contains("TLS"));
        assert!(RedisClient::from_url("http://h").is_err());
        assert!(RedisClient::from_url("redis://h/x").is_err());
    }
}
