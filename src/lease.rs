//! The lease a run holds on a shard, kept in Cloud Storage, where a create-only upload
//! (`ifGenerationMatch=0`) is a compare-and-swap every deployment has: of two runs claiming
//! the same epoch, exactly one create succeeds, however slow or jittery the KV store is.
//!
//! Epoch `n` of a shard is the object `{gcs_prefix}collector-state/leases/{shard}/{u64::MAX - n}`
//! (20 digits), so listing the folder with `maxResults=1` returns the newest. Its custom
//! metadata says until when it is held, or that it was released. A run claims epoch `n + 1`
//! only when epoch `n` is released or expired. The holder is fenced: before every commit it
//! checks that its lease has time left (it expires a grace period after the run's budget) and,
//! before every upload, that no later epoch exists; the epoch is also stored in each checkpoint
//! and a save refuses to overwrite a later epoch's. A run that lost stops without writing.
//!
//! Why not `wasi:keyvalue/atomics`: hosted Spin (Fermyon Cloud, Akamai Functions) does not
//! implement it, and a component that imports an interface its host lacks does not start.
//! The bucket is shared by every instance of a deployment and answers preconditions exactly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gcs::{GcsClient, GcsError};
use crate::ports::Env;
use crate::retry::Deadline;
use crate::shard::Shard;
use crate::state;

/// A lease outlives the run's budget by this much, so a run killed mid-way frees the shard
/// soon, while a live run (bounded by its budget) is always done before it expires.
const GRACE_SECS: i64 = 30;
/// A lease held longer than a run's budget, grace and this much is not believed: a host's
/// clock is wrong, or something else wrote it.
const MAX_CLOCK_SKEW_SECS: i64 = 600;
/// A holder stops committing this long before its lease expires (so a commit under way when
/// the check passed still lands while the lease holds; also absorbs small clock differences).
const MARGIN_SECS: f64 = 10.0;
/// What giving a run's leases up may take past its budget, within their grace period (per
/// lease a listing and one create).
const RELEASE_SECS: f64 = 3.0;

/// The folder holding a shard's lease epochs, outside every stream's feed prefix.
pub fn lease_dir(gcs_prefix: &str, shard: &Shard) -> String {
    let name = match shard.suffix().trim_start_matches('.') {
        "" => "whole".to_string(),
        s => s.to_string(),
    };
    format!("{gcs_prefix}collector-state/leases/{name}/")
}

fn random_owner() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        // Without randomness a lost reply only costs the run (it answers "skipped").
        return String::new();
    }
    crate::hex::encode(&b)
}

fn epoch_object(dir: &str, epoch: u64) -> String {
    format!("{dir}{:020}", u64::MAX - epoch)
}

fn epoch_of(dir: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(dir)?;
    (digits.len() == 20)
        .then(|| digits.parse::<u64>().ok())
        .flatten()
        .map(|inverted| u64::MAX - inverted)
}

/// What the newest epoch object says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Newest {
    epoch: u64,
    /// The claiming run's random mark (so a run whose create's reply was lost knows its own).
    owner: Option<String>,
    /// Held until then; `None` when released.
    held_until: Option<i64>,
}

fn newest(gcs: &GcsClient, dir: &str) -> Result<Option<Newest>, GcsError> {
    let Some(object) = gcs.first_under(dir)? else {
        return Ok(None);
    };
    let Some(epoch) = epoch_of(dir, &object.name) else {
        return Err(GcsError::Fatal(format!(
            "{} is not a lease this collector wrote; nothing but the collector may write under {dir}",
            object.name
        )));
    };
    let field = |k: &str| object.metadata.get(k).map(String::as_str);
    let held_until = match field("state") {
        Some("released") => None,
        _ => Some(field("expires").and_then(|e| e.parse::<i64>().ok()).ok_or_else(|| {
            GcsError::Fatal(format!(
                "the lease {} has no readable expiry; nothing but the collector may write under {dir} (delete that object to free the shard)",
                object.name
            ))
        })?),
    };
    Ok(Some(Newest {
        epoch,
        owner: field("owner").map(str::to_string),
        held_until,
    }))
}

