"""Generates the multi-vector (late-interaction) fixtures under testdata/fixtures/: tiny random models
in the layouts their libraries publish, with what those libraries compute for a fixed set of inputs.
The Rust side loads each directory and must reproduce its reference.json.

usage (from the repository root, in the same venv as python/make_fixtures.py):

    .venv/bin/python python/make_multivector_fixtures.py            # rewrite both directories
    .venv/bin/python python/make_multivector_fixtures.py --check    # regenerate in a temporary folder and compare

- xlm-roberta-m3: as BAAI/bge-m3. An XLMRobertaModel written by transformers' save_pretrained, the
  sentence-transformers files bge-m3 ships (Transformer, CLS Pooling, Normalize), and beside the
  weights `colbert_linear.pt` (nn.Linear(hidden, hidden)) and `sparse_linear.pt` (nn.Linear(hidden, 1)),
  each the `torch.save` of the layer's state dict, exactly as FlagEmbedding's
  EncoderOnlyEmbedderM3Model.save writes them. reference.json, per text: the dense vector (CLS,
  normalised), the lexical weights (relu(sparse_linear(h)) per token, the max per token id, weights
  > 0 only, cls/eos/pad/unk dropped) and the ColBERT vectors (colbert_linear over the tokens after
  CLS, normalised), computed in padded batches as BGEM3FlagModel.encode does; plus MaxSim scores of
  queries against documents as BGEM3FlagModel.colbert_score gives them (the sum over the query's
  vectors of the best dot product, divided by the number of query vectors).
- bert-colbert: as a PyLate ColBERT checkpoint (lightonai/colbertv2.0, answerai-colbert-small): a
  BertModel whose tokenizer has the added prefix tokens "[Q] " and "[D] " (embeddings resized for
  them), modules.json with Transformer and pylate.models.Dense.Dense (32 -> 16, no bias, Identity),
  and config_sentence_transformers.json with PyLate's fields: query_prefix, document_prefix,
  query_length 16, document_length 48, do_query_expansion true, attend_to_expansion_tokens false,
  skiplist_words (string.punctuation). reference.json: query and document token vectors as
  pylate.models.ColBERT.encode computes them (is_query True / False) and MaxSim scores
  (pylate.scores.colbert_scores: the sum over query vectors of the best dot product).

Neither FlagEmbedding nor PyLate is imported: both import `datasets` at package import (pyarrow,
pandas ...), and PyLate 1.6 pins sentence-transformers 5.3 and transformers <= 5.3, which the shared
venv (sentence-transformers 6.2, transformers 5.24) cannot take. The references are therefore
written here from their published code (FlagEmbedding 1.3.5 inference/embedder/encoder_only/m3.py
and finetune/embedder/encoder_only/m3/modeling.py; PyLate 1.6.0 models/colbert.py: tokenize,
insert_prefix_token, skiplist_mask, encode), on transformers' own model forward and tokenizer.
Every reference is computed twice (padded batches, and each text alone) and the script stops unless
both agree within 1e-5.
"""
import argparse
import json
import pathlib
import shutil
import string
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the tokenizer-threading environment first)
import make_task_fixtures as mt  # noqa: E402

import safetensors.torch  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Tokenizer  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: E402

OUT = mf.OUT
DECIMALS = mf.DECIMALS
MAX_LENGTH = mt.MAX_LENGTH
SEEDS = {"xlm-roberta-m3": mf.SEED + 140, "bert-colbert": mf.SEED + 141}
COLBERT_DIM = 16
QUERY_LENGTH = 16
DOCUMENT_LENGTH = 48
FIXTURES = list(SEEDS)

TEXTS = mf.TEXTS[::3]
QUERIES = ["How do I send HTTP requests?", "yaml parser", "validate data with type hints", "array computing"]
DOCUMENTS = [mt.line(6), mt.line(15), mt.line(16), mt.line(20), mt.lines(1, 8)]


def versions() -> str:
    return f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}, CPU, float32"


def random_model(name: str, cfg: dict, extra_shapes: dict) -> tuple:
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "torch_dtype")}
    config = AutoConfig.for_model(cfg["model_type"], **fields, dtype="float32")
    config.architectures = cfg["architectures"]
    model = getattr(transformers, cfg["architectures"][0])(config)
    shapes = {k: p.shape for k, p in model.named_parameters()}
    shapes.update(extra_shapes)
    weights = mf.random_weights(shapes, torch.Generator().manual_seed(SEEDS[name]))
    extra = {k: weights.pop(k) for k in extra_shapes}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or missing:
        raise SystemExit(f"make_multivector_fixtures: {name}: missing {missing}, unexpected {unexpected}")
    return model.eval(), extra


