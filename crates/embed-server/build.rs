include!("../../build-support/link_libtorch.rs");

fn main() {
    link_libtorch_from_embed_core();
}
