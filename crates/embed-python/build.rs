//! Links libtorch with an rpath and keeps libtorch_cuda (see build-support/link_libtorch.rs), so
//! the extension finds the venv's libtorch without LD_LIBRARY_PATH: the same files `import torch`
//! loads, so the two share one libtorch in a process, whichever is imported first.
include!("../../build-support/link_libtorch.rs");

fn main() {
    link_libtorch_from_embed_core();
}