/// The KV copy of the newest lease, for `/status` only. (Versions before the bucket lease
/// kept the lease itself here, without an epoch: a live one is still respected.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    #[serde(default)]
    epoch: u64,
    expires: i64,
    #[serde(default)]
    released: bool,
}

fn record_key(shard: &Shard) -> String {
    format!("v1/lease{}", shard.suffix())
}

/// A shard's lease, held by this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    dir: String,
    pub shard: Shard,
    pub epoch: u64,
    pub expires: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Acquired(Lease),
    /// Another run holds it until then.
    Held {
        until: i64,
    },
}

/// Why a run may no longer commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Another run took the shard over, or this run's lease ran out.
    Lost(String),
    /// The lease could not be checked (Cloud Storage failed).
    Unchecked(GcsError),
}

impl fmt::Display for Fenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fenced::Lost(m) => f.write_str(m),
            Fenced::Unchecked(e) => write!(f, "the shard's lease could not be checked: {e}"),
        }
    }
}

/// Claims the shard for a run of `budget_secs` unless a live lease is held.
pub fn acquire(
    env: &Env,
    gcs: &GcsClient,
    gcs_prefix: &str,
    shard: &Shard,
    budget_secs: u64,
) -> Result<Claim, GcsError> {
    let dir = lease_dir(gcs_prefix, shard);
    let now = env.clock.now() as i64;
    // A run of a version from before the bucket lease, still going during an upgrade.
    if let Ok(Some(legacy)) = state::load::<LeaseRecord>(env.kv, &record_key(shard)) {
        if legacy.epoch == 0 && !legacy.released && legacy.expires > now {
            return Ok(Claim::Held {
                until: legacy.expires,
            });
        }
    }
    let current = newest(gcs, &dir)?;
    let longest = now + budget_secs as i64 + GRACE_SECS + MAX_CLOCK_SKEW_SECS;
    if let Some(Newest {
        held_until: Some(until),
        ..
    }) = current
    {
        if until > longest {
            return Err(GcsError::Fatal(format!(
                "the newest lease under {dir} is held until {}, longer than any run lasts: a host's clock is wrong, or something else writes there (delete that object to free the shard)",
                crate::time::rfc3339(until)
            )));
        }
        if until > now {
            return Ok(Claim::Held { until });
        }
    }
    // Every run that saw the same newest epoch claims the same name: exactly one create
    // succeeds. (Nothing else may choose the number: a KV hint read at different moments
    // would give two runs two names, and both would win.)
    let epoch = match current {
        None => 1,
        Some(c) => c.epoch.checked_add(1).ok_or_else(|| {
            GcsError::Fatal(format!(
                "the lease epochs under {dir} are exhausted; nothing but the collector may write there (delete that folder to free the shard)"
            ))
        })?,
    };
    let expires = now + budget_secs as i64 + GRACE_SECS;
    let owner = random_owner();
    let metadata = BTreeMap::from([
        ("state".to_string(), "held".to_string()),
        ("expires".to_string(), expires.to_string()),
        ("owner".to_string(), owner.clone()),
    ]);
    if !gcs.create_marker(&epoch_object(&dir, epoch), &metadata)? {
        // Another run claimed the same epoch first, or this run did and the reply was lost
        // (the retried create then found it).
        let until = match newest(gcs, &dir)? {
            Some(n)
                if n.epoch == epoch
                    && !owner.is_empty()
                    && n.owner.as_deref() == Some(owner.as_str()) =>
            {
                None
            }
            Some(Newest {
                held_until: Some(until),
                ..
            }) => Some(until),
            _ => Some(expires),
        };
        if let Some(until) = until {
            return Ok(Claim::Held { until });
        }
    }
    let record = LeaseRecord {
        epoch,
        expires,
        released: false,
    };
    if let Err(e) = state::save(env.kv, &record_key(shard), &record) {
        eprintln!("warning: could not record the lease in KV (for /status): {e}");
    }
    Ok(Claim::Acquired(Lease {
        dir,
        shard: *shard,
        epoch,
        expires,
    }))
}

