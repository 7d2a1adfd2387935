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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // `--exact` with a name that matches nothing runs zero tests and still succeeds.
    assert!(child_ran_exactly_one_test(&stdout), "the child run did not run the linking test:\n{stdout}");
}

/// True when libtest's output says one test ran and passed.
fn child_ran_exactly_one_test(stdout: &str) -> bool {
    stdout.lines().any(|l| l.trim() == "running 1 test")
        && stdout.lines().any(|l| l.starts_with("test result: ok. 1 passed; 0 failed"))
}

#[test]
fn a_child_run_that_matched_no_test_is_recognised() {
    let none = "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.00s\n";
    assert!(!child_ran_exactly_one_test(none));
    let one = "\nrunning 1 test\ntest dynamic_section_names_libtorch_cuda_when_available ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.01s\n";
    assert!(child_ran_exactly_one_test(one));
}
