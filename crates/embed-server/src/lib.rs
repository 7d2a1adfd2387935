//! # embed-server
//!
//! The HTTP front end for an [`embed_pool::Pool`]: text-embeddings-inference compatible
//! (`POST /embed`, `/tokenize`, `GET /info`) and OpenAI compatible (`POST /v1/embeddings`,
//! `GET /v1/models`) routes, plus `GET /models`, `POST /models/{name}/load|unload`, `/health`,
//! `/ready` and Prometheus `/metrics`.
//!
//! Every request holds a pool lease for its whole life, so its model cannot be evicted under it;
//! a client that disconnects drops the handler, its lease and its queued work. Concurrent requests
//! to one model share forward passes through embed-core's dynamic batching.
//!
//! Embedding it: build an [`AppState`] from your pool and a [`ServerConfig`], then either
//! [`router`] (nest it in your axum app) or [`serve`] with your own listener and shutdown future.
//! The library never binds a port or installs a signal handler; the `embed-server` binary does.
//!
//! [`serve`] speaks HTTP/1.1 (hyper) and defends itself: at most `limits.max_connections` open
//! connections (more wait in the listen backlog), a header-read timeout, an idle keep-alive
//! timeout, and a shutdown that ends within `Timeouts::shutdown` plus [`CLOSE_MARGIN`].
//!
//! ```
//! # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
//! use embed_core::ModelSpec;
//! use embed_pool::{ModelRegistry, Pool, PoolConfig};
//! use embed_server::{AppState, ServerConfig};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = ModelRegistry::new().with("tiny", ModelSpec::new(dir.to_string_lossy()));
//! let state = AppState::new(Pool::new(PoolConfig::default(), registry), ServerConfig::new("tiny"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(embed_server::serve(listener, state, async { let _ = stopped.await; }));
//! // ... serve traffic; then:
//! stop.send(()).unwrap();
//! let report = server.await.unwrap().unwrap();
//! assert!(report.drained);
//! assert_eq!(embed_core::memory::live_models(), 0);
//! # });
//! ```

mod api;
mod app;
mod config;
mod conn;
mod error;
mod grpc;
mod metrics;
mod otel;
mod serve;

pub use api::docs::openapi;
pub use app::{metrics_router, route_table, router, AppState};
pub use config::{Limits, ServerConfig, Timeouts};
pub use error::{ApiError, OpenAiError, ServeError};
pub use grpc::{serve_grpc, MODEL_METADATA, STREAM_PARALLELISM};
pub use serve::{serve, ShutdownReport, CLOSE_MARGIN};
pub use metrics::Metrics;

pub use embed_pool;
