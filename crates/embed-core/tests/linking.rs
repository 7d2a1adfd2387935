//! The test binary itself proves the link setup: it runs without LD_LIBRARY_PATH (rpath), and
//! when the libtorch lib dir has libtorch_cuda its dynamic section must name it (otherwise CUDA
//! would be invisible at run time).

use std::process::Command;

#[test]
fn dynamic_section_names_libtorch_cuda_when_available() {
    let lib_dir = std::path::PathBuf::from(env!("EMBED_LIBTORCH_LIB"));
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("readelf").arg("-d").arg(&exe).output().expect("readelf (binutils) is installed");
    assert!(out.status.success());
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("libtorch_cpu.so"), "{dynamic}");
    let has_rpath = dynamic.lines().any(|l| (l.contains("RUNPATH") || l.contains("RPATH")) && l.contains(lib_dir.to_str().unwrap()));
    assert!(has_rpath, "no rpath to {} in:\n{dynamic}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        assert!(dynamic.contains("libtorch_cuda.so"), "libtorch_cuda.so exists but is not NEEDED:\n{dynamic}");
        // And it is really mapped into this process.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let _ = embed_core::cuda_device_count();
        assert!(maps.contains("libtorch_cuda.so"), "libtorch_cuda.so is not loaded");
    } else {
        eprintln!("{} has no libtorch_cuda.so (CPU-only libtorch); nothing more to check", lib_dir.display());
    }
}

#[test]
fn runs_without_ld_library_path() {
    // Cargo may set LD_LIBRARY_PATH for tests; re-run this binary's other test without it.
    if std::env::var_os("EMBED_LINKING_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "dynamic_section_names_libtorch_cuda_when_available", "--nocapture"])
        .env_remove("LD_LIBRARY_PATH")
        .env("EMBED_LINKING_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
