"""The lifetimes: scoped services, temporary models, the pool's leases, the global service."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Optional, Union

from . import _native
from ._service import AsyncEmbeddingService, EmbeddingService


class _ServiceContext:
    """``async with`` gives an :class:`AsyncEmbeddingService`, ``with`` an
    :class:`EmbeddingService`. Leaving the block ends the hold on the model (a scoped model is
    released and waited for, a lease is returned) on every path: return, exception, cancellation.
    A failure of that cleanup never hides the block's own exception (it is added as a note)."""

    __slots__ = ("_open", "_native")

    def __init__(self, open_: Callable[[bool], Any]):
        self._open = open_
        self._native: Optional[_native.Service] = None

    def _entered(self) -> _native.Service:
        if self._native is not None:
            raise RuntimeError("this context manager is already in use; create a new one per `with` block")
        return self._native

    async def __aenter__(self) -> AsyncEmbeddingService:
        self._entered()
        # Cancelled while loading or waiting for a lease: the Rust future is dropped and
        # releases whatever it had loaded or leased.
        self._native = await self._open(False)
        return AsyncEmbeddingService(self._native)

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        native, self._native = self._native, None
        try:
            await native.close()
        except _native.EmbedError as e:
            if exc is None:
                raise
            exc.add_note(f"cleaning up the embedding service also failed: {e!r}")
        return False

    def __enter__(self) -> EmbeddingService:
        self._entered()
        self._native = self._open(True)
        return EmbeddingService(self._native)

    def __exit__(self, exc_type, exc, tb) -> bool:
        native, self._native = self._native, None
        try:
            native.close(blocking=True)
        except _native.EmbedError as e:
            if exc is None:
                raise
            exc.add_note(f"cleaning up the embedding service also failed: {e!r}")
        return False


def embedding_service_context(model_name: str, *, name: Optional[str] = None, **options) -> _ServiceContext:
    """Loads ``model_name`` (a local directory or a hub id) for the block and releases it when
    the block ends, waiting until its memory is freed.

    ``async with embedding_service_context(model_name=…) as service`` / ``with …``.
    """
    return _ServiceContext(lambda blocking: _native.open_scoped(model_name, options, name=name, blocking=blocking))


class ScopedEmbeddingService:
    """Scoped services. ``ScopedEmbeddingService(model_name, **options)`` is itself a context
    manager (as :func:`embedding_service_context`); ``temporary_model(name, **options)`` loads an
    isolated instance beside whatever else is loaded (the global service is never touched), e.g.
    to compare two models or one model in two dtypes."""

    def __init__(self, model_name: Optional[str] = None, **options):
        self._model_name = model_name
        self._options = options
        self._context: Optional[_ServiceContext] = None

    def temporary_model(self, model_name: str, **options) -> _ServiceContext:
        """A context manager owning a fresh instance of ``model_name``, released when it ends."""
        return _ServiceContext(
            lambda blocking: _native.open_scoped(model_name, options, temporary=True, blocking=blocking)
        )

    def _context_for_block(self) -> _ServiceContext:
        if self._model_name is None:
            raise TypeError("ScopedEmbeddingService() without a model_name is no context manager; use temporary_model(name)")
        self._context = embedding_service_context(self._model_name, **self._options)
        return self._context

    async def __aenter__(self) -> AsyncEmbeddingService:
        return await self._context_for_block().__aenter__()

    async def __aexit__(self, *exc) -> bool:
        return await self._context.__aexit__(*exc)

    def __enter__(self) -> EmbeddingService:
        return self._context_for_block().__enter__()

    def __exit__(self, *exc) -> bool:
        return self._context.__exit__(*exc)


ModelEntry = Union[str, tuple]


