//! Draining the inbox's `issue` and `comment` deliveries into `issue_activity/` and alerts
//! into `alerts/`, under the lease of the whole org, with the pull's two-phase commit: the
//! object is recorded as pending (with its inbox keys) before it may exist, uploaded
//! create-only, then recorded as delivered (its digests remembered), and only then are its
//! inbox keys deleted. A run that dies anywhere in between leaves either the pending mark
//! (the next run asks the bucket whether the object landed) or keys whose digests are
//! remembered (dropped as duplicates): nothing is lost and nothing is written twice.
//! `error` deliveries are drained by the `events` collection (`collect::webhook`).

use super::*;
use crate::collect::collector::OBJECT_TARGET_BYTES;
use crate::config::Config;
use crate::gcs::{self, GcsClient};
use crate::lease::{Fenced, Lease};
use crate::ports::Env;
use crate::report::{DrainSummary, ObjectSummary};

/// One delivery read from the inbox.
struct Delivery {
    key: String,
    digest: String,
    received: i64,
    line: Vec<u8>,
}

struct Drainer<'a, 'e> {
    until: f64,
    env: &'a Env<'e>,
    config: &'a Config,
    gcs: &'a GcsClient<'e>,
    lease: &'a Lease,
    state: DrainState,
    summary: DrainSummary,
}

/// Drains the kept `issue`, `comment` and alert deliveries, starting no write after `until`
/// (Unix seconds: the streams get the rest of the run). Never fails the run: what went wrong
/// is in the summary (and `/status`), and the inbox keeps what was not written.
pub fn drain(
    env: &Env,
    config: &Config,
    gcs: &GcsClient,
    lease: &Lease,
    until: f64,
) -> DrainSummary {
    let state = match crate::state::load::<DrainState>(env.kv, DRAIN_KEY) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            return DrainSummary {
                error: Some(e),
                ..DrainSummary::default()
            }
        }
    };
    let mut d = Drainer {
        until,
        env,
        config,
        gcs,
        lease,
        state,
        summary: DrainSummary::default(),
    };
    // A later epoch in the record: a later run drained, unless the bucket shows this run's
    // lease is the newest (the epochs began again: a new bucket or prefix, or the lease
    // folder emptied), as for checkpoints.
    if d.state.epoch > lease.epoch && lease.check(env, gcs).is_err() {
        d.summary.error = Some("a later run drained the inbox; this run leaves it".into());
        return d.summary;
    }
    let outcome = d.settle().and_then(|()| d.drain_all());
    if let Err(e) = outcome {
        eprintln!("webhook inbox: {e}");
        d.summary.error = Some(e.clone());
        if !matches!(e.as_str(), LOST) {
            d.state.error = Some(e);
            let _ = d.save();
        }
    } else if d.state.error.is_some() {
        d.state.error = None;
        let _ = d.save();
    }
    d.summary.left = env
        .kv
        .keys()
        .map(|k| k.iter().filter(|k| parse_key(k).is_some()).count() as u64)
        .unwrap_or(0);
    d.summary
}

const LOST: &str = "the lease was lost: this run writes nothing more";

/// A fence that did not hold, as the drain reports it.
fn fenced(f: Fenced) -> String {
    match f {
        Fenced::Lost(_) => LOST.to_string(),
        Fenced::Unchecked(e) => e.to_string(),
    }
}

impl Drainer<'_, '_> {
    fn fence(&self) -> Result<(), String> {
        self.lease.check_time(self.env.clock.now()).map_err(fenced)
    }

    fn save(&mut self) -> Result<(), String> {
        self.fence()?;
        self.state.epoch = self.lease.epoch;
        crate::state::save(self.env.kv, DRAIN_KEY, &self.state).map(|_| ())
    }

    fn now(&self) -> i64 {
        self.env.clock.now() as i64
    }

    /// Resolves the object a run left pending: delivered if the bucket holds it.
    fn settle(&mut self) -> Result<(), String> {
        let Some(p) = self.state.pending.clone() else {
            return Ok(());
        };
        let landed = self
            .gcs
            .holds(&p.name, &p.content)
            .map_err(|e| format!("checking the object an interrupted drain was writing: {e}"))?;
        if landed {
            self.delivered(&p.digests);
            self.summary.warnings.push(format!(
                "an interrupted drain had written {}; its deliveries are not written again",
                p.name
            ));
        }
        self.state.pending = None;
        self.save()?;
        if landed {
            self.delete(&p.keys);
        }
        Ok(())
    }

    fn delivered(&mut self, digests: &[String]) {
        let now = self.now();
        self.state.remember(digests, now);
        self.state.delivered += digests.len() as u64;
        self.state.last_delivery = Some(now);
    }

