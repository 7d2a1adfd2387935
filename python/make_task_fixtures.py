"""Generates four more fixtures under testdata/fixtures/: tiny random models for the tasks other than
sentence embeddings (reranking, classification, sparse retrieval), each with what sentence-transformers
or transformers computes for a fixed set of inputs. The Rust side loads every directory and must
reproduce its reference.json.

usage (from the repository root, in the same venv as python/make_fixtures.py):

    .venv/bin/python python/make_task_fixtures.py            # rewrite the four directories
    .venv/bin/python python/make_task_fixtures.py --check    # regenerate in a temporary folder and compare
    .venv/bin/python python/make_task_fixtures.py --only bert-splade [--check]   # one fixture (repeatable)

The tokenizers and config.json fields come from make_fixtures.py (imported, not copied): the same
WordPiece tokenizer as the `bert` fixture and the same Unigram one as `xlm-roberta`, hidden size 32,
4 heads, 2 layers, random float32 weights drawn in name order from a seeded generator (norm weights
and biases random too, so that a wrong or missing weight shows). The model limit is 64 tokens
(max_position_embeddings 64, or 66 for XLM-RoBERTa whose positions start at pad + 1, and
model_max_length 64 in tokenizer_config.json), so that a few inputs get truncated.

- bert-reranker: as cross-encoder/ms-marco-MiniLM-L-6-v2. BertForSequenceClassification with one
  label, written by transformers' save_pretrained (weights `bert.*`, `bert.pooler.dense.*`,
  `classifier.*`), tokenizer files as the bert fixture, no modules.json (cross-encoders have none).
  reference.json: query/passage pairs with the raw logit and the sigmoid score CrossEncoder gives.
- xlm-roberta-reranker: as BAAI/bge-reranker-base. XLMRobertaForSequenceClassification with one label
  (`roberta.*`, `classifier.dense.*`, `classifier.out_proj.*`), RoBERTa pair template
  `<s> A </s> </s> B </s>`. Same pairs.
- bert-classifier: BertForSequenceClassification with three labels (negative / neutral / positive),
  single texts, the three logits.
- bert-splade: as naver/splade-cocondenser-ensembledistil. BertForMaskedLM with tied word embeddings,
  put together as a sentence-transformers SparseEncoder (MLMTransformer + SpladePooling, max, relu)
  and written by SparseEncoder.save, so modules.json, sentence_bert_config.json and 1_SpladePooling/
  are what sentence-transformers 6.2 writes. reference.json: the non-zero entries of
  max over tokens of log(1 + relu(MLM logits)). The MLM output bias is drawn around -SPLADE_BIAS_SHIFT
  instead of 0 so that, as with a real SPLADE model, most vocabulary entries stay zero.

Pairs are truncated as CrossEncoder does it: the tokenizer's "longest_first" strategy, at the
tokenizer's model_max_length (min of tokenizer_config.json's model_max_length and config.json's
max_position_embeddings). One pair has a long query as well as a long passage, where "longest_first"
and "only_second" give different tokens.

Every reference is computed on CPU in float32 twice, and the script stops unless both agree within
1e-5: rerankers by CrossEncoder.predict and by a plain transformers forward of each pair alone;
the classifier by a plain forward and by CrossEncoder.predict; SPLADE by SparseEncoder.encode and
by AutoModelForMaskedLM plus the pooling written out here. It also checks that tokenizer.json alone
(what a Rust loader reads) gives the token ids and type ids that transformers' tokenizer gives.

`--check` rebuilds in a temporary folder and exits non-zero unless the JSON files are equal, the
weights within `--tolerance`, and the recomputed reference matches the committed one (texts, token
counts, truncation flags and non-zero indices exactly, values within `--tolerance`).
"""
import argparse
import json
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the tokenizer-threading environment first)

import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import CrossEncoder, SparseEncoder  # noqa: E402
from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

