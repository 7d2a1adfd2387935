//! `cargo xtask leak-check`: runs each layer (core, scoped, pool, server) for N cycles in a
//! child process of its own (`embed-server`'s `leak_check` example), prints a verdict table,
//! writes it as JSON, and exits non-zero on any leak.
//!
//! CPU verdicts (after a warm-up cycle): no model or weight bytes left live after any cycle;
//! C-allocator in-use bytes within max(8 MiB, 3 %) of the post-warm-up level; anonymous resident
//! memory (RssAnon: heap and stacks, not library code pages) within max(24 MiB, 5 %). CUDA verdicts: caching-allocator allocated bytes exactly back to the baseline
//! after every cycle, reserved bytes back to the baseline (cleanup empties the cache), and
//! device-level used memory within 2 MiB of the baseline (the process's context overhead).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

const ALLOCATOR_SLACK_BYTES: f64 = 8.0 * 1024.0 * 1024.0;
const ALLOCATOR_SLACK_FRACTION: f64 = 0.03;
const RESIDENT_SLACK_FRACTION: f64 = 0.05;
/// Anonymous RSS also holds thread stacks and per-thread malloc arenas (the tokio blocking pool
/// and the HTTP client grow lazily with concurrency); those are bounded, not leaks. The
/// allocator figure above is the precise one; RSS gets this much room besides.
const RESIDENT_SLACK_BYTES: f64 = 24.0 * 1024.0 * 1024.0;
const CUDA_USED_SLACK_BYTES: f64 = 2.0 * 1024.0 * 1024.0;

pub(crate) struct Options {
    pub(crate) device: String,
    pub(crate) cycles: usize,
    pub(crate) json: Option<PathBuf>,
    pub(crate) layers: Vec<String>,
    pub(crate) plant_leak: bool,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        Ok(Options {
            device: get("--device").unwrap_or_else(|| "cpu".into()),
            cycles: get("--cycles").map(|c| c.parse()).transpose().context("--cycles")?.unwrap_or(5),
            json: get("--json").map(PathBuf::from),
            layers: get("--layers")
                .map(|l| l.split(',').map(String::from).collect())
                .unwrap_or_else(|| ["core", "scoped", "pool", "server"].map(String::from).to_vec()),
            plant_leak: args.iter().any(|a| a == "--plant-leak"),
        })
    }
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn mib(b: f64) -> String {
    if b.is_nan() {
        "-".into()
    } else {
        format!("{:.1}", b / (1024.0 * 1024.0))
    }
}

/// Returns (passed, problems) for one layer's figures.
fn verdict(r: &serde_json::Value, cuda: bool) -> (bool, Vec<String>) {
    let mut problems = Vec::new();
    if r["live_models_after"].as_u64() != Some(0) {
        problems.push(format!("{} model(s) still live after a cycle", r["live_models_after"]));
    }
    if r["weights_after"].as_u64() != Some(0) {
        problems.push(format!("{} weight bytes still accounted after a cycle", r["weights_after"]));
    }
    let base_alloc = num(r, &["baseline", "allocator"]);
    let alloc_growth = num(r, &["max_after", "allocator"]) - base_alloc;
    let alloc_limit = ALLOCATOR_SLACK_BYTES.max(ALLOCATOR_SLACK_FRACTION * base_alloc);
    if alloc_growth > alloc_limit {
        problems.push(format!("allocator in-use bytes grew {} MiB (limit {} MiB)", mib(alloc_growth), mib(alloc_limit)));
    }
    let base_rss = num(r, &["baseline", "resident"]);
    let rss_growth = num(r, &["max_after", "resident"]) - base_rss;
    let rss_limit = RESIDENT_SLACK_BYTES.max(RESIDENT_SLACK_FRACTION * base_rss);
    if rss_growth > rss_limit {
        problems.push(format!("anonymous resident memory grew {} MiB (limit {} MiB)", mib(rss_growth), mib(rss_limit)));
    }
    if cuda {
        let base = num(r, &["baseline", "cuda_allocated"]);
        for a in r["cuda_allocated_after"].as_array().into_iter().flatten().skip(1) {
            if a.as_f64() != Some(base) {
                problems.push(format!("CUDA allocated bytes {a} after a cycle, baseline {base}"));
            }
        }
        let base_res = num(r, &["baseline", "cuda_reserved"]);
        for a in r["cuda_reserved_after"].as_array().into_iter().flatten().skip(1) {
            if a.as_f64() != Some(base_res) {
                problems.push(format!("CUDA reserved bytes {a} after empty_cache, baseline {base_res}"));
            }
        }
        let used_growth = num(r, &["after", "cuda_used"]) - num(r, &["baseline", "cuda_used"]);
        if !(used_growth <= CUDA_USED_SLACK_BYTES) {
            problems.push(format!("device used memory grew {} MiB", mib(used_growth)));
        }
    }
    (problems.is_empty(), problems)
}

