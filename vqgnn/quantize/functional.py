"""Pure functions of the codebook math: EMA, Laplace smoothing, assignment, k-means.

Letter code for shapes: ``N`` vectors, ``D`` dimensions, ``K`` codewords.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, TypeVar

import torch
from torch import Tensor

from vqgnn.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

try:  # faiss is a declared dependency, but the torch path must work without it.
    import faiss  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised only where faiss is missing
    faiss = None  # type: ignore[assignment]


def fp32(fn: F) -> F:
    """Run ``fn`` without autograd and with autocast off: codebook arithmetic stays fp32.

    Under ``torch.autocast`` a matrix product would otherwise run in half precision,
    which changes nearest-codeword decisions.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), torch.autocast("cpu", enabled=False), \
                torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def has_faiss() -> bool:
    """Whether faiss can be imported."""
    return faiss is not None


def ema_inplace(buffer: Tensor, new: Tensor, decay: float) -> None:
    r"""Exponential moving average in place: :math:`b \leftarrow \gamma b + (1-\gamma) n`."""
    buffer.mul_(decay).add_(new, alpha=1.0 - decay)


def laplace_smoothing(counts: Tensor, eps: float) -> Tensor:
    r"""Laplace-smoothed counts that keep their total.

    .. math::
        \hat N_k = \frac{N_k + \epsilon}{\sum_k N_k + K \epsilon} \sum_k N_k

    Args:
        counts: (K,) non-negative counts.
        eps: smoothing constant, > 0.

    Returns:
        (K,) smoothed counts, all > 0 when the total is > 0.
    """
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


# Most entries of one chunk's (rows, K) distance matrix in the nearest-codeword search
# (16 MB of float32): a VQ inference batch of 32,768 nodes against K = 1,024 codewords held
# two 134 MB matrices at once, five times the rest of the batch's inference.
SEARCH_ENTRIES = 1 << 22