def finish(directory: pathlib.Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            f.chmod(0o644)


def build_m3(directory: pathlib.Path) -> None:
    tok, special, tok_cfg = mt.tokenizer_files("xlm-roberta")
    cfg = mf.bert_like_config(
        "xlm-roberta", tok.get_vocab_size(), 2, 1, MAX_LENGTH + 2, 1,
        architecture="XLMRobertaModel", bos_token_id=0, eos_token_id=2, position_embedding_type="absolute",
    )
    h = cfg["hidden_size"]
    model, extra = random_model("xlm-roberta-m3", cfg, {
        "colbert_linear.weight": (h, h), "colbert_linear.bias": (h,),
        "sparse_linear.weight": (1, h), "sparse_linear.bias": (1,),
    })
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    mf.write_json(directory / "tokenizer_config.json", tok_cfg)
    mf.write_json(directory / "special_tokens_map.json", special)
    model.save_pretrained(str(directory))
    # As FlagEmbedding saves them: torch.save of each nn.Linear's state dict.
    colbert = torch.nn.Linear(h, h)
    colbert.load_state_dict({"weight": extra["colbert_linear.weight"], "bias": extra["colbert_linear.bias"]})
    sparse = torch.nn.Linear(h, 1)
    sparse.load_state_dict({"weight": extra["sparse_linear.weight"], "bias": extra["sparse_linear.bias"]})
    torch.save(colbert.state_dict(), directory / "colbert_linear.pt")
    torch.save(sparse.state_dict(), directory / "sparse_linear.pt")
    # bge-m3's sentence-transformers files.
    mf.write_json(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    mf.write_json(directory / "1_Pooling" / "config.json", {
        "word_embedding_dimension": h, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    })
    mf.write_json(directory / "sentence_bert_config.json", {"max_seq_length": MAX_LENGTH, "do_lower_case": False})
    finish(directory)


def build_colbert(directory: pathlib.Path) -> None:
    tok, special, tok_cfg = mt.tokenizer_files("bert")
    # PyLate adds its prefix markers to the tokenizer (tokenizer.add_tokens) and resizes the
    # embeddings; a saved PyLate model carries them as added tokens.
    tok.add_tokens([AddedToken("[Q] ", special=False, normalized=True), AddedToken("[D] ", special=False, normalized=True)])
    cfg = mf.bert_like_config(
        "bert", tok.get_vocab_size(), 2, 0, MAX_LENGTH, 2, architecture="BertModel", position_embedding_type="absolute",
    )
    h = cfg["hidden_size"]
    model, extra = random_model("bert-colbert", cfg, {"dense.weight": (COLBERT_DIM, h)})
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    mf.write_json(directory / "tokenizer_config.json", tok_cfg)
    mf.write_json(directory / "special_tokens_map.json", special)
    model.save_pretrained(str(directory))
    mf.write_json(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])
    mf.write_json(directory / "1_Dense" / "config.json", {
        "in_features": h, "out_features": COLBERT_DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False,
    })
    safetensors.torch.save_file({"linear.weight": extra["dense.weight"].contiguous()}, str(directory / "1_Dense" / "model.safetensors"))
    mf.write_json(directory / "sentence_bert_config.json", {"max_seq_length": DOCUMENT_LENGTH - 1, "do_lower_case": False})
    mf.write_json(directory / "config_sentence_transformers.json", {
        "model_type": "ColBERT",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation),
        "do_query_expansion": True,
    })
    finish(directory)


# ---------------------------------------------------------------- references


def rounded(values) -> list:
    return [round(float(x), DECIMALS) for x in values]


def maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    return float((q @ d.T).max(dim=1).values.sum())


def m3_encode(model, hf_tok, sparse, colbert, texts: list) -> list:
    """BGEM3FlagModel.encode's three outputs for texts padded into one batch."""
    unused = {hf_tok.cls_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id}
    x = hf_tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        last = model(**x, return_dict=True).last_hidden_state
        dense = torch.nn.functional.normalize(last[:, 0], dim=-1)
        weights = torch.relu(sparse(last)).squeeze(-1)
        vecs = colbert(last[:, 1:]) * x["attention_mask"][:, 1:][:, :, None].float()
        vecs = torch.nn.functional.normalize(vecs, dim=-1)
    out = []
    for i in range(len(texts)):
        n = int(x["attention_mask"][i].sum())
        lexical = {}
        for w, idx in zip(weights[i].tolist(), x["input_ids"][i].tolist()):
            if idx not in unused and w > 0 and w > lexical.get(idx, 0):
                lexical[idx] = w
        out.append({"ids": x["input_ids"][i, :n].tolist(), "dense": dense[i], "lexical": lexical, "colbert": vecs[i, : n - 1]})
    return out