    /// Deletes inbox keys whose deliveries are recorded as written (a failure leaves a key
    /// whose digest the next drain recognises).
    fn delete(&mut self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.env.kv.delete(key) {
                self.summary.warnings.push(format!(
                    "could not delete {key} from the inbox ({e}); the next run drops it"
                ));
            }
        }
    }

    fn drain_all(&mut self) -> Result<(), String> {
        let mut keys: Vec<(Kind, i64, String, String)> = self
            .env
            .kv
            .keys()
            .map_err(|e| format!("listing the inbox: {e}"))?
            .iter()
            .filter_map(|k| {
                let p = parse_key(k)?;
                Some((p.kind, p.received, p.digest.to_string(), k.clone()))
            })
            .collect();
        keys.sort();
        let in_inbox: std::collections::HashSet<&str> = keys.iter().map(|k| k.2.as_str()).collect();
        self.state.forget_old(self.now(), &in_inbox);
        if !self.config.streams.iter().any(|s| s == "events") {
            // `error` deliveries kept before `events` left `streams`: nobody will write them.
            let orphans: Vec<String> = keys
                .iter()
                .filter(|k| k.0 == Kind::Event)
                .map(|k| k.3.clone())
                .collect();
            if !orphans.is_empty() {
                self.summary.warnings.push(format!(
                    "{} error webhook(s) dropped from the inbox: events is no longer collected",
                    orphans.len()
                ));
                self.delete(&orphans);
            }
        }
        for kind in [Kind::Activity, Kind::Alert] {
            let todo: Vec<_> = keys.iter().filter(|k| k.0 == kind).cloned().collect();
            self.drain_kind(kind, todo)?;
        }
        Ok(())
    }

    /// Drains one kind's deliveries: each once, in objects of up to [`OBJECT_TARGET_BYTES`].
    fn drain_kind(
        &mut self,
        kind: Kind,
        keys: Vec<(Kind, i64, String, String)>,
    ) -> Result<(), String> {
        let mut batch: Vec<Delivery> = Vec::new();
        let mut bytes = 0;
        let mut dropped: Vec<(String, String)> = Vec::new();
        for (_, received, digest, key) in keys {
            if self.env.clock.now() > self.until {
                self.summary.warnings.push(
                    "the inbox's drain stopped at its share of the run; the next run goes on"
                        .into(),
                );
                break;
            }
            if self.state.knows(&digest) || batch.iter().any(|d| d.digest == digest) {
                dropped.push((key, digest));
                continue;
            }
            let Some(record) = self
                .env
                .kv
                .get(&key)
                .map_err(|e| format!("reading {key}: {e}"))?
            else {
                continue;
            };
            let line = decode_record(&record).and_then(|(meta, body)| {
                activity_line(&meta, body).map(|mut l| {
                    l.push(b'\n');
                    (meta.inline, l)
                })
            });
            let Some((inline, line)) = line else {
                self.summary.warnings.push(format!(
                    "{key} holds no readable delivery; it is left in the inbox"
                ));
                continue;
            };
            if inline {
                // Written under its digest's name, as the intake would have: whichever of the
                // two writes it, the bucket has it once.
                let name = inline_object_name(
                    &self.config.gcs.prefix,
                    &self.config.sentry.org,
                    kind,
                    &digest,
                );
                self.fence()?;
                let created = super::intake::write_inline(self.gcs, &name, line)
                    .map_err(|e| format!("writing {name}: {e}"))?;
                if created {
                    *self.summary.lines.entry(kind.stream()).or_default() += 1;
                    self.delivered(std::slice::from_ref(&digest));
                } else {
                    self.summary.duplicates += 1;
                    self.state.duplicates += 1;
                    self.state
                        .remember(std::slice::from_ref(&digest), self.now());
                }
                self.save()?;
                self.delete(&[key]);
                continue;
            }
            bytes += line.len();
            batch.push(Delivery {
                key,
                digest,
                received,
                line,
            });
            if bytes >= OBJECT_TARGET_BYTES {
                self.write(kind, std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        self.write(kind, batch)?;
        if !dropped.is_empty() {
            let digests: Vec<String> = dropped.iter().map(|(_, d)| d.clone()).collect();
            let now = self.now();
            self.state.remember(&digests, now);
            self.state.duplicates += dropped.len() as u64;
            self.summary.duplicates += dropped.len() as u64;
            self.save()?;
            let keys: Vec<String> = dropped.into_iter().map(|(k, _)| k).collect();
            self.delete(&keys);
        }
        Ok(())
    }

    /// Writes a batch as one object, in two phases, then deletes its inbox keys.
    fn write(&mut self, kind: Kind, batch: Vec<Delivery>) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let stream = kind.stream();
        let ndjson: Vec<u8> = batch.iter().flat_map(|d| d.line.iter().copied()).collect();
        let body = if self.config.gcs.gzip {
            gcs::gzip(&ndjson)
        } else {
            ndjson
        };
        let content = gcs::Content::of(&body);
        let first = batch.iter().map(|d| d.received).min().unwrap_or_default();
        let last = batch.iter().map(|d| d.received).max().unwrap_or_default();
        let name = gcs::object_name(
            &self.config.gcs,
            stream,
            "",
            &self.config.sentry.org,
            (first, last),
            0,
            &content.id,
            self.config.gcs.gzip,
        );
        let keys: Vec<String> = batch.iter().map(|d| d.key.clone()).collect();
        let digests: Vec<String> = batch.iter().map(|d| d.digest.clone()).collect();
        self.state.pending = Some(PendingBatch {
            name: name.clone(),
            content: content.id.clone(),
            keys: keys.clone(),
            digests: digests.clone(),
        });
        // The pending mark must reach KV before the object may exist.
        self.save()?;
        self.lease.check(self.env, self.gcs).map_err(fenced)?;
        let uploaded = self
            .gcs
            .create(&name, body, &content, batch.len())
            .map_err(|e| format!("writing {stream}: {e}"))?;
        self.delivered(&digests);
        self.state.pending = None;
        self.save()?;
        *self.summary.lines.entry(stream).or_default() += batch.len() as u64;
        self.summary.objects.push(ObjectSummary {
            name: uploaded.name,
            events: batch.len(),
            bytes: uploaded.bytes,
            already_present: uploaded.already_present,
        });
        self.delete(&keys);
        Ok(())
    }
}
