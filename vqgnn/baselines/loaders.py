"""Subgraph mini-batches of the sampling baselines, from PyG's own loaders.

* :class:`NeighborBatches`: GraphSAGE neighbour sampling (``NeighborLoader``);
* :class:`ClusterBatches`: Cluster-GCN (``ClusterData``/``ClusterLoader``), METIS parts
  from :func:`~vqgnn.batching.metis_partition` (pymetis, cached on disk) where
  torch-sparse was built without METIS;
* :class:`SaintBatches`: GraphSAINT random-walk subgraphs (``GraphSAINTRandomWalkSampler``)
  with GraphSAINT's loss and aggregator normalisation (:func:`saint_normalization`).

Each yields :class:`SubgraphBatch` es: a subgraph in local ids, the global id of each of
its nodes, the local nodes the loss is taken on and their loss weights. The weights make
``sum(weight * loss)`` an estimate of the mean training loss, the scale of full-graph
training's loss. The model runs exactly on the subgraph, with PyG's convolutions
(``model(x[n_id], edge_index, edge_weight=...)``, see
:class:`~vqgnn.train.methods.SubgraphMethod`).

The loaders draw from torch's global generator (PyG's samplers do), so
:func:`~vqgnn.train.seed_everything` makes them reproducible and a checkpoint's RNG state
resumes them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import (
    ClusterData,
    ClusterLoader,
    GraphSAINTRandomWalkSampler,
    NeighborLoader,
)
from tqdm.auto import tqdm

from vqgnn.batching.samplers import metis_partition
from vqgnn.errors import ConfigError


@dataclass
class SubgraphBatch:
    """One training step's subgraph.

    Attributes:
        n_id: (n,) global id of every local node.
        edge_index: (2, E_b) edges in local ids (``j -> i``).
        loss_index: (m,) local ids of the nodes the loss is taken on (training nodes).
        loss_weight: (m,) weight of each of those nodes' loss.
        edge_weight: (E_b,) weights of the edges (GraphSAINT's aggregator
            normalisation), or None.
    """

    n_id: Tensor
    edge_index: Tensor
    loss_index: Tensor
    loss_weight: Tensor
    edge_weight: Optional[Tensor] = None

    @property
    def num_nodes(self) -> int:
        return self.n_id.numel()


class _GlobalGeneratorBatches:
    """Loaders that draw from torch's global generator: no state of their own (the
    trainer's checkpoint holds the global generator's)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ConfigError(f"'{type(self).__name__}.load_state_dict': expected an empty "
                              f"state, received keys {sorted(state)}")


def check_fanouts(owner: str, num_neighbors: Sequence[int]) -> list[int]:
    """The fan-outs as a list; ``ValueError`` naming ``owner`` unless they are ints >= 1
    (or -1: all neighbours)."""
    fanouts = list(num_neighbors)
    if not fanouts or any(not isinstance(k, int) or (k < 1 and k != -1) for k in fanouts):
        raise ConfigError(f"'{owner}': 'num_neighbors' must be a non-empty list of ints >= 1 "
                          f"(or -1 for all), received {num_neighbors!r}")
    return fanouts


def fanouts_for_layers(num_neighbors: Sequence[int], num_layers: int) -> list[int]:
    """The first ``num_layers`` fan-outs; ``ValueError`` when there are fewer."""
    if len(num_neighbors) < num_layers:
        raise ConfigError(f"'TrainConfig': 'num_neighbors' needs a fan-out per layer "
                          f"({num_layers}), received {tuple(num_neighbors)}")
    return list(num_neighbors)[:num_layers]


def _training_nodes(train_mask: Tensor, n_id: Tensor) -> Tensor:
    """Local ids of the training nodes among ``n_id``."""
    return train_mask[n_id].nonzero().view(-1)


def _structure(edge_index: Tensor, num_nodes: int) -> Data:
    """The graph without features: loaders carry ids, the trainer gathers features."""
    return Data(edge_index=edge_index.cpu(), num_nodes=num_nodes,
                n_id=torch.arange(num_nodes))


