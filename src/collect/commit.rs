//! Committing what was read: objects written create-only in two phases (pending in the
//! checkpoint, uploaded, confirmed), checkpoint saves fenced by the lease, delivered ids read
//! from KV before they are needed, and settling an object a run left pending.

use super::collector::*;
use crate::checkpoint::{
    Checkpoint, CheckpointStore, PendingObject, SaveError, WindowProgress, Writer,
};
use crate::delivered::SeenSet;
use crate::gcs::{self, GcsClient};
use crate::lease::{Fenced, Lease};
use crate::ports::Env;
use crate::report::{ObjectSummary, StreamSummary};
use crate::window::Window;

/// Resolves an object a previous run left pending: kept if the bucket holds it, rolled back
/// (its events to be read again) if not.
pub(crate) fn settle_pending(
    store: &CheckpointStore,
    gcs: &GcsClient,
    lease: &Lease,
    env: Env,
    (mut cp, mut seen): (Checkpoint, SeenSet),
    summary: &mut StreamSummary,
) -> Result<(Checkpoint, SeenSet), Stop> {
    let Some(pending) = cp.pending.take() else {
        return Ok((cp, seen));
    };
    // A refusal (403: the writer lacks objectViewer) is a permission to fix, not a blip.
    let landed = gcs.holds(&pending.name, &pending.content).map_err(|e| {
        Stop::Failed(Failure {
            transient: matches!(e, gcs::GcsError::Transient(_)),
            message: format!("checking the object an interrupted run was writing: {e}"),
        })
    })?;
    let seen = if landed {
        summary.warnings.push(format!(
            "an interrupted run had written {}; it is kept and its events are not read again",
            pending.name
        ));
        summary
            .state
            .add(save_fenced(store, lease, env, gcs, &mut cp, &mut seen)?);
        seen
    } else {
        // The set the object would have left is not needed: never hold two at once.
        drop(seen);
        cp.in_progress = pending.rollback_progress.clone();
        cp.webhook_late.retain(|e| !pending.late.contains(&e.id));
        cp.set_ids_at(pending.rollback_ids_at());
        let mut rolled_back = store
            .load_ids(&cp.ids_at())
            .map_err(|e| Stop::Failed(Failure::unreadable(e)))?;
        summary.state.add(save_fenced(
            store,
            lease,
            env,
            gcs,
            &mut cp,
            &mut rolled_back,
        )?);
        rolled_back
    };
    Ok((cp, seen))
}

/// Saves the checkpoint as the lease's holder: refused when the lease has run out, or when a
/// later holder saved it (unless the bucket shows that this run's lease is still the newest:
/// then the later number is from before the lease folder was emptied).
pub(super) fn save_fenced(
    store: &CheckpointStore,
    lease: &Lease,
    env: Env,
    gcs: &GcsClient,
    cp: &mut Checkpoint,
    seen: &mut SeenSet,
) -> Result<crate::report::SaveStats, Stop> {
    lease.check_time(env.clock.now()).map_err(fenced)?;
    let failed = |e: String| {
        Stop::WriteFailed(Failure {
            message: format!("saving the checkpoint: {e}"),
            transient: true,
        })
    };
    // Before every KV write of the save, not only the first: a save is many writes.
    let fence = || lease.check_time(env.clock.now()).map_err(|f| f.to_string());
    let mut writer = Writer {
        epoch: lease.epoch,
        over_later: false,
        fence: &fence,
    };
    match store.save(cp, seen, &writer) {
        Ok(stats) => Ok(stats),
        Err(SaveError::Failed(e)) => Err(failed(e)),
        Err(SaveError::Superseded(_)) => {
            lease.check(&env, gcs).map_err(fenced)?;
            writer.over_later = true;
            store.save(cp, seen, &writer).map_err(|e| match e {
                SaveError::Superseded(why) => Stop::Lost(why),
                SaveError::Failed(e) => failed(e),
            })
        }
    }
}

/// What a stop says, for a caller outside the pipeline.
pub(crate) fn stop_message(stop: Stop) -> String {
    match stop {
        Stop::OutOfTime => "the time budget ran out".into(),
        Stop::Failed(f) | Stop::WriteFailed(f) => f.message,
        Stop::Lost(why) => why,
    }
}

/// A fence that did not hold: lost (stop quietly) or not checkable (a write failure).
pub(super) fn fenced(f: Fenced) -> Stop {
    match f {
        Fenced::Lost(why) => Stop::Lost(why),
        Fenced::Unchecked(e) => Stop::WriteFailed(e.into()),
    }
}

impl Collector<'_, '_> {
    /// Reads from KV the delivered ids of `[start, end]` not read yet (of every slab when
    /// `set_apart`: items set apart are looked up by key alone).
    pub(super) fn ensure_ids(&mut self, start: i64, end: i64, set_apart: bool) -> Result<(), Stop> {
        let slabs = self.seen.unloaded_in(start, end, set_apart);
        if slabs.is_empty() {
            return Ok(());
        }
        let started = self.env.clock.now();
        let read = self
            .store
            .load_slabs(&self.checkpoint.ids_at(), &mut self.seen, &slabs);
        self.summary.timing.load_ms += ms_since(self.env, started);
        // Nothing more is saved in this run: a segment the checkpoint names and KV does not
        // hold may mean this run read a checkpoint that had already moved on, and saving on
        // top of it would name segments that are gone.
        read.map_err(|e| Stop::WriteFailed(Failure::unreadable(e)))
    }

