//! `cargo xtask leak-check`: runs each layer (core, scoped, pool, server) for N cycles in a
//! child process of its own (`embed-server`'s `leak_check` example), prints a verdict table,
//! writes it as JSON, and exits non-zero on any leak.
//!
//! CPU verdicts (after a warm-up cycle): no model, weight bytes or host copy of offloaded weights
//! left live after any cycle (the core and pool layers offload and restore models too);
//! C-allocator in-use bytes within max(8 MiB, 3 %) of the post-warm-up level; anonymous resident
//! memory (RssAnon: heap and stacks, not library code pages) within max(24 MiB, 5 %, 2 % of the
//! largest model's weights). The child freezes glibc's malloc thresholds first, so freed memory
//! goes back to the OS at once and RSS is not moved by the arenas' hysteresis (with glibc's
//! dynamic thresholds it stepped 20-40 MiB between cycles on fresh machines, allocator flat).
//! CUDA verdicts: caching-allocator allocated bytes exactly back to the baseline
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
/// With large models glibc's arenas keep a few more pages mapped between cycles (measured with
/// the Qwen3-0.6B-shaped model in f32, 2.4 GB of weights: one-time steps of 7 to 30 MiB of
/// anonymous RSS while the allocator's in-use bytes stayed within 13 KiB). RSS gets this
/// fraction of the largest model's weights as room, which still catches a leaked embedding
/// table (a quarter or more of such a model).
const RESIDENT_SLACK_WEIGHT_FRACTION: f64 = 0.02;
const CUDA_USED_SLACK_BYTES: f64 = 2.0 * 1024.0 * 1024.0;

pub(crate) struct Options {
    pub(crate) device: String,
    pub(crate) cycles: usize,
    pub(crate) json: Option<PathBuf>,
    pub(crate) layers: Vec<String>,
    pub(crate) plant_leak: bool,
    /// The model the layers churn instead of the MiniLM (`EMBED_LEAK_MODEL_DIR` for the child).
    pub(crate) model_dir: Option<PathBuf>,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        Ok(Options {
            device: get("--device").unwrap_or_else(|| "cpu".into()),
            cycles: match get("--cycles").map(|c| c.parse::<usize>()).transpose().context("--cycles")? {
                // The first cycle is the warm-up: with none, nothing would be compared.
                Some(0) => bail!("--cycles must be at least 1"),
                n => n.unwrap_or(5),
            },
            json: get("--json").map(PathBuf::from),
            layers: get("--layers")
                .map(|l| l.split(',').map(String::from).collect())
                .unwrap_or_else(|| ["core", "scoped", "pool", "server"].map(String::from).to_vec()),
            plant_leak: args.iter().any(|a| a == "--plant-leak"),
            model_dir: get("--model-dir").map(PathBuf::from),
        })
    }
}

/// The figure at `path`, if the child reported it as a number.
fn num(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter().fold(v, |cur, p| &cur[*p]).as_f64()
}

fn mib(b: Option<f64>) -> String {
    match b {
        Some(b) if b.is_finite() => format!("{:.1}", b / (1024.0 * 1024.0)),
        _ => "-".into(),
    }
}

/// True when `growth` is a number no larger than `limit`; a NaN growth is never within.
fn within(growth: f64, limit: f64) -> bool {
    growth <= limit
}

