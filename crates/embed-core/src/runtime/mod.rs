//! The thread that owns a loaded model, for the model's whole life: spawn, load, serve
//! batches (`batch`), free the weights and the device's cache, report.
//!
//! `tch::Tensor` is `Send` but not `Sync`, and grad mode is thread-local, so every tensor of a
//! model lives on one OS thread for the model's whole life. Callers talk to it through a channel
//! and get answers through oneshots.

pub(crate) mod background;
mod batch;
mod calibrate;
mod gate;
mod job;
pub(crate) mod offload;
mod queue;
mod residency;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub(crate) use job::{Command, Job, Output, RowFinish, WorkerConfig, WorkerStats};
pub(crate) use gate::{note_interactive, BulkInFlight};
pub use background::{bulk_host_stats, run_bulk, BulkHostStats, BULK_NICE};
pub use gate::{cpu_compute_stats, set_cpu_thread_budget, CpuComputeStats};

use crate::model_dir::ModelDir;
use crate::memory::{self, LiveModel, ModelThread};
use crate::models::Model;
use crate::text::TextPrep;
use crate::types::{ModelInfo, ModelSpec};
use crate::{DType, Error, ModelKind, ModelSource, ResolvedDevice, Result};

/// A started worker: its intake, the answer to the load, the exit report to come.
pub(crate) struct Started {
    pub(crate) intake: Sender<Command>,
    /// The loaded model's description and text preparation, or why the load failed.
    pub(crate) ready: oneshot::Receiver<Result<(ModelInfo, Arc<TextPrep>)>>,
    pub(crate) exit: oneshot::Receiver<ExitReport>,
    pub(crate) thread: JoinHandle<()>,
    pub(crate) stats: Arc<WorkerStats>,
}

/// What the worker says when it has freed everything.
pub(crate) struct ExitReport {
    pub(crate) weight_bytes: u64,
    pub(crate) cuda_reserved_before: Option<u64>,
    pub(crate) cuda_reserved_after: Option<u64>,
}

