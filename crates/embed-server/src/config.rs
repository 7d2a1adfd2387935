//! Server configuration: a plain struct with a builder. The binary fills it from flags,
//! environment variables and an optional TOML file; embedders build it in code.

use std::time::Duration;

use axum::http::HeaderValue;

/// Request limits: sizes and counts. Fields are public: change what you need and take the
/// rest from `..Limits::default()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most inputs in one request (413 above it, the limit named).
    pub max_inputs: usize,
    /// Requests served at once; more get 429 with Retry-After.
    pub max_concurrent: usize,
    /// Bulk requests (see [`embed_core::Priority`]) served at once, within `max_concurrent`;
    /// more get 429 while interactive requests are still admitted, so an indexing flood is
    /// refused before queries are. `None`: three quarters of `max_concurrent` (at least 1).
    pub max_concurrent_bulk: Option<usize>,
    /// Open client connections at most. At the cap the server stops accepting: new connections
    /// wait in the kernel's listen backlog until one closes, so no descriptor is spent on them.
    pub max_connections: usize,
    /// Default of `truncate` when a request does not say (true: truncate long inputs; false: 422).
    pub truncate_by_default: bool,
}

impl Limits {
    /// Bulk requests admitted at once (`max_concurrent_bulk`, or its default).
    pub fn bulk_limit(&self) -> usize {
        self.max_concurrent_bulk.unwrap_or(self.max_concurrent * 3 / 4).clamp(1, self.max_concurrent.max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 2 * 1024 * 1024, max_inputs: 512, max_concurrent: 512, max_concurrent_bulk: None, max_connections: 1024, truncate_by_default: true }
    }
}

/// How long the server waits, one field per wait (grouped as deadpool groups its timeouts).
/// Change what you need and take the rest from `..Timeouts::default()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole-request deadline (504 after it; queued work is cancelled). Default 60 s.
    pub request: Duration,
    /// Time a client gets to send a complete request head, counted from its first byte (and,
    /// on a new connection, from the accept). Default 10 s.
    pub header_read: Duration,
    /// Time a kept-alive connection may stay silent between requests before it is closed.
    /// Default 75 s: longer than the 60 s idle timeout of common load balancers, so the
    /// balancer, not the server, closes an idle upstream connection (no race on a reused socket).
    pub keep_alive: Duration,
    /// How long in-flight requests may run after shutdown starts. The whole shutdown (drain,
    /// then releasing every model) ends within this plus [`crate::CLOSE_MARGIN`]. Default 30 s.
    pub shutdown: Duration,
    /// How long the server keeps serving after it is told to stop, before it stops accepting:
    /// `/ready` answers 503 at once so health-checking balancers take the replica out, every
    /// response carries `Connection: close` so kept-alive connections end after their next
    /// request, and only then is the listener closed and the drain above begins. Default 0
    /// (stop accepting at once; on Kubernetes a preStop pause does the same job).
    pub shutdown_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(60),
            header_read: Duration::from_secs(10),
            keep_alive: Duration::from_secs(75),
            shutdown: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Everything the HTTP layer needs besides the pool.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Model used when a request names none.
    pub default_model: String,
    /// Models loaded before `/ready` reports ready.
    pub preload: Vec<String>,
    /// Request sizes and counts.
    pub limits: Limits,
    /// Request, connection and shutdown timeouts.
    pub timeouts: Timeouts,
    /// When set, every route except `/health`, `/ready` and `/metrics` needs
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// When a preload fails, keep serving (`/ready` stays 503) instead of stopping with
    /// [`crate::ServeError::Preload`]. Default false.
    pub allow_degraded_start: bool,
    /// Every request reaches the default model, whatever `model` it names, as in TEI, which
    /// serves one model and ignores the field: clients configured for TEI send any name
    /// (OpenAI's SDKs require one). Meant for a server with one model; otherwise an unknown
    /// name is a 404. Default false.
    pub any_model_name: bool,
    /// Origins whose browser pages may call the server (CORS; TEI's `--cors-allow-origin`):
    /// `["*"]` any origin, empty (the default) none, so no CORS headers are sent.
    pub cors_allow_origin: Vec<HeaderValue>,
}

impl ServerConfig {
    /// A config serving `default_model`, which is also preloaded.
    pub fn new(default_model: impl Into<String>) -> Self {
        let default_model = default_model.into();
        ServerConfig {
            preload: vec![default_model.clone()],
            default_model,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            api_key: None,
            allow_degraded_start: false,
            any_model_name: false,
            cors_allow_origin: Vec::new(),
        }
    }

    /// The model a request that names `requested` (or none) is served by.
    pub fn model_for(&self, requested: Option<String>) -> String {
        match requested {
            Some(name) if !self.any_model_name => name,
            _ => self.default_model.clone(),
        }
    }

    /// Lets pages from these origins call the server (see [`ServerConfig::cors_allow_origin`]).
    pub fn with_cors_allow_origin(mut self, origins: Vec<HeaderValue>) -> Self {
        self.cors_allow_origin = origins;
        self
    }

    /// Serve every request with the default model, whatever it names (see
    /// [`ServerConfig::any_model_name`]).
    pub fn with_any_model_name(mut self, any: bool) -> Self {
        self.any_model_name = any;
        self
    }

    /// Sets the models to preload.
    pub fn with_preload(mut self, names: Vec<String>) -> Self {
        self.preload = names;
        self
    }

    /// Sets the request limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Requires this API key.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Sets the timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Keep serving when a preload fails (see [`ServerConfig::allow_degraded_start`]).
    pub fn with_allow_degraded_start(mut self, allow: bool) -> Self {
        self.allow_degraded_start = allow;
        self
    }
}