OUT = mf.OUT
DECIMALS = mf.DECIMALS
MAX_LENGTH = 64
LAYERS = 2
# Each fixture's seed; make_fixtures.py's families use SEED + 0..13. bert-splade's is the one of
# SEED + 103..124 that leaves the largest gap between zero and the nearest per-text max MLM logit
# (1.4e-3; about half the seeds leave one within 1e-4, where another implementation's rounding could turn a
# zero entry non-zero or the reverse).
SEEDS = {"bert-reranker": mf.SEED + 100, "xlm-roberta-reranker": mf.SEED + 101, "bert-classifier": mf.SEED + 102, "bert-splade": mf.SEED + 124}
SPLADE_MARGIN = 1e-3
LABELS = ["negative", "neutral", "positive"]
SPLADE_BIAS_SHIFT = 2.5

CORPUS = mf.CORPUS.read_text(encoding="utf-8").splitlines()


def line(n: int) -> str:
    """Line n of testdata/corpus.txt, counting from 1 (as grep -n does)."""
    return CORPUS[n - 1]


def lines(first: int, last: int) -> str:
    return " ".join(CORPUS[first - 1 : last])


# Queries with three or four passages each, from corpus.txt (line numbers as grep -n gives them).
# Passages made of several consecutive lines are past the 64-token limit and get truncated.
PAIRS = [
    ("How do I send HTTP requests?", [line(6), line(3), line(15), lines(1, 8)]),
    ("yaml parser", [line(15), line(17), line(14)]),
    ("validate data with type hints", [line(16), line(22), line(26), lines(16, 24)]),
    ("syntax highlighting", [line(17), line(18), line(19)]),
    ("array computing", [line(20), line(13), line(10)]),
    ("command line interface toolkit", [line(19), line(579), line(944), line(757)]),
    ("Amazon S3 file transfers", [line(25), line(1), line(10)]),
    ("Convert strings between snake case and camel case 🐫", [line(524), line(667), line(1845)]),
    ("object detection and segmentation", [line(1243), line(2276), line(20)]),
    ("pretty printer", [line(1845), line(944), line(685)]),
    ("asynchronous networking framework", [line(24), line(12), line(27), lines(24, 31)]),
    ("DataHub metadata ingestion — CLI", [line(2101), line(462), line(1378)]),
    # Long query and long passage: "longest_first" cuts both, "only_second" only the passage.
    (line(2101), [lines(2276, 2280)]),
]

# Single texts from make_fixtures.TEXTS: short and long, code, accents, CJK, emoji, literal
# special-token strings; the long ones (TEXTS[36:]) are past 64 tokens.
CLASSIFIER_TEXTS = mf.TEXTS[::2]
SPLADE_TEXTS = mf.TEXTS[1::2]

FIXTURES = ["bert-reranker", "xlm-roberta-reranker", "bert-classifier", "bert-splade"]


# ---------------------------------------------------------------- building


_TOKENIZERS = {}


def tokenizer_files(family: str) -> tuple:
    """(tokenizer, special_tokens_map, tokenizer_config) as make_fixtures' `bert` or `xlm-roberta`
    family has them, with model_max_length MAX_LENGTH."""
    if family not in _TOKENIZERS:
        tok, _, special, tok_cfg, *_ = (mf.fam_bert if family == "bert" else mf.fam_xlm_roberta)()
        _TOKENIZERS[family] = (tok, special, {**tok_cfg, "model_max_length": MAX_LENGTH})
    tok, special, tok_cfg = _TOKENIZERS[family]
    return Tokenizer.from_str(tok.to_str()), dict(special), dict(tok_cfg)