impl Lease {
    /// Whether the lease still has time left at `now` (the check before every checkpoint
    /// save; no request).
    pub fn check_time(&self, now: f64) -> Result<(), Fenced> {
        if now + MARGIN_SECS < self.expires as f64 {
            return Ok(());
        }
        Err(Fenced::Lost(format!(
            "this run outlived its lease on the shard (epoch {}, expired at {}): it stopped without writing, as another run may have taken the shard over",
            self.epoch,
            crate::time::rfc3339(self.expires)
        )))
    }

    /// [`Lease::check_time`], and that no later epoch exists (the check before every upload).
    pub fn check(&self, env: &Env, gcs: &GcsClient) -> Result<(), Fenced> {
        self.check_time(env.clock.now())?;
        match newest(gcs, &self.dir).map_err(Fenced::Unchecked)? {
            Some(n) if n.epoch == self.epoch => Ok(()),
            Some(n) => Err(Fenced::Lost(format!(
                "another run took the shard over (lease epoch {} after this run's {}): this run stopped without writing",
                n.epoch, self.epoch
            ))),
            None => Err(Fenced::Lost(format!(
                "the shard's lease (epoch {}) is gone from {}: this run stopped without writing",
                self.epoch, self.dir
            ))),
        }
    }

    /// Gives the lease up (epoch + 1, released), if it is still the newest (through
    /// [`release_all`], which gives it the time).
    fn release(&self, env: &Env, gcs: &GcsClient) {
        match newest(gcs, &self.dir) {
            Ok(Some(n)) if n.epoch == self.epoch => {}
            Ok(_) => return,
            Err(e) => {
                eprintln!(
                    "warning: could not release the shard's lease ({e}); it expires by itself"
                );
                return;
            }
        }
        let metadata = BTreeMap::from([("state".to_string(), "released".to_string())]);
        let Some(next) = self.epoch.checked_add(1) else {
            return;
        };
        match gcs.create_marker(&epoch_object(&self.dir, next), &metadata) {
            Ok(false) => {}
            Ok(true) => {
                let record = LeaseRecord {
                    epoch: next,
                    expires: env.clock.now() as i64,
                    released: true,
                };
                let _ = state::save(env.kv, &record_key(&self.shard), &record);
            }
            Err(e) => eprintln!(
                "warning: could not release the shard's lease ({e}); it expires by itself"
            ),
        }
    }
}

/// Gives every lease in `leases` up (see [`Lease::release`]).
///
/// A run that ends within its budget gives them up within it. One whose last writes ended
/// after its budget (a slow shared store) still holds its leases for their grace period, so
/// giving them up may take up to [`RELEASE_SECS`] past the budget
/// (every attempt cut to what is left), and stops [`MARGIN_SECS`] before the soonest expiry,
/// as commits do: a release refused for the budget's sake left the shard locked until the
/// lease expired, and the next run, a moment later, was skipped.
pub fn release_all(env: &Env, gcs: &GcsClient, leases: &[Lease]) {
    let Some(soonest) = leases.iter().map(|l| l.expires).min() else {
        return;
    };
    let now = env.clock.now();
    // A run that ends early keeps its own deadline for this; one that ends late gets a little
    // of the grace period.
    let until = (now + RELEASE_SECS)
        .max(gcs.deadline().at())
        .min(soonest as f64 - MARGIN_SECS);
    if now >= until {
        eprintln!(
            "warning: this run ended too close to its lease's expiry to give it up; it expires by itself at {}",
            crate::time::rfc3339(soonest)
        );
        return;
    }
    gcs.with_deadline_at_least(Deadline(until), || {
        for lease in leases {
            if env.clock.now() >= until {
                eprintln!(
                    "warning: no time left to give the shard's lease up; it expires by itself at {}",
                    crate::time::rfc3339(lease.expires)
                );
                continue;
            }
            lease.release(env, gcs);
        }
    });
}

