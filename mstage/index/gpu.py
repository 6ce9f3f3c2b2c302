"""Moving indexes to and from a GPU, only when faiss-gpu is installed and sees a device.

With faiss-gpu on a machine without GPUs, `index_cpu_to_all_gpus` returns an empty index whose
search asserts (../shared/stack.md), so every move checks `get_num_gpus() > 0` first. Saved
indexes are always CPU indexes.
"""

from __future__ import annotations

from mstage.errors import UsageError


def gpu_count() -> int:
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def want_gpu(use_gpu: bool | None) -> bool:
    """None: a GPU when there is one; True: a GPU or UsageError; False: CPU."""
    available = gpu_count() > 0
    if use_gpu and not available:
        raise UsageError(
            "expected a GPU visible to faiss-gpu, found none; build on CPU "
            "(leave out the GPU option) or install the `gpu` extra on a GPU machine"
        )
    return available if use_gpu is None else bool(use_gpu)


def to_gpu(cpu_index):
    """(gpu_index, resources) on device 0, or None when faiss has no GPU version of this type.

    Keep `resources` alive as long as the GPU index is used.
    """
    import faiss

    resources = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(resources, 0, cpu_index), resources
    except RuntimeError:  # e.g. HNSW has no GPU implementation
        return None


def to_cpu(index, on_gpu: bool):
    import faiss

    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def parameter_space(on_gpu: bool):
    import faiss

    return faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
