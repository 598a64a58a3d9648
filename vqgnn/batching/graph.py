"""The full graph as VQ layers need it: edge list, degrees, and a node-to-batch map."""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, TypeVar

import torch
from torch import Tensor

from vqgnn.errors import ConfigError, ConfigTypeError

T = TypeVar("T")


def check_edge_index(edge_index: Tensor, num_nodes: int, owner: str = "VQGraph") -> None:
    """Raise a clear error unless ``edge_index`` is a (2, E) integer tensor within range."""
    if not isinstance(edge_index, Tensor):
        raise ConfigTypeError(f"'{owner}': 'edge_index' must be a torch.Tensor, "
                              f"received {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(f"'{owner}': 'edge_index' must have shape (2, E), "
                          f"received {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"'{owner}': 'edge_index' must be int64 or int32, "
                          f"received {edge_index.dtype}")
    if edge_index.numel() > 0:
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ConfigError(f"'{owner}': 'edge_index' holds node indices in [{lo}, {hi}], "
                              f"outside [0, {num_nodes}) for num_nodes={num_nodes}")


class VQGraph:
    """The full graph, prepared once for mini-batch VQ layers.

    Holds ``edge_index`` (PyG convention: row 0 sources, row 1 targets), the in- and
    out-degrees, and an (N,) map from node id to position in the current batch (-1
    outside), reused by every batch so that no per-step allocation grows with N
    beyond that one vector.

    Args:
        edge_index: (2, E) edges ``j -> i``.
        num_nodes: N.
        edge_weight: optional (E,) non-negative weights of the edges, on ``edge_index``'s
            device. The layers that take
            edge weights (GCN, SAGE and GraphConv sum/mean, GIN) use them in their operator:
            GCN normalises by the weighted degrees, a mean aggregation divides by the sum
            of the incoming weights. Attention layers ignore them (their softmax
            normalises over the incoming edges). GraphSAINT's aggregator normalisation
            (:mod:`vqgnn.baselines`) is passed this way.
        check: check the arguments (node ids in range, weights finite and non-negative:
            host synchronisations on a GPU); ``False`` trusts them.

    Example:
        >>> graph = VQGraph(data.edge_index, data.num_nodes)
        >>> out_b = vq_conv(x[batch], graph, batch)
    """

    def __init__(self, edge_index: Tensor, num_nodes: int,
                 edge_weight: Optional[Tensor] = None, check: bool = True) -> None:
        if check:
            self._check(edge_index, num_nodes, edge_weight)
        self.edge_weight = edge_weight
        self.edge_index = edge_index.long()
        self.num_nodes = num_nodes
        self.in_degree = torch.bincount(self.edge_index[1], minlength=num_nodes)
        self.out_degree = torch.bincount(self.edge_index[0], minlength=num_nodes)
        self.local = torch.full((num_nodes,), -1, dtype=torch.long, device=edge_index.device)
        self._cache: dict[Hashable, Any] = {}
        # The last step's batch rows (vqgnn.batching.lowrank.step_rows), shared by layers.
        self.step_cache: Optional[tuple[Any, Tensor, int, Any]] = None

    @staticmethod
    def _check(edge_index: Tensor, num_nodes: int, edge_weight: Optional[Tensor]) -> None:
        """The arguments' checks (host synchronisations on a GPU: ``check=False`` skips
        them for a graph built from tensors already checked, e.g. a sampled subgraph's)."""
        if not isinstance(num_nodes, int) or num_nodes < 1:
            raise ConfigError(f"'VQGraph': 'num_nodes' must be an int >= 1, received {num_nodes!r}")
        check_edge_index(edge_index, num_nodes)
        if edge_weight is not None:
            if not isinstance(edge_weight, Tensor) or edge_weight.shape != (edge_index.size(1),):
                shape = (tuple(edge_weight.shape) if isinstance(edge_weight, Tensor)
                         else type(edge_weight).__name__)
                raise ConfigError(f"'VQGraph': 'edge_weight' must be a tensor of shape "
                                  f"({edge_index.size(1)},), received {shape}")
            if edge_weight.device != edge_index.device:
                raise ConfigError(f"'VQGraph': 'edge_weight' is on {edge_weight.device}, "
                                  f"'edge_index' on {edge_index.device}")
            if (not edge_weight.is_floating_point() or bool((edge_weight < 0).any())
                    or not bool(torch.isfinite(edge_weight).all())):
                raise ConfigError("'VQGraph': 'edge_weight' must hold finite non-negative floats, "
                                  f"received dtype {edge_weight.dtype} with minimum "
                                  f"{edge_weight.min().item() if edge_weight.numel() else None}")

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()`` once per ``key``: convolution matrices shared by the layers that
        normalise the same way (three GCN layers hold one copy, not three)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    def to(self, device: torch.device | str) -> VQGraph:
        """This graph on ``device`` (a copy; ``self`` when already there)."""
        if torch.device(device) == self.device:
            return self
        weight = None if self.edge_weight is None else self.edge_weight.to(device)
        return VQGraph(self.edge_index.to(device), self.num_nodes, weight)

    def check_batch(self, batch: Tensor, owner: str = "VQGraph", values: bool = True) -> None:
        """Raise unless ``batch`` is a non-empty 1-D integer tensor of distinct node ids in
        [0, N).

        Args:
            batch: (b,) node ids.
            owner: the name the message starts with.
            values: also check the ids' values (range, distinct): host synchronisations
                on a GPU, so the training step leaves it to an opt-in ``validate``.
        """
        if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.dtype not in (
                torch.int64, torch.int32):
            if not isinstance(batch, Tensor):
                got = type(batch).__name__
            else:
                got = f"shape {tuple(batch.shape)} and dtype {batch.dtype}"
                if batch.dtype == torch.bool:
                    got += " (a mask: pass its node ids, mask.nonzero().view(-1))"
            raise ConfigError(f"'{owner}': 'batch' must be a 1-D int64 or int32 tensor of "
                              f"node ids, received {got}")
        if batch.numel() == 0:
            raise ConfigError(f"'{owner}': 'batch' is empty")
        if not values:
            return
        lo, hi = int(batch.min()), int(batch.max())
        if lo < 0 or hi >= self.num_nodes:
            raise ConfigError(f"'{owner}': 'batch' holds node ids in [{lo}, {hi}], outside "
                              f"[0, {self.num_nodes})")
        if torch.unique(batch).numel() != batch.numel():
            raise ConfigError(f"'{owner}': 'batch' holds duplicated node ids "
                              f"({batch.numel() - torch.unique(batch).numel()} repeats)")

    def __repr__(self) -> str:
        weighted = "" if self.edge_weight is None else ", weighted"
        return f"VQGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges}{weighted})"


def sorted_csr(row: Tensor, col: Tensor, value: Tensor, num_rows: int,
               num_cols: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """CSR arrays ``(rowptr, col, value)`` of a coordinate list, sorted by (row, col).

    Args:
        row: (E,) row ids.
        col: (E,) column ids.
        value: (E,) values.
        num_rows: number of rows.
        num_cols: number of columns (default ``num_rows``).

    Returns:
        ``rowptr`` (num_rows + 1,), ``col`` (E,), ``value`` (E,).
    """
    num_cols = num_rows if num_cols is None else num_cols
    perm = torch.argsort(row * num_cols + col)
    counts = torch.bincount(row, minlength=num_rows)
    rowptr = torch.zeros(num_rows + 1, dtype=torch.long, device=row.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr, col[perm], value[perm]
