"""Sampling baselines: GraphSAGE neighbour sampling, Cluster-GCN and GraphSAINT subgraphs,
trained by :class:`~vqgnn.train.Trainer` (``method='sage'``, ``'cluster'``, ``'saint'``)."""
from vqgnn.baselines.loaders import (
    ClusterBatches,
    NeighborBatches,
    SaintBatches,
    SaintNorm,
    SubgraphBatch,
    saint_normalization,
    saint_roots,
)

__all__ = ["ClusterBatches", "NeighborBatches", "SaintBatches", "SaintNorm", "SubgraphBatch",
           "saint_normalization", "saint_roots"]
