//! Prometheus metrics, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use embed_core::BatchStats;
use embed_pool::Pool;

const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64, buckets: &[f64]) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Counters and histograms of the HTTP layer.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    inputs_per_request: Mutex<Histogram>,
    batch: Mutex<BTreeMap<String, BatchStats>>,
    tokens: AtomicU64,
    inputs: AtomicU64,
    rejected_overload: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route.to_string(), status)).or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64(), &BUCKETS);
        if status == 429 {
            self.rejected_overload.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records an embedding request's size and tokens, and the model's batcher counters.
    pub fn record_embedding(&self, model: &str, inputs: usize, tokens: usize, batch: Option<BatchStats>) {
        self.inputs.fetch_add(inputs as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.inputs_per_request.lock().unwrap_or_else(|p| p.into_inner()).observe(inputs as f64, &SIZE_BUCKETS);
        if let Some(b) = batch {
            self.batch.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_string(), b);
        }
    }

    /// The exposition text, with pool and process gauges read now.
    pub fn render(&self, pool: &Pool) -> String {
        let mut out = String::new();
        out.push_str("# HELP embed_http_requests_total HTTP requests by route and status.\n# TYPE embed_http_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "embed_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP embed_http_request_duration_seconds Request latency by route.\n# TYPE embed_http_request_duration_seconds histogram\n");
        for (route, h) in self.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.render(&mut out, "embed_http_request_duration_seconds", &format!("route=\"{route}\""), &BUCKETS);
        }
        out.push_str("# HELP embed_request_inputs Inputs per embedding request.\n# TYPE embed_request_inputs histogram\n");
        self.inputs_per_request.lock().unwrap_or_else(|p| p.into_inner()).render(&mut out, "embed_request_inputs", "", &SIZE_BUCKETS);
        let _ = writeln!(out, "# HELP embed_inputs_total Inputs embedded.\n# TYPE embed_inputs_total counter\nembed_inputs_total {}", self.inputs.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP embed_tokens_total Tokens embedded (after truncation).\n# TYPE embed_tokens_total counter\nembed_tokens_total {}", self.tokens.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP embed_overload_rejections_total Requests refused with 429.\n# TYPE embed_overload_rejections_total counter\nembed_overload_rejections_total {}", self.rejected_overload.load(Ordering::Relaxed));

        out.push_str("# HELP embed_queue_depth Requests waiting for a model's worker.\n# TYPE embed_queue_depth gauge\n");
        let batches = self.batch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (m, b) in &batches {
            let _ = writeln!(out, "embed_queue_depth{{model=\"{m}\"}} {}", b.queued_requests);
        }
        out.push_str("# HELP embed_forward_batches_total Forward passes run by a model.\n# TYPE embed_forward_batches_total counter\n");
        for (m, b) in &batches {
            let _ = writeln!(out, "embed_forward_batches_total{{model=\"{m}\"}} {}", b.batches);
        }
        out.push_str("# HELP embed_forward_sequences_total Inputs run through forward passes.\n# TYPE embed_forward_sequences_total counter\n");
        for (m, b) in &batches {
            let _ = writeln!(out, "embed_forward_sequences_total{{model=\"{m}\"}} {}", b.sequences);
        }
        out.push_str("# HELP embed_forward_padded_tokens_total Tokens in forward passes, padding included.\n# TYPE embed_forward_padded_tokens_total counter\n");
        for (m, b) in &batches {
            let _ = writeln!(out, "embed_forward_padded_tokens_total{{model=\"{m}\"}} {}", b.padded_tokens);
        }

        let status = pool.status();
        let stats = pool.stats();
        let _ = writeln!(out, "# HELP embed_models_loaded Models loaded in the pool.\n# TYPE embed_models_loaded gauge\nembed_models_loaded {}", status.models.len());
        out.push_str("# HELP embed_model_weight_bytes Weight bytes of each loaded model.\n# TYPE embed_model_weight_bytes gauge\n");
        for m in &status.models {
            let _ = writeln!(out, "embed_model_weight_bytes{{model=\"{}\"}} {}", m.name, m.weight_bytes);
        }
        out.push_str("# HELP embed_model_leases Active leases per model.\n# TYPE embed_model_leases gauge\n");
        for m in &status.models {
            let _ = writeln!(out, "embed_model_leases{{model=\"{}\"}} {}", m.name, m.leases);
        }
        out.push_str("# HELP embed_pool_evictions_total Evictions by cause.\n# TYPE embed_pool_evictions_total counter\n");
        for cause in [embed_pool::EvictionCause::Capacity, embed_pool::EvictionCause::Memory, embed_pool::EvictionCause::Ttl, embed_pool::EvictionCause::Explicit] {
            let _ = writeln!(out, "embed_pool_evictions_total{{cause=\"{cause}\"}} {}", stats.evictions.get(cause));
        }
        let _ = writeln!(out, "# HELP embed_pool_loads_total Model loads.\n# TYPE embed_pool_loads_total counter\nembed_pool_loads_total {}", stats.loads);
        let _ = writeln!(out, "# HELP embed_pool_load_failures_total Failed model loads.\n# TYPE embed_pool_load_failures_total counter\nembed_pool_load_failures_total {}", stats.load_failures);
        let _ = writeln!(out, "# HELP embed_memory_weight_bytes Weight bytes of every model in the process.\n# TYPE embed_memory_weight_bytes gauge\nembed_memory_weight_bytes {}", embed_core::memory::live_weight_bytes());
        let _ = writeln!(out, "# HELP embed_memory_resident_bytes Resident memory of the process.\n# TYPE embed_memory_resident_bytes gauge\nembed_memory_resident_bytes {}", embed_core::memory::process_resident_bytes());
        let _ = writeln!(out, "# HELP embed_memory_anon_resident_bytes Anonymous resident memory (heap, stacks) of the process.\n# TYPE embed_memory_anon_resident_bytes gauge\nembed_memory_anon_resident_bytes {}", embed_core::memory::process_anon_resident_bytes());
        let _ = writeln!(out, "# HELP embed_memory_allocator_bytes Bytes in use in the C allocator (libtorch CPU tensors live there).\n# TYPE embed_memory_allocator_bytes gauge\nembed_memory_allocator_bytes {}", embed_core::memory::cpu_allocator_in_use_bytes());
        if let Ok(c) = embed_core::memory::cuda_memory(0) {
            let _ = writeln!(out, "# HELP embed_memory_cuda_allocated_bytes CUDA caching-allocator allocated bytes (device 0).\n# TYPE embed_memory_cuda_allocated_bytes gauge\nembed_memory_cuda_allocated_bytes {}", c.allocated);
            let _ = writeln!(out, "# HELP embed_memory_cuda_reserved_bytes CUDA caching-allocator reserved bytes (device 0).\n# TYPE embed_memory_cuda_reserved_bytes gauge\nembed_memory_cuda_reserved_bytes {}", c.reserved);
        }
        out
    }
}
