//! Serving on the model's thread: taking jobs in, running the batches the queue chooses
//! (`queue`) under the process's CPU budget (`gate`), launching forward passes (two in flight
//! on CUDA), OOM split-and-retry, pooling.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};
use tokio::sync::oneshot;

use crate::nn::attention::CpuLayout;
use crate::nn::{length_groups, BatchInput, KernelError};
use crate::models::Model;
use super::gate;
use super::job::{Command, Item, Job, Output, WorkerConfig};
use super::queue::{Limits, Queue, INTERACTIVE_RUN};
use crate::nn::preempt;
use super::residency::Residence;
use crate::{memory, Error, MoveReport, Priority, Residency, ResolvedDevice, Result};

/// Packed batches run a token stream rounded up to a multiple of this (see `launch`).
const TOKEN_BUCKET: usize = 128;
/// How long an idle worker waits before returning freed heap memory to the OS.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(1);
/// How often a busy worker does the same (each trim makes later allocations fault pages in again).
const BUSY_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Serves requests until a `Shutdown` arrives or every sender is gone. Jobs queued before
/// the shutdown are finished; anything that slips in after it is failed with `ShutDown`.
///
/// Each turn takes in whatever has arrived, then runs the next batch the queue chooses
/// (`queue`): batches are formed continuously, interactive work first.
pub(crate) fn serve(model: &Model, rx: &Receiver<Command>, cfg: &WorkerConfig) {
    let mut queue = Queue::new(&cfg.model_name, !cfg.priorities);
    let mut run = Runner::default();
    let mut last_trim = Instant::now();
    let mut dirty = false;
    let mut residence = Residence::default();
    // A move waits for the jobs that arrived before it; nothing is taken in meanwhile.
    let mut then_move: Option<(Residency, oneshot::Sender<Result<MoveReport>>)> = None;
    let mut stopping = false;
    loop {
        // A command met between a bulk pass's layers after the jobs it took in.
        if let Some(cmd) = run.deferred.take() {
            accept(cmd, &mut queue, &mut then_move, &mut stopping, cfg);
        }
        if then_move.is_none() && !stopping {
            if queue.is_empty() && run.pending.is_none() {
                match rx.recv_timeout(IDLE_TRIM_AFTER) {
                    Ok(cmd) => accept(cmd, &mut queue, &mut then_move, &mut stopping, cfg),
                    Err(RecvTimeoutError::Disconnected) => stopping = true,
                    Err(RecvTimeoutError::Timeout) => {
                        // Idle: give memory freed by the last passes back to the OS.
                        if dirty {
                            memory::trim_cpu_heap();
                            dirty = false;
                            last_trim = Instant::now();
                        }
                        continue;
                    }
                }
            }
            while then_move.is_none() && !stopping {
                match rx.try_recv() {
                    Ok(cmd) => accept(cmd, &mut queue, &mut then_move, &mut stopping, cfg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => stopping = true,
                }
            }
        }
        if residence.on_host() && !queue.is_empty() {
            // Offloaded and asked to work: bring the weights back first.
            cfg.stats.auto_restores.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = residence.go_guarded(model, Residency::Device, cfg) {
                queue.fail_all(&e, &cfg.stats);
            }
        }
        if run.step(model, &mut queue, cfg, Some(rx)) {
            // glibc keeps freed activation buffers in its arenas; under steady traffic with
            // shifting batch shapes that retained memory creeps up. Hand it back to the OS at
            // most once per interval (a trim costs about a millisecond), and when idle.
            dirty = true;
            if last_trim.elapsed() >= BUSY_TRIM_INTERVAL {
                memory::trim_cpu_heap();
                dirty = false;
                last_trim = Instant::now();
            }
            continue;
        }
        // Nothing queued, nothing in flight.
        if let Some((to, reply)) = then_move.take() {
            let _ = reply.send(residence.go_guarded(model, to, cfg));
            continue;
        }
        if stopping {
            break;
        }
    }
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Command::Embed(job) => {
                cfg.stats.not_enqueued(job.priority);
                let _ = job.reply.send(Err(Error::ShutDown { model: cfg.model_name.clone() }));
            }
            Command::Move { reply, .. } => {
                let _ = reply.send(Err(Error::ShutDown { model: cfg.model_name.clone() }));
            }
            Command::Shutdown => {}
        }
    }
    // An offloaded model's host copy is freed here, before the model's placeholders.
    drop(residence);
}

