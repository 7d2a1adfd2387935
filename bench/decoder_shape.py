"""The Qwen3-Embedding-0.6B-shaped side of `cargo xtask bench --decoder`.

usage:
  decoder_shape.py make FIXTURE_DIR OUT_DIR
      Writes a sentence-transformers directory shaped as Qwen/Qwen3-Embedding-0.6B (28 layers,
      hidden 1024, 16 query heads and 8 key/value heads of 128, intermediate 3072, vocabulary
      151 669, q/k RMSNorm, tied embeddings, bf16 weights as the Hub checkpoint stores them) with
      random weights. Tokenizer, prompts, last-token pooling and Normalize come from the small
      qwen3 fixture (FIXTURE_DIR), so no download is needed; max_seq_length is 8192.
  decoder_shape.py shard MODEL_DIR OUT_DIR SHARDS
      Copies MODEL_DIR to OUT_DIR with model.safetensors split into SHARDS files
      (model-0000i-of-0000N.safetensors, tensors in name order, about equal bytes each) and a
      model.safetensors.index.json (metadata.total_size, weight_map), the layout the Hub serves
      Qwen3-Embedding-4B/8B and e5-mistral-7b in. One shard's tensors are in memory at a time.
  decoder_shape.py st MODEL_DIR TEXTS THREADS VECTORS_OUT.json
      Embeds the texts (one per line) with sentence-transformers in f32 on CPU, once to warm up
      and once timed; prints one JSON line and writes the vectors.
"""
import json
import math
import pathlib
import shutil
import sys
import time

import torch

SHAPE = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151669,
    "max_position_embeddings": 32768,
}


def make(fixture: pathlib.Path, out: pathlib.Path) -> None:
    from transformers import Qwen3Config, Qwen3Model

    if (out / "model.safetensors").exists():
        print(f"{out}: already there")
        return
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # Everything but the fixture's own weights, reference and top-level config (1_Pooling keeps its config.json).
    top = {"model.safetensors", "reference.json", "config.json"}
    shutil.copytree(fixture, tmp, ignore=lambda d, names: [n for n in names if pathlib.Path(d) == fixture and n in top])
    config = json.loads((fixture / "config.json").read_text())
    config.update(SHAPE)
    config["initializer_range"] = 0.02
    config["torch_dtype"] = "bfloat16"
    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(**{k: v for k, v in config.items() if k != "architectures"}))
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    # save_pretrained rewrites config.json; keep the Hub's architecture name and dtype.
    saved = json.loads((tmp / "config.json").read_text())
    saved["architectures"] = config["architectures"]
    (tmp / "config.json").write_text(json.dumps(saved, indent=2))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}, indent=2))
    params = sum(p.numel() for p in model.parameters())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{out}: {params / 1e6:.0f} M parameters")


def shard(model_dir: pathlib.Path, out: pathlib.Path, shards: int) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (out / "model.safetensors.index.json").exists():
        print(f"{out}: already there")
        return
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=lambda d, names: [n for n in names if pathlib.Path(d) == model_dir and n in {"model.safetensors", "reference.json"}])
    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        names = sorted(f.keys())
        sizes = {n: f.get_slice(n).get_shape() for n in names}
        dtypes = {n: f.get_slice(n).get_dtype() for n in names}
        width = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8}
        nbytes = {n: width[dtypes[n]] * math.prod(sizes[n]) for n in names}
        total = sum(nbytes.values())
        groups, filled = [[] for _ in range(shards)], 0
        g = 0
        for i, n in enumerate(names):
            if g + 1 < shards and groups[g] and (filled >= total * (g + 1) // shards or len(names) - i == shards - g - 1):
                g += 1
            filled += nbytes[n]
            groups[g].append(n)
        weight_map = {}
        for i, group in enumerate(groups):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: f.get_tensor(n) for n in group}, tmp / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in group})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{out}: {shards} shards, {total / 1e6:.0f} MB")


def st(model_dir: str, texts_path: str, threads: int, vectors_out: str) -> None:
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    texts = [line for line in open(texts_path, encoding="utf-8").read().splitlines() if line.strip()]
    t0 = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu", model_kwargs={"torch_dtype": torch.float32})
    load_s = time.perf_counter() - t0
    model.encode(texts[:8])
    t = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
    s = time.perf_counter() - t
    print(json.dumps({"impl": "sentence-transformers", "dtype": "f32", "texts": len(texts), "seconds": round(s, 4),
                      "load_s": round(load_s, 3), "threads": torch.get_num_threads()}), flush=True)
    with open(vectors_out, "w") as f:
        json.dump(vectors.tolist(), f)


def main() -> None:
    if sys.argv[1] == "make":
        make(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
    elif sys.argv[1] == "shard":
        shard(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "st":
        st(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
