"""GPU benchmark: embed-server against sentence-transformers on one GPU, side by side.

Run by `scripts/gpu-bench.sh run` on a machine with a GPU, torch, transformers and
sentence-transformers (no cargo, no network). For each BERT shape (MiniLM-L6, base, large;
random weights at BERT's init scale, MiniLM's tokenizer) it writes a sentence-transformers
directory, then measures on short texts (testdata/corpus.txt) and long ones (~300 tokens):

* sentence-transformers f32 and f16, in-process, at its best batch size;
* the release embed-server in f32, f16 and bf16, plus f16 with `EMBED_CUDA_ATTENTION=sdpa`
  (libtorch's own attention dispatch: the behaviour before the packed path), over loopback
  HTTP with base64 vectors from 8 and 32 clients (`http_bench`);
* GPU utilisation during each run (nvidia-smi every 100 ms), the worst per-text cosine of each
  server run against sentence-transformers f32 (NaN counts as a failure), and CUDA memory after
  the model is unloaded.

Prints one table and the goals of the GPU speed issue; writes everything to OUT/gpu-bench.json.
Exits 1 if a goal is missed or a vector disagrees.

usage: gpu_bench.py BUNDLE_DIR OUT_DIR [--shapes minilm,base,large,qwen3-0.6b] [--rounds N]

`qwen3-0.6b` (not in the default set) is the decoder issue's Qwen3-Embedding-0.6B-shaped model:
the server's unset dtype then runs it in bf16 (`DType::preferred`), beside the explicit ones.

`GPU_BENCH_DEVICE=cpu` is a dry run of the plumbing on a machine without a GPU (f16 becomes
bf16, no utilisation figures); its numbers mean nothing.
"""
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np
import torch