fn accept(
    cmd: Command,
    queue: &mut Queue,
    then_move: &mut Option<(Residency, oneshot::Sender<Result<MoveReport>>)>,
    stopping: &mut bool,
    cfg: &WorkerConfig,
) {
    match cmd {
        Command::Embed(job) => queue.push(job, &cfg.stats),
        Command::Move { to, reply } => *then_move = Some((to, reply)),
        Command::Shutdown => *stopping = true,
    }
}

/// Runs `jobs` to the end on this thread (calibration), in arrival order.
pub(crate) fn process(model: &Model, jobs: Vec<Job>, cfg: &WorkerConfig) {
    let mut queue = Queue::new(&cfg.model_name, true);
    for job in jobs {
        queue.push(job, &cfg.stats);
    }
    let mut run = Runner::default();
    while run.step(model, &mut queue, cfg, None) {}
}

/// Launches batches and reads them back. On CUDA two are kept in flight: the next batch is
/// prepared, uploaded and queued on the device before the previous one's vectors are read back,
/// so the GPU never waits for the CPU between batches. On the CPU launching computes, and each
/// batch is read back and answered at once.
#[derive(Default)]
struct Runner {
    pending: Option<Launch>,
    /// Measured speed of bulk batches, padded tokens per millisecond (0: not measured yet).
    /// Interactive batches (often one short text) run far below a full batch's speed and would
    /// make bulk batches cut from their figure needlessly small.
    tokens_per_ms: f64,
    /// A non-job command taken from the intake between a bulk pass's layers, for `serve`.
    deferred: Option<Command>,
}

impl Runner {
    /// Runs one step: launches the queue's next batch and reads back the one before it, or
    /// reads back the last one. `false` when there was nothing to do.
    fn step(&mut self, model: &Model, queue: &mut Queue, cfg: &WorkerConfig, intake: Option<&Receiver<Command>>) -> bool {
        let limits = self.limits(cfg);
        let Some(next) = queue.next_batch(&limits, &cfg.stats) else {
            return match self.pending.take() {
                Some(p) => {
                    self.finish(model, queue, p, cfg);
                    true
                }
                None => false,
            };
        };
        // A CUDA batch holds one of its device's places in flight from launch until it is read
        // back (see `gate::cuda_gate`): models on one GPU take turns, interactive first.
        let slot = match cfg.device {
            ResolvedDevice::Cuda(i) => Some(self.cuda_slot(gate::cuda_gate(i), next.priority, model, queue, cfg)),
            ResolvedDevice::Cpu => None,
        };
        let (launched, started) = {
            // A CPU pass holds its share of the process's thread budget while it computes (the
            // wait for it is not part of the pass's measured time).
            let mut permit = (!cfg.device.is_cuda()).then(|| gate::acquire(next.priority, cfg.threads));
            let mut started = Instant::now();
            let launched = match intake {
                Some(rx) if cfg.preempt && permit.is_some() && next.priority == Priority::Bulk => {
                    let mut detour = Duration::ZERO;
                    let deferred = &mut self.deferred;
                    let items = &next.items;
                    let launched = catch_unwind(AssertUnwindSafe(|| {
                        let prepared = prepare(model, queue, items, cfg);
                        let mut hook = || detour += run_interactive_at_point(model, queue, rx, deferred, cfg, &limits, &mut permit);
                        preempt::with_hook(&mut hook, || compute(model, prepared, cfg))
                    }));
                    // The detours are not the bulk batch's time.
                    started += detour;
                    launched
                }
                _ => catch_unwind(AssertUnwindSafe(|| launch(model, queue, &next.items, cfg))),
            };
            drop(permit);
            (launched, started)
        };
        match launched {
            // On the CPU the launch computed the batch: answer now, not after the next one.
            Ok(l) if !cfg.device.is_cuda() => self.finish(model, queue, Launch { items: next.items, launched: l, started, priority: next.priority, slot }, cfg),
            Ok(l) => {
                if let Some(p) = self.pending.replace(Launch { items: next.items, launched: l, started, priority: next.priority, slot }) {
                    self.finish(model, queue, p, cfg);
                }
            }
            Err(payload) => {
                if let Some(p) = self.pending.take() {
                    self.finish(model, queue, p, cfg);
                }
                let result = recover(model, queue, &next.items, cfg, KernelError::from_panic(payload.as_ref()));
                queue.deliver(&next.items, result, &cfg.stats);
            }
        }
        true
    }