class EmbeddingServicePool:
    """An LRU pool of loaded models (embed-pool).

    * ``max_models``: most models loaded at once; ``memory_budget``: most weight bytes (None: no
      budget); ``idle_ttl``: seconds after which an idle model is unloaded (None: never).
    * ``models``: ``{name: source}`` or ``{name: (source, {option: value})}``; only these names
      load (safe for names that come from clients). Without it, a name is loaded as a model
      source (directory or hub id) with ``**default_options``.
    * ``wait_timeout``: seconds ``get_service`` waits for a lease to end when every slot holds a
      leased model, before :class:`PoolExhausted`.

    ``async with pool.get_service(name) as service`` (or ``with``) leases the model for the
    block: while leased it is never evicted; the least recently used idle model makes room.
    ``async with EmbeddingServicePool(...) as pool`` closes the pool when the block ends.
    """

    def __init__(
        self,
        max_models: int = 4,
        memory_budget: Optional[int] = None,
        idle_ttl: Optional[float] = None,
        *,
        models: Optional[Mapping[str, ModelEntry]] = None,
        wait_timeout: float = 30.0,
        load_timeout: Optional[float] = None,
        **default_options,
    ):
        self._pool = _native.Pool(
            max_models=max_models, memory_budget=memory_budget, idle_ttl=idle_ttl, wait_timeout=wait_timeout,
            load_timeout=load_timeout, models=dict(models) if models is not None else None,
            default_options=default_options,
        )

    def get_service(self, name: str) -> _ServiceContext:
        """A context manager holding a lease on ``name`` (loading it if needed)."""
        return _ServiceContext(lambda blocking: self._pool.lease(name, blocking=blocking))

    async def preload(self, name: str) -> None:
        """Loads ``name`` now, without keeping a lease (e.g. in a FastAPI lifespan)."""
        await self._pool.preload(name)

    def preload_sync(self, name: str) -> None:
        self._pool.preload(name, blocking=True)

    async def unload(self, name: str) -> Optional[dict]:
        """Releases ``name`` once its leases end and waits until it is freed."""
        return await self._pool.unload(name)

    def unload_sync(self, name: str) -> Optional[dict]:
        return self._pool.unload(name, blocking=True)

    async def close(self) -> dict:
        """Closes the pool: idle models are released at once, leased ones when their lease ends
        (after 30 s anyway); returns once every model is freed."""
        return _close_report(await self._pool.close())

    def close_sync(self) -> dict:
        return _close_report(self._pool.close(blocking=True))

    def status(self) -> dict:
        """The models in the pool (least recently used first) with state, leases and bytes."""
        return self._pool.status()

    def stats(self) -> dict:
        """Counters: hits, misses, loads, load failures, evictions by cause, waits, exhausted."""
        return self._pool.stats()

    def history(self) -> list:
        """The recent loads and releases, oldest first, with cause and time."""
        return self._pool.history()

    async def __aenter__(self) -> "EmbeddingServicePool":
        return self

    async def __aexit__(self, *exc) -> bool:
        await self.close()
        return False

    def __enter__(self) -> "EmbeddingServicePool":
        return self

    def __exit__(self, *exc) -> bool:
        self.close_sync()
        return False


def _close_report(r) -> dict:
    released, forced_leases, models_left = r
    if models_left:
        warnings.warn(f"the pool closed with {models_left} model(s) still being released", RuntimeWarning, stacklevel=3)
    return {"released": released, "forced_leases": forced_leases, "models_left": models_left}


async def get_embedding_service(model_name: Optional[str] = None, **options) -> AsyncEmbeddingService:
    """The process-wide service, loaded on first use (thread-safe, one load for concurrent first
    callers). ``model_name`` (else ``$EMBED_MODEL``, else sentence-transformers/all-MiniLM-L6-v2)
    and options apply to the load; asking for another model while one is loaded is an error.
    Each call on the service leases the model for its duration; :func:`cleanup` releases it
    once those calls end, and the next call loads it again."""
    return AsyncEmbeddingService(await _native.global_get(model_name, options))


def get_embedding_service_sync(model_name: Optional[str] = None, **options) -> EmbeddingService:
    """:func:`get_embedding_service`, blocking."""
    return EmbeddingService(_native.global_get(model_name, options, blocking=True))


async def cleanup() -> Optional[dict]:
    """Releases the process-wide model (after its in-flight calls) and waits until it is freed.
    Returns its cleanup report, or None when none was loaded."""
    report = await _native.global_shutdown()
    return report if report and report.get("model") else None


def cleanup_sync() -> Optional[dict]:
    """:func:`cleanup`, blocking."""
    report = _native.global_shutdown(blocking=True)
    return report if report and report.get("model") else None
