//! How many shards read `events`, the one stream read project by project: recorded on the
//! first run, checked on every run, and changed only by a migration that carries every old
//! shard's position and delivered ids into the new shards (see [`merge`]).
//!
//! Without it, an unsharded `/run` next to a sharded deployment (or the other way round)
//! starts a checkpoint of its own at `now - lookback` and delivers the lookback again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, ShardFloor};
use crate::delivered::SeenSet;
use crate::ports::KeyValue;
use crate::shard::Shard;
use crate::state;

/// The KV record of the layout.
pub const KEY: &str = "v1/layout";
/// The stream whose checkpoints are per shard.
pub const SHARDED_STREAM: &str = "events";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LayoutRecord {
    shards: u32,
}

/// Why a run may not go ahead in this layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// Someone must act (migrate, or fix the schedule).
    Refused(String),
    /// KV failed.
    Failed(String),
}

/// The recorded number of shards, if any.
pub fn recorded(kv: &dyn KeyValue) -> Result<Option<u32>, String> {
    Ok(state::load::<LayoutRecord>(kv, KEY)?.map(|r| r.shards))
}

/// Records the number of shards.
pub fn record(kv: &dyn KeyValue, shards: u32) -> Result<(), String> {
    state::save(kv, KEY, &LayoutRecord { shards }).map(drop)
}

/// The name `events` state goes by for `shard`: `events`, or `events.s{i}of{n}`.
pub fn state_name(shard: &Shard) -> String {
    format!("{SHARDED_STREAM}{}", shard.suffix())
}

/// Every shard with an `events` checkpoint in KV.
pub fn shards_in_kv(kv: &dyn KeyValue) -> Result<Vec<Shard>, String> {
    let mut found = Vec::new();
    for key in kv.keys()? {
        let Some(name) = key
            .strip_prefix("v1/")
            .and_then(|k| k.strip_suffix("/checkpoint"))
        else {
            continue;
        };
        let Some(suffix) = name.strip_prefix(SHARDED_STREAM) else {
            continue;
        };
        if let Some(shard) = Shard::from_suffix(suffix) {
            found.push(shard);
        }
    }
    found.sort_by_key(|s| (s.count, s.index));
    Ok(found)
}

fn counts(shards: &[Shard]) -> BTreeSet<u32> {
    shards.iter().map(|s| s.count).collect()
}

fn how_to_migrate(to: u32) -> String {
    format!(
        "to collect as {to} shard(s), stop the runs of the old layout and POST /migrate?shards={to}: it carries every shard's position and delivered ids into the new layout (nothing lost, nothing repeated); then schedule the new shards"
    )
}

/// Lets a run of `shard` go ahead only in the deployment's layout. The first run records
/// its own layout (or the one its checkpoints show, for deployments from before layouts were
/// recorded).
pub fn check(kv: &dyn KeyValue, shard: &Shard) -> Result<(), LayoutError> {
    let want = shard.count.max(1);
    let have = match recorded(kv).map_err(LayoutError::Failed)? {
        Some(n) => n,
        None => {
            let found = counts(&shards_in_kv(kv).map_err(LayoutError::Failed)?);
            match found.len() {
                0 => want,
                1 => *found.first().expect("one"),
                _ => {
                    return Err(LayoutError::Refused(format!(
                        "{SHARDED_STREAM} has checkpoints of several shard layouts ({}): runs of different layouts have collected side by side; {}",
                        found.iter().map(|n| format!("{n} shard(s)")).collect::<Vec<_>>().join(", "),
                        how_to_migrate(want)
                    )))
                }
            }
        }
    };
    if have != want {
        return Err(LayoutError::Refused(format!(
            "{SHARDED_STREAM} is collected as {have} shard(s) here (KV {KEY}); a run as shard {shard} was refused, as next to them it would read the whole lookback again; {}",
            how_to_migrate(want)
        )));
    }
    if recorded(kv).map_err(LayoutError::Failed)?.is_none() {
        record(kv, have).map_err(LayoutError::Failed)?;
    }
    Ok(())
}

/// Where everything before was delivered, for an old shard's checkpoint: its watermark, or,
/// before its first window was finished, that window's start plus the overlap (so reading
/// starts exactly where the shard's did).
fn floor_of(cp: &Checkpoint, overlap: i64) -> Option<i64> {
    cp.watermark
        .or_else(|| cp.in_progress.as_ref().map(|p| p.window.start + overlap))
}

