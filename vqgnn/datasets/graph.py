"""Graph clean-up shared by every loader: one edge format, one ``Data`` layout."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch_geometric.data import Data

from vqgnn.errors import ConfigError

METRICS = ("accuracy", "rocauc")


def coalesce_undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    r"""Removes self-loops, adds every reverse edge, sorts and removes duplicates.

    Edges are encoded as :math:`k = \mathrm{row} \cdot N + \mathrm{col}`, sorted once and
    deduplicated with :func:`torch.unique_consecutive`: :math:`O(E \log E)` time and
    :math:`O(E)` memory, no Python loop.

    Args:
        edge_index: Integer tensor of shape ``(2, E)`` with entries in ``[0, num_nodes)``.
        num_nodes: Number of nodes ``N``.

    Returns:
        ``(2, E')`` int64 tensor, sorted by row then column, holding both directions of
        every edge, no duplicates and no self-loops.

    Example:
        >>> coalesce_undirected(torch.tensor([[0, 1, 1], [1, 0, 1]]), 2)
        tensor([[0, 1],
                [1, 0]])
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(
            f"coalesce_undirected: 'edge_index' must have shape (2, E); "
            f"received shape {tuple(edge_index.shape)}"
        )
    row, col = edge_index.to(torch.long)
    keep = row != col
    row, col = row[keep], col[keep]
    key = torch.cat([row * num_nodes + col, col * num_nodes + row])  # (2E,)
    key = torch.unique_consecutive(torch.sort(key).values)
    row = torch.div(key, num_nodes, rounding_mode="floor")
    return torch.stack([row, key - row * num_nodes], dim=0)


def make_data(
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    train_mask: Tensor,
    val_mask: Tensor,
    test_mask: Tensor,
    *,
    name: str,
    metric: str,
    num_classes: int,
    split: int,
    ogb_name: Optional[str] = None,
) -> Data:
    """Assembles the ``Data`` object that :func:`load_dataset` returns.

    Args:
        x: Node features ``(N, F)``; cast to float32.
        edge_index: Already cleaned edges ``(2, E)`` (see :func:`coalesce_undirected`).
        y: Labels ``(N,)`` int64 (``-1`` = unlabeled) or ``(N, T)`` float for multi-label.
        train_mask: Boolean ``(N,)``.
        val_mask: Boolean ``(N,)``.
        test_mask: Boolean ``(N,)``.
        name: Canonical dataset name.
        metric: ``"accuracy"`` or ``"rocauc"``.
        num_classes: Number of classes (number of tasks for multi-label data).
        split: Index of the split the masks come from.
        ogb_name: The OGB name for datasets scored with :class:`ogb.nodeproppred.Evaluator`;
            ``None`` leaves the attribute unset (PyG drops ``None`` attributes).

    Returns:
        A :class:`~torch_geometric.data.Data` with ``x``, ``edge_index``, ``y``, the three
        masks and the metadata attributes ``name``, ``metric``, ``num_classes``, ``split``
        (and ``ogb_name`` for OGB data).
    """
    if metric not in METRICS:
        raise ConfigError(f"make_data: 'metric' must be one of {METRICS}; received {metric!r}")
    y = y.to(torch.float32) if y.dim() == 2 else y.to(torch.long)
    data = Data(
        x=x.to(torch.float32),
        edge_index=edge_index.to(torch.long),
        y=y,
        train_mask=train_mask.to(torch.bool),
        val_mask=val_mask.to(torch.bool),
        test_mask=test_mask.to(torch.bool),
    )
    data.name = name
    data.metric = metric
    data.num_classes = int(num_classes)
    data.split = int(split)
    if ogb_name is not None:
        data.ogb_name = ogb_name
    return data