def compute_m3(directory: pathlib.Path) -> dict:
    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModel.from_pretrained(str(directory)).eval()
    h = model.config.hidden_size
    colbert, sparse = torch.nn.Linear(h, h), torch.nn.Linear(h, 1)
    colbert.load_state_dict(torch.load(directory / "colbert_linear.pt", map_location="cpu", weights_only=True))
    sparse.load_state_dict(torch.load(directory / "sparse_linear.pt", map_location="cpu", weights_only=True))
    batched = m3_encode(model, hf_tok, sparse, colbert, TEXTS)
    worst = 0.0
    for t, b in zip(TEXTS, batched):
        alone = m3_encode(model, hf_tok, sparse, colbert, [t])[0]
        assert alone["ids"] == b["ids"] and alone["lexical"].keys() == b["lexical"].keys(), t
        worst = mf.worst_of([worst, float((alone["dense"] - b["dense"]).abs().max()), float((alone["colbert"] - b["colbert"]).abs().max())]
                            + [abs(alone["lexical"][k] - b["lexical"][k]) for k in b["lexical"]])
    print(f"make_multivector_fixtures: xlm-roberta-m3: batched vs each text alone: max abs difference {worst:.1e}")
    if not worst <= 1e-5:
        raise SystemExit("make_multivector_fixtures: xlm-roberta-m3: batched and single references disagree")
    full = mt.untruncated_lengths(directory, TEXTS)
    q = m3_encode(model, hf_tok, sparse, colbert, QUERIES)
    d = m3_encode(model, hf_tok, sparse, colbert, DOCUMENTS)
    print(f"make_multivector_fixtures: xlm-roberta-m3: {len(TEXTS)} texts, {sum(n > MAX_LENGTH for n in full)} truncated; "
          f"non-zero lexical weights per text {[len(b['lexical']) for b in batched]}")
    return {
        "kind": "bge-m3",
        "model": f"random xlm-roberta-m3 fixture (python/make_multivector_fixtures.py, seed {SEEDS['xlm-roberta-m3']})",
        "reference": f"BGEM3FlagModel.encode's computation (FlagEmbedding 1.3.5, written out), {versions()}",
        "max_length": MAX_LENGTH,
        "items": [
            {
                "text": t,
                "token_count": len(b["ids"]),
                "truncated": n > MAX_LENGTH,
                "dense": rounded(b["dense"]),
                "lexical": [[k, round(v, DECIMALS)] for k, v in sorted(b["lexical"].items())],
                "colbert": [rounded(v) for v in b["colbert"]],
            }
            for t, b, n in zip(TEXTS, batched, full)
        ],
        "rerank": [
            {"query": qt, "documents": DOCUMENTS, "scores": [round(maxsim(qe["colbert"], de["colbert"]) / qe["colbert"].shape[0], DECIMALS) for de in d]}
            for qt, qe in zip(QUERIES, q)
        ],
    }


