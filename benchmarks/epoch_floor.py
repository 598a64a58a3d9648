"""VQ-GNN's training epoch against the floor: a plain torch.sparse full-graph GCN epoch.

For each graph, four kinds of training epoch are timed, each kind in a fresh process of
its own (glibc's heap keeps the shape that earlier allocations gave it: no kind's
allocations shape another's), one kind after the other:

* ``floor``: what hand-written PyTorch costs for the same model on the whole graph, one
  optimizer step per epoch: the symmetric-normalised adjacency with self-loops as one
  ``torch.sparse_csr`` matrix ``A``, ``A relu(A X W1) W2`` (dropout between the layers,
  ``torch.nn.functional.dropout``, as in vqgnn's model), cross-entropy on the training
  nodes, backward, Adam. ``A`` is symmetric, so the backward of each product is one more
  product with ``A`` (:func:`~vqgnn.batching.lowrank.transposed_matmul`);
* ``floor-autograd``: the same, with torch's own backward of the CSR product (which
  transposes ``A``, a sort of its entries, every step): what a first attempt costs;
* ``full``: vqgnn's full-graph training of its 2-layer GCN (``Trainer``, method ``full``);
* ``vq``: VQ-GNN (method ``vq``) with the same model, N / b mini-batch steps per epoch.

All have 64 hidden channels, dropout 0.2 and Adam at lr 0.01, so their epochs differ only
in how the graph is used. The trainers run as ``vqgnn train`` does by default (the
saved-tensor memory meter on). ``--allocator keep`` times them with glibc told to keep and
reuse freed memory (:data:`KEEP_FREED_MEMORY`): without it every kind pays the kernel's page
faults on buffers mapped afresh each step, the full-graph kinds most (their activations
are the largest). Medians of ``--epochs`` epochs after one warm-up epoch;
records (one per graph and kind, with every epoch's time) are appended to ``--out``, and
the table compares VQ-GNN with the floor (target: within 1.15x) and with full-graph
training (target: no slower).

Usage:
    python benchmarks/epoch_floor.py --data-root DATA --threads 2
    python benchmarks/epoch_floor.py --data-root DATA --threads 2 --allocator keep
    python benchmarks/epoch_floor.py --graphs synthetic:n=20000 --epochs 2   # a quick look
    python benchmarks/epoch_floor.py --table-only
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional
from unittest.mock import patch

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.grid import RESULTS, copy_root  # noqa: E402
from vqgnn.batching.lowrank import transposed_matmul  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.quantize.options import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, Trainer, seed_everything  # noqa: E402
from vqgnn.train.records import append_result  # noqa: E402

METHODS = ("floor", "floor-autograd", "full", "vq")
HIDDEN, DROPOUT, LR = 64, 0.2, 0.01
#: graph -> (dataset folder under --data-root or None, batch size, K): the settings of
#: the measurements this benchmark answers (Tolokers as in the accuracy grid).
GRAPHS: dict[str, tuple[Optional[str], int, int]] = {
    "Tolokers": ("heterophilous", 1024, 1024),
    "synthetic:n=1000000,deg=10,classes=10,features=32,seed=0": (None, 4096, 256),
}
TARGET_FLOOR, TARGET_FULL = 1.15, 1.0


class FloorGCN(torch.nn.Module):
    """Two GCN layers on one CSR matrix: ``A relu(A X W1) W2`` (bias after each product)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int,
                 symmetric: bool = True) -> None:
        super().__init__()
        self.lin1 = torch.nn.Linear(in_channels, hidden, bias=False)
        self.lin2 = torch.nn.Linear(hidden, out_channels, bias=False)
        self.bias1 = torch.nn.Parameter(torch.zeros(hidden))
        self.bias2 = torch.nn.Parameter(torch.zeros(out_channels))
        self.product: Callable[[Tensor, Tensor], Tensor] = (
            self._symmetric if symmetric else torch.matmul)

    @staticmethod
    def _symmetric(adj: Tensor, x: Tensor) -> Tensor:
        return transposed_matmul(adj, adj, x)  # A^T = A: the backward is A @ grad

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        h = F.relu(self.product(adj, self.lin1(x)) + self.bias1)
        h = F.dropout(h, DROPOUT, self.training)
        return self.product(adj, self.lin2(h)) + self.bias2


def normalized_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    r""":math:`D^{-1/2} (A + I) D^{-1/2}` (PyG's ``gcn_norm``, as vqgnn's GCN layers use) as
    a ``torch.sparse_csr`` matrix (rows: targets)."""
    edge_index, value = gcn_norm(edge_index, num_nodes=num_nodes, add_self_loops=True)
    coo = torch.sparse_coo_tensor(edge_index.flip(0), value, (num_nodes, num_nodes),
                                  check_invariants=True).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


