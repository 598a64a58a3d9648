"""Memory and time meters for training steps, comparable on CPU and GPU."""
from __future__ import annotations

import resource
import sys
import time
import weakref
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _tensor_bytes(t: Tensor) -> list[tuple[Any, int]]:
    """(storage key, bytes) of the storages behind ``t`` (sparse: its index and value parts)."""
    if t.layout == torch.sparse_csr:
        parts = [t.crow_indices(), t.col_indices(), t.values()]
    elif t.layout == torch.sparse_coo:
        parts = [t._indices(), t._values()]
    else:
        parts = [t]
    out = []
    for part in parts:
        storage = part.untyped_storage()
        out.append(((part.device, storage.data_ptr()), storage.nbytes()))
    return out


class SavedTensorMeter:
    """Bytes held by the tensors autograd saves for backward, plus declared step inputs.

    Inside the ``with`` block every tensor saved for backward is recorded once per
    storage (views of one storage count once). :meth:`add` declares the step's inputs
    (e.g. the batch features). On CUDA, :attr:`cuda_peak` also reports the peak the block
    adds: ``torch.cuda.max_memory_allocated`` over the block minus the bytes allocated at
    its start (what was resident before, such as the graph, is not counted).

    Example:
        >>> with SavedTensorMeter() as meter:
        ...     meter.add(x_batch)
        ...     loss = model(x_batch).sum()
        >>> meter.bytes
    """

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._seen: dict[Any, int] = {}
        self._hooks: Optional[Any] = None
        self.cuda_peak: Optional[int] = None
        self._cuda_base = 0

    def _pack(self, t: Tensor) -> Tensor:
        for key, nbytes in _tensor_bytes(t):
            self._seen[key] = nbytes
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    def add(self, *tensors: Tensor) -> None:
        """Count ``tensors`` as inputs of the step."""
        for t in tensors:
            self._pack(t)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorMeter:
        self._seen.clear()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device) - self._cuda_base


_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def peak_rss_bytes() -> int:
    """The process's peak resident set size (bytes): since the last
    :func:`reset_peak_rss` on Linux (``VmHWM``), over the process's life elsewhere."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the peak resident set size to the current one (Linux: ``clear_refs`` 5).

    Returns whether it was reset; where it cannot be, :func:`peak_rss_bytes` is the
    process's lifetime peak.
    """
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> Optional[int]:
    """The process's current resident set size (Linux ``VmRSS``; None elsewhere)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory a block adds above what was in use at its start.

    On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes at the start.
    On the CPU (Linux): the peak RSS after resetting it at the start, minus the RSS then;
    the allocator's cached pages make this a lower bound. :attr:`previous_peak_rss` is the
    process's peak RSS before the reset, so that a caller keeps the run's overall peak.
    :attr:`bytes` is None where it cannot be measured.
    """

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.bytes: Optional[int] = None
        self.previous_peak_rss = 0

    def __enter__(self) -> PeakMemory:
        self.previous_peak_rss = peak_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base: Optional[int] = torch.cuda.memory_allocated(self.device)
        else:
            self._base = rss_bytes() if reset_peak_rss() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.bytes = max(peak_rss_bytes() - self._base, 0)

    @property
    def measure(self) -> str:
        return ("torch.cuda.max_memory_allocated above the start" if self.device.type == "cuda"
                else "peak RSS above the RSS at the start (reset VmHWM; a lower bound)")


class TensorMemoryMeter(TorchDispatchMode):
    """Peak bytes of the tensors a block creates and keeps alive at once, on any device.

    Every tensor an operator returns inside the ``with`` block is counted once per storage
    until its last Python reference dies (views of one storage count once); tensors that
    existed before the block (the graph, the features, the weights) are not counted.
    Deterministic, unlike the RSS, and the same on CPU and GPU; it slows the block down
    (a Python call per operator), so it measures, it does not time. Temporaries an operator
    makes and frees inside its own C++ kernel are not seen.

    Example:
        >>> with TensorMemoryMeter() as meter:
        ...     out = model.inference(x, graph)
        >>> meter.peak
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owners: dict[Any, list[Any]] = {}  # storage key -> [bytes, live tensors]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {self._key(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor) and t.layout == torch.strided}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.layout == torch.strided:
                self._track(t, inputs)
        return out

    @staticmethod
    def _key(t: Tensor) -> Any:
        return (t.device, t.untyped_storage().data_ptr())

    def _track(self, t: Tensor, inputs: set[Any]) -> None:
        storage = t.untyped_storage()
        key = self._key(t)
        entry = self._owners.get(key)
        if entry is None:
            if storage.nbytes() == 0 or key in inputs:
                return  # empty, or an in-place result or view of a tensor from before
            entry = self._owners[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: Any) -> None:
        entry = self._owners.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._owners[key]


class Timer:
    """Wall-clock seconds of a block, synchronising CUDA first and last."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds = float("nan")

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Timer:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start
