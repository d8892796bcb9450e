//! Rebuilding a projection from position 0, in parallel on the worker pool, into a fresh
//! instance beside the live one, then swapping it in atomically (one directory rename). The
//! protocol and its crash cases are FORMAT.md §13.4 and §13.5.
//!
//! The shadow is registered with the live projection's options, every position 0 (with
//! `Checkpoints::Projection`, `fresh.checkpoint(p)`). After the swap, `view` returns the fresh
//! instance.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::engine::ProjectionEngine;
use super::state::{Registered, Task, dirs};
use super::{Projection, RebuildReport};

impl ProjectionEngine {
    /// Rebuilds the projection from position 0 of every partition, in parallel on the worker
    /// pool, into `fresh` (a new, empty instance), while the live instance keeps handling new
    /// events and serving reads. Once the rebuild has caught up with the heads, it replaces
    /// the live instance atomically: its checkpoints and dead-letter queue replace the live
    /// ones on disk (one directory rename), and [`ProjectionEngine::view`] returns `fresh` from
    /// then on. Blocks until then; returns how long it took (also in the status).
    ///
    /// A crash during a rebuild leaves the live projection as it was (the half-built one is
    /// removed at the next registration), or, if it came after the swap began, the rebuilt
    /// one.
    pub fn rebuild<P: Projection>(&self, name: &str, fresh: Arc<P>) -> Result<RebuildReport> {
        let (live, _) = self.registered(name)?;
        if live.shared {
            // Its processes would have to swap their instances at one point of every
            // partition: not built. A fresh name, registered in every process, rebuilds it.
            return Err(Error::Unsupported { operation: "rebuild of a shared projection", backend: "jetstream" });
        }
        {
            let mut rebuilding = self.rebuilding.lock();
            if rebuilding.iter().any(|n| n == name) {
                return Err(Error::InvalidOptions(format!("{name:?} is being rebuilt already")));
            }
            rebuilding.push(name.to_owned());
        }
        let result = self.rebuild_from_scratch(name, live, fresh);
        self.rebuilding.lock().retain(|n| n != name);
        result
    }

    fn rebuild_from_scratch<P: Projection>(
        &self,
        name: &str,
        live: Arc<Registered>,
        fresh: Arc<P>,
    ) -> Result<RebuildReport> {
        fresh.reset().map_err(|e| Error::ProjectionStopped {
            projection: name.to_owned(),
            partition: None,
            reason: format!("resetting the rebuilt instance failed: {e}"),
        })?;
        let started = Instant::now();
        let root = self.inner.log.dir().join("projections");
        let (dir, old, shadow_dir) = dirs(&root, name);
        if shadow_dir.exists() {
            self.inner.io.remove_dir_all(&shadow_dir)?;
        }
        let shadow = self.register_in(name, &shadow_dir, fresh, live.options.clone(), true)?;
        self.catch_up(name, &shadow)?;
        self.swap(name, &live, &shadow, [&dir, &old, &shadow_dir])?;
        self.inner.io.sync_dir(&root)?;
        self.inner.io.remove_dir_all(&old)?;
        let report = RebuildReport { duration: started.elapsed(), events: shadow.handled.load(Ordering::Relaxed) };
        *shadow.rebuilt.lock() = Some(report.duration);
        self.inner.log.head_signal().bump();
        Ok(report)
    }

    /// Waits until the rebuilt instance has caught up with the heads as they were when it
    /// began (the live one goes on meanwhile); retires it if it stops or the engine does.
    fn catch_up(&self, name: &str, shadow: &Arc<Registered>) -> Result<()> {
        let shadow_tasks: Vec<Arc<Task>> =
            self.inner.tasks.read().iter().filter(|t| Arc::ptr_eq(&t.projection, shadow)).cloned().collect();
        let heads: Vec<u64> =
            shadow_tasks.iter().map(|t| self.inner.log.heads(t.partition).map(|h| h.head)).collect::<Result<_>>()?;
        loop {
            let seen = self.inner.progress.seq();
            if let Some((partition, e)) =
                shadow_tasks.iter().find_map(|t| t.error.lock().clone().map(|e| (t.partition, e)))
            {
                self.retire(shadow, &shadow_tasks);
                return Err(Error::ProjectionStopped {
                    projection: name.to_owned(),
                    partition: Some(partition),
                    reason: format!("the rebuild stopped: {e}"),
                });
            }
            if shadow_tasks.iter().zip(&heads).all(|(t, h)| t.next.load(Ordering::Acquire) >= *h) {
                return Ok(());
            }
            if self.inner.stop.load(Ordering::Acquire) {
                self.retire(shadow, &shadow_tasks);
                return Err(Error::Closed);
            }
            self.inner.progress.wait(seen, Duration::from_millis(100));
        }
    }

