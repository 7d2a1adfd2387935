//! The integration tests of embed-core in one binary (one link against libtorch instead of one per file).
//! Each module was a binary of its own; every test takes `embed_testkit::module_gate(module_path!())`
//! first, so the tests of one module run together and never beside another module's (their
//! assertions on process-wide figures hold as they did alone). The files that change process-wide
//! state for good, measure resident memory, or are carried to a GPU machine stay binaries of their own
//! (see the README's "Tests").

#[path = "../family_parity/mod.rs"]
mod family_parity;
mod batching;
mod checkpoints;
mod families;
mod faults;
mod hub;
mod int8;
mod lifecycle;
mod llm_rerankers;
mod multivector;
mod offload;
mod parity;
mod prepack;
mod proptest_inputs;
mod real_models;
mod scheduling;
mod st_saved;
mod tasks;