def model_config(name: str, vocab: int) -> dict:
    if name == "xlm-roberta-reranker":
        # Positions start at pad + 1 = 2: 66 position embeddings for 64 tokens.
        return mf.bert_like_config(
            "xlm-roberta", vocab, LAYERS, 1, MAX_LENGTH + 2, 1,
            architecture="XLMRobertaForSequenceClassification", bos_token_id=0, eos_token_id=2,
            position_embedding_type="absolute", num_labels=1,
        )
    extra = {"num_labels": 1}
    architecture = "BertForSequenceClassification"
    if name == "bert-classifier":
        extra = {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
    elif name == "bert-splade":
        architecture, extra = "BertForMaskedLM", {"tie_word_embeddings": True}
    return mf.bert_like_config(
        "bert", vocab, LAYERS, 0, MAX_LENGTH, 2, architecture=architecture, position_embedding_type="absolute", **extra
    )


def random_model(name: str, cfg: dict):
    """The transformers model for cfg with random weights: every parameter (tied ones once) drawn
    by make_fixtures.random_weights from the fixture's seeded generator."""
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "torch_dtype")}
    config = AutoConfig.for_model(cfg["model_type"], **fields, dtype="float32")
    config.architectures = cfg["architectures"]
    cls = getattr(transformers, cfg["architectures"][0])
    model = cls(config)
    shapes = {k: p.shape for k, p in model.named_parameters()}  # tied parameters appear once
    weights = mf.random_weights(shapes, torch.Generator().manual_seed(SEEDS[name]))
    if name == "bert-splade":
        weights["cls.predictions.bias"] -= SPLADE_BIAS_SHIFT
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise SystemExit(f"make_task_fixtures: {name}: missing {missing}, unexpected {unexpected}")
    if name == "bert-splade":
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
        assert torch.equal(model.cls.predictions.decoder.bias, weights["cls.predictions.bias"])
    return model.eval()


def build(name: str, directory: pathlib.Path, tmp: pathlib.Path) -> None:
    family = "xlm-roberta" if name.startswith("xlm-roberta") else "bert"
    tok, special, tok_cfg = tokenizer_files(family)
    cfg = model_config(name, tok.get_vocab_size())
    model = random_model(name, cfg)
    if directory.exists():
        shutil.rmtree(directory)
    target = directory
    if name == "bert-splade":
        target = tmp / f"{name}.base"  # the plain model directory; SparseEncoder.save writes the fixture
        if target.exists():
            shutil.rmtree(target)
    target.mkdir(parents=True)
    tok.save(str(target / "tokenizer.json"))
    mf.write_json(target / "tokenizer_config.json", tok_cfg)
    mf.write_json(target / "special_tokens_map.json", special)
    model.save_pretrained(str(target))
    if name == "bert-splade":
        vocab = model.config.vocab_size
        transformer = MLMTransformer(str(target))
        encoder = SparseEncoder(
            modules=[transformer, SpladePooling(pooling_strategy="max", activation_function="relu", embedding_dimension=vocab)],
            device="cpu",
        )
        encoder.save(str(directory), create_model_card=False)
    for f in directory.rglob("*"):
        if f.is_file():
            f.chmod(0o644)


# ---------------------------------------------------------------- references


def rounded(values) -> list:
    return [round(float(x), DECIMALS) for x in values]


def versions() -> str:
    return (
        f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, CPU, float32"
    )


def raw_tokenizer(directory: pathlib.Path, truncate: bool = True) -> Tokenizer:
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    if truncate:
        raw.enable_truncation(MAX_LENGTH, strategy="longest_first")
    return raw


def untruncated_lengths(directory: pathlib.Path, inputs: list) -> list:
    raw = raw_tokenizer(directory, truncate=False)
    return [len(raw.encode(*x).ids) if isinstance(x, tuple) else len(raw.encode(x).ids) for x in inputs]


