//! `error` webhooks drained by the `events` collection, before it reads: each event the pull
//! has not delivered is written (one object, two phases, like a window's) and recorded in the
//! delivered-id set with its time, so the pull drops it when its window reaches it; an event
//! the pull delivered first is dropped from the inbox. Inbox keys are deleted only after the
//! checkpoint recording the object is saved.

use super::collector::*;
use crate::checkpoint::{LateEvent, PendingObject};
use crate::gcs;
use crate::identity::seen_key;
use crate::webhook::{self, Kind, WebhookEvent};

/// Events drained in one object at most.
const MAX_EVENTS_PER_OBJECT: usize = 2_000;

/// Objects of webhook events one run writes at most (the rest wait for the next run).
const MAX_OBJECTS_PER_RUN: usize = 10;

/// An `error` delivery of this shard read from the inbox: its key, when it came, its event.
type Found = (String, i64, WebhookEvent);

/// The digest in an inbox key.
fn digest_of(key: &str) -> String {
    webhook::parse_key(key).map_or_else(String::new, |k| k.digest.to_string())
}

impl Collector<'_, '_> {
    /// Drains this shard's `error` deliveries from the inbox, an object at a time, while the
    /// stream's share of the run lasts.
    pub(super) fn drain_webhook_events(&mut self) -> Result<(), Stop> {
        for _ in 0..MAX_OBJECTS_PER_RUN {
            let (found, more) = self.inbox_events()?;
            if !found.is_empty() {
                self.drain_found(found)?;
            }
            if !more || self.sentry.deadline() - self.env.clock.now() < 5.0 {
                break;
            }
        }
        Ok(())
    }

    /// Writes the events of `found` not delivered yet, then deletes their inbox keys.
    fn drain_found(&mut self, found: Vec<Found>) -> Result<(), Stop> {
        let lo = found.iter().map(|f| f.2.time).min().unwrap_or_default();
        let hi = found.iter().map(|f| f.2.time).max().unwrap_or_default();
        self.ensure_ids(lo, hi, false)?;
        let (ndjson, written, dropped, late) = self.not_yet_delivered(&found);
        if written > 0 {
            let first = found.iter().map(|f| f.1).min().unwrap_or_default();
            let last = found.iter().map(|f| f.1).max().unwrap_or_default();
            self.write_webhook_object(ndjson, written, (first, last), late)?;
        }
        self.summary.events += written as u64;
        self.summary.from_webhooks += written as u64;
        self.summary.duplicates_dropped += dropped;
        // Only now: every event of these keys is in an object the checkpoint records.
        for (key, _, _) in &found {
            if let Err(e) = self.env.kv.delete(key) {
                self.summary.warnings.push(format!(
                    "could not delete {key} from the webhook inbox ({e}); the next run drops it"
                ));
            }
        }
        Ok(())
    }

