"""The ``vqgnn`` command line.

``vqgnn info --dataset NAME [--root DIR] [--split I] [--seed S]`` loads a dataset
through :func:`vqgnn.datasets.load_dataset` and prints its summary.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import torch


def dataset_summary(data) -> list[tuple[str, str]]:
    """(field, value) rows describing a loaded dataset."""
    n, e = data.num_nodes, data.edge_index.size(1)
    rows = [
        ("dataset", str(data.name)),
        ("nodes", f"{n:,}"),
        ("edges (directed)", f"{e:,}"),
        ("average degree", f"{e / max(n, 1):.2f}"),
        ("features", f"{data.x.size(1):,}"),
        ("classes" if data.y.dim() == 1 else "tasks", f"{data.num_classes:,}"),
        ("metric", str(data.metric)),
        ("split", str(data.split)),
    ]
    for mask in ("train_mask", "val_mask", "test_mask"):
        count = int(data[mask].sum())
        rows.append((mask.replace("_mask", " nodes"), f"{count:,} ({count / n:.1%})"))
    if data.y.dim() == 1 and e > 0:
        src, dst = data.edge_index
        labeled = (data.y[src] >= 0) & (data.y[dst] >= 0)
        same = (data.y[src] == data.y[dst]) & labeled
        rows.append(("edge homophily", f"{float(same.sum()) / max(int(labeled.sum()), 1):.3f}"))
    return rows


def print_table(rows: Sequence[tuple[str, str]], header: tuple[str, str]) -> None:
    """Print two-column rows as a Markdown table."""
    width = max(len(r[0]) for r in [header, *rows])
    print(f"| {header[0]:<{width}} | {header[1]} |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


def cmd_info(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset

    start = time.perf_counter()
    data = load_dataset(args.dataset, root=args.root, split=args.split, seed=args.seed)
    seconds = time.perf_counter() - start
    print_table(dataset_summary(data) + [("load time", f"{seconds:.2f} s")], ("field", "value"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgnn", description="VQ-GNN: scale PyG GNNs with vector quantization.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a dataset and print its summary")
    info.add_argument("--dataset", default="synthetic",
                      help="dataset name, a .pt file, or synthetic:key=value,... "
                           "(default: synthetic)")
    info.add_argument("--root", default=None, help="dataset folder (offline files)")
    info.add_argument("--split", type=int, default=0, help="split index (default 0)")
    info.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"vqgnn {args.command}: error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
