"""The Qwen3-Reranker-0.6B-shaped side of `cargo xtask bench --rerank`.

usage:
  reranker_shape.py make FIXTURE_DIR OUT_DIR
      Writes a Qwen3ForCausalLM directory shaped as Qwen/Qwen3-Reranker-0.6B (28 layers, hidden
      1024, 16 query heads and 8 key/value heads of 128, intermediate 3072, vocabulary 151 669,
      q/k RMSNorm, tied embeddings: the lm_head is the embedding table; bf16 weights) with random
      weights. The tokenizer (with "yes", "no" and the chat markers) comes from the small
      qwen3-reranker fixture (FIXTURE_DIR), so no download is needed; model_max_length 8192.
  reranker_shape.py pairs MODEL_DIR CORPUS GROUPS PER_GROUP TOKENS PAIRS_OUT.json
      GROUPS queries (corpus lines) with PER_GROUP documents each (consecutive corpus lines
      joined until the whole prompt, the model card's prefix and suffix included, reaches
      TOKENS tokens); writes {"groups": [{"query", "documents"}], "prompt_tokens": [...]}.
  reranker_shape.py ref MODEL_DIR PAIRS.json THREADS SCORES_OUT.json
      Scores every pair with transformers as the model card of Qwen/Qwen3-Reranker-0.6B does
      (AutoModelForCausalLM in bf16, left padding, its prefix/suffix, the default instruction,
      softmax over the last position's "no"/"yes" logits, the whole vocabulary's logits computed
      at every position as the card's code does), one group per batch, with one change the card
      needs for batches: position ids from the attention mask, so that a pair's score does not
      depend on the padding its batch adds (what embed and vLLM compute), and the softmax over
      the two logits in f32. Warms up on one pair,
      then times all groups; prints one JSON line (time, tokens, peak RSS) and writes the scores.
"""
import json
import os
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
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
}

# From the model card of Qwen/Qwen3-Reranker-0.6B.
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
MAX_LENGTH = 8192
# The "yes" and "no" rows of the tied table scaled down, as the fixture does: with random
# weights and the full spread every pair scores near 0 or 1 and no ranking shows.
YES_NO_SCALE = 0.2


def format_instruction(instruction, query, doc) -> str:
    # As the model card's format_instruction.
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(instruction=instruction, query=query, doc=doc)


def peak_rss() -> int:
    """VmHWM of this process in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make(fixture: pathlib.Path, out: pathlib.Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (out / "model.safetensors").exists():
        print(f"{out}: already there")
        return
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(fixture / name, tmp / name)
    tok_config = json.loads((fixture / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = MAX_LENGTH
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    config = json.loads((fixture / "config.json").read_text())
    config.update(SHAPE)
    config["initializer_range"] = 0.02
    config.pop("layer_types", None)  # the fixture's 2 layers; recomputed for 28
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "dtype", "transformers_version")}))
    vocab = json.loads((fixture / "tokenizer.json").read_text())
    ids = {a["content"]: a["id"] for a in vocab["added_tokens"]} | vocab["model"]["vocab"]
    with torch.no_grad():
        for word in ("yes", "no"):
            model.model.embed_tokens.weight[ids[word]] *= YES_NO_SCALE
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "tied"
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    saved = json.loads((tmp / "config.json").read_text())
    saved["architectures"] = ["Qwen3ForCausalLM"]
    (tmp / "config.json").write_text(json.dumps(saved, indent=2))
    (tmp / "generation_config.json").unlink(missing_ok=True)
    params = sum(p.numel() for p in model.parameters())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{out}: {params / 1e6:.0f} M parameters")


def pairs(model_dir: str, corpus: str, groups: int, per_group: int, tokens: int, out: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
    fixed = len(tok.encode(PREFIX, add_special_tokens=False).ids) + len(tok.encode(SUFFIX, add_special_tokens=False).ids)
    lines = [l.strip() for l in open(corpus, encoding="utf-8") if l.strip()]
    queries = [l for l in lines if 4 <= len(l.split()) <= 12]
    if len(queries) < groups:
        sys.exit(f"reranker_shape.py: {len(queries)} short corpus lines for {groups} queries")
    cursor, result, counts = 0, [], []
    for g in range(groups):
        query = queries[g * (len(queries) // groups)]
        documents = []
        for _ in range(per_group):
            doc, n = "", 0
            while n < tokens:
                doc = (doc + " " + lines[cursor % len(lines)]).strip()
                cursor += 1
                n = fixed + len(tok.encode(format_instruction(None, query, doc), add_special_tokens=False).ids)
            documents.append(doc)
            counts.append(n)
        result.append({"query": query, "documents": documents})
    with open(out, "w") as f:
        json.dump({"groups": result, "prompt_tokens": counts}, f)
    print(f"{out}: {groups} x {per_group} pairs, {min(counts)}..{max(counts)} tokens each, {sum(counts)} in all")


def ref(model_dir: str, pairs_path: str, threads: int, scores_out: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    data = json.load(open(pairs_path))
    before = peak_rss()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t0
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)

    def process_inputs(texts):
        # The model card's process_inputs.
        inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                           max_length=MAX_LENGTH - len(prefix_tokens) - len(suffix_tokens))
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_LENGTH)
        # The one change: positions from 0 for every pair, whatever padding its batch adds.
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return inputs

    @torch.no_grad()
    def compute_logits(inputs):
        # The model card's compute_logits, the two logits taken to f32 before the softmax (in
        # bf16 a score near 0.5 would be rounded to steps of 0.002 to 0.004, coarser than the
        # differences being compared).
        batch_scores = model(**inputs).logits[:, -1, :].float()
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    first = data["groups"][0]
    compute_logits(process_inputs([format_instruction(None, first["query"], first["documents"][0])]))
    load_peak = peak_rss()
    resettable = reset_peak()
    t = time.perf_counter()
    scores, tokens = [], 0
    for g in data["groups"]:
        inputs = process_inputs([format_instruction(None, g["query"], d) for d in g["documents"]])
        tokens += int(inputs["attention_mask"].sum())
        scores.append(compute_logits(inputs))
    seconds = time.perf_counter() - t
    scoring_peak = peak_rss()
    n = sum(len(s) for s in scores)
    with open(scores_out, "w") as f:
        json.dump(scores, f)
    import transformers

    print(json.dumps({
        "impl": "transformers", "version": transformers.__version__, "torch": torch.__version__, "dtype": "bf16",
        "threads": torch.get_num_threads(), "load_s": round(load_s, 3), "pairs": n, "groups": len(scores), "tokens": tokens,
        "seconds": round(seconds, 3), "pairs_per_s": n / seconds, "tokens_per_s": tokens / seconds,
        "before_peak_resident": before, "load_peak_resident": load_peak, "scoring_peak_resident": scoring_peak,
        "peak_resident": max(load_peak, scoring_peak), "peak_resettable": resettable,
    }), flush=True)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make" and len(args) == 2:
        make(pathlib.Path(args[0]), pathlib.Path(args[1]))
    elif cmd == "pairs" and len(args) == 6:
        pairs(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5])
    elif cmd == "ref" and len(args) == 4:
        ref(args[0], args[1], int(args[2]), args[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
