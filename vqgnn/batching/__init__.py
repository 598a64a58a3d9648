"""The full graph prepared for VQ layers, and per-batch low-rank convolution matrices."""
from vqgnn.batching.graph import VQGraph, check_edge_index
from vqgnn.batching.lowrank import (
    BackwardEdges,
    BatchEdges,
    SparseOperator,
    backward_edges,
    batch_edges,
    build_operator,
    lowrank_backward,
)

__all__ = [
    "VQGraph", "check_edge_index", "BatchEdges", "BackwardEdges", "SparseOperator",
    "backward_edges", "batch_edges", "build_operator", "lowrank_backward",
]