    pub(super) fn save(&mut self) -> Result<(), Stop> {
        let started = self.env.clock.now();
        let stats = save_fenced(
            &self.store,
            self.lease,
            self.env,
            self.gcs,
            &mut self.checkpoint,
            &mut self.seen,
        )?;
        self.summary.state.add(stats);
        self.summary.state.ids = self.seen.len() as u64;
        self.summary.timing.save_ms += ms_since(self.env, started);
        Ok(())
    }

    /// Writes the buffered events as one object, then records the position. The checkpoint
    /// moves only after the object has landed.
    pub(super) fn flush(&mut self, progress: &mut WindowProgress) -> Result<(), Stop> {
        self.write_buffer(progress)?;
        if self.checkpoint.in_progress.as_ref() != Some(progress)
            || self.checkpoint.pending.is_some()
        {
            self.checkpoint.in_progress = Some(progress.clone());
            self.checkpoint.pending = None;
            self.save()?;
        }
        Ok(())
    }

    /// Uploads the buffered events, if any, as the window's next object, in two phases: first
    /// the checkpoint records the position after this object, its events as delivered, and
    /// the object as pending (with the state to roll back to); then the upload. The caller's
    /// next save clears the pending mark. A run that dies in between leaves the mark, and the
    /// next run asks the bucket whether the object landed: if so it keeps the new state, if
    /// not it rolls back and reads those events again. Either way nothing is lost and
    /// nothing is written twice.
    pub(super) fn write_buffer(&mut self, progress: &mut WindowProgress) -> Result<(), Stop> {
        if self.buffer.events == 0 {
            return Ok(());
        }
        // After a failure from here on nothing more is checkpointed in this run (WriteFailed),
        // so the buffer may go.
        let data = std::mem::take(&mut self.buffer);
        let started = self.env.clock.now();
        let body = if self.config.gcs.gzip {
            gcs::gzip(&data.ndjson)
        } else {
            data.ndjson
        };
        let content = gcs::Content::of(&body);
        self.summary.timing.hash_ms += ms_since(self.env, started);
        let name = gcs::object_name(
            &self.config.gcs,
            self.def.name,
            &self.name_tag(),
            &self.config.sentry.org,
            (progress.window.start, progress.window.end),
            progress.objects,
            &content.id,
            self.config.gcs.gzip,
        );
        let events = data.events;
        let mut after = progress.clone();
        after.objects += 1;
        self.checkpoint.pending = Some(PendingObject::new(
            name.clone(),
            content.id.clone(),
            &self.checkpoint,
        ));
        self.checkpoint.in_progress = Some(after);
        self.upload_pending(&name, body, &content, events)?;
        progress.objects += 1;
        Ok(())
    }

    /// The second phase of a write, the checkpoint recording `name` as pending: saves it (the
    /// mark must reach KV before the object may exist), checks the lease, uploads.
    pub(super) fn upload_pending(
        &mut self,
        name: &str,
        body: Vec<u8>,
        content: &gcs::Content,
        events: usize,
    ) -> Result<(), Stop> {
        self.save()?;
        self.lease.check(&self.env, self.gcs).map_err(fenced)?;
        let uploaded = self
            .gcs
            .create(name, body, content, events)
            .map_err(|e| Stop::WriteFailed(e.into()))?;
        self.summary.bytes += uploaded.bytes as u64;
        self.summary.objects.push(ObjectSummary {
            name: uploaded.name,
            events,
            bytes: uploaded.bytes,
            already_present: uploaded.already_present,
        });
        Ok(())
    }

    /// The window is read: move the watermark to its end and forget ids no later window reaches.
    pub(super) fn finish_window(&mut self, window: Window) -> Result<(), Stop> {
        self.checkpoint.in_progress = None;
        self.checkpoint.pending = None;
        match (self.track, self.checkpoint.backfill) {
            (Track::Backfill { .. }, Some(pos)) => {
                let next = crate::backfill::after_read(&pos, window);
                self.checkpoint.backfill = Some(next);
                match crate::backfill::ids_to_keep(&next) {
                    // A window cut where it was read to: the rows of that second were
                    // delivered, and the rest of the window, read next, starts there.
                    Some(from) => self.seen.prune(from),
                    // Backfill windows never overlap: none of the window's ids is needed again.
                    None => {
                        self.checkpoint.segments.clear();
                        self.checkpoint.ids_floor = 0;
                        self.seen = SeenSet::with_floor(0);
                    }
                }
            }
            _ => {
                self.checkpoint.watermark = Some(window.end);
                self.checkpoint.floors.retain(|f| f.at > window.end);
                self.seen
                    .prune(window.end - self.config.timing.overlap.as_secs() as i64);
            }
        }
        self.save()?;
        self.summary.window_finished = true;
        Ok(())
    }
}