class NeighborBatches(_GlobalGeneratorBatches):
    """GraphSAGE neighbour sampling: ``batch_size`` training nodes per step with
    ``num_neighbors[l]`` sampled neighbours per node at hop ``l + 1``.

    The loss is the mean over the batch's seed nodes (the first ``batch_size`` local nodes).

    Args:
        edge_index: (2, E) edges of the graph.
        num_nodes: N.
        train_idx: (n,) training nodes.
        num_neighbors: fan-outs, one per layer (``-1``: all neighbours).
        batch_size: seed nodes per step.

    Example:
        >>> for sub in NeighborBatches(edge_index, n, train_idx, [15, 10], 1024): ...
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, train_idx: Tensor,
                 num_neighbors: Sequence[int], batch_size: int) -> None:
        name = type(self).__name__
        fanouts = check_fanouts(name, num_neighbors)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"'{name}': 'batch_size' must be an int >= 1, "
                              f"received {batch_size!r}")
        if train_idx.numel() == 0:
            raise ConfigError(f"'{name}': 'train_idx' is empty (no training nodes to sample)")
        self.num_neighbors = fanouts
        self.batch_size = batch_size
        with warnings.catch_warnings():
            # Without pyg-lib (none for this platform) PyG samples with torch-sparse and
            # warns that this path is deprecated; it is the path there is.
            warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation")
            self.loader = NeighborLoader(_structure(edge_index, num_nodes),
                                         num_neighbors=fanouts, batch_size=batch_size,
                                         input_nodes=train_idx.cpu(), shuffle=True)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[SubgraphBatch]:
        for batch in self.loader:
            seeds = batch.batch_size
            yield SubgraphBatch(batch.n_id, batch.edge_index, torch.arange(seeds),
                                torch.full((seeds,), 1.0 / seeds))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_neighbors={self.num_neighbors}, "
                f"batch_size={self.batch_size})")


class _PymetisClusterData(ClusterData):
    """PyG's ``ClusterData`` with METIS parts from pymetis (torch-sparse may lack METIS)."""

    def __init__(self, data: Data, num_parts: int, seed: int,
                 cache_dir: Optional[str]) -> None:
        self._seed, self._cache_dir = seed, cache_dir
        super().__init__(data, num_parts, log=False)

    def _metis(self, edge_index: Tensor, num_nodes: int) -> Tensor:
        return metis_partition(edge_index, num_nodes, self.num_parts, seed=self._seed,
                               cache_dir=self._cache_dir)


class ClusterBatches(_GlobalGeneratorBatches):
    """Cluster-GCN: the graph cut into ``num_parts`` METIS parts; each step takes
    ``parts_per_batch`` random parts and the edges among them.

    The loss is on the training nodes of the step's parts (the parts partition the
    nodes every epoch), divided by the training nodes that as many parts hold on
    average (the last step of an epoch may hold fewer parts).

    Args:
        edge_index: (2, E) edges.
        num_nodes: N.
        train_mask: (N,) training nodes.
        num_parts: METIS parts.
        parts_per_batch: parts per step.
        seed: seed of the partition.
        cache_dir: folder of the partition cache (None: no cache).
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, train_mask: Tensor, num_parts: int,
                 parts_per_batch: int, seed: int = 0, cache_dir: Optional[str] = None) -> None:
        name = type(self).__name__
        if not isinstance(num_parts, int) or not 1 <= num_parts <= num_nodes:
            raise ConfigError(f"'{name}': 'num_parts' must be an int in [1, {num_nodes}], "
                              f"received {num_parts!r}")
        if not isinstance(parts_per_batch, int) or not 1 <= parts_per_batch <= num_parts:
            raise ConfigError(f"'{name}': 'parts_per_batch' must be an int in [1, num_parts="
                              f"{num_parts}], received {parts_per_batch!r}")
        self.num_parts, self.parts_per_batch = num_parts, parts_per_batch
        self.train_mask = train_mask.cpu()
        self.cluster_data = _PymetisClusterData(_structure(edge_index, num_nodes), num_parts,
                                                seed, cache_dir)
        self.loader = ClusterLoader(self.cluster_data, batch_size=parts_per_batch, shuffle=True)
        partition = self.cluster_data.partition
        sizes = partition.partptr.diff()
        self.part_of = torch.empty(num_nodes, dtype=torch.long)
        self.part_of[partition.node_perm] = torch.repeat_interleave(
            torch.arange(sizes.numel()), sizes)
        # METIS may leave parts empty: the mean part is over the non-empty ones.
        num_train = max(1, int(self.train_mask.sum()))
        self.train_per_part = num_train / max(1, int((sizes > 0).sum()))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[SubgraphBatch]:
        for batch in self.loader:
            loss_index = _training_nodes(self.train_mask, batch.n_id)
            parts = torch.unique(self.part_of[batch.n_id]).numel()
            weight = 1.0 / (parts * self.train_per_part)
            yield SubgraphBatch(batch.n_id, batch.edge_index, loss_index,
                                torch.full((loss_index.numel(),), weight))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_parts={self.num_parts}, "
                f"parts_per_batch={self.parts_per_batch})")


class _RandomWalkSampler(GraphSAINTRandomWalkSampler):
    """PyG's random-walk sampler; each sample keeps its node and edge ids only."""

    def _collate(self, data_list: list) -> Data:
        node_idx, adj = data_list[0]
        row, col, edge_idx = adj.coo()
        return Data(edge_index=torch.stack([row, col]), n_id=node_idx, e_id=edge_idx,
                    num_nodes=node_idx.numel())