@fp32
def nearest_codeword(x: Tensor, codewords: Tensor, chunk_size: int = 65536) -> Tensor:
    r"""Index of the nearest codeword (squared Euclidean) for every row of ``x``.

    Computed as :math:`\|x\|^2 - 2 x V^\top + \|v\|^2` in chunks of at most
    ``chunk_size`` rows and at most ``SEARCH_ENTRIES`` (2^22) distances, so that memory
    stays :math:`O(\min(\text{chunk} \cdot K, 2^{22}))` for any number of rows.

    Args:
        x: (N, D) vectors.
        codewords: (K, D) codewords.
        chunk_size: most rows per chunk (>= 1).

    Returns:
        (N,) int64 indices into ``codewords``.

    Example:
        >>> nearest_codeword(torch.tensor([[0.0], [9.0]]), torch.tensor([[1.0], [8.0]]))
        tensor([0, 1])
    """
    if x.dim() != 2 or codewords.dim() != 2 or x.size(1) != codewords.size(1):
        raise ConfigError(
            f"nearest_codeword expects x of shape (N, D) and codewords of shape (K, D); "
            f"received x {tuple(x.shape)} and codewords {tuple(codewords.shape)}"
        )
    if chunk_size < 1:
        raise ConfigError(f"nearest_codeword: 'chunk_size' must be >= 1, received {chunk_size}")
    x = x.float()
    codewords = codewords.float()
    v_sq = codewords.pow(2).sum(dim=1)  # (K,)
    out = torch.empty(x.size(0), dtype=torch.long, device=x.device)
    rows = max(1, min(chunk_size, SEARCH_ENTRIES // max(1, codewords.size(0))))
    for start in range(0, x.size(0), rows):
        chunk = x[start : start + rows]  # (n, D)
        # ||x||^2 is constant per row and does not change the argmin.
        dist = torch.addmm(v_sq.unsqueeze(0), chunk, codewords.t(), alpha=-2.0)  # (n, K)
        out[start : start + rows] = dist.argmin(dim=1)
        del dist  # before the next chunk's is made: one (rows, K) matrix at a time
    return out


@fp32
def batch_statistics(codes: Tensor, x: Tensor, num_codewords: int) -> tuple[Tensor, Tensor]:
    """Per-codeword count ``n_k`` and sum ``s_k`` of the vectors assigned to it.

    Args:
        codes: (N,) int64 codeword index per vector.
        x: (N, D) vectors.
        num_codewords: K.

    Returns:
        ``(counts, sums)``: (K,) and (K, D), fp32.
    """
    x = x.float()
    counts = torch.zeros(num_codewords, dtype=torch.float32, device=x.device)
    counts.index_add_(0, codes, torch.ones_like(codes, dtype=torch.float32))
    sums = torch.zeros(num_codewords, x.size(1), dtype=torch.float32, device=x.device)
    sums.index_add_(0, codes, x)
    return counts, sums


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`: centroids (K, D), assignment (N,), counts (K,)."""

    centroids: Tensor
    assignment: Tensor
    counts: Tensor


def _initial_centroids(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """K distinct rows of x (repeating rows only when N < K)."""
    n = x.size(0)
    if n >= k:
        idx = torch.randperm(n, generator=generator)[:k]
    else:
        idx = torch.cat([torch.randperm(n, generator=generator),
                         torch.randint(n, (k - n,), generator=generator)])
    return x[idx.to(x.device)].clone()


@fp32
def kmeans_torch(x: Tensor, num_codewords: int, num_iters: int = 20, seed: int = 0,
                 chunk_size: int = 65536) -> KMeansResult:
    """Lloyd's k-means in torch (any device).

    Empty clusters keep their previous centroid. Deterministic for a given seed.

    Args:
        x: (N, D) vectors.
        num_codewords: K >= 1.
        num_iters: Lloyd iterations (>= 0).
        seed: seed of the initial centroid choice.
        chunk_size: rows per chunk of the assignment search.

    Returns:
        :class:`KMeansResult`.
    """
    _check_kmeans_args(x, num_codewords, num_iters)
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centroids = _initial_centroids(x, num_codewords, gen)
    for _ in range(num_iters):
        codes = nearest_codeword(x, centroids, chunk_size)
        counts, sums = batch_statistics(codes, x, num_codewords)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1)
    codes = nearest_codeword(x, centroids, chunk_size)
    counts, _ = batch_statistics(codes, x, num_codewords)
    return KMeansResult(centroids, codes, counts)


def kmeans_faiss(x: Tensor, num_codewords: int, num_iters: int = 20, seed: int = 0,
                 gpu: Optional[bool] = None) -> KMeansResult:
    """k-means by ``faiss.Kmeans`` (on the GPU where faiss-gpu and a CUDA input are present).

    Args:
        x: (N, D) vectors.
        num_codewords: K >= 1.
        num_iters: iterations (>= 1 for faiss; 0 is run as 1).
        seed: faiss's seed.
        gpu: use faiss's GPU index; default: when ``x`` is on CUDA and faiss has GPUs.

    Returns:
        :class:`KMeansResult` on ``x``'s device.

    Raises:
        ImportError: when faiss is not installed.
    """
    if faiss is None:
        raise ImportError("kmeans_faiss needs faiss: pip install faiss-cpu (or faiss-gpu)")
    _check_kmeans_args(x, num_codewords, num_iters)
    device = x.device
    if gpu is None:
        gpu = device.type == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    data = x.detach().float().cpu().contiguous().numpy()
    n = data.shape[0]
    if n < num_codewords:  # faiss needs at least K points: repeat rows deterministically
        gen = torch.Generator().manual_seed(seed)
        extra = torch.randint(n, (num_codewords - n,), generator=gen).numpy()
        import numpy as np

        data = np.concatenate([data, data[extra]], axis=0)
    km = faiss.Kmeans(data.shape[1], num_codewords, niter=max(num_iters, 1), seed=seed,
                      gpu=bool(gpu), verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(256, (n + num_codewords - 1) // num_codewords))
    km.train(data)
    assert km.centroids is not None
    centroids = torch.from_numpy(km.centroids.copy()).to(device)
    codes = nearest_codeword(x.float(), centroids)
    counts, _ = batch_statistics(codes, x, num_codewords)
    return KMeansResult(centroids, codes, counts)


def kmeans(x: Tensor, num_codewords: int, num_iters: int = 20, seed: int = 0,
           backend: str = "auto") -> KMeansResult:
    """k-means by faiss (``backend='faiss'``) or torch (``'torch'``); ``'auto'`` prefers faiss.

    Args:
        x: (N, D) vectors.
        num_codewords: K.
        num_iters: iterations.
        seed: seed.
        backend: ``'auto'``, ``'faiss'`` or ``'torch'``.

    Returns:
        :class:`KMeansResult`.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(
            f"kmeans: 'backend' must be 'auto', 'faiss' or 'torch', received {backend!r}")
    if backend == "faiss" or (backend == "auto" and faiss is not None):
        return kmeans_faiss(x, num_codewords, num_iters, seed)
    return kmeans_torch(x, num_codewords, num_iters, seed)


def _check_kmeans_args(x: Tensor, num_codewords: int, num_iters: int) -> None:
    if x.dim() != 2 or x.size(0) == 0:
        raise ConfigError(f"kmeans expects x of shape (N, D) with N >= 1, "
                          f"received {tuple(x.shape)}")
    if num_codewords < 1:
        raise ConfigError(f"kmeans: 'num_codewords' must be >= 1, received {num_codewords}")
    if num_iters < 0:
        raise ConfigError(f"kmeans: 'num_iters' must be >= 0, received {num_iters}")


def perplexity(counts: Tensor) -> Tensor:
    """Perplexity ``exp(H(p))`` of the codeword usage distribution ``p = counts / sum``."""
    p = counts.float() / counts.float().sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()
