//! Links libtorch with an rpath and keeps libtorch_cuda (see build-support/link_libtorch.rs).
use std::path::PathBuf;

include!("../../build-support/link_libtorch.rs");

fn main() {
    // torch-sys (links = "tch") tells its direct dependents where libtorch lives.
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report a libtorch lib dir; run `cargo xtask setup`"),
    );
    let include_dir = lib_dir.join("../include");

    for f in ["shim/accel.cpp", "shim/attention_cpu.cpp", "shim/common.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        // The int8 linear's passes run on libtorch's OpenMP threads (ATen's `parallel_for` is
        // inline OpenMP), linked against the libgomp libtorch ships, so one runtime is loaded.
        .flag("-fopenmp")
        .include(&include_dir)
        .include(include_dir.join("torch/csrc/api/include"))
        .file("shim/accel.cpp")
        .file("shim/attention_cpu.cpp")
        .compile("embed_accel");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");

    // Dependents read this as DEP_EMBED_CORE_LIBTORCH_LIB.
    println!("cargo:libtorch_lib={}", lib_dir.display());
    // For the linking test.
    println!("cargo:rustc-env=EMBED_LIBTORCH_LIB={}", lib_dir.display());
    link_libtorch(&lib_dir);
}