/// Returns (passed, problems) for one layer's figures. A figure the verdict needs but the child
/// did not report is a problem in itself, never a pass.
fn verdict(r: &serde_json::Value, cuda: bool) -> (bool, Vec<String>) {
    let mut problems = Vec::new();
    let mut need = |path: &[&str]| -> f64 {
        num(r, path).unwrap_or_else(|| {
            problems.push(format!("figure {} missing from the child's report", path.join(".")));
            f64::NAN
        })
    };
    let base_alloc = need(&["baseline", "allocator"]);
    let max_alloc = need(&["max_after", "allocator"]);
    let base_rss = need(&["baseline", "resident"]);
    let max_rss = need(&["max_after", "resident"]);
    let cuda_figures = cuda.then(|| {
        (need(&["baseline", "cuda_allocated"]), need(&["baseline", "cuda_reserved"]), need(&["after", "cuda_used"]) - need(&["baseline", "cuda_used"]))
    });
    if r["live_models_after"].as_u64() != Some(0) {
        problems.push(format!("{} model(s) still live after a cycle", r["live_models_after"]));
    }
    if r["weights_after"].as_u64() != Some(0) {
        problems.push(format!("{} weight bytes still accounted after a cycle", r["weights_after"]));
    }
    if r["offloaded_after"].as_u64() != Some(0) {
        problems.push(format!("{} host bytes of offloaded weights still held after a cycle", r["offloaded_after"]));
    }
    let alloc_growth = max_alloc - base_alloc;
    let alloc_limit = ALLOCATOR_SLACK_BYTES.max(ALLOCATOR_SLACK_FRACTION * base_alloc);
    if !within(alloc_growth, alloc_limit) {
        problems.push(format!("allocator in-use bytes grew {} MiB (limit {} MiB)", mib(Some(alloc_growth)), mib(Some(alloc_limit))));
    }
    let rss_growth = max_rss - base_rss;
    let peak_weights = num(r, &["peak", "weights"]).unwrap_or(0.0);
    let rss_limit = RESIDENT_SLACK_BYTES.max(RESIDENT_SLACK_FRACTION * base_rss).max(RESIDENT_SLACK_WEIGHT_FRACTION * peak_weights);
    if !within(rss_growth, rss_limit) {
        problems.push(format!("anonymous resident memory grew {} MiB (limit {} MiB)", mib(Some(rss_growth)), mib(Some(rss_limit))));
    }
    if let Some((base, base_res, used_growth)) = cuda_figures {
        for (key, base, what) in [("cuda_allocated_after", base, "CUDA allocated bytes"), ("cuda_reserved_after", base_res, "CUDA reserved bytes")] {
            let after = r[key].as_array().map(Vec::as_slice).unwrap_or_default();
            if after.len() < 2 {
                problems.push(format!("{key}: {} figure(s) reported, at least 2 needed (warm-up and a cycle)", after.len()));
            }
            for a in after.iter().skip(1) {
                if a.as_f64() != Some(base) {
                    problems.push(format!("{what} {a} after a cycle, baseline {base}"));
                }
            }
        }
        if !within(used_growth, CUDA_USED_SLACK_BYTES) {
            problems.push(format!("device used memory grew {} MiB", mib(Some(used_growth))));
        }
    }
    (problems.is_empty(), problems)
}

pub(crate) fn run(opts: &Options) -> Result<bool> {
    let reports = run_reports(opts)?;
    if opts.plant_leak {
        match planted_leak_caught(&reports) {
            Ok(()) => println!("leak-check: the planted leak was caught by the allocator and RSS figures, as planted"),
            Err(e) => println!("leak-check: the planted leak was NOT caught as planted: {e:#}"),
        }
    }
    Ok(reports.iter().all(|r| r["verdict"] == "ok"))
}

/// What the verdict says of the planted leak (embed-core's `planted-leak`: the largest weight
/// tensor of every model kept alive after cleanup, while every counter says it was freed).
const PLANTED_PROBLEMS: [&str; 2] = ["allocator in-use bytes grew", "anonymous resident memory grew"];

/// Whether `reports` (of a `--plant-leak` run) caught the planted leak the way it leaks: every
/// layer failed on allocator and anonymous-RSS growth, and on nothing else (the counters do not
/// see the leaked tensor, so a counter problem or a missing figure means something other than
/// the planted leak failed, and the proof would prove nothing).
pub(crate) fn planted_leak_caught(reports: &[serde_json::Value]) -> Result<()> {
    if reports.is_empty() {
        bail!("no layer was checked");
    }
    for r in reports {
        let layer = r["layer"].as_str().unwrap_or("?");
        let problems: Vec<&str> = r["problems"].as_array().map(|a| a.iter().filter_map(|p| p.as_str()).collect()).unwrap_or_default();
        if r["verdict"] != "leak" {
            bail!("layer {layer}: verdict {}, not leak", r["verdict"]);
        }
        for wanted in PLANTED_PROBLEMS {
            if !problems.iter().any(|p| p.starts_with(wanted)) {
                bail!("layer {layer}: no \"{wanted} …\" among its problems {problems:?}");
            }
        }
        if let Some(other) = problems.iter().find(|p| !PLANTED_PROBLEMS.iter().any(|w| p.starts_with(w))) {
            bail!("layer {layer}: failed for something the planted leak does not do: {other:?}");
        }
    }
    Ok(())
}

