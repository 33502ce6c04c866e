//! `fermyon:spin/key-value@2.0.0` persisted under the state directory, so consecutive runs
//! (separate processes) see earlier state, as `spin up` does with `.spin/sqlite_key_value.db`.
//!
//! Each key is one file, written by rename so a reader never sees half a value and two
//! processes sharing the directory lose at most a concurrent write to the same key (last writer
//! wins, as with Spin's SQLite store). The limits every Spin platform enforces are enforced
//! here too, so a component that would fail on Fermyon Cloud fails in tests: keys of at most
//! 255 bytes, values of at most 1 MiB, at most 1,024 keys per store.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::redis::{RedisClient, Reply};

pub const MAX_KEY_BYTES: usize = 255;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
pub const MAX_KEYS: usize = 1024;

/// Which KV operations fail, for fault-injection tests. The default fails nothing.
#[derive(Debug, Clone, Default)]
pub struct KvFaults {
    pub fail_get: bool,
    pub fail_set: bool,
    /// Faults apply only to keys starting with this ("" = every key).
    pub key_prefix: String,
    /// This many matching writes succeed before writes start failing.
    pub fail_set_after: u32,
    /// The instance is killed (trapped) at the matching write with this index (0 = the first).
    pub kill_at_set: Option<u32>,
    /// Every matching operation (get, set, delete; a listing always) takes this long first:
    /// a slow shared store, as hosted KV can be.
    pub delay: std::time::Duration,
}

impl KvFaults {
    fn applies(&self, key: &str) -> bool {
        key.starts_with(&self.key_prefix)
    }
}

impl KvStore {
    /// Sleeps the injected delay when it applies to `key` (the lock is not held meanwhile).
    fn slow(&self, key: &str) {
        let delay = {
            let f = self.faults.lock().unwrap();
            if f.applies(key) {
                f.delay
            } else {
                std::time::Duration::ZERO
            }
        };
        if delay.is_zero() {
            return;
        }
        // The host's KV functions are synchronous and run on the runtime's workers: on a
        // multi-threaded runtime the worker hands its other tasks over while it waits, so a
        // slow store slows the instance that waits on it, not every request the host serves.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| std::thread::sleep(delay))
            }
            _ => std::thread::sleep(delay),
        }
    }
}

/// One store (one label), shared by every instance the host creates: files under the state
/// directory (the default, like `spin up`'s SQLite file), or Redis when runtime config says so.
#[derive(Debug, Clone)]
pub struct KvStore {
    backend: Backend,
    faults: Arc<Mutex<KvFaults>>,
}