SHAPES = {
    # name: (hidden, layers, heads, intermediate)
    "minilm": (384, 6, 12, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}
# Cosine floors per dtype against sentence-transformers f32 (random weights are harsher on
# half precision than trained ones: no outlier-free structure to lean on).
COSINE_FLOOR = {"f32": 0.99999, "f16": 0.999, "bf16": 0.99}
DEVICE = os.environ.get("GPU_BENCH_DEVICE", "cuda")


def real_dtype(dtype):
    """What a dry run on the CPU runs instead of f16 (unsupported there)."""
    return "bf16" if DEVICE == "cpu" and dtype == "f16" else dtype


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(*a):
    print(*a, flush=True)


def write_model(shape, tokenizer_dir, out_dir):
    if shape == "qwen3-0.6b":
        # The decoder issue's Qwen3-Embedding-0.6B shape, with the qwen3 fixture's tokenizer,
        # prompts and last-token pooling (bench/decoder_shape.py).
        import pathlib
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import decoder_shape

        root = pathlib.Path(__file__).resolve().parent.parent
        decoder_shape.make(root / "testdata/fixtures/qwen3", pathlib.Path(out_dir))
        return
    from transformers import BertConfig, BertModel

    hidden, layers, heads, inter = SHAPES[shape]
    vocab = sum(1 for _ in open(os.path.join(tokenizer_dir, "vocab.txt"), encoding="utf-8"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=512)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(os.path.join(tokenizer_dir, f), out_dir)
    os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
    json.dump({"word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
              open(os.path.join(out_dir, "1_Pooling/config.json"), "w"))
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
              open(os.path.join(out_dir, "modules.json"), "w"))
    json.dump({"max_seq_length": 512, "do_lower_case": False}, open(os.path.join(out_dir, "sentence_bert_config.json"), "w"))
    json.dump({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
              open(os.path.join(out_dir, "config_sentence_transformers.json"), "w"))


def long_texts(short, tokenizer_dir, count=250, tokens=300):
    """Consecutive corpus lines joined until each text has about `tokens` tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    tok.no_truncation()  # MiniLM's tokenizer.json truncates at 128
    out, i = [], 0
    while len(out) < count:
        parts = []
        while True:
            parts.append(short[i % len(short)])
            i += 1
            if len(tok.encode(" ".join(parts)).ids) >= tokens:
                break
        out.append(" ".join(parts))
    return out


class GpuSampler:
    """nvidia-smi utilisation samples (percent) while a run lasts."""

    def __enter__(self):
        self.path = f"/tmp/gpu-util-{os.getpid()}.txt"
        self.f = open(self.path, "w")
        self.p = None
        if shutil.which("nvidia-smi") is None:
            return self
        self.p = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                   "-lms", "100"], stdout=self.f, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.terminate()
            self.p.wait()
        self.f.close()
        vals = [float(l) for l in open(self.path).read().split() if l.strip().replace(".", "").isdigit()]
        self.mean = statistics.mean(vals) if vals else float("nan")


def st_run(model_dir, dtype, texts, batch_sizes, rounds):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=DEVICE)
    if real_dtype(dtype) == "f16":
        model.half()
    elif real_dtype(dtype) == "bf16":
        model.to(torch.bfloat16)
    best = None
    for bs in batch_sizes:
        model.encode(texts[: bs * 2], batch_size=bs)  # warm-up, as the server gets one
        secs, util = [], []
        for _ in range(rounds):
            with GpuSampler() as g:
                sync()
                t = time.perf_counter()
                vecs = model.encode(texts, batch_size=bs, convert_to_tensor=True).float().cpu().numpy()
                sync()
                secs.append(time.perf_counter() - t)
            util.append(g.mean)
        rate = len(texts) / statistics.median(secs)
        if best is None or rate > best["texts_per_s"]:
            best = {"texts_per_s": rate, "batch_size": bs, "gpu_util": statistics.median(util),
                    "vectors": vecs.astype(np.float32)}
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return best


def worst_cosine(a, b):
    """Smallest per-row cosine; NaN anywhere (or a shape mismatch) gives NaN."""
    if a.shape != b.shape:
        return float("nan")
    num = (a.astype(np.float64) * b).sum(1)
    den = np.linalg.norm(a.astype(np.float64), axis=1) * np.linalg.norm(b.astype(np.float64), axis=1)
    cos = num / den
    return float("nan") if np.isnan(cos).any() else float(cos.min())


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


class Server:
    def __init__(self, bundle, model_dir, dtype, port, out, attention=None):
        env = dict(os.environ)
        if attention:
            env["EMBED_CUDA_ATTENTION"] = attention
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(out, "w")
        self.p = subprocess.Popen(
            [os.path.join(bundle, "embed-server"), "--bind", f"127.0.0.1:{port}", "--model", f"m={model_dir}",
             "--device", DEVICE, "--dtype", real_dtype(dtype), "--max-concurrent", "1024", "--max-inputs", "1024"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"embed-server exited with {self.p.returncode}; see {out}")
            try:
                if get(self.url + "/ready")[0] == 200:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"embed-server not ready after 180 s; see {out}")

    def cuda_after_unload(self):
        req = urllib.request.Request(self.url + "/models/m/unload", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=60).read()
        time.sleep(0.5)
        figures = {}
        for line in get(self.url + "/metrics")[1].splitlines():
            for key in ("embed_memory_cuda_allocated_bytes", "embed_memory_cuda_reserved_bytes"):
                if line.startswith(key):
                    figures[key.split("_")[3]] = int(float(line.split()[-1]))
        return figures

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


def http_run(bundle, url, texts_file, clients, per_request, rounds, vectors_out):
    with GpuSampler() as g:
        out = subprocess.run([os.path.join(bundle, "http_bench"), url, texts_file, "--clients", str(clients),
                              "--per-request", str(per_request), "--rounds", str(rounds), "--vectors", vectors_out],
                             capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"http_bench failed: {out.stderr[-2000:]}")
    rates = [json.loads(l)["texts_per_s"] for l in out.stdout.splitlines() if l.startswith("{")]
    return {"texts_per_s": statistics.median(rates), "rounds": rates, "gpu_util": g.mean}


def main():
    bundle, out = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    shapes = ["minilm", "base", "large"]
    rounds = 3
    while args:
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--shapes":
            shapes = value.split(",")
        elif flag == "--rounds":
            rounds = int(value)
    os.makedirs(out, exist_ok=True)
    tok_dir = os.path.join(bundle, "tokenizer")
    short = [l for l in open(os.path.join(bundle, "corpus.txt"), encoding="utf-8").read().splitlines() if l.strip()]
    texts = {"short": short, "long": long_texts(short, tok_dir, count=int(os.environ.get("GPU_BENCH_LONG", "250")))}
    files = {}
    for k, v in texts.items():
        files[k] = os.path.join(out, f"{k}.txt")
        open(files[k], "w", encoding="utf-8").write("\n".join(v) + "\n")
    per_request = {"short": 32, "long": 8}
    st_batches = {"short": [64, 256], "long": [16, 64]}
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (dry run)"
    log(f"device: {name}; torch {torch.__version__}; "
        f"texts: {len(short)} short, {len(texts['long'])} long")

    results, port = [], 18080
    for shape in shapes:
        model_dir = os.path.join(out, f"model-{shape}")
        write_model(shape, tok_dir, model_dir)
        row = {length: {"shape": shape, "length": length} for length in texts}
        for length, t in texts.items():
            for dtype in ("f32", "f16"):
                r = st_run(model_dir, dtype, t, st_batches[length], rounds)
                row[length][f"st_{dtype}"] = r
                log(f"{shape:6} {length:5} ST {dtype}: {r['texts_per_s']:8.0f}/s (batch {r['batch_size']}, GPU {r['gpu_util']:.0f} %)")
        for dtype, attention in (("f32", None), ("f16", None), ("bf16", None), ("f16", "sdpa")):
            key = f"server_{dtype}" + (f"_{attention}" if attention else "")
            port += 1
            srv = Server(bundle, model_dir, dtype, port, os.path.join(out, f"server-{shape}-{key}.log"), attention)
            try:
                for length in texts:
                    runs = {}
                    for clients in (8, 32):
                        vec_file = os.path.join(out, f"vectors-{shape}-{key}-{length}-{clients}.f32")
                        r = http_run(bundle, srv.url, files[length], clients, per_request[length], rounds, vec_file)
                        ref = row[length]["st_f32"]["vectors"]
                        got = np.fromfile(vec_file, dtype=np.float32)
                        got = got.reshape(ref.shape) if got.size == ref.size else got.reshape(1, -1)
                        r["worst_cosine"] = worst_cosine(got, ref)
                        os.remove(vec_file)
                        runs[clients] = r
                        log(f"{shape:6} {length:5} server {key:14} {clients:2} clients: {r['texts_per_s']:8.0f}/s "
                            f"(GPU {r['gpu_util']:.0f} %, worst cosine {r['worst_cosine']:.6f})")
                    best = max(runs.values(), key=lambda r: r["texts_per_s"])
                    row[length][key] = {"clients": {str(c): r for c, r in runs.items()}, "texts_per_s": best["texts_per_s"],
                                        "gpu_util": best["gpu_util"],
                                        "worst_cosine": min((r["worst_cosine"] for r in runs.values()),
                                                            key=lambda c: -1.0 if math.isnan(c) else c)}
                mem = srv.cuda_after_unload()
                for length in texts:
                    row[length][key]["cuda_after_unload"] = mem
            finally:
                srv.stop()
        shutil.rmtree(model_dir)
        for length in texts:
            for dtype in ("f32", "f16"):
                row[length][f"st_{dtype}"].pop("vectors")
            results.append(row[length])

    report(results, out)


def report(results, out):
    json.dump(results, open(os.path.join(out, "gpu-bench.json"), "w"), indent=1)
    cols = [("ST f32", "st_f32"), ("ST f16", "st_f16"), ("srv f32", "server_f32"), ("srv f16", "server_f16"),
            ("srv bf16", "server_bf16"), ("f16 sdpa", "server_f16_sdpa")]
    head = f"| {'model':7} | {'texts':5} | " + " | ".join(f"{c:>8}" for c, _ in cols) + \
        " | f16/STf16 | bf16/STf16 | f16/f32 | GPU% f16 | cos f16 | cos bf16 | CUDA alloc after unload |"
    log("\n" + head)
    log("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    misses = []
    for r in results:
        v = {k: r[k]["texts_per_s"] for _, k in cols}
        f16_st, bf16_st, f16_f32 = v["server_f16"] / v["st_f16"], v["server_bf16"] / v["st_f16"], v["server_f16"] / v["server_f32"]
        mem = r["server_f16"].get("cuda_after_unload", {}).get("allocated", "?")
        log(f"| {r['shape']:7} | {r['length']:5} | " + " | ".join(f"{v[k]:8.0f}" for _, k in cols) +
            f" | {f16_st:9.2f} | {bf16_st:10.2f} | {f16_f32:7.2f} | {r['server_f16']['gpu_util']:8.0f} |"
            f" {r['server_f16']['worst_cosine']:.6f} | {r['server_bf16']['worst_cosine']:.6f} | {mem} |")
        need = 2.0 if r["length"] == "short" else 1.3
        if f16_st < need or bf16_st < need:
            misses.append(f"{r['shape']} {r['length']}: server f16/bf16 vs ST f16 {f16_st:.2f}/{bf16_st:.2f}, goal {need}")
        if r["shape"] in ("base", "large") and f16_f32 < 1.5:
            misses.append(f"{r['shape']} {r['length']}: server f16 / server f32 {f16_f32:.2f}, goal 1.5")
        if r["length"] == "long" and not r["server_f16"]["gpu_util"] >= 80:
            misses.append(f"{r['shape']} long: GPU {r['server_f16']['gpu_util']:.0f} % busy in f16, goal 80 %")
        for dtype in ("f32", "f16", "bf16"):
            c = r[f"server_{dtype}"]["worst_cosine"]
            if not c >= COSINE_FLOOR[dtype]:
                misses.append(f"{r['shape']} {r['length']}: server {dtype} worst cosine {c} < {COSINE_FLOOR[dtype]}")
    log("")
    for m in misses:
        log(f"MISSED: {m}")
    log("gpu-bench: " + ("all goals met" if not misses else f"{len(misses)} goal(s) missed"))
    sys.exit(1 if misses else 0)


if __name__ == "__main__":
    main()
