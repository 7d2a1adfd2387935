"""The README's FastAPI example, run as it is written there (extracted from README.md)."""

import pathlib
import re

import numpy as np
from fastapi.testclient import TestClient

import embed

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"
MARKER = "<!-- fastapi-example: run by crates/embed-python/tests/test_fastapi.py -->"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, f"the FastAPI example's marker is missing from {README}"
    m = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    assert m, "no ```python block after the marker"
    return m.group(1)


def test_readme_fastapi_example(minilm, monkeypatch):
    monkeypatch.setenv("EMBED_MODEL", minilm)
    namespace = {"__name__": "readme_fastapi_example"}
    exec(compile(readme_example(), f"{README}#fastapi-example", "exec"), namespace)
    app = namespace["app"]
    texts = ["FastAPI serves embeddings", "in-process, from Rust"]

    assert embed.memory.live_models() == 0
    with TestClient(app) as client:
        # The lifespan loaded the model at start-up.
        assert embed.memory.live_models() == 1
        pool = app.state.pool
        assert [m["name"] for m in pool.status()["models"]] == ["minilm"]
        r = client.post("/embed", json={"texts": texts})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "minilm" and body["dimension"] == 384
        got = np.array(body["embeddings"], dtype=np.float32)
        r2 = client.post("/embed", json={"texts": texts[:1]})
        assert r2.status_code == 200
        # Each request held a lease only while it ran.
        assert pool.status()["leases"] == 0
        assert pool.stats()["loads"] == 1 and pool.stats()["hits"] >= 2
    # Shutdown released the model and freed it.
    assert embed.memory.live_models() == 0
    with embed.embedding_service_context(model_name=minilm) as service:
        lone = service.embed_texts(texts)
    np.testing.assert_allclose(got, lone, rtol=0, atol=1e-6)


def test_global_service_in_a_lifespan(minilm):
    """The plan's other lifespan: the process-wide service loaded at start-up, cleaned up at
    shutdown, used by handlers through get_embedding_service()."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        await embed.get_embedding_service(minilm)
        yield
        await embed.cleanup()

    app = FastAPI(lifespan=lifespan)

    @app.get("/dimension")
    async def dimension():
        service = await embed.get_embedding_service()
        return {"dimension": int((await service.embed_texts(["x"])).shape[1])}

    with TestClient(app) as client:
        assert embed.memory.live_models() == 1
        assert client.get("/dimension").json() == {"dimension": 384}
        assert client.get("/dimension").json() == {"dimension": 384}
        assert embed.memory.live_models() == 1
    assert embed.memory.live_models() == 0