    /// The swap: holds every task of both instances, so no batch runs; lets the checkpointer
    /// make the rebuilt positions durable; then one rename puts the rebuilt files in place
    /// (`dirs`: the live directory, the old one's name, the rebuild's). On failure the
    /// rebuild is dropped and the live instance goes on.
    fn swap(&self, name: &str, live: &Arc<Registered>, shadow: &Arc<Registered>, dirs: [&PathBuf; 3]) -> Result<()> {
        // Both task lists as they are now: a grow may have added partitions since the rebuild
        // began.
        let (live_tasks, shadow_tasks): (Vec<Arc<Task>>, Vec<Arc<Task>>) = {
            let tasks = self.inner.tasks.read();
            let of = |r: &Arc<Registered>| tasks.iter().filter(|t| Arc::ptr_eq(&t.projection, r)).cloned().collect();
            (of(live), of(shadow))
        };
        let all: Vec<&Arc<Task>> = live_tasks.iter().chain(&shadow_tasks).collect();
        for t in &all {
            while !t.claim() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let renamed = self.durable_rename(name, shadow, &shadow_tasks, dirs);
        if renamed.is_ok() {
            // From here the rebuilt files are the projection's: commit in memory whatever the
            // cleanup does (registration finishes it after a crash).
            let mut tasks = self.inner.tasks.write();
            let kept: Vec<Arc<Task>> = tasks.iter().filter(|t| !Arc::ptr_eq(&t.projection, live)).cloned().collect();
            // Every task of each, as the list is now (a grow may have added some since).
            for t in tasks.iter() {
                if Arc::ptr_eq(&t.projection, live) {
                    t.retired.store(true, Ordering::Release);
                } else if Arc::ptr_eq(&t.projection, shadow) {
                    t.shadow.store(false, Ordering::Release);
                }
            }
            *tasks = Arc::new(kept);
        } else {
            for t in &shadow_tasks {
                t.retired.store(true, Ordering::Release);
            }
            self.drop_tasks(shadow);
        }
        for t in &all {
            t.release();
        }
        renamed
    }

    /// With every task held: waits (boundedly) for the rebuilt checkpoints to be durable as
    /// far as the log is, then renames the live directory away and the rebuild's into place.
    fn durable_rename(
        &self,
        name: &str,
        shadow: &Arc<Registered>,
        shadow_tasks: &[Arc<Task>],
        [dir, old, shadow_dir]: [&PathBuf; 3],
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let durable = |t: &Arc<Task>| {
            let on_disk = self.inner.log.heads(t.partition).map_or(0, |h| h.durable);
            t.durable.load(Ordering::Acquire) >= t.next.load(Ordering::Acquire).min(on_disk)
        };
        while shadow.checkpoints.is_some() && !shadow_tasks.iter().all(durable) {
            if shadow.checkpoint_failed.load(Ordering::Acquire) || Instant::now() >= deadline {
                return Err(Error::ProjectionStopped {
                    projection: name.to_owned(),
                    partition: None,
                    reason: "the rebuilt instance could not make its checkpoints durable".into(),
                });
            }
            self.inner.dirty.bump();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.io.rename(dir, old)?;
        if let Err(e) = self.inner.io.rename(shadow_dir, dir) {
            // Put the live files back; the rebuild is dropped.
            let _ = self.inner.io.rename(old, dir);
            return Err(e);
        }
        Ok(())
    }

    /// Takes a projection's tasks out of the pool for good (waiting for any batch in flight).
    fn retire(&self, reg: &Arc<Registered>, tasks: &[Arc<Task>]) {
        for t in tasks {
            while !t.claim() {
                std::thread::sleep(Duration::from_micros(200));
            }
            t.retired.store(true, Ordering::Release);
            t.release();
        }
        self.drop_tasks(reg);
    }

    fn drop_tasks(&self, reg: &Arc<Registered>) {
        let mut tasks = self.inner.tasks.write();
        let kept: Vec<Arc<Task>> = tasks.iter().filter(|t| !Arc::ptr_eq(&t.projection, reg)).cloned().collect();
        *tasks = Arc::new(kept);
    }
}