    /// A place in flight on a CUDA device for a batch of `priority`. When none is free at once
    /// this worker's own batch in flight is read back first (so that two workers each holding
    /// one place and waiting for a second cannot wait for each other), then it waits its turn.
    fn cuda_slot(&mut self, gate: &'static gate::Gate, priority: Priority, model: &Model, queue: &mut Queue, cfg: &WorkerConfig) -> gate::Permit {
        if let Some(p) = gate.try_acquire(priority, 1) {
            return p;
        }
        if let Some(p) = self.pending.take() {
            self.finish(model, queue, p, cfg);
        }
        gate.acquire(priority, 1)
    }

    fn finish(&mut self, model: &Model, queue: &mut Queue, Launch { items, launched, started, priority, slot }: Launch, cfg: &WorkerConfig) {
        let result = collect(model, queue, &items, launched, cfg);
        // Read back: the device's place is free for the next batch of any model.
        drop(slot);
        let took = started.elapsed();
        cfg.stats.compute_us[priority as usize].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if result.is_ok() && priority == Priority::Bulk {
            let padded = items.len() * items.iter().map(|it| it.len).max().unwrap_or(0).max(1);
            let ms = took.as_secs_f64() * 1e3;
            if ms > 0.0 {
                let speed = padded as f64 / ms;
                self.tokens_per_ms = if self.tokens_per_ms > 0.0 { 0.7 * self.tokens_per_ms + 0.3 * speed } else { speed };
            }
        }
        queue.deliver(&items, result, &cfg.stats);
    }

    /// This turn's batch limits: bulk batches cut to `bulk_batch` of measured time while
    /// interactive work is about, unless bulk passes stop between layers for it.
    fn limits(&self, cfg: &WorkerConfig) -> Limits {
        let max_tokens = cfg.max_batch_tokens;
        let preempted = cfg.preempt && !cfg.device.is_cuda();
        let cut = cfg.priorities && !preempted && self.tokens_per_ms > 0.0 && gate::interactive_within(INTERACTIVE_RECENT);
        let bulk_tokens = if cut {
            ((self.tokens_per_ms * cfg.bulk_batch.as_secs_f64() * 1e3) as usize).clamp(1, max_tokens)
        } else {
            max_tokens
        };
        // The window of oldest inputs a batch is chosen from: wide enough to sort by length
        // (little padding), narrow enough that requests of one priority finish about in
        // arrival order instead of all together at the end.
        Limits { max_tokens, max_size: cfg.max_batch_size, bulk_tokens, window: (cfg.max_batch_size.max(1) * 8).max(256) }
    }
}

/// A launched batch waiting to be read back.
struct Launch {
    items: Vec<Item>,
    launched: Launched,
    started: Instant,
    priority: Priority,
    /// Its place in flight on a CUDA device.
    slot: Option<gate::Permit>,
}

/// How long after an interactive arrival (that met bulk work) bulk batches stay cut short.
const INTERACTIVE_RECENT: Duration = Duration::from_secs(1);


