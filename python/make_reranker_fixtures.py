"""Generates the decoder-reranker fixtures under testdata/fixtures/: a tiny random Qwen3-Reranker
(as Qwen/Qwen3-Reranker-0.6B: a Qwen3ForCausalLM with tied embeddings, scored by the logits of "yes"
and "no" at the last position) and its sequence-classification conversion (Qwen3ForSequenceClassification,
one label, score.weight = lm_head["yes"] - lm_head["no"], as the published *-seq-cls conversions do),
with the scores transformers gives for a fixed set of (instruction, query, document) items. The Rust
side loads both directories and must reproduce their reference.json.

usage (from the repository root, in the same venv as python/make_fixtures.py):

    .venv/bin/python python/make_reranker_fixtures.py            # rewrite the two directories
    .venv/bin/python python/make_reranker_fixtures.py --check    # regenerate in a temporary folder and compare

- qwen3-reranker: Qwen3ForCausalLM written by transformers' save_pretrained (weights `model.*`; the
  tied lm_head is not stored), 2 layers, hidden 64, 4 query heads sharing 2 key/value heads of 16.
  The tokenizer is make_fixtures' Qwen BPE trained with "yes" and "no" lines added (so both are
  single vocabulary entries, as in Qwen's), <|im_start|> / <|im_end|> special and <think> / </think>
  added tokens, and no post-processor (Qwen3-Reranker's tokenizer appends nothing). model_max_length
  MAX_LENGTH, so that long documents are truncated.
- qwen3-reranker-seq-cls: the same weights as Qwen3ForSequenceClassification (num_labels 1,
  pad_token_id <|endoftext|>), score.weight [1, 64] the difference of the two rows.

The reference follows the model card of Qwen/Qwen3-Reranker-0.6B: its prefix and suffix (encoded
without special tokens), `<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}` encoded with
truncation to MAX_LENGTH - len(prefix) - len(suffix) tokens, the default instruction where an item has
none, and score = exp(log_softmax([no, yes])[1]) of the last position's logits. Each item is scored
alone (no padding: positions from 0); the card's own batched call, which left-pads without position
ids, is run too and its largest difference printed (the shift a padded batch causes, which embed does
not reproduce). The seq-cls model's logit (sigmoid = score) must agree with the causal LM's yes - no
within 1e-5, and tokenizer.json alone must give the ids transformers' tokenizer gives.

`--check` rebuilds in a temporary folder and exits non-zero unless the JSON files are equal, the
weights within `--tolerance`, and the recomputed reference matches the committed one.
"""
import argparse
import json
import math
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the tokenizer-threading environment first)
import make_task_fixtures as mtf  # noqa: E402

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, Qwen3Config  # noqa: E402

OUT = mf.OUT
DECIMALS = mf.DECIMALS
MAX_LENGTH = 192
SEED = mf.SEED + 200
YES_NO_SCALE = 0.2
FIXTURES = ["qwen3-reranker", "qwen3-reranker-seq-cls"]

# From the model card of Qwen/Qwen3-Reranker-0.6B.
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

# make_task_fixtures' reranker pairs (long passages past the limit), then a few of them again under
# other instructions (one empty), so that the instruction visibly changes the score.
OTHER_INSTRUCTIONS = [
    ("Given a package name, find the package description that matches it", 0),
    ("Judge whether the document is about Python packaging", 2),
    ("", 5),
]


def items() -> list:
    out = [(None, q, t) for q, texts in mtf.PAIRS for t in texts]
    for instruction, group in OTHER_INSTRUCTIONS:
        q, texts = mtf.PAIRS[group]
        out += [(instruction, q, t) for t in texts]
    return out


def format_instruction(instruction, query, doc) -> str:
    # As the model card's format_instruction.
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(instruction=instruction, query=query, doc=doc)


# ---------------------------------------------------------------- building


def reranker_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(mf.QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(mf.training_lines() + ["yes", "no"] * 200, trainer=trainer)
    spec = json.loads(tok.to_str())
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(list(mf.QWEN_SPECIALS))
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False), AddedToken("</think>", special=False, normalized=False)])
    for word in ("yes", "no"):
        if tok.token_to_id(word) is None:
            raise SystemExit(f"make_reranker_fixtures: {word!r} is not a single token of the trained vocabulary")
    return tok


def causal_config(vocab: int, eos: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab, hidden_size=mf.DECODER_HIDDEN, intermediate_size=2 * mf.DECODER_HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_theta=1000000, tie_word_embeddings=True, attention_bias=False, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos, use_sliding_window=False, dtype="float32", architectures=["Qwen3ForCausalLM"],
    )


