//! Prometheus metrics (the `prometheus-client` crate, Prometheus text format 0.0.4).
//!
//! HTTP counters and histograms are recorded as requests finish. Everything about models is
//! read from the pool at scrape time, so series of unloaded models disappear and gauges are
//! live. `embed_forward_*_total` add up every instance a model had: a reload starts a fresh
//! batcher whose counters begin at zero, and the counters here never go down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use embed_core::BatchStats;
use embed_pool::{EvictionCause, ModelState, Pool};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0];

type Labels = Vec<(&'static str, String)>;

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    inputs_per_request: Histogram,
    inputs: Counter,
    tokens: Counter,
    overload: Counter,
    models: Arc<ModelCounters>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of a server over `pool`.
    pub fn new(pool: Pool) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register("embed_http_requests", "HTTP requests by route and status (499: the client went away)", requests.clone());
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register("embed_http_request_duration_seconds", "Request latency by route", latency.clone());
        let inputs_per_request = Histogram::new(SIZE_BUCKETS);
        registry.register("embed_request_inputs", "Inputs per embedding request", inputs_per_request.clone());
        let inputs = Counter::default();
        registry.register("embed_inputs", "Inputs embedded", inputs.clone());
        let tokens = Counter::default();
        registry.register("embed_tokens", "Tokens embedded (after truncation)", tokens.clone());
        let overload = Counter::default();
        registry.register("embed_overload_rejections", "Requests refused with 429", overload.clone());
        let models = Arc::new(ModelCounters::default());
        registry.register_collector(Box::new(PoolCollector { pool, models: models.clone() }));
        Metrics { registry, requests, latency, inputs_per_request, inputs, tokens, overload, models }
    }

    /// Records one finished request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        let route = route.to_string();
        self.requests.get_or_create(&vec![("route", route.clone()), ("status", status.to_string())]).inc();
        self.latency.get_or_create(&vec![("route", route)]).observe(elapsed.as_secs_f64());
        if status == 429 {
            self.overload.inc();
        }
    }

    /// Records an embedding request's size and tokens, and the batcher counters of the model
    /// instance that served it (`instance` tells instances of one model apart).
    pub(crate) fn record_embedding(&self, model: &str, instance: usize, inputs: usize, tokens: usize, batch: Option<BatchStats>) {
        self.inputs.inc_by(inputs as u64);
        self.tokens.inc_by(tokens as u64);
        self.inputs_per_request.observe(inputs as f64);
        if let Some(b) = batch {
            self.models.record(model, instance, b);
        }
    }

    /// Counts an embedding request as waiting for or running on `model`'s worker until the
    /// guard is dropped.
    pub(crate) fn queued(&self, model: &str) -> Queued {
        self.models.lock().entry(model.to_string()).or_default().queued += 1;
        Queued { models: self.models.clone(), model: model.to_string() }
    }

    /// The exposition text, with pool and process figures read now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A request in a model's queue (see [`Metrics::queued`]).
#[must_use = "the request leaves the queue gauge when this is dropped"]
pub(crate) struct Queued {
    models: Arc<ModelCounters>,
    model: String,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(m) = self.models.lock().get_mut(&self.model) {
            m.queued = m.queued.saturating_sub(1);
        }
    }
}

#[derive(Debug, Default)]
struct ModelCounters(Mutex<HashMap<String, ModelEntry>>);

#[derive(Debug, Default)]
struct ModelEntry {
    queued: usize,
    /// The instance `last` came from.
    instance: usize,
    /// Counters of earlier instances.
    retired: BatchStats,
    /// The latest counters of the current instance.
    last: BatchStats,
}

impl ModelEntry {
    fn total(&self) -> BatchStats {
        let mut t = self.retired;
        add(&mut t, &self.last);
        t
    }
}

fn add(to: &mut BatchStats, b: &BatchStats) {
    to.batches += b.batches;
    to.sequences += b.sequences;
    to.padded_tokens += b.padded_tokens;
    to.tokens += b.tokens;
    for (to, b) in [(&mut to.interactive, &b.interactive), (&mut to.bulk, &b.bulk)] {
        to.started_requests += b.started_requests;
        to.first_batch_wait_us += b.first_batch_wait_us;
        to.compute_us += b.compute_us;
    }
}

