"""The Rust core's memory figures: proof that a released model is really gone.

``live_models()`` and ``live_weight_bytes()`` count the models loaded in this process (every
service of the package, whatever its lifetime); ``cpu_allocator_in_use_bytes()`` is the C
allocator's in-use figure, which holds CPU tensors; ``cuda_memory(i)`` libtorch's CUDA caching
allocator for device ``i`` (the same allocator ``torch.cuda.memory_allocated()`` reads when torch
shares the process).
"""

from ._native import (
    cpu_allocator_in_use_bytes,
    cuda_available,
    cuda_memory,
    live_models,
    live_weight_bytes,
    model_threads,
    process_resident_bytes,
    trim_cpu_heap,
)

__all__ = [
    "cpu_allocator_in_use_bytes",
    "cuda_available",
    "cuda_memory",
    "live_models",
    "live_weight_bytes",
    "model_threads",
    "process_resident_bytes",
    "trim_cpu_heap",
]