/// Runs `batch` start to finish; on out-of-memory empties the cache and retries each half,
/// down to single inputs. Any other panic becomes `WorkerPanicked` for the inputs of this
/// batch only.
fn run_split(model: &Model, jobs: &Queue, batch: &[Item], cfg: &WorkerConfig) -> Result<Vec<Vec<f32>>> {
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let pooled = launch(model, jobs, batch, cfg);
        download(pooled, jobs, batch, cfg)
    }));
    match attempt {
        Ok(rows) => Ok(rows),
        Err(payload) => recover(model, jobs, batch, cfg, KernelError::from_panic(payload.as_ref())),
    }
}

/// Reads back a launched batch's vectors; a failure there (an error the device reports late)
/// is handled like a failed launch.
fn collect(model: &Model, jobs: &Queue, batch: &[Item], pooled: Launched, cfg: &WorkerConfig) -> Result<Vec<Vec<f32>>> {
    match catch_unwind(AssertUnwindSafe(|| download(pooled, jobs, batch, cfg))) {
        Ok(rows) => Ok(rows),
        Err(payload) => recover(model, jobs, batch, cfg, KernelError::from_panic(payload.as_ref())),
    }
}

/// What a batch whose forward pass failed with `failure` gets: out of memory is split and
/// retried, anything else fails the batch's inputs.
fn recover(model: &Model, jobs: &Queue, batch: &[Item], cfg: &WorkerConfig, failure: KernelError) -> Result<Vec<Vec<f32>>> {
    let msg = match failure {
        KernelError::OutOfMemory(msg) => msg,
        KernelError::Refused(msg) => {
            tracing::error!(model = %cfg.model_name, "forward pass panicked: {msg}");
            return Err(Error::WorkerPanicked { model: cfg.model_name.clone(), message: msg });
        }
    };
    if cfg.device.is_cuda() {
        let _ = memory::empty_cache();
    }
    if batch.len() == 1 {
        return Err(Error::OutOfMemory {
            device: cfg.device.to_string(),
            inputs: 1,
            max_tokens: batch[0].len,
            detail: msg,
        });
    }
    cfg.stats.oom_splits.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(model = %cfg.model_name, inputs = batch.len(), "out of memory; retrying the batch in halves");
    let (a, b) = batch.split_at(batch.len() / 2);
    let mut rows = run_split(model, jobs, a, cfg)?;
    rows.extend(run_split(model, jobs, b, cfg)?);
    Ok(rows)
}

/// A batch queued on the device.
struct Launched {
    /// The head's `[b, out]` f32 rows, still on the device (not waited for).
    pooled: Tensor,
    /// The `[b, len, hidden]` f32 states, when an input of the batch wants its tokens.
    tokens: Option<Tensor>,
    /// The multi-vector rows of the inputs that want them, in batch order, `[n, dim]` f32.
    multi: Option<Tensor>,
    /// The lexical weights of the inputs that want them, in batch order, `[n]` f32.
    lexical: Option<Tensor>,
    /// Tokens the multi-vector head leaves out at the start of each input.
    multi_from: usize,
    /// Whether its attention ran packed.
    packed: bool,
}

/// Packs the batch, uploads it and queues the encoder and pooling on the model's device.
/// Panics (caught by the caller) on libtorch errors, as tch's infallible API does.
fn launch(model: &Model, jobs: &Queue, batch: &[Item], cfg: &WorkerConfig) -> Launched {
    compute(model, prepare(model, jobs, batch, cfg), cfg)
}

