//! The integration tests of embed-server in one binary (one link against libtorch instead of one per file).
//! Each module was a binary of its own; every test takes `embed_testkit::module_gate(module_path!())`
//! first, so the tests of one module run together and never beside another module's (their
//! assertions on process-wide figures hold as they did alone). The files that change process-wide
//! state for good, measure resident memory, or are carried to a GPU machine stay binaries of their own
//! (see the README's "Tests").

#[path = "../common/mod.rs"]
mod common;
mod bulk_host;
mod connections;
mod e2e;
mod families;
mod grpc;
mod hub;
mod lifecycle;
mod metrics_scrape;
mod multivector;
mod observability;
mod openai_client;
mod protocol;
mod routes;
mod serve_lib;
mod tasks;
mod warm_tier;
