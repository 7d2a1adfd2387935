"""Service objects: the async one (``async with``) and its synchronous twin (``with``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import _native


@dataclass(frozen=True)
class ModelInfo:
    """What a service has loaded."""

    name: str
    source: str
    architecture: str
    family: str
    kind: str
    dtype: str
    device: str
    dimension: int
    max_seq_length: int
    weight_bytes: int
    normalize: bool
    pooling: str
    num_layers: int
    threads: int
    labels: list
    load_duration_s: float


def _info(native) -> Optional[ModelInfo]:
    d = native.info()
    return None if d is None else ModelInfo(**d)


def _texts(texts: Sequence[str]) -> list:
    if isinstance(texts, str):
        raise _native.InvalidInput("texts must be a sequence of strings, not one string (use embed_single)")
    return list(texts)


class AsyncEmbeddingService:
    """A loaded model inside ``async with``; every method is a coroutine.

    ``normalize=True`` L2-normalises the vectors (None follows the model's configuration);
    ``mode`` "query" or "document" applies the model's query or document prompt (None: its
    default prompt); ``instruction`` is a literal prefix and wins over both; ``dimensions`` keeps
    the first N dimensions (Matryoshka).
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.Service):
        self._native = native

    @property
    def info(self) -> Optional[ModelInfo]:
        """The loaded model: family, dtype, device, dimension, weight bytes, …"""
        return _info(self._native)

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        instruction: Optional[str] = None,
        mode: Optional[str] = "document",
        normalize: Optional[bool] = True,
        dimensions: Optional[int] = None,
        prompt_name: Optional[str] = None,
        truncate: bool = True,
        priority: Optional[str] = None,
    ) -> np.ndarray:
        """Vectors of ``texts``: float32, shape (len(texts), dimension)."""
        return await self._native.embed_texts(
            _texts(texts), instruction=instruction, mode=mode, normalize=normalize, dimensions=dimensions,
            prompt_name=prompt_name, truncate=truncate, priority=priority,
        )

    async def embed_single(
        self,
        text: str,
        *,
        instruction: Optional[str] = None,
        mode: Optional[str] = "document",
        normalize: Optional[bool] = True,
        dimensions: Optional[int] = None,
        prompt_name: Optional[str] = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """One text's vector: float32, shape (dimension,)."""
        vectors = await self.embed_texts(
            [text], instruction=instruction, mode=mode, normalize=normalize, dimensions=dimensions,
            prompt_name=prompt_name, truncate=truncate,
        )
        return vectors[0]

    async def rerank(
        self, query: str, documents: Sequence[str], *, instruction: Optional[str] = None, truncate: bool = True,
        raw_scores: bool = False,
    ) -> np.ndarray:
        """Relevance of each document to ``query`` (reranker models): float32, input order."""
        return await self._native.rerank(
            query, _texts(documents), instruction=instruction, truncate=truncate, raw_scores=raw_scores
        )

    async def embed_sparse(self, texts: Sequence[str], *, truncate: bool = True) -> list:
        """SPLADE vectors (sparse models): a list of (indices uint32, values float32) pairs."""
        return await self._native.embed_sparse(_texts(texts), truncate=truncate)


class EmbeddingService:
    """A loaded model inside ``with``: :class:`AsyncEmbeddingService`'s methods, blocking (the
    GIL is released while Rust works, so other Python threads run meanwhile)."""

    __slots__ = ("_native",)

    def __init__(self, native: _native.Service):
        self._native = native

    @property
    def info(self) -> Optional[ModelInfo]:
        """The loaded model: family, dtype, device, dimension, weight bytes, …"""
        return _info(self._native)

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        instruction: Optional[str] = None,
        mode: Optional[str] = "document",
        normalize: Optional[bool] = True,
        dimensions: Optional[int] = None,
        prompt_name: Optional[str] = None,
        truncate: bool = True,
        priority: Optional[str] = None,
    ) -> np.ndarray:
        """Vectors of ``texts``: float32, shape (len(texts), dimension)."""
        return self._native.embed_texts(
            _texts(texts), instruction=instruction, mode=mode, normalize=normalize, dimensions=dimensions,
            prompt_name=prompt_name, truncate=truncate, priority=priority, blocking=True,
        )

    def embed_single(
        self,
        text: str,
        *,
        instruction: Optional[str] = None,
        mode: Optional[str] = "document",
        normalize: Optional[bool] = True,
        dimensions: Optional[int] = None,
        prompt_name: Optional[str] = None,
        truncate: bool = True,
    ) -> np.ndarray:
        """One text's vector: float32, shape (dimension,)."""
        return self.embed_texts(
            [text], instruction=instruction, mode=mode, normalize=normalize, dimensions=dimensions,
            prompt_name=prompt_name, truncate=truncate,
        )[0]

    def rerank(
        self, query: str, documents: Sequence[str], *, instruction: Optional[str] = None, truncate: bool = True,
        raw_scores: bool = False,
    ) -> np.ndarray:
        """Relevance of each document to ``query`` (reranker models): float32, input order."""
        return self._native.rerank(
            query, _texts(documents), instruction=instruction, truncate=truncate, raw_scores=raw_scores, blocking=True
        )

    def embed_sparse(self, texts: Sequence[str], *, truncate: bool = True) -> list:
        """SPLADE vectors (sparse models): a list of (indices uint32, values float32) pairs."""
        return self._native.embed_sparse(_texts(texts), truncate=truncate, blocking=True)
