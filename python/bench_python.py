"""`cargo xtask bench --python`: the `embed` Python package against sentence-transformers, in one
process, on the corpus of `cargo xtask bench` (testdata/corpus.txt), the same model, torch build,
thread count and warm-up (the first 64 texts once per side).

usage: bench_python.py MODEL_DIR CORPUS ROUNDS THREADS [OUT.json]

Per round, every side, in alternating order:
  sentence-transformers  model.encode(corpus, batch_size=32): the denominator of the Rust bench's ratios
  python batches of 32   service.embed_texts(batch) for each 32 texts of the corpus, in sequence
  python one call        service.embed_texts(corpus)
  rust batches of 32     the Rust API in this process (embed._native.rust_api_seconds), the same calls
  rust one call          the Rust API, one embed_texts over the corpus (what `cargo xtask bench` times)
Prints one JSON line per round and side, then medians and ratios; the worst cosine of the
batched Python vectors against sentence-transformers' is checked (>= 0.99999).
"""

import json
import statistics
import sys
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

import embed

BATCH = 32
WARM_UP_TEXTS = 64


def main() -> None:
    model_dir, corpus, rounds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out_path = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(threads)
    texts = [line for line in open(corpus, encoding="utf-8").read().splitlines() if line.strip()]
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    st = SentenceTransformer(model_dir, device="cpu")
    times = {k: [] for k in ["sentence-transformers", "python batches of 32", "python one call", "rust batches of 32", "rust one call"]}
    with embed.embedding_service_context(model_name=model_dir, threads=threads) as service:
        assert service.info.threads == threads, service.info
        st.encode(texts[:WARM_UP_TEXTS])
        service.embed_texts(texts[:WARM_UP_TEXTS])

        def run_st():
            t = time.perf_counter()
            v = st.encode(texts, batch_size=BATCH, convert_to_numpy=True)
            return time.perf_counter() - t, v

        def run_batches():
            t = time.perf_counter()
            v = [service.embed_texts(b) for b in batches]
            return time.perf_counter() - t, np.concatenate(v)

        def run_one():
            t = time.perf_counter()
            v = service.embed_texts(texts)
            return time.perf_counter() - t, v

        def rust(batch):
            # The Rust API in this process, no Python inside the timing: its own model (loaded
            # and warmed up outside the timed round) while the package's model stays loaded.
            def run():
                (s,) = embed._native.rust_api_seconds(model_dir, texts, 1, threads, batch)
                return s, None
            return run

        sides = [
            ("sentence-transformers", run_st), ("python batches of 32", run_batches), ("python one call", run_one),
            ("rust batches of 32", rust(BATCH)), ("rust one call", rust(None)),
        ]
        vectors = {}
        # Every side in every round, in alternating order, so that a busy spell of the machine
        # falls on all of them alike.
        for r in range(rounds):
            for name, fn in sides if r % 2 == 0 else sides[::-1]:
                s, v = fn()
                if v is not None:
                    vectors[name] = v
                times[name].append(s)
                print(json.dumps({"side": name, "round": r, "seconds": round(s, 4), "texts_per_s": round(len(texts) / s, 1)}), flush=True)

    a = vectors["python batches of 32"].astype(np.float64)
    b = vectors["sentence-transformers"].astype(np.float64)
    assert a.shape == b.shape == (len(texts), service.info.dimension if service.info else a.shape[1])
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    worst = float("nan") if np.isnan(cos).any() else float(cos.min())

    tps = {k: len(texts) / statistics.median(v) for k, v in times.items()}
    st_tps = tps["sentence-transformers"]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
    print(f"\n{model_dir}, CPU {cpu}, {threads} threads, {len(texts)} texts, medians of {rounds} rounds")
    print(f"{'side':<24} {'texts/s':>9} {'vs ST':>7}")
    for k, v in tps.items():
        print(f"{k:<24} {v:>9.1f} {v / st_tps:>6.2f}x")
    py_ratio = tps["python batches of 32"] / st_tps
    rust_ratio = tps["rust one call"] / st_tps
    print(f"python batches of 32 vs ST: {py_ratio:.2f}x; Rust in-process (one call) vs ST: {rust_ratio:.2f}x; "
          f"python's ratio is {100 * py_ratio / rust_ratio:.1f} % of Rust's (goal >= 90 %)")
    print(f"python batches of 32 over the Rust API's same calls: {100 * tps['python batches of 32'] / tps['rust batches of 32']:.1f} %")
    print(f"worst cosine, python batches of 32 vs sentence-transformers: {worst:.6f} (goal >= 0.99999)")
    if out_path:
        with open(out_path, "w") as f:
            json.dump({"cpu": cpu, "threads": threads, "texts": len(texts), "rounds": rounds, "texts_per_s": tps,
                       "python_ratio_vs_st": py_ratio, "rust_ratio_vs_st": rust_ratio,
                       "python_over_rust_ratio": py_ratio / rust_ratio, "worst_cosine_vs_st": worst}, f, indent=1)
    if not worst >= 0.99999:
        sys.exit(f"worst cosine {worst} below 0.99999")


if __name__ == "__main__":
    main()