def write_tokenizer(tok: Tokenizer, directory: pathlib.Path) -> None:
    tok.save(str(directory / "tokenizer.json"))
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    mf.write_json(directory / "special_tokens_map.json", special)
    mf.write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "bos_token": None, "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "padding_side": "left", **special, "model_max_length": MAX_LENGTH,
    })


def build(directory_of, tmp: pathlib.Path) -> None:
    """Writes both fixtures (all files but reference.json): the causal LM with random weights drawn
    by make_fixtures.random_weights, then its seq-cls conversion."""
    tok = reranker_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    config = causal_config(tok.get_vocab_size(), eos)
    causal = transformers.Qwen3ForCausalLM(config)
    shapes = {k: p.shape for k, p in causal.named_parameters()}  # the tied lm_head appears once
    weights = mf.random_weights(shapes, torch.Generator().manual_seed(SEED))
    # The "yes" and "no" rows of the tied table scaled down: with the full spread every item scores
    # near 0 (the last token, always the suffix's, dominates the final state), which would leave
    # the scores too close together to show a ranking.
    for word in ("yes", "no"):
        weights["model.embed_tokens.weight"][tok.token_to_id(word)] *= YES_NO_SCALE
    missing, unexpected = causal.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"make_reranker_fixtures: missing {missing}, unexpected {unexpected}")
    assert causal.lm_head.weight.data_ptr() == causal.model.embed_tokens.weight.data_ptr()
    causal.eval()

    seq_config = Qwen3Config(**{**config.to_dict(), "architectures": ["Qwen3ForSequenceClassification"], "num_labels": 1})
    seq = transformers.Qwen3ForSequenceClassification(seq_config)
    lm = causal.lm_head.weight
    state = {k: v for k, v in causal.state_dict().items() if k.startswith("model.")}
    state["score.weight"] = (lm[tok.token_to_id("yes")] - lm[tok.token_to_id("no")]).unsqueeze(0).clone()
    missing, unexpected = seq.load_state_dict(state, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    seq.eval()

    for name, model in (("qwen3-reranker", causal), ("qwen3-reranker-seq-cls", seq)):
        directory = directory_of(name)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        write_tokenizer(tok, directory)
        model.save_pretrained(str(directory))
        for f in directory.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
        gen_cfg = directory / "generation_config.json"
        if gen_cfg.exists():
            gen_cfg.unlink()


# ---------------------------------------------------------------- references


def versions() -> str:
    return f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}, CPU, float32"


