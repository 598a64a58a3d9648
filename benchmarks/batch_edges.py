"""How many of a graph's edges stay inside VQ inference's METIS batches.

VQ inference computes a batch exactly within itself and sends every message from outside
the batch through the codebooks, so the fraction of edges inside the batches says how much
of the graph its error can touch. For each ``dataset:batch_size`` pair, the graph is split
into METIS parts of about that many nodes (as :class:`~vqgnn.train.VQMethod` does for VQ
inference) and the fraction of directed edges whose endpoints share a part is printed.

Usage:
    python benchmarks/batch_edges.py \\
        synthetic:n=100000,deg=20,signal=0.3:2048 synthetic:n=100000,deg=20,signal=0.3:8192 \\
        synthetic:n=1000000,deg=10,signal=0.3:32768
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqgnn.batching.samplers import metis_partition  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402


def edges_inside(edge_index: Tensor, part: Tensor) -> float:
    """Fraction of the directed edges whose endpoints share a part (``part``: (N,) label)."""
    src, dst = edge_index
    return float((part[src] == part[dst]).float().mean())


def batch_labels(batches: Sequence[Tensor], num_nodes: int) -> Tensor:
    """(N,) index of the batch holding each node, for batches that partition the nodes."""
    part = torch.full((num_nodes,), -1, dtype=torch.long)
    for i, batch in enumerate(batches):
        part[batch.cpu()] = i
    return part


def inside_fraction(name: str, batch_size: int, root: Optional[str] = None,
                    seed: int = 0) -> float:
    """Fraction of ``name``'s directed edges inside METIS parts of ``batch_size`` nodes."""
    data = load_dataset(name, root=root, seed=seed)
    n = data.num_nodes
    return edges_inside(data.edge_index,
                        metis_partition(data.edge_index, n, -(-n // batch_size), seed=seed))


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("pairs", nargs="+", help="dataset:batch_size")
    parser.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    print("| dataset | batch size | edges inside a batch |\n|---|---:|---:|")
    for pair in args.pairs:
        name, _, size = pair.rpartition(":")
        fraction = inside_fraction(name, int(size), args.root)
        print(f"| {name} | {int(size):,} | {100 * fraction:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
