"""Scoped services, temporary models and the global service: lifetimes, results, errors."""

import asyncio

import numpy as np
import pytest

import embed
from conftest import wait_for_no_models

TEXTS = ["The cat sits on the mat.", "A quick brown fox.", "Embeddings map text to vectors."]


async def test_async_context_loads_embeds_and_releases(minilm):
    async with embed.embedding_service_context(model_name=minilm) as service:
        assert embed.memory.live_models() == 1
        info = service.info
        assert (info.family, info.dtype, info.device, info.dimension) == ("bert", "f32", "cpu", 384)
        assert info.weight_bytes == embed.memory.live_weight_bytes() > 0
        vectors = await service.embed_texts(TEXTS)
        assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
        # One C-contiguous buffer, the Rust allocation itself (numpy did not allocate a copy).
        assert vectors.flags["C_CONTIGUOUS"] and not vectors.flags["OWNDATA"]
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        single = await service.embed_single(TEXTS[1])
        assert single.shape == (384,)
        # Equal up to the summation order of another batch shape (last-digit differences).
        np.testing.assert_allclose(single, vectors[1], rtol=0, atol=1e-6)
        empty = await service.embed_texts([])
        assert empty.shape == (0, 384) and empty.dtype == np.float32
        short = await service.embed_texts(TEXTS, dimensions=64)
        assert short.shape == (3, 64)
    # Released when the block ends, and waited for: nothing is live any more.
    assert embed.memory.live_models() == 0
    assert embed.memory.live_weight_bytes() == 0


def test_sync_twin(minilm):
    with embed.embedding_service_context(model_name=minilm) as service:
        assert isinstance(service, embed.EmbeddingService)
        vectors = service.embed_texts(TEXTS)
        assert vectors.shape == (3, 384)
        assert embed.memory.live_models() == 1
    assert embed.memory.live_models() == 0


class BodyFailed(Exception):
    pass


async def test_cleanup_when_the_body_raises(minilm):
    with pytest.raises(BodyFailed):
        async with embed.embedding_service_context(model_name=minilm) as service:
            await service.embed_texts(TEXTS)
            assert embed.memory.live_models() == 1
            raise BodyFailed("the body failed")
    assert embed.memory.live_models() == 0


def test_cleanup_when_the_sync_body_raises(minilm):
    with pytest.raises(BodyFailed):
        with embed.embedding_service_context(model_name=minilm) as service:
            service.embed_texts(TEXTS)
            raise BodyFailed("the body failed")
    assert embed.memory.live_models() == 0


async def test_a_service_used_after_its_block_is_refused(minilm):
    async with embed.embedding_service_context(model_name=minilm) as service:
        pass
    with pytest.raises(embed.ServiceClosed, match="after its `with` / `async with` block ended"):
        await service.embed_texts(TEXTS)
    assert service.info is None


async def test_temporary_models_side_by_side(minilm):
    scoped = embed.ScopedEmbeddingService()
    async with scoped.temporary_model(minilm) as f32, scoped.temporary_model(minilm, dtype="bf16") as bf16:
        assert embed.memory.live_models() == 2
        assert (f32.info.dtype, bf16.info.dtype) == ("f32", "bf16")
        a, b = await asyncio.gather(f32.embed_texts(TEXTS), bf16.embed_texts(TEXTS))
        cos = np.sum(a * b, axis=1)
        assert np.all(cos > 0.99), cos
        # Isolated instances: the global service is untouched.
        assert not embed._native.global_is_loaded()
    assert embed.memory.live_models() == 0


async def test_scoped_embedding_service_is_a_context_manager(minilm):
    async with embed.ScopedEmbeddingService(minilm) as service:
        assert (await service.embed_texts(["x"])).shape == (1, 384)
    with embed.ScopedEmbeddingService(minilm) as service:
        assert service.embed_texts(["x"]).shape == (1, 384)
    assert embed.memory.live_models() == 0


