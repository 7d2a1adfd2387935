//! Links libtorch with an rpath and keeps libtorch_cuda (see build-support/link_libtorch.rs).
include!("../../build-support/link_libtorch.rs");

fn main() {
    link_libtorch_from_embed_core();
}
