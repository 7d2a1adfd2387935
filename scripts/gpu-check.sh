#!/usr/bin/env bash
# The GPU checks: CUDA tests of embed-core and embed-pool and the CUDA leak check, in one short run.
#
# Two halves, because the accelerator machine has no cargo and no network:
#
#   scripts/gpu-check.sh bundle     # HERE: build the binaries, strip them into gpu-bundle/ (< 64 MiB)
#   scripts/gpu-check.sh run        # THERE (repo root, gpu-bundle/ carried): run everything
#
# With the session's device tool that is one call, e.g.
#   run(command="bash scripts/gpu-check.sh run", carry=["gpu-bundle"], timeout_s=420)
# The run half links against the machine's own torch 2.11.0 (found through its python), needs
# no model download (it writes a MiniLM-shaped random model), and writes its results to $OUT
# (or gpu-results/) as JSON and logs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Path of the test binary of integration test $2 in package $1 (built if needed).
test_binary() {
    cargo test -q -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        print(m["executable"])' "$2" | tail -1
}

bundle() {
    rm -rf gpu-bundle && mkdir -p gpu-bundle
    cargo build -q -p embed-server --example leak_check
    # The leak verdict is xtask's own code (`cargo xtask leak-verdict`), carried as a binary.
    cargo build -q -p xtask
    cp "$(test_binary embed-core cuda)" gpu-bundle/core-cuda-tests
    cp "$(test_binary embed-core cuda_attention)" gpu-bundle/core-cuda-attention-tests
    cp "$(test_binary embed-pool pool_cuda)" gpu-bundle/pool-cuda-tests
    cp target/debug/examples/leak_check gpu-bundle/leak_check
    cp target/debug/xtask gpu-bundle/xtask
    strip gpu-bundle/core-cuda-tests gpu-bundle/core-cuda-attention-tests gpu-bundle/pool-cuda-tests gpu-bundle/leak_check \
        gpu-bundle/xtask
    du -sh gpu-bundle
    local bytes
    bytes=$(du -sb gpu-bundle | cut -f1)
    if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
        echo "gpu-bundle is $bytes bytes: over the carry limit" >&2
        exit 1
    fi
}

run() {
    local out="${OUT:-gpu-results}"
    mkdir -p "$out"
    local torch_lib
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$out/device.txt"
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee -a "$out/device.txt" || true
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export EMBED_TEST_CUDA=1
    # The Qwen3-Embedding-0.6B-shaped random model of the decoder test (1.2 GB: outside $OUT).
    export EMBED_DECODER_SHAPED_DIR="${TMPDIR:-/tmp}/qwen3-0.6b-shaped"
    python3 bench/decoder_shape.py make testdata/fixtures/qwen3 "$EMBED_DECODER_SHAPED_DIR"
    local status=0
    # The CUDA tests are #[ignore]d so that CPU CI does not report them as passes; here they run
    # with --ignored, and a run in which no test ran counts as a failure.
    local t
    for t in core-cuda-tests core-cuda-attention-tests pool-cuda-tests; do
        ./gpu-bundle/$t --ignored --test-threads=1 --nocapture 2>&1 | tee "$out/$t.log" || status=1
        if ! grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$out/$t.log"; then
            echo "gpu-check: $t ran no test or failed" | tee -a "$out/$t.log"
            status=1
        fi
    done
    local model="$out/minilm-shaped"
    ./gpu-bundle/leak_check --write-model "$model"
    for layer in core scoped pool server; do
        EMBED_LEAK_MODEL_DIR="$model" ./gpu-bundle/leak_check "$layer" --cycles 5 --device cuda \
            > "$out/leak-$layer.json" 2> "$out/leak-$layer.log" || status=1
        tail -n 1 "$out/leak-$layer.json"
    done
    rm -rf "$model"
    # The verdicts: `cargo xtask leak-verdict`, the code `cargo xtask leak-check` judges with
    # (xtask/src/leak_check.rs: models, weights and offloaded host copies left; allocator and
    # anonymous-RSS growth; CUDA allocated/reserved back to the baseline after every cycle, with
    # at least two figures; device used memory). An empty report (a failed child) fails too.
    ./gpu-bundle/xtask leak-verdict --device cuda "$out"/leak-{core,scoped,pool,server}.json \
        | tee "$out/leak-verdict.txt" || status=1
    # Self-test: the same verdict on a copy of the core report with 256 MiB of host allocator
    # growth planted (a host or pinned-memory leak) must fail, and for that reason.
    local planted="$out/leak-selftest-planted.json"
    python3 - "$out/leak-core.json" "$planted" <<'PY' || status=1
import json, sys
lines = open(sys.argv[1]).read().strip().splitlines()
r = json.loads(lines[-1]) if lines else {}
r.setdefault("max_after", {})["allocator"] = (r.get("baseline", {}).get("allocator") or 0) + 256 * 1024 * 1024
open(sys.argv[2], "w").write(json.dumps(r) + "\n")
PY
    if ./gpu-bundle/xtask leak-verdict --device cuda "$planted" > "$out/leak-selftest.txt"; then
        echo "gpu-check: the leak verdict PASSED a report with planted allocator growth" | tee -a "$out/leak-selftest.txt"
        status=1
    elif ! grep -q "allocator in-use bytes grew" "$out/leak-selftest.txt"; then
        echo "gpu-check: the leak verdict failed the planted report, but not on allocator growth" | tee -a "$out/leak-selftest.txt"
        status=1
    else
        echo "gpu-check: leak verdict self-test: planted allocator growth caught"
    fi
    echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
    exit $status
}

case "${1:-}" in
    bundle) bundle ;;
    run) run ;;
    *) echo "usage: $0 bundle|run" >&2; exit 2 ;;
esac