    /// The inbox's `error` deliveries of this shard's projects (known from their keys),
    /// oldest first, up to one object's worth, and whether more are left. With
    /// `sentry_full_events` they are dropped: the pull writes those events in the event
    /// details' shape, which a webhook's payload does not have.
    fn inbox_events(&mut self) -> Result<(Vec<Found>, bool), Stop> {
        let kv = self.env.kv;
        let unreadable = |e: String| {
            Stop::Failed(Failure {
                message: format!("reading the webhook inbox: {e}"),
                transient: true,
            })
        };
        let mut keys: Vec<(i64, String)> = kv
            .keys()
            .map_err(unreadable)?
            .iter()
            .filter_map(|k| {
                let p = webhook::parse_key(k)?;
                let mine =
                    p.kind == Kind::Event && p.project.is_some_and(|p| self.shard.includes(p));
                mine.then(|| (p.received, k.clone()))
            })
            .collect();
        keys.sort();
        let digests: std::collections::HashSet<String> =
            keys.iter().map(|(_, k)| digest_of(k)).collect();
        let now = self.env.clock.now() as i64;
        self.checkpoint
            .webhook_late
            .retain(|e| e.at > now - webhook::RECENT_SECS || digests.contains(&e.digest));
        if self.config.sentry.full_events && !keys.is_empty() {
            self.summary.warnings.push(format!(
                "{} error webhook(s) left to the pull: with sentry_full_events the pull writes events in the event details' shape",
                keys.len()
            ));
            for (_, key) in &keys {
                let _ = kv.delete(key);
            }
            return Ok((Vec::new(), false));
        }
        let mut found: Vec<Found> = Vec::new();
        let mut bytes = 0;
        let total = keys.len();
        for (received, key) in keys {
            if found.len() >= MAX_EVENTS_PER_OBJECT || bytes >= OBJECT_TARGET_BYTES {
                break;
            }
            let Some(record) = kv.get(&key).map_err(unreadable)? else {
                continue;
            };
            let event = webhook::decode_record(&record)
                .and_then(|(_, body)| serde_json::from_slice(body).ok())
                .ok_or_else(|| "not an inbox record".to_string())
                .and_then(|v| webhook::webhook_event(&v));
            match event {
                Ok(e) => {
                    bytes += e.line.len();
                    found.push((key, received, e));
                }
                Err(why) => self
                    .summary
                    .warnings
                    .push(format!("{key} is left in the webhook inbox: {why}")),
            }
        }
        let full = found.len() >= MAX_EVENTS_PER_OBJECT || bytes >= OBJECT_TARGET_BYTES;
        let more = full && found.len() < total;
        Ok((found, more))
    }

    /// The lines of the events not delivered yet (each recorded as delivered), how many, how
    /// many were dropped as delivered before, and the ids of those older than the delivered
    /// set keeps.
    fn not_yet_delivered(&mut self, found: &[Found]) -> (Vec<u8>, usize, u64, Vec<String>) {
        let floor = self.seen.floor();
        let now = self.env.clock.now() as i64;
        let mut ndjson = Vec::new();
        let mut late = Vec::new();
        let (mut written, mut dropped) = (0usize, 0u64);
        for (key, _, e) in found {
            let new = if e.time < floor {
                // Older than anything the delivered set keeps: the pull has passed this time
                // for good. Written, and said: if the pull read it before its webhook came,
                // SecOps sees it twice (a webhook that comes about `overlap` after its event).
                let known = self
                    .checkpoint
                    .webhook_late
                    .iter()
                    .any(|l| l.id == e.event_id);
                if !known {
                    self.checkpoint.webhook_late.push(LateEvent {
                        id: e.event_id.clone(),
                        at: now,
                        digest: digest_of(key),
                    });
                    late.push(e.event_id.clone());
                }
                !known
            } else {
                self.seen
                    .insert_key(seen_key(&e.event_id), e.time, e.project)
            };
            if new {
                ndjson.extend_from_slice(&e.line);
                ndjson.push(b'\n');
                written += 1;
            } else {
                dropped += 1;
            }
        }
        if !late.is_empty() {
            self.summary.warnings.push(format!(
                "{} webhook event(s) older than the overlap were written as they came: the pull no longer looks that far back",
                late.len()
            ));
        }
        (ndjson, written, dropped, late)
    }

    /// Writes the events as one object in two phases: the checkpoint records it pending with
    /// the events' ids, then the upload, then the checkpoint clears the mark.
    fn write_webhook_object(
        &mut self,
        ndjson: Vec<u8>,
        events: usize,
        received: (i64, i64),
        late: Vec<String>,
    ) -> Result<(), Stop> {
        let body = if self.config.gcs.gzip {
            gcs::gzip(&ndjson)
        } else {
            ndjson
        };
        let content = gcs::Content::of(&body);
        let name = gcs::object_name(
            &self.config.gcs,
            self.def.name,
            &format!("{}.webhook", self.shard.suffix()),
            &self.config.sentry.org,
            received,
            0,
            &content.id,
            self.config.gcs.gzip,
        );
        let mut pending = PendingObject::new(name.clone(), content.id.clone(), &self.checkpoint);
        pending.late = late;
        self.checkpoint.pending = Some(pending);
        // The pending mark and the events' ids reach KV before the object may exist.
        self.upload_pending(&name, body, &content, events)?;
        self.checkpoint.pending = None;
        self.save()
    }
}
