//! A best-effort lease per shard, so overlapping runs (cron ticks, Pub/Sub redeliveries, an
//! operator clicking twice) skip instead of reading the same window twice at once.
//!
//! Hosted Spin KV has no compare-and-swap, so the lease is written, left a moment for a
//! concurrent writer's write to land, and read back: only the last writer proceeds.
//! Correctness never depends on it: deterministic object names and create-only uploads make a
//! race cost requests, not duplicates.

use serde::{Deserialize, Serialize};

use crate::ports::Env;
use crate::shard::Shard;
use crate::state;

/// How long a writer waits before reading its lease back: long enough for a concurrent run's
/// write (made between its own check and this run's write, a KV round trip apart) to land.
/// It is spent on every run, so it is kept short: a race it misses costs requests only.
const SETTLE_SECS: f64 = 0.05;
/// A lease outlives the run's budget by this much, in case the instance is killed.
const GRACE_SECS: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    expires: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    Acquired {
        key: String,
        owner: String,
    },
    /// Another run holds it until then.
    Held {
        until: i64,
    },
}

fn lease_key(shard: &Shard) -> String {
    format!("v1/lease{}", shard.suffix())
}

fn random_owner() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        return format!("{:x}", std::process::id());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Takes the shard's lease for `budget_secs` (plus grace) unless a live one is held.
pub fn acquire(env: &Env, shard: &Shard, budget_secs: u64) -> Result<Lease, String> {
    let key = lease_key(shard);
    let now = env.clock.now() as i64;
    if let Some(held) = state::load::<LeaseRecord>(env.kv, &key)? {
        if held.expires > now {
            return Ok(Lease::Held {
                until: held.expires,
            });
        }
    }
    let owner = random_owner();
    let mine = LeaseRecord {
        owner: owner.clone(),
        expires: now + budget_secs as i64 + GRACE_SECS,
    };
    state::save(env.kv, &key, &mine)?;
    env.clock.sleep(SETTLE_SECS);
    match state::load::<LeaseRecord>(env.kv, &key)? {
        Some(rec) if rec.owner == owner => Ok(Lease::Acquired { key, owner }),
        Some(rec) => Ok(Lease::Held { until: rec.expires }),
        None => Ok(Lease::Held { until: now }),
    }
}

/// Gives the lease up, if it is still ours.
pub fn release(env: &Env, lease: &Lease) {
    if let Lease::Acquired { key, owner } = lease {
        if let Ok(Some(rec)) = state::load::<LeaseRecord>(env.kv, key) {
            if &rec.owner == owner {
                let _ = env.kv.delete(key);
            }
        }
    }
}

/// Whether a live lease is held on the shard (for `/status`).
pub fn is_held(env: &Env, shard_suffix: &str) -> bool {
    let now = env.clock.now() as i64;
    matches!(state::load::<LeaseRecord>(env.kv, &format!("v1/lease{shard_suffix}")), Ok(Some(r)) if r.expires > now)
}
