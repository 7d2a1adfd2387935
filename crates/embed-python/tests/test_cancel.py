"""asyncio integration: the loop never blocks, and cancellation releases leases and scopes."""

import asyncio
import time

import pytest

import embed
from conftest import wait_for_no_models

# Enough work for a few seconds on two cores: the cancellation lands mid-embed.
MANY = [f"text number {i}: embeddings for semantic search, clustering and retrieval tasks" for i in range(3000)]


async def test_cancelled_mid_embed_leaves_no_model_live_within_1s(minilm):
    started = asyncio.Event()

    async def work():
        async with embed.embedding_service_context(model_name=minilm) as service:
            started.set()
            await service.embed_texts(MANY)

    task = asyncio.create_task(work())
    await started.wait()
    await asyncio.sleep(0.3)  # the embed is running on the model's worker now
    assert embed.memory.live_models() == 1 and not task.done()
    t0 = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waited = time.perf_counter() - t0 + wait_for_no_models(timeout=1.0)
    assert waited <= 1.0, waited


async def test_asyncio_timeout_mid_embed(minilm):
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            async with embed.embedding_service_context(model_name=minilm) as service:
                await service.embed_texts(MANY)
    assert time.perf_counter() - t0 < 1.5
    wait_for_no_models(timeout=1.0)


async def test_cancelled_pool_task_returns_its_lease(minilm):
    async with embed.EmbeddingServicePool(max_models=1, models={"minilm": minilm}) as pool:
        leased = asyncio.Event()

        async def work():
            async with pool.get_service("minilm") as service:
                leased.set()
                await service.embed_texts(MANY)

        task = asyncio.create_task(work())
        await leased.wait()
        await asyncio.sleep(0.3)  # the embed is running on the model's worker now
        assert pool.status()["leases"] == 1 and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.status()["leases"] == 0
        # The model is idle again, not lost: the next lease is a hit.
        async with pool.get_service("minilm") as service:
            assert (await service.embed_texts(["again"])).shape == (1, 384)
        assert pool.stats()["hits"] >= 1
    assert embed.memory.live_models() == 0


async def test_cancelled_load_releases_what_it_loaded(minilm):
    task = asyncio.create_task(embed.embedding_service_context(model_name=minilm).__aenter__())
    await asyncio.sleep(0)  # the load has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wait_for_no_models(timeout=2.0)
    # And no load is still under way anywhere: every model worker thread has exited.
    t0 = time.perf_counter()
    while embed.memory.model_threads() > 0:
        assert time.perf_counter() - t0 < 2.0, "a cancelled load's worker thread is still running"
        await asyncio.sleep(0.01)


async def test_the_event_loop_keeps_running_while_rust_embeds(minilm):
    async with embed.embedding_service_context(model_name=minilm) as service:
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        t0 = time.perf_counter()
        await service.embed_texts(MANY[:600])
        elapsed = time.perf_counter() - t0
        beat.cancel()
        # A blocked loop would tick 0 times; a free one about elapsed / 10 ms.
        assert elapsed > 0.1 and ticks >= 0.2 * elapsed / 0.01, (ticks, elapsed)
