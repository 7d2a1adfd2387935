//! Links libtorch with an rpath and keeps libtorch_cuda (see build-support/link_libtorch.rs).
use std::path::PathBuf;

include!("../../build-support/link_libtorch.rs");

/// The shim, by concern (their entry points are declared in `src/ffi.rs`).
const SHIM_SOURCES: &[&str] = &["shim/memory.cpp", "shim/onednn.cpp", "shim/attention_cuda.cpp", "shim/attention_cpu.cpp"];

fn main() {
    // torch-sys (links = "tch") tells its direct dependents where libtorch lives.
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report a libtorch lib dir; run `cargo xtask setup`"),
    );
    let include_dir = lib_dir.join("../include");

    for f in SHIM_SOURCES.iter().chain(&["shim/common.h"]) {
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
        .files(SHIM_SOURCES)
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
    test_cpu_cfgs();
}

/// What the CPU that builds the tests can run, for their `#[cfg_attr(not(…), ignore = "…")]`:
/// a kernel this CPU cannot run is listed as an ignored test with the reason, instead of a test
/// that passes without checking it. The tests are built and run on one machine (`cargo xtask
/// test`, CI); the library itself decides at run time (`int8_unsupported_reason`,
/// `cpu_prepack_unsupported_reason`).
fn test_cpu_cfgs() {
    println!("cargo::rustc-check-cfg=cfg(embed_cpu_vnni)");
    println!("cargo::rustc-check-cfg=cfg(embed_cpu_bf16_prepack)");
    #[cfg(target_arch = "x86_64")]
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        if std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni") {
            println!("cargo::rustc-cfg=embed_cpu_vnni");
        }
        if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512dq") {
            println!("cargo::rustc-cfg=embed_cpu_bf16_prepack");
        }
    }
}
