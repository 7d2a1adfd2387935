//! The process's own memory: resident set (from `/proc`), the C allocator (glibc only: elsewhere
//! its figures are 0 and its controls do nothing), the machine's RAM.

/// Resident set size of this process in bytes (from `/proc/self/statm`).
pub fn process_resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Anonymous resident memory of this process in bytes (`RssAnon` in `/proc/self/status`):
/// heap, stacks and other private data, without the file-backed pages of mapped libraries.
/// This is the figure leak checks compare: touching a new code path in libtorch faults in
/// more of its (shared, file-backed) code pages and raises total RSS without any leak.
pub fn process_anon_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Bytes in use in the C allocator (glibc `mallinfo2`: arena + mmapped in-use bytes).
/// libtorch's CPU tensors are allocated there.
/// 0 where the C library is not glibc.
pub fn cpu_allocator_in_use_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
        let mi = unsafe { libc::mallinfo2() };
        (mi.uordblks + mi.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// Returns freed heap pages to the OS where glibc can (`malloc_trim(0)`), so that resident
/// memory reflects what is really in use.
/// A no-op where the C library is not glibc.
pub fn trim_cpu_heap() {
    // SAFETY: malloc_trim has no preconditions.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freezes glibc's mmap and trim thresholds at `bytes` (`mallopt(M_MMAP_THRESHOLD)` and
/// `M_TRIM_THRESHOLD`), so that memory the process frees goes back to the OS at once and
/// resident memory follows what is in use. Returns false where glibc refused.
///
/// By default glibc raises both thresholds as large blocks are freed (up to 32 and 64 MiB), and
/// the top of each thread's arena then keeps that much freed memory resident, which
/// [`trim_cpu_heap`] does not return for arenas other than the main one. Measured in
/// `cargo xtask leak-check`'s core layer (MiniLM loaded, moved and released per cycle; AMD
/// EPYC, 2 cores): anonymous RSS after each cycle moved between 185 and 221 MiB with the
/// default, stayed at 185 MiB in 27 of 27 samples with thresholds frozen at 128 KiB, with
/// the allocator's in-use bytes flat either way. The price is an mmap and page faults for
/// every larger allocation, so this is for measuring processes (leak checks, memory tests),
/// not a default for serving.
/// False (nothing done) where the C library is not glibc.
pub fn freeze_malloc_thresholds(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes plain integers and has no preconditions.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, v) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, v) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

/// The machine's RAM (`MemTotal` of `/proc/meminfo`); 0 where it cannot be read.
pub fn total_ram_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
