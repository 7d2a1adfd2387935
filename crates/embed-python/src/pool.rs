//! embed-pool's `Pool` for Python: leases as context managers, status and counters as dicts.

use std::time::{Duration, UNIX_EPOCH};

use embed_core::ModelSpec;
use embed_pool::{ModelRegistry, ModelSettings, Pool as RustPool, PoolConfig, PoolTimeouts, UnloadMode};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{self, InvalidInput};
use crate::options;
use crate::runtime::{dispatch, runtime};
use crate::service::{Report, Service};

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| InvalidInput::new_err(format!("{what} must be a non-negative number of seconds, got {s}")))
}

/// A pool of loaded models (embed-pool's `Pool`).
#[pyclass(frozen, module = "embed._native", name = "Pool")]
pub(crate) struct Pool {
    pool: RustPool,
}

#[pymethods]
impl Pool {
    /// `models`: `{name: source}` or `{name: (source, {option: value})}`; only those names load.
    /// Without it, any name is loaded as a model source (a directory or hub id) with
    /// `default_options`.
    #[new]
    #[pyo3(signature = (*, max_models=4, memory_budget=None, idle_ttl=None, wait_timeout=30.0, load_timeout=None, models=None, default_options=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_models: usize,
        memory_budget: Option<u64>,
        idle_ttl: Option<f64>,
        wait_timeout: f64,
        load_timeout: Option<f64>,
        models: Option<&Bound<'_, PyDict>>,
        default_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if max_models == 0 {
            return Err(InvalidInput::new_err("max_models must be at least 1"));
        }
        let timeouts = PoolTimeouts {
            wait: seconds("wait_timeout", wait_timeout)?,
            load: load_timeout.map(|s| seconds("load_timeout", s)).transpose()?,
            ..PoolTimeouts::default()
        };
        let mut registry = ModelRegistry::new();
        if let Some(models) = models {
            for (k, v) in models.iter() {
                let name: String = k.extract()?;
                let (source, opts): (String, Option<Bound<'_, PyDict>>) = match v.extract::<String>() {
                    Ok(s) => (s, None),
                    Err(_) => v.extract().map_err(|_| {
                        InvalidInput::new_err(format!("models[{name:?}] must be a source string or a (source, options dict) pair"))
                    })?,
                };
                let spec = ModelSpec::new(source).named(name.clone()).with_options(options::model_options(opts.as_ref())?);
                registry.insert(name, spec, ModelSettings::default());
            }
        }
        let config = PoolConfig::default()
            .with_max_models(max_models)
            .with_memory_budget(memory_budget)
            .with_default_ttl(idle_ttl.map(|s| seconds("idle_ttl", s)).transpose()?)
            .with_timeouts(timeouts)
            .with_arbitrary_sources(models.is_none())
            .with_default_options(options::model_options(default_options)?);
        // Inside the runtime, so that the pool's background tasks (idle TTL) start on it.
        let _rt = runtime().enter();
        Ok(Pool { pool: RustPool::new(config, registry) })
    }

    /// A lease on `name` (loading it if needed; waiting up to `wait_timeout` for room).
    #[pyo3(signature = (name, *, blocking=false))]
    fn lease(&self, py: Python<'_>, name: String, blocking: bool) -> PyResult<Py<PyAny>> {
        let pool = self.pool.clone();
        // The lease is wrapped before anything else can drop the future: a cancelled `get`
        // leaks nothing (embed-pool's guarantee), and the result is owned by a Service at once.
        dispatch(py, blocking, async move { pool.get(&name).await.map(Service::leased).map_err(errors::pool) })
    }

    /// Loads `name` without keeping a lease.
    #[pyo3(signature = (name, *, blocking=false))]
    fn preload(&self, py: Python<'_>, name: String, blocking: bool) -> PyResult<Py<PyAny>> {
        let pool = self.pool.clone();
        dispatch(py, blocking, async move { pool.preload(&name).await.map_err(errors::pool) })
    }

    /// Releases `name` once its leases end; returns its cleanup report (None if not loaded).
    #[pyo3(signature = (name, *, blocking=false))]
    fn unload(&self, py: Python<'_>, name: String, blocking: bool) -> PyResult<Py<PyAny>> {
        let pool = self.pool.clone();
        dispatch(py, blocking, async move {
            pool.unload(&name, UnloadMode::WaitForLeases).await.map(|r| r.map(Report)).map_err(errors::pool)
        })
    }

    /// Unloads every idle model whose TTL has passed (the pool also does it every second).
    #[pyo3(signature = (*, blocking=false))]
    fn evict_expired(&self, py: Python<'_>, blocking: bool) -> PyResult<Py<PyAny>> {
        let pool = self.pool.clone();
        dispatch(py, blocking, async move { Ok(pool.evict_expired().await) })
    }

    /// Closes the pool and waits until every model is released: `{"released", "forced_leases",
    /// "models_left"}`.
    #[pyo3(signature = (*, blocking=false))]
    fn close(&self, py: Python<'_>, blocking: bool) -> PyResult<Py<PyAny>> {
        let pool = self.pool.clone();
        dispatch(py, blocking, async move {
            let r = pool.close().await;
            Ok((r.released, r.forced_leases, r.models_left))
        })
    }

    /// The models in the pool, least recently used first.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.pool.status();
        let models = PyList::empty(py);
        for m in &s.models {
            let d = PyDict::new(py);
            d.set_item("name", &m.name)?;
            d.set_item("state", m.state.as_str())?;
            d.set_item("leases", m.leases)?;
            d.set_item("weight_bytes", m.weight_bytes)?;
            d.set_item("device_bytes", m.device_bytes)?;
            d.set_item("pinned", m.pinned)?;
            d.set_item("idle_s", m.last_used.elapsed().as_secs_f64())?;
            models.append(d)?;
        }
        let d = PyDict::new(py);
        d.set_item("models", models)?;
        d.set_item("max_models", s.max_models)?;
        d.set_item("memory_budget", s.memory_budget)?;
        d.set_item("weight_bytes", s.weight_bytes)?;
        d.set_item("leases", s.leases)?;
        d.set_item("closed", s.closed)?;
        Ok(d)
    }

    /// Counters since the pool was created.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.pool.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("loads", s.loads)?;
        d.set_item("load_failures", s.load_failures)?;
        let ev = PyDict::new(py);
        ev.set_item("capacity", s.evictions.capacity)?;
        ev.set_item("memory", s.evictions.memory)?;
        ev.set_item("ttl", s.evictions.ttl)?;
        ev.set_item("pressure", s.evictions.pressure)?;
        ev.set_item("explicit", s.evictions.explicit)?;
        d.set_item("evictions", ev)?;
        d.set_item("capacity_waits", s.capacity_waits)?;
        d.set_item("capacity_wait_s", s.capacity_wait_time.as_secs_f64())?;
        d.set_item("exhausted", s.exhausted)?;
        Ok(d)
    }

    /// The recent loads and releases, oldest first: `{"model", "action", "cause", "weight_bytes",
    /// "at" (Unix seconds, when it finished), "duration_s"}`.
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for e in self.pool.history() {
            let d = PyDict::new(py);
            d.set_item("model", &e.model)?;
            d.set_item("action", e.action.as_str())?;
            d.set_item("cause", e.cause.map(|c| c.as_str()))?;
            d.set_item("weight_bytes", e.weight_bytes)?;
            d.set_item("at", e.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0))?;
            d.set_item("duration_s", e.duration.as_secs_f64())?;
            list.append(d)?;
        }
        Ok(list)
    }
}
