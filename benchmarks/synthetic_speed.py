"""Time the synthetic graph generator.

Usage:
    python benchmarks/synthetic_speed.py --n 1000000 --deg 20 --repeat 1

Prints a Markdown table: entry point, nodes, directed edges, seconds (best of ``--repeat``)
and the process's peak resident memory so far (``resource.getrusage``, so a later row can
only report the same or a higher peak).
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable, List, Optional

from torch_geometric.data import Data

from vqgnn.cli import script_parser
from vqgnn.datasets import load_dataset, parse_synthetic, synthetic_graph


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _time(build: Callable[[], Data], repeat: int) -> tuple[Data, float]:
    best, data = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        data = build()
        best = min(best, time.perf_counter() - start)
        if _ < repeat - 1:
            del data
    assert data is not None
    return data, best


def main(argv: Optional[List[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="number of nodes")
    parser.add_argument("--deg", type=float, default=20.0, help="average degree")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per entry point (best)")
    args = parser.parse_args(argv)

    name = f"synthetic:n={args.n},deg={args.deg:g},seed={args.seed}"
    rows = []
    for label, build in (
        ("synthetic_graph", lambda: synthetic_graph(parse_synthetic(name))),
        ("load_dataset", lambda: load_dataset(name)),
    ):
        data, seconds = _time(build, args.repeat)
        rows.append((label, data.num_nodes, data.edge_index.size(1), seconds, _peak_rss_mib()))
        del data

    print(f"`{name}`\n")
    print("| entry point | nodes | directed edges | seconds | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for label, nodes, edges, seconds, rss in rows:
        print(f"| `{label}` | {nodes:,} | {edges:,} | {seconds:.2f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
