"""VQ-GNN's training epoch against the floor across batch sizes and codebook sizes.

``benchmarks/epoch_floor.py`` compares VQ-GNN's epoch with the floor (a hand-written
torch.sparse full-graph GCN epoch) and vqgnn's full-graph epoch at one batch size b and
one K per graph. This script asks whether any (b, K) brings VQ-GNN's epoch within 1.15x
of the floor: it builds VQ-GNN's trainer at each ``--configs`` entry (the same 2-layer GCN,
64 hidden, dropout 0.2, Adam lr 0.01, as ``epoch_floor.py``), the floor and full-graph
training, and times one epoch of each kind in turn, ``--rounds`` rounds after a warm-up
round, all in one process (``epoch_floor.take_turns``). It prints each kind's median
epoch, its ratio to the floor and to full-graph training, and appends one record with
every epoch time to ``--out``.

A config is ``b:K`` or ``b:K:k`` (VQ-GNN's codeword search on every k-th step only,
``--search-every``); ``b`` may be ``all`` (one batch of all N nodes: one step an epoch).

Usage:
    python benchmarks/epoch_sweep.py --data-root DATA --threads 2
    python benchmarks/epoch_sweep.py --graph synthetic:n=20000 --configs 512:64,all:16
"""
from __future__ import annotations

import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import epoch_floor  # noqa: E402
from benchmarks.grid import RESULTS  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.train.records import append_result  # noqa: E402

DEFAULT_CONFIGS = "1024:1024,2048:1024,4096:1024,all:1024,2048:256,4096:256,4096:64,all:16"


_CONFIG = re.compile(r"(all|\d+):(\d+)(?::(\d+))?")


def parse_configs(text: str, num_nodes: Optional[int] = None) -> list[tuple[int, int, int]]:
    """``b:K[:k],...`` as (batch size, K, search every) triples; ``all`` is N (0 while
    ``num_nodes`` is None: a syntax check before the graph is loaded).

    Raises:
        ValueError: naming the entry that is not of that form.
    """
    configs = []
    for entry in text.split(","):
        match = _CONFIG.fullmatch(entry.strip())
        if match is None:
            raise ValueError(f"--configs: {entry!r} is not b:K or b:K:k (digits, b may be "
                             f"'all')")
        b_text, k_text, every_text = match.groups()
        n = num_nodes or 0
        b = n if b_text == "all" else int(b_text)
        k, every = int(k_text), int(every_text or 1)
        if min(k, every) < 1 or (b < 1 and b_text != "all"):
            raise ValueError(f"--configs: {entry!r} has a value below 1")
        configs.append((min(b, n) if num_nodes else b, k, every))
    return list(dict.fromkeys(configs))  # each once, in the given order


def config_name(b: int, k: int, every: int, num_nodes: int) -> str:
    name = f"b={'N' if b == num_nodes else f'{b:,}'}, K={k:,}"
    return name + (f", search every {every}" if every != 1 else "")


def sweep(data: Any, configs: list[tuple[int, int, int]], rounds: int
          ) -> dict[str, list[float]]:
    """Epoch times of the floor, full-graph training and VQ-GNN at each config (named by
    :func:`config_name`), taking turns in this process."""
    kinds: dict[str, Callable[[], Any]] = {"floor": epoch_floor.floor_epoch(data)}
    kinds["full"] = epoch_floor.trainer_epoch(data, "full", 1, 1)  # b, K unused
    for b, k, every in configs:
        kinds[config_name(b, k, every, data.num_nodes)] = epoch_floor.trainer_epoch(
            data, "vq", b, k, every)
    return epoch_floor.take_turns(kinds, rounds)


def table(times: dict[str, list[float]], steps: dict[str, int]) -> list[str]:
    """The medians against the floor's and full-graph training's; ``steps``: each VQ-GNN
    kind's steps an epoch."""
    med = {name: statistics.median(values) for name, values in times.items()}
    labels = {"floor": "floor (torch.sparse, full graph)", "full": "vqgnn full-graph training"}
    lines = ["| kind | steps an epoch | median epoch (s) | vs the floor | within 1.15x | "
             "vs full-graph training |", "|---|---|---|---|---|---|"]
    for name, value in med.items():
        within = "-" if name in labels else (
            "yes" if value <= epoch_floor.TARGET_FLOOR * med["floor"] else "NO")
        lines.append(f"| {labels.get(name, f'VQ-GNN, {name}')} | {steps.get(name, 1):,} | "
                     f"{value:.3f} | {value / med['floor']:.2f}x | {within} | "
                     f"{value / med['full']:.2f}x |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--graph", default="Tolokers",
                        help="Tolokers or synthetic:key=value,...")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"),
                        help="folder holding heterophilous/ (for Tolokers)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="comma-separated b:K or b:K:k (k: search every k-th step); "
                             "b may be 'all'")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "epoch_sweep.jsonl"))
    args = parser.parse_args(argv)
    for name, value in (("--rounds", args.rounds), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, received {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        parse_configs(args.configs)  # the syntax, before a dataset is copied and loaded
    except ValueError as err:
        parser.error(str(err))
    root = epoch_floor.graph_root(parser, args.graph, args.data_root, "--graph")
    data = load_dataset(args.graph, root=root)
    configs = parse_configs(args.configs, data.num_nodes)
    times = sweep(data, configs, args.rounds)
    named = {config_name(b, k, every, data.num_nodes): (b, k, every)
             for b, k, every in configs}
    append_result(args.out, {"dataset": args.graph, "num_nodes": data.num_nodes,
                             "num_edges": int(data.edge_index.size(1)),
                             "threads": torch.get_num_threads(), "rounds": args.rounds,
                             "hidden": epoch_floor.HIDDEN, "configs": named,
                             "epoch_seconds": times})
    print(f"\n{args.graph}, epochs taking turns in one process, {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch threads; command: python "
          f"benchmarks/epoch_sweep.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    steps = {name: -(-data.num_nodes // b) for name, (b, _, _) in named.items()}
    print("\n".join(table(times, steps)))


if __name__ == "__main__":
    main()