pub(crate) fn run(opts: &Options) -> Result<bool> {
    let env = setup::run(&setup::Options { bench: false })?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build.current_dir(&env.root).args(["build", "-q", "-p", "embed-server", "--example", "leak_check"]);
    if opts.plant_leak {
        build.args(["--features", "embed-core/planted-leak"]);
        println!("leak-check: building with the planted leak (a weight tensor kept alive after cleanup)");
    }
    if !build.status()?.success() {
        bail!("building the leak-check child failed");
    }
    let child = env.root.join("target/debug/examples/leak_check");
    let cuda = opts.device.starts_with("cuda");
    let mut results = Vec::new();
    let mut all_ok = true;
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>12} {:>12}  verdict ({} cycles on {}, after a warm-up cycle)",
        "layer", "", "baseline MiB", "peak MiB", "after MiB", "leaked MiB", opts.cycles, opts.device
    );
    for layer in &opts.layers {
        let out = Command::new(&child)
            .args([layer.as_str(), "--cycles", &opts.cycles.to_string(), "--device", &opts.device])
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .with_context(|| format!("running {}", child.display()))?;
        if !out.status.success() {
            bail!("leak-check child for {layer} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().context("child printed nothing")?;
        let r: serde_json::Value = serde_json::from_str(line).with_context(|| format!("child output {line:?}"))?;
        let (ok, problems) = verdict(&r, cuda);
        all_ok &= ok;
        let rows: Vec<(&str, [&str; 2])> = if cuda {
            vec![("alloc", ["allocator", "allocator"]), ("anon", ["resident", "resident"]), ("cuda", ["cuda_allocated", "cuda_allocated"]), ("cuda-res", ["cuda_reserved", "cuda_reserved"])]
        } else {
            vec![("alloc", ["allocator", "allocator"]), ("anon", ["resident", "resident"])]
        };
        for (i, (label, [b, a])) in rows.iter().enumerate() {
            let base = num(&r, &["baseline", b]);
            let after = num(&r, &["after", a]);
            let peak = num(&r, &["peak", b]);
            let v = if i == 0 { if ok { "ok" } else { "LEAK" } } else { "" };
            println!("{:<8} {label:>7} {:>12} {:>12} {:>12} {:>12}  {v}", if i == 0 { layer.as_str() } else { "" }, mib(base), mib(peak), mib(after), mib(after - base));
        }
        for p in &problems {
            println!("         ! {p}");
        }
        let mut r = r;
        r["verdict"] = serde_json::json!(if ok { "ok" } else { "leak" });
        r["problems"] = serde_json::json!(problems);
        results.push(r);
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({"device": opts.device, "cycles": opts.cycles, "planted_leak": opts.plant_leak, "layers": results}))?)?;
        println!("leak-check: wrote {}", path.display());
    }
    println!("leak-check: {}", if all_ok { "no leaks" } else { "LEAKS FOUND" });
    Ok(all_ok)
}