/// At a preemption point of a CPU bulk pass (three per encoder layer; see `nn::preempt`): lets
/// another model's waiting interactive pass have the CPU first (this pass gives its share back
/// and queues for it again as bulk), then takes in what has arrived and runs up to
/// [`INTERACTIVE_RUN`] of this model's interactive batches to completion (a bound per point, so
/// a stream of queries cannot hold a bulk pass forever). Returns the time spent.
fn run_interactive_at_point(
    model: &Model,
    queue: &mut Queue,
    rx: &Receiver<Command>,
    deferred: &mut Option<Command>,
    cfg: &WorkerConfig,
    limits: &Limits,
    permit: &mut Option<gate::Permit>,
) -> Duration {
    let t0 = Instant::now();
    cfg.stats.preemption_points.fetch_add(1, Ordering::Relaxed);
    if permit.is_some() && gate::interactive_waiting() {
        *permit = None;
        *permit = Some(gate::acquire(Priority::Bulk, cfg.threads));
    }
    // Counted by the caller before its job is sent: nothing to take in or run without one.
    if cfg.stats.queued[Priority::Interactive as usize].load(Ordering::SeqCst) > 0 {
        // Take in jobs up to the first other command (a move or a shutdown waits for what came
        // before it; `serve` takes it from `deferred`).
        while deferred.is_none() {
            match rx.try_recv() {
                Ok(Command::Embed(job)) => queue.push(job, &cfg.stats),
                Ok(other) => *deferred = Some(other),
                Err(_) => break,
            }
        }
        for _ in 0..INTERACTIVE_RUN {
            let Some(next) = queue.next_interactive(limits, &cfg.stats) else { break };
            cfg.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            let pass = Instant::now();
            let result = run_split(model, queue, &next.items, cfg);
            cfg.stats.compute_us[Priority::Interactive as usize].fetch_add(pass.elapsed().as_micros() as u64, Ordering::Relaxed);
            queue.deliver(&next.items, result, &cfg.stats);
        }
    }
    t0.elapsed()
}

/// A batch packed for the device, not yet run (holds nothing of the queue).
struct Prepared {
    input: BatchInput,
    pool_mask: Tensor,
    lens: Vec<i64>,
    /// What each row's input asked for, in batch order.
    outputs: Vec<Output>,
}