/// Spawns the model's thread: it loads `spec` (answering on `ready`), serves until told to
/// stop or until every handle is gone, then frees the model and reports on `exit`. `started`
/// is when the caller asked for the load (for `ModelInfo::load_duration`).
pub(crate) fn spawn(spec: ModelSpec, started: Instant) -> Result<Started> {
    let (intake, rx) = mpsc::channel::<Command>();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(ModelInfo, Arc<TextPrep>)>>();
    let (exit_tx, exit_rx) = oneshot::channel::<ExitReport>();
    let stats = Arc::new(WorkerStats::default());
    let worker_stats = stats.clone();
    let thread_spec = spec.clone();
    let counted = ModelThread::new();

    let thread = std::thread::Builder::new()
        .name(format!("embed-model-{}", short_name(&spec.name)))
        .spawn(move || {
            // Dropped last, when this thread has freed everything (also on a panic).
            let _counted = counted;
            // Inference only: grad mode is thread-local, so this covers every forward pass.
            let _no_grad = tch::no_grad_guard();
            let spec = thread_spec;
            // The kernels read the model's switches from its thread.
            spec.options.tuning.install();
            if let Some(n) = spec.options.threads {
                tch::set_num_threads(n.clamp(1, i32::MAX as usize) as i32);
            }
            let loaded = match catch_unwind(AssertUnwindSafe(|| load_blocking(&spec))) {
                Ok(r) => r,
                Err(p) => Err(Error::WorkerPanicked {
                    model: spec.name.clone(),
                    message: crate::panic_message(p.as_ref()),
                }),
            };
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => {
                    // Anything partially loaded was dropped when load_blocking returned.
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let Loaded { model, dir, text, device, device_note, dtype, int8_kernel } = loaded;
            let max_seq_length = text.max_seq_length;
            let live = LiveModel::new(model.weight_bytes);
            let o = &spec.options;
            let pooling = o.pooling.unwrap_or(dir.pooling);
            let info = ModelInfo {
                name: spec.name.clone(),
                source: spec.source.clone(),
                dir: dir.dir.clone(),
                architecture: dir.model_type.clone(),
                family: dir.arch.family,
                kind: dir.kind,
                dimension: match dir.kind {
                    ModelKind::Embedding => dir.dense.last().map_or(dir.arch.hidden_size, |d| d.out_features),
                    ModelKind::Reranker | ModelKind::Classifier => dir.labels.len(),
                    ModelKind::Sparse => dir.arch.vocab_size,
                    ModelKind::MultiVector => dir.dense.last().map_or(dir.arch.hidden_size, |d| d.out_features),
                },
                labels: dir.labels.clone(),
                max_seq_length,
                pooling,
                // Scores and SPLADE weights are never normalised.
                normalize: dir.kind == ModelKind::Embedding && o.normalize.unwrap_or(dir.normalize),
                device,
                device_note,
                dtype,
                weight_bytes: model.weight_bytes,
                num_layers: dir.arch.num_hidden_layers,
                vocab_size: dir.arch.vocab_size,
                prompts: dir.prompts.clone(),
                load_duration: started.elapsed(),
                threads: tch::get_num_threads().max(0) as usize,
                cpu_prepacked: model.prepacked,
                int8_kernel,
                extra_outputs: if dir.m3.is_some() { vec![ModelKind::Sparse, ModelKind::MultiVector] } else { Vec::new() },
            };
            let cfg = WorkerConfig {
                model_name: spec.name.clone(),
                device,
                pooling,
                max_batch_tokens: o.max_batch_tokens.unwrap_or(if device.is_cuda() { 16_384 } else { 2_048 }),
                max_batch_size: o.max_batch_size.unwrap_or(if device.is_cuda() { 256 } else { 32 }),
                faults: o.fault_injection(),
                stats: worker_stats,
                priorities: o.priorities.unwrap_or(true),
                bulk_batch: Duration::from_millis(o.bulk_batch_ms.unwrap_or(if device.is_cuda() { 100 } else { 20 })),
                threads: if device.is_cuda() { 1 } else { tch::get_num_threads().max(1) as usize },
                preempt: o.priorities.unwrap_or(true) && !device.is_cuda() && o.layer_preemption.unwrap_or(true),
            };
            let weight_bytes = model.weight_bytes;
            if let Some(delay) = o.fault_injection().load_delay {
                let until = Instant::now() + delay;
                while Instant::now() < until && !ready_tx.is_closed() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if ready_tx.send(Ok((info, Arc::new(text)))).is_ok() {
                batch::serve(&model, &rx, &cfg);
            }
            // Either served until shutdown, or the load was cancelled: free everything.
            #[cfg(feature = "planted-leak")]
            let model = planted_leak(model);
            drop(model);
            let (before, after) = release_device(device);
            drop(live);
            memory::trim_cpu_heap();
            let _ = exit_tx.send(ExitReport {
                weight_bytes,
                cuda_reserved_before: before,
                cuda_reserved_after: after,
            });
        })
        .map_err(|e| Error::Inference { model: spec.name.clone(), message: format!("cannot spawn worker: {e}") })?;
    Ok(Started { intake, ready: ready_rx, exit: exit_rx, thread, stats })
}

struct Loaded {
    int8_kernel: Option<crate::device::Int8Kernel>,
    model: Model,
    dir: ModelDir,
    text: TextPrep,
    device: ResolvedDevice,
    device_note: Option<String>,
    dtype: DType,
}

fn load_blocking(spec: &ModelSpec) -> Result<Loaded> {
    let o = &spec.options;
    if o.max_batch_tokens == Some(0) || o.max_batch_size == Some(0) {
        return Err(Error::InvalidOption {
            name: "max_batch_tokens/max_batch_size",
            reason: "must be at least 1".into(),
        });
    }
    if o.threads == Some(0) {
        return Err(Error::InvalidOption { name: "threads", reason: "must be at least 1".into() });
    }
    let (device, device_note) = o.device.resolve()?;
    if device == ResolvedDevice::Cpu && o.dtype == Some(DType::F16) {
        return Err(Error::UnsupportedDtype {
            dtype: DType::F16.to_string(),
            device: device.to_string(),
            reason: "half-precision matmuls on CPU are emulated and slow; use bf16 or f32".into(),
        });
    }
    if o.int8_calibration.is_some() && o.dtype != Some(DType::Int8) {
        return Err(Error::InvalidOption { name: "int8_calibration", reason: "calibrates int8 models only; set dtype int8 or drop it".into() });
    }
    if o.int8_kernel.is_some() && o.dtype != Some(DType::Int8) {
        return Err(Error::InvalidOption { name: "int8_kernel", reason: "applies to int8 models only; set dtype int8 or drop it".into() });
    }
    let int8 = if o.dtype == Some(DType::Int8) { Some(crate::device::Int8Kernel::choose(device, o.int8_kernel)?) } else { None };
    if let Some(kernel) = int8 {
        if o.int8_calibration.as_ref().is_some_and(|t| t.iter().all(|t| t.trim().is_empty())) {
            return Err(Error::InvalidOption { name: "int8_calibration", reason: "holds no text; give some texts or leave it unset".into() });
        }
        if kernel == crate::device::Int8Kernel::WeightOnly && o.int8_calibration.is_some() {
            return Err(Error::InvalidOption {
                name: "int8_calibration",
                reason: format!("int8 on {device} is weight-only (dequantized for each matmul), which needs no calibration"),
            });
        }
        if kernel == crate::device::Int8Kernel::OneDnn && o.cpu_prepack == Some(false) {
            return Err(Error::InvalidOption {
                name: "cpu_prepack",
                reason: "int8 needs its weights prepacked for oneDNN; leave cpu_prepack on or unset".into(),
            });
        }
    }
    let dir_path = ModelSource::parse(&spec.source)?.resolve_with(&o.hub)?;
    let mut dir = ModelDir::read(&dir_path)?;
    if let Some(r) = &o.llm_reranker {
        dir.serve_as_reranker(r)?;
    }
    let dtype = o.dtype.unwrap_or_else(|| DType::preferred(dir.arch.family, device));
    let text = TextPrep::new(&dir, &spec.name, o)?;
    dir.answer_ids = text.answer_ids();
    let mut model = Model::load(&dir, device.to_tch(), dtype.kind(device))?;
    // Tuned for a full batch under the CPU token budget.
    let rows = o.max_batch_tokens.unwrap_or(2_048) as i64;
    if device == ResolvedDevice::Cpu && dtype == DType::Bf16 {
        match (o.cpu_prepack, crate::device::cpu_prepack_unsupported_reason()) {
            (Some(false), _) => {}
            (None, None) | (Some(true), None) => model.prepack(rows)?,
            // The default on a CPU that cannot: plain bf16 matmuls (`ModelInfo::cpu_prepacked` false).
            (None, Some(reason)) => tracing::debug!(model = %spec.name, "bf16 weights not prepacked: {reason}"),
            (Some(true), Some(reason)) => return Err(Error::InvalidOption { name: "cpu_prepack", reason }),
        }
    }
    match int8 {
        Some(crate::device::Int8Kernel::OneDnn) => {
            calibrate::quantize_int8(&mut model, &text, o.pooling.unwrap_or(dir.pooling), rows, o.int8_calibration.as_deref())?
        }
        Some(crate::device::Int8Kernel::WeightOnly) => model.quantize_int8_weight_only()?,
        None => {}
    }
    Ok(Loaded { model, dir, text, device, device_note, dtype, int8_kernel: int8 })
}

fn release_device(device: ResolvedDevice) -> (Option<u64>, Option<u64>) {
    let ResolvedDevice::Cuda(i) = device else { return (None, None) };
    let _ = memory::cuda_synchronize(i);
    let before = memory::cuda_memory(i).ok().map(|s| s.reserved);
    let _ = memory::empty_cache();
    let _ = memory::empty_pinned_host_cache();
    let after = memory::cuda_memory(i).ok().map(|s| s.reserved);
    (before, after)
}

/// The deliberate leak of the `planted-leak` test build: one tensor outlives its model, while
/// every counter says it was freed. The leak check must catch it from real memory figures.
#[cfg(feature = "planted-leak")]
fn planted_leak(mut model: Model) -> Model {
    static LEAKED: std::sync::Mutex<Vec<tch::Tensor>> = std::sync::Mutex::new(Vec::new());
    let t = model.take_largest_tensor();
    LEAKED.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    tracing::warn!("planted-leak build: a weight tensor was kept alive after cleanup");
    model
}

fn short_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).find(|s| !s.is_empty()).unwrap_or(name);
    base.chars().take(20).collect()
}
