"""sentence-transformers side of `cargo xtask bench`.

usage: st_throughput.py MODEL_DIR CORPUS ROUNDS THREADS [VECTORS_OUT.json]
Prints one JSON line per timed round, in the same format as embed-core's throughput example.
"""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

WARM_UP_TEXTS = 64  # embedded once before the timed rounds, on both sides of the comparison


def main() -> None:
    model_dir, corpus, rounds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(threads)
    texts = [line for line in open(corpus, encoding="utf-8").read().splitlines() if line.strip()]
    t0 = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    load_s = time.perf_counter() - t0
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    tokens = sum(len(ids) for ids in enc["input_ids"])
    model.encode(texts[:WARM_UP_TEXTS])  # the same warm-up as the Rust side (examples/throughput.rs)
    vectors = None
    for r in range(rounds):
        t = time.perf_counter()
        vectors = model.encode(texts, convert_to_numpy=True)
        s = time.perf_counter() - t
        print(json.dumps({
            "impl": "sentence-transformers", "dtype": "f32", "round": r, "texts": len(texts), "tokens": tokens,
            "seconds": round(s, 4), "texts_per_s": round(len(texts) / s, 1), "tokens_per_s": round(tokens / s, 1),
            "load_s": round(load_s, 3), "threads": torch.get_num_threads(),
        }), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(vectors.tolist(), f)


if __name__ == "__main__":
    main()
