//! `error` webhooks drained by the `events` collection, before it reads: each event the pull
//! has not delivered is written (one object, two phases, like a window's) and recorded in the
//! delivered-id set with its time, so the pull drops it when its window reaches it; an event
//! the pull delivered first is dropped from the inbox. Inbox keys are deleted only after the
//! checkpoint recording the object is saved.

use super::collector::*;
use super::commit::fenced;
use crate::checkpoint::PendingObject;
use crate::gcs;
use crate::identity::seen_key;
use crate::report::ObjectSummary;
use crate::webhook::{self, Kind, WebhookEvent};

/// Events drained in one object at most (the rest wait for the next run).
const MAX_EVENTS_PER_DRAIN: usize = 2_000;

/// An `error` delivery of this shard read from the inbox: its key, when it came, its event.
type Found = (String, i64, WebhookEvent);

impl Collector<'_, '_> {
    /// Drains this shard's `error` deliveries from the inbox.
    pub(super) fn drain_webhook_events(&mut self) -> Result<(), Stop> {
        let found = self.inbox_events()?;
        if found.is_empty() {
            return Ok(());
        }
        let lo = found.iter().map(|f| f.2.time).min().unwrap_or_default();
        let hi = found.iter().map(|f| f.2.time).max().unwrap_or_default();
        self.ensure_ids(lo, hi, false)?;
        let (ndjson, written, dropped) = self.not_yet_delivered(&found);
        if written > 0 {
            let first = found.iter().map(|f| f.1).min().unwrap_or_default();
            let last = found.iter().map(|f| f.1).max().unwrap_or_default();
            self.write_webhook_object(ndjson, written, (first, last))?;
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

    /// The inbox's `error` deliveries of this shard's projects, oldest first, up to one
    /// object's worth.
    fn inbox_events(&mut self) -> Result<Vec<Found>, Stop> {
        let kv = self.env.kv;
        let unreadable = |e: String| {
            Stop::Failed(Failure {
                message: format!("reading the webhook inbox: {e}"),
                transient: true,
            })
        };
        let mut keys: Vec<(i64, String, String)> = kv
            .keys()
            .map_err(unreadable)?
            .iter()
            .filter_map(|k| {
                let (kind, received, digest) = webhook::parse_key(k)?;
                (kind == Kind::Event).then(|| (received, digest.to_string(), k.clone()))
            })
            .collect();
        keys.sort();
        let mut found: Vec<Found> = Vec::new();
        let mut bytes = 0;
        for (received, _, key) in keys {
            if found.len() >= MAX_EVENTS_PER_DRAIN || bytes >= OBJECT_TARGET_BYTES {
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
                Ok(e) if self.shard.includes(e.project) => {
                    bytes += e.line.len();
                    found.push((key, received, e));
                }
                Ok(_) => {}
                Err(why) => self
                    .summary
                    .warnings
                    .push(format!("{key} is left in the webhook inbox: {why}")),
            }
        }
        Ok(found)
    }

    /// The lines of the events not delivered yet (each recorded as delivered), how many, and
    /// how many were dropped as delivered before.
    fn not_yet_delivered(&mut self, found: &[Found]) -> (Vec<u8>, usize, u64) {
        let floor = self.seen.floor();
        let mut ndjson = Vec::new();
        let mut older_ids = std::collections::HashSet::new();
        let (mut written, mut dropped, mut older) = (0usize, 0u64, 0u64);
        for (_, _, e) in found {
            let new = if e.time < floor {
                // Older than anything the delivered set keeps: the pull has passed this time
                // for good. Written, and said: if the pull read it before its webhook came,
                // SecOps sees it twice (an event ingested about `overlap` late).
                older += 1;
                older_ids.insert(e.event_id.clone())
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
        if older > 0 {
            self.summary.warnings.push(format!(
                "{older} webhook event(s) older than the overlap were written as they came: the pull no longer looks that far back"
            ));
        }
        (ndjson, written, dropped)
    }

    /// Writes the events as one object in two phases: the checkpoint records it pending with
    /// the events' ids, then the upload, then the checkpoint clears the mark.
    fn write_webhook_object(
        &mut self,
        ndjson: Vec<u8>,
        events: usize,
        received: (i64, i64),
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
        self.checkpoint.pending = Some(PendingObject::new(
            name.clone(),
            content.id.clone(),
            &self.checkpoint,
        ));
        // The pending mark and the events' ids reach KV before the object may exist.
        self.save()?;
        self.lease.check(&self.env, self.gcs).map_err(fenced)?;
        let uploaded = self
            .gcs
            .create(&name, body, &content, events)
            .map_err(|e| Stop::WriteFailed(e.into()))?;
        self.checkpoint.pending = None;
        self.save()?;
        self.summary.bytes += uploaded.bytes as u64;
        self.summary.objects.push(ObjectSummary {
            name: uploaded.name,
            events,
            bytes: uploaded.bytes,
            already_present: uploaded.already_present,
        });
        Ok(())
    }
}
