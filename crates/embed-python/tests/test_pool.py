"""The pool through Python: concurrency within its slots, LRU eviction of idle models only."""

import asyncio
import time

import numpy as np
import pytest

import embed


def three_models(minilm, fixtures):
    """The real MiniLM and two tiny fixtures of other families."""
    return {"minilm": minilm, "bert": str(fixtures / "bert"), "mpnet": str(fixtures / "mpnet")}


def max_loaded_from_history(history):
    """Most models loaded at once, replayed from the pool's own history (loads and releases in
    the order they finished; a load starts only after the release it waits for has finished)."""
    loaded, most = 0, 0
    for event in history:
        if event["action"] == "loaded":
            loaded += 1
        elif event["action"] == "unloaded":
            loaded -= 1
        most = max(most, loaded)
    return most


async def test_20_tasks_over_3_models_in_a_pool_of_2(minilm, fixtures):
    models = three_models(minilm, fixtures)
    texts = {name: [f"{name} text {i}: the quick brown fox jumps over the lazy dog" for i in range(4)] for name in models}
    # Each model's vectors from a lone scoped service: what every pooled result must equal.
    lone = {}
    for name, source in models.items():
        async with embed.embedding_service_context(model_name=source) as service:
            lone[name] = await service.embed_texts(texts[name])
    assert embed.memory.live_models() == 0

    async with embed.EmbeddingServicePool(max_models=2, models=models, wait_timeout=60) as pool:
        live_seen = []
        stop = asyncio.Event()

        async def sample():
            # The process-wide count of loaded models, every millisecond while the tasks run.
            while not stop.is_set():
                live_seen.append(embed.memory.live_models())
                await asyncio.sleep(0.001)

        async def task(i):
            name = list(models)[i % 3]
            async with pool.get_service(name) as service:
                out = await service.embed_texts(texts[name])
                await asyncio.sleep(0.01)  # hold the lease a little: slots stay contended
                return name, out

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(task(i) for i in range(20)))
        stop.set()
        await sampler

        assert len(results) == 20
        for name, out in results:
            # Equal to the lone embed up to float summation order: the model's worker may merge
            # concurrent requests into one batch, whose GEMMs sum in another order.
            np.testing.assert_allclose(out, lone[name], rtol=0, atol=1e-6, err_msg=f"a pooled result of {name} differs from a lone embed")
        stats = pool.stats()
        history = pool.history()
        assert stats["load_failures"] == 0 and stats["exhausted"] == 0, stats
        assert stats["loads"] >= 3 and stats["evictions"]["capacity"] >= 1, stats
        assert stats["loads"] == sum(1 for e in history if e["action"] == "loaded")
        assert max_loaded_from_history(history) <= 2, history
        assert len(live_seen) > 0 and max(live_seen) <= 2, max(live_seen)
        assert max(live_seen) == 2
        assert pool.status()["leases"] == 0
    assert embed.memory.live_models() == 0


async def test_lru_eviction_takes_the_idle_model_never_a_leased_one(minilm, fixtures):
    models = three_models(minilm, fixtures)
    async with embed.EmbeddingServicePool(max_models=2, models=models, wait_timeout=0.5) as pool:
        for name in ["minilm", "bert", "minilm"]:  # bert is now the least recently used
            async with pool.get_service(name) as service:
                await service.embed_texts(["touch"])
        async with pool.get_service("mpnet"):
            pass
        names = [m["name"] for m in pool.status()["models"]]
        assert sorted(names) == ["minilm", "mpnet"], names
        assert [(e["model"], e["cause"]) for e in pool.history() if e["action"] == "unloaded"] == [("bert", "capacity")]

        # Now minilm is the least recently used, but leased: mpnet (idle) goes instead.
        async with pool.get_service("minilm") as held:
            async with pool.get_service("mpnet"):
                pass
            async with pool.get_service("bert"):
                pass
            unloaded = [e["model"] for e in pool.history() if e["action"] == "unloaded"]
            assert unloaded == ["bert", "mpnet"], unloaded
            assert (await held.embed_texts(["still served"])).shape == (1, 384)

            # Every slot leased: a third model waits wait_timeout, then PoolExhausted.
            async with pool.get_service("bert"):
                t0 = time.perf_counter()
                with pytest.raises(embed.PoolExhausted, match=r"no room for model \"mpnet\".*max_models"):
                    async with pool.get_service("mpnet"):
                        pass
                assert time.perf_counter() - t0 >= 0.45
        assert pool.stats()["exhausted"] == 1
        with pytest.raises(embed.ModelNotFound, match="not registered"):
            async with pool.get_service("../../etc"):
                pass
    assert embed.memory.live_models() == 0


def test_sync_pool(minilm, fixtures):
    with embed.EmbeddingServicePool(max_models=1, idle_ttl=None, models=three_models(minilm, fixtures)) as pool:
        with pool.get_service("bert") as service:
            assert service.embed_texts(["x"]).shape[0] == 1
        with pool.get_service("mpnet") as service:
            assert service.info.family == "mpnet"
        assert [m["name"] for m in pool.status()["models"]] == ["mpnet"]
    assert embed.memory.live_models() == 0


async def test_idle_ttl_unloads(fixtures):
    async with embed.EmbeddingServicePool(max_models=2, idle_ttl=0.2, models={"bert": str(fixtures / "bert")}) as pool:
        await pool.preload("bert")
        assert embed.memory.live_models() == 1
        await asyncio.sleep(0.3)
        assert await pool._pool.evict_expired() == ["bert"]
        assert embed.memory.live_models() == 0
        assert pool.stats()["evictions"]["ttl"] == 1