#[derive(Debug, Clone)]
enum Backend {
    Files {
        dir: PathBuf,
        /// Serialises writers inside this process; other processes are covered by rename.
        lock: Arc<Mutex<()>>,
    },
    Redis(Arc<RedisClient>),
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl KvStore {
    /// The store of `label` under the state directory.
    pub fn open(state_dir: &Path, label: &str) -> Result<KvStore> {
        Self::in_dir(state_dir.join("key_value").join(label))
    }

    /// A file store in exactly this directory.
    pub fn in_dir(dir: PathBuf) -> Result<KvStore> {
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the key-value directory {}", dir.display()))?;
        Ok(KvStore {
            backend: Backend::Files {
                dir,
                lock: Arc::new(Mutex::new(())),
            },
            faults: Arc::new(Mutex::new(KvFaults::default())),
        })
    }

    /// A store in Redis (connected on first use).
    pub fn redis(url: &str) -> Result<KvStore> {
        Ok(KvStore {
            backend: Backend::Redis(Arc::new(RedisClient::from_url(url)?)),
            faults: Arc::new(Mutex::new(KvFaults::default())),
        })
    }

    #[cfg(test)]
    fn files(&self) -> Option<(&PathBuf, &Arc<Mutex<()>>)> {
        match &self.backend {
            Backend::Files { dir, lock } => Some((dir, lock)),
            Backend::Redis(_) => None,
        }
    }

    pub fn set_faults(&self, faults: KvFaults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// File names are the key in hex, split in 200-character folders so no name exceeds
    /// the file system's 255-byte limit.
    fn path_of(dir: &Path, key: &str) -> PathBuf {
        let h = hex(key.as_bytes());
        let mut path = dir.to_path_buf();
        let mut rest = h.as_str();
        while rest.len() > 200 {
            path.push(format!("{}+", &rest[..200]));
            rest = &rest[200..];
        }
        path.push(format!("{rest}.v"));
        path
    }

    /// Whether the injected kill is due at this write (counts matching writes).
    pub fn kill_now(&self, key: &str) -> bool {
        let mut faults = self.faults.lock().unwrap();
        if !faults.applies(key) {
            return false;
        }
        match faults.kill_at_set {
            Some(0) => {
                faults.kill_at_set = None;
                true
            }
            Some(n) => {
                faults.kill_at_set = Some(n - 1);
                false
            }
            None => false,
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.slow(key);
        if self.faults.lock().unwrap().fail_get && self.faults.lock().unwrap().applies(key) {
            return Err("injected fault: key-value get failed".into());
        }
        let (dir, _) = match &self.backend {
            Backend::Redis(r) => {
                return match r.command(&[b"GET", key.as_bytes()])? {
                    Reply::Bulk(v) => Ok(Some(v)),
                    Reply::Nil => Ok(None),
                    other => Err(format!("Redis GET answered {other:?}")),
                }
            }
            Backend::Files { dir, lock } => (dir, lock),
        };
        match fs::read(Self::path_of(dir, key)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("key-value read failed: {e}")),
        }
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.slow(key);
        {
            let mut faults = self.faults.lock().unwrap();
            if faults.fail_set && faults.applies(key) {
                if faults.fail_set_after == 0 {
                    return Err("injected fault: key-value set failed".into());
                }
                faults.fail_set_after -= 1;
            }
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "value of {} bytes exceeds the {MAX_VALUE_BYTES}-byte limit",
                value.len()
            ));
        }
        let (dir, lock) = match &self.backend {
            // Spin's Redis store has no key-count limit; the size limits above still apply.
            Backend::Redis(r) => {
                return match r.command(&[b"SET", key.as_bytes(), value])? {
                    Reply::Status(s) if s == "OK" => Ok(()),
                    other => Err(format!("Redis SET answered {other:?}")),
                }
            }
            Backend::Files { dir, lock } => (dir, lock),
        };
        let _guard = lock.lock().unwrap();
        let path = Self::path_of(dir, key);
        if !path.exists() && keys_in(dir)?.len() >= MAX_KEYS {
            return Err(format!(
                "the store already holds {MAX_KEYS} keys, the platform limit"
            ));
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("key-value write failed: {e}"))?;
        }
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(value)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("key-value write failed: {e}")
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.slow(key);
        if self.faults.lock().unwrap().fail_set && self.faults.lock().unwrap().applies(key) {
            return Err("injected fault: key-value delete failed".into());
        }
        let (dir, lock) = match &self.backend {
            Backend::Redis(r) => {
                return match r.command(&[b"DEL", key.as_bytes()])? {
                    Reply::Int(_) => Ok(()),
                    other => Err(format!("Redis DEL answered {other:?}")),
                }
            }
            Backend::Files { dir, lock } => (dir, lock),
        };
        let _guard = lock.lock().unwrap();
        match fs::remove_file(Self::path_of(dir, key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("key-value delete failed: {e}")),
        }
    }

    pub fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.get(key)?.is_some())
    }

    pub fn keys(&self) -> Result<Vec<String>, String> {
        // A listing reads every key: the delay always applies (the guard is dropped first).
        let prefix = self.faults.lock().unwrap().key_prefix.clone();
        self.slow(&prefix);
        match &self.backend {
            Backend::Redis(r) => match r.command(&[b"KEYS", b"*"])? {
                Reply::Array(items) => {
                    let mut keys = items
                        .into_iter()
                        .map(|k| match k {
                            Reply::Bulk(b) => String::from_utf8(b)
                                .map_err(|_| "a Redis key is not UTF-8".to_string()),
                            other => Err(format!("Redis KEYS answered {other:?}")),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    keys.sort();
                    Ok(keys)
                }
                other => Err(format!("Redis KEYS answered {other:?}")),
            },
            Backend::Files { dir, lock } => {
                let _guard = lock.lock().unwrap();
                keys_in(dir)
            }
        }
    }
}

fn keys_in(dir: &Path) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    collect_keys(dir, String::new(), &mut keys)
        .map_err(|e| format!("key-value listing failed: {e}"))?;
    keys.sort();
    Ok(keys)
}

fn collect_keys(dir: &Path, prefix: String, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(part) = name.strip_suffix('+') {
            collect_keys(&entry.path(), format!("{prefix}{part}"), out)?;
        } else if let Some(part) = name.strip_suffix(".v") {
            if let Some(key) =
                unhex(&format!("{prefix}{part}")).and_then(|b| String::from_utf8(b).ok())
            {
                out.push(key);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> KvStore {
        let dir =
            std::env::temp_dir().join(format!("collector-host-kv-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        KvStore::open(&dir, "default").unwrap()
    }

    #[test]
    fn values_survive_a_new_handle_on_the_same_directory() {
        let s = store("persist");
        s.set("v1/a", b"one").unwrap();
        let long_key = "k".repeat(255);
        s.set(&long_key, b"two").unwrap();
        let dir = s.files().unwrap().0.clone();
        let again = KvStore::open(dir.parent().unwrap().parent().unwrap(), "default").unwrap();
        assert_eq!(again.get("v1/a").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(again.get(&long_key).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(
            again.keys().unwrap(),
            vec![long_key.clone(), "v1/a".to_string()]
        );
        again.delete("v1/a").unwrap();
        assert_eq!(again.get("v1/a").unwrap(), None);
    }

    #[test]
    fn platform_limits_are_enforced() {
        let s = store("limits");
        assert!(s
            .set(&"k".repeat(256), b"x")
            .unwrap_err()
            .contains("255-byte"));
        assert!(s
            .set("big", &vec![0; MAX_VALUE_BYTES + 1])
            .unwrap_err()
            .contains("limit"));
        for i in 0..MAX_KEYS {
            s.set(&format!("k{i}"), b"").unwrap();
        }
        assert!(s
            .set("one-too-many", b"")
            .unwrap_err()
            .contains("1024 keys"));
        s.set("k0", b"overwrite is fine").unwrap();
    }
}