/// Runs the layers and returns each one's report, with its `verdict` and `problems`.
pub(crate) fn run_reports(opts: &Options) -> Result<Vec<serde_json::Value>> {
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
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
    print_header(opts.cycles, &opts.device);
    for layer in &opts.layers {
        let mut cmd = Command::new(&child);
        cmd.args([layer.as_str(), "--cycles", &opts.cycles.to_string(), "--device", &opts.device]).env_remove("LD_LIBRARY_PATH");
        if let Some(dir) = &opts.model_dir {
            cmd.env("EMBED_LEAK_MODEL_DIR", dir);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", child.display()))?;
        if !out.status.success() {
            bail!("leak-check child for {layer} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().context("child printed nothing")?;
        let r: serde_json::Value = serde_json::from_str(line).with_context(|| format!("child output {line:?}"))?;
        let mut r = judge_and_print(layer, r, cuda);
        r["layer"] = serde_json::json!(layer);
        results.push(r);
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({"device": opts.device, "cycles": opts.cycles, "planted_leak": opts.plant_leak, "layers": results}))?)?;
        println!("leak-check: wrote {}", path.display());
    }
    let all_ok = results.iter().all(|r| r["verdict"] == "ok");
    println!("leak-check: {}", if all_ok { "no leaks" } else { "LEAKS FOUND" });
    Ok(results)
}

fn print_header(cycles: impl std::fmt::Display, device: &str) {
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>12} {:>12}  verdict ({cycles} cycles on {device}, after a warm-up cycle)",
        "layer", "", "baseline MiB", "peak MiB", "after MiB", "leaked MiB"
    );
}

/// Runs [`verdict`] on one child's report, prints its rows of the table and its problems, and
/// returns the report with `verdict` ("ok" or "leak") and `problems` added.
fn judge_and_print(layer: &str, mut r: serde_json::Value, cuda: bool) -> serde_json::Value {
    let (ok, problems) = verdict(&r, cuda);
    let rows: Vec<(&str, &str)> = if cuda {
        vec![("alloc", "allocator"), ("anon", "resident"), ("cuda", "cuda_allocated"), ("cuda-res", "cuda_reserved")]
    } else {
        vec![("alloc", "allocator"), ("anon", "resident")]
    };
    for (i, (label, key)) in rows.iter().enumerate() {
        let base = num(&r, &["baseline", key]);
        let after = num(&r, &["after", key]);
        let peak = num(&r, &["peak", key]);
        let leaked = after.zip(base).map(|(a, b)| a - b);
        let v = if i == 0 { if ok { "ok" } else { "LEAK" } } else { "" };
        println!("{:<8} {label:>7} {:>12} {:>12} {:>12} {:>12}  {v}", if i == 0 { layer } else { "" }, mib(base), mib(peak), mib(after), mib(leaked));
    }
    for p in &problems {
        println!("         ! {p}");
    }
    r["verdict"] = serde_json::json!(if ok { "ok" } else { "leak" });
    r["problems"] = serde_json::json!(problems);
    r
}

