// Shared by the build scripts of every crate whose binaries or test binaries link libtorch
// (pulled in with `include!`, so each crate stays free of a build-dependency on a helper crate).
//
// Two problems this solves:
// * libtorch lives in a venv, so binaries need an rpath to it to run without LD_LIBRARY_PATH.
// * The linker's `--as-needed` drops libtorch_cuda (no symbol of it is referenced directly), and
//   then CUDA is silently invisible at run time. `--no-as-needed` around it keeps it.

/// Emits the link arguments for the libtorch library directory `lib_dir`.
fn link_libtorch(lib_dir: &std::path::Path) {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!(
            "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-ltorch_cuda,--as-needed",
            lib_dir.display()
        );
    }
}

/// For crates that depend on `embed-core`: it re-exports torch-sys's lib dir as metadata.
#[allow(dead_code)]
fn link_libtorch_from_embed_core() {
    let dir = std::env::var("DEP_EMBED_CORE_LIBTORCH_LIB")
        .expect("embed-core must be a direct dependency (it exports DEP_EMBED_CORE_LIBTORCH_LIB)");
    link_libtorch(std::path::Path::new(&dir));
}
