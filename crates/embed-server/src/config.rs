//! Server configuration: a plain struct with a builder. The binary fills it from flags,
//! environment variables and an optional TOML file; embedders build it in code.

use std::time::Duration;

/// Request limits.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most inputs in one request (413 above it, the limit named).
    pub max_inputs: usize,
    /// Requests served at once; more get 429 with Retry-After.
    pub max_concurrent: usize,
    /// Whole-request deadline (504 after it; queued work is cancelled).
    pub request_timeout: Duration,
    /// Default of `truncate` when a request does not say (true: truncate long inputs; false: 422).
    pub truncate_by_default: bool,
    /// Open client connections at most. At the cap the server stops accepting: new connections
    /// wait in the kernel's listen backlog until one closes, so no descriptor is spent on them.
    pub max_connections: usize,
    /// Time a client gets to send a complete request head, counted from its first byte (and,
    /// on a new connection, from the accept).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may stay silent between requests before it is closed.
    pub keep_alive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_inputs: 512,
            max_concurrent: 512,
            request_timeout: Duration::from_secs(60),
            truncate_by_default: true,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            // Longer than the 60 s idle timeout of common load balancers, so the balancer, not
            // the server, closes an idle upstream connection (no race on a reused socket).
            keep_alive_timeout: Duration::from_secs(75),
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
    /// Request limits.
    pub limits: Limits,
    /// When set, every route except `/health`, `/ready` and `/metrics` needs
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// How long in-flight requests may run after shutdown starts. The whole shutdown (drain,
    /// then releasing every model) ends within this plus [`crate::CLOSE_MARGIN`].
    pub shutdown_deadline: Duration,
    /// When a preload fails, keep serving (`/ready` stays 503) instead of stopping with
    /// [`crate::ServeError::Preload`]. Default false.
    pub allow_degraded_start: bool,
}

impl ServerConfig {
    /// A config serving `default_model`, which is also preloaded.
    pub fn new(default_model: impl Into<String>) -> Self {
        let default_model = default_model.into();
        ServerConfig {
            preload: vec![default_model.clone()],
            default_model,
            limits: Limits::default(),
            api_key: None,
            shutdown_deadline: Duration::from_secs(30),
            allow_degraded_start: false,
        }
    }

    /// Sets the models to preload.
    pub fn with_preload(mut self, names: Vec<String>) -> Self {
        self.preload = names;
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Requires this API key.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Sets the shutdown deadline.
    pub fn with_shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// Keep serving when a preload fails (see [`ServerConfig::allow_degraded_start`]).
    pub fn with_allow_degraded_start(mut self, allow: bool) -> Self {
        self.allow_degraded_start = allow;
        self
    }
}

impl Limits {
    /// Sets `max_body_bytes`.
    pub fn with_max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
    /// Sets `max_inputs`.
    pub fn with_max_inputs(mut self, n: usize) -> Self {
        self.max_inputs = n;
        self
    }
    /// Sets `max_concurrent`.
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }
    /// Sets `request_timeout`.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
    /// Sets `max_connections`.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Sets `header_read_timeout`.
    pub fn with_header_read_timeout(mut self, d: Duration) -> Self {
        self.header_read_timeout = d;
        self
    }
    /// Sets `keep_alive_timeout`.
    pub fn with_keep_alive_timeout(mut self, d: Duration) -> Self {
        self.keep_alive_timeout = d;
        self
    }
    /// Sets `truncate_by_default`.
    pub fn with_truncate_by_default(mut self, t: bool) -> Self {
        self.truncate_by_default = t;
        self
    }
}