impl ModelCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelEntry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, model: &str, instance: usize, b: BatchStats) {
        let mut map = self.lock();
        let e = map.entry(model.to_string()).or_default();
        // A new instance (or one that reuses a freed instance's address: its counters restart).
        let fresh = instance != e.instance || b.batches < e.last.batches || b.sequences < e.last.sequences;
        if fresh {
            let last = e.last;
            add(&mut e.retired, &last);
            e.instance = instance;
            e.last = b;
        } else {
            // Requests finish in any order; a counter of one instance only grows.
            e.last.batches = e.last.batches.max(b.batches);
            e.last.sequences = e.last.sequences.max(b.sequences);
            e.last.padded_tokens = e.last.padded_tokens.max(b.padded_tokens);
            e.last.tokens = e.last.tokens.max(b.tokens);
            for (last, b) in [(&mut e.last.interactive, &b.interactive), (&mut e.last.bulk, &b.bulk)] {
                last.started_requests = last.started_requests.max(b.started_requests);
                last.first_batch_wait_us = last.first_batch_wait_us.max(b.first_batch_wait_us);
                last.compute_us = last.compute_us.max(b.compute_us);
            }
        }
    }
}

/// Reads the pool (and the process) at scrape time.
#[derive(Debug)]
struct PoolCollector {
    pool: Pool,
    models: Arc<ModelCounters>,
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn per_model<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (model, value) in rows {
        let labels = [("model", model)];
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One counter per model and priority, from each model's batch counters.
fn per_model_priority<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    forward: &[(String, BatchStats)],
    value: impl Fn(&embed_core::PriorityStats) -> M,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (model, b) in forward {
        for (priority, p) in [("interactive", &b.interactive), ("bulk", &b.bulk)] {
            let labels = [("model", model.as_str()), ("priority", priority)];
            value(p).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.pool.status();
        let stats = self.pool.stats();
        let (queued, forward): (Vec<_>, Vec<_>) = {
            let map = self.models.lock();
            status
                .models
                .iter()
                .map(|m| {
                    let e = map.get(&m.name);
                    ((m.name.clone(), e.map_or(0, |e| e.queued)), (m.name.clone(), e.map(ModelEntry::total).unwrap_or_default()))
                })
                .unzip()
        };
        let e = &mut encoder;
        per_model(e, "embed_queue_depth", "Embedding requests waiting for or running on a model's worker", MetricType::Gauge,
            queued.into_iter().map(|(m, n)| (m, ConstGauge::new(to_i64(n as u64)))))?;
        per_model(e, "embed_forward_batches", "Forward passes run by a model (all its loads)", MetricType::Counter,
            forward.iter().map(|(m, b)| (m.clone(), ConstCounter::new(b.batches))))?;
        per_model(e, "embed_forward_sequences", "Inputs run through forward passes (all loads of the model)", MetricType::Counter,
            forward.iter().map(|(m, b)| (m.clone(), ConstCounter::new(b.sequences))))?;
        per_model(e, "embed_forward_padded_tokens", "Tokens in forward passes, padding included (all loads of the model)", MetricType::Counter,
            forward.iter().map(|(m, b)| (m.clone(), ConstCounter::new(b.padded_tokens))))?;
        per_model_priority(e, "embed_requests_started", "Requests whose first batch has started, by model and priority (all loads of the model)",
            &forward, |p| ConstCounter::new(p.started_requests))?;
        per_model_priority(e, "embed_first_batch_wait_seconds",
            "Summed waits from a request's arrival to its first batch, by model and priority (divide by embed_requests_started_total for the mean)",
            &forward, |p| ConstCounter::new(p.first_batch_wait_us as f64 / 1e6))?;
        per_model_priority(e, "embed_compute_seconds",
            "Wall time of forward passes, by model and priority (a CPU pass holds its worker's threads: per second, the share of the CPU budget it took)",
            &forward, |p| ConstCounter::new(p.compute_us as f64 / 1e6))?;
        let cpu = embed_core::cpu_compute_stats();
        gauge(e, "embed_cpu_thread_budget", "CPU threads forward passes may use at once, all models together", to_i64(cpu.budget as u64))?;
        gauge(e, "embed_cpu_threads_in_use", "CPU threads in use by forward passes now", to_i64(cpu.in_use as u64))?;
        gauge(e, "embed_cpu_threads_peak", "The most CPU threads forward passes ever used at once", to_i64(cpu.peak as u64))?;
        counter(e, "embed_cpu_passes_waited", "CPU forward passes that waited for another model's pass (the budget was in use)", cpu.waited)?;
        gauge(e, "embed_models_loaded", "Models in the pool", to_i64(status.models.len() as u64))?;
        per_model(e, "embed_model_weight_bytes", "Weight bytes of each model in the pool", MetricType::Gauge,
            status.models.iter().map(|m| (m.name.clone(), ConstGauge::new(to_i64(m.weight_bytes)))))?;
        per_model(e, "embed_model_leases", "Active leases per model", MetricType::Gauge,
            status.models.iter().map(|m| (m.name.clone(), ConstGauge::new(to_i64(m.leases as u64)))))?;
        {
            let c = ConstCounter::new(0u64);
            let mut metric = e.encode_descriptor("embed_pool_evictions", "Evictions by cause", None, c.metric_type())?;
            for cause in [EvictionCause::Capacity, EvictionCause::Memory, EvictionCause::Ttl, EvictionCause::Pressure, EvictionCause::Explicit] {
                let labels = [("cause", cause.as_str())];
                ConstCounter::new(stats.evictions.get(cause)).encode(metric.encode_family(&labels)?)?;
            }
        }
        counter(e, "embed_pool_loads", "Model loads", stats.loads)?;
        counter(e, "embed_pool_offloads", "Models offloaded to the warm tier (host memory)", stats.offloads)?;
        counter(e, "embed_pool_offload_failures", "Offloads that failed (the model was unloaded instead)", stats.offload_failures)?;
        counter(e, "embed_pool_restores", "Warm models restored to their device", stats.restores)?;
        counter(e, "embed_pool_restore_failures", "Restores that failed", stats.restore_failures)?;
        gauge(e, "embed_pool_warm_models", "Models in the warm tier", to_i64(status.models.iter().filter(|m| m.state == ModelState::Warm).count() as u64))?;
        gauge(e, "embed_pool_device_weight_bytes", "Weight bytes the pool's models hold on devices (what the memory budget counts)", to_i64(status.weight_bytes))?;
        gauge(e, "embed_pool_memory_budget_bytes", "The pool's device memory budget (0: none)", to_i64(status.memory_budget.unwrap_or(0)))?;
        gauge(e, "embed_pool_host_bytes", "Host bytes the warm tier holds", to_i64(status.host_bytes))?;
        gauge(e, "embed_pool_host_budget_bytes", "The warm tier's host budget (0 when the tier is off)", to_i64(status.host_budget))?;
        {
            let g = ConstGauge::new(0i64);
            let mut metric = e.encode_descriptor(
                "embed_pool_memory_pressure",
                "Memory-pressure level of each CUDA device the models use: 0 low, 1 moderate, 2 high, 3 critical",
                None,
                g.metric_type(),
            )?;
            for p in &status.pressure {
                let labels = [("device", format!("cuda:{}", p.device))];
                ConstGauge::new(i64::from(p.level.as_number())).encode(metric.encode_family(&labels)?)?;
            }
        }
        counter(e, "embed_pool_load_failures", "Failed model loads", stats.load_failures)?;
        use embed_core::memory as mem;
        gauge(e, "embed_memory_weight_bytes", "Weight bytes of every model in the process", to_i64(mem::live_weight_bytes()))?;
        gauge(e, "embed_memory_resident_bytes", "Resident memory of the process", to_i64(mem::process_resident_bytes()))?;
        gauge(e, "embed_memory_anon_resident_bytes", "Anonymous resident memory (heap, stacks) of the process", to_i64(mem::process_anon_resident_bytes()))?;
        gauge(e, "embed_memory_allocator_bytes", "Bytes in use in the C allocator (libtorch CPU tensors live there)", to_i64(mem::cpu_allocator_in_use_bytes()))?;
        if let Ok(c) = mem::cuda_memory(0) {
            gauge(e, "embed_memory_cuda_allocated_bytes", "CUDA caching-allocator allocated bytes (device 0)", to_i64(c.allocated))?;
            gauge(e, "embed_memory_cuda_reserved_bytes", "CUDA caching-allocator reserved bytes (device 0)", to_i64(c.reserved))?;
        }
        Ok(())
    }
}
