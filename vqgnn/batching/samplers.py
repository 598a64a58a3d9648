"""Mini-batch samplers: random node batches and METIS-cluster batches.

Each epoch's batches partition the given nodes (every node in exactly one batch).
Samplers draw from their own ``torch.Generator``, whose state travels with
:meth:`state_dict`, so that a resumed run draws the same batches.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from vqgnn.errors import ConfigError


def stream_seed(seed: int, stream: str) -> int:
    """A seed for the named random stream, independent of other streams of ``seed``.

    Without it, a sampler seeded like the split that chose the training nodes would
    replay the split's permutation (all training nodes first).
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class NodeBatchSampler:
    """Random batches of ``batch_size`` nodes, a fresh permutation every epoch.

    Args:
        nodes: (n,) the node ids to partition.
        batch_size: nodes per batch (the last one may be smaller; a last batch of one
            node joins the previous one).
        seed: seed of the sampler's generator.

    Example:
        >>> for batch in NodeBatchSampler(train_idx, 1024, seed=0):
        ...     ...
    """

    def __init__(self, nodes: Tensor, batch_size: int, seed: int = 0) -> None:
        name = type(self).__name__
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"'{name}': 'batch_size' must be an int >= 1, "
                              f"received {batch_size!r}")
        if nodes.dim() != 1 or nodes.numel() == 0:
            raise ConfigError(f"'{name}': 'nodes' must be a non-empty 1-D tensor, received shape "
                              f"{tuple(nodes.shape)}")
        self.nodes = nodes.long()
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(stream_seed(seed, "batches"))

    def __len__(self) -> int:
        n = self.nodes.numel()
        full, rest = divmod(n, self.batch_size)
        joins = rest == 1 and full > 0 and self.batch_size > 1
        return full + (1 if rest and not joins else 0)

    def __iter__(self) -> Iterator[Tensor]:
        perm = torch.randperm(self.nodes.numel(), generator=self.generator)
        batches = list(self.nodes[perm.to(self.nodes.device)].split(self.batch_size))
        if self.batch_size > 1 and len(batches) > 1 and batches[-1].numel() == 1:
            # A one-node batch breaks batch normalisation: the previous batch takes it.
            batches[-2:] = [torch.cat(batches[-2:])]
        for batch in batches:
            # A copy: a view would keep the epoch's (n,) permutation alive with each batch.
            yield batch.clone()

    @property
    def max_batch_size(self) -> int:
        """An upper bound on the nodes of any batch (a joined last node included)."""
        return self.batch_size + 1

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nodes={self.nodes.numel()}, batch_size={self.batch_size})"


def metis_partition(edge_index: Tensor, num_nodes: int, num_parts: int, seed: int = 0,
                    cache_dir: Optional[Union[str, os.PathLike]] = None) -> Tensor:
    """METIS partition of an undirected graph into ``num_parts`` parts (via pymetis).

    Args:
        edge_index: (2, E) edges; METIS partitions the undirected graph they make (a
            directed edge counts in both directions; self-loops and repeats are dropped).
        num_nodes: N.
        num_parts: parts (>= 1).
        seed: METIS's seed.
        cache_dir: folder where partitions are cached, keyed by the graph and arguments.

    Returns:
        (N,) int64 part of every node.
    """
    if not isinstance(num_parts, int) or num_parts < 1:
        raise ConfigError(f"metis_partition: 'num_parts' must be an int >= 1, "
                          f"received {num_parts!r}")
    if num_parts == 1:
        return torch.zeros(num_nodes, dtype=torch.long)
    from vqgnn.datasets.graph import coalesce_undirected  # (vqgnn.datasets imports this)

    # METIS reads an undirected graph: each edge listed from both ends, once, no
    # self-loops. A directed or repeated edge list made it crash (a segmentation fault,
    # the whole process lost). A graph from load_dataset is already in that form.
    src, dst = coalesce_undirected(edge_index.cpu().long(), num_nodes)  # sorted by row, col
    cache: Optional[Path] = None
    if cache_dir is not None:
        digest = hashlib.sha1()
        digest.update(np.ascontiguousarray(src.numpy()).tobytes())
        digest.update(np.ascontiguousarray(dst.numpy()).tobytes())
        digest.update(f"{num_nodes}-{num_parts}-{seed}".encode())
        cache = Path(cache_dir) / f"metis-{digest.hexdigest()[:16]}.pt"
        if cache.exists():
            return torch.load(cache)
    import pymetis

    counts = torch.bincount(src, minlength=num_nodes)
    xadj = torch.zeros(num_nodes + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=xadj[1:])
    adjacency = pymetis.CSRAdjacency(adj_starts=xadj.numpy(), adjacent=dst.numpy())
    _, parts = pymetis.part_graph(num_parts, adjacency, options=pymetis.Options(seed=seed))
    result = torch.as_tensor(np.asarray(parts), dtype=torch.long)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of this process's own: data-parallel ranks partition the same
        # graph at once and would otherwise rename one another's file away.
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(result, tmp)
        tmp.replace(cache)  # atomic: never a half-written cache file
    return result


def part_batches(parts: Tensor) -> list[Tensor]:
    """The node ids of each non-empty part of ``parts`` ((N,) part of every node), one
    tensor per part, by one stable sort."""
    if parts.dim() != 1 or parts.is_floating_point() or parts.dtype == torch.bool:
        raise ConfigError(f"part_batches: 'parts' must be a 1-D integer tensor, received "
                          f"shape {tuple(parts.shape)} and dtype {parts.dtype}")
    order = torch.argsort(parts, stable=True)
    return [batch for batch in order.split(torch.bincount(parts).tolist()) if batch.numel()]


class ClusterBatchSampler(NodeBatchSampler):
    """Batches of whole METIS clusters: each epoch shuffles the parts and groups them.

    Parts are restricted to ``nodes``; consecutive shuffled parts are joined until a
    batch holds about ``batch_size`` nodes.

    Args:
        nodes: (n,) node ids to partition.
        batch_size: target nodes per batch.
        parts: (N,) METIS part of every node of the graph (:func:`metis_partition`).
        seed: seed of the sampler's generator.
    """

    def __init__(self, nodes: Tensor, batch_size: int, parts: Tensor, seed: int = 0) -> None:
        super().__init__(nodes, batch_size, seed)
        node_parts = parts.to(self.nodes.device)[self.nodes]
        order = torch.argsort(node_parts, stable=True)
        self.sorted_nodes = self.nodes[order]
        _, counts = torch.unique_consecutive(node_parts[order], return_counts=True)
        self.part_sizes = counts

    def __iter__(self) -> Iterator[Tensor]:
        groups = list(self.sorted_nodes.split(self.part_sizes.tolist()))
        perm = torch.randperm(len(groups), generator=self.generator).tolist()
        batch: list[Tensor] = []
        size = 0
        for i in perm:
            batch.append(groups[i])
            size += groups[i].numel()
            if size >= self.batch_size:
                yield torch.cat(batch)  # torch.cat copies: the batch owns its memory
                batch, size = [], 0
        if batch:
            yield torch.cat(batch)

    @property
    def max_batch_size(self) -> int:
        """An upper bound on the nodes of any batch: parts join until ``batch_size``."""
        return self.batch_size - 1 + int(self.part_sizes.max())

    def __len__(self) -> int:  # an upper bound on the batches of an epoch
        return max(1, min(self.part_sizes.numel(),
                          int(self.nodes.numel() // self.batch_size) + 1))
