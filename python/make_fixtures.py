"""Generates testdata/fixtures/: tiny random sentence-transformers models, one per encoder family,
each with the embeddings sentence-transformers computes for a fixed set of texts. The Rust side
loads every directory and must reproduce its reference.json.

usage (from the repository root, after `cargo xtask setup` and
`.venv/bin/pip install -r python/requirements-bench.txt`):

    .venv/bin/python python/make_fixtures.py                      # rewrite testdata/fixtures/
    .venv/bin/python python/make_fixtures.py --check              # regenerate in memory and compare
    .venv/bin/python python/make_fixtures.py --only mpnet [--check]   # one family (repeatable)
    .venv/bin/python python/make_fixtures.py --torch-pickles      # testdata/fixtures/torch-pickle/

The generated directories are committed and the Rust tests read those. This script records how they
were made and `--check` shows they are reproducible; `cargo xtask test` runs `--check --only bert`.

Families (testdata/fixtures/<name>/): bert (WordPiece, CLS pooling + Normalize, weights saved with
a `bert.` prefix), roberta (byte-level BPE, mean, weights saved with a `roberta.` prefix),
xlm-roberta (Unigram, mean + Normalize), camembert (Unigram, mean), distilbert (as
sentence-transformers/distiluse-base-multilingual-cased-v2: cased WordPiece, mean, Dense 32 -> 24
with Tanh, then Normalize), mpnet (WordPiece with <s> </s>, mean + Normalize), modernbert
(byte-level BPE, alternating global/local attention with a 16-token window, mean), nomic-bert (as
nomic-ai/nomic-embed-text-v1.5: WordPiece, rotary base 1000, SwiGLU, mean + Normalize), gte (as
Alibaba-NLP/gte-base-en-v1.5: WordPiece, rotary base 500000 with NTK scaling factor 2, GLU with GELU,
no token type embeddings, CLS + Normalize); and three decoder-only embedders with last-token pooling +
Normalize, an EOS appended by the tokenizer, left padding and a query prompt: qwen3 (as
Qwen/Qwen3-Embedding-0.6B: q/k RMSNorm, tied embeddings), qwen2 (as Alibaba-NLP/gte-Qwen2-1.5B-instruct:
q/k/v biases) and mistral (as intfloat/e5-mistral-7b-instruct: SentencePiece-style BPE with byte
fallback, <s> ... </s>, sliding window 4096); see DECODERS. gemma3 (as google/embeddinggemma-300m:
transformers' Gemma3TextModel with use_bidirectional_attention, three sliding-window layers and one
full one, Gemma's (1 + w) RMSNorm, embeddings scaled by sqrt(hidden); SentencePiece-style BPE with
<bos> ... <eos>, right padding; mean pooling, Dense 64 -> 96 -> 64 without bias or activation,
Normalize; EmbeddingGemma's query / document prompts) has `query_items` too, and its embeddings
are recomputed from the files by `gemma3_forward`.

nomic-bert and gte are remote-code (trust_remote_code) models on the Hub: their config.json (n_embd,
rotary_emb_base, ...; model_type "new", rope_scaling, ...) and weight names (encoder.layers.N.attn.Wqkv,
emb_ln, ...; encoder.layer.N.attention.qkv_proj, mlp.up_gate_proj, ...) are written as the Hub
checkpoints have them, which transformers 5 does not load as they are. Their reference comes from
transformers' ports (NomicBertModel, GteModel), loaded from a temporary copy whose config.json is
translated into the port's fields; the port renames the Hub weights itself. The script then
recomputes every embedding from the Hub files alone, following the remote code (`hub_forward`), and
stops unless both agree within 1e-5.

Each directory is an ordinary sentence-transformers model directory (config.json, model.safetensors
in float32, tokenizer.json, tokenizer_config.json, special_tokens_map.json, modules.json,
1_Pooling/config.json, sentence_bert_config.json; distilbert also 2_Dense/config.json and
2_Dense/model.safetensors, written by sentence-transformers' Dense.save, and a modules.json with the
module types as sentence-transformers 6.2 writes them, sentence_transformers.base.modules.dense.Dense
and so on, where the others have the older sentence_transformers.models.* names; the decoder
families also config_sentence_transformers.json with their prompts) plus
reference.json: the embeddings sentence-transformers computes on CPU in float32, rounded to 7
decimals, with the number of tokens it feeds the model for each text after truncation. The decoder
families' reference.json also has `query_items`: the first QUERY_ITEMS texts embedded with
prompt_name="query" (the text without the prompt; the token count with it). Their embeddings are
recomputed from the files by a plain-torch forward pass (`decoder_forward`) and with eager attention,
and the script stops unless all agree within 1e-5.
Vocabularies come from `tokenizers`' BPE trainer run on testdata/corpus.txt plus the non-ASCII
reference texts (all but one, which stays out of vocabulary); the WordPiece and Unigram
vocabularies are the pieces that BPE cuts the corpus into, because those two trainers are not
reproducible from run to run.
Weights are random, drawn from a seeded generator; norm weights and all biases are random too, and
the spread is large enough that different texts get clearly different embeddings (the script prints
the mean pairwise cosine; a tiny model with the usual 0.02 init would embed every text almost alike).

`--check` rebuilds every directory in a temporary folder and exits non-zero unless the JSON files
are equal, the weights are within `--tolerance`, and every text, token count and dimension of the
recomputed reference matches the committed one with every value within `--tolerance`. Tokenizer
training and the weights are deterministic for the pinned versions (python/requirements-bench.txt:
tokenizers, transformers and sentence-transformers; torch from `cargo xtask setup`).
"""
import argparse
import collections
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile

# Belt and braces for reproducibility: tokenizer training on one rayon thread.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

transformers.utils.logging.disable_progress_bar()

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "fixtures"
CORPUS = ROOT / "testdata" / "corpus.txt"
DECIMALS = 7
SEED = 20240611

# Usable positions 128 (max_position_embeddings 128, or 130 where positions start at pad+1);
# sentence-transformers truncates at 96.
MAX_POSITIONS = 128
MAX_SEQ_LENGTH = 96

LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."

# Never shown to the tokenizer trainers: its characters are out of vocabulary ([UNK] / <unk> for
# WordPiece and Unigram, raw bytes for byte-level BPE).
OOV_TEXT = "Ελληνικά και العربية"

# Short and long English, code, accents, CJK, Cyrillic, emoji, out-of-vocabulary scripts, case,
# whitespace oddities, literal special-token strings, one-character inputs, several texts longer
# than ModernBERT's 16-token local window, one close to the 96-token limit and two far past it.
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A woman is playing violin.",
    "A monkey is playing drums.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Rust guarantees memory safety without a garbage collector.",
    "The stock market fell sharply on Tuesday after the announcement.",
    'fn main() { println!("hi"); }',
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "def add(a, b):\n    return a + b",
    "Café crème brûlée à la française",
    "naïve résumé of the coöperative",
    "東京は日本の首都です。",
    "北京欢迎你",
    "Москва — столица России.",
    "emoji test 🚀🔥 with rockets and fire",
    OOV_TEXT,
    "UPPER CASE TEXT and MiXeD cAsE",
    "   leading and trailing whitespace   ",
    "multiple    internal     spaces",
    "tab\tseparated\tvalues",
    "line one\nline two\nline three",
    "non\u00a0breaking space and zero\u200bwidth space",
    "literal [CLS] [SEP] <s> </s> <mask> markers",
    "a",
    "?",
    "é",
    "1234567890",
    "I can't believe it's not butter!",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
    "Supercalifragilisticexpialidocious",
    "Neural networks approximate functions by composing linear maps and nonlinearities.",
    " ".join(["repeat"] * 20),
    # 82 to 93 tokens depending on the tokenizer: close to the 96-token limit, not past it.
    "Sentence embeddings map a piece of text to a fixed-size vector so that texts with similar "
    "meanings end up close together. They are used for semantic search, clustering, deduplication "
    "and retrieval of passages.",
    "import numpy as np\n\ndef normalize(x):\n    norm = np.linalg.norm(x, axis=-1, keepdims=True)\n"
    "    return x / np.maximum(norm, 1e-12)\n",
    "The library provides a simple interface for reading and writing files, parsing command line "
    "arguments, sending HTTP requests, and formatting dates. It is well tested, has no "
    "dependencies, and works on Linux, macOS and Windows with Python 3.",
    " ".join(f"word{i}" for i in range(300)),
    " ".join([LOREM] * 12),
]

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def training_lines():
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    # The non-ASCII reference texts, so that CJK, Cyrillic, accents and emoji get vocabulary entries.
    extra = [t for t in TEXTS if not t.isascii() and t != OOV_TEXT]
    return lines + extra * 3


# ---------------------------------------------------------------- tokenizers


def train(tok: Tokenizer, trainer) -> Tokenizer:
    tok.train_from_iterator(training_lines(), trainer=trainer)
    return tok


def piece_counts(normalizer, pre_tokenizer, vocab_size: int) -> tuple:
    """Sub-word statistics for the WordPiece and Unigram vocabularies, made reproducible: the
    `tokenizers` WordPiece and Unigram trainers break ties in hash-map order (every run gives a
    different vocabulary), its BPE trainer does not. So: train a BPE on the normalised,
    pre-tokenised lines, cut every word with it, and count the pieces as (piece, first in word).
    Returns the counts and every character seen."""
    bpe = Tokenizer(models.BPE())
    if normalizer is not None:
        bpe.normalizer = normalizer
    bpe.pre_tokenizer = pre_tokenizer
    train(bpe, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    words = collections.Counter()
    for line in training_lines():
        line = normalizer.normalize_str(line) if normalizer is not None else line
        for word, _ in pre_tokenizer.pre_tokenize_str(line):
            words[word] += 1
    counts = collections.Counter()
    for word, n in words.items():
        for i, token in enumerate(bpe.model.tokenize(word)):
            counts[(token.value, i == 0)] += n
    return counts, sorted({c for word in words for c in word})


def wordpiece(vocab_size: int, lowercase: bool, specials: list, unk: str, cls: str, sep: str) -> Tokenizer:
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts, chars = piece_counts(normalizer, pre_tokenizer, 2 * vocab_size)
    # Specials, every character alone and as a continuation (##c), then the most frequent pieces.
    vocab = list(specials) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    ranked = sorted(((-n, piece if first else "##" + piece) for (piece, first), n in counts.items() if len(piece) > 1))
    for _, piece in ranked:
        if len(vocab) >= vocab_size:
            break
        if piece not in seen:
            vocab.append(piece)
            seen.add(piece)
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(specials))
    ids = {t: tok.token_to_id(t) for t in (cls, sep)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=list(ids.items()),
    )
    return tok