/// Whether a live lease is held on the shard (for `/status`, from the KV copy).
pub fn is_held(env: &Env, shard_suffix: &str) -> bool {
    let now = env.clock.now() as i64;
    matches!(
        state::load::<LeaseRecord>(env.kv, &format!("v1/lease{shard_suffix}")),
        Ok(Some(r)) if r.expires > now && !r.released
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_epoch_lists_first() {
        let dir = lease_dir("sentry/", &Shard::WHOLE);
        assert_eq!(dir, "sentry/collector-state/leases/whole/");
        let names: Vec<String> = [1, 2, 10, 11, 999]
            .iter()
            .map(|&e| epoch_object(&dir, e))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted[0], epoch_object(&dir, 999));
        for (name, e) in names.iter().zip([1, 2, 10, 11, 999]) {
            assert_eq!(epoch_of(&dir, name), Some(e));
        }
        assert_eq!(
            epoch_of(&dir, "sentry/collector-state/leases/whole/12"),
            None
        );
        let sharded = lease_dir("p/", &Shard::parse("1/4").unwrap());
        assert!(
            sharded.starts_with("p/collector-state/leases/s"),
            "{sharded}"
        );
    }

    #[test]
    fn a_lease_stops_its_holder_before_it_expires() {
        let lease = Lease {
            dir: String::new(),
            shard: Shard::WHOLE,
            epoch: 3,
            expires: 1_000,
        };
        assert!(lease.check_time(980.0).is_ok());
        assert!(
            matches!(lease.check_time(995.0), Err(Fenced::Lost(m)) if m.contains("another run"))
        );
    }

    /// After its budget, giving the leases up takes at most `RELEASE_SECS` and one request
    /// more, every attempt cut to what is left, even with Cloud Storage answering 503 to all;
    /// the client's own deadline is put back after.
    #[test]
    fn giving_leases_up_after_the_budget_is_bounded_and_leaves_the_client_as_it_was() {
        use crate::config::Config;
        use crate::ports::memory::{MemKv, MemVars};
        use crate::ports::{Clock, HttpClient, InboundResponse, OutboundRequest, TransportError};
        use std::cell::{Cell, RefCell};

        const NOW: f64 = 1_795_000_000.0;
        struct Ticking(Cell<f64>);
        impl Clock for Ticking {
            fn now(&self) -> f64 {
                self.0.get()
            }
            fn sleep(&self, secs: f64) {
                self.0.set(self.0.get() + secs.max(0.0));
            }
        }
        struct Busy<'a> {
            clock: &'a Ticking,
            seen: RefCell<Vec<(f64, Option<f64>, std::time::Duration)>>,
            /// Listings asked for, by the lease folder's shard part.
            listed: RefCell<Vec<String>>,
            /// This many requests more are answered 503; then an empty listing.
            failing: Cell<u32>,
        }
        impl HttpClient for Busy<'_> {
            fn send(&self, r: &OutboundRequest) -> Result<InboundResponse, TransportError> {
                let now = self.clock.now();
                self.seen
                    .borrow_mut()
                    .push((now, r.finish_by, r.timeouts.first_byte));
                if let Some((_, prefix)) = r.url.query_pairs().find(|(k, _)| k == "prefix") {
                    self.listed.borrow_mut().push(prefix.into_owned());
                }
                self.clock.sleep(0.2);
                let failing = self.failing.get();
                self.failing.set(failing.saturating_sub(1));
                Ok(InboundResponse {
                    status: if failing > 0 { 503 } else { 200 },
                    headers: Vec::new(),
                    body: if failing > 0 {
                        Vec::new()
                    } else {
                        br#"{"kind":"storage#objects"}"#.to_vec()
                    },
                })
            }
        }
        let vars = MemVars(
            [
                ("gcs_bucket", "secops-sentry"),
                ("gcs_access_token", "ya29.token"),
                ("sentry_org", "acme"),
                ("sentry_auth_token", "sntryu_0123456789abcdef"),
            ]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        );
        let config = Config::load(&vars).unwrap();
        let clock = Ticking(Cell::new(NOW));
        let http = Busy {
            clock: &clock,
            seen: RefCell::new(Vec::new()),
            listed: RefCell::new(Vec::new()),
            failing: Cell::new(u32::MAX),
        };
        let kv = MemKv::default();
        let env = Env {
            vars: &vars,
            kv: &kv,
            http: &http,
            clock: &clock,
        };
        // The budget ended 5 s ago; the leases hold for 25 s more.
        let run_deadline = NOW - 5.0;
        let gcs = GcsClient::new(env, &config.gcs, Deadline(run_deadline)).unwrap();
        let leases_until = |expires: i64| -> Vec<Lease> {
            [Shard::WHOLE, Shard::parse("0/2").unwrap()]
                .into_iter()
                .map(|shard| Lease {
                    dir: lease_dir("sentry/", &shard),
                    shard,
                    epoch: 4,
                    expires,
                })
                .collect()
        };
        release_all(&env, &gcs, &leases_until(NOW as i64 + 25));
        let seen = http.seen.take();
        assert!(!seen.is_empty(), "no release was tried after the budget");
        let until = NOW + RELEASE_SECS;
        for (at, finish_by, first_byte) in &seen {
            assert!(*at < until, "a request started at {}", at - NOW);
            assert_eq!(*finish_by, Some(until));
            assert!(
                first_byte.as_secs_f64() <= until - at + 1e-6,
                "{first_byte:?}"
            );
        }
        assert!(clock.now() <= until + 0.2 + 1e-6, "{}", clock.now() - NOW);
        // The client's deadline is the run's again: nothing else gets the release's time.
        assert!(gcs.first_under("sentry/x/").is_err());
        let after = http.seen.take();
        assert_eq!(after.len(), 1, "retried past the run's deadline");
        assert_eq!(after[0].1, Some(run_deadline));
        // Not strict any more: `Timeouts::within` never goes under a second.
        assert_eq!(after[0].2, std::time::Duration::from_secs(1));

        // A run that ends early keeps its whole deadline for this: three 503s take the first
        // lease past now + 3 s, and the second is still given up.
        http.failing.set(3);
        http.listed.take();
        let early = GcsClient::new(env, &config.gcs, Deadline(clock.now() + 15.0)).unwrap();
        let its_deadline = early.deadline().at();
        let started = clock.now();
        release_all(&env, &early, &leases_until(clock.now() as i64 + 40));
        let seen = http.seen.take();
        assert!(seen.iter().all(|s| s.1 == Some(its_deadline)), "{seen:?}");
        let last = seen.last().unwrap().0;
        assert!(last > started + RELEASE_SECS, "{seen:?}");
        let listed = http.listed.take();
        assert!(
            listed.iter().any(|p| p.ends_with("/whole/"))
                && listed.iter().any(|p| !p.ends_with("/whole/")),
            "not every lease was given up: {listed:?}"
        );
        http.failing.set(u32::MAX);

        // Too close to the soonest expiry: nothing is tried (the lease expires by itself).
        let near = [Lease {
            dir: lease_dir("sentry/", &Shard::WHOLE),
            shard: Shard::WHOLE,
            epoch: 4,
            expires: clock.now() as i64 + 5,
        }];
        release_all(&env, &gcs, &near);
        assert!(http.seen.take().is_empty());
    }
}
