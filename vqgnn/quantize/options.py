"""``CodebookOptions``: every option of a layer's codebook, in one visible place."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from vqgnn.errors import ConfigError

KMEANS_BACKENDS = ("auto", "faiss", "torch")


@dataclass(frozen=True)
class CodebookOptions:
    """Options of the codebook of each :class:`~vqgnn.nn.VQConv` layer.

    The same dataclass reaches :class:`~vqgnn.quantize.Codebook` from
    :class:`~vqgnn.nn.VQConv` (``codebook=``), :class:`~vqgnn.nn.VQGNN` (``codebook=``),
    :class:`~vqgnn.train.ModelConfig` (``codebook``) and the command line
    (``--num-codewords``, ``--codebook-decay``, ``--dead-threshold``,
    ``--standardizer-momentum``, ``--kmeans-backend``, ``--kmeans-iters``). It validates
    itself on construction.

    Attributes:
        num_codewords: K, codewords per layer.
        decay: EMA decay :math:`\\gamma` of the codeword statistics, in [0, 1).
        eps: Laplace smoothing constant of the EMA counts (> 0).
        dead_threshold: EMA count under which a codeword is re-seeded from the batch, in
            [0, 1) (0: never).
        momentum: momentum of the running standardisation of the feature and gradient
            halves, in (0, 1].
        grad_eps: variance epsilon of the gradient half's standardiser (gradients are
            tiny), > 0.
        kmeans_iters: iterations of the k-means initialisation (>= 1).
        kmeans_backend: ``'auto'`` (faiss when installed), ``'faiss'`` or ``'torch'``.
        chunk_size: rows per chunk of the nearest-codeword search (>= 1).

    Example:
        >>> opts = CodebookOptions(num_codewords=1024, decay=0.95)
        >>> model = VQGNN(16, 64, 2, 7, num_nodes=n, codebook=opts)
    """

    num_codewords: int = 256
    decay: float = 0.99
    eps: float = 1e-5
    dead_threshold: float = 0.01
    momentum: float = 0.1
    grad_eps: float = 1e-20
    kmeans_iters: int = 20
    kmeans_backend: str = "auto"
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        name = type(self).__name__
        for arg in ("num_codewords", "kmeans_iters", "chunk_size"):
            value = getattr(self, arg)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}': '{arg}' must be an int >= 1, received {value!r}")
        checks = (("decay", 0.0 <= self.decay < 1.0, "in [0, 1)"),
                  ("eps", 0.0 < self.eps < math.inf, "> 0 and finite"),
                  ("dead_threshold", 0.0 <= self.dead_threshold < 1.0, "in [0, 1)"),
                  ("momentum", 0.0 < self.momentum <= 1.0, "in (0, 1]"),
                  ("grad_eps", 0.0 < self.grad_eps < math.inf, "> 0 and finite"))
        for arg, ok, expected in checks:
            if not ok:
                raise ConfigError(f"'{name}': '{arg}' must be {expected}, "
                                  f"received {getattr(self, arg)!r}")
        if self.kmeans_backend not in KMEANS_BACKENDS:
            raise ConfigError(f"'{name}': 'kmeans_backend' must be one of {KMEANS_BACKENDS}, "
                              f"received {self.kmeans_backend!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CodebookOptions:
        """Options from a dict (a record's ``codebook``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"'{cls.__name__}': unknown options {unknown}; valid: "
                              f"{sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
