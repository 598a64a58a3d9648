"""VQ-GNN and the sampling baselines on ogbn-arxiv or ogbn-products, OGB-example settings.

A thin entry point over ``grid.py``'s ``ogbn-arxiv`` / ``ogbn-products`` presets:
3 layers, 256 hidden channels, dropout 0.5 (batch norm and 500 epochs for arxiv; lr 0.001
and 20 epochs for products, as OGB's examples), records in
``benchmarks/results/<dataset>.jsonl``, the table printed with the OGB leaderboard's
numbers beside it (arxiv: full-batch GCN 71.74 ± 0.29; products: NeighborSampling SAGE
78.70 ± 0.36, ClusterGCN 78.97 ± 0.33, GraphSAINT 79.08 ± 0.24).

``ogb`` downloads the dataset into ``--root`` on first use (arxiv about 80 MB, products
about 1.4 GB); offline, ``--root`` must already hold it in OGB's format.

Usage:
    python benchmarks/ogb.py --dataset ogbn-arxiv --root data/ogb
    python benchmarks/ogb.py --dataset ogbn-products --root data/ogb --device cuda
    python benchmarks/ogb.py --dataset ogbn-arxiv --root data/ogb --methods vq,full --runs 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid  # noqa: E402


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Other options (--methods, --convs, --runs, --epochs, --device, --out, "
               "--table-only, --verbose) are grid.py's.")
    parser.add_argument("--dataset", default="ogbn-arxiv",
                        choices=["ogbn-arxiv", "ogbn-products"])
    parser.add_argument("--root", default=None,
                        help="folder of the OGB datasets (default: $VQGNN_DATA/ogb or "
                             "~/.cache/vqgnn/data/ogb)")
    args, rest = parser.parse_known_args(argv)
    forwarded = ["--preset", args.dataset, *rest]
    if args.root is not None:
        forwarded += ["--ogb-root", args.root]
    grid.main(forwarded)


if __name__ == "__main__":
    main()
