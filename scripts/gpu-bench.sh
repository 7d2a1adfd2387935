#!/usr/bin/env bash
# The GPU benchmark: release embed-server against sentence-transformers on one GPU, one table.
#
# Two halves, because the accelerator machine has no cargo and no network:
#
#   scripts/gpu-bench.sh bundle     # HERE: release binaries, stripped, plus tokenizer and corpus
#   scripts/gpu-bench.sh run        # THERE (repo root, gpu-bench-bundle/ carried)
#
# With the session's device tool, together with the GPU checks:
#   run(command="bash scripts/gpu-check.sh run; bash scripts/gpu-bench.sh run",
#       carry=["gpu-bundle", "gpu-bench-bundle"], timeout_s=540)
# The run half needs python3 with torch, transformers, sentence-transformers and nvidia-smi;
# it writes random BERT-shaped models itself (bench/gpu_bench.py says what it measures).
# Environment: GPU_BENCH_SHAPES (default minilm,base,large), GPU_BENCH_ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

bundle() {
    rm -rf gpu-bench-bundle && mkdir -p gpu-bench-bundle/tokenizer
    cargo build -q --release -p embed-server --bin embed-server --example http_bench
    cp target/release/embed-server target/release/examples/http_bench gpu-bench-bundle/
    strip gpu-bench-bundle/embed-server gpu-bench-bundle/http_bench
    local model="${EMBED_MINILM_DIR:-.models/all-MiniLM-L6-v2}"
    for f in tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
        cp "$model/$f" gpu-bench-bundle/tokenizer/
    done
    cp testdata/corpus.txt gpu-bench-bundle/
    du -sh gpu-bench-bundle
}

run() {
    local out="${OUT:-gpu-results}/bench"
    mkdir -p "$out"
    local torch_lib
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt" || true
    python3 bench/gpu_bench.py gpu-bench-bundle "$out" \
        --shapes "${GPU_BENCH_SHAPES:-minilm,base,large}" --rounds "${GPU_BENCH_ROUNDS:-3}" 2>&1 | tee "$out/gpu-bench.log"
}

case "${1:-}" in
    bundle) bundle ;;
    run) run ;;
    *) echo "usage: $0 bundle|run" >&2; exit 2 ;;
esac