def roberta_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    train(
        tok,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    # As roberta-base's tokenizer.json (and what transformers' RobertaTokenizer rebuilds): empty
    # strings, not null, for the sub-word affixes; the trainer resets them, so set them afterwards.
    spec = json.loads(tok.to_str())
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")),
        ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tok


def modernbert_bpe(vocab_size: int) -> Tokenizer:
    # As answerdotai/ModernBERT-base: NFC, byte-level BPE, special tokens after the merges.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    train(
        tok,
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def unigram(vocab_size: int, specials: list, bos: str, eos: str, normalize: bool) -> Tokenizer:
    if normalize:
        # SentencePiece-style: NMT + NFKC normalisation, runs of spaces collapsed, Metaspace ("▁").
        normalizer = normalizers.Sequence(
            [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        )
        pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    else:
        # What transformers 5's XLMRobertaTokenizer builds when there is no SentencePiece charsmap:
        # no normaliser, whitespace split, then Metaspace.
        normalizer = None
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
        )
    counts, chars = piece_counts(normalizer, pre_tokenizer, 2 * vocab_size)
    merged = collections.Counter()
    for (piece, _), n in counts.items():
        merged[piece] += n
    # Every character, then the most frequent longer pieces; scores are log relative frequencies
    # (a character never cut out on its own counts as half an occurrence), in SentencePiece's order.
    room = vocab_size - len(specials) - len(chars)
    longer = sorted((-n, piece) for piece, n in merged.items() if len(piece) > 1)[:room]
    pieces = {c: merged.get(c, 0) or 0.5 for c in chars}
    pieces.update({piece: -m for m, piece in longer})
    total = sum(pieces.values())
    scored = sorted((-math.log(n / total), piece) for piece, n in pieces.items())
    vocab = [(s, 0.0) for s in specials] + [(piece, round(-score, 6)) for score, piece in scored]
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(list(specials))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return tok


# Qwen2's pre-tokenisation pattern (transformers' Qwen2Tokenizer, the Qwen tokenizer.json files).
QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen_bpe(vocab_size: int) -> Tokenizer:
    """As the Qwen2 / Qwen3 tokenizers (and what transformers 5's Qwen2Tokenizer rebuilds from
    tokenizer.json): NFC, the Qwen split pattern, then byte-level without its own regex; the special
    tokens after the merges. The post-processor appends <|endoftext|> to every input, as
    Qwen/Qwen3-Embedding-*'s and Alibaba-NLP/gte-Qwen2-*'s tokenizer.json do for last-token pooling."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    train(
        tok,
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    spec = json.loads(tok.to_str())
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(list(QWEN_SPECIALS))
    eos = "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0",
        pair=f"$A:0 {eos}:0 $B:1 {eos}:1",
        special_tokens=[(eos, tok.token_to_id(eos))],
    )
    return tok


def llama_bpe(vocab_size: int) -> Tokenizer:
    """SentencePiece-style BPE as Mistral-7B / intfloat/e5-mistral-7b-instruct: <unk> <s> </s>, the
    256 byte-fallback pieces <0x00>..<0xFF>, then the learned pieces; "▁" for spaces, prepended to
    the text (Metaspace, "always", no splitting: what transformers 5's LlamaTokenizer builds for a
    `legacy: true` tokenizer_config, equivalent to the legacy Prepend + Replace normaliser). The
    post-processor wraps every input in <s> ... </s> (e5-mistral's `add_eos_token: true`)."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    train(trainer_tok, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = json.loads(trainer_tok.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if p not in pieces]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(
        models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0",
        pair="<s>:0 $A:0 </s>:0 <s>:1 $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def gemma_bpe(vocab_size: int) -> Tokenizer:
    """SentencePiece-style BPE as google/embeddinggemma-300m (Gemma 3's tokenizer): <pad> <eos> <bos>
    <unk> <mask> at 0..4, the 256 byte-fallback pieces <0x00>..<0xFF>, then the learned pieces. The
    pipeline is the one transformers 5's GemmaTokenizer builds: every space replaced by "▁" (no "▁"
    prepended to the text), split on " " (a no-op after that), BPE with byte fallback. The
    post-processor wraps every input in <bos> ... <eos>, as EmbeddingGemma's tokenizer does."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    train(trainer_tok, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = json.loads(trainer_tok.to_str())["model"]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if p not in pieces]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(
        models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0 <eos>:0",
        pair="<bos>:0 $A:0 <eos>:0 $B:1 <eos>:1",
        special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))],
    )
    return tok


# ---------------------------------------------------------------- families
#
# Each family: a tokenizer, the special tokens for tokenizer_config.json, a Hub-style config.json,
# the pooling, whether a Normalize module follows, and the prefix put on every weight name.

HIDDEN = 32
HEADS = 4
INIT_STD = 0.2  # weight matrices and embeddings; norm weights 1 + N(0, 0.2); biases N(0, 0.1)


def bert_like_config(model_type: str, vocab: int, layers: int, pad: int, positions: int, type_vocab: int, **extra) -> dict:
    return {
        "architectures": [extra.pop("architecture")],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "intermediate_size": 3 * HIDDEN,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": positions,
        "type_vocab_size": type_vocab,
        "initializer_range": INIT_STD,
        "layer_norm_eps": 1e-12 if model_type == "bert" else 1e-5,
        "pad_token_id": pad,
        **extra,
        "torch_dtype": "float32",
    }


def fam_bert():
    tok = wordpiece(1000, True, WORDPIECE_SPECIALS, "[UNK]", "[CLS]", "[SEP]")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None, **special}
    cfg = bert_like_config(
        "bert", tok.get_vocab_size(), 3, 0, MAX_POSITIONS, 2,
        architecture="BertForMaskedLM", position_embedding_type="absolute",
    )
    return tok, "WordPiece", special, tok_cfg, cfg, "cls", True, "bert."


def fam_roberta():
    tok = roberta_bpe(1000)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    tok_cfg = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True, "errors": "replace", **special}
    cfg = bert_like_config(
        "roberta", tok.get_vocab_size(), 2, 1, MAX_POSITIONS + 2, 1,
        architecture="RobertaForMaskedLM", bos_token_id=0, eos_token_id=2, position_embedding_type="absolute",
    )
    return tok, "BPE", special, tok_cfg, cfg, "mean", False, "roberta."


def fam_xlm_roberta():
    tok = unigram(1000, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>", normalize=False)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    tok_cfg = {"tokenizer_class": "XLMRobertaTokenizer", **special}
    cfg = bert_like_config(
        "xlm-roberta", tok.get_vocab_size(), 2, 1, MAX_POSITIONS + 2, 1,
        architecture="XLMRobertaModel", bos_token_id=0, eos_token_id=2, position_embedding_type="absolute",
    )
    return tok, "Unigram", special, tok_cfg, cfg, "mean", True, ""


def fam_camembert():
    # camembert-base's layout: unused fairseq <s>/</s> at 0 and 2, the real ones further on.
    tok = unigram(800, ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<s>", "</s>", "<mask>"], "<s>", "</s>", normalize=True)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>", "additional_special_tokens": ["<s>NOTUSED", "</s>NOTUSED"]}
    # transformers 5's CamembertTokenizer would rebuild the pipeline without the normaliser.
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    cfg = bert_like_config(
        "camembert", tok.get_vocab_size(), 2, 1, MAX_POSITIONS + 2, 1,
        architecture="CamembertModel", bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        position_embedding_type="absolute",
    )
    return tok, "Unigram", special, tok_cfg, cfg, "mean", False, ""


def fam_distilbert():
    # Cased, as distilbert-base-cased: no lowercasing, so no accent stripping either.
    tok = wordpiece(900, False, WORDPIECE_SPECIALS, "[UNK]", "[CLS]", "[SEP]")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tok_cfg = {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": False, "tokenize_chinese_chars": True, "strip_accents": None, **special}
    cfg = {
        "architectures": ["DistilBertModel"],
        "model_type": "distilbert",
        "vocab_size": tok.get_vocab_size(),
        "dim": HIDDEN,
        "n_layers": 3,
        "n_heads": HEADS,
        "hidden_dim": 4 * HIDDEN,
        "activation": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "max_position_embeddings": MAX_POSITIONS,
        "sinusoidal_pos_embds": False,
        "initializer_range": INIT_STD,
        "pad_token_id": 0,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "tie_weights_": True,
        "torch_dtype": "float32",
    }
    return tok, "WordPiece", special, tok_cfg, cfg, "mean", True, ""


def fam_mpnet():
    # As all-mpnet-base-v2: lowercasing WordPiece with <s> $A </s>, [UNK], pad 1.
    tok = wordpiece(1000, True, ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], "[UNK]", "<s>", "</s>")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    tok_cfg = {"tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None, **special}
    cfg = bert_like_config(
        "mpnet", tok.get_vocab_size(), 2, 1, MAX_POSITIONS + 2, 1,
        architecture="MPNetForMaskedLM", bos_token_id=0, eos_token_id=2, relative_attention_num_buckets=32,
    )
    del cfg["type_vocab_size"]
    return tok, "WordPiece", special, tok_cfg, cfg, "mean", True, ""


def fam_modernbert():
    tok = modernbert_bpe(1000)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"], "clean_up_tokenization_spaces": True, **special}
    ids = {k: tok.token_to_id(v) for k, v in special.items()}
    vocab = -(-tok.get_vocab_size() // 64) * 64  # padded past the tokenizer, as ModernBERT-base's 50368
    # Hub-style (answerdotai/ModernBERT-base) field names; transformers 5 turns
    # global_attn_every_n_layers / *_rope_theta into layer_types / rope_parameters when loading.
    cfg = {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 4,
        "num_attention_heads": HEADS,
        "hidden_activation": "gelu",
        "max_position_embeddings": MAX_POSITIONS,
        "global_attn_every_n_layers": 3,
        "local_attention": 16,
        "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "mlp_dropout": 0.0,
        "norm_bias": False,
        "norm_eps": 1e-05,
        "embedding_dropout": 0.0,
        "decoder_bias": True,
        "classifier_activation": "gelu",
        "classifier_bias": False,
        "classifier_dropout": 0.0,
        "classifier_pooling": "mean",
        "initializer_range": INIT_STD,
        "initializer_cutoff_factor": 2.0,
        "deterministic_flash_attn": False,
        "sparse_prediction": False,
        "sparse_pred_ignore_index": -100,
        "tie_word_embeddings": True,
        "pad_token_id": ids["pad_token"],
        "bos_token_id": ids["cls_token"],
        "eos_token_id": ids["sep_token"],
        "cls_token_id": ids["cls_token"],
        "sep_token_id": ids["sep_token"],
        "torch_dtype": "float32",
    }
    return tok, "BPE", special, tok_cfg, cfg, "mean", False, ""


# The two remote-code families: config.json and the weight names as the Hub checkpoints have them
# (see the module docstring and REMOTE_CODE below). Values a real checkpoint has that do not fit a
# tiny model (sizes, n_positions / max_position_embeddings) are scaled down.


def padded_vocab(tok: Tokenizer) -> int:
    return -(-tok.get_vocab_size() // 64) * 64  # as the Hub's 30528 for a 30522-token vocabulary


def fam_nomic_bert():
    # As nomic-ai/nomic-embed-text-v1.5: bert-base-uncased's kind of tokenizer, mean + Normalize,
    # the remote-code config of nomic-ai/nomic-bert-2048 (a GPT2Config subclass, hence the n_*
    # names and GPT-2 leftovers). SwiGLU MLP, rotary on the whole head, half layout, base 1000.
    tok = wordpiece(1000, True, WORDPIECE_SPECIALS, "[UNK]", "[CLS]", "[SEP]")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None, **special}
    remote = "nomic-ai/nomic-bert-2048--"
    cfg = {
        "activation_function": "swiglu",
        "architectures": ["NomicBertModel"],
        "attn_pdrop": 0.0,
        "auto_map": {
            "AutoConfig": remote + "configuration_hf_nomic_bert.NomicBertConfig",
            "AutoModel": remote + "modeling_hf_nomic_bert.NomicBertModel",
            "AutoModelForMaskedLM": remote + "modeling_hf_nomic_bert.NomicBertForPreTraining",
        },
        "bos_token_id": None,
        "causal": False,
        "dense_seq_output": True,
        "embd_pdrop": 0.0,
        "eos_token_id": None,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
        "initializer_range": INIT_STD,
        "layer_norm_epsilon": 1e-12,
        "max_trained_positions": 2048,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "model_type": "nomic_bert",
        "n_embd": HIDDEN,
        "n_head": HEADS,
        "n_inner": 2 * HIDDEN,
        "n_layer": 3,
        "n_positions": MAX_POSITIONS,
        "pad_vocab_size_multiple": 64,
        "parallel_block": False,
        "parallel_block_tied_norm": False,
        "prenorm": False,
        "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "use_cache": True,
        "use_flash_attn": True,
        "use_rms_norm": False,
        "use_xentropy": True,
        "vocab_size": padded_vocab(tok),
    }
    return tok, "WordPiece", special, tok_cfg, cfg, "mean", True, ""


def fam_gte():
    # As Alibaba-NLP/gte-base-en-v1.5: bert-base-uncased's kind of tokenizer, CLS + Normalize, the
    # "new" architecture of Alibaba-NLP/new-impl: fused qkv with bias, GLU MLP (up, gate halves, GELU
    # on the gate), no token type embeddings (type_vocab_size 0), rotary with fixed NTK scaling.
    tok = wordpiece(1000, True, WORDPIECE_SPECIALS, "[UNK]", "[CLS]", "[SEP]")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None, **special}
    remote = "Alibaba-NLP/new-impl--"
    heads = ["MaskedLM", "MultipleChoice", "QuestionAnswering", "SequenceClassification", "TokenClassification"]
    cfg = {
        "architectures": ["NewModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": remote + "configuration.NewConfig",
            "AutoModel": remote + "modeling.NewModel",
            **{f"AutoModelFor{h}": f"{remote}modeling.NewFor{h}" for h in heads},
        },
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": 3 * HIDDEN,
        "layer_norm_eps": 1e-12,
        "layer_norm_type": "layer_norm",
        "logn_attention_clip1": False,
        "logn_attention_scale": False,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "new",
        "num_attention_heads": HEADS,
        "num_hidden_layers": 3,
        "pack_qkv": True,
        "pad_token_id": tok.token_to_id("[PAD]"),
        "position_embedding_type": "rope",
        "rope_scaling": {"factor": 2.0, "type": "ntk"},
        "rope_theta": 500000,
        "torch_dtype": "float32",
        "type_vocab_size": 0,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "vocab_size": padded_vocab(tok),
    }
    return tok, "WordPiece", special, tok_cfg, cfg, "cls", True, ""


# The decoder-only embedders: transformers' Qwen3Model / Qwen2Model / MistralModel (pre-norm RMSNorm
# blocks, rotary, grouped-query attention, SwiGLU, causal attention), last-token pooling, Normalize,
# an EOS appended by the tokenizer and a query prompt in config_sentence_transformers.json. config.json
# is written the way the Hub checkpoints have it (`rope_theta` at the top level, `rope_scaling` null;
# transformers 5 reads it into `rope_parameters`), and the weights as their base-model checkpoints
# have them, without a `model.` prefix (embed_tokens.weight, layers.N.self_attn.q_proj.weight, ...,
# norm.weight: what Qwen3Model.save_pretrained writes). Sizes scaled down: hidden 64, 4 query heads
# sharing 2 key/value heads (head_dim 16), 3 layers.
DECODER_HIDDEN = 64
DECODER_EMBED_STD = 0.005  # embed_tokens; the other weights as in the encoder families (INIT_STD etc.)
WEB_SEARCH_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def decoder_config(model_type: str, architecture: str, vocab: int, intermediate: int, eps: float, theta: float, **extra) -> dict:
    # Sorted by key, as transformers writes config.json (and the Hub files have it).
    return dict(sorted({
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": DECODER_HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": intermediate,
        "max_position_embeddings": 512,
        "model_type": model_type,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        **extra,
        "torch_dtype": "float32",
        "vocab_size": vocab,
    }.items()))


def fam_qwen3():
    # As Qwen/Qwen3-Embedding-0.6B: q/k RMSNorm over each head, explicit head_dim, tied embeddings,
    # no attention biases; the tokenizer appends <|endoftext|>, left padding.
    tok = qwen_bpe(1000)
    eos = tok.token_to_id("<|endoftext|>")
    special = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "bos_token": None, "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "padding_side": "left", **special, "model_max_length": 512,
    }
    cfg = decoder_config(
        "qwen3", "Qwen3ForCausalLM", tok.get_vocab_size(), 2 * DECODER_HIDDEN, 1e-6, 1000000,
        attention_bias=False, bos_token_id=eos, eos_token_id=eos, head_dim=16, max_window_layers=3,
        rope_scaling=None, sliding_window=None, tie_word_embeddings=True, use_cache=True, use_sliding_window=False,
    )
    return tok, "BPE", special, tok_cfg, cfg, "lasttoken", True, ""


def fam_qwen2():
    # As Alibaba-NLP/gte-Qwen2-1.5B-instruct: Qwen2 (biases on q/k/v, none on o, no q/k norm),
    # untied embeddings; sliding_window set but use_sliding_window false (so unused), as there. The Hub
    # config also has an auto_map to remote code (modeling_qwen.Qwen2Model); that is left out, the
    # 1.5B model's remote code being causal Qwen2 (unlike gte-Qwen2-7B-instruct, bidirectional).
    tok = qwen_bpe(900)
    eos = tok.token_to_id("<|endoftext|>")
    special = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "bos_token": None, "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "padding_side": "left", **special, "model_max_length": 512,
    }
    cfg = decoder_config(
        "qwen2", "Qwen2ForCausalLM", tok.get_vocab_size(), 160, 1e-6, 1000000.0,
        bos_token_id=eos, eos_token_id=eos, max_window_layers=2, sliding_window=512, tie_word_embeddings=False,
        use_cache=True, use_sliding_window=False,
    )
    return tok, "BPE", special, tok_cfg, cfg, "lasttoken", True, ""


def fam_qwen2_bidirectional():
    # As the bidirectional Qwen2 embedders (Alibaba-NLP/gte-Qwen2-7B-instruct, Qodo/Qodo-Embed-1-*):
    # qwen2 exactly (same tokenizer, sizes, prompts, last-token pooling) with "is_causal": false in
    # config.json. transformers 5 reads it (generic.merge_with_config_defaults passes is_causal=False
    # to the attention, masking_utils.create_causal_mask turns into create_bidirectional_mask): every
    # token attends to every non-padding token; only padded keys are masked.
    tok, tok_type, special, tok_cfg, cfg, pooling, normalize, prefix = fam_qwen2()
    return tok, tok_type, special, tok_cfg, dict(sorted({**cfg, "is_causal": False}.items())), pooling, normalize, prefix


def fam_mistral():
    # As intfloat/e5-mistral-7b-instruct: Mistral (no biases, no q/k norm), untied, sliding_window
    # 4096 (longer than anything here, so every layer attends to the whole prefix), <s> ... </s>.
    tok = llama_bpe(800)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": True, "legacy": True,
        "clean_up_tokenization_spaces": False, "padding_side": "left", **special, "model_max_length": 512,
    }
    cfg = decoder_config(
        "mistral", "MistralModel", tok.get_vocab_size(), 224, 1e-5, 10000.0,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("</s>"),
        sliding_window=4096, tie_word_embeddings=False, use_cache=False,
    )
    return tok, "BPE", special, tok_cfg, cfg, "lasttoken", True, ""


# As google/embeddinggemma-300m: transformers' Gemma3TextModel (model_type gemma3_text) with
# bidirectional attention, mean pooling, two bias-free Dense layers without activation (hidden ->
# GEMMA_DENSE -> hidden) and Normalize. config.json Hub-style as EmbeddingGemma's (rope_theta for the
# full-attention layers and rope_local_base_freq for the sliding ones at the top level, rope_scaling
# null; transformers 5 reads them into rope_parameters per layer type). Sizes scaled down: hidden 64,
# 4 query heads sharing 1 key/value head (head_dim 16), 4 layers (3 sliding, 1 full), sliding_window 8
# (which transformers, under use_bidirectional_attention, turns into |i - j| <= 4; see gemma3_forward).
GEMMA_DENSE = 96
GEMMA_EMBED_STD = 0.1  # times sqrt(hidden) = 8: scaled embeddings of order 1, as Gemma's


def fam_gemma3():
    tok = gemma_bpe(900)
    ids = {t: tok.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>")}
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    tok_cfg = {
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": True,
        "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False, "padding_side": "right",
        **special, "model_max_length": 512,
    }
    cfg = dict(sorted({
        "_sliding_window_pattern": 4,
        "architectures": ["Gemma3TextModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "final_logit_softcapping": None,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": DECODER_HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": 2 * DECODER_HIDDEN,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "max_position_embeddings": 512,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "pad_token_id": ids["<pad>"],
        "query_pre_attn_scalar": 16,
        "rms_norm_eps": 1e-6,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 8,
        "torch_dtype": "float32",
        "use_bidirectional_attention": True,
        "use_cache": True,
        "vocab_size": tok.get_vocab_size(),
    }.items()))
    return tok, "BPE", special, tok_cfg, cfg, "mean", True, ""


# config_sentence_transformers.json of the decoder families: the prompts as on the Hub (Qwen3-Embedding's
# query prompt ends in "Query:", the others' in "Query: "); no default prompt.
DECODERS = {
    "qwen3": {"prompts": {"query": WEB_SEARCH_QUERY, "document": ""}, "default_prompt_name": None},
    "qwen2": {"prompts": {"query": WEB_SEARCH_QUERY + " "}, "default_prompt_name": None},
    "qwen2-bidirectional": {"prompts": {"query": WEB_SEARCH_QUERY + " "}, "default_prompt_name": None},
    "mistral": {"prompts": {"query": WEB_SEARCH_QUERY + " "}, "default_prompt_name": None},
    # EmbeddingGemma's prompts (it has more, for other tasks; these two are its query / document ones).
    "gemma3": {"prompts": {"query": "task: search result | query: ", "document": "title: none | text: "}, "default_prompt_name": None},
}
QUERY_ITEMS = 10  # the first texts, embedded again with prompt_name="query"


FAMILIES = {
    "bert": fam_bert,
    "roberta": fam_roberta,
    "xlm-roberta": fam_xlm_roberta,
    "camembert": fam_camembert,
    "distilbert": fam_distilbert,
    "mpnet": fam_mpnet,
    "modernbert": fam_modernbert,
    "nomic-bert": fam_nomic_bert,
    "gte": fam_gte,
    "qwen3": fam_qwen3,
    "qwen2": fam_qwen2,
    "qwen2-bidirectional": fam_qwen2_bidirectional,
    "mistral": fam_mistral,
    "gemma3": fam_gemma3,
}
# Each family's seed is SEED plus its index here (new families go at the end, so that the others keep theirs).
SEED_ORDER = ["bert", "camembert", "distilbert", "modernbert", "mpnet", "roberta", "xlm-roberta", "nomic-bert", "gte", "qwen3", "qwen2", "mistral", "gemma3", "qwen2-bidirectional"]


# ---------------------------------------------------------------- remote-code families
#
# For each: the Hub weight names and shapes for a Hub config.json, the same config in the fields of
# transformers' port, and the forward pass of the Hub's remote code, written out from the Hub files.


def nomic_tensors(h: dict) -> dict:
    d, inner = h["n_embd"], h["n_inner"]
    t = {
        "embeddings.word_embeddings.weight": (h["vocab_size"], d),
        "embeddings.token_type_embeddings.weight": (h["type_vocab_size"], d),
        "emb_ln.weight": (d,),
        "emb_ln.bias": (d,),
    }
    for n in range(h["n_layer"]):
        p = f"encoder.layers.{n}."
        t |= {p + "attn.Wqkv.weight": (3 * d, d), p + "attn.out_proj.weight": (d, d)}
        t |= {p + "mlp.fc11.weight": (inner, d), p + "mlp.fc12.weight": (inner, d), p + "mlp.fc2.weight": (d, inner)}
        t |= {p + f"{ln}.{k}": (d,) for ln in ("norm1", "norm2") for k in ("weight", "bias")}
    return t


def nomic_port(h: dict) -> dict:
    # What the fixture's config.json promises and the port (and `hub_forward`) implement.
    assert h["activation_function"] == "swiglu" and not h["prenorm"] and h["rotary_emb_fraction"] == 1.0
    assert not h["rotary_emb_interleaved"] and h["rotary_scaling_factor"] is None and h["rotary_emb_scale_base"] is None
    assert not (h["qkv_proj_bias"] or h["mlp_fc1_bias"] or h["mlp_fc2_bias"])
    return {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "vocab_size": h["vocab_size"],
        "hidden_size": h["n_embd"],
        "num_hidden_layers": h["n_layer"],
        "num_attention_heads": h["n_head"],
        "intermediate_size": h["n_inner"],
        "hidden_act": "silu",
        "max_position_embeddings": h["n_positions"],
        "type_vocab_size": h["type_vocab_size"],
        "layer_norm_eps": h["layer_norm_epsilon"],
        "pad_token_id": 0,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(h["rotary_emb_base"])},
        "torch_dtype": "float32",
    }


def gte_tensors(h: dict) -> dict:
    d, inner = h["hidden_size"], h["intermediate_size"]
    t = {"embeddings.word_embeddings.weight": (h["vocab_size"], d)}
    if h["type_vocab_size"] > 0:
        t["embeddings.token_type_embeddings.weight"] = (h["type_vocab_size"], d)
    t |= {"embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for n in range(h["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        t |= {p + "attention.qkv_proj.weight": (3 * d, d), p + "attention.qkv_proj.bias": (3 * d,)}
        t |= {p + "attention.o_proj.weight": (d, d), p + "attention.o_proj.bias": (d,)}
        t |= {p + "mlp.up_gate_proj.weight": (2 * inner, d), p + "mlp.down_proj.weight": (d, inner), p + "mlp.down_proj.bias": (d,)}
        t |= {p + f"{ln}.{k}": (d,) for ln in ("attn_ln", "mlp_ln") for k in ("weight", "bias")}
    return t


def gte_port(h: dict) -> dict:
    assert h["position_embedding_type"] == "rope" and h["layer_norm_type"] == "layer_norm" and h["pack_qkv"]
    assert not h["logn_attention_scale"]
    theta = float(h["rope_theta"])
    rope = {"rope_type": "default", "rope_theta": theta}
    if h.get("rope_scaling"):
        # new-impl's NTKScalingRotaryEmbedding, at every length: inv_freq_i = (theta f)^(-2i/d) / f^(2/d),
        # which is transformers' "linear" RoPE (inv_freq / factor) with base theta f and factor f^(2/d).
        # The port has no "ntk" type of its own.
        scaling, head_dim = h["rope_scaling"], h["hidden_size"] // h["num_attention_heads"]
        assert scaling["type"] == "ntk" and scaling.get("mixed_b") is None, scaling
        f = float(scaling["factor"])
        rope = {"rope_type": "linear", "rope_theta": theta * f, "factor": f ** (2 / head_dim)}
    return {
        "architectures": ["GteModel"],
        "model_type": "gte",
        "vocab_size": h["vocab_size"],
        "hidden_size": h["hidden_size"],
        "num_hidden_layers": h["num_hidden_layers"],
        "num_attention_heads": h["num_attention_heads"],
        "intermediate_size": h["intermediate_size"],
        "hidden_act": h["hidden_act"],
        "max_position_embeddings": h["max_position_embeddings"],
        "type_vocab_size": h["type_vocab_size"],
        "layer_norm_eps": h["layer_norm_eps"],
        "pad_token_id": h["pad_token_id"],
        "rope_parameters": rope,
        "torch_dtype": "float32",
    }


REMOTE_CODE = {"nomic-bert": (nomic_tensors, nomic_port), "gte": (gte_tensors, gte_port)}

# Families with a sentence-transformers Dense module between Pooling and Normalize: (out_features,
# activation). distilbert is shaped after sentence-transformers/distiluse-base-multilingual-cased-v2
# (DistilBERT, mean pooling, Dense 768 -> 512 with Tanh, no Normalize there; here 32 -> 24 and then
# Normalize). Weights N(0, DENSE_STD), bias N(0, 0.1): the mean-pooled vectors have norms of about
# 5.7, so the pre-activations W x + b are mostly between 0.2 and 2 (median |W x + b| about 0.7, 3%
# above 2.5), where Tanh is neither saturated nor nearly linear; the script prints these figures.
DENSE = {"distilbert": (24, torch.nn.Tanh)}
DENSE_STD = 0.25


def rotate(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half layout ("rotate_half", GPT-NeoX style). x: [heads, tokens, head_dim]."""
    freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, inv_freq: torch.Tensor) -> torch.Tensor:
    split = lambda t: t.view(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    q, k = rotate(q, inv_freq), rotate(k, inv_freq)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (probs @ v).transpose(0, 1).reshape(q.shape[1], -1)


def hub_forward(directory: pathlib.Path, ids: list) -> torch.Tensor:
    """Last hidden state of one unpadded sequence, computed from the Hub config.json and weight names
    the way the remote code does it (nomic-ai's modeling_hf_nomic_bert.py, Alibaba-NLP/new-impl's
    modeling.py), independently of transformers' ports."""
    h = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        w = {k: f.get_tensor(k) for k in f.keys()}
    lin = lambda x, name, bias=True: torch.nn.functional.linear(x, w[name + ".weight"], w.get(name + ".bias") if bias else None)  # noqa: E731
    ids = torch.tensor(ids)
    if h["model_type"] == "nomic_bert":
        nomic_port(h)  # the asserts
        d, heads, eps = h["n_embd"], h["n_head"], h["layer_norm_epsilon"]
        ln = lambda x, name: torch.nn.functional.layer_norm(x, (d,), w[name + ".weight"], w[name + ".bias"], eps)  # noqa: E731
        head_dim = d // heads
        inv_freq = 1.0 / (float(h["rotary_emb_base"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0]
        x = ln(x, "emb_ln")
        for n in range(h["n_layer"]):
            p = f"encoder.layers.{n}."
            q, k, v = lin(x, p + "attn.Wqkv").split(d, dim=-1)
            x = ln(x + lin(attention(q, k, v, heads, inv_freq), p + "attn.out_proj"), p + "norm1")
            mlp = lin(lin(x, p + "mlp.fc11") * torch.nn.functional.silu(lin(x, p + "mlp.fc12")), p + "mlp.fc2")
            x = ln(x + mlp, p + "norm2")
        return x
    assert h["model_type"] == "new", h["model_type"]
    gte_port(h)
    d, heads, eps, inner = h["hidden_size"], h["num_attention_heads"], h["layer_norm_eps"], h["intermediate_size"]
    ln = lambda x, name: torch.nn.functional.layer_norm(x, (d,), w[name + ".weight"], w[name + ".bias"], eps)  # noqa: E731
    act = {"gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu}[h["hidden_act"]]
    head_dim = d // heads
    base, scale = float(h["rope_theta"]), 1.0
    if h.get("rope_scaling"):
        base, scale = base * h["rope_scaling"]["factor"], h["rope_scaling"]["factor"] ** (2 / head_dim)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)) / scale
    x = w["embeddings.word_embeddings.weight"][ids]
    if h["type_vocab_size"] > 0:
        x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    for n in range(h["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = lin(x, p + "attention.qkv_proj").split(d, dim=-1)
        x = ln(x + lin(attention(q, k, v, heads, inv_freq), p + "attention.o_proj"), p + "attn_ln")
        up, gate = lin(x, p + "mlp.up_gate_proj").split(inner, dim=-1)
        x = ln(x + lin(up * act(gate), p + "mlp.down_proj"), p + "mlp_ln")
    return x


def worst_of(values) -> float:
    """The largest of `values` (0.0 for none), or NaN as soon as one is NaN: `max()` keeps a NaN
    only when it comes first, so a NaN anywhere else would pass a `<= tolerance` check."""
    worst = 0.0
    for v in values:
        v = float(v)
        if math.isnan(v):
            return math.nan
        worst = max(worst, v)
    return worst


def hub_check(name: str, directory: pathlib.Path, vectors, pooling: str, normalized: bool) -> None:
    """Every reference embedding again, from `hub_forward` on the Hub files."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(MAX_SEQ_LENGTH)
    worst = 0.0
    with torch.no_grad():
        for text, vec in zip(TEXTS, vectors):
            hidden = hub_forward(directory, tok.encode(text).ids)
            pooled = hidden[0] if pooling == "cls" else hidden.mean(0)
            if normalized:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            worst = worst_of([worst, float((pooled - torch.as_tensor(vec)).abs().max())])
    print(f"make_fixtures: {name}: the remote code's forward pass from the Hub files: max abs difference {worst:.1e}")
    if not worst <= 1e-5:
        raise SystemExit(f"make_fixtures: {name}: transformers' port and the Hub forward pass disagree by {worst:g}")


# ---------------------------------------------------------------- decoder families: checks


def decoder_forward(directory: pathlib.Path, ids: list, pad: int = 0) -> torch.Tensor:
    """Last hidden state of one unpadded sequence, from config.json and model.safetensors alone, the
    way transformers 5's Qwen3Model / Qwen2Model / MistralModel compute it:
    x = embed_tokens[ids]; per layer x += o_proj(attn(rms(x))), x += down(silu(gate(y)) * up(y)) with
    y = rms(x); then rms(x) with norm.weight. rms(x) = w * (x * rsqrt(mean(x^2) + eps)) in float32.
    Attention: q, k, v projections (with biases where the checkpoint has them: Qwen2's q/k/v), heads
    of head_dim; Qwen3 applies q_norm / k_norm (RMSNorm over head_dim, per head) before rotary;
    rotary in the half layout on the whole head, positions 0..n-1, inv_freq_i = theta^(-2i/head_dim);
    key/value head j serves query heads j*g .. j*g+g-1 (g = heads / kv_heads, repeat_interleave);
    scores / sqrt(head_dim), causal (key j <= query i, and i - j < sliding_window where one applies),
    or where config.json has "is_causal": false, bidirectional (every key). With pad > 0: the sequence
    left-padded by `pad` copies of ids[-1], positions 0..pad+n-1 over the whole row (as transformers
    numbers a padded row) and the padded keys masked; the padded rows are dropped from the result."""
    h = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        w = {k: f.get_tensor(k) for k in f.keys()}
    lin = lambda x, name: torch.nn.functional.linear(x, w[name + ".weight"], w.get(name + ".bias"))  # noqa: E731
    eps = h["rms_norm_eps"]

    def rms(x: torch.Tensor, name: str) -> torch.Tensor:
        return w[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    d, heads, kv_heads = h["hidden_size"], h["num_attention_heads"], h["num_key_value_heads"]
    head_dim = h.get("head_dim") or d // heads
    assert h.get("rope_scaling") is None and h["hidden_act"] == "silu", h
    window = h.get("sliding_window") if (h["model_type"] == "mistral" or h.get("use_sliding_window")) else None
    inv_freq = 1.0 / (float(h["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ids = [ids[-1]] * pad + list(ids)
    n = len(ids)
    pos = torch.arange(n)
    allowed = pos[None, :] <= pos[:, None] if h.get("is_causal", True) else torch.ones(n, n, dtype=torch.bool)
    if window is not None:
        allowed &= pos[:, None] - pos[None, :] < window
    allowed &= pos[None, :] >= pad  # key padding mask
    x = w["embed_tokens.weight"][torch.tensor(ids)]
    for layer in range(h["num_hidden_layers"]):
        p = f"layers.{layer}."
        y = rms(x, p + "input_layernorm.weight")
        q = lin(y, p + "self_attn.q_proj").view(n, heads, head_dim).transpose(0, 1)
        k = lin(y, p + "self_attn.k_proj").view(n, kv_heads, head_dim).transpose(0, 1)
        v = lin(y, p + "self_attn.v_proj").view(n, kv_heads, head_dim).transpose(0, 1)
        if p + "self_attn.q_norm.weight" in w:
            q, k = rms(q, p + "self_attn.q_norm.weight"), rms(k, p + "self_attn.k_norm.weight")
        q, k = rotate(q, inv_freq), rotate(k, inv_freq)
        k, v = k.repeat_interleave(heads // kv_heads, dim=0), v.repeat_interleave(heads // kv_heads, dim=0)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~allowed, float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, heads * head_dim)
        x = x + lin(out, p + "self_attn.o_proj")
        y = rms(x, p + "post_attention_layernorm.weight")
        x = x + lin(torch.nn.functional.silu(lin(y, p + "mlp.gate_proj")) * lin(y, p + "mlp.up_proj"), p + "mlp.down_proj")
    return rms(x, "norm.weight")[pad:]


def decoder_checks(name: str, directory: pathlib.Path, model: SentenceTransformer, vectors, queries, query_prompt: str) -> None:
    """The reference again, four ways: (1) from `decoder_forward` on the files, one unpadded text at
    a time (last token, normalised); (2) with eager attention instead of sdpa; (3) each text alone
    against all texts in one left-padded batch (printed: the batch-composition noise a Rust port sees
    as its floor); (4) the query prompt given as text, not as prompt_name."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(MAX_SEQ_LENGTH)
    texts = TEXTS + [query_prompt + t for t in TEXTS[:QUERY_ITEMS]]
    expected = torch.cat([torch.as_tensor(vectors), torch.as_tensor(queries)])
    with torch.no_grad():
        mine = torch.stack([torch.nn.functional.normalize(decoder_forward(directory, tok.encode(t).ids)[-1], dim=-1) for t in texts])
    worst = float((mine - expected).abs().max())
    print(f"make_fixtures: {name}: forward pass from the files (decoder_forward, unpadded): max abs difference {worst:.1e}")
    if not worst <= 1e-5:
        raise SystemExit(f"make_fixtures: {name}: sentence-transformers and decoder_forward disagree by {worst:g}")
    h = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if not h.get("is_causal", True):
        # Bidirectional: every text left-padded to the longest, with a key padding mask (the padded
        # positions are seen by no one), must still give the reference; and the causal model on the
        # same weights (config.json without is_causal) must not.
        longest = max(len(tok.encode(t).ids) for t in texts)
        with torch.no_grad():
            padded = torch.stack([
                torch.nn.functional.normalize(decoder_forward(directory, ids, pad=longest - len(ids))[-1], dim=-1)
                for ids in (tok.encode(t).ids for t in texts)
            ])
        worst_padded = float((padded - expected).abs().max())
        causal_dir = pathlib.Path(tempfile.mkdtemp())
        try:
            shutil.copytree(directory, causal_dir, dirs_exist_ok=True)
            write_json(causal_dir / "config.json", {k: v for k, v in h.items() if k != "is_causal"})
            causal = SentenceTransformer(str(causal_dir), device="cpu")
            c = torch.cat([torch.as_tensor(causal.encode(TEXTS)), torch.as_tensor(causal.encode(TEXTS[:QUERY_ITEMS], prompt_name="query"))])
        finally:
            shutil.rmtree(causal_dir)
        cos = (torch.nn.functional.normalize(c, dim=-1) * torch.nn.functional.normalize(expected, dim=-1)).sum(-1)
        print(
            f"make_fixtures: {name}: decoder_forward left-padded to {longest} with a key padding mask: max abs difference "
            f"{worst_padded:.1e}; causal attention on the same weights: cosine to the reference min {float(cos.min()):.4f}, "
            f"mean {float(cos.mean()):.4f}"
        )
        if not worst_padded <= 1e-5:
            raise SystemExit(f"make_fixtures: {name}: padded decoder_forward disagrees by {worst_padded:g}")
        if not float(cos.min()) < 0.999:
            raise SystemExit(f"make_fixtures: {name}: causal and bidirectional embeddings barely differ: is is_causal read?")

    eager = SentenceTransformer(str(directory), device="cpu", model_kwargs={"attn_implementation": "eager"})
    assert eager[0].auto_model.config._attn_implementation == "eager"
    assert model[0].auto_model.config._attn_implementation == "sdpa", model[0].auto_model.config._attn_implementation
    e = torch.cat([torch.as_tensor(eager.encode(TEXTS)), torch.as_tensor(eager.encode(TEXTS[:QUERY_ITEMS], prompt_name="query"))])
    worst_eager = float((e - expected).abs().max())
    alone = torch.as_tensor(model.encode(texts, batch_size=1))
    together = torch.as_tensor(model.encode(texts, batch_size=len(texts)))
    worst_batch = float((alone - together).abs().max())
    as_text = torch.as_tensor(model.encode([query_prompt + t for t in TEXTS[:QUERY_ITEMS]]))
    worst_text = float((as_text - torch.as_tensor(queries)).abs().max())
    print(
        f"make_fixtures: {name}: eager vs sdpa attention {worst_eager:.1e}; each text alone vs all {len(texts)} in one "
        f"left-padded batch {worst_batch:.1e}; prompt as text vs prompt_name {worst_text:.1e} (max abs differences)"
    )
    if not worst_of([worst_eager, worst_batch, worst_text]) <= 1e-5:
        raise SystemExit(f"make_fixtures: {name}: eager / batched / prompt-as-text embeddings differ by more than 1e-5")


def gemma3_forward(directory: pathlib.Path, ids: list, variant: str = "") -> torch.Tensor:
    """Last hidden state of one unpadded sequence from config.json and model.safetensors alone, the
    way transformers 5's Gemma3TextModel computes it (all in float32):
    x = embed_tokens[ids] * sqrt(hidden) (the scale a float32 tensor, cast to the weights' dtype);
    per layer: x += post_attention_layernorm(o_proj(attn(input_layernorm(x)))),
    x += post_feedforward_layernorm(down(gelu_tanh(gate(y)) * up(y))) with y = pre_feedforward_layernorm(x);
    then norm(x). rms(x) = (x * rsqrt(mean(x^2) + eps)) * (1 + w). Attention: q, k, v without biases,
    q_norm / k_norm (the same RMSNorm over head_dim, per head) before rotary; rotary in the half layout,
    positions 0..n-1, theta rope_theta in full_attention layers and rope_local_base_freq in
    sliding_attention ones; one key/value head per heads/kv_heads query heads; scores times
    query_pre_attn_scalar^-0.5, no softcapping. use_bidirectional_attention: full layers see every key;
    sliding layers key j from query i where |i - j| <= sliding_window // 2 (transformers stores
    sliding_window // 2 + 1 and masks |i - j| < that). `variant` computes a wrong port instead, for the
    sensitivity printout."""
    h = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        w = {k: f.get_tensor(k) for k in f.keys()}
    lin = lambda x, name: torch.nn.functional.linear(x, w[name + ".weight"])  # noqa: E731
    eps = h["rms_norm_eps"]
    one = 0.0 if variant == "norm w, not 1 + w" else 1.0

    def rms(x: torch.Tensor, name: str) -> torch.Tensor:
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * (one + w[name])

    d, heads, kv_heads, head_dim = h["hidden_size"], h["num_attention_heads"], h["num_key_value_heads"], h["head_dim"]
    assert h["use_bidirectional_attention"] and h["hidden_activation"] == "gelu_pytorch_tanh" and h.get("rope_scaling") is None
    assert h["attn_logit_softcapping"] is None and not h["attention_bias"], h
    n = len(ids)
    pos = torch.arange(n)
    dist = pos[:, None] - pos[None, :]
    allowed = {"full_attention": torch.ones(n, n, dtype=torch.bool), "sliding_attention": dist.abs() <= h["sliding_window"] // 2}
    if variant == "causal":
        allowed = {"full_attention": dist >= 0, "sliding_attention": (dist >= 0) & (dist < h["sliding_window"])}
    elif variant == "no sliding window":
        allowed["sliding_attention"] = allowed["full_attention"]
    elif variant == "window |i-j| < sliding_window":
        allowed["sliding_attention"] = dist.abs() < h["sliding_window"]
    theta = {"full_attention": float(h["rope_theta"]), "sliding_attention": float(h["rope_local_base_freq"])}
    if variant == "rope_theta for every layer":
        theta["sliding_attention"] = theta["full_attention"]
    inv_freq = {t: 1.0 / (b ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)) for t, b in theta.items()}
    scale = torch.tensor(d**0.5, dtype=torch.float32)
    x = w["embed_tokens.weight"][torch.tensor(ids)] * (1.0 if variant == "no embedding scale" else scale)
    for layer, kind in enumerate(h["layer_types"]):
        p = f"layers.{layer}."
        y = rms(x, p + "input_layernorm.weight")
        q = lin(y, p + "self_attn.q_proj").view(n, heads, head_dim).transpose(0, 1)
        k = lin(y, p + "self_attn.k_proj").view(n, kv_heads, head_dim).transpose(0, 1)
        v = lin(y, p + "self_attn.v_proj").view(n, kv_heads, head_dim).transpose(0, 1)
        if variant != "no q/k norm":
            q, k = rms(q, p + "self_attn.q_norm.weight"), rms(k, p + "self_attn.k_norm.weight")
        q, k = rotate(q, inv_freq[kind]), rotate(k, inv_freq[kind])
        k, v = k.repeat_interleave(heads // kv_heads, dim=0), v.repeat_interleave(heads // kv_heads, dim=0)
        scores = (q @ k.transpose(-1, -2) * h["query_pre_attn_scalar"] ** -0.5).masked_fill(~allowed[kind], float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, heads * head_dim)
        x = x + rms(lin(out, p + "self_attn.o_proj"), p + "post_attention_layernorm.weight")
        y = rms(x, p + "pre_feedforward_layernorm.weight")
        act = torch.nn.functional.gelu(lin(y, p + "mlp.gate_proj"), approximate="tanh")
        x = x + rms(lin(act * lin(y, p + "mlp.up_proj"), p + "mlp.down_proj"), p + "post_feedforward_layernorm.weight")
    return rms(x, "norm.weight")


def gemma3_embed(directory: pathlib.Path, ids: list, variant: str = "") -> torch.Tensor:
    """Mean over the tokens, 2_Dense, 3_Dense (no bias, no activation), normalised."""
    v = gemma3_forward(directory, ids, variant).mean(0)
    for folder in ("2_Dense", "3_Dense"):
        with safe_open(str(directory / folder / "model.safetensors"), "pt") as f:
            assert list(f.keys()) == ["linear.weight"], list(f.keys())
            v = torch.nn.functional.linear(v, f.get_tensor("linear.weight"))
    return torch.nn.functional.normalize(v, dim=-1)


GEMMA3_VARIANTS = [
    "causal", "no sliding window", "window |i-j| < sliding_window", "norm w, not 1 + w", "no embedding scale",
    "no q/k norm", "rope_theta for every layer",
]


def gemma3_checks(directory: pathlib.Path, model: SentenceTransformer, vectors, queries, query_prompt: str) -> None:
    """As decoder_checks, for gemma3: `gemma3_embed` on the files (one unpadded text at a time),
    eager attention, batch against alone (right padding), prompt as text; then how far some wrong
    ports land (worst cosine to the reference over all texts)."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(MAX_SEQ_LENGTH)
    texts = TEXTS + [query_prompt + t for t in TEXTS[:QUERY_ITEMS]]
    expected = torch.nn.functional.normalize(torch.cat([torch.as_tensor(vectors), torch.as_tensor(queries)]), dim=-1)
    encoded = [tok.encode(t).ids for t in texts]
    with torch.no_grad():
        mine = torch.stack([gemma3_embed(directory, ids) for ids in encoded])
        worst = float((mine - expected).abs().max())
        print(f"make_fixtures: gemma3: forward pass from the files (gemma3_forward, unpadded): max abs difference {worst:.1e}")
        if not worst <= 1e-5:
            raise SystemExit(f"make_fixtures: gemma3: sentence-transformers and gemma3_forward disagree by {worst:g}")
        cosines = []
        for variant in GEMMA3_VARIANTS:
            other = torch.stack([gemma3_embed(directory, ids, variant) for ids in encoded])
            cosines.append(f"{variant} {float((other * expected).sum(-1).min()):.3f}")
        print(f"make_fixtures: gemma3: worst cosine to the reference of a wrong port: {'; '.join(cosines)}")
    eager = SentenceTransformer(str(directory), device="cpu", model_kwargs={"attn_implementation": "eager"})
    assert eager[0].auto_model.config._attn_implementation == "eager"
    assert model[0].auto_model.config._attn_implementation == "sdpa", model[0].auto_model.config._attn_implementation
    e = torch.cat([torch.as_tensor(eager.encode(TEXTS)), torch.as_tensor(eager.encode(TEXTS[:QUERY_ITEMS], prompt_name="query"))])
    worst_eager = float((e - expected).abs().max())
    alone = torch.as_tensor(model.encode(texts, batch_size=1))
    together = torch.as_tensor(model.encode(texts, batch_size=len(texts)))
    worst_batch = float((alone - together).abs().max())
    as_text = torch.as_tensor(model.encode([query_prompt + t for t in TEXTS[:QUERY_ITEMS]]))
    worst_text = float((as_text - torch.as_tensor(queries)).abs().max())
    print(
        f"make_fixtures: gemma3: eager vs sdpa attention {worst_eager:.1e}; each text alone vs all {len(texts)} in one "
        f"{model.tokenizer.padding_side}-padded batch {worst_batch:.1e}; prompt as text vs prompt_name {worst_text:.1e} (max abs differences)"
    )
    if not worst_of([worst_eager, worst_batch, worst_text]) <= 1e-5:
        raise SystemExit("make_fixtures: gemma3: eager / batched / prompt-as-text embeddings differ by more than 1e-5")


# ---------------------------------------------------------------- building


def write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def random_weights(shapes: dict, gen: torch.Generator, gemma: bool = False) -> dict:
    """Every tensor (name: shape) drawn afresh, in name order, from the family's seeded generator.
    gemma: Gemma's RMSNorm scales by (1 + weight), so its norm weights are drawn around 0, not 1,
    and its token embeddings (multiplied by sqrt(hidden) in the model) with GEMMA_EMBED_STD."""
    out = {}
    for name, shape in sorted(shapes.items()):
        shape = tuple(shape)
        if name.endswith("relative_attention_bias.weight"):
            # MPNet's bucketed position bias: large enough that dropping it is visible.
            v = torch.randn(shape, generator=gen) * 1.0
        elif name.startswith("encoder.layers.") and name.endswith(".attn.Wqkv.weight"):
            # NomicBERT's fused query/key/value projection (no biases, mean pooling): sharper
            # attention, so that a wrong rotary embedding changes the result clearly. (ModernBERT's
            # is named layers.N.attn.Wqkv and keeps the default.)
            v = 0.5 * torch.randn(shape, generator=gen)
        elif gemma and name == "embed_tokens.weight":
            v = GEMMA_EMBED_STD * torch.randn(shape, generator=gen)
        elif gemma and len(shape) == 1:
            v = 0.2 * torch.randn(shape, generator=gen)  # (1 + w): scales 1 + N(0, 0.2)
        elif name == "embed_tokens.weight":
            # The decoder families' token embeddings: small, as in real decoders (Mistral's and
            # Qwen's are of the order of 0.01 or less), so that the first RMSNorm's mean square is
            # close to its eps and a wrong rms_norm_eps shows (1e-5 instead of 1e-6 or the reverse).
            v = DECODER_EMBED_STD * torch.randn(shape, generator=gen)
        elif len(shape) == 1 and name.endswith(".weight"):
            v = 1.0 + 0.2 * torch.randn(shape, generator=gen)  # norm scales
        elif len(shape) == 1:
            v = 0.1 * torch.randn(shape, generator=gen)  # biases
        else:
            v = INIT_STD * torch.randn(shape, generator=gen)
        out[name] = v.to(torch.float32).contiguous()
    return out


def seed_of(name: str) -> int:
    return SEED + SEED_ORDER.index(name)


def build(name: str, directory: pathlib.Path) -> tuple:
    """Writes every file of one fixture but reference.json; returns (tokenizer type, pooling, normalize)."""
    tok, tok_type, special, tok_cfg, cfg, pooling, normalize, prefix = FAMILIES[name]()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {**tok_cfg, "model_max_length": tok_cfg.get("model_max_length", MAX_POSITIONS)})
    write_json(directory / "special_tokens_map.json", special)
    write_json(directory / "config.json", cfg)

    if name in REMOTE_CODE:
        shapes = REMOTE_CODE[name][0](cfg)  # the Hub's weight names
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(directory)))
        shapes = {k: t.shape for k, t in model.state_dict().items() if t.is_floating_point()}
    gen = torch.Generator().manual_seed(seed_of(name))
    weights = random_weights(shapes, gen, gemma=name == "gemma3")
    save_file({prefix + k: v for k, v in weights.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "model.safetensors").chmod(0o644)

    if name == "gemma3":
        # As EmbeddingGemma: Dense hidden -> GEMMA_DENSE and back, no bias, Identity, each written by
        # sentence-transformers' Dense.save (linear.weight only); weights N(0, 1/in_features), drawn
        # after the transformer's. modules.json with the sentence_transformers.models.* names, as on the Hub.
        d = cfg["hidden_size"]
        kinds = [("Transformer", ""), ("Pooling", "1_Pooling")]
        for i, (n_in, n_out) in enumerate([(d, GEMMA_DENSE), (GEMMA_DENSE, d)]):
            weight = (torch.randn((n_out, n_in), generator=gen) / math.sqrt(n_in)).contiguous()
            dense = Dense(n_in, n_out, bias=False, activation_function=torch.nn.Identity(), init_weight=weight)
            folder = directory / f"{i + 2}_Dense"
            folder.mkdir()
            dense.save(str(folder), safe_serialization=True)
            for f in ("config.json", "model.safetensors"):
                (folder / f).chmod(0o644)
            kinds.append(("Dense", folder.name))
        kinds.append(("Normalize", "4_Normalize"))
        modules = [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{cls}"}
            for i, (cls, path) in enumerate(kinds)
        ]
    elif name in DENSE:
        # Written by sentence-transformers' own Dense.save (config.json, then model.safetensors with
        # linear.weight [out, in] and linear.bias [out]). Its weights continue the family's
        # generator, after the transformer's (so those stay what they were without the head), in
        # name order as random_weights draws: bias N(0, 0.1), then weight N(0, DENSE_STD).
        out_features, activation = DENSE[name]
        bias = (0.1 * torch.randn((out_features,), generator=gen)).contiguous()
        weight = (DENSE_STD * torch.randn((out_features, HIDDEN), generator=gen)).contiguous()
        dense = Dense(HIDDEN, out_features, bias=True, activation_function=activation(), init_weight=weight, init_bias=bias)
        (directory / "2_Dense").mkdir()
        dense.save(str(directory / "2_Dense"), safe_serialization=True)
        for f in ("config.json", "model.safetensors"):
            (directory / "2_Dense" / f).chmod(0o644)
        # The module types as sentence-transformers 6.2 writes them (SentenceTransformer.save: the
        # defining module and class name); the families without a Dense keep the older
        # sentence_transformers.models.* aliases that most Hub models have. Normalize has no folder,
        # as in the other families: sentence-transformers does not read it.
        kinds = [(Transformer, ""), (Pooling, "1_Pooling"), (Dense, "2_Dense"), (Normalize, "3_Normalize")]
        assert normalize, name
        modules = [
            {"idx": i, "name": str(i), "path": path, "type": f"{cls.__module__}.{cls.__name__}"}
            for i, (cls, path) in enumerate(kinds)
        ]
    else:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(directory / "modules.json", modules)
    pooling_cfg = {
        "word_embedding_dimension": cfg["hidden_size"] if name in DECODERS else HIDDEN,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    if name in DECODERS:
        # As the Hub's decoder embedders write it (sentence-transformers 3+): every mode named.
        pooling_cfg |= {"pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": pooling == "lasttoken", "include_prompt": True}
        write_json(directory / "config_sentence_transformers.json", {**DECODERS[name], "similarity_fn_name": "cosine"})
    write_json(directory / "1_Pooling" / "config.json", pooling_cfg)
    write_json(directory / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    return tok_type, pooling, normalize


def port_copy(name: str, directory: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    """The directory sentence-transformers loads: the fixture itself, or for a remote-code family a
    copy of it whose config.json is translated for transformers' port (same weight file)."""
    if name not in REMOTE_CODE:
        return directory
    copy = tmp / f"{name}.port"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(directory, copy)
    write_json(copy / "config.json", REMOTE_CODE[name][1](json.loads((directory / "config.json").read_text(encoding="utf-8"))))
    return copy


def compute(name: str, directory: pathlib.Path, tmp: pathlib.Path, tok_type: str, pooling: str) -> dict:
    loaded = port_copy(name, directory, tmp)
    model = SentenceTransformer(str(loaded), device="cpu")
    model.eval()
    sanity(name, loaded, model)
    enc = model.tokenizer(TEXTS, truncation=True, max_length=model.max_seq_length)
    dense = [m for m in model if isinstance(m, Dense)]
    pre = []  # the Dense pre-activations, W x + b, for the printout below
    hooks = [m.linear.register_forward_hook(lambda _m, _i, out: pre.append(out.detach().reshape(-1))) for m in dense]
    vectors = model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    for h in hooks:
        h.remove()
    if pre:
        z = torch.cat(pre).abs()
        print(
            f"make_fixtures: {name}: Dense pre-activations |Wx+b|: median {float(z.median()):.2f}, mean {float(z.mean()):.2f}, "
            f"{float((z > 1).float().mean()):.0%} above 1, {float((z > 2.5).float().mean()):.0%} above 2.5"
        )
    normalized = any(type(m).__name__ == "Normalize" for m in model)
    if name in REMOTE_CODE:
        hub_check(name, directory, vectors, pooling, normalized)
    extra = {}
    if name in DECODERS:
        # The first texts again as queries: sentence-transformers prepends the prompt to the text
        # (one string, tokenised as a whole; the token count includes the prompt's tokens).
        prompt = model.prompts["query"]
        queries = model.encode(TEXTS[:QUERY_ITEMS], prompt_name="query", convert_to_numpy=True, normalize_embeddings=False)
        query_enc = model.tokenizer([prompt + t for t in TEXTS[:QUERY_ITEMS]], truncation=True, max_length=model.max_seq_length)
        if name == "gemma3":
            gemma3_checks(directory, model, vectors, queries, prompt)
        else:
            decoder_checks(name, directory, model, vectors, queries, prompt)
        extra = {
            "prompts": model.prompts,
            "query_prompt_name": "query",
            "query_items": [
                {"text": t, "token_count": len(ids), "embedding": [round(float(x), DECIMALS) for x in vec]}
                for t, ids, vec in zip(TEXTS[:QUERY_ITEMS], query_enc["input_ids"], queries)
            ],
        }
    v = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1)
    cos = v @ v.T
    n = len(TEXTS)
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))
    print(f"make_fixtures: {name}: mean pairwise cosine between different texts {mean_cos:.3f}")
    return {
        "model": f"random {name} fixture (python/make_fixtures.py, seed {seed_of(name)})",
        "family": name,
        "tokenizer": tok_type,
        "reference": f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}"
        + (f" ({type(model[0].auto_model).__name__}, config.json translated from the remote-code one)" if name in REMOTE_CODE else "")
        + f", tokenizers {tokenizers.__version__}, torch {torch.__version__}, CPU, float32",
        "pooling": pooling,
        "normalized": normalized,
        "max_seq_length": model.max_seq_length,
        "items": [
            {"text": t, "token_count": len(ids), "embedding": [round(float(x), DECIMALS) for x in vec]}
            for t, ids, vec in zip(TEXTS, enc["input_ids"], vectors)
        ],
        **extra,
    }


def sanity(name: str, directory: pathlib.Path, model: SentenceTransformer) -> None:
    """What a Rust loader sees must be what sentence-transformers ran: tokenizer.json alone gives
    the same token ids (transformers 5's tokenizer classes rebuild parts of the pipeline from their
    own code, so the families use tokenizer.json files that agree with that), and every stored
    weight is used (none missing, none left over)."""
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    loaded, stored = json.loads(model.tokenizer.backend_tokenizer.to_str()), json.loads(raw.to_str())
    for part in ("normalizer", "pre_tokenizer", "model"):
        if loaded[part] != stored[part]:
            raise SystemExit(f"make_fixtures: {name}: transformers' tokenizer {part} differs from tokenizer.json")
    raw.enable_truncation(MAX_SEQ_LENGTH)
    texts = list(TEXTS)
    if name == "gemma3":
        texts += [model.prompts["query"] + t for t in TEXTS[:QUERY_ITEMS]]
        # What transformers made of the Hub-style config.json (see gemma3_forward).
        h, c = json.loads((directory / "config.json").read_text(encoding="utf-8")), model[0].auto_model.config
        assert c.rope_parameters == {
            "full_attention": {"rope_type": "default", "rope_theta": float(h["rope_theta"])},
            "sliding_attention": {"rope_type": "default", "rope_theta": float(h["rope_local_base_freq"])},
        }, c.rope_parameters
        assert c.layer_types == h["layer_types"] and c.use_bidirectional_attention, c
        assert c.sliding_window == h["sliding_window"] // 2 + 1, c.sliding_window
        assert type(model[0].auto_model).__name__ == "Gemma3TextModel", type(model[0].auto_model)
    elif name in DECODERS:
        assert model.tokenizer.padding_side == "left", model.tokenizer.padding_side
        texts += [model.prompts["query"] + t for t in TEXTS[:QUERY_ITEMS]]
        # What transformers made of the Hub-style config.json.
        h, c = json.loads((directory / "config.json").read_text(encoding="utf-8")), model[0].auto_model.config
        assert c.rope_parameters == {"rope_type": "default", "rope_theta": float(h["rope_theta"])}, c.rope_parameters
        assert set(getattr(c, "layer_types", None) or ["full_attention"]) == {"full_attention"}, c
        assert c.sliding_window == (4096 if name == "mistral" else None), c.sliding_window
        assert getattr(c, "is_causal", True) == h.get("is_causal", True), c
    st_ids = model.tokenizer(texts, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
    for text, a, b in zip(texts, st_ids, raw.encode_batch(texts)):
        if list(a) != b.ids:
            raise SystemExit(f"make_fixtures: {name}: {text[:40]!r}: sentence-transformers ids {a} != tokenizer.json ids {b.ids}")
    # modules.json names the classes sentence-transformers instantiated (and would write back).
    listed = [m["type"] for m in json.loads((directory / "modules.json").read_text(encoding="utf-8"))]
    built = [f"{type(m).__module__}.{type(m).__name__}" for m in model]
    if name in DENSE and listed != built:
        raise SystemExit(f"make_fixtures: {name}: modules.json lists {listed}, sentence-transformers built {built}")
    if [t.rsplit(".", 1)[-1] for t in listed] != [t.rsplit(".", 1)[-1] for t in built]:
        raise SystemExit(f"make_fixtures: {name}: modules.json lists {listed}, sentence-transformers built {built}")
    _, info = AutoModel.from_pretrained(str(directory), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"make_fixtures: {name}: loading model.safetensors: {bad}")


# ---------------------------------------------------------------- check


def check_reference(new: dict, old: dict, tolerance: float) -> tuple:
    problems = []
    for key in ("family", "tokenizer", "pooling", "normalized", "max_seq_length"):
        if new[key] != old.get(key):
            problems.append(f"{key}: computed {new[key]!r}, committed {old.get(key)!r}")
    if len(new["items"]) != len(old["items"]):
        return problems + [f"{len(new['items'])} items computed, {len(old['items'])} committed"], 0.0
    pairs = list(zip(new["items"], old["items"]))
    if "query_items" in new or "query_items" in old:
        for key in ("prompts", "query_prompt_name"):
            if new.get(key) != old.get(key):
                problems.append(f"{key}: computed {new.get(key)!r}, committed {old.get(key)!r}")
        if len(new.get("query_items", [])) != len(old.get("query_items", [])):
            return problems + ["query_items: the counts differ"], 0.0
        pairs += list(zip(new["query_items"], old["query_items"]))
    worst = 0.0
    for i, (a, b) in enumerate(pairs):
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
    return problems, worst


def check_files(new_dir: pathlib.Path, old_dir: pathlib.Path, tolerance: float) -> list:
    problems = []
    new_files = sorted(p.relative_to(new_dir).as_posix() for p in new_dir.rglob("*") if p.is_file())
    old_files = sorted(p.relative_to(old_dir).as_posix() for p in old_dir.rglob("*") if p.is_file())
    if new_files != old_files:
        problems.append(f"files: generated {new_files}, committed {old_files}")
    for rel in new_files:
        if rel not in old_files:
            continue
        a, b = new_dir / rel, old_dir / rel
        if rel.endswith(".json") and rel != "reference.json":
            if json.loads(a.read_text(encoding="utf-8")) != json.loads(b.read_text(encoding="utf-8")):
                problems.append(f"{rel} differs from the committed one")
        elif rel.endswith(".safetensors"):
            with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
                if sorted(fa.keys()) != sorted(fb.keys()):
                    problems.append(f"{rel}: tensor names differ")
                    continue
                for k in fa.keys():
                    ta, tb = fa.get_tensor(k), fb.get_tensor(k)
                    if ta.shape != tb.shape or ta.dtype != tb.dtype:
                        problems.append(f"{rel}: {k}: {ta.dtype}{list(ta.shape)} vs committed {tb.dtype}{list(tb.shape)}")
                    elif not float((ta - tb).abs().max()) <= tolerance:
                        problems.append(f"{rel}: {k}: values differ by more than {tolerance:g}")
    return problems


class RunsCode:
    """Unpickling this calls os.system: a pickle that is code, which the Rust reader must refuse."""

    def __reduce__(self):
        return (os.system, ("echo this pickle ran code",))


class CustomClass:
    """A class of this script (`__main__.CustomClass`), which the Rust reader must refuse."""


def write_torch_pickles(out: pathlib.Path) -> None:
    """Writes out/torch-pickle/: distilbert/pytorch_model.bin and distilbert/2_Dense/pytorch_model.bin
    (the tests put them in a copy of the distilbert fixture in place of its safetensors), the
    distilbert fixture's weights written by torch.save of the modules' state_dict(), as transformers'
    and sentence-transformers' older save methods wrote them (an OrderedDict with `_metadata`); two
    of its tensors are saved as views (a transposed view, and a view at a storage offset), which
    torch.save keeps as views of a larger storage. refused/: pickles the Rust reader must refuse
    (code, a custom class, a value that is not a tensor) and one in torch's legacy non-zip format.
    The script checks that torch.load(weights_only=True) of every state dict gives back the
    safetensors tensors exactly."""
    source = out / "distilbert"
    target = out / "torch-pickle" / "distilbert"
    (target / "2_Dense").mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(source), device="cpu")
    encoder = model[0].auto_model.state_dict()
    word = "embeddings.word_embeddings.weight"
    encoder[word] = encoder[word].t().contiguous().t()
    assert not encoder[word].is_contiguous()
    bias = "embeddings.LayerNorm.bias"
    encoder[bias] = torch.cat([torch.full((3,), float("nan")), encoder[bias]])[3:]
    assert encoder[bias].storage_offset() == 3
    torch.save(encoder, target / "pytorch_model.bin")
    dense = model[2].state_dict()
    torch.save(dense, target / "2_Dense" / "pytorch_model.bin")
    for saved, safetensors in [(target / "pytorch_model.bin", source / "model.safetensors"), (target / "2_Dense" / "pytorch_model.bin", source / "2_Dense" / "model.safetensors")]:
        loaded = torch.load(saved, weights_only=True)
        with safe_open(str(safetensors), "pt") as f:
            assert sorted(loaded) == sorted(f.keys()), saved
            for k in f.keys():
                assert torch.equal(loaded[k], f.get_tensor(k)), f"{saved}: {k}"

    refused = out / "torch-pickle" / "refused"
    refused.mkdir(parents=True, exist_ok=True)
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"weight": tensor, "hook": RunsCode()}, refused / "code.bin")
    torch.save({"weight": tensor, "config": CustomClass()}, refused / "custom-class.bin")
    torch.save({"weight": tensor, "step": 3}, refused / "not-a-tensor.bin")
    torch.save({"weight": tensor}, refused / "legacy.bin", _use_new_zipfile_serialization=False)
    print(f"make_fixtures: wrote {out / 'torch-pickle'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare with the committed fixtures")
    p.add_argument("--only", action="append", choices=sorted(FAMILIES), help="only this family (repeatable)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted element difference (--check)")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    p.add_argument("--torch-pickles", action="store_true", help="only write <out>/torch-pickle/ from the committed distilbert fixture")
    args = p.parse_args()
    if args.torch_pickles:
        write_torch_pickles(args.out)
        return 0
    torch.manual_seed(0)
    names = args.only or list(FAMILIES)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            committed = args.out / name
            directory = pathlib.Path(tmp) / name if args.check else committed
            tok_type, pooling, _ = build(name, directory)
            new = compute(name, directory, pathlib.Path(tmp), tok_type, pooling)
            if not args.check:
                (directory / "reference.json").write_text(json.dumps(new, ensure_ascii=False), encoding="utf-8")
                print(f"make_fixtures: wrote {directory} ({len(new['items'])} texts)")
                continue
            if not (committed / "reference.json").exists():
                print(f"make_fixtures: {name}: no committed fixture at {committed}", file=sys.stderr)
                failed = True
                continue
            old = json.loads((committed / "reference.json").read_text(encoding="utf-8"))
            (directory / "reference.json").write_text("{}", encoding="utf-8")  # compared below, not as a file
            problems = check_files(directory, committed, args.tolerance)
            ref_problems, worst = check_reference(new, old, args.tolerance)
            problems += ref_problems
            print(f"make_fixtures: {name}: worst max-abs difference to the committed reference: {worst:g} (tolerance {args.tolerance:g})")
            for line in problems:
                print(f"make_fixtures: {name}: {line}", file=sys.stderr)
            print(f"make_fixtures: {name}: {'MISMATCH' if problems else 'matches'} {committed}")
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
