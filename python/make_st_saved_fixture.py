"""Writes testdata/fixtures/mpnet-st-saved/: the mpnet fixture loaded by sentence-transformers and
written back by its own `SentenceTransformer.save`, as a user of sentence-transformers 6 writes
a model: modules.json with the `sentence_transformers.base.modules.*` /
`sentence_transformers.sentence_transformer.modules.*` class paths, `1_Pooling/config.json` as
`{"embedding_dimension", "pooling_mode": "mean", "include_prompt"}`, a `2_Normalize` folder, a
`sentence_bert_config.json` without `max_seq_length` (the limit is the tokenizer's
`model_max_length`), no special_tokens_map.json. reference.json holds what the saved directory
embeds with sentence-transformers (CPU, float32) for the mpnet fixture's texts.

usage (from the repository root):

    .venv/bin/python python/make_st_saved_fixture.py            # rewrite the fixture
    .venv/bin/python python/make_st_saved_fixture.py --check    # regenerate in memory and compare
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "testdata/fixtures/mpnet"
OUT = ROOT / "testdata/fixtures/mpnet-st-saved"
# What the saved directory must look like for the fixture to test sentence-transformers 6's format.
EXPECTED_POOLING = {"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True}


def write(out: pathlib.Path) -> dict:
    model = SentenceTransformer(str(SOURCE), device="cpu")
    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))
    # The model card is generated prose (with versions and dates), not something a loader reads.
    (out / "README.md").unlink(missing_ok=True)
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    pooling = json.loads((out / "1_Pooling/config.json").read_text(encoding="utf-8"))
    if pooling != EXPECTED_POOLING:
        raise SystemExit(f"make_st_saved_fixture: sentence-transformers wrote 1_Pooling/config.json as {pooling}, not the 6.x format")
    types = [m["type"] for m in json.loads((out / "modules.json").read_text(encoding="utf-8"))]
    if not all(t.startswith(("sentence_transformers.base.", "sentence_transformers.sentence_transformer.")) for t in types):
        raise SystemExit(f"make_st_saved_fixture: modules.json names {types}, not the 6.x module paths")
    # The reference: the saved directory, loaded afresh.
    saved = SentenceTransformer(str(out), device="cpu")
    items = json.loads((SOURCE / "reference.json").read_text(encoding="utf-8"))["items"]
    texts = [it["text"] for it in items]
    with torch.no_grad():
        vectors = saved.encode(texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    ids = saved.tokenizer(texts, truncation=True, max_length=saved.max_seq_length)["input_ids"]
    if len(vectors) != len(texts) or len(ids) != len(texts):
        raise SystemExit("make_st_saved_fixture: sentence-transformers returned a different number of rows")
    return {
        "model": "the mpnet fixture written back by SentenceTransformer.save (python/make_st_saved_fixture.py)",
        "family": "mpnet",
        "reference": f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, CPU, float32",
        "max_seq_length": saved.max_seq_length,
        "items": [
            {"text": t, "token_count": len(i), "embedding": [round(float(x), 7) for x in v]}
            for t, i, v in zip(texts, ids, vectors)
        ],
    }


def compare(new_dir: pathlib.Path, new: dict, tolerance: float) -> list:
    # The same file comparison as the family fixtures' (reference.json is compared below).
    (new_dir / "reference.json").write_text("{}", encoding="utf-8")
    problems = [p for p in mf.check_files(new_dir, OUT, tolerance) if not p.startswith("reference.json")]
    old = json.loads((OUT / "reference.json").read_text(encoding="utf-8"))
    if len(old["items"]) != len(new["items"]):
        return problems + [f"{len(new['items'])} items computed, {len(old['items'])} committed"]
    for i, (a, b) in enumerate(zip(new["items"], old["items"])):
        if (a["text"], a["token_count"]) != (b["text"], b["token_count"]) or len(a["embedding"]) != len(b["embedding"]):
            problems.append(f"item {i}: text, token count or dimension differs")
            continue
        diff = mf.worst_of(abs(x - y) for x, y in zip(a["embedding"], b["embedding"]))
        # `not <=` so that a NaN counts as a mismatch.
        if not diff <= tolerance:
            problems.append(f"item {i}: max abs difference {diff:g} > {tolerance:g}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare with the committed fixture")
    p.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args()
    if not args.check:
        new = write(OUT)
        (OUT / "reference.json").write_text(json.dumps(new, ensure_ascii=False), encoding="utf-8")
        print(f"make_st_saved_fixture: wrote {OUT} ({len(new['items'])} texts)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "mpnet-st-saved"
        new = write(out)
        problems = compare(out, new, args.tolerance)
    for line in problems:
        print(f"make_st_saved_fixture: {line}", file=sys.stderr)
    print(f"make_st_saved_fixture: {'MISMATCH' if problems else 'matches'} {OUT}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
