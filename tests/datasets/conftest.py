"""Shared helpers: the real data folder, edge invariants, OGB-format writers."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

# The real datasets' folder: $VQGNN_SHARED_DATA, else a "shared/data" folder beside the
# repository (where this project's CI puts it); the tests that need it skip without it.
SHARED_DATA = Path(
    os.environ.get("VQGNN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


def copy_shared(folder: str, destination: Path) -> Path:
    """Copies ``SHARED_DATA/folder`` to ``destination/folder`` (writable) and returns it."""
    source = SHARED_DATA / folder
    if not source.is_dir():
        pytest.skip(f"the real datasets are not at {source} (set VQGNN_SHARED_DATA)")
    target = destination / folder
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def assert_clean_edges(edge_index: Tensor, num_nodes: int) -> None:
    """Undirected, strictly sorted (so coalesced), no self-loops, int64, in range."""
    assert edge_index.dtype == torch.int64
    assert edge_index.dim() == 2 and edge_index.size(0) == 2
    row, col = edge_index
    assert int(edge_index.min()) >= 0 and int(edge_index.max()) < num_nodes
    assert not bool((row == col).any()), "self-loops"
    key = row * num_nodes + col
    assert bool((key[1:] > key[:-1]).all()), "not sorted or duplicates"
    reverse = torch.sort(col * num_nodes + row).values
    assert torch.equal(reverse, key), "not undirected"


def reference_edges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Undirected, coalesced, loop-free edges computed with PyG's own utilities."""
    from torch_geometric.utils import remove_self_loops, to_undirected

    edge_index, _ = remove_self_loops(edge_index)
    return to_undirected(edge_index, num_nodes=num_nodes)


def _write_csv(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(array).to_csv(path, header=False, index=False, compression="gzip")


def write_ogb_arxiv(root: Path, num_nodes: int = 50, num_edges: int = 120,
                    release: bool = True, seed: int = 0) -> Dict[str, np.ndarray]:
    """Writes a tiny ``ogbn-arxiv`` in OGB's raw format under ``root/ogbn_arxiv``.

    Files as ``ogb.io.read_csv_graph_raw`` and ``PygNodePropPredDataset`` read them
    (``master.csv``: no inverse edges, node features, ``node_year``, split ``time``).
    """
    rng = np.random.default_rng(seed)
    folder = root / "ogbn_arxiv"
    edges = rng.integers(0, num_nodes, size=(num_edges, 2))
    edges[:3] = [[0, 0], [1, 2], [1, 2]]  # a self-loop and a duplicate
    feats = rng.normal(size=(num_nodes, 128)).astype(np.float32)
    labels = rng.integers(0, 40, size=(num_nodes, 1))
    order = rng.permutation(num_nodes)
    split = {"train": order[:30], "valid": order[30:40], "test": order[40:]}
    raw = folder / "raw"
    _write_csv(edges, raw / "edge.csv.gz")
    _write_csv(feats, raw / "node-feat.csv.gz")
    _write_csv(labels, raw / "node-label.csv.gz")
    _write_csv(rng.integers(1990, 2020, size=(num_nodes, 1)), raw / "node_year.csv.gz")
    _write_csv(np.array([[num_nodes]]), raw / "num-node-list.csv.gz")
    _write_csv(np.array([[num_edges]]), raw / "num-edge-list.csv.gz")
    for part, index in split.items():
        _write_csv(index[:, None], folder / "split" / "time" / f"{part}.csv.gz")
    if release:
        (folder / "RELEASE_v1.txt").write_text("")
    return {"edges": edges, "x": feats, "y": labels[:, 0], **split}


def write_ogb_products(root: Path, num_nodes: int = 80, num_edges: int = 200,
                       seed: int = 0) -> Dict[str, np.ndarray]:
    """Writes a tiny ``ogbn-products`` (100 features, 47 classes, split ``sales_ranking``;
    ``master.csv`` adds the inverse edges) in OGB's raw format under ``root/ogbn_products``."""
    rng = np.random.default_rng(seed)
    folder = root / "ogbn_products"
    edges = rng.integers(0, num_nodes, size=(num_edges, 2))
    feats = rng.normal(size=(num_nodes, 100)).astype(np.float32)
    labels = rng.integers(0, 47, size=(num_nodes, 1))
    order = rng.permutation(num_nodes)
    split = {"train": order[: num_nodes // 2], "valid": order[num_nodes // 2: 3 * num_nodes // 4],
             "test": order[3 * num_nodes // 4:]}
    raw = folder / "raw"
    _write_csv(edges, raw / "edge.csv.gz")
    _write_csv(feats, raw / "node-feat.csv.gz")
    _write_csv(labels, raw / "node-label.csv.gz")
    _write_csv(np.array([[num_nodes]]), raw / "num-node-list.csv.gz")
    _write_csv(np.array([[num_edges]]), raw / "num-edge-list.csv.gz")
    for part, index in split.items():
        _write_csv(index[:, None], folder / "split" / "sales_ranking" / f"{part}.csv.gz")
    (folder / "RELEASE_v1.txt").write_text("")
    return {"edges": edges, "x": feats, "y": labels[:, 0], **split}


def write_ogb_proteins(root: Path, num_nodes: int = 30, num_edges: int = 60,
                       seed: int = 0) -> Dict[str, np.ndarray]:
    """Writes a tiny ``ogbn-proteins`` (edge features, 112 binary tasks) in OGB's format."""
    rng = np.random.default_rng(seed)
    folder = root / "ogbn_proteins"
    edges = rng.integers(0, num_nodes, size=(num_edges, 2))
    edge_feat = rng.random(size=(num_edges, 8)).astype(np.float32)
    labels = rng.integers(0, 2, size=(num_nodes, 112))
    order = rng.permutation(num_nodes)
    split = {"train": order[:14], "valid": order[14:20], "test": order[20:]}
    raw = folder / "raw"
    _write_csv(edges, raw / "edge.csv.gz")
    _write_csv(edge_feat, raw / "edge-feat.csv.gz")
    _write_csv(labels, raw / "node-label.csv.gz")
    _write_csv(rng.integers(0, 8, size=(num_nodes, 1)), raw / "node_species.csv.gz")
    _write_csv(np.array([[num_nodes]]), raw / "num-node-list.csv.gz")
    _write_csv(np.array([[num_edges]]), raw / "num-edge-list.csv.gz")
    for part, index in split.items():
        _write_csv(index[:, None], folder / "split" / "species" / f"{part}.csv.gz")
    (folder / "RELEASE_v1.txt").write_text("")
    return {"edges": edges, "edge_feat": edge_feat, "y": labels, **split}


# Fixtures hand the helpers to the test modules (no import of conftest needed).
@pytest.fixture(scope="session")
def check_edges():
    return assert_clean_edges


@pytest.fixture(scope="session")
def ref_edges():
    return reference_edges


@pytest.fixture(scope="session")
def ogb_arxiv():
    return write_ogb_arxiv


@pytest.fixture(scope="session")
def ogb_proteins():
    return write_ogb_proteins


@pytest.fixture(scope="session")
def shared():
    return copy_shared