def compute(causal_dir: pathlib.Path, seq_dir: pathlib.Path) -> dict:
    """Both references: the model card's scoring on the causal LM, each item alone, and
    Qwen3ForSequenceClassification on the conversion. Returns {fixture name: reference}."""
    tokenizer = AutoTokenizer.from_pretrained(str(causal_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(causal_dir)).eval()
    seq = AutoModelForSequenceClassification.from_pretrained(str(seq_dir)).eval()
    assert model.config.tie_word_embeddings and seq.config.num_labels == 1
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    body_max = MAX_LENGTH - len(prefix_tokens) - len(suffix_tokens)

    raw = Tokenizer.from_file(str(causal_dir / "tokenizer.json"))
    if raw.encode(PREFIX, add_special_tokens=False).ids != prefix_tokens or raw.encode(SUFFIX, add_special_tokens=False).ids != suffix_tokens:
        raise SystemExit("make_reranker_fixtures: tokenizer.json and transformers' tokenizer encode the prefix or suffix differently")

    def process_inputs(texts):
        # The model card's process_inputs.
        inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False, max_length=body_max)
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        return tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_LENGTH)

    def compute_logits(inputs):
        # The model card's compute_logits, also returning yes - no.
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        stacked = torch.stack([false_vector, true_vector], dim=1)
        scores = torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp()
        return scores, true_vector - false_vector

    all_items = items()
    texts = [format_instruction(i, q, d) for i, q, d in all_items]
    rows, worst_seq, worst_tokens = [], 0.0, 0
    with torch.no_grad():
        for (instruction, query, doc), text in zip(all_items, texts):
            inputs = process_inputs([text])
            ids = inputs["input_ids"][0].tolist()
            body = raw.encode(text).ids
            truncated = len(body) > body_max
            if ids != prefix_tokens + body[:body_max] + suffix_tokens:
                raise SystemExit(f"make_reranker_fixtures: {text[:40]!r}: tokenizer.json gives other ids than transformers")
            score, logit = compute_logits(inputs)
            seq_logit = seq(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[0, 0]
            worst_seq = mf.worst_of([worst_seq, abs(float(seq_logit) - float(logit[0])), abs(float(torch.sigmoid(seq_logit)) - float(score[0]))])
            worst_tokens = max(worst_tokens, len(ids))
            rows.append({
                "instruction": instruction, "query": query, "text": doc,
                "logit": float(logit[0]), "score": float(score[0]), "seq_cls_logit": float(seq_logit),
                "token_count": len(ids), "truncated": truncated,
            })
        # The card's batched call, left-padded without position ids: not what embed reproduces.
        batched, _ = compute_logits(process_inputs(texts))
    alone = torch.tensor([r["score"] for r in rows])
    shift = float((batched - alone).abs().max())
    n_trunc = sum(r["truncated"] for r in rows)
    spread = (min(r["score"] for r in rows), max(r["score"] for r in rows))
    print(
        f"make_reranker_fixtures: {len(rows)} items, {n_trunc} truncated, longest {worst_tokens} tokens (limit {MAX_LENGTH}); "
        f"scores {spread[0]:.3f} .. {spread[1]:.3f}; seq-cls vs causal LM: max abs difference {worst_seq:.1e}; "
        f"the card's left-padded batch vs each item alone: max abs score difference {shift:.1e}"
    )
    if not worst_seq <= 1e-5:
        raise SystemExit("make_reranker_fixtures: the seq-cls conversion and the causal LM disagree")
    assert len(rows) >= 40 and n_trunc >= 3, (len(rows), n_trunc)
    assert worst_tokens == MAX_LENGTH, worst_tokens
    # Ranking: within each (instruction, query) group no two scores closer than 1e-3, so an
    # implementation within 1e-4 ranks them the same.
    groups = {}
    for r in rows:
        groups.setdefault((r["instruction"], r["query"]), []).append(r["score"])
    gap = min((abs(a - b) for g in groups.values() for i, a in enumerate(g) for b in g[i + 1:]), default=math.inf)
    print(f"make_reranker_fixtures: {len(groups)} groups; smallest score gap within a group {gap:.1e}")
    assert gap >= 1e-3, gap

    common = {
        "max_length": MAX_LENGTH, "prefix": PREFIX, "suffix": SUFFIX, "default_instruction": DEFAULT_INSTRUCTION,
        "yes_token_id": token_true_id, "no_token_id": token_false_id,
    }
    r = lambda x: round(x, DECIMALS)  # noqa: E731
    return {
        "qwen3-reranker": {
            "kind": "reranker",
            "model": f"random Qwen3ForCausalLM (python/make_reranker_fixtures.py, seed {SEED})",
            "reference": f"Qwen3-Reranker model card scoring, each item alone, {versions()}",
            **common,
            "items": [
                {k: v for k, v in {**row, "logits": [r(row["logit"])], "score": r(row["score"])}.items() if k not in ("logit", "seq_cls_logit")}
                for row in rows
            ],
        },
        "qwen3-reranker-seq-cls": {
            "kind": "reranker",
            "model": f"the qwen3-reranker fixture converted to Qwen3ForSequenceClassification (python/make_reranker_fixtures.py)",
            "reference": f"Qwen3ForSequenceClassification, each item alone, {versions()}",
            **common,
            "items": [
                {k: v for k, v in {**row, "logits": [r(row["seq_cls_logit"])], "score": r(1 / (1 + math.exp(-row["seq_cls_logit"])))}.items() if k not in ("logit", "seq_cls_logit")}
                for row in rows
            ],
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare with the committed fixtures")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted element difference (--check)")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args()
    torch.manual_seed(0)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        directory_of = (lambda n: tmp / n) if args.check else (lambda n: args.out / n)
        build(directory_of, tmp)
        refs = compute(directory_of(FIXTURES[0]), directory_of(FIXTURES[1]))
        for name in FIXTURES:
            directory, committed, new = directory_of(name), args.out / name, refs[name]
            if not args.check:
                (directory / "reference.json").write_text(json.dumps(new, ensure_ascii=False), encoding="utf-8")
                (directory / "reference.json").chmod(0o644)
                print(f"make_reranker_fixtures: wrote {directory} ({len(new['items'])} items)")
                continue
            if not (committed / "reference.json").exists():
                print(f"make_reranker_fixtures: {name}: no committed fixture at {committed}", file=sys.stderr)
                failed = True
                continue
            old = json.loads((committed / "reference.json").read_text(encoding="utf-8"))
            (directory / "reference.json").write_text("{}", encoding="utf-8")  # compared below, not as a file
            problems = mf.check_files(directory, committed, args.tolerance)
            ref_problems, worst = mtf.check_reference(new, old, args.tolerance)
            problems += ref_problems
            print(f"make_reranker_fixtures: {name}: worst max-abs difference to the committed reference: {worst:g} (tolerance {args.tolerance:g})")
            for problem in problems:
                print(f"make_reranker_fixtures: {name}: {problem}", file=sys.stderr)
            print(f"make_reranker_fixtures: {name}: {'MISMATCH' if problems else 'matches'} {committed}")
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