/// Packs the batch and uploads it.
fn prepare(model: &Model, jobs: &Queue, batch: &[Item], cfg: &WorkerConfig) -> Prepared {
    let b = batch.len();
    let len = batch.iter().map(|it| it.len).max().unwrap_or(0).max(1);
    let tokens: usize = batch.iter().map(|it| it.len).sum();
    // Packed attention: the projections see a [stream, hidden] matrix. cuBLAS pays ~0.7 ms of
    // CPU time per GEMM the first time it meets a new row count in f16/bf16 (measured on an
    // H200), and length-sorted batches almost never repeat one; so the stream is rounded up to
    // a multiple of TOKEN_BUCKET with one filler sequence, whose output is dropped.
    let packed = model.attention().packed();
    let filler = if packed { tokens.div_ceil(TOKEN_BUCKET) * TOKEN_BUCKET - tokens } else { 0 };
    let stream = tokens + filler;
    let bounds = b + 1 + usize::from(filler > 0);
    // Everything the device needs in one buffer, so one upload: the token stream (ids, type
    // ids, positions), where each real token sits in the padded [b * len] layout, the attention
    // and pooling masks, and the sequence bounds.
    let sections = [stream, stream, stream, tokens, b * len, b * len, bounds];
    let mut host = vec![0i64; sections.iter().sum()];
    let (ids, rest) = host.split_at_mut(stream);
    let (types, rest) = rest.split_at_mut(stream);
    let (positions, rest) = rest.split_at_mut(stream);
    let (rows, rest) = rest.split_at_mut(tokens);
    let (mask, rest) = rest.split_at_mut(b * len);
    let (pool_mask, cu_seqlens) = rest.split_at_mut(b * len);
    // The filler sequence is token id 0 at position 0 (the zeros already there), last.
    if filler > 0 {
        cu_seqlens[b + 1] = stream as i64;
    }
    let mut poisoned = false;
    let mut at = 0;
    for (row, it) in batch.iter().enumerate() {
        let seq = &jobs.job(it.job).seqs[it.seq];
        let n = seq.ids.len();
        poisoned |= seq.poisoned;
        let base = row * len;
        ids[at..at + n].copy_from_slice(&seq.ids);
        types[at..at + n].copy_from_slice(&seq.type_ids);
        for (i, p) in positions[at..at + n].iter_mut().enumerate() {
            *p = i as i64;
        }
        for (i, r) in rows[at..at + n].iter_mut().enumerate() {
            *r = (base + i) as i64;
        }
        // Expansion tokens are computed but are no one's keys.
        mask[base..base + n - seq.expansion.min(n)].fill(1);
        // Never pool over nothing: keep at least the last token if the prompt covered it all.
        let skip = seq.pool_skip.min(n.saturating_sub(1));
        pool_mask[base + skip..base + n].fill(1);
        at += n;
        cu_seqlens[row + 1] = at as i64;
    }
    if poisoned {
        panic!("injected panic: an input matched FaultInjection::panic_on_text");
    }
    let dev = model.device();
    if let Some(limit) = cfg.faults.oom_above_batch_tokens {
        if b * len > limit {
            // A real allocation far beyond any machine's memory: libtorch's allocator fails with
            // its own out-of-memory error, exactly as a genuine OOM would surface.
            let _ = Tensor::empty([1i64 << 46], (Kind::Float, dev));
        }
    }
    let host = Tensor::from_slice(&host);
    let all = crate::profile::stage("upload", || if dev.is_cuda() {
        // From pinned memory the copy is queued, not waited for: a pageable upload would
        // synchronise the stream and wait for the batch still running.
        host.pin_memory(dev).to_device_(dev, Kind::Int64, true, false)
    } else {
        host
    });
    let mut offset = 0;
    let mut section = |n: usize| {
        let t = all.narrow(0, offset, n as i64);
        offset += n as i64;
        t
    };
    let bl = b * len;
    let (ids, type_ids, positions, rows) = (section(stream), section(stream), section(stream), section(tokens));
    let (mask, pool_mask, cu_seqlens) = (section(bl), section(bl), section(bounds).to_kind(Kind::Int));
    let (b, len) = (b as i64, len as i64);
    let (mask, pool_mask) = (mask.view([b, len]), pool_mask.view([b, len]));
    let max_seqlen = len.max(filler as i64);
    let tokens = tokens as i64;
    // On the CPU attention runs without padding where the family allows, else each run of
    // similar lengths at its own length (on a GPU the extra launches would cost more than the
    // padding saves).
    let lens: Vec<i64> = batch.iter().map(|it| it.len as i64).collect();
    // Tokens that are no one's keys need the padded key mask (not packed, not varlen).
    let masked_keys = batch.iter().any(|it| jobs.job(it.job).seqs[it.seq].expansion > 0);
    let layout = model.attention().cpu_layout();
    let varlen = !masked_keys && layout == Some(CpuLayout::Varlen);
    let groups = if layout == Some(CpuLayout::Grouped) {
        length_groups(&lens)
    } else {
        Vec::new()
    };
    if varlen {
        cfg.stats.varlen_batches.fetch_add(1, Ordering::Relaxed);
    }
    if !groups.is_empty() {
        cfg.stats.grouped_batches.fetch_add(1, Ordering::Relaxed);
    }
    let input = BatchInput { ids, type_ids, positions, rows, mask, cu_seqlens, tokens, max_seqlen, b, len, groups, varlen, masked_keys };
    let outputs = batch.iter().map(|it| jobs.job(it.job).output).collect();
    Prepared { input, pool_mask, lens, outputs }
}

