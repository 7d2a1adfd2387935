//! The worker's side of offloading: where its model's weights are, and the moves between
//! the device and host memory (see `crate::runtime::offload`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::job::WorkerConfig;
use crate::runtime::offload::HostCopy;
use crate::models::Model;
use crate::{memory, MoveReport, ResolvedDevice, Residency, Result};

/// The model's host copy while it is offloaded.
#[derive(Default)]
pub(crate) struct Residence {
    host: Option<HostCopy>,
}

impl Residence {
    pub(crate) fn on_host(&self) -> bool {
        self.host.is_some()
    }

    /// [`Residence::go`], a panic in libtorch turned into the caller's error (the worker lives
    /// on, its model where the failed move left it).
    pub(crate) fn go_guarded(&mut self, model: &Model, to: Residency, cfg: &WorkerConfig) -> Result<MoveReport> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.go(model, to, cfg))) {
            Ok(r) => r,
            Err(p) => Err(crate::Error::WorkerPanicked { model: cfg.model_name.clone(), message: crate::panic_message(p.as_ref()) }),
        }
    }

    /// Moves the weights to `to`; a no-op (reported as such) when they are there already.
    fn go(&mut self, model: &Model, to: Residency, cfg: &WorkerConfig) -> Result<MoveReport> {
        let started = Instant::now();
        let report = match (to, self.host.take()) {
            (Residency::Host, None) => {
                let copy = match HostCopy::take(model, &cfg.model_name) {
                    Ok(c) => c,
                    Err(e) => {
                        // Pinned chunks allocated before the failure went back to libtorch's
                        // cache: give them to the driver.
                        if cfg.device.is_cuda() {
                            let _ = memory::empty_pinned_host_cache();
                        }
                        return Err(e);
                    }
                };
                let report = MoveReport { residency: to, moved: true, tensor_bytes: copy.tensor_bytes, host_bytes: copy.host_bytes, duration: started.elapsed() };
                self.host = Some(copy);
                // The device memory the weights held goes back to the driver, for other models.
                release_cached(cfg.device);
                cfg.stats.offloads.fetch_add(1, Ordering::Relaxed);
                report
            }
            (Residency::Device, Some(copy)) => {
                let (tensor_bytes, host_bytes) = (copy.tensor_bytes, copy.host_bytes);
                match copy.restore(model.device(), &cfg.model_name) {
                    Ok(()) => {}
                    Err((copy, e)) => {
                        self.host = Some(copy);
                        release_cached(cfg.device);
                        return Err(e);
                    }
                }
                // The pinned buffers were just freed: give them back to the driver too.
                if cfg.device.is_cuda() {
                    let _ = memory::empty_pinned_host_cache();
                }
                cfg.stats.restores.fetch_add(1, Ordering::Relaxed);
                MoveReport { residency: to, moved: true, tensor_bytes, host_bytes, duration: started.elapsed() }
            }
            (_, host) => {
                self.host = host;
                MoveReport { residency: to, moved: false, tensor_bytes: 0, host_bytes: 0, duration: started.elapsed() }
            }
        };
        cfg.stats.on_host.store(self.host.is_some(), Ordering::SeqCst);
        memory::trim_cpu_heap();
        Ok(MoveReport { duration: started.elapsed(), ..report })
    }
}

fn release_cached(device: ResolvedDevice) {
    if let ResolvedDevice::Cuda(i) = device {
        let _ = memory::cuda_synchronize(i);
        let _ = memory::empty_cache();
    }
}