def colbert_tokenize(hf_tok, texts: list, is_query: bool, cfg: dict) -> dict:
    """pylate.models.ColBERT.tokenize: truncation to length - 1, queries padded with [MASK] to it,
    then the prefix token inserted after the first token (attention 1 there)."""
    length = cfg["query_length"] if is_query else cfg["document_length"]
    prefix = hf_tok.convert_tokens_to_ids(cfg["query_prefix"] if is_query else cfg["document_prefix"])
    hf_tok.pad_token_id = hf_tok.mask_token_id
    args = {"padding": "max_length"} if is_query and cfg["do_query_expansion"] else {"padding": True}
    x = hf_tok(texts, truncation=True, max_length=length - 1, return_tensors="pt", **args)

    def insert(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([t[:, :1], torch.full((t.shape[0], 1), value, dtype=t.dtype), t[:, 1:]], dim=1)

    x["input_ids"] = insert(x["input_ids"], prefix)
    x["attention_mask"] = insert(x["attention_mask"], 1)
    x["token_type_ids"] = insert(x["token_type_ids"], 0)
    if is_query and cfg["attend_to_expansion_tokens"]:
        x["attention_mask"].fill_(1)
    return x


def colbert_encode(model, dense, hf_tok, texts: list, is_query: bool, cfg: dict) -> list:
    """pylate.models.ColBERT.encode: token embeddings through the Dense module; queries keep every
    token (expansion on), documents drop padding and the skiplist's tokens; each vector normalised."""
    x = colbert_tokenize(hf_tok, texts, is_query, cfg)
    skiplist = [hf_tok.convert_tokens_to_ids(w) for w in cfg["skiplist_words"]]
    with torch.no_grad():
        emb = dense(model(**x, return_dict=True).last_hidden_state)
    if is_query and cfg["do_query_expansion"]:
        masks = torch.ones_like(x["input_ids"], dtype=torch.bool)
    elif is_query:
        masks = x["attention_mask"].bool()
    else:
        keep = ~torch.isin(x["input_ids"], torch.tensor(skiplist))
        masks = keep & x["attention_mask"].bool()
    out = []
    for i, m in enumerate(masks):
        out.append({"ids": x["input_ids"][i][m].tolist(), "vectors": torch.nn.functional.normalize(emb[i][m], p=2, dim=1)})
    return out


def compute_colbert(directory: pathlib.Path) -> dict:
    cfg = json.loads((directory / "config_sentence_transformers.json").read_text())
    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModel.from_pretrained(str(directory)).eval()
    dense = torch.nn.Linear(model.config.hidden_size, COLBERT_DIM, bias=False)
    dense.load_state_dict({"weight": safetensors.torch.load_file(str(directory / "1_Dense" / "model.safetensors"))["linear.weight"]})
    sides = {"query": (QUERIES + TEXTS[:6], True), "document": (DOCUMENTS + TEXTS, False)}
    result = {}
    worst = 0.0
    for side, (texts, is_query) in sides.items():
        batched = colbert_encode(model, dense, hf_tok, texts, is_query, cfg)
        for t, b in zip(texts, batched):
            alone = colbert_encode(model, dense, hf_tok, [t], is_query, cfg)[0]
            assert alone["ids"] == b["ids"], t
            worst = mf.worst_of([worst, float((alone["vectors"] - b["vectors"]).abs().max())])
        result[side] = [{"text": t, "ids": b["ids"], "vectors": [rounded(v) for v in b["vectors"]]} for t, b in zip(texts, batched)]
    print(f"make_multivector_fixtures: bert-colbert: batched vs each text alone: max abs difference {worst:.1e}")
    if not worst <= 1e-5:
        raise SystemExit("make_multivector_fixtures: bert-colbert: batched and single references disagree")
    q = colbert_encode(model, dense, hf_tok, QUERIES, True, cfg)
    d = colbert_encode(model, dense, hf_tok, DOCUMENTS, False, cfg)
    return {
        "kind": "colbert",
        "model": f"random bert-colbert fixture (python/make_multivector_fixtures.py, seed {SEEDS['bert-colbert']})",
        "reference": f"pylate.models.ColBERT.encode's computation (PyLate 1.6.0, written out), {versions()}",
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        **result,
        "rerank": [
            {"query": qt, "documents": DOCUMENTS, "scores": [round(maxsim(qe["vectors"], de["vectors"]), DECIMALS) for de in d]}
            for qt, qe in zip(QUERIES, q)
        ],
    }


def build(name: str, directory: pathlib.Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    (build_m3 if name == "xlm-roberta-m3" else build_colbert)(directory)
    ref = (compute_m3 if name == "xlm-roberta-m3" else compute_colbert)(directory)
    mf.write_json(directory / "reference.json", ref)


def numbers(a, b, tol: float, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise SystemExit(f"make_multivector_fixtures --check: {path}: keys differ")
        for k in a:
            numbers(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise SystemExit(f"make_multivector_fixtures --check: {path}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            numbers(x, y, tol, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if not abs(float(a) - float(b)) <= tol:
            raise SystemExit(f"make_multivector_fixtures --check: {path}: {a} != {b}")
    elif a != b:
        raise SystemExit(f"make_multivector_fixtures --check: {path}: {a!r} != {b!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    args = ap.parse_args()
    if not args.check:
        for name in FIXTURES:
            build(name, OUT / name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in FIXTURES:
            fresh = pathlib.Path(tmp) / name
            build(name, fresh)
            for f in sorted(fresh.rglob("*")):
                if not f.is_file():
                    continue
                rel = f.relative_to(fresh)
                committed = OUT / name / rel
                if not committed.is_file():
                    raise SystemExit(f"make_multivector_fixtures --check: {name}/{rel} is not committed")
                if f.suffix == ".json":
                    numbers(json.loads(committed.read_text()), json.loads(f.read_text()), args.tolerance, f"{name}/{rel}")
                elif f.suffix == ".safetensors":
                    a, b = safetensors.torch.load_file(str(committed)), safetensors.torch.load_file(str(f))
                    if a.keys() != b.keys() or any(not torch.allclose(a[k], b[k], atol=args.tolerance) for k in a):
                        raise SystemExit(f"make_multivector_fixtures --check: {name}/{rel}: weights differ")
                elif f.suffix == ".pt":
                    a, b = torch.load(committed, weights_only=True), torch.load(f, weights_only=True)
                    if a.keys() != b.keys() or any(not torch.allclose(a[k], b[k], atol=args.tolerance) for k in a):
                        raise SystemExit(f"make_multivector_fixtures --check: {name}/{rel}: weights differ")
        print("make_multivector_fixtures --check: the committed fixtures match a fresh build")


if __name__ == "__main__":
    main()
