"""In-process embedding services with guaranteed cleanup, backed by the embed Rust crates.

Every lifetime comes as an async context manager with a synchronous twin (the same object works
with ``async with`` and ``with``)::

    async with embedding_service_context(model_name="sentence-transformers/all-MiniLM-L6-v2") as service:
        vectors = await service.embed_texts(["hello world"])      # numpy float32, shape (1, 384)

    with embedding_service_context(model_name=path) as service:
        vectors = service.embed_texts(["hello world"])

* ``embedding_service_context(model_name, **options)`` and
  ``ScopedEmbeddingService().temporary_model(name, **options)``: a model of your own, released
  when the block ends, whether it returns, raises or is cancelled (embed-scoped's guard).
* ``EmbeddingServicePool(max_models=…, memory_budget=…, idle_ttl=…).get_service(name)``: a lease
  on a pooled model; the least recently used idle model is evicted for room, never one in use
  (embed-pool).
* ``await get_embedding_service()`` / ``await cleanup()``: the thread-safe process-wide model
  (embed-scoped's global service), with ``get_embedding_service_sync`` / ``cleanup_sync``.

Awaiting never blocks the event loop: the Rust work runs on its own threads without the GIL.
Cancelling a task (``task.cancel()``, ``asyncio.timeout``) drops the Rust call, which releases
its lease, and the ``async with`` block then releases a scoped model. Errors are typed
(``ModelNotFound``, ``PoolExhausted``, ``OutOfMemory``, ``InvalidInput``, …, all ``EmbedError``)
and carry the Rust messages.

Model options (keyword arguments): ``device`` ("cpu", "cuda", "cuda:N", "auto"), ``dtype``
("f32", "f16", "bf16", "int8"), ``max_seq_length``, ``normalize``, ``pooling``, ``query_prefix``,
``document_prefix``, ``default_prompt``, ``default_prompt_name``, ``max_batch_tokens``,
``max_batch_size``, ``threads``, ``cache_dir``.
"""

from __future__ import annotations

from . import memory
from ._native import (
    DeviceUnavailable,
    EmbedError,
    InferenceError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    OutOfMemory,
    PoolExhausted,
    ServiceClosed,
)
from ._service import AsyncEmbeddingService, EmbeddingService, ModelInfo
from ._lifetimes import (
    EmbeddingServicePool,
    ScopedEmbeddingService,
    cleanup,
    cleanup_sync,
    embedding_service_context,
    get_embedding_service,
    get_embedding_service_sync,
)

__all__ = [
    "AsyncEmbeddingService",
    "DeviceUnavailable",
    "EmbedError",
    "EmbeddingService",
    "EmbeddingServicePool",
    "InferenceError",
    "InvalidInput",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFound",
    "OutOfMemory",
    "PoolExhausted",
    "ScopedEmbeddingService",
    "ServiceClosed",
    "cleanup",
    "cleanup_sync",
    "embedding_service_context",
    "get_embedding_service",
    "get_embedding_service_sync",
    "memory",
]
