"""VQ-GNN's training epoch against the floor: a plain torch.sparse full-graph GCN epoch.

For each graph, four kinds of training epoch are timed in one process, each kind's epochs
one after the other (each on its own warm caches and allocator state):

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
saved-tensor memory meter on). Medians of ``--epochs`` epochs after one warm-up epoch;
records (one per graph and kind, with every epoch's time) are appended to ``--out``, and
the table compares VQ-GNN with the floor (target: within 1.15x) and with full-graph
training (target: no slower).

Usage:
    python benchmarks/epoch_floor.py --data-root DATA --threads 2
    python benchmarks/epoch_floor.py --graphs synthetic:n=20000 --epochs 2   # a quick look
    python benchmarks/epoch_floor.py --table-only
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.grid import RESULTS, copy_root  # noqa: E402
from vqgnn.batching.lowrank import transposed_matmul  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.quantize.options import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, Trainer, seed_everything  # noqa: E402
from vqgnn.train.records import append_record  # noqa: E402

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


def trainer_epoch(data: Any, method: str, batch_size: int, num_codewords: int
                  ) -> Callable[[], Any]:
    seed_everything(0)
    model = ModelConfig(conv="gcn", layers=2, hidden=HIDDEN, dropout=DROPOUT,
                        codebook=CodebookOptions(num_codewords=num_codewords)).build(data)
    options = {"batch_size": batch_size} if method == "vq" else {}
    trainer = Trainer(model, data, TrainConfig.create(method, epochs=1, lr=LR, progress=False,
                                                      **options))
    trainer.fit()  # set-up (VQ-GNN: k-means) and one epoch; then epochs one by one
    return lambda: trainer.train_epoch()


def measure(name: str, data: Any, batch_size: int, num_codewords: int, epochs: int
            ) -> dict[str, list[float]]:
    runs = {"floor": floor_epoch(data), "floor-autograd": floor_epoch(data, symmetric=False),
            "full": trainer_epoch(data, "full", batch_size, num_codewords),
            "vq": trainer_epoch(data, "vq", batch_size, num_codewords)}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        for epoch in range(epochs + 1):  # epoch 0 warms up (caches, allocator)
            start = time.perf_counter()
            runs[method]()
            if epoch:
                times[method].append(time.perf_counter() - start)
        print(f"{name}: {method}: " + ", ".join(f"{t:.3f}" for t in times[method]) + " s",
              flush=True)
    return times


def table(records: list[dict[str, Any]]) -> list[str]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        latest[(r["dataset"], r["method"])] = r
    lines = ["| graph | threads | batch / K | floor epoch (s) | floor, torch's autograd (s) "
             "| full epoch (s) | VQ epoch (s) | VQ / floor | within 1.15x | VQ / floor, "
             "torch's autograd | VQ / full | no slower than full |", "|" + "---|" * 12]
    for dataset in dict.fromkeys(d for d, _ in latest):
        rows = {m: latest.get((dataset, m)) for m in METHODS}
        if any(r is None for r in rows.values()):
            continue
        med = {m: statistics.median(rows[m]["epoch_seconds"]) for m in METHODS}  # type: ignore
        vq = rows["vq"]
        assert vq is not None
        to_floor, to_full = med["vq"] / med["floor"], med["vq"] / med["full"]
        lines.append(
            f"| {dataset.split(',seed')[0]} | "
            f"{vq['threads']} | {vq['batch_size']:,} / {vq['num_codewords']:,} | "
            f"{med['floor']:.3f} | {med['floor-autograd']:.3f} | {med['full']:.3f} | "
            f"{med['vq']:.3f} | {to_floor:.2f}x | {'yes' if to_floor <= TARGET_FLOOR else 'NO'} | "
            f"{med['vq'] / med['floor-autograd']:.2f}x | {to_full:.2f}x | "
            f"{'yes' if to_full <= TARGET_FULL else 'NO'} |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--out", default=str(RESULTS / "epoch_floor.jsonl"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, received {args.epochs}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, received {args.threads}")
        torch.set_num_threads(args.threads)
    if not args.table_only:
        for name in args.graphs:
            family, batch_size, k = GRAPHS.get(name, (None, 4096, 256))
            if not name.startswith("synthetic") and family is None:
                parser.error(f"--graphs: unknown graph {name!r}; valid: Tolokers or "
                             f"synthetic:key=value,...")
            if family is not None and args.data_root is None:
                parser.error(f"{name} needs --data-root (or $VQGNN_DATA_ROOT): the folder "
                             f"holding {family}/")
            root = copy_root(Path(args.data_root) / family) if family is not None else None
            data = load_dataset(name, root=root)
            batch_size = args.batch_size or batch_size
            k = args.num_codewords or k
            times = measure(name, data, batch_size, k, args.epochs)
            for method in METHODS:
                append_record(args.out, {
                    "dataset": name, "method": method, "epoch_seconds": times[method],
                    "threads": torch.get_num_threads(), "batch_size": batch_size,
                    "num_codewords": k, "hidden": HIDDEN, "num_nodes": data.num_nodes,
                    "num_edges": int(data.edge_index.size(1))})
    print("\n".join(table(report.load_records(Path(args.out)))))


if __name__ == "__main__":
    main()
