"""Parity: the package's vectors against the Rust API's and sentence-transformers'."""

import pathlib

import numpy as np

import embed

ROOT = pathlib.Path(__file__).resolve().parents[3]


def corpus(n):
    lines = [l for l in (ROOT / "testdata" / "corpus.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    assert len(lines) >= n
    return lines[:n]


def worst_cosine(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert len(cos) > 0
    # NaN-safe: a NaN cosine makes the worst NaN, and NaN >= x is False.
    return float(np.min(cos)) if not np.isnan(cos).any() else float("nan")


def test_vectors_equal_the_rust_apis(minilm):
    texts = corpus(200)
    rust = np.array(embed._native.rust_api_vectors(minilm, texts), dtype=np.float32)
    with embed.embedding_service_context(model_name=minilm) as service:
        # The Rust defaults (no mode, the model's normalisation): the same computation.
        same_options = service.embed_texts(texts, mode=None, normalize=None)
        package_defaults = service.embed_texts(texts)
    assert rust.shape == same_options.shape == (200, 384)
    np.testing.assert_array_equal(same_options, rust)
    assert worst_cosine(package_defaults, rust) >= 0.99999


def test_vectors_match_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = corpus(300)
    st = SentenceTransformer(minilm, device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
    with embed.embedding_service_context(model_name=minilm) as service:
        ours = np.concatenate([service.embed_texts(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    worst = worst_cosine(ours, st)
    assert worst >= 0.99999, worst
