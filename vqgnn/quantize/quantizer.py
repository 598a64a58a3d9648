"""The per-layer quantizer of (input feature, output gradient) pairs."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from vqgnn.errors import ConfigError, check_finite_rows
from vqgnn.quantize.codebook import AllReduceFn, Codebook, CodebookHealth, noop_all_reduce
from vqgnn.quantize.functional import fp32, perplexity
from vqgnn.quantize.options import CodebookOptions


class RunningStandardizer(torch.nn.Module):
    r"""Per-dimension running mean and variance, BatchNorm-style, without affine parameters.

    :math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}`. The first update sets the
    statistics to the batch's; later ones move them by ``momentum``.

    Args:
        dim: D.
        momentum: weight of a new batch's statistics, in (0, 1].
        eps: added to the variance.
    """

    mean: Tensor
    var: Tensor
    initialized: Tensor

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"'{type(self).__name__}': 'momentum' must be in (0, 1], "
                              f"received {momentum!r}")
        self.dim = dim
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def reset_parameters(self) -> None:
        self.mean.zero_()
        self.var.fill_(1.0)
        self.initialized.fill_(False)

    @fp32
    def update(self, x: Tensor, all_reduce_fn: AllReduceFn = noop_all_reduce) -> None:
        """Move the statistics towards those of the batch ``x`` (B, D)."""
        # Shifted sums in float64: E[x^2] - E[x]^2 cancels catastrophically in fp32 when
        # |mean| >> std. The shift (the running mean) is the same on every worker.
        shift = self.mean.double()
        z = x.double() - shift
        stats = torch.cat([z.sum(0), z.pow(2).sum(0), z.new_tensor([x.size(0)])])
        all_reduce_fn(stats)
        n = stats[-1].clamp_min(1.0)
        mean_z = stats[: self.dim] / n
        var = (stats[self.dim : 2 * self.dim] / n - mean_z.pow(2)).clamp_min(0.0).float()
        mean = (mean_z + shift).float()
        # Weight of the batch: 1 at the first update, ``momentum`` after (no device sync).
        m = torch.where(self.initialized, self.momentum, 1.0)
        self.mean.mul_(1 - m).add_(mean * m)
        self.var.mul_(1 - m).add_(var * m)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / torch.sqrt(self.var + self.eps)

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.sqrt(self.var + self.eps) + self.mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}, eps={self.eps}"


class FeatureGradientQuantizer(torch.nn.Module):
    r"""Quantizes, per layer, the pair (layer input :math:`x_j`, gradient :math:`g_j`).

    Each node ``j`` of the graph is assigned to one codeword of a :class:`Codebook`
    over the concatenation :math:`[\hat x_j \| \hat g_j]` of the two halves, each
    standardised per dimension by running statistics (:class:`RunningStandardizer`).
    :meth:`features` and :meth:`gradients` return the codewords' two halves in the
    original (de-standardised) scales. The assignment of every node is kept in
    ``assignment`` (N entries) and refreshed for the nodes of each update.

    Args:
        num_nodes: N, the number of nodes of the graph.
        feature_dim: :math:`D_x`, the layer's input channels.
        grad_dim: :math:`D_g`, the channels of the layer's aggregated output.
        num_codewords: K.
        momentum: momentum of the running standardisation.
        grad_eps: variance epsilon of the gradient half (gradients are tiny).
        index_dtype: ``torch.int64`` or ``torch.int32`` for the assignment.
        all_reduce_fn: sums batch statistics across workers (default: no-op).
        decay, eps, dead_threshold, kmeans_iters, kmeans_backend, chunk_size: the
            :class:`Codebook`'s (see :class:`~vqgnn.quantize.CodebookOptions`).

    :meth:`from_options` builds one from a :class:`~vqgnn.quantize.CodebookOptions`.
    """

    assignment: Tensor

    def __init__(
        self,
        num_nodes: int,
        feature_dim: int,
        grad_dim: int,
        num_codewords: int,
        momentum: float = 0.1,
        grad_eps: float = 1e-20,
        index_dtype: torch.dtype = torch.int64,
        all_reduce_fn: Optional[AllReduceFn] = None,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_threshold: float = 0.01,
        kmeans_iters: int = 20,
        kmeans_backend: str = "auto",
        chunk_size: int = 65536,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("num_nodes", num_nodes), ("feature_dim", feature_dim),
                           ("grad_dim", grad_dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"'{name}': '{arg}' must be an int >= 1, received {value!r}")
        if index_dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"'{name}': 'index_dtype' must be torch.int64 or torch.int32, "
                              f"received {index_dtype}")
        self.num_nodes = num_nodes
        self.feature_dim = feature_dim
        self.grad_dim = grad_dim
        self.all_reduce_fn: AllReduceFn = all_reduce_fn or noop_all_reduce
        self.codebook = Codebook(num_codewords, feature_dim + grad_dim, decay=decay, eps=eps,
                                 dead_threshold=dead_threshold, kmeans_iters=kmeans_iters,
                                 kmeans_backend=kmeans_backend, chunk_size=chunk_size,
                                 all_reduce_fn=self.all_reduce_fn)
        self.x_norm = RunningStandardizer(feature_dim, momentum)
        self.g_norm = RunningStandardizer(grad_dim, momentum, eps=grad_eps)
        self.register_buffer("assignment", torch.zeros(num_nodes, dtype=index_dtype))

    @classmethod
    def from_options(cls, num_nodes: int, feature_dim: int, grad_dim: int,
                     options: CodebookOptions, index_dtype: torch.dtype = torch.int64,
                     all_reduce_fn: Optional[AllReduceFn] = None) -> FeatureGradientQuantizer:
        """A quantizer with every option of ``options``."""
        return cls(num_nodes, feature_dim, grad_dim, options.num_codewords,
                   momentum=options.momentum, grad_eps=options.grad_eps,
                   index_dtype=index_dtype, all_reduce_fn=all_reduce_fn, decay=options.decay,
                   eps=options.eps, dead_threshold=options.dead_threshold,
                   kmeans_iters=options.kmeans_iters, kmeans_backend=options.kmeans_backend,
                   chunk_size=options.chunk_size)

    def set_all_reduce(self, fn: Optional[AllReduceFn]) -> None:
        """Sum batch statistics across workers with ``fn`` (an in-place sum) before each
        update, in the standardisers and the codebook; None: single process."""
        if fn is not None and not callable(fn):
            raise ConfigError(f"'{type(self).__name__}.set_all_reduce': 'fn' must be a callable "
                              f"or None, received {type(fn).__name__}")
        self.all_reduce_fn = fn if fn is not None else noop_all_reduce
        self.codebook.all_reduce_fn = self.all_reduce_fn

    @property
    def num_codewords(self) -> int:
        return self.codebook.num_codewords

    @property
    def initialized(self) -> bool:
        """Whether the codebook holds codewords (a host flag: no device sync)."""
        return self.codebook.ready

    def reset_parameters(self) -> None:
        self.codebook.reset_parameters()
        self.x_norm.reset_parameters()
        self.g_norm.reset_parameters()
        self.assignment.zero_()

    def features(self) -> Tensor:
        """(K, D_x) feature parts of the codewords, de-standardised."""
        return self.x_norm.inverse(self.codebook.embed[:, : self.feature_dim])

    def gradients(self) -> Tensor:
        """(K, D_g) gradient parts of the codewords, de-standardised."""
        return self.g_norm.inverse(self.codebook.embed[:, self.feature_dim :])

    def _check_pair(self, node_idx: Tensor, x: Tensor, g: Optional[Tensor]) -> None:
        name = type(self).__name__
        if node_idx.dim() != 1 or node_idx.size(0) != x.size(0):
            raise ConfigError(f"'{name}': 'node_idx' must be 1-D with one entry per row of 'x' "
                              f"({x.size(0)}), received shape {tuple(node_idx.shape)}")
        if x.dim() != 2 or x.size(1) != self.feature_dim:
            raise ConfigError(f"'{name}': 'x' must have shape (B, {self.feature_dim}), "
                              f"received {tuple(x.shape)}")
        if g is not None and (g.dim() != 2 or g.shape != (x.size(0), self.grad_dim)):
            raise ConfigError(f"'{name}': 'g' must have shape ({x.size(0)}, {self.grad_dim}), "
                              f"received {tuple(g.shape)}")

    def _vectors(self, x: Tensor, g: Optional[Tensor]) -> Tensor:
        zx = self.x_norm(x)
        zg = self.g_norm(g) if g is not None else zx.new_zeros(x.size(0), self.grad_dim)
        return torch.cat([zx, zg], dim=1)

    @fp32
    def initialize(self, node_idx: Tensor, x: Tensor, g: Optional[Tensor] = None,
                   seed: int = 0) -> None:
        """k-means initialisation on a first pass, and assignment of those nodes.

        Args:
            node_idx: (n,) node ids of the rows.
            x: (n, D_x) their layer inputs.
            g: (n, D_g) their gradients, or None (gradient half at its mean).
            seed: k-means seed.
        """
        self._check_pair(node_idx, x, g)
        name = type(self).__name__
        check_finite_rows(x, f"'{name}.initialize': the layer inputs 'x'")
        if g is not None:
            check_finite_rows(g, f"'{name}.initialize': the gradients 'g'")
        self.x_norm.update(x, self.all_reduce_fn)
        if g is not None:
            self.g_norm.update(g, self.all_reduce_fn)
        codes = self.codebook.init_(self._vectors(x, g), seed=seed)
        self.assignment[node_idx] = codes.to(self.assignment.dtype)

    @fp32
    def update(self, node_idx: Tensor, x: Tensor, g: Tensor, search: bool = True) -> Tensor:
        """One EMA step on a batch's pairs; refreshes the batch nodes' assignment.

        Args:
            node_idx: (B,) batch node ids.
            x: (B, D_x) their layer inputs.
            g: (B, D_g) gradients of the loss at their aggregated outputs.
            search: find each pair's nearest codeword (and store it as the node's
                assignment); False: the EMA step adds each pair to the codeword the node
                is assigned to already (its last search's), and the assignment stays, with
                no (B, K) distances computed (``VQOptions.search_every``). The batch nodes
                must have been assigned before (by a search, :meth:`initialize` or
                :meth:`set_codewords`): a node never assigned holds codeword 0. The
                recorded quantisation error (:meth:`health`) is then the pairs' error
                against those codewords, not against their nearest. A codebook not yet
                initialised is initialised by k-means and assigns the batch either way.

        Returns:
            (B,) their codewords.
        """
        self._check_pair(node_idx, x, g)
        self.x_norm.update(x, self.all_reduce_fn)
        self.g_norm.update(g, self.all_reduce_fn)
        if not search and self.codebook.ready:
            codes = self.assignment.index_select(0, node_idx).long()
            return self.codebook.update(self._vectors(x, g), codes)
        codes = self.codebook.update(self._vectors(x, g))
        self.assignment[node_idx] = codes.to(self.assignment.dtype)
        return codes

    @fp32
    def set_codewords(self, features: Tensor, gradients: Tensor,
                      assignment: Optional[Tensor] = None) -> None:
        """Set the codewords' two halves (original scales) and optionally every assignment.

        Useful for tests (an "oracle" codebook) and for loading external codebooks.

        Args:
            features: (K, D_x).
            gradients: (K, D_g).
            assignment: (N,) codeword of every node.
        """
        name = type(self).__name__
        k = self.num_codewords
        if features.shape != (k, self.feature_dim) or gradients.shape != (k, self.grad_dim):
            raise ConfigError(f"'{name}': expected features ({k}, {self.feature_dim}) and "
                              f"gradients ({k}, {self.grad_dim}), received "
                              f"{tuple(features.shape)} and {tuple(gradients.shape)}")
        self.x_norm.initialized.fill_(True)
        self.g_norm.initialized.fill_(True)
        self.codebook.set_codewords(torch.cat([self.x_norm(features), self.g_norm(gradients)], 1))
        if assignment is not None:
            if assignment.shape != (self.num_nodes,) or bool(
                    (assignment < 0).any() | (assignment >= k).any()):
                raise ConfigError(f"'{name}': 'assignment' must have shape ({self.num_nodes},) "
                                  f"with values in [0, {k}), received {tuple(assignment.shape)}")
            self.assignment.copy_(assignment.to(self.assignment.dtype))

    def health(self, counts: Optional[Tensor] = None) -> CodebookHealth:
        """The codebook's health, its usage and perplexity read from the assignment table
        (or from ``counts``, (K,) nodes per codeword, where a caller keeps them).

        ``usage`` is the fraction of codewords that at least one node is assigned to, and
        ``perplexity`` is exp of the entropy of the nodes' spread over the codewords. These
        are the codewords that stand for out-of-batch neighbours. The codebook's own
        figures come from its EMA counts, where a codeword restarted with a count of 1
        counts as used before any node is assigned to it: with restarts on, its usage
        reads 1.0 whatever the assignments. Without ``counts``: one ``bincount`` over the
        N assignments.
        """
        if counts is None:
            counts = torch.bincount(self.assignment, minlength=self.num_codewords)
        elif counts.shape != (self.num_codewords,):
            raise ConfigError(f"'FeatureGradientQuantizer.health': 'counts' must have shape "
                              f"({self.num_codewords},), received {tuple(counts.shape)}")
        counts = counts.float()
        return replace(self.codebook.health(), usage=float((counts > 0).float().mean()),
                       perplexity=float(perplexity(counts)))

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, feature_dim={self.feature_dim}, "
                f"grad_dim={self.grad_dim}, num_codewords={self.num_codewords}")