/// The checkpoint and delivered ids of new shard `to`, from the old shards' (pending objects
/// settled). Its watermark is the earliest old floor; each old shard's own floor (and any
/// floor an old checkpoint still carried) stays as a floor for that shard's projects, so
/// every project is read from where its old shard left it, less the overlap, with the ids
/// its old shard delivered there. `None`: no old shard had read anything.
pub fn merge(
    old: &[(Shard, Checkpoint, SeenSet)],
    to: Shard,
    overlap: i64,
    carried: impl Fn(u64) -> bool,
) -> Option<(Checkpoint, SeenSet)> {
    let mut floors: Vec<ShardFloor> = Vec::new();
    for (shard, cp, _) in old {
        if let Some(at) = floor_of(cp, overlap) {
            floors.push(ShardFloor {
                shard: shard.to_string(),
                at,
            });
        }
        floors.extend(cp.floors.iter().cloned());
    }
    let watermark = floors.iter().map(|f| f.at).min()?;
    floors.retain(|f| f.at > watermark);
    floors.sort_by(|a, b| (&a.shard, a.at).cmp(&(&b.shard, b.at)));
    floors.dedup();
    let mut seen = SeenSet::default();
    for (_, _, ids) in old {
        seen.extend_where(ids, |project| to.includes(project) || carried(project));
    }
    // The live track began where the earliest old shard's did (a backfill reads up to there).
    let origins: Vec<i64> = old.iter().filter_map(|(_, cp, _)| cp.origin).collect();
    // Events written from webhooks below the old shards' floors (their inbox keys may still
    // be there after a crash): every new shard keeps them, each drains only its own.
    let mut webhook_late: Vec<_> = old
        .iter()
        .flat_map(|(_, cp, _)| cp.webhook_late.iter().cloned())
        .collect();
    webhook_late.sort_by(|a, b| a.id.cmp(&b.id));
    webhook_late.dedup_by(|a, b| a.id == b.id);
    let cp = Checkpoint {
        watermark: Some(watermark),
        webhook_late,
        floors,
        origin: (origins.len() == old.len())
            .then(|| origins.iter().copied().min())
            .flatten(),
        ..Checkpoint::default()
    };
    Some((cp, seen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::WindowProgress;
    use crate::ports::memory::MemKv;
    use crate::window::Window;

    fn shard(s: &str) -> Shard {
        Shard::parse(s).unwrap()
    }

    #[test]
    fn the_first_run_records_its_layout_and_a_run_of_another_is_refused() {
        let kv = MemKv::default();
        check(&kv, &shard("1/4")).unwrap();
        assert_eq!(recorded(&kv).unwrap(), Some(4));
        check(&kv, &shard("3/4")).unwrap();
        let Err(LayoutError::Refused(m)) = check(&kv, &Shard::WHOLE) else {
            panic!("an unsharded run next to four shards must be refused")
        };
        assert!(
            m.contains("as 4 shard(s)") && m.contains("/migrate?shards=1"),
            "{m}"
        );
    }

    #[test]
    fn deployments_from_before_layouts_were_recorded_keep_theirs_and_mixed_ones_must_migrate() {
        let kv = MemKv::default();
        kv.set("v1/events.s0of2/checkpoint", b"{}").unwrap();
        kv.set("v1/events.s1of2/seen/0/0", b"\"\"").unwrap();
        kv.set("v1/audit_logs/checkpoint", b"{}").unwrap();
        assert!(matches!(
            check(&kv, &Shard::WHOLE),
            Err(LayoutError::Refused(_))
        ));
        check(&kv, &shard("1/2")).unwrap();
        assert_eq!(recorded(&kv).unwrap(), Some(2));

        let mixed = MemKv::default();
        mixed.set("v1/events/checkpoint", b"{}").unwrap();
        mixed.set("v1/events.s0of2/checkpoint", b"{}").unwrap();
        let Err(LayoutError::Refused(m)) = check(&mixed, &shard("0/2")) else {
            panic!("checkpoints of two layouts must be merged first")
        };
        assert!(m.contains("several shard layouts"), "{m}");
        assert_eq!(
            shards_in_kv(&mixed).unwrap(),
            vec![Shard::WHOLE, shard("0/2")]
        );
    }

    #[test]
    fn a_merge_starts_at_the_earliest_floor_and_keeps_the_others_per_old_shard() {
        let overlap = 600;
        let mut ids = [SeenSet::default(), SeenSet::default()];
        // Projects 1..=40, each id recorded under its project by the shard that reads it.
        let old_shards = [shard("0/2"), shard("1/2")];
        for p in 1..=40u64 {
            let i = old_shards.iter().position(|s| s.includes(p)).unwrap();
            ids[i].insert_key(crate::identity::seen_key(&format!("{p:032x}")), 9_500, p);
        }
        let ahead = Checkpoint {
            watermark: Some(10_000),
            ..Checkpoint::default()
        };
        let first_window = Checkpoint {
            in_progress: Some(WindowProgress {
                window: Window {
                    start: 8_000,
                    end: 9_000,
                },
                projects: vec![],
                projects_cut: 0,
                next_project: 0,
                cursor: None,
                objects: 1,
                query_start: None,
                query_rows: 0,
                read_from: vec![],
                read_to: vec![],
                keyset: None,
                dates_ignored: false,
                last_row: None,
                restarted_at: None,
            }),
            ..Checkpoint::default()
        };
        let old = vec![
            (old_shards[0], ahead, ids[0].clone()),
            (old_shards[1], first_window, ids[1].clone()),
        ];
        let (cp, seen) = merge(&old, Shard::WHOLE, overlap, |_| false).unwrap();
        assert_eq!(
            cp.watermark,
            Some(8_600),
            "the window in progress restarts at its start"
        );
        assert_eq!(
            cp.floors,
            vec![ShardFloor {
                shard: "0/2".into(),
                at: 10_000
            }]
        );
        assert!(cp.in_progress.is_none() && cp.pending.is_none());
        assert_eq!(seen.len(), 40, "every delivered id is carried");
        for p in 1..=40u64 {
            let expected = if old_shards[0].includes(p) {
                10_000
            } else {
                8_600
            };
            assert_eq!(
                cp.floor_for(p).unwrap_or(8_600).max(8_600),
                expected,
                "project {p}"
            );
        }
        // Into four shards: each gets only its projects' ids.
        let total: usize = (0..4)
            .map(|j| {
                let to = shard(&format!("{j}/4"));
                merge(&old, to, overlap, |_| false).unwrap().1.len()
            })
            .sum();
        assert_eq!(total, 40);
        // Nothing read yet: nothing to carry.
        assert!(merge(
            &[(Shard::WHOLE, Checkpoint::default(), SeenSet::default())],
            Shard::WHOLE,
            overlap,
            |_| false
        )
        .is_none());
    }
}
