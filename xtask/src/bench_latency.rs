//! `cargo xtask bench --latency`: search queries beside bulk indexing, over HTTP, on this
//! machine's CPU, with the release `embed-server` serving all-MiniLM-L6-v2 in f32.
//!
//! One model, priorities on (the default): query latency idle (one client, single texts one
//! after another), the bulk throughput of 4 clients sending 256 texts per request with no
//! queries, then both at once. The same model with `--no-priorities` (every request in arrival
//! order, full-size batches): idle and both at once. Two copies of the model (bulk on one,
//! queries on the other): idle and both at once, and the CPU thread budget's peak use read from
//! `/metrics`. The load client (`examples/latency_bench`) checks every answer and each query's
//! vector against the idle run's for the same text (cosine >= 0.99999).
//!
//! Goals (issue 32): under the bulk load, query p99 at most 3x the idle p99 (one model and two
//! models), bulk throughput within 10 % of the run without queries, threads in use never above
//! the budget. Writes `bench-results/latency.json`; exits non-zero on a broken run or, after
//! reporting, a missed goal.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{cpu_model, flag, run_capture};
use crate::bench_server::server_url;
use crate::setup;

/// Query p99 under bulk load over the idle p99.
const P99_GOAL: f64 = 3.0;
/// Bulk throughput with queries over bulk throughput without.
const THROUGHPUT_GOAL: f64 = 0.9;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let seconds: f64 = flag(args, "--seconds").unwrap_or(30.0);
    let queries: usize = flag(args, "--queries").unwrap_or(200);
    // `--query-rate R`: the query client of the loaded phases sends R queries per second instead
    // of back to back, so runs of two schedulers are asked the same query load (see
    // `examples/latency_bench.rs`).
    let query_rate: Option<f64> = match args.iter().any(|a| a == "--query-rate") {
        true => Some(flag(args, "--query-rate").context("--query-rate needs a number of queries per second")?),
        false => None,
    };
    if query_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--query-rate must be a positive number of queries per second");
    }
    if !(seconds > 0.0) || queries == 0 {
        bail!("--seconds and --queries must be positive");
    }
    // `--no-layer-preemption`: the servers run without it (bulk passes cut to `bulk_batch_ms`
    // while queries are about, the behaviour before layer preemption), for a side-by-side run.
    let preempt = !args.iter().any(|a| a == "--no-layer-preemption");
    let extra: &[&str] = if preempt { &[] } else { &["--no-layer-preemption"] };
    let env = setup::run(&setup::Options { bench: true, models: Vec::new() })?;
    let root = &env.root;
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("bench --latency: building embed-server and latency_bench (release)");
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "embed-server", "--bin", "embed-server", "--example", "latency_bench"])
        .status()?;
    if !built.success() {
        bail!("building the latency bench failed");
    }
    let model = env.model_dir.display().to_string();
    let one = out_dir.join("latency-one.toml");
    std::fs::write(&one, format!("bind = \"127.0.0.1:0\"\npreload = [\"minilm\"]\n\n[models.minilm]\nsource = {model:?}\ndtype = \"f32\"\n"))?;
    let two = out_dir.join("latency-two.toml");
    std::fs::write(
        &two,
        format!(
            "bind = \"127.0.0.1:0\"\npreload = [\"bulk\", \"search\"]\nmax_models = 2\n\n[models.bulk]\nsource = {model:?}\ndtype = \"f32\"\n\n\
             [models.search]\nsource = {model:?}\ndtype = \"f32\"\n"
        ),
    )?;
    let corpus = root.join("testdata/corpus.txt");
    let expect = out_dir.join("latency-idle-vectors.json");
    let common = |phase: &str| -> Vec<String> {
        vec![
            corpus.display().to_string(),
            "--phase".into(),
            phase.into(),
            "--seconds".into(),
            seconds.to_string(),
            "--queries".into(),
            queries.to_string(),
        ]
    };
    let client = |url: &str, phase: &str, extra: &[&str]| -> Result<Value> {
        let mut cmd = Command::new(root.join("target/release/examples/latency_bench"));
        cmd.arg(url).args(common(phase)).args(extra);
        if let (Some(rate), "mixed") = (query_rate, phase) {
            cmd.arg("--query-rate").arg(rate.to_string());
        }
        let out = run_capture(&mut cmd)?;
        let line = out.lines().last().context("latency_bench printed nothing")?;
        let v: Value = serde_json::from_str(line).with_context(|| format!("latency_bench printed {line:?}"))?;
        println!("  {phase:<5} {v}");
        Ok(v)
    };
    let expect_s = expect.display().to_string();

    println!("bench --latency: one model, priorities on");
    let on = with_server(root, &one, extra, |url| {
        let idle = client(url, "idle", &["--write", &expect_s])?;
        let bulk = client(url, "bulk", &[])?;
        // The queries' passes' share of the machine in the mixed phase (a CPU pass holds all of
        // the budget, all cores here): the most bulk could keep beside them is the rest.
        let before = metric(url, "embed_compute_seconds_total{model=\"minilm\",priority=\"interactive\"}")?;
        let mut mixed = client(url, "mixed", &["--expect", &expect_s])?;
        let spent = metric(url, "embed_compute_seconds_total{model=\"minilm\",priority=\"interactive\"}")? - before;
        mixed["query_compute_share"] = json!(spent / mixed["seconds"].as_f64().unwrap_or(f64::NAN));
        Ok(json!({"idle": idle, "bulk": bulk, "mixed": mixed}))
    })?;
    println!("bench --latency: one model, --no-priorities (arrival order, full batches)");
    let off = with_server(root, &one, &["--no-priorities"], |url| {
        let idle = client(url, "idle", &[])?;
        let mixed = client(url, "mixed", &["--expect", &expect_s])?;
        Ok(json!({"idle": idle, "mixed": mixed}))
    })?;
    println!("bench --latency: two models, bulk on one, queries on the other");
    let pair = with_server(root, &two, extra, |url| {
        let models = ["--query-model", "search", "--bulk-model", "bulk"];
        let idle = client(url, "idle", &models)?;
        let mixed = client(url, "mixed", &[&models[..], &["--expect", &expect_s]].concat())?;
        Ok(json!({"idle": idle, "mixed": mixed, "cpu_thread_budget": metric(url, "embed_cpu_thread_budget")?,
                  "cpu_threads_peak": metric(url, "embed_cpu_threads_peak")?}))
    })?;

    let num = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    let figures = [
        ("idle p99 ms (priorities)", num(&on, &["idle", "p99_ms"])),
        ("bulk-only texts/s", num(&on, &["bulk", "bulk_texts_per_s"])),
        ("mixed p99 ms (priorities)", num(&on, &["mixed", "p99_ms"])),
        ("mixed bulk texts/s (priorities)", num(&on, &["mixed", "bulk_texts_per_s"])),
        ("idle p99 ms (no priorities)", num(&off, &["idle", "p99_ms"])),
        ("mixed p99 ms (no priorities)", num(&off, &["mixed", "p99_ms"])),
        ("mixed bulk texts/s (no priorities)", num(&off, &["mixed", "bulk_texts_per_s"])),
        ("two models idle p99 ms", num(&pair, &["idle", "p99_ms"])),
        ("two models mixed p99 ms", num(&pair, &["mixed", "p99_ms"])),
        ("two models mixed bulk texts/s", num(&pair, &["mixed", "bulk_texts_per_s"])),
        ("cpu thread budget", num(&pair, &["cpu_thread_budget"])),
    ];
    let cpu = cpu_model();
    let pace = query_rate.map_or("back to back".to_string(), |r| format!("{r} queries/s"));
    println!("\nlatency on {cpu}: all-MiniLM-L6-v2 f32, 4 bulk clients x 256 texts, 1 query client ({pace}), {seconds} s per loaded phase");
    for (name, v) in &figures {
        println!("  {name:<36} {v:>9.1}");
    }
    let share = num(&on, &["mixed", "query_compute_share"]);
    println!(
        "  the {:.0} queries' passes took {:.1} % of the machine's time in the mixed phase: bulk beside them can keep at most {:.2}x",
        num(&on, &["mixed", "queries"]),
        share * 1e2,
        1.0 - share
    );
    let broken = figures.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)).map(|(n, _)| *n);
    let peak = num(&pair, &["cpu_threads_peak"]);
    let budget = num(&pair, &["cpu_thread_budget"]);
    let goals = [
        ("one model: mixed p99 <= 3x idle p99", num(&on, &["mixed", "p99_ms"]) / num(&on, &["idle", "p99_ms"]), P99_GOAL, true),
        (
            "one model: bulk texts/s with queries >= 0.9x without",
            num(&on, &["mixed", "bulk_texts_per_s"]) / num(&on, &["bulk", "bulk_texts_per_s"]),
            THROUGHPUT_GOAL,
            false,
        ),
        ("two models: mixed p99 <= 3x idle p99", num(&pair, &["mixed", "p99_ms"]) / num(&pair, &["idle", "p99_ms"]), P99_GOAL, true),
        ("two models: CPU threads peak <= budget", peak / budget, 1.0, true),
    ];
    let mut missed = Vec::new();
    for (what, ratio, goal, at_most) in goals {
        let met = if at_most { ratio <= goal } else { ratio >= goal };
        println!("  {what}: {ratio:.2} (goal {}{goal}) {}", if at_most { "<= " } else { ">= " }, if met { "met" } else { "MISSED" });
        if !met {
            missed.push(what);
        }
    }
    println!(
        "  without priorities: mixed p99 {:.1} ms = {:.1}x idle",
        num(&off, &["mixed", "p99_ms"]),
        num(&off, &["mixed", "p99_ms"]) / num(&off, &["idle", "p99_ms"])
    );
    let verdict = match (broken, missed.is_empty()) {
        (Some(what), _) => format!("broken run: {what} is not a positive number"),
        (None, true) => "met".to_string(),
        (None, false) => format!("MISSED: {}", missed.join("; ")),
    };
    let json = json!({"cpu": cpu, "seconds": seconds, "layer_preemption": preempt, "query_rate": query_rate, "priorities": on, "no_priorities": off, "two_models": pair, "verdict": verdict});
    let name = match (preempt, query_rate) {
        (true, None) => "latency.json".to_string(),
        (false, None) => "latency-no-layer-preemption.json".to_string(),
        (true, Some(r)) => format!("latency-rate-{r}.json"),
        (false, Some(r)) => format!("latency-no-layer-preemption-rate-{r}.json"),
    };
    std::fs::write(out_dir.join(&name), serde_json::to_string_pretty(&json)?)?;
    if verdict != "met" {
        bail!("bench --latency: {verdict}; see bench-results/{name}");
    }
    Ok(())
}

/// The value of the sample named `name` (with its labels) in the server's `/metrics`.
fn metric(url: &str, name: &str) -> Result<f64> {
    let metrics = ureq::get(&format!("{url}/metrics")).call().context("scraping /metrics")?.into_string()?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// Starts the release server with `config` and `flags`, runs `f` with its URL, stops it.
fn with_server(root: &Path, config: &Path, flags: &[&str], f: impl FnOnce(&str) -> Result<Value>) -> Result<Value> {
    let mut server = Command::new(root.join("target/release/embed-server"))
        .arg("--config")
        .arg(config)
        .args(flags)
        .env("EMBED_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting embed-server")?;
    let result = server_url(&mut server).and_then(|url| f(&url));
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
    result
}