def check_tokens(name: str, hf_tok, raw: Tokenizer, inputs: list) -> list:
    """transformers' tokenizer (as sentence-transformers calls it) and tokenizer.json alone must give
    the same ids and type ids; returns the transformers encodings."""
    enc = hf_tok(inputs, truncation="longest_first", max_length=MAX_LENGTH)
    for i, item in enumerate(inputs):
        mine = raw.encode(*item) if isinstance(item, tuple) else raw.encode(item)
        ids = list(enc["input_ids"][i])
        types = list(enc["token_type_ids"][i]) if "token_type_ids" in enc else [0] * len(ids)
        if ids != mine.ids or types != mine.type_ids:
            raise SystemExit(f"make_task_fixtures: {name}: {item!r}: transformers {ids} {types} != tokenizer.json {mine.ids} {mine.type_ids}")
    return enc


def compute_reranker(name: str, directory: pathlib.Path) -> dict:
    ce = CrossEncoder(str(directory), device="cpu")
    assert ce.max_seq_length == MAX_LENGTH, ce.max_seq_length
    assert ce.num_labels == 1 and isinstance(ce.activation_fn, torch.nn.Sigmoid), (ce.num_labels, ce.activation_fn)
    pairs = [(q, t) for q, texts in PAIRS for t in texts]
    logits = ce.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    scores = ce.predict(pairs, convert_to_tensor=True)
    assert logits.shape == (len(pairs),), logits.shape
    if not float((torch.sigmoid(logits) - scores).abs().max()) <= 1e-6:
        raise SystemExit(f"make_task_fixtures: {name}: CrossEncoder's default score is not sigmoid(logit)")

    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    enc = check_tokens(name, hf_tok, raw_tokenizer(directory), pairs)
    full = untruncated_lengths(directory, pairs)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    worst, worst_second, differ = 0.0, 0.0, []
    with torch.no_grad():
        for i, (q, t) in enumerate(pairs):
            # Each pair alone, unpadded: "longest_first" as CrossEncoder, and "only_second".
            x = hf_tok(q, t, truncation="longest_first", max_length=MAX_LENGTH, return_tensors="pt")
            worst = mf.worst_of([worst, abs(float(model(**x).logits[0, 0]) - float(logits[i]))])
            y = hf_tok(q, t, truncation="only_second", max_length=MAX_LENGTH, return_tensors="pt")
            if x["input_ids"].shape == y["input_ids"].shape and torch.equal(x["input_ids"], y["input_ids"]):
                worst_second = mf.worst_of([worst_second, abs(float(model(**y).logits[0, 0]) - float(logits[i]))])
            else:
                differ.append(i)
    print(
        f"make_task_fixtures: {name}: CrossEncoder vs plain transformers, each pair alone: max abs logit difference "
        f"{worst:.1e} (longest_first), {worst_second:.1e} (only_second, the pairs where it gives the same tokens); "
        f"only_second tokenises pair(s) {differ} differently"
    )
    if not mf.worst_of([worst, worst_second]) <= 1e-5:
        raise SystemExit(f"make_task_fixtures: {name}: CrossEncoder and the plain transformers forward disagree")
    assert differ == [len(pairs) - 1], differ  # only the long-query pair
    truncated = [n > MAX_LENGTH for n in full]
    print(f"make_task_fixtures: {name}: {len(pairs)} pairs, {sum(truncated)} truncated; logits {float(logits.min()):.2f} .. {float(logits.max()):.2f}")
    assert sum(truncated) >= 3, truncated
    return {
        "kind": "reranker",
        "model": f"random {name} fixture (python/make_task_fixtures.py, seed {SEEDS[name]})",
        "reference": f"CrossEncoder.predict, {versions()}",
        "max_length": MAX_LENGTH,
        "truncation": "longest_first",
        "items": [
            {
                "query": q,
                "text": t,
                "logits": rounded([logits[i]]),
                "score": round(float(scores[i]), DECIMALS),
                "token_count": len(enc["input_ids"][i]),
                "truncated": truncated[i],
            }
            for i, (q, t) in enumerate(pairs)
        ],
    }