def floor_epoch(data: Any, symmetric: bool = True) -> Callable[[], Any]:
    """One full-graph step of :class:`FloorGCN`: forward, loss, backward, Adam."""
    seed_everything(0)
    adj = normalized_adjacency(data.edge_index, data.num_nodes)
    model = FloorGCN(data.num_features, HIDDEN, int(data.y.max()) + 1, symmetric)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    train = data.train_mask.nonzero().view(-1)
    y = data.y[train]

    def epoch() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x, adj)[train], y)
        loss.backward()
        opt.step()
        float(loss.detach())  # the trainers' epoch ends with one host sync too

    return epoch


def trainer_epoch(data: Any, method: str, batch_size: int, num_codewords: int,
                  search_every: int = 1) -> Callable[[], Any]:
    seed_everything(0)
    model = ModelConfig(conv="gcn", layers=2, hidden=HIDDEN, dropout=DROPOUT,
                        codebook=CodebookOptions(num_codewords=num_codewords)).build(data)
    options = ({"batch_size": batch_size, "search_every": search_every} if method == "vq"
               else {})
    trainer = Trainer(model, data, TrainConfig.create(method, epochs=1, lr=LR, progress=False,
                                                      **options))
    trainer.fit()  # set-up (VQ-GNN: k-means) and one epoch; then epochs one by one
    return lambda: trainer.train_epoch()


#: glibc malloc settings of ``--allocator keep``: allocations up to 1 GiB from the heap
#: (not each its own ``mmap``), and freed memory kept in the process up to 4 GiB, so that
#: a buffer of the size freed last step reuses pages already mapped instead of the kernel
#: faulting in fresh zeroed ones (by default glibc maps every allocation above 32 MB
#: afresh: a full-graph epoch's activations at 10^6 nodes are 256 MB each).
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                     "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
ALLOCATORS = {"default": {}, "keep": KEEP_FREED_MEMORY}


def epoch_times(data: Any, method: str, batch_size: int, num_codewords: int,
                epochs: int, search_every: int = 1) -> list[float]:
    """``epochs`` timed epochs of one kind after a warm-up epoch (caches, allocator)."""
    epoch = (floor_epoch(data, symmetric=method == "floor") if method.startswith("floor")
             else trainer_epoch(data, method, batch_size, num_codewords, search_every))
    return take_turns({method: epoch}, epochs)[method]  # one kind: its epochs in a row


