"""A codebook of K codewords kept by EMA k-means (VQ-VAE style)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from vqgnn.errors import ConfigError, check_finite_rows
from vqgnn.quantize.functional import (
    batch_statistics,
    ema_inplace,
    fp32,
    kmeans,
    laplace_smoothing,
    nearest_codeword,
    perplexity,
)

AllReduceFn = Callable[[Tensor], None]


def noop_all_reduce(tensor: Tensor) -> None:
    """The default all-reduce: a single process has nothing to sum."""


@dataclass
class CodebookHealth:
    """How well a codebook is used.

    Attributes:
        usage: a layer's (:meth:`~vqgnn.quantize.FeatureGradientQuantizer.health`): the fraction of
            codewords that at least one node is assigned to; a bare :class:`Codebook`'s:
            the fraction whose EMA count is at or above the dead threshold (a restarted
            codeword, and an empty k-means cluster, start with a count of 1, so they
            count as used at once).
        perplexity: ``exp(entropy)`` of the nodes' spread over the codewords (a bare
            :class:`Codebook`: of its EMA counts), K at most: the number of equally used
            codewords that would give the same entropy.
        quantization_error: relative error ``||x - v_c(x)||^2 / ||x||^2`` of the last
            update's batch; before any update, of the vectors the k-means initialisation
            clustered (NaN before either).
        message_error: a model's mean, over its quantized layers, of the relative error of
            the quantized out-of-batch messages against exact ones on a fixed batch
            (:meth:`~vqgnn.nn.VQConv.message_error`); None where not measured.
        message_errors: the same per quantized layer (None for a layer without codebook).
    """

    usage: float
    perplexity: float
    quantization_error: float
    message_error: Optional[float] = None
    message_errors: Optional[list[Optional[float]]] = None


class Codebook(torch.nn.Module):
    r"""K codewords over D-dimensional vectors, updated by EMA k-means.

    Per update with batch vectors :math:`x` assigned to their nearest codewords:

    .. math::
        N_k \leftarrow \gamma N_k + (1-\gamma) n_k, \quad
        S_k \leftarrow \gamma S_k + (1-\gamma) s_k, \quad
        v_k = S_k / \hat N_k

    with :math:`\hat N_k` the Laplace-smoothed counts. Codewords whose EMA count falls
    below ``dead_threshold`` are re-seeded from batch vectors with :math:`N_k = 1`,
    :math:`S_k = v_k`. Statistics are kept in fp32, whatever the input dtype.

    Args:
        num_codewords: K (>= 1).
        dim: D (>= 1).
        decay: EMA decay :math:`\gamma` in [0, 1).
        eps: Laplace smoothing constant (> 0).
        dead_threshold: EMA count under which a codeword is restarted, in [0, 1)
            (0 disables restarts). Restarted codewords get count 1, above it.
        kmeans_iters: iterations of the k-means initialisation.
        kmeans_backend: ``'auto'`` (faiss when installed), ``'faiss'`` or ``'torch'``.
        chunk_size: rows per chunk of the nearest-codeword search.
        all_reduce_fn: sums a tensor across data-parallel workers in place; the
            batch statistics pass through it before the EMA step. Default: no-op.

    Example:
        >>> cb = Codebook(num_codewords=4, dim=2)
        >>> cb.init_(torch.randn(100, 2))
        >>> codes = cb.update(torch.randn(32, 2))
    """

    initialized: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    embed: Tensor
    last_error: Tensor

    def __init__(
        self,
        num_codewords: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_threshold: float = 0.01,
        kmeans_iters: int = 20,
        kmeans_backend: str = "auto",
        chunk_size: int = 65536,
        all_reduce_fn: Optional[AllReduceFn] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_codewords, int) or num_codewords < 1:
            raise ConfigError(f"'{name}': 'num_codewords' must be an int >= 1, "
                              f"received {num_codewords!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"'{name}': 'dim' must be an int >= 1, received {dim!r}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"'{name}': 'decay' must be in [0, 1), received {decay!r}")
        if eps <= 0:
            raise ConfigError(f"'{name}': 'eps' must be > 0, received {eps!r}")
        if not 0.0 <= dead_threshold < 1.0:
            raise ConfigError(f"'{name}': 'dead_threshold' must be in [0, 1), "
                             f"received {dead_threshold!r}")
        if kmeans_backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"'{name}': 'kmeans_backend' must be 'auto', 'faiss' or 'torch', "
                              f"received {kmeans_backend!r}")
        self.num_codewords = num_codewords
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold
        self.kmeans_iters = kmeans_iters
        self.kmeans_backend = kmeans_backend
        self.chunk_size = chunk_size
        self.all_reduce_fn: AllReduceFn = all_reduce_fn or noop_all_reduce
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("cluster_size", torch.zeros(num_codewords))
        self.register_buffer("embed_sum", torch.zeros(num_codewords, dim))
        self.register_buffer("embed", torch.zeros(num_codewords, dim))
        self.register_buffer("last_error", torch.tensor(float("nan")))
        # A host copy of ``initialized``: the training step reads it without a device sync.
        self._ready = False

    @property
    def ready(self) -> bool:
        """Whether the codebook holds codewords (the host copy of ``initialized``)."""
        return self._ready

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)  # once per load, not per step

    def reset_parameters(self) -> None:
        """Forget everything: the codebook is uninitialised again."""
        self._ready = False
        self.initialized.fill_(False)
        self.cluster_size.zero_()
        self.embed_sum.zero_()
        self.embed.zero_()
        self.last_error.fill_(float("nan"))

    def _check_vectors(self, x: Tensor, arg: str = "x") -> None:
        if x.dim() != 2 or x.size(1) != self.dim:
            raise ConfigError(f"'{type(self).__name__}' expects '{arg}' of shape (N, {self.dim}), "
                              f"received {tuple(x.shape)}")

    @fp32
    def init_(self, x: Tensor, seed: int = 0) -> Tensor:
        """Initialise by k-means on ``x``, consistently: ``S = V * N0`` with ``N0 > 0``.

        ``N0`` is the k-means cluster size (1 for an empty cluster). Under data
        parallelism each worker clusters its own vectors; the workers' codewords are then
        combined index by index (count-weighted means, through ``all_reduce_fn``), so that
        every worker starts from the same codebook, and the rows are re-assigned to it.

        Args:
            x: (N, D) vectors of a first pass.
            seed: k-means seed.

        Returns:
            (N,) the codeword of every row of ``x``.
        """
        self._check_vectors(x)
        x = x.detach().float()
        check_finite_rows(x, f"'{type(self).__name__}.init_': the vectors to cluster")
        result = kmeans(x, self.num_codewords, self.kmeans_iters, seed, self.kmeans_backend)
        counts = result.counts.clamp_min(1.0)
        sums = result.centroids * counts.unsqueeze(1)
        self.all_reduce_fn(counts)
        self.all_reduce_fn(sums)
        self.set_codewords(sums / counts.unsqueeze(1), counts)
        codes = result.assignment if self.all_reduce_fn is noop_all_reduce else self.assign(x)
        self._record_error(x, codes)  # the k-means error, until the first update
        return codes

    def _record_error(self, x: Tensor, codes: Tensor, chunk: int = 65536) -> None:
        """``last_error`` of ``x`` against its codewords (summed over the workers), by
        row chunks: no (N, D) temporary after a k-means initialisation on all N nodes."""
        err = x.new_zeros(2)
        for start in range(0, x.size(0), chunk):
            part = x[start:start + chunk]
            residual = part - self.embed.index_select(0, codes[start:start + chunk])
            err += torch.stack([residual.pow(2).sum(), part.pow(2).sum()])
        self.all_reduce_fn(err)
        self.last_error.copy_(err[0] / err[1].clamp_min(1e-12))

    @fp32
    def set_codewords(self, codewords: Tensor, counts: Optional[Tensor] = None) -> None:
        """Set the codewords (and their EMA counts, default 1) consistently.

        Args:
            codewords: (K, D).
            counts: (K,) positive EMA counts.
        """
        if codewords.shape != self.embed.shape:
            raise ConfigError(f"'{type(self).__name__}': 'codewords' must have shape "
                              f"{tuple(self.embed.shape)}, received {tuple(codewords.shape)}")
        if counts is None:
            counts = torch.ones(self.num_codewords, device=codewords.device)
        if counts.shape != self.cluster_size.shape or bool((counts <= 0).any()):
            raise ConfigError(f"'{type(self).__name__}': 'counts' must be positive with shape "
                              f"{tuple(self.cluster_size.shape)}, received {tuple(counts.shape)}")
        self.embed.copy_(codewords.float())
        self.cluster_size.copy_(counts.float())
        self.embed_sum.copy_(self.embed * self.cluster_size.unsqueeze(1))
        self.initialized.fill_(True)
        self._ready = True

    @fp32
    def assign(self, x: Tensor) -> Tensor:
        """(N,) nearest codeword of each row of ``x`` (N, D), chunked."""
        self._check_vectors(x)
        return nearest_codeword(x, self.embed, self.chunk_size)

    @fp32
    def update(self, x: Tensor, codes: Optional[Tensor] = None) -> Tensor:
        """One EMA k-means step on the batch ``x``; initialises by k-means first if needed.

        Args:
            x: (B, D) batch vectors.
            codes: (B,) their codewords, if already known (computed with the current
                codebook, or an earlier one's assignment kept without a new search).

        Returns:
            (B,) the codeword of every batch vector (before restarts).
        """
        self._check_vectors(x)
        x = x.detach().float()
        if not self._ready:
            codes = self.init_(x)
        elif codes is None:
            codes = self.assign(x)
        counts, sums = batch_statistics(codes, x, self.num_codewords)
        self.all_reduce_fn(counts)
        self.all_reduce_fn(sums)
        self._record_error(x, codes)  # against the codewords before this step
        ema_inplace(self.cluster_size, counts, self.decay)
        ema_inplace(self.embed_sum, sums, self.decay)
        smoothed = laplace_smoothing(self.cluster_size, self.eps)
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self._restart_dead(x)
        return codes

    def _restart_dead(self, x: Tensor) -> None:
        """Replace the codewords whose EMA count fell under the threshold by random batch
        vectors, with count 1. Branch-free (no device sync): every codeword draws a
        candidate and only the dead ones take it."""
        if self.dead_threshold <= 0:
            return
        dead = (self.cluster_size < self.dead_threshold).unsqueeze(1)  # (K, 1)
        # Random batch vectors (global RNG: reproducible under torch.manual_seed).
        # Under data parallelism each worker picks from its own batch; summing the
        # picks and the ones below averages them, so that all workers agree.
        pick = torch.randint(x.size(0), (self.num_codewords,), device=x.device)
        new = x[pick]
        self.all_reduce_fn(new)
        counts = torch.ones(self.num_codewords, 1, device=x.device)
        self.all_reduce_fn(counts)
        new = new / counts
        self.embed.copy_(torch.where(dead, new, self.embed))
        self.embed_sum.copy_(torch.where(dead, new, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead.squeeze(1), 1.0, self.cluster_size))

    @fp32
    def health(self) -> CodebookHealth:
        """Usage, perplexity and the last batch's relative quantisation error."""
        alive = (self.cluster_size >= max(self.dead_threshold, 1e-12)).float().mean()
        return CodebookHealth(
            usage=float(alive),
            perplexity=float(perplexity(self.cluster_size)),
            quantization_error=float(self.last_error),
        )

    def extra_repr(self) -> str:
        return (f"num_codewords={self.num_codewords}, dim={self.dim}, decay={self.decay}, "
                f"dead_threshold={self.dead_threshold}")