def compute_classifier(name: str, directory: pathlib.Path) -> dict:
    texts = CLASSIFIER_TEXTS
    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    enc = check_tokens(name, hf_tok, raw_tokenizer(directory), texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    assert model.config.id2label == dict(enumerate(LABELS)), model.config.id2label
    with torch.no_grad():
        logits = torch.cat([model(**hf_tok(t, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")).logits for t in texts])
    # CrossEncoder.predict takes a single text too (one string at a time: a list of strings would be
    # read as one pair, a list of one-element lists is refused).
    ce = CrossEncoder(str(directory), device="cpu")
    assert ce.max_seq_length == MAX_LENGTH and ce.num_labels == 3, (ce.max_seq_length, ce.num_labels)
    ce_logits = torch.stack([ce.predict(t, activation_fn=torch.nn.Identity(), convert_to_tensor=True) for t in texts])
    worst = float((ce_logits - logits).abs().max())
    print(f"make_task_fixtures: {name}: plain transformers (each text alone) vs CrossEncoder.predict: max abs difference {worst:.1e}")
    if not worst <= 1e-5:
        raise SystemExit(f"make_task_fixtures: {name}: CrossEncoder and the plain transformers forward disagree")
    full = untruncated_lengths(directory, texts)
    print(f"make_task_fixtures: {name}: {len(texts)} texts, {sum(n > MAX_LENGTH for n in full)} truncated; argmax counts {torch.bincount(logits.argmax(-1), minlength=3).tolist()}")
    return {
        "kind": "classifier",
        "model": f"random {name} fixture (python/make_task_fixtures.py, seed {SEEDS[name]})",
        "reference": f"BertForSequenceClassification, {versions()}",
        "max_length": MAX_LENGTH,
        "labels": LABELS,
        "items": [{"text": t, "logits": rounded(v), "token_count": len(ids)} for t, v, ids in zip(texts, logits, enc["input_ids"])],
    }


def compute_splade(name: str, directory: pathlib.Path) -> dict:
    texts = SPLADE_TEXTS
    encoder = SparseEncoder(str(directory), device="cpu")
    assert encoder.max_seq_length == MAX_LENGTH, encoder.max_seq_length
    assert [type(m).__name__ for m in encoder] == ["MLMTransformer", "SpladePooling"], list(encoder)
    pooling = encoder[1]
    assert (pooling.pooling_strategy, pooling.activation_function) == ("max", "relu"), pooling
    st = encoder.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)

    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    enc = check_tokens(name, hf_tok, raw_tokenizer(directory), texts)
    model, info = AutoModelForMaskedLM.from_pretrained(str(directory), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"make_task_fixtures: {name}: loading model.safetensors: {bad}")
    model.eval()
    vocab = model.config.vocab_size
    dense, margin = [], float("inf")
    with torch.no_grad():
        for t in texts:
            mlm = model(**hf_tok(t, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")).logits[0]  # [tokens, vocab]
            top = mlm.max(0).values
            margin = min(margin, float(top.abs().min()))
            dense.append(torch.log1p(torch.relu(mlm)).max(0).values)
    dense = torch.stack(dense)
    worst = float((dense - st).abs().max())
    same = all(torch.equal(a.nonzero(), b.nonzero()) for a, b in zip(dense, st))
    counts = [int((v > 0).sum()) for v in dense]
    full = untruncated_lengths(directory, texts)
    print(f"make_task_fixtures: {name}: {len(texts)} texts, {sum(n > MAX_LENGTH for n in full)} truncated")
    assert sum(n > MAX_LENGTH for n in full) >= 2, full
    print(
        f"make_task_fixtures: {name}: SparseEncoder.encode vs plain AutoModelForMaskedLM (each text alone): max abs difference "
        f"{worst:.1e}, same non-zero indices: {same}; non-zeros per text {min(counts)}..{max(counts)} of {vocab}; "
        f"smallest |max logit| over all texts and vocabulary entries {margin:.1e}"
    )
    if not (worst <= 1e-5 and same):
        raise SystemExit(f"make_task_fixtures: {name}: SparseEncoder and the plain forward disagree")
    # No entry should sit so close to zero that rounding in another implementation flips it.
    if not margin > SPLADE_MARGIN:
        raise SystemExit(f"make_task_fixtures: {name}: a max logit within {margin:g} of 0; choose another seed")
    items = []
    for t, v, ids in zip(texts, dense, enc["input_ids"]):
        idx = v.nonzero().flatten()
        items.append({"text": t, "indices": idx.tolist(), "values": rounded(v[idx]), "token_count": len(ids)})
    return {
        "kind": "splade",
        "model": f"random {name} fixture (python/make_task_fixtures.py, seed {SEEDS[name]})",
        "reference": f"SparseEncoder.encode, {versions()}",
        "max_length": MAX_LENGTH,
        "vocab_size": vocab,
        "pooling": "max",
        "activation": "relu",
        "items": items,
    }


def compute(name: str, directory: pathlib.Path) -> dict:
    if name.endswith("-reranker"):
        return compute_reranker(name, directory)
    if name == "bert-classifier":
        return compute_classifier(name, directory)
    return compute_splade(name, directory)


# ---------------------------------------------------------------- check


def check_reference(new: dict, old: dict, tolerance: float) -> tuple:
    problems = []
    for key in sorted(set(new) | set(old)):
        if key not in ("items", "reference") and new.get(key) != old.get(key):
            problems.append(f"{key}: computed {new.get(key)!r}, committed {old.get(key)!r}")
    if len(new["items"]) != len(old["items"]):
        return problems + [f"{len(new['items'])} items computed, {len(old['items'])} committed"], 0.0
    worst = 0.0
    for i, (a, b) in enumerate(zip(new["items"], old["items"])):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if key in ("logits", "values", "score"):
                x, y = (x, y) if isinstance(x, list) else ([x], [y])
                if y is None or len(x) != len(y):
                    problems.append(f"item {i}: {key}: {len(x)} values vs committed {y if y is None else len(y)}")
                    continue
                diff = mf.worst_of(abs(p - q) for p, q in zip(x, y))
                if not diff <= tolerance:  # `not <=` so that a NaN counts as a mismatch
                    problems.append(f"item {i}: {key}: max abs difference {diff:g} > {tolerance:g}")
                worst = mf.worst_of([worst, diff])
            elif x != y:
                problems.append(f"item {i}: {key}: computed {x!r}, committed {y!r}")
    return problems, worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare with the committed fixtures")
    p.add_argument("--only", action="append", choices=FIXTURES, help="only this fixture (repeatable)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted element difference (--check)")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args()
    torch.manual_seed(0)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or FIXTURES:
            committed = args.out / name
            directory = pathlib.Path(tmp) / name if args.check else committed
            build(name, directory, pathlib.Path(tmp))
            new = compute(name, directory)
            if not args.check:
                (directory / "reference.json").write_text(json.dumps(new, ensure_ascii=False), encoding="utf-8")
                (directory / "reference.json").chmod(0o644)
                print(f"make_task_fixtures: wrote {directory} ({len(new['items'])} items)")
                continue
            if not (committed / "reference.json").exists():
                print(f"make_task_fixtures: {name}: no committed fixture at {committed}", file=sys.stderr)
                failed = True
                continue
            old = json.loads((committed / "reference.json").read_text(encoding="utf-8"))
            (directory / "reference.json").write_text("{}", encoding="utf-8")  # compared below, not as a file
            problems = mf.check_files(directory, committed, args.tolerance)
            ref_problems, worst = check_reference(new, old, args.tolerance)
            problems += ref_problems
            print(f"make_task_fixtures: {name}: worst max-abs difference to the committed reference: {worst:g} (tolerance {args.tolerance:g})")
            for problem in problems:
                print(f"make_task_fixtures: {name}: {problem}", file=sys.stderr)
            print(f"make_task_fixtures: {name}: {'MISMATCH' if problems else 'matches'} {committed}")
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