/// Queues the encoder and the heads of a prepared batch on the model's device (computes them on
/// the CPU).
fn compute(model: &Model, Prepared { input, pool_mask, lens, outputs }: Prepared, cfg: &WorkerConfig) -> Launched {
    if let Some(d) = cfg.faults.forward_delay {
        std::thread::sleep(d);
    }
    // One output and one length per row, both from the same batch.
    assert_eq!(outputs.len(), lens.len(), "a prepared batch has one output per row");
    let dev = model.device();
    let (b, len) = (input.b, input.len);
    let hidden = crate::profile::stage("forward", || model.forward(&input));
    let wants = |o: Output| outputs.contains(&o);
    // Each head runs only for the inputs that asked for it.
    let pooled = if wants(Output::Head) {
        crate::profile::stage("head", || model.head(&hidden, &pool_mask, &lens, cfg.pooling))
    } else {
        Tensor::zeros([b, 1], (Kind::Float, dev))
    };
    let tokens = wants(Output::Tokens).then(|| hidden.to_kind(Kind::Float));
    let heads = model.token_heads();
    let multi_from = heads.multi_from;
    // The padded rows of the tokens of the inputs that want `output`, from `from` on.
    let picked = |output: Output, from: usize| -> Option<Tensor> {
        let at: Vec<i64> = outputs
            .iter()
            .zip(&lens)
            .enumerate()
            .filter(|(_, (o, _))| **o == output)
            .flat_map(|(row, (_, &n))| {
                let (start, n) = (row as i64 * len, n.max(0) as usize);
                (start + from.min(n) as i64..start + n as i64).collect::<Vec<i64>>()
            })
            .collect();
        let width = hidden.size()[2];
        (!at.is_empty()).then(|| hidden.reshape([-1, width]).index_select(0, &Tensor::from_slice(&at).to_device(dev)))
    };
    let multi = picked(Output::Multi, multi_from).map(|x| crate::profile::stage("head", || heads.multi(&x)));
    let lexical = picked(Output::Lexical, 0).and_then(|x| heads.lexical(&x));
    Launched { pooled, tokens, multi, lexical, multi_from, packed: model.attention().packed() }
}

/// Waits for a launched batch and returns one un-normalised row per item (its token states,
/// flattened, for a job that wants them).
fn download(launched: Launched, jobs: &Queue, batch: &[Item], cfg: &WorkerConfig) -> Vec<Vec<f32>> {
    let (pooled, flat) = crate::profile::stage("output", || {
        let pooled = launched.pooled.to_device(tch::Device::Cpu).contiguous();
        let flat: Vec<f32> = Vec::try_from(pooled.view([-1])).expect("pooled output is f32");
        (pooled, flat)
    });
    let dim = pooled.size()[1] as usize;
    let states = launched.tokens.map(|t| t.to_device(tch::Device::Cpu));
    let tokens: usize = batch.iter().map(|it| it.len).sum();
    let padded = batch.len() * batch.iter().map(|it| it.len).max().unwrap_or(0).max(1);
    cfg.stats.batches.fetch_add(1, Ordering::Relaxed);
    cfg.stats.sequences.fetch_add(batch.len() as u64, Ordering::Relaxed);
    cfg.stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    cfg.stats.padded_tokens.fetch_add(padded as u64, Ordering::Relaxed);
    if launched.packed {
        cfg.stats.packed_batches.fetch_add(1, Ordering::Relaxed);
    }
    let to_host = |t: Option<Tensor>| -> Vec<f32> {
        t.map(|t| Vec::try_from(t.to_device(tch::Device::Cpu).contiguous().view([-1])).expect("token head output is f32")).unwrap_or_default()
    };
    let multi_dim = launched.multi.as_ref().map_or(0, |t| t.size()[1] as usize);
    let (multi, lexical) = (to_host(launched.multi), to_host(launched.lexical));
    let (mut multi_at, mut lexical_at) = (0, 0);
    let take = |from: &[f32], at: &mut usize, n: usize| {
        let row = from[*at..*at + n].to_vec();
        *at += n;
        row
    };
    flat.chunks(dim)
        .zip(batch)
        .enumerate()
        .map(|(row, (head, it))| match (&states, jobs.job(it.job).output) {
            (Some(states), Output::Tokens) => {
                let t = states.get(row as i64).narrow(0, 0, it.len as i64).contiguous();
                Vec::try_from(t.view([-1])).expect("hidden states are f32")
            }
            (_, Output::Multi) => take(&multi, &mut multi_at, it.len.saturating_sub(launched.multi_from) * multi_dim),
            (_, Output::Lexical) => take(&lexical, &mut lexical_at, it.len),
            _ => head.to_vec(),
        })
        .collect()
}
