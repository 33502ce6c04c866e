//! `--runtime-config-file`, as `spin up` reads it, for the parts this component uses:
//!
//! ```toml
//! [key_value_store.default]
//! type = "redis"                 # or "spin" (with an optional path)
//! url = "redis://host:6379"
//!
//! [outbound_http]
//! connection_pooling = true      # Spin defaults this to false when the table is present
//! max_concurrent_requests = 4    # or max_connections (newer Spin), not both
//! ```
//!
//! Unknown tables and keys are refused by name, as Spin refuses unknown keys, so an example
//! that this host accepts is one Spin reads the same way. A `spin` store's `path` is relative
//! to the file; here it names the directory of the file store instead of a SQLite file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::kv::KvStore;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    pub outbound_http: Option<OutboundHttp>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Spin { path: Option<PathBuf> },
    Redis { url: String },
}

/// `[outbound_http]`, with Spin's defaults for a present table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundHttp {
    /// collector-host never pools connections; a `false` here changes nothing.
    pub connection_pooling: bool,
    /// Most outbound requests in flight at once, across every instance of the app.
    pub max_concurrent: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreToml>,
    outbound_http: Option<OutboundHttpToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreToml {
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundHttpToml {
    #[serde(default)]
    connection_pooling: bool,
    max_concurrent_requests: Option<usize>,
    max_connections: Option<usize>,
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<RuntimeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the runtime config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("runtime config {}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> Result<RuntimeConfig> {
        let file: FileToml = toml::from_str(text)?;
        let mut key_value_stores = BTreeMap::new();
        for (label, store) in file.key_value_store {
            let config = match (store.kind.as_str(), store.path, store.url) {
                ("redis", None, Some(url)) => {
                    // Checked now, so a typo fails at start-up rather than at the first KV call.
                    crate::redis::RedisClient::from_url(&url)
                        .with_context(|| format!("[key_value_store.{label}] url"))?;
                    StoreConfig::Redis { url }
                }
                ("redis", _, _) => {
                    bail!("[key_value_store.{label}]: type \"redis\" takes exactly a url")
                }
                ("spin", path, None) => StoreConfig::Spin {
                    path: path.map(|p| base.join(p)),
                },
                ("spin", _, Some(_)) => {
                    bail!("[key_value_store.{label}]: type \"spin\" takes a path, not a url")
                }
                (other, _, _) => bail!(
                    "[key_value_store.{label}]: type {other:?} is not supported by collector-host (use \"spin\" or \"redis\")"
                ),
            };
            key_value_stores.insert(label, config);
        }
        let outbound_http = match file.outbound_http {
            None => None,
            Some(o) => Some(OutboundHttp {
                connection_pooling: o.connection_pooling,
                max_concurrent: match (o.max_connections, o.max_concurrent_requests) {
                    (Some(_), Some(_)) => bail!(
                        "[outbound_http]: set max_connections or max_concurrent_requests, not both"
                    ),
                    (Some(0), None) => {
                        bail!("[outbound_http]: max_connections = 0 allows no request at all")
                    }
                    (Some(n), None) => Some(n),
                    // Spin's older name counted one fewer.
                    (None, Some(n)) => Some(n + 1),
                    (None, None) => None,
                },
            }),
        };
        Ok(RuntimeConfig {
            key_value_stores,
            outbound_http,
        })
    }

    /// The store for `label`: as configured, or the default file store under `state_dir`.
    pub fn open_store(&self, label: &str, state_dir: &Path) -> Result<Option<KvStore>> {
        match self.key_value_stores.get(label) {
            Some(StoreConfig::Redis { url }) => Ok(Some(KvStore::redis(url)?)),
            Some(StoreConfig::Spin { path: Some(path) }) => {
                Ok(Some(KvStore::in_dir(path.clone())?))
            }
            Some(StoreConfig::Spin { path: None }) => Ok(Some(KvStore::open(state_dir, label)?)),
            None if label == "default" => Ok(Some(KvStore::open(state_dir, label)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_spin_reads_are_read_the_same_way() {
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6390\"\n\
             [key_value_store.other]\ntype = \"spin\"\npath = \"kv\"\n\
             [outbound_http]\nconnection_pooling = true\nmax_concurrent_requests = 4\n",
            Path::new("/cfg"),
        )
        .unwrap();
        assert_eq!(
            rc.key_value_stores["default"],
            StoreConfig::Redis {
                url: "redis://127.0.0.1:6390".into()
            }
        );
        assert_eq!(
            rc.key_value_stores["other"],
            StoreConfig::Spin {
                path: Some(PathBuf::from("/cfg/kv"))
            }
        );
        assert_eq!(
            rc.outbound_http,
            Some(OutboundHttp {
                connection_pooling: true,
                max_concurrent: Some(5)
            })
        );
        // A present table without connection_pooling turns it off, as in Spin.
        let rc =
            RuntimeConfig::parse("[outbound_http]\nmax_connections = 2\n", Path::new(".")).unwrap();
        assert_eq!(
            rc.outbound_http,
            Some(OutboundHttp {
                connection_pooling: false,
                max_concurrent: Some(2)
            })
        );
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        for (text, needle) in [
            ("[outbound_http]\npooling = true\n", "pooling"),
            (
                "[outbound_http]\nmax_connections = 1\nmax_concurrent_requests = 1\n",
                "not both",
            ),
            ("[key_value_store.default]\ntype = \"redis\"\n", "url"),
            (
                "[key_value_store.default]\ntype = \"redis\"\nurl = \"rediss://h\"\n",
                "url",
            ),
            (
                "[key_value_store.default]\ntype = \"azure_cosmos\"\n",
                "not supported",
            ),
            (
                "[sqlite_database.default]\ntype = \"spin\"\n",
                "sqlite_database",
            ),
        ] {
            let err = format!(
                "{:#}",
                RuntimeConfig::parse(text, Path::new(".")).unwrap_err()
            );
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