@dataclass
class SaintNorm:
    """GraphSAINT's normalisation, estimated from pre-sampled subgraphs.

    Attributes:
        node_norm: (N,) loss weight of each node, ``num_samples / C_v``: its loss counts
            as often as if every node were in every subgraph (``C_v``: subgraphs holding v).
        edge_norm: (E,) aggregator weight of each edge ``j -> i``, ``C_i / C_{j,i}``: the
            inverse probability that the edge is in a subgraph that holds its target, so
            a target's weighted in-degree estimates its full in-degree.
        node_count: (N,) ``C_v``.
        edge_count: (E,) ``C_{j,i}``.
        num_samples: subgraphs drawn.
    """

    node_norm: Tensor
    edge_norm: Tensor
    node_count: Tensor
    edge_count: Tensor
    num_samples: int


def saint_normalization(sampler: GraphSAINTRandomWalkSampler, edge_index: Tensor,
                        num_nodes: int, coverage: float, progress: bool = False) -> SaintNorm:
    """Draw subgraphs until ``coverage * N`` nodes were sampled; count nodes and edges.

    Nodes and edges never sampled get the count 0.1 (as PyG does): a large weight, capped
    at 10^4 for edges, should a subgraph hold them later. Unlike PyG's sampler (its
    ``sample_coverage``), which divides by the count of each edge's *source*
    (``edge_index[0]``), the edge weight here uses its *target*, the node that
    aggregates: GraphSAINT's :math:`\\alpha_{u,v} = C_{u,v} / C_v`.

    Args:
        sampler: the subgraph sampler (yielding ``n_id`` and ``e_id``).
        edge_index: (2, E) edges of the graph.
        num_nodes: N.
        coverage: average samples per node before stopping (> 0).
        progress: a tqdm bar.
    """
    if not 0 < coverage < math.inf:
        raise ConfigError(f"'saint_normalization': 'coverage' must be > 0 and finite, "
                          f"received {coverage!r}")
    node_count = torch.zeros(num_nodes)
    edge_count = torch.zeros(edge_index.size(1))
    total, num_samples = 0, 0
    goal = coverage * num_nodes
    bar = tqdm(total=int(goal), desc="GraphSAINT normalisation", disable=not progress,
               leave=False)
    while total < goal:
        for sub in sampler:
            node_count[sub.n_id] += 1
            edge_count[sub.e_id] += 1
            total += sub.n_id.numel()
            num_samples += 1
            bar.update(sub.n_id.numel())
    bar.close()
    seen_nodes = node_count.clamp_min(0.1)
    target_count = seen_nodes[edge_index[1].cpu()]
    edge_norm = (target_count / edge_count.clamp_min(0.1)).clamp_max(1e4)
    return SaintNorm(num_samples / seen_nodes, edge_norm, node_count, edge_count, num_samples)


class SaintBatches(_GlobalGeneratorBatches):
    """GraphSAINT random-walk subgraphs: ``roots`` walks of ``walk_length`` steps each,
    the subgraph induced by the nodes they visit.

    The loss of each training node in the subgraph is weighted by ``node_norm`` divided
    by the number of training nodes (its expectation is then the mean training loss);
    edges carry ``edge_norm`` (:func:`saint_normalization`) as weights.

    Args:
        edge_index: (2, E) edges.
        num_nodes: N.
        train_mask: (N,) training nodes.
        roots: walks per subgraph.
        walk_length: steps per walk.
        num_steps: subgraphs per epoch.
        coverage: pre-sampling for the normalisation (samples per node).
        progress: a bar over the pre-sampling.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, train_mask: Tensor, roots: int,
                 walk_length: int, num_steps: int, coverage: float = 50.0,
                 progress: bool = False) -> None:
        name = type(self).__name__
        for arg, value in (("roots", roots), ("walk_length", walk_length),
                           ("num_steps", num_steps)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"'{name}': '{arg}' must be an int >= 1, received {value!r}")
        self.roots, self.walk_length, self.num_steps = roots, walk_length, num_steps
        self.train_mask = train_mask.cpu()
        self.sampler = _RandomWalkSampler(_structure(edge_index, num_nodes), batch_size=roots,
                                          walk_length=walk_length, num_steps=num_steps,
                                          sample_coverage=0, log=False)
        self.norm = saint_normalization(self.sampler, edge_index, num_nodes, coverage, progress)
        self.num_train = max(1, int(self.train_mask.sum()))

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[SubgraphBatch]:
        for sub in self.sampler:
            loss_index = _training_nodes(self.train_mask, sub.n_id)
            weight = self.norm.node_norm[sub.n_id[loss_index]] / self.num_train
            yield SubgraphBatch(sub.n_id, sub.edge_index, loss_index, weight,
                                self.norm.edge_norm[sub.e_id])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(roots={self.roots}, walk_length={self.walk_length}, "
                f"num_steps={self.num_steps})")


def saint_roots(batch_size: int, walk_length: int) -> int:
    """Walks per subgraph so that a subgraph holds about ``batch_size`` nodes at most."""
    for arg, value in (("batch_size", batch_size), ("walk_length", walk_length)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"'saint_roots': '{arg}' must be an int >= 1, received {value!r}")
    return max(1, math.ceil(batch_size / (walk_length + 1)))
