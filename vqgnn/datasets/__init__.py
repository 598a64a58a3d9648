"""Datasets: OGB, PyG by name, user files and synthetic graphs, in one cleaned format.

Example:
    >>> from vqgnn.datasets import load_dataset, score
    >>> data = load_dataset("synthetic:n=2000,deg=10")
    >>> acc = score(data, logits, data.test_mask)
"""
from vqgnn.datasets.load import available_datasets, load_dataset
from vqgnn.datasets.metrics import score
from vqgnn.datasets.splits import Split, stratified_split
from vqgnn.datasets.synthetic import SyntheticConfig, parse_synthetic, synthetic_graph

__all__ = [
    "load_dataset",
    "score",
    "available_datasets",
    "synthetic_graph",
    "parse_synthetic",
    "SyntheticConfig",
    "stratified_split",
    "Split",
]
