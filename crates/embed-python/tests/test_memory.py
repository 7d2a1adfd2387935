"""Memory really freed: the core's live-weight and C-allocator figures through the package."""

import gc
import os

import pytest

import embed

TEXTS = [f"memory check text {i}" for i in range(64)]


def allocator_slack(base: int) -> int:
    """max(8 MiB, 3 %): the rule of embed-testkit's allocator_slack and `cargo xtask leak-check`."""
    return max(8 << 20, base * 3 // 100)


def settled_allocator() -> int:
    gc.collect()
    embed.memory.trim_cpu_heap()
    return embed.memory.cpu_allocator_in_use_bytes()


async def cycle(kind, minilm):
    """Loads MiniLM through one of the lifetimes, embeds, releases; returns (loaded allocator
    bytes, weight bytes)."""
    if kind == "scoped":
        async with embed.embedding_service_context(model_name=minilm) as service:
            await service.embed_texts(TEXTS)
            return settled_allocator(), service.info.weight_bytes
    if kind == "pool":
        async with embed.EmbeddingServicePool(max_models=1, models={"m": minilm}) as pool:
            async with pool.get_service("m") as service:
                await service.embed_texts(TEXTS)
                return settled_allocator(), service.info.weight_bytes
    service = await embed.get_embedding_service(minilm)
    try:
        await service.embed_texts(TEXTS)
        return settled_allocator(), service.info.weight_bytes
    finally:
        await embed.cleanup()


async def test_released_models_give_their_memory_back(minilm):
    await cycle("scoped", minilm)  # warm-up: libtorch's one-time allocations
    base = settled_allocator()
    for kind in ["scoped", "pool", "global", "scoped"]:
        loaded, weight_bytes = await cycle(kind, minilm)
        assert embed.memory.live_models() == 0 and embed.memory.live_weight_bytes() == 0
        released = settled_allocator()
        assert weight_bytes > 80_000_000
        assert loaded - released >= 0.9 * weight_bytes, (kind, loaded, released, weight_bytes)
        assert released <= base + allocator_slack(base), (kind, released - base)


@pytest.mark.skipif(
    os.environ.get("EMBED_TEST_CUDA") != "1",
    reason="needs a CUDA GPU: this machine (and CI) has none; run with EMBED_TEST_CUDA=1 where libtorch sees one",
)
async def test_cuda_memory_back_to_baseline(minilm):
    import torch

    assert torch.cuda.is_available() and embed.memory.cuda_available(), "EMBED_TEST_CUDA=1 but no CUDA device"
    async with embed.embedding_service_context(model_name=minilm, device="cuda") as service:
        await service.embed_texts(TEXTS)  # warm-up
    torch.cuda.synchronize()
    base_torch = torch.cuda.memory_allocated()
    base_core = embed.memory.cuda_memory(0)["allocated"]
    async with embed.embedding_service_context(model_name=minilm, device="cuda") as service:
        assert service.info.device == "cuda:0"
        await service.embed_texts(TEXTS)
        # torch and the package share one libtorch, so torch sees the model's weights.
        assert torch.cuda.memory_allocated() - base_torch >= 0.9 * service.info.weight_bytes
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == base_torch
    assert embed.memory.cuda_memory(0)["allocated"] == base_core
