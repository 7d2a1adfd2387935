//! Links libtorch with an rpath and keeps libtorch_cuda (see build-support/link_libtorch.rs), and
//! generates the gRPC server for TEI's API from `proto/tei.proto` with the vendored `protoc` (no
//! system protoc needed).
include!("../../build-support/link_libtorch.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    link_libtorch_from_embed_core();
    // tonic-build runs the protoc that PROTOC names.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    // No rerun-if-changed lines: like before, the script reruns when any file of the crate
    // changes (the proto included), which the libtorch link step relies on.
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_protos(&["proto/tei.proto"], &["proto"])?;
    Ok(())
}