async def test_global_service_loads_once_and_cleans_up(minilm):
    first, second = await asyncio.gather(
        embed.get_embedding_service(minilm), embed.get_embedding_service(minilm)
    )
    assert embed.memory.live_models() == 1, "concurrent first callers share one load"
    a = await first.embed_texts(TEXTS)
    b = await second.embed_texts(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert first.info.dimension == 384
    sync = embed.get_embedding_service_sync()
    np.testing.assert_array_equal(await asyncio.to_thread(sync.embed_texts, TEXTS), a)
    with pytest.raises(embed.InvalidInput, match="already serves"):
        await embed.get_embedding_service(minilm + "/")
    report = await embed.cleanup()
    assert report["model"] and report["model_weight_bytes"] > 0
    assert embed.memory.live_models() == 0
    assert await embed.cleanup() is None
    # The next use loads it again (the global service is lazily loaded and replaceable).
    assert (await first.embed_texts(TEXTS[:1])).shape == (1, 384)
    assert embed.memory.live_models() == 1
    assert embed.cleanup_sync()["model_weight_bytes"] > 0
    assert embed.memory.live_models() == 0


async def test_errors_are_typed_with_the_rust_messages(minilm, tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(embed.ModelNotFound) as e:
        async with embed.embedding_service_context(model_name=missing):
            pass
    assert isinstance(e.value, embed.EmbedError)
    assert "no-such-model" in str(e.value)
    with pytest.raises(embed.InvalidInput, match=r'unknown model option "trust_remote_code"'):
        embed.embedding_service_context(model_name=minilm, trust_remote_code=True).__enter__()
    with pytest.raises(embed.InvalidInput, match=r'invalid device "tpu"'):
        with embed.embedding_service_context(model_name=minilm, device="tpu"):
            pass
    async with embed.embedding_service_context(model_name=minilm) as service:
        with pytest.raises(embed.InvalidInput, match='invalid mode "passage"'):
            await service.embed_texts(TEXTS, mode="passage")
        # core's own message, unchanged: Error::InvalidOption for dimensions.
        with pytest.raises(embed.InvalidInput, match="invalid option dimensions"):
            await service.embed_texts(TEXTS, dimensions=10_000)
        with pytest.raises(embed.InvalidInput, match="is an embedding model and cannot rerank"):
            await service.rerank("q", ["d"])
        with pytest.raises(embed.InvalidInput, match="input 0 has"):
            await service.embed_texts(["word " * 400], truncate=False)
        with pytest.raises(embed.InvalidInput, match="not one string"):
            await service.embed_texts("a string")
    assert embed.memory.live_models() == 0


async def test_reranker_and_sparse_models(fixtures):
    async with embed.embedding_service_context(model_name=str(fixtures / "bert-reranker")) as reranker:
        assert reranker.info.kind == "reranker"
        scores = await reranker.rerank("what is a cat", ["a cat is an animal", "stocks fell", "cats purr"])
        assert scores.dtype == np.float32 and scores.shape == (3,)
        assert np.all((scores > 0) & (scores < 1))
        raw = await reranker.rerank("what is a cat", ["a cat is an animal", "stocks fell", "cats purr"], raw_scores=True)
        np.testing.assert_allclose(1 / (1 + np.exp(-raw.astype(np.float64))), scores, rtol=1e-6)
    async with embed.embedding_service_context(model_name=str(fixtures / "bert-splade")) as splade:
        assert splade.info.kind == "sparse"
        vectors = await splade.embed_sparse(["a cat", "the stock market fell"])
        assert len(vectors) == 2
        for indices, values in vectors:
            assert indices.dtype == np.uint32 and values.dtype == np.float32
            assert len(indices) == len(values) > 0
            assert np.all(np.diff(indices.astype(np.int64)) > 0) and np.all(values > 0)
    wait_for_no_models()
