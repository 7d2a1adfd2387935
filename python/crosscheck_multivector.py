"""The multi-vector fixtures' references against the packages themselves.

`python/make_multivector_fixtures.py` writes the references of `testdata/fixtures/xlm-roberta-m3`
(BGE-M3's layout) and `testdata/fixtures/bert-colbert` (PyLate's) from FlagEmbedding's and PyLate's
computations written out with transformers, because neither package imports beside the main venv's
transformers 5 and sentence-transformers 6. This script loads the same fixture directories with
FlagEmbedding's `BGEM3FlagModel` and PyLate's `models.ColBERT` (in the venv of
`python/requirements-crosscheck.txt`, which `cargo xtask test` makes) and requires:

- BGE-M3: dense cosine >= 0.99999 per text, lexical weights with the same token ids and values
  within 1e-5, ColBERT vectors cosine >= 0.99999 each, `colbert_score` within 1e-5 per document;
- PyLate: every query and document vector cosine >= 0.99999, `colbert_scores` within 1e-4.

Exits non-zero when one fails, or when nothing was compared.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    # NaN in, NaN out: a `>=` bound on it fails.
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def worst_min(values) -> float:
    values = list(values)
    if not values or any(v != v for v in values):
        return float("nan")
    return min(values)


def check_m3(directory: pathlib.Path) -> list:
    from FlagEmbedding import BGEM3FlagModel

    ref = json.loads((directory / "reference.json").read_text())
    texts = [i["text"] for i in ref["items"]]
    model = BGEM3FlagModel(str(directory), use_fp16=False, devices=["cpu"])
    out = model.encode(texts, batch_size=8, max_length=ref["max_length"], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    problems, dense, sparse, colbert = [], [], [], []
    for i, item in enumerate(ref["items"]):
        dense.append(cosine(item["dense"], out["dense_vecs"][i]))
        theirs = {int(k): float(v) for k, v in out["lexical_weights"][i].items()}
        ours = {int(k): float(v) for k, v in item["lexical"]}
        if set(theirs) != set(ours):
            problems.append(f"m3 text {i}: lexical token ids {sorted(theirs)} (FlagEmbedding) vs {sorted(ours)} (reference)")
        sparse.extend(abs(theirs[k] - ours[k]) for k in ours if k in theirs)
        vecs = out["colbert_vecs"][i]
        if len(vecs) != len(item["colbert"]):
            problems.append(f"m3 text {i}: {len(vecs)} ColBERT vectors (FlagEmbedding) vs {len(item['colbert'])} (reference)")
        colbert.extend(cosine(a, b) for a, b in zip(vecs, item["colbert"]))
    scores = []
    for r in ref["rerank"]:
        only_colbert = {"max_length": ref["max_length"], "return_dense": False, "return_sparse": False, "return_colbert_vecs": True}
        q = model.encode([r["query"]], **only_colbert)["colbert_vecs"][0]
        docs = model.encode(r["documents"], **only_colbert)["colbert_vecs"]
        if len(docs) != len(r["scores"]):
            problems.append(f"m3 rerank {r['query']!r}: {len(docs)} documents encoded for {len(r['scores'])} scores")
        scores.extend(abs(float(model.colbert_score(q, d)) - want) for d, want in zip(docs, r["scores"]))
    worst_dense, worst_colbert = worst_min(dense), worst_min(colbert)
    worst_sparse, worst_score = -worst_min(-x for x in sparse), -worst_min(-x for x in scores)
    print(
        f"crosscheck: BGEM3FlagModel vs xlm-roberta-m3's reference: {len(dense)} texts, dense worst cosine {worst_dense:.7f}; "
        f"lexical weights worst abs {worst_sparse:.2e}; {len(colbert)} ColBERT vectors, worst cosine {worst_colbert:.7f}; "
        f"colbert_score over {len(scores)} documents worst abs {worst_score:.2e}"
    )
    if not (worst_dense >= 0.99999):
        problems.append(f"m3 dense worst cosine {worst_dense}")
    if not (worst_sparse <= 1e-5):
        problems.append(f"m3 lexical weights worst abs {worst_sparse}")
    if not (worst_colbert >= 0.99999):
        problems.append(f"m3 ColBERT worst cosine {worst_colbert}")
    if not (worst_score <= 1e-5):
        problems.append(f"m3 colbert_score worst abs {worst_score}")
    return problems


def check_colbert(directory: pathlib.Path) -> list:
    from pylate import models
    from pylate import scores as pylate_scores

    ref = json.loads((directory / "reference.json").read_text())
    model = models.ColBERT(model_name_or_path=str(directory), device="cpu")
    problems, cosines = [], []
    for side, is_query in (("query", True), ("document", False)):
        items = ref[side]
        out = model.encode([i["text"] for i in items], is_query=is_query, batch_size=4)
        if len(out) != len(items):
            problems.append(f"colbert {side}: {len(out)} encodings for {len(items)} texts")
        for i, (theirs, item) in enumerate(zip(out, items)):
            if len(theirs) != len(item["vectors"]):
                problems.append(f"colbert {side} {i}: {len(theirs)} vectors (PyLate) vs {len(item['vectors'])} (reference)")
            cosines.extend(cosine(a, b) for a, b in zip(theirs, item["vectors"]))
    diffs = []
    for r in ref["rerank"]:
        q = model.encode([r["query"]], is_query=True)
        docs = model.encode(r["documents"], is_query=False)
        if len(docs) != len(r["scores"]):
            problems.append(f"colbert rerank {r['query']!r}: {len(docs)} documents encoded for {len(r['scores'])} scores")
        diffs.extend(abs(float(pylate_scores.colbert_scores(q, [d])[0][0]) - want) for d, want in zip(docs, r["scores"]))
    worst, worst_score = worst_min(cosines), -worst_min(-x for x in diffs)
    print(
        f"crosscheck: PyLate ColBERT vs bert-colbert's reference: {len(cosines)} query and document vectors, worst cosine {worst:.7f}; "
        f"colbert_scores over {len(diffs)} documents worst abs {worst_score:.2e}"
    )
    if not (worst >= 0.99999):
        problems.append(f"colbert worst cosine {worst}")
    if not (worst_score <= 1e-4):
        problems.append(f"colbert_scores worst abs {worst_score}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m3", type=pathlib.Path, default=ROOT / "testdata/fixtures/xlm-roberta-m3")
    parser.add_argument("--colbert", type=pathlib.Path, default=ROOT / "testdata/fixtures/bert-colbert")
    args = parser.parse_args()
    problems = check_m3(args.m3) + check_colbert(args.colbert)
    for p in problems:
        print(f"crosscheck: FAIL {p}", file=sys.stderr)
    if problems:
        return 1
    print("crosscheck: the committed references are what FlagEmbedding and PyLate compute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
