//! The warm tier's async side: offloads and restores on tasks of their own, explicit
//! offloads, and the memory-pressure check; what they do is decided in `crate::state`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use embed_core::{panic_message, CleanupReport};
use futures::FutureExt;
use tokio::task::JoinHandle;

use super::{bump, LoadCell, LoadFailure, Shared};
use crate::state::{Published, Retire, Slot};
use crate::{DevicePressure, PoolAction, PoolError, PoolEvent};

impl Shared {
    /// Offloads a model to the warm tier on a task of its own; the entry stays (warm). If the
    /// offload fails, the model is released instead.
    pub(super) fn spawn_offload(self: &Arc<Self>, r: Retire) -> JoinHandle<Option<CleanupReport>> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = match AssertUnwindSafe(async { r.slot.service.offload_for("offload")?.offload().await }).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => Err(embed_core::Error::WorkerPanicked { model: r.name.clone(), message: panic_message(panic.as_ref()) }),
            };
            let Some(shared) = weak.upgrade() else { return None };
            let host = match &result {
                Ok(report) => {
                    bump(&shared.counters.offloads);
                    shared.history.record(PoolEvent {
                        model: r.name.clone(),
                        action: PoolAction::Offloaded,
                        cause: r.cause,
                        weight_bytes: report.host_bytes,
                        at: SystemTime::now(),
                        duration: started.elapsed(),
                    });
                    Some(report.host_bytes)
                }
                Err(e) => {
                    bump(&shared.counters.offload_failures);
                    tracing::warn!(model = %r.name, error = %e, "offload failed; unloading the model instead");
                    None
                }
            };
            let follow = shared.lock().offloaded(&r.name, r.id, host, r.cause);
            shared.changed.notify_waiters();
            for f in follow {
                drop(shared.spawn_retire(f));
            }
            None
        })
    }

    /// `Pool::offload`.
    pub(crate) async fn offload(self: &Arc<Self>, name: &str) -> Result<bool, PoolError> {
        let jobs = self.lock().offload_step(name)?;
        if jobs.is_empty() {
            return Ok(false);
        }
        self.retire_all(jobs).await;
        // The offload task has set the entry warm, or released it if the move failed.
        match self.lock().entries.get(name).map(|e| e.state()) {
            Some(crate::ModelState::Warm) => Ok(true),
            _ => Err(PoolError::CannotOffload { name: name.to_string(), reason: "the move to host memory failed; the model was unloaded".into() }),
        }
    }

    /// Restores a warm model on a task of its own (so it reaches every waiter even if the
    /// caller that started it goes away).
    pub(super) fn spawn_restore(self: &Arc<Self>, name: String, slot: Arc<Slot>, cell: Arc<LoadCell>, id: u64) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = AssertUnwindSafe(async { slot.service.offload_for("restore")?.restore().await }).catch_unwind().await;
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(LoadFailure::Error(Arc::new(e))),
                Err(panic) => Some(LoadFailure::Panicked(panic_message(panic.as_ref()))),
            };
            let Some(shared) = weak.upgrade() else {
                slot.service.begin_cleanup();
                return;
            };
            shared.history.record(PoolEvent {
                model: name.clone(),
                action: if failure.is_none() { PoolAction::Restored } else { PoolAction::RestoreFailed },
                cause: None,
                weight_bytes: slot.weight_bytes,
                at: SystemTime::now(),
                duration: started.elapsed(),
            });
            match &failure {
                None => {
                    bump(&shared.counters.restores);
                    tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "pool restored model");
                }
                Some(f) => {
                    bump(&shared.counters.restore_failures);
                    tracing::warn!(model = %name, error = %f.to_error(&name), "pool failed to restore model");
                }
            }
            let mut retire = None;
            {
                let mut st = shared.lock();
                match st.restored(&name, id, failure.is_none()) {
                    Published::Ready(_) => {
                        let _ = cell.outcome.set(Ok(slot));
                    }
                    Published::Closed(r) => {
                        retire = Some(r);
                        let _ = cell.outcome.set(Err(failure.unwrap_or(LoadFailure::Closed)));
                    }
                    Published::Failed => {
                        let _ = cell.outcome.set(Err(failure.unwrap_or(LoadFailure::Closed)));
                    }
                }
            }
            cell.done.notify_waiters();
            shared.changed.notify_waiters();
            if let Some(r) = retire {
                drop(shared.spawn_retire(r));
            }
        });
    }

    /// One memory-pressure check of every CUDA device the pool's models use: idle models go
    /// warm at the high level, are unloaded at the critical one. Waits for those moves and
    /// returns the models moved.
    pub(crate) async fn relieve_pressure(self: &Arc<Self>) -> Vec<String> {
        let mut retires = Vec::new();
        for p in self.pressure() {
            let used = p.total.saturating_sub(p.free);
            let target = (self.config.pressure.moderate.clamp(0.0, 1.0) * p.total as f64) as u64;
            let need = used.saturating_sub(target);
            let mut st = self.lock();
            retires.extend(st.relieve(p.device, p.level, need));
        }
        let names = retires.iter().map(|r| r.name.clone()).collect();
        if !retires.is_empty() {
            tracing::info!(models = ?names, "memory pressure: taking idle models off their device");
        }
        self.retire_all(retires).await;
        names
    }

    /// The pressure level of each CUDA device the pool's models are on.
    pub(crate) fn pressure(&self) -> Vec<DevicePressure> {
        let mut devices: Vec<usize> = self.lock().entries.values().filter_map(|e| e.cuda_index()).collect();
        devices.sort_unstable();
        devices.dedup();
        devices
            .into_iter()
            .filter_map(|device| {
                let (free, total) = self.memory.free_and_total(device)?;
                Some(DevicePressure { device, level: self.config.pressure.level(free, total), free, total })
            })
            .collect()
    }
}