/// `cargo xtask leak-verdict --device cpu|cuda FILE...`: the verdict of [`run`] on reports the
/// `leak_check` child wrote elsewhere (the GPU machine has no cargo: `scripts/gpu-check.sh`
/// carries this binary and runs it on the children's output files). Each file's last line is
/// one child's JSON report; a file without one fails. True when every layer passed.
pub(crate) fn verdict_files(args: &[String]) -> Result<bool> {
    let mut device = "cpu".to_string();
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().context("--device needs a value")?.clone(),
            f if f.starts_with("--") => bail!("leak-verdict: unknown option {f:?} (--device cpu|cuda FILE...)"),
            f => files.push(PathBuf::from(f)),
        }
    }
    if files.is_empty() {
        bail!("leak-verdict: no report files given (--device cpu|cuda FILE...)");
    }
    let cuda = device.starts_with("cuda");
    let cycles = |r: &serde_json::Value| r["cycles"].as_u64().map_or("?".to_string(), |c| c.to_string());
    let mut all_ok = true;
    let mut header = false;
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let report = text.lines().rev().find(|l| !l.trim().is_empty()).map(serde_json::from_str::<serde_json::Value>);
        let r = match report {
            Some(Ok(r)) if r.is_object() => r,
            Some(Ok(_)) | Some(Err(_)) => {
                println!("{name:<8} LEAK     ! {}: the last line is not a leak-check report", f.display());
                all_ok = false;
                continue;
            }
            None => {
                println!("{name:<8} LEAK     ! {}: empty (the leak-check child failed; see its log)", f.display());
                all_ok = false;
                continue;
            }
        };
        if !header {
            print_header(cycles(&r), &device);
            header = true;
        }
        let layer = r["layer"].as_str().map_or(name, String::from);
        // A report from a CUDA run is judged by the CUDA rules too, whatever --device said.
        let cuda = cuda || r["device"].as_str().is_some_and(|d| d.starts_with("cuda"));
        all_ok &= judge_and_print(&layer, r, cuda)["verdict"] == "ok";
    }
    println!("leak-verdict: {}", if all_ok { "no leaks" } else { "LEAKS FOUND" });
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> serde_json::Value {
        json!({
            "live_models_after": 0, "weights_after": 0, "offloaded_after": 0,
            "baseline": {"allocator": 100e6, "resident": 300e6, "cuda_allocated": 5.0, "cuda_reserved": 8.0, "cuda_used": 1e9},
            "max_after": {"allocator": 101e6, "resident": 310e6},
            "after": {"cuda_used": 1e9},
            "cuda_allocated_after": [7.0, 5.0, 5.0], "cuda_reserved_after": [9.0, 8.0, 8.0],
        })
    }

    #[test]
    fn flat_figures_pass() {
        assert_eq!(verdict(&report(), false), (true, vec![]));
        assert_eq!(verdict(&report(), true), (true, vec![]));
    }

    #[test]
    fn a_host_copy_left_after_a_cycle_fails() {
        let mut r = report();
        r["offloaded_after"] = json!(1 << 20);
        let (ok, problems) = verdict(&r, false);
        assert!(!ok && problems[0].contains("offloaded"), "{problems:?}");
    }

    #[test]
    fn growth_fails() {
        let mut r = report();
        r["max_after"]["allocator"] = json!(150e6);
        let (ok, problems) = verdict(&r, false);
        assert!(!ok && problems[0].contains("allocator"), "{problems:?}");
        let mut r = report();
        r["cuda_allocated_after"] = json!([7.0, 5.0, 6.0]);
        assert!(!verdict(&r, true).0);
    }

    #[test]
    fn resident_room_grows_with_the_model_but_not_to_a_leaked_table() {
        // 40 MiB of RSS growth: a leak for a MiniLM-sized model (24 MiB of room)...
        let mut r = report();
        r["max_after"]["resident"] = json!(300e6 + 40.0 * 1024.0 * 1024.0);
        r["peak"] = json!({"weights": 90e6});
        assert!(!verdict(&r, false).0);
        // ...within the 2 % room of a 2.4 GB model (48 MiB)...
        r["peak"] = json!({"weights": 2.4e9});
        assert!(verdict(&r, false).0);
        // ...where a leaked 620 MB embedding table is still caught.
        r["max_after"]["resident"] = json!(300e6 + 620e6);
        assert!(!verdict(&r, false).0);
    }

    #[test]
    fn a_missing_figure_fails_instead_of_passing_as_nan() {
        for (section, key) in [("baseline", "allocator"), ("max_after", "allocator"), ("baseline", "resident"), ("max_after", "resident")] {
            let mut r = report();
            r[section].as_object_mut().unwrap().remove(key);
            let (ok, problems) = verdict(&r, false);
            assert!(!ok, "{section}.{key} missing passed");
            assert!(problems.iter().any(|p| p.contains(&format!("{section}.{key} missing"))), "{problems:?}");
        }
        let mut r = report();
        r["after"].as_object_mut().unwrap().remove("cuda_used");
        assert!(!verdict(&r, true).0);
        let mut r = report();
        r["cuda_reserved_after"] = json!([]);
        assert!(!verdict(&r, true).0, "no CUDA figures after the cycles");
        let mut r = report();
        r["max_after"]["resident"] = json!(null);
        assert!(!verdict(&r, false).0);
    }

    /// `leak-verdict` (what scripts/gpu-check.sh runs on the GPU machine) on report files.
    #[test]
    fn report_files_get_the_same_verdict() {
        let dir = std::env::temp_dir().join(format!("leak-verdict-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let judge = |device: &str, files: &[String]| {
            let mut args = vec!["--device".to_string(), device.to_string()];
            args.extend(files.iter().cloned());
            verdict_files(&args).unwrap()
        };
        let mut cuda = report();
        cuda["device"] = json!("cuda:0");
        let flat = write("flat.json", format!("child log line\n{cuda}\n"));
        assert!(judge("cuda", std::slice::from_ref(&flat)));
        // Host allocator growth on a CUDA run (a pinned or host-side leak) fails.
        let mut host = cuda.clone();
        host["max_after"]["allocator"] = json!(100e6 + 256.0 * 1024.0 * 1024.0);
        let host = write("host.json", format!("{host}\n"));
        assert!(!judge("cuda", &[flat.clone(), host]));
        // One CUDA figure after the warm-up is not enough, even when --device says cpu.
        let mut short = cuda.clone();
        short["cuda_allocated_after"] = json!([5.0]);
        assert!(!judge("cpu", &[write("short.json", format!("{short}\n"))]));
        // A failed child leaves an empty file; that fails rather than being passed over.
        assert!(!judge("cuda", &[flat, write("empty.json", String::new())]));
        assert!(!judge("cuda", &[write("garbage.json", "not json\n".into())]));
        assert!(verdict_files(&["--device".into(), "cuda".into()]).is_err(), "no files given");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The planted-leak proof accepts the failure the planted leak causes, and no other.
    #[test]
    fn the_planted_leak_proof_wants_the_planted_failure() {
        let judged = |r: serde_json::Value| {
            let (ok, problems) = verdict(&r, false);
            let mut r = r;
            r["verdict"] = json!(if ok { "ok" } else { "leak" });
            r["problems"] = json!(problems);
            r["layer"] = json!("core");
            r
        };
        // A leaked tensor: allocator and RSS grow, every counter says freed.
        let mut planted = report();
        planted["max_after"]["allocator"] = json!(100e6 + 94e6);
        planted["max_after"]["resident"] = json!(300e6 + 94e6);
        assert!(planted_leak_caught(&[judged(planted.clone())]).is_ok());
        // A clean run is no proof.
        assert!(planted_leak_caught(&[judged(report())]).is_err());
        assert!(planted_leak_caught(&[]).is_err());
        // Failing for another reason is no proof either: a model the counters still see, a
        // missing figure, or only one of the two figures the leak moves.
        let mut counted = planted.clone();
        counted["live_models_after"] = json!(1);
        let err = planted_leak_caught(&[judged(counted)]).unwrap_err().to_string();
        assert!(err.contains("does not do") && err.contains("still live"), "{err}");
        let mut missing = planted.clone();
        missing["baseline"].as_object_mut().unwrap().remove("resident");
        assert!(planted_leak_caught(&[judged(missing)]).is_err());
        let mut rss_only = planted.clone();
        rss_only["max_after"]["allocator"] = json!(100e6);
        let err = planted_leak_caught(&[judged(rss_only)]).unwrap_err().to_string();
        assert!(err.contains("allocator in-use bytes grew"), "{err}");
        let mut allocator_only = planted;
        allocator_only["max_after"]["resident"] = json!(300e6);
        assert!(planted_leak_caught(&[judged(allocator_only)]).is_err());
    }

    #[test]
    fn zero_cycles_are_rejected() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Options::parse(&args(&["--cycles", "0"])).is_err());
        assert_eq!(Options::parse(&args(&["--cycles", "2"])).unwrap().cycles, 2);
        assert_eq!(Options::parse(&args(&[])).unwrap().cycles, 5);
    }
}