def take_turns(kinds: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each kind's epoch times over ``rounds`` rounds in this process, one epoch of each
    kind in turn, after a warm-up round (not timed). Taking turns, the kinds share the
    machine's slow and fast moments: this machine's epochs differ by 10-30 % between
    processes."""
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, epoch in kinds.items():
            start = time.perf_counter()
            epoch()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def _in_process(name: str, root: Optional[str], method: str, batch_size: int,
                num_codewords: int, epochs: int, threads: int, search_every: int = 1
                ) -> tuple[list[float], dict[str, Optional[str]]]:
    """:func:`epoch_times` in a process of its own (loads the graph there), with the
    malloc settings that process started with."""
    torch.set_num_threads(threads)
    return (epoch_times(load_dataset(name, root=root), method, batch_size, num_codewords,
                        epochs, search_every),
            {k: os.environ.get(k) for k in KEEP_FREED_MEMORY})


def measure(name: str, root: Optional[str], batch_size: int, num_codewords: int, epochs: int,
            allocator: str = "default", search_every: int = 1) -> dict[str, list[float]]:
    """Each kind's epoch times, each kind in a fresh process of its own, one after the other.

    A fresh process per kind: glibc's heap keeps the shape earlier allocations gave it (its
    mmap and trim thresholds rise with the sizes freed), so that no kind's allocations
    shape another's. ``allocator`` names the glibc settings of the children
    (:data:`ALLOCATORS`)."""
    times: dict[str, list[float]] = {}
    with patch.dict(os.environ):  # restored on leaving, whatever the shell had set
        for key in KEEP_FREED_MEMORY:  # 'default' is glibc's own
            os.environ.pop(key, None)
        os.environ.update(ALLOCATORS[allocator])  # read by each child's malloc at start
        context = multiprocessing.get_context("spawn")
        for method in METHODS:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                times[method], env = pool.submit(_in_process, name, root, method, batch_size,
                                                 num_codewords, epochs,
                                                 torch.get_num_threads(),
                                                 search_every).result()
            wanted = {k: ALLOCATORS[allocator].get(k) for k in KEEP_FREED_MEMORY}
            if env != wanted:  # the environment did not reach the child
                raise RuntimeError(f"the timed process started with malloc settings {env}, "
                                   f"not --allocator {allocator}'s {wanted}")
            print(f"{name}: {method}: " + ", ".join(f"{t:.3f}" for t in times[method])
                  + " s", flush=True)
    return times


def _protocol(record: dict[str, Any]) -> str:
    """How a record's epochs were timed: kinds in one process (the first records) or each
    in its own, and the allocator settings."""
    if not record.get("process_per_kind"):
        return "one process"
    every = record.get("search_every", 1)  # records before the option searched every step
    search = f", search every {every} steps" if every != 1 else ""
    return f"process per kind, {record['allocator']} allocator{search}"


def table(records: list[dict[str, Any]]) -> list[str]:
    latest: dict[tuple[tuple[str, str], str], dict[str, Any]] = {}
    for r in records:  # the latest of each graph, protocol and kind
        latest[((r["dataset"], _protocol(r)), r["method"])] = r
    lines = ["| graph | protocol | threads | batch / K | floor epoch (s) | floor, torch's "
             "autograd (s) | full epoch (s) | VQ epoch (s) | VQ / floor | within 1.15x | "
             "VQ / floor, torch's autograd | VQ / full | no slower than full |",
             "|" + "---|" * 13]
    for dataset in dict.fromkeys(d for d, _ in latest):
        rows = {m: latest.get((dataset, m)) for m in METHODS}
        if any(r is None for r in rows.values()):
            continue
        med = {m: statistics.median(rows[m]["epoch_seconds"]) for m in METHODS}  # type: ignore
        vq = rows["vq"]
        assert vq is not None
        to_floor, to_full = med["vq"] / med["floor"], med["vq"] / med["full"]
        graph, protocol = dataset
        lines.append(
            f"| {graph.split(',seed')[0]} | {protocol} | "
            f"{vq['threads']} | {vq['batch_size']:,} / {vq['num_codewords']:,} | "
            f"{med['floor']:.3f} | {med['floor-autograd']:.3f} | {med['full']:.3f} | "
            f"{med['vq']:.3f} | {to_floor:.2f}x | {'yes' if to_floor <= TARGET_FLOOR else 'NO'} | "
            f"{med['vq'] / med['floor-autograd']:.2f}x | {to_full:.2f}x | "
            f"{'yes' if to_full <= TARGET_FULL else 'NO'} |")
    return lines


def graph_root(parser: argparse.ArgumentParser, name: str, data_root: Optional[str],
               option: str) -> Optional[str]:
    """The dataset root of the graph ``name`` given as ``option``: None for a synthetic
    graph, a copy of ``data_root``'s folder of Tolokers' family; a usage error (exit 2)
    for an unknown graph or a missing ``--data-root``."""
    if name.startswith("synthetic"):
        return None
    family = GRAPHS.get(name, (None, 0, 0))[0]
    if family is None:
        parser.error(f"{option}: unknown graph {name!r}; valid: Tolokers or "
                     f"synthetic:key=value,...")
    if data_root is None:
        parser.error(f"{name} needs --data-root (or $VQGNN_DATA_ROOT): the folder "
                     f"holding {family}/")
    return copy_root(Path(data_root) / family)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS),
                        help="Tolokers and/or synthetic:key=value,... names (default: Tolokers "
                             "and the 10^6-node synthetic graph)")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"),
                        help="folder holding heterophilous/ (for Tolokers)")
    parser.add_argument("--epochs", type=int, default=5, help="timed rounds (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="VQ batch size (default: per graph, 1,024 or 4,096)")
    parser.add_argument("--num-codewords", type=int, default=None,
                        help="K (default: per graph, 1,024 or 256)")
    parser.add_argument("--allocator", choices=list(ALLOCATORS), default="default",
                        help="glibc malloc settings of the timed processes: 'default', or "
                             "'keep' (freed memory kept and reused: no page faults on "
                             "buffers of the sizes freed before; see KEEP_FREED_MEMORY)")
    parser.add_argument("--search-every", type=int, default=1,
                        help="VQ-GNN's nearest-codeword search on every k-th step of an "
                             "epoch (VQOptions.search_every; default 1: every step)")
    parser.add_argument("--out", default=str(RESULTS / "epoch_floor.jsonl"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, received {args.epochs}")
    if args.search_every < 1:
        parser.error(f"--search-every must be >= 1, received {args.search_every}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, received {args.threads}")
        torch.set_num_threads(args.threads)
    if not args.table_only:
        for name in args.graphs:
            _, batch_size, k = GRAPHS.get(name, (None, 4096, 256))
            root = graph_root(parser, name, args.data_root, "--graphs")
            data = load_dataset(name, root=root)  # here once: PyG writes processed/ once
            batch_size = args.batch_size or batch_size
            k = args.num_codewords or k
            times = measure(name, root, batch_size, k, args.epochs, args.allocator,
                            args.search_every)
            for method in METHODS:
                append_result(args.out, {
                    "dataset": name, "method": method, "epoch_seconds": times[method],
                    "threads": torch.get_num_threads(), "batch_size": batch_size,
                    "num_codewords": k, "hidden": HIDDEN, "num_nodes": data.num_nodes,
                    "num_edges": int(data.edge_index.size(1)), "allocator": args.allocator,
                    "process_per_kind": True, "libc": " ".join(platform.libc_ver()),
                    "search_every": args.search_every})
    print("\n".join(table(report.load_records(Path(args.out)))))


if __name__ == "__main__":
    main()
